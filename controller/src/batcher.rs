//! Gathers client proposals into Raft entries: while a batch is being committed, new proposals
//! queue up and go together in the next entry, so under load many writes share one Raft round
//! and one fsync instead of paying for them one by one. On a member that is not the leader, the
//! whole batch travels to the leader in one forwarded request.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use weft_core::Proposal;

use std::time::Duration;

use crate::raft_network::{ForwardError, Peers, leader_of};
use crate::raft_types::{NodeId, Outcome, ProposalBatch, Raft};

/// Most proposals in one log entry.
const MAX_BATCH: usize = 1024;
/// Batches being committed at once; more proposals wait and batch up meanwhile.
const IN_FLIGHT: usize = 2;
/// Proposals that may wait for a batch before submitters feel back-pressure.
const QUEUE: usize = 16 * MAX_BATCH;

struct Submission {
    proposal: Proposal,
    /// Forwarded from another member: commit here or refuse, never forward again.
    local_only: bool,
    reply: oneshot::Sender<Result<Outcome, ForwardError>>,
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
    pub async fn submit(&self, proposal: Proposal) -> Result<Outcome, ForwardError> {
        self.enqueue(proposal, false).await
    }

    /// Like [`Batcher::submit`] for a proposal another member forwarded: it is committed here,
    /// or refused when this member is not the leader (no forwarding loops).
    pub async fn submit_local(&self, proposal: Proposal) -> Result<Outcome, ForwardError> {
        self.enqueue(proposal, true).await
    }

    async fn enqueue(&self, proposal: Proposal, local_only: bool) -> Result<Outcome, ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Submission { proposal, local_only, reply })
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
    /// Commits a batch: into the local Raft on the leader (or when told to stay local), else to
    /// the leader in one forwarded request. One result per proposal.
    async fn commit(&self, proposals: Vec<Proposal>, local_only: bool) -> Vec<Result<Outcome, ForwardError>> {
        let count = proposals.len();
        let all = |e: ForwardError| vec![Err(e); count];
        let leader = {
            let metrics = self.raft.metrics().borrow().clone();
            metrics
                .current_leader
                .map(|id| (id, metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone())))
        };
        match leader {
            Some((leader, Some(addr))) if leader != self.id && !local_only => {
                match self.peers.propose(&addr, &proposals, self.timeout).await {
                    Ok(results) if results.len() == count => results,
                    Ok(_) => all(ForwardError::Failed(format!("leader {leader} answered a different batch"))),
                    Err(status) => {
                        all(ForwardError::Failed(format!("leader {leader} at {addr}: {}", status.message())))
                    }
                }
            }
            _ => match self.raft.client_write(ProposalBatch(proposals)).await {
                Ok(written) if written.data.outcomes.len() == count => {
                    written.data.outcomes.into_iter().map(Ok).collect()
                }
                Ok(_) => all(ForwardError::Failed("the log entry answered a different batch".into())),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    all(ForwardError::NotLeader { leader: leader_of(&f) })
                }
                Err(e) => all(ForwardError::Failed(e.to_string())),
            },
        }
    }
}

async fn run(route: Route, mut submissions: mpsc::Receiver<Submission>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = submissions.recv().await {
        // Waiting for a free slot is what lets the next batch grow.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        // One batch holds proposals of one kind: forwarded ones must stay on this member.
        let local_only = first.local_only;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match submissions.try_recv() {
                Ok(more) if more.local_only == local_only => batch.push(more),
                Ok(other) => {
                    spawn_batch(&route, vec![other], other_kind_permit(&in_flight).await);
                }
                Err(_) => break,
            }
        }
        spawn_batch(&route, batch, Some(permit));
    }
}

/// A slot for a batch of the other kind met while gathering (rare: a member that just lost or
/// won leadership).
async fn other_kind_permit(in_flight: &Arc<Semaphore>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    in_flight.clone().try_acquire_owned().ok()
}

fn spawn_batch(route: &Route, batch: Vec<Submission>, permit: Option<tokio::sync::OwnedSemaphorePermit>) {
    let route = route.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let local_only = batch.first().is_some_and(|s| s.local_only);
        let (proposals, replies): (Vec<Proposal>, Vec<_>) =
            batch.into_iter().map(|s| (s.proposal, s.reply)).unzip();
        for (reply, result) in replies.into_iter().zip(route.commit(proposals, local_only).await) {
            let _ = reply.send(result);
        }
    });
}
