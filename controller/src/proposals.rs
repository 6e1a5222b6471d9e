//! Forwarded proposals on one long-lived `Proposals` stream from a member to the leader.
//!
//! Two thirds of a 3-member cluster's writes reach a follower and are forwarded. As one unary
//! call each, every forwarded batch paid for a new HTTP/2 stream, its headers and trailers and
//! a server task, on the path of the write (decision 0008 measured the same for AppendEntries).
//! On the stream a batch is one DATA frame each way. A member forwards up to two batches at
//! once and the leader commits them concurrently, so each carries a call number and answers
//! may come back in any order.
//!
//! A stream that fails fails every call waiting on it (the batcher's caller retries, as after
//! a failed unary call) and the next call opens a new one. A leader that does not serve the
//! stream (an earlier release, met during a rolling upgrade) is sent unary calls, and asked
//! again after [`UNARY_RETRY`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;
use weft_core::Proposal;

use crate::batcher::Batcher;
use crate::forward::{ForwardError, pb};
use crate::raft_types::Outcome;
use crate::store::{decode, encode};

/// How long a member keeps sending unary calls to a leader that did not serve the stream.
pub const UNARY_RETRY: Duration = Duration::from_secs(30);
/// Batches that may wait to be written to one stream.
const OUTGOING: usize = 64;

/// One forwarded batch as it travels on the stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedBatch {
    pub call: u64,
    /// How long the leader may take: past it the proposals are answered Expired, not written
    /// (what a unary call's grpc-timeout says).
    pub timeout_ms: u64,
    pub proposals: Vec<Proposal>,
}

/// The leader's answer to one batch: a result per proposal, in the batch's order.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedAnswer {
    pub call: u64,
    pub results: Vec<Result<Outcome, ForwardError>>,
}

type Results = Vec<Result<Outcome, ForwardError>>;
type Waiting = HashMap<u64, oneshot::Sender<Result<Results, Status>>>;

/// One open stream to a leader.
#[derive(Debug)]
pub struct ProposalStream {
    batches: mpsc::Sender<pb::Payload>,
    /// Calls sent and not yet answered; `None` once the stream has failed.
    waiting: Arc<Mutex<Option<Waiting>>>,
    next_call: AtomicU64,
}

impl ProposalStream {
    /// Opens a stream on `channel`; the call itself is made by the task that reads answers.
    pub fn open(channel: Channel) -> ProposalStream {
        let (batches, outgoing) = mpsc::channel(OUTGOING);
        let waiting = Arc::new(Mutex::new(Some(Waiting::new())));
        tokio::spawn(read_answers(channel, outgoing, waiting.clone()));
        ProposalStream { batches, waiting, next_call: AtomicU64::new(0) }
    }

    /// Whether the stream has failed: calls on it would fail at once.
    pub fn failed(&self) -> bool {
        lock(&self.waiting).is_none()
    }

    /// Sends `proposals` and waits up to `timeout` for their results.
    pub async fn propose(&self, proposals: &[Proposal], timeout: Duration) -> Result<Results, Status> {
        let call = self.next_call.fetch_add(1, Ordering::Relaxed);
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let data = encode(&ForwardedBatch { call, timeout_ms, proposals: proposals.to_vec() })
            .map_err(|e| Status::internal(e.to_string()))?;
        let (answer, answered) = oneshot::channel();
        match lock(&self.waiting).as_mut() {
            Some(waiting) => waiting.insert(call, answer),
            None => return Err(closed()),
        };
        let forget = || {
            if let Some(waiting) = lock(&self.waiting).as_mut() {
                waiting.remove(&call);
            }
        };
        let sent = tokio::time::timeout(timeout, self.batches.send(pb::Payload { data })).await;
        if !matches!(sent, Ok(Ok(()))) {
            forget();
            return Err(match sent {
                Err(_) => Status::deadline_exceeded("the proposal stream to the leader is backed up"),
                Ok(_) => closed(),
            });
        }
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(closed()),
            Err(_) => {
                forget();
                Err(Status::deadline_exceeded(format!("the leader did not answer within {timeout:?}")))
            }
        }
    }
}

fn closed() -> Status {
    Status::unavailable("the proposal stream to the leader closed")
}

