//! One controller's view of the cluster: proposing writes (here, or through the leader),
//! linearizable reads, and what only the leader knows (heartbeats, replication), each with a
//! deadline so a request never hangs when there is no quorum. The gRPC services
//! (`api`, `join`, `watch`, `raft_server`) sit on top of [`Controller`]; the layers under it
//! are the batcher, forwarding to other members (`forward`) and the registry.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use weft_core::{Command, NodeStatus, Proposal, Response};

use crate::batcher::Batcher;
use crate::error::ControllerError;
use crate::forward::{
    AppliedAnswer, AwaitApplied, Beat, ForwardError, HeartbeatAnswer, LeaderView, MemberRole, MemberView,
    MembershipChange, Peers,
};
use crate::liveness::Liveness;
use crate::metrics::{Gauges, Metrics, Timer};
use crate::raft_types::{NodeId, Outcome, Raft};
use crate::registry::Registry;

/// The default deadline of one client request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before retrying when no leader is known (an election is under way).
const NO_LEADER_PAUSE: Duration = Duration::from_millis(50);

/// What the API services need of the cluster.
#[derive(Clone)]
pub struct Controller {
    pub id: NodeId,
    pub raft: Raft,
    pub registry: Arc<Registry>,
    pub peers: Peers,
    /// Gathers this member's proposals into Raft entries.
    pub batcher: Batcher,
    pub liveness: Arc<Liveness>,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    /// The cluster CA (and its key, on members that hold it), for join tokens; none with
    /// `--insecure`.
    pub signer: Option<Arc<crate::signer::Signer>>,
    /// When this member's own certificate expires (ms since the epoch), kept current by its
    /// renewal; none with `--insecure`.
    pub credential_expires_ms: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("id", &self.id).finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A request id no other proposal has: this member's id, when its process started, and a
/// count. Clients' ids are theirs to choose; one that copies this shape only collides with
/// itself.
fn own_request_id(member: NodeId) -> String {
    static STARTED_NS: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let started =
        STARTED_NS.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("weft-member-{member}-{started:x}-{n}")
}

impl Controller {
    /// When this member's own certificate expires, ms since the epoch; none without TLS.
    pub fn credential_expires_ms(&self) -> Option<u64> {
        self.credential_expires_ms.as_ref().map(|ms| ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Commits a command through Raft and returns what the state machine answered. Writes that
    /// reach a follower are forwarded to the leader.
    pub async fn propose(&self, command: Command) -> Result<(u64, Response), ControllerError> {
        self.propose_by(command, None).await
    }

    /// [`Controller::propose`] for a client waiting until `client_deadline`: a request whose
    /// deadline has passed is not proposed (DeadlineExceeded, nothing written). One that is
    /// proposed may still commit after the client gave up; request ids make its retry safe.
    pub async fn propose_by(
        &self,
        command: Command,
        client_deadline: Option<Instant>,
    ) -> Result<(u64, Response), ControllerError> {
        // Pools, VNI range and the id seed come from the cluster configuration: nothing may be
        // written before it. Once this member has applied it, anything proposed now is
        // ordered after it in the log, so the local check is enough. A new cluster is
        // configured within moments of electing a leader, so an early request waits for it
        // (within its deadline) rather than fail.
        let deadline = Instant::now() + self.request_timeout;
        let deadline = client_deadline.map_or(deadline, |d| d.min(deadline));
        if !matches!(command, Command::Configure(_)) {
            while self.registry.with_state(|s| s.config().cluster_id.is_empty()) {
                if Instant::now() >= deadline {
                    return Err(ControllerError::Starting);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let proposal = Proposal { at_ms: now_ms(), command: self.with_own_request_id(command) };
        let timer = Timer::start();
        let outcome = self.propose_until(&proposal, deadline, client_deadline).await?;
        self.metrics.observe_commit(timer.elapsed());
        outcome.result.map(|response| (outcome.revision, response)).map_err(ControllerError::Refused)
    }

    /// A command its client sent without a request id gets one of this member's, so the
    /// member's own retries are answered from the state machine instead of applied again: a
    /// leader that dies or steps down with the write in flight answers "not the leader" (or
    /// nothing) although the write may still commit, and the retry then found the client's
    /// own endpoint and answered AlreadyExists (the scale benchmark's restart hit it).
    fn with_own_request_id(&self, command: Command) -> Command {
        if matches!(command, Command::Once { .. }) {
            return command;
        }
        Command::Once { request_id: own_request_id(self.id), command: Box::new(command) }
    }

    async fn propose_until(
        &self,
        proposal: &Proposal,
        deadline: Instant,
        client_deadline: Option<Instant>,
    ) -> Result<Outcome, ControllerError> {
        let mut last_problem = String::from("no attempt finished");
        loop {
            if client_deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ControllerError::Expired);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ControllerError::no_quorum("the write", self.request_timeout, &last_problem));
            }
            let attempt =
                tokio::time::timeout(remaining, self.batcher.submit(proposal.clone(), client_deadline)).await;
            match attempt {
                Ok(Err(ForwardError::Expired)) => return Err(ControllerError::Expired),
                Err(_) => {
                    return Err(ControllerError::no_quorum(
                        "the write",
                        self.request_timeout,
                        "commit timed out",
                    ));
                }
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(ForwardError::Refused(err))) => return Err(ControllerError::Refused(err)),
                // Leadership moved or is being decided: the batcher routes the retry to whoever
                // leads by then.
                Ok(Err(ForwardError::NotLeader { leader })) => {
                    last_problem = match leader {
                        Some((id, _)) => format!("leadership moved to member {id}"),
                        None => "no leader elected".into(),
                    }
                }
                Ok(Err(ForwardError::Failed(e))) => last_problem = e,
            }
            tokio::time::sleep(NO_LEADER_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The read index this leader vouches for, once it is safe to.
    ///
    /// openraft 0.9 answers a read with the leader's committed index. weft does not persist
    /// the committed index, and a leader restarted with its vote keeps its term without a new
    /// election; until it commits something new its committed index is only what its snapshot
    /// says. After a `kill -9` of every member, reads and watchers were served revision
    /// 100,164 when 101,061 had been acknowledged (found by the scale benchmark). A leader now
    /// vouches only for an index at or past the end of its log as the read arrives, once it has
    /// applied that far: every acknowledged write is in its log.
    pub async fn read_index_as_leader(&self, timeout: Duration) -> Result<u64, openraft::metrics::WaitError> {
        // Everything in the leader's log when the read arrives: every acknowledged write is
        // there (and so is openraft's own read index, which cannot be past the log's end).
        let last_log = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(last_log), "the leader applies its whole log")
            .await?;
        Ok(last_log)
    }

    /// Waits until this member's registry reflects every write committed before the call
    /// (read-index through the leader), so the read that follows is linearizable.
    pub async fn linearizable(&self) -> Result<(), ControllerError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut last_problem = String::from("no attempt finished");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ControllerError::no_quorum("the read", self.request_timeout, &last_problem));
            }
            let leader = match tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await {
                Err(_) => {
                    return Err(ControllerError::no_quorum(
                        "the read",
                        self.request_timeout,
                        "leadership check timed out",
                    ));
                }
                Ok(Ok(_)) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return self.read_index_as_leader(remaining).await.map(|_| ()).map_err(|e| {
                        ControllerError::no_quorum("the read", self.request_timeout, &e.to_string())
                    });
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    f.leader_id.zip(f.leader_node.map(|n| n.addr))
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                    last_problem = e.to_string();
                    None
                }
                Ok(Err(e)) => {
                    return Err(ControllerError::Unavailable(format!("this controller cannot read: {e}")));
                }
            };
            let no_leader = leader.is_none();
            if let Some((leader_id, addr)) = leader.filter(|(id, _)| *id != self.id) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match self.peers.read_index(&addr, remaining).await {
                    Ok(Ok(index)) => {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        return self
                            .raft
                            .wait(Some(remaining))
                            .applied_index_at_least(Some(index), "linearizable read")
                            .await
                            .map(|_| ())
                            .map_err(|e| {
                                ControllerError::no_quorum("the read", self.request_timeout, &e.to_string())
                            });
                    }
                    Ok(Err(e)) => last_problem = e.to_string(),
                    Err(status) => {
                        last_problem = format!("leader {leader_id} at {addr}: {}", status.message())
                    }
                }
            } else if no_leader && last_problem == "no attempt finished" {
                last_problem = "no leader elected".into();
            }
            tokio::time::sleep(NO_LEADER_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The gauges of the metrics endpoint, read now.
    pub fn gauges(&self) -> Gauges {
        let m = self.raft.metrics().borrow().clone();
        Gauges {
            is_leader: m.current_leader == Some(self.id),
            term: m.current_term,
            revision: self.registry.revision(),
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            members: u64::try_from(m.membership_config.membership().nodes().count()).unwrap_or(u64::MAX),
            snapshot_bytes: self.registry.snapshot_bytes(),
            credential_expires_ms: self.credential_expires_ms(),
        }
    }

    /// Records a node's heartbeat on the leader, wherever it arrived.
    pub async fn heartbeat(&self, beat: Beat) -> Result<HeartbeatAnswer, ControllerError> {
        let deadline = Instant::now() + self.request_timeout;
        self.on_leader(
            "the heartbeat",
            deadline,
            || self.heartbeat_as_leader(&beat),
            |addr, remaining| {
                let beat = &beat;
                async move { self.peers.heartbeat(&addr, beat, remaining).await }
            },
        )
        .await
    }

    /// The applied-everywhere barrier, answered by the leader wherever the request arrived.
    pub async fn await_applied(&self, wait: AwaitApplied) -> Result<AppliedAnswer, ControllerError> {
        let limit = self.request_timeout;
        let wanted =
            if wait.timeout_ms == 0 { limit } else { Duration::from_millis(wait.timeout_ms).min(limit) };
        let wait = AwaitApplied { timeout_ms: u64::try_from(wanted.as_millis()).unwrap_or(u64::MAX), ..wait };
        // The leader waits up to `wanted`; forwarding gets a little more so its answer arrives.
        let deadline = Instant::now() + wanted + Duration::from_millis(500);
        self.on_leader(
            "the applied-everywhere wait",
            deadline,
            || self.await_applied_as_leader(&wait),
            |addr, remaining| {
                let wait = &wait;
                async move { self.peers.await_applied(&addr, wait, remaining).await }
            },
        )
        .await
    }

    /// The leader's side of the barrier: waits for heartbeats until every host that is up and
    /// has an endpoint on the network (but the excepted one) reports the revision.
    pub async fn await_applied_as_leader(&self, wait: &AwaitApplied) -> Result<AppliedAnswer, ForwardError> {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(ForwardError::NotLeader { leader: None });
        }
        let hosts: Vec<String> = self
            .registry
            .with_state(|s| {
                let network = s.resolve_network(&wait.network)?;
                let mut hosts: Vec<String> = s
                    .network_endpoints(&network.id)
                    .map(|e| e.node.clone())
                    .filter(|n| *n != wait.except_node)
                    .filter(|n| s.node(n).is_some_and(|node| node.status == NodeStatus::Up))
                    .collect();
                hosts.sort();
                hosts.dedup();
                Ok(hosts)
            })
            .map_err(ForwardError::Refused)?;
        let deadline = Instant::now() + Duration::from_millis(wait.timeout_ms);
        loop {
            let heard = self.liveness.next_heartbeat();
            let blocked: Vec<(String, String)> = if wait.endpoint_id.is_empty() {
                Vec::new()
            } else {
                hosts
                    .iter()
                    .filter_map(|h| Some((h.clone(), self.liveness.problem(h, &wait.endpoint_id)?)))
                    .collect()
            };
            let behind: Vec<String> =
                hosts.iter().filter(|h| self.liveness.applied_revision(h) < wait.revision).cloned().collect();
            if !blocked.is_empty() || behind.is_empty() || Instant::now() >= deadline {
                return Ok(AppliedAnswer { waited_for: hosts, behind, blocked });
            }
            let _ = tokio::time::timeout_at(deadline.into(), heard).await;
        }
    }

