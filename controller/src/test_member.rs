//! A stand-in for another member's internal service, for unit tests of the clients that talk
//! to it: it names each request back so a test sees which request an answer belongs to, can
//! hold chosen answers back, and can play a release that serves no streams.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use weft_core::Proposal;

use crate::forward::{ForwardError, pb};
use crate::proposals::{ForwardedAnswer, ForwardedBatch};
use crate::raft_types::{NodeId, Outcome, TypeConfig};
use crate::store::{decode, encode};

#[derive(Clone, Default)]
pub struct Echo {
    /// Serve neither `Replicate` nor `Proposals`, as a release before them.
    pub without_streams: bool,
    /// The answer to an AppendEntries whose prev index is this one, or to a proposal made at
    /// this time (`at_ms`), is held back 500 ms.
    pub slow_index: u64,
    /// Proposal streams end (the connection drops) once this many batches were read.
    pub proposal_streams_end_after: Option<usize>,
    pub streams_opened: Arc<AtomicUsize>,
    pub unary_calls: Arc<AtomicUsize>,
}

impl Echo {
    /// Serves this member on a loopback port; answers its address.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_service_server::RaftServiceServer::new(self.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    fn delay(&self, index: u64) -> Duration {
        if index == self.slow_index { Duration::from_millis(500) } else { Duration::ZERO }
    }

    fn append(&self, data: &[u8]) -> (Duration, Vec<u8>) {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(data).expect("request");
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Ok(AppendEntriesResponse::PartialSuccess(rpc.prev_log_id));
        let index = rpc.prev_log_id.map_or(0, |id| id.index);
        (self.delay(index), encode(&answer).expect("answer"))
    }

    /// Each proposal answered with a refusal that names its `at_ms` back (not a real outcome).
    fn answer_proposals(proposals: &[Proposal]) -> Vec<Result<Outcome, ForwardError>> {
        proposals.iter().map(|p| Err(ForwardError::Failed(p.at_ms.to_string()))).collect()
    }

    fn slowest(&self, proposals: &[Proposal]) -> Duration {
        proposals.iter().map(|p| self.delay(p.at_ms)).max().unwrap_or_default()
    }
}

fn unserved<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this test"))
}

type Answers = Pin<Box<dyn Stream<Item = Result<pb::Payload, Status>> + Send>>;

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for Echo {
    type ReplicateStream = Answers;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::Payload>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        if self.without_streams {
            return Err(Status::unimplemented("unknown method Replicate"));
        }
        self.streams_opened.fetch_add(1, Ordering::SeqCst);
        let member = self.clone();
        let answers = request.into_inner().then(move |message| {
            let member = member.clone();
            async move {
                let (delay, data) = member.append(&message?.data);
                tokio::time::sleep(delay).await;
                Ok(pb::Payload { data })
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn append_entries(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        self.unary_calls.fetch_add(1, Ordering::SeqCst);
        let (delay, data) = self.append(&request.into_inner().data);
        tokio::time::sleep(delay).await;
        Ok(Response::new(pb::Payload { data }))
    }

    type ProposalsStream = Answers;

    /// Answers each batch on a task of its own, so a held-back batch is overtaken.
    async fn proposals(
        &self,
        request: Request<Streaming<pb::Payload>>,
    ) -> Result<Response<Self::ProposalsStream>, Status> {
        if self.without_streams {
            return Err(Status::unimplemented("unknown method Proposals"));
        }
        self.streams_opened.fetch_add(1, Ordering::SeqCst);
        let (answers, outgoing) = tokio::sync::mpsc::channel(16);
        let (member, mut batches) = (self.clone(), request.into_inner());
        tokio::spawn(async move {
            let mut read = 0;
            while let Ok(Some(message)) = batches.message().await {
                read += 1;
                let batch: ForwardedBatch = decode(&message.data).expect("batch");
                let (delay, sender) = (member.slowest(&batch.proposals), answers.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let results = Echo::answer_proposals(&batch.proposals);
                    let data = encode(&ForwardedAnswer { call: batch.call, results }).expect("answer");
                    let _ = sender.send(Ok(pb::Payload { data })).await;
                });
                if member.proposal_streams_end_after == Some(read) {
                    let _ = answers.send(Err(Status::unavailable("the member went away"))).await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(outgoing))))
    }

    async fn propose(&self, request: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        self.unary_calls.fetch_add(1, Ordering::SeqCst);
        let proposals: Vec<Proposal> = decode(&request.into_inner().data).expect("proposals");
        tokio::time::sleep(self.slowest(&proposals)).await;
        let data = encode(&Echo::answer_proposals(&proposals)).expect("answer");
        Ok(Response::new(pb::Payload { data }))
    }

    async fn vote(&self, _: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        unserved()
    }
    async fn install_snapshot(&self, _: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        unserved()
    }
    async fn read_index(&self, _: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        unserved()
    }
    async fn heartbeat(&self, _: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        unserved()
    }
    async fn change_membership(&self, _: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        unserved()
    }
    async fn await_applied(&self, _: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        unserved()
    }
    async fn leader_view(&self, _: Request<pb::Payload>) -> Result<Response<pb::Payload>, Status> {
        unserved()
    }
}