fn lock(waiting: &Mutex<Option<Waiting>>) -> std::sync::MutexGuard<'_, Option<Waiting>> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the call, hands each answer to its caller, and when the stream ends fails every
/// call still waiting with why.
async fn read_answers(
    channel: Channel,
    outgoing: mpsc::Receiver<pb::Payload>,
    waiting: Arc<Mutex<Option<Waiting>>>,
) {
    let mut client = pb::raft_service_client::RaftServiceClient::new(channel);
    let ended = async {
        let mut answers = client.proposals(ReceiverStream::new(outgoing)).await?.into_inner();
        while let Some(message) = answers.message().await? {
            let answer: ForwardedAnswer = decode(&message.data)
                .map_err(|e| Status::internal(format!("undecodable answer on the proposal stream: {e}")))?;
            let caller = lock(&waiting).as_mut().and_then(|w| w.remove(&answer.call));
            // A caller that gave up (its time ran out) is not there any more.
            if let Some(caller) = caller {
                let _ = caller.send(Ok(answer.results));
            }
        }
        Err::<(), Status>(Status::unavailable("the leader closed the proposal stream"))
    }
    .await;
    let status = ended.err().unwrap_or_else(closed);
    for (_, caller) in lock(&waiting).take().into_iter().flatten() {
        let _ = caller.send(Err(status.clone()));
    }
}

/// The leader's side: each batch read from the stream goes into the leader's own batcher
/// (so forwarded proposals share entries with everyone else's), concurrently with the
/// batches after it; each answer is written when its batch is done.
pub fn serve(
    batcher: Batcher,
    mut batches: tonic::Streaming<pb::Payload>,
) -> ReceiverStream<Result<pb::Payload, Status>> {
    let (answers, outgoing) = mpsc::channel(OUTGOING);
    tokio::spawn(async move {
        loop {
            let message = match batches.message().await {
                Ok(Some(message)) => message,
                // The member closed its side, or the connection went: answers still being
                // committed are written if the stream is still there.
                Ok(None) | Err(_) => return,
            };
            let batch: ForwardedBatch = match decode(&message.data) {
                Ok(batch) => batch,
                Err(e) => {
                    let _ =
                        answers.send(Err(Status::invalid_argument(format!("undecodable batch: {e}")))).await;
                    return;
                }
            };
            let (answers, batcher) = (answers.clone(), batcher.clone());
            tokio::spawn(async move {
                let deadline = Instant::now().checked_add(Duration::from_millis(batch.timeout_ms));
                let results = submit_all(&batcher, batch.proposals, deadline).await;
                let answer = encode(&ForwardedAnswer { call: batch.call, results })
                    .map(|data| pb::Payload { data })
                    .map_err(|e| Status::internal(e.to_string()));
                let _ = answers.send(answer).await;
            });
        }
    });
    ReceiverStream::new(outgoing)
}