    /// Runs a request on the leader: `local` when this member leads, else `remote` with the
    /// leader's address; retried while leadership is unknown or moving, until `deadline`.
    async fn on_leader<T, L, LF, R, RF>(
        &self,
        what: &str,
        deadline: Instant,
        local: L,
        remote: R,
    ) -> Result<T, ControllerError>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T, ForwardError>>,
        R: Fn(String, Duration) -> RF,
        RF: Future<Output = Result<Result<T, ForwardError>, tonic::Status>>,
    {
        let mut last_problem = String::from("no leader elected");
        loop {
            match self.leader() {
                Some((id, _)) if id == self.id => {
                    return local().await.map_err(|e| match e {
                        ForwardError::Refused(err) => ControllerError::Refused(err),
                        other => ControllerError::Unavailable(other.to_string()),
                    });
                }
                Some((id, Some(addr))) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match remote(addr.clone(), remaining).await {
                        Ok(Ok(answer)) => return Ok(answer),
                        Ok(Err(ForwardError::Refused(err))) => return Err(ControllerError::Refused(err)),
                        Ok(Err(e)) => last_problem = e.to_string(),
                        Err(status) => last_problem = format!("leader {id} at {addr}: {}", status.message()),
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ControllerError::no_quorum(what, self.request_timeout, &last_problem));
            }
            tokio::time::sleep(NO_LEADER_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The leader's side of a heartbeat: remember it, and bring a host marked down back up.
    pub async fn heartbeat_as_leader(&self, beat: &Beat) -> Result<HeartbeatAnswer, ForwardError> {
        let name = beat.name.as_str();
        let term = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.current_leader != Some(self.id) {
                return Err(ForwardError::NotLeader { leader: None });
            }
            metrics.current_term
        };
        let status = self.registry.with_state(|s| s.node(name).map(|n| n.status));
        let Some(status) = status else {
            return Err(ForwardError::Refused(weft_core::Error::not_found(
                "node",
                name,
                format!(
                    "no node named {} is registered: register the host before it heartbeats",
                    weft_core::error::quoted(name)
                ),
            )));
        };
        self.liveness.record(name, beat.applied_revision, beat.problems.clone(), Instant::now());
        // The host's own endpoints carry what it reports, replicated (so any member lists
        // it); written only when the report differs from the registry. Looking is skipped for
        // a report already found matching in this term: 5,000 hosts with 200 endpoints each
        // made the leader walk a million endpoints a second, and it missed its Raft heartbeats.
        if !self.liveness.is_settled(name, term, &beat.problems) {
            let (changes, matched) = self.registry.with_state(|s| {
                let mut matched = 0;
                let changes: Vec<(String, Option<String>)> = s
                    .node_endpoints(name)
                    .filter_map(|e| {
                        if beat.problems.is_empty() && e.problem.is_none() {
                            return None;
                        }
                        let id = e.id.to_string();
                        let reported = beat.problems.get(&id).cloned();
                        matched += usize::from(reported.is_some());
                        let unchanged = reported.as_deref().map(weft_core::state::kept_problem) == e.problem;
                        (!unchanged).then_some((id, reported))
                    })
                    .collect();
                (changes, matched)
            });
            let recorded = changes.is_empty() || {
                let command = Command::SetEndpointProblems { node: name.to_string(), problems: changes };
                match self.propose(command).await {
                    Ok(_) => true,
                    Err(status) => {
                        tracing::warn!(node = name, %status, "recording the host's endpoint problems");
                        false
                    }
                }
            };
            // A report naming an endpoint this member has not applied yet is looked at again.
            if recorded && matched == beat.problems.len() {
                self.liveness.settle(name, term, beat.problems.clone());
            }
        }
        if status == NodeStatus::Down {
            let command = Command::SetNodeStatus { name: name.to_string(), status: NodeStatus::Up };
            self.propose(command).await.map_err(|e| ForwardError::Failed(e.to_string()))?;
            tracing::info!(node = name, "node is up again");
        }
        Ok(HeartbeatAnswer { status: NodeStatus::Up, revision: self.registry.revision() })
    }

    /// On the leader, marks hosts down once they have been silent for the liveness timeout.
    /// Runs for the life of the controller.
    pub async fn watch_liveness(self) {
        let period = (self.liveness.timeout() / 4).max(Duration::from_millis(50));
        let mut ticks = tokio::time::interval(period);
        let mut leader_since: Option<Instant> = None;
        loop {
            ticks.tick().await;
            if self.raft.metrics().borrow().current_leader != Some(self.id) {
                leader_since = None;
                continue;
            }
            let now = Instant::now();
            let since = *leader_since.get_or_insert(now);
            let overdue = self.registry.with_state(|s| self.liveness.overdue(s.nodes(), since, now));
            for name in overdue {
                let command = Command::SetNodeStatus { name: name.clone(), status: NodeStatus::Down };
                match self.propose(command).await {
                    Ok(_) => {
                        tracing::warn!(node = %name, timeout = ?self.liveness.timeout(), "node missed its heartbeats: marked down")
                    }
                    Err(status) => {
                        tracing::warn!(node = %name, cause = %status, "marking node down failed")
                    }
                }
            }
        }
    }

    /// The leader's id and address, as this member knows them.
    pub(crate) fn leader(&self) -> Option<(NodeId, Option<String>)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        Some((id, metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone())))
    }

