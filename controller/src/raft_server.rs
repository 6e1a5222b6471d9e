//! The internal `weft.raft.v1` service a member serves to the others: openraft's RPCs into
//! the local Raft, and the requests other members forward to this one when it leads.

use std::pin::Pin;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::{Deserialize, Serialize};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use weft_core::Proposal;

use crate::cluster::Controller;
use crate::forward::{AwaitApplied, Beat, ForwardError, MembershipChange, leader_of, pb};
use crate::metrics::ClientDeadline;
use crate::proposals;
use crate::raft_types::{NodeId, Raft, TypeConfig};
use crate::store::{decode, encode};

/// Serves the internal service: openraft's RPCs into the local Raft, and forwarded requests.
#[derive(Clone)]
pub struct RaftServer {
    raft: Raft,
    controller: Controller,
}

impl std::fmt::Debug for RaftServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftServer")
    }
}

impl RaftServer {
    pub fn new(controller: Controller) -> RaftServer {
        RaftServer { raft: controller.raft.clone(), controller }
    }
}

fn decode_request<T: for<'de> Deserialize<'de>>(request: Request<pb::Payload>) -> Result<T, Status> {
    decode(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<pb::Payload>, Status> {
    let data = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::Payload { data }))
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftServer {
    /// What a member of a release before `Replicate` sends, during a rolling upgrade.
    async fn append_entries(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(request)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    type ReplicateStream = Pin<Box<dyn Stream<Item = Result<pb::Payload, Status>> + Send>>;

    /// Answers each request as the reply stream is read: no task of its own, so a request
    /// reaches the local Raft from the connection's own poll.
    async fn replicate(
        &self,
        request: Request<Streaming<pb::Payload>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let raft = self.raft.clone();
        let answers = request.into_inner().then(move |message| {
            let raft = raft.clone();
            async move {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&message?.data)
                    .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))?;
                let data =
                    encode(&raft.append_entries(rpc).await).map_err(|e| Status::internal(e.to_string()))?;
                Ok(pb::Payload { data })
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        let rpc: VoteRequest<NodeId> = decode_request(request)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request(request)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        let deadline = request.extensions().get::<ClientDeadline>().map(|d| d.0);
        let proposals: Vec<Proposal> = decode_request(request)?;
        reply(&proposals::submit_all(&self.controller.batcher, proposals, deadline).await)
    }

    type ProposalsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Payload, Status>>;

    async fn proposals(
        &self,
        request: Request<Streaming<pb::Payload>>,
    ) -> Result<Response<Self::ProposalsStream>, Status> {
        Ok(Response::new(proposals::serve(self.controller.batcher.clone(), request.into_inner())))
    }

    async fn heartbeat(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        let beat: Beat = decode_request(request)?;
        reply(&self.controller.heartbeat_as_leader(&beat).await)
    }

    async fn change_membership(
        &self,
        request: Request<pb::Payload>,
    ) -> Result<Response<pb::Payload>, Status> {
        let change: MembershipChange = decode_request(request)?;
        reply(&self.controller.change_membership_as_leader(&change).await)
    }

    async fn await_applied(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        let wait: AwaitApplied = decode_request(request)?;
        reply(&self.controller.await_applied_as_leader(&wait).await)
    }

    async fn leader_view(&self, _request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        reply(&self.controller.leader_view_as_leader())
    }

    async fn read_index(&self, _request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        let result: Result<u64, ForwardError> = match self.raft.ensure_linearizable().await {
            Ok(_) => self
                .controller
                .read_index_as_leader(self.controller.request_timeout)
                .await
                .map_err(|e| ForwardError::Failed(e.to_string())),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader { leader: leader_of(&f) })
            }
            Err(e) => Err(ForwardError::Failed(e.to_string())),
        };
        reply(&result)
    }
}