/// Submits every proposal of a forwarded batch into the leader's batcher at once and collects
/// their results in order.
pub async fn submit_all(
    batcher: &Batcher,
    mut proposals: Vec<Proposal>,
    deadline: Option<Instant>,
) -> Results {
    if proposals.len() == 1 {
        let proposal = proposals.remove(0);
        return vec![batcher.submit_local(proposal, deadline).await];
    }
    let submitted: Vec<_> = proposals
        .into_iter()
        .map(|proposal| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit_local(proposal, deadline).await })
        })
        .collect();
    let mut results = Vec::with_capacity(submitted.len());
    for task in submitted {
        results.push(task.await.unwrap_or_else(|e| Err(ForwardError::Failed(e.to_string()))));
    }
    results
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use weft_core::Command;

    use super::*;
    use crate::forward::Peers;
    use crate::test_member::Echo;

    const TIME: Duration = Duration::from_secs(5);

    fn proposal(at_ms: u64) -> Proposal {
        Proposal { at_ms, command: Command::RemoveNode { name: format!("h{at_ms}") } }
    }

    /// What the member named back for each proposal of one forwarded batch.
    async fn forwarded(peers: &Peers, addr: &str, at: &[u64], time: Duration) -> Result<Vec<String>, Status> {
        let batch: Vec<Proposal> = at.iter().copied().map(proposal).collect();
        let results = peers.propose(addr, &batch, time).await?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                Err(ForwardError::Failed(named)) => named,
                other => format!("unexpected {other:?}"),
            })
            .collect())
    }

    fn named(at: &[u64]) -> Vec<String> {
        at.iter().map(u64::to_string).collect()
    }

    #[tokio::test]
    async fn forwarded_batches_share_one_stream_and_each_answer_finds_its_caller() {
        let leader = Echo { slow_index: 1, ..Echo::default() };
        let (addr, peers) = (leader.serve().await, Peers::new(None));
        // The first batch is held back; the others overtake it on the same stream.
        let slow = tokio::spawn({
            let (peers, addr) = (peers.clone(), addr.clone());
            async move { forwarded(&peers, &addr, &[1, 100], TIME).await }
        });
        let fast: Vec<_> = (2..40u64)
            .map(|at| {
                let (peers, addr) = (peers.clone(), addr.clone());
                tokio::spawn(async move { (at, forwarded(&peers, &addr, &[at, at * 1000], TIME).await) })
            })
            .collect();
        for task in fast {
            let (at, answer) = task.await.expect("caller");
            assert_eq!(answer.expect("answered"), named(&[at, at * 1000]));
            assert!(!slow.is_finished(), "batch {at} waited for the held-back one");
        }
        assert_eq!(slow.await.expect("caller").expect("answered"), named(&[1, 100]));
        assert_eq!(leader.streams_opened.load(Ordering::SeqCst), 1);
        assert_eq!(leader.unary_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_answer_after_its_caller_gave_up_is_dropped_and_the_stream_goes_on() {
        let leader = Echo { slow_index: 1, ..Echo::default() };
        let (addr, peers) = (leader.serve().await, Peers::new(None));
        let gave_up = forwarded(&peers, &addr, &[1], Duration::from_millis(100)).await;
        assert_eq!(gave_up.map_err(|s| s.code()), Err(tonic::Code::DeadlineExceeded));
        for at in 2..10 {
            assert_eq!(forwarded(&peers, &addr, &[at], TIME).await.expect("answered"), named(&[at]));
        }
        // The late answer arrives meanwhile and is taken for nobody's.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(forwarded(&peers, &addr, &[10], TIME).await.expect("answered"), named(&[10]));
        assert_eq!(leader.streams_opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stream_that_breaks_fails_the_calls_on_it_and_the_next_call_opens_another() {
        let leader = Echo { slow_index: 1, proposal_streams_end_after: Some(2), ..Echo::default() };
        let (addr, peers) = (leader.serve().await, Peers::new(None));
        let waiting = tokio::spawn({
            let (peers, addr) = (peers.clone(), addr.clone());
            async move { forwarded(&peers, &addr, &[1], TIME).await }
        });
        while leader.streams_opened.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // The second batch ends the stream; the held-back one must fail at once, not wait
        // out its time.
        let began = Instant::now();
        let _ = forwarded(&peers, &addr, &[2], TIME).await;
        let failed = waiting.await.expect("caller");
        assert_eq!(failed.map_err(|s| s.code()), Err(tonic::Code::Unavailable));
        assert!(began.elapsed() < Duration::from_millis(400), "the failure took {:?}", began.elapsed());
        assert_eq!(forwarded(&peers, &addr, &[3], TIME).await.expect("answered"), named(&[3]));
        assert_eq!(leader.streams_opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_leader_from_before_the_stream_is_sent_one_call_per_batch() {
        let leader = Echo { without_streams: true, ..Echo::default() };
        let (addr, peers) = (leader.serve().await, Peers::new(None));
        for at in 1..=3 {
            assert_eq!(
                forwarded(&peers, &addr, &[at, at + 10], TIME).await.expect("answered"),
                named(&[at, at + 10])
            );
        }
        // The first batch found out and went unary as well; no stream is tried again soon.
        assert_eq!(leader.unary_calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn streams_move_to_new_connections_when_members_reconnect() {
        let leader = Echo::default();
        let (addr, peers) = (leader.serve().await, Peers::new(None));
        assert_eq!(forwarded(&peers, &addr, &[1], TIME).await.expect("answered"), named(&[1]));
        peers.let_go_of_connections();
        assert_eq!(forwarded(&peers, &addr, &[2], TIME).await.expect("answered"), named(&[2]));
        assert_eq!(leader.streams_opened.load(Ordering::SeqCst), 2);
    }
}