    /// Adds or removes a controller, through the leader wherever the request arrived.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), ControllerError> {
        let deadline = Instant::now() + self.request_timeout;
        self.on_leader(
            "the membership change",
            deadline,
            || self.change_membership_as_leader(&change),
            // Adding a member includes its catch-up, which may take longer than a request;
            // the leader gets the rest of this request's time.
            |addr, remaining| {
                let change = &change;
                async move { self.peers.change_membership(&addr, change, remaining).await }
            },
        )
        .await?;
        // Made on the leader: answer only once this member's view shows it too.
        self.await_membership(&change, deadline).await;
        Ok(())
    }

    /// Waits (until `deadline` at most) for this member to see a change the leader made, so
    /// that what it answers next reflects it.
    async fn await_membership(&self, change: &MembershipChange, deadline: Instant) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let visible = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
            let membership = m.membership_config.membership();
            match change {
                MembershipChange::Add { id, .. } => membership.voter_ids().any(|v| v == *id),
                MembershipChange::Remove { id } => membership.get_node(id).is_none(),
            }
        };
        if let Err(e) = self.raft.wait(Some(remaining)).metrics(visible, "membership change visible").await {
            tracing::warn!(cause = %e, ?change, "membership change made on the leader but not yet seen here");
        }
    }

    /// The leader's side of a membership change.
    pub async fn change_membership_as_leader(&self, change: &MembershipChange) -> Result<(), ForwardError> {
        if self.leader().map(|(id, _)| id) != Some(self.id) {
            return Err(ForwardError::NotLeader { leader: None });
        }
        let refused = |message: String| {
            ForwardError::Refused(weft_core::Error::conflict("MEMBERSHIP", "members", message))
        };
        match change {
            MembershipChange::Add { id, address } => {
                let added =
                    self.raft.add_learner(*id, BasicNode { addr: address.clone() }, false).await.map_err(
                        |e| refused(format!("adding member {id} at {address} as a learner failed: {e}")),
                    )?;
                // openraft's own blocking wait gives up after 500 ms and reports success anyway;
                // a member that is not running (or not caught up) must not become a voter.
                let target = added.log_id.index;
                let caught_up = self
                    .raft
                    .wait(Some(self.request_timeout))
                    .metrics(
                        |m| {
                            m.replication
                                .as_ref()
                                .and_then(|r| r.get(id).copied().flatten())
                                .is_some_and(|matched| matched.index >= target)
                        },
                        "the new member to catch up",
                    )
                    .await;
                if caught_up.is_err() {
                    return Err(refused(format!(
                        "member {id} at {address} did not catch up within {:?}: is it running with --join and reachable? It stays a learner (no vote) until added again",
                        self.request_timeout
                    )));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([*id].into()), false)
                    .await
                    .map_err(|e| refused(format!("promoting member {id} to voter failed: {e}")))?;
            }
            MembershipChange::Remove { id } => {
                let voters: Vec<NodeId> =
                    self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
                if !voters.contains(id) {
                    return Err(ForwardError::Refused(weft_core::Error::not_found(
                        "member",
                        id,
                        format!("member {id} is not a voter of this cluster (voters: {voters:?})"),
                    )));
                }
                if voters.len() == 1 {
                    return Err(refused(format!(
                        "member {id} is the last voter; a cluster cannot remove it"
                    )));
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters([*id].into()), false)
                    .await
                    .map_err(|e| refused(format!("removing member {id} failed: {e}")))?;
            }
        }
        tracing::info!(?change, "membership changed");
        Ok(())
    }

    /// The members as this member's own metrics show them: replication facts only where this
    /// member leads.
    pub(crate) fn local_members(&self) -> Vec<MemberView> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replication = metrics.replication.clone().unwrap_or_default();
        membership
            .nodes()
            .map(|(id, node)| {
                let role = if Some(*id) == metrics.current_leader {
                    MemberRole::Leader
                } else if !voters.contains(id) {
                    MemberRole::Learner
                } else if *id == self.id && metrics.state == ServerState::Candidate {
                    MemberRole::Candidate
                } else {
                    MemberRole::Follower
                };
                MemberView {
                    id: *id,
                    address: node.addr.clone(),
                    role,
                    voter: voters.contains(id),
                    reachable: *id == self.id || replication.get(id).is_some_and(Option::is_some),
                    matched_index: replication.get(id).and_then(|m| m.as_ref()).map_or(0, |l| l.index),
                }
            })
            .collect()
    }

    /// The leader's side of `Controller::leader_view`.
    pub fn leader_view_as_leader(&self) -> Result<LeaderView, ForwardError> {
        if self.raft.metrics().borrow().current_leader != Some(self.id) {
            return Err(ForwardError::NotLeader { leader: None });
        }
        Ok(LeaderView {
            leader: self.id,
            members: self.local_members(),
            applied: self.liveness.applied_revisions(),
        })
    }

    /// The leader's view, from the leader wherever this runs; `None` when no leader answers in
    /// time (no quorum, or an election under way).
    pub(crate) async fn leader_view(&self) -> Option<LeaderView> {
        let deadline = Instant::now() + self.request_timeout.min(LEADER_VIEW_TIMEOUT);
        match self.leader() {
            Some((id, _)) if id == self.id => self.leader_view_as_leader().ok(),
            Some((_, Some(addr))) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                self.peers.leader_view(&addr, remaining).await.ok()?.ok()
            }
            _ => None,
        }
    }
}

/// How long a follower waits for the leader's view before answering with its own.
const LEADER_VIEW_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_own_request_ids_are_valid_and_never_repeat() {
        let ids: BTreeSet<String> = (0..1000).map(|_| own_request_id(3)).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            weft_core::requests::check_id(id).unwrap();
            assert!(id.starts_with("weft-member-3-"), "{id}");
        }
    }
}
