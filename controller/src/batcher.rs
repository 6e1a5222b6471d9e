//! Gathers client proposals into Raft entries: while a batch is being committed, new proposals
//! queue up and go together in the next entry, so under load many writes share one Raft round
//! and one fsync instead of paying for them one by one. On a member that is not the leader, the
//! whole batch travels to the leader in one forwarded request.
//!
//! A batch mixes this member's own clients' proposals with proposals other members forwarded
//! here; the two are told apart only when this member turns out not to be the leader. (Keeping
//! them in separate batches made the leader, which sees both kinds interleaved, commit mostly
//! one-proposal entries: half the throughput at 256 clients.)

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use weft_core::Proposal;

use std::time::{Duration, Instant};

use crate::forward::{ForwardError, Peers, leader_of};
use crate::raft_types::{NodeId, Outcome, ProposalBatch, Raft};

/// Most proposals in one log entry.
const MAX_BATCH: usize = 1024;
/// Batches being committed at once; more proposals wait and batch up meanwhile.
const IN_FLIGHT: usize = 2;
/// Proposals that may wait for a batch before submitters feel back-pressure.
const QUEUE: usize = 16 * MAX_BATCH;

struct Submission {
    proposal: Proposal,
    /// The client's deadline: past it, the proposal is answered Expired instead of written.
    deadline: Option<Instant>,
    /// Forwarded from another member: commit here or refuse, never forward again.
    local_only: bool,
    reply: Reply,
}

/// Hands proposals to the local Raft in batches.
#[derive(Clone, Debug)]
pub struct Batcher {
    queue: mpsc::Sender<Submission>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the batching task of member `id`; forwarded batches get `timeout`.
    pub fn start(id: NodeId, raft: Raft, peers: Peers, timeout: Duration) -> Batcher {
        let (queue, submissions) = mpsc::channel(QUEUE);
        tokio::spawn(run(Route { id, raft, peers, timeout }, submissions));
        Batcher { queue }
    }

    /// Commits one proposal (with whatever else is queued) and returns its outcome, or why this
    /// member could not commit it (not the leader, say).
    pub async fn submit(
        &self,
        proposal: Proposal,
        deadline: Option<Instant>,
    ) -> Result<Outcome, ForwardError> {
        self.enqueue(proposal, deadline, false).await
    }

    /// Like [`Batcher::submit`] for a proposal another member forwarded: it is committed here,
    /// or refused when this member is not the leader (no forwarding loops).
    pub async fn submit_local(
        &self,
        proposal: Proposal,
        deadline: Option<Instant>,
    ) -> Result<Outcome, ForwardError> {
        self.enqueue(proposal, deadline, true).await
    }

    async fn enqueue(
        &self,
        proposal: Proposal,
        deadline: Option<Instant>,
        local_only: bool,
    ) -> Result<Outcome, ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Submission { proposal, deadline, local_only, reply })
            .await
            .map_err(|_| ForwardError::Failed("this controller is shutting down".into()))?;
        answer.await.map_err(|_| ForwardError::Failed("the batch was dropped".into()))?
    }
}

/// Where batches go: into the local Raft on the leader, to the leader from anywhere else.
#[derive(Clone)]
struct Route {
    id: NodeId,
    raft: Raft,
    peers: Peers,
    timeout: Duration,
}

impl Route {
    /// Commits a batch and answers every submission: everything goes into the local Raft on the
    /// leader; elsewhere this member's own clients' proposals travel to the leader in one
    /// forwarded request, and proposals forwarded to it are refused (no forwarding loops).
    async fn commit(&self, batch: Vec<Submission>) {
        let leader = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics
                .current_leader
                .map(|id| (id, metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone())))
        };
        let Some((leader, Some(addr))) = leader.filter(|(id, _)| *id != self.id) else {
            let (proposals, replies) = unzip(batch);
            answer(replies, self.write_locally(proposals).await);
            return;
        };
        let (forward, refuse): (Vec<Submission>, Vec<Submission>) =
            batch.into_iter().partition(|s| !s.local_only);
        for submission in refuse {
            let _ =
                submission.reply.send(Err(ForwardError::NotLeader { leader: Some((leader, addr.clone())) }));
        }
        if forward.is_empty() {
            return;
        }
        let (proposals, replies) = unzip(forward);
        let count = proposals.len();
        let results = match self.peers.propose(&addr, &proposals, self.timeout).await {
            Ok(results) if results.len() == count => results,
            Ok(_) => {
                vec![Err(ForwardError::Failed(format!("leader {leader} answered a different batch"))); count]
            }
            Err(status) => {
                vec![
                    Err(ForwardError::Failed(format!("leader {leader} at {addr}: {}", status.message())));
                    count
                ]
            }
        };
        answer(replies, results);
    }

    async fn write_locally(&self, proposals: Vec<Proposal>) -> Vec<Result<Outcome, ForwardError>> {
        let count = proposals.len();
        let all = |e: ForwardError| vec![Err(e); count];
        match self.raft.client_write(ProposalBatch(proposals)).await {
            Ok(written) if written.data.outcomes.len() == count => {
                written.data.outcomes.into_iter().map(Ok).collect()
            }
            Ok(_) => all(ForwardError::Failed("the log entry answered a different batch".into())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                all(ForwardError::NotLeader { leader: leader_of(&f) })
            }
            Err(e) => all(ForwardError::Failed(e.to_string())),
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, ForwardError>>;

fn unzip(batch: Vec<Submission>) -> (Vec<Proposal>, Vec<Reply>) {
    batch.into_iter().map(|s| (s.proposal, s.reply)).unzip()
}

fn answer(replies: Vec<Reply>, results: Vec<Result<Outcome, ForwardError>>) {
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

async fn run(route: Route, mut submissions: mpsc::Receiver<Submission>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = submissions.recv().await {
        // Waiting for a free slot is what lets the next batch grow.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match submissions.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        // A client that stopped waiting (its deadline passed, or it went away and its request
        // was dropped) must not find its write committed later: such proposals are left out.
        let now = Instant::now();
        let (expired, waiting): (Vec<Submission>, Vec<Submission>) =
            batch.into_iter().partition(|s| s.deadline.is_some_and(|d| now >= d));
        for submission in expired {
            let _ = submission.reply.send(Err(ForwardError::Expired));
        }
        let batch: Vec<Submission> = waiting.into_iter().filter(|s| !s.reply.is_closed()).collect();
        if batch.is_empty() {
            continue;
        }
        let route = route.clone();
        tokio::spawn(async move {
            let _permit = permit;
            route.commit(batch).await;
        });
    }
}
