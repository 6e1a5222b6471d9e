//! openraft's side of the network: AppendEntries, Vote and InstallSnapshot to other members
//! over the internal gRPC service. Each RPC carries one postcard-encoded openraft request; the
//! answer carries the encoded `Result` the receiving member's Raft produced, so remote Raft
//! errors arrive intact.
//!
//! AppendEntries, the call on every write's path, travels on one long-lived `Replicate`
//! stream per replication client rather than a unary call each: a request is then one DATA
//! frame each way, without a new HTTP/2 stream, headers and a server task per round trip.
//! openraft sends one AppendEntries at a time per client (`&mut self`), so answers come
//! back in order and need no ids.

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use crate::forward::{Peers, pb};
use crate::raft_types::{NodeId, TypeConfig};
use crate::store::{decode, encode};

/// Hands openraft a client per target member.
#[derive(Clone, Debug, Default)]
pub struct Network {
    peers: Peers,
}

impl Network {
    pub fn new(peers: Peers) -> Network {
        Network { peers }
    }
}

/// The connection to one member.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    peers: Peers,
    /// The open `Replicate` stream, once AppendEntries has been sent.
    pipe: Option<Pipe>,
    /// The member answered that it serves no `Replicate` (a release before it, met during a
    /// rolling upgrade): AppendEntries go to it one unary call each.
    unary_only: bool,
}

/// One open `Replicate` stream.
#[derive(Debug)]
struct Pipe {
    requests: mpsc::Sender<pb::Payload>,
    answers: Streaming<pb::Payload>,
    /// The [`Peers`] connections it was opened on: streams opened before a credential was
    /// renewed are let go, so replication moves to the new connection with the next request.
    generation: u64,
    /// A request went out whose answer was not read (openraft gave up on the call): the next
    /// answer on this stream is that one's, so the stream is not used again.
    awaiting: bool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            pipe: None,
            unary_only: false,
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// How a failed call reaches openraft: a member that cannot be reached is retried later.
fn rpc_error<E: std::error::Error>(status: &Status) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(status))
        }
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

impl PeerClient {
    /// One AppendEntries over the `Replicate` stream, opened (or reopened) as needed; any
    /// failure or timeout drops the stream, and the next call opens a fresh one.
    async fn replicate(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        if self.unary_only {
            return self.call(Method::AppendEntries, rpc, option).await;
        }
        let data = encode(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = match tokio::time::timeout(option.hard_ttl(), self.exchange(data)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    member = self.target,
                    "member serves no replication stream (an earlier release): one call per AppendEntries"
                );
                self.pipe = None;
                self.unary_only = true;
                return self.call(Method::AppendEntries, rpc, option).await;
            }
            Ok(Err(status)) => {
                self.pipe = None;
                return Err(rpc_error(&status));
            }
            Err(elapsed) => {
                self.pipe = None;
                return Err(RPCError::Unreachable(Unreachable::new(&elapsed)));
            }
        };
        let result: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId, openraft::error::Infallible>> =
            decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn exchange(&mut self, data: Vec<u8>) -> Result<Vec<u8>, Status> {
        let generation = self.peers.generation();
        if self.pipe.as_ref().is_some_and(|pipe| pipe.awaiting || pipe.generation != generation) {
            self.pipe = None;
        }
        let pipe = match &mut self.pipe {
            Some(pipe) => pipe,
            None => {
                let (requests, outgoing) = mpsc::channel(1);
                let answers = self
                    .peers
                    .client(&self.addr)?
                    .replicate(ReceiverStream::new(outgoing))
                    .await?
                    .into_inner();
                self.pipe.insert(Pipe { requests, answers, generation, awaiting: false })
            }
        };
        pipe.awaiting = true;
        pipe.requests
            .send(pb::Payload { data })
            .await
            .map_err(|_| Status::unavailable("the replication stream closed"))?;
        let answer = pipe
            .answers
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("the member closed the replication stream"))?;
        pipe.awaiting = false;
        Ok(answer.data)
    }

    async fn call<Req, Resp, E>(&self, method: Method, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client =
            self.peers.client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = Request::new(pb::Payload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| rpc_error(&status))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.replicate(&rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(Method::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use openraft::{CommittedLeaderId, LogId, Vote};

    use crate::test_member::Echo;

    use super::*;

    /// Serves `member` on a loopback port; answers a client to it.
    async fn client_to(member: Echo) -> PeerClient {
        let addr = member.serve().await;
        Network::new(Peers::new(None)).new_client(2, &BasicNode { addr }).await
    }

    fn after(index: u64) -> AppendEntriesRequest<TypeConfig> {
        let leader = CommittedLeaderId::new(1, 1);
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(LogId::new(leader, index)),
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    /// The prev index the member named back.
    async fn answered(client: &mut PeerClient, index: u64, ttl: Duration) -> Result<u64, String> {
        match client.append_entries(after(index), RPCOption::new(ttl)).await {
            Ok(AppendEntriesResponse::PartialSuccess(Some(id))) => Ok(id.index),
            other => Err(format!("{other:?}")),
        }
    }

    const TTL: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn appends_to_a_member_share_one_stream() {
        let member = Echo::default();
        let mut client = client_to(member.clone()).await;
        for index in 1..=50 {
            assert_eq!(answered(&mut client, index, TTL).await, Ok(index));
        }
        assert_eq!(member.streams_opened.load(Ordering::SeqCst), 1);
        assert_eq!(member.unary_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_answer_that_came_too_late_is_never_taken_for_the_next_one() {
        let member = Echo { slow_index: 2, ..Echo::default() };
        let mut client = client_to(member.clone()).await;
        assert_eq!(answered(&mut client, 1, TTL).await, Ok(1));
        // The call's own deadline passes while the member still works on it.
        let timed_out = answered(&mut client, 2, Duration::from_millis(100)).await;
        assert!(timed_out.is_err(), "a call past its deadline must fail, got {timed_out:?}");
        assert_eq!(answered(&mut client, 3, TTL).await, Ok(3));
        // openraft gives up on a call by dropping it: the answer still on its way must not
        // be read as the next call's either.
        let dropped = tokio::time::timeout(Duration::from_millis(100), answered(&mut client, 2, TTL)).await;
        assert!(dropped.is_err(), "the member holds index 2 back for 500 ms");
        assert_eq!(answered(&mut client, 4, TTL).await, Ok(4));
        assert_eq!(member.streams_opened.load(Ordering::SeqCst), 3, "each abandoned stream is replaced");
    }

    #[tokio::test]
    async fn streams_move_to_new_connections_when_members_reconnect() {
        let member = Echo::default();
        let mut client = client_to(member.clone()).await;
        assert_eq!(answered(&mut client, 1, TTL).await, Ok(1));
        client.peers.let_go_of_connections();
        assert_eq!(answered(&mut client, 2, TTL).await, Ok(2));
        assert_eq!(member.streams_opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_member_from_before_the_stream_is_sent_one_call_per_append() {
        let member = Echo { without_streams: true, ..Echo::default() };
        let mut client = client_to(member.clone()).await;
        for index in 1..=3 {
            assert_eq!(answered(&mut client, index, TTL).await, Ok(index));
        }
        assert_eq!(member.unary_calls.load(Ordering::SeqCst), 3);
    }
}
