//! Forwarding between members: the internal `weft.raft.v1` service's generated code, the
//! requests a member hands to the leader (proposals, heartbeats, membership changes, waits,
//! read indexes, the leader's view) with their answers, and [`Peers`], the client that sends
//! them. Everything travels postcard-encoded in one `Payload` message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};
use weft_core::Proposal;

use crate::proposals::{ProposalStream, UNARY_RETRY};
use crate::raft_types::{NodeId, Outcome};
use crate::store::{decode, encode};

/// Generated code of the internal `weft.raft.v1` service.
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("weft.raft.v1");
}

use pb::raft_service_client::RaftServiceClient;

/// How long a member waits to connect to another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a forwarded request was not carried out.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The member asked is not the leader (any more); try the one it names.
    #[error("member is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The leader refused the request itself (an unknown node, say).
    #[error("{0}")]
    Refused(weft_core::Error),
    #[error("{0}")]
    Failed(String),
    /// The client's deadline passed before the proposal went into a log entry: nothing was
    /// written.
    #[error("the request's deadline passed before it was proposed; nothing was written")]
    Expired,
}

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub address: String,
    pub role: MemberRole,
    pub voter: bool,
    pub reachable: bool,
    pub matched_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    Leader,
    Follower,
    Candidate,
    Learner,
}

/// What only the leader knows: replication to each member, and each host's last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    pub leader: NodeId,
    pub members: Vec<MemberView>,
    /// Host name → the revision it last reported programmed.
    pub applied: std::collections::BTreeMap<String, u64>,
}

/// A change to the set of controllers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Catch up as a learner, then become a voter.
    Add {
        id: NodeId,
        address: String,
    },
    Remove {
        id: NodeId,
    },
}

/// An applied-everywhere wait, as one member hands it to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwaitApplied {
    pub network: String,
    pub revision: u64,
    pub except_node: String,
    pub timeout_ms: u64,
    /// The endpoint the revision made, when the wait is for one (may be empty).
    pub endpoint_id: String,
}

/// The hosts waited for, those still behind when the wait ran out, and those that reported
/// they cannot program the endpoint waited for (both empty on success).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedAnswer {
    pub waited_for: Vec<String>,
    pub behind: Vec<String>,
    /// Host and what it reported.
    pub blocked: Vec<(String, String)>,
}

/// A node's heartbeat, as one member hands it to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Beat {
    pub name: String,
    pub applied_revision: u64,
    pub problems: std::collections::BTreeMap<String, String>,
}

/// What the leader answers a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatAnswer {
    pub status: weft_core::NodeStatus,
    pub revision: u64,
}

/// Lazily connected channels to other members, by address.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    state: Arc<Mutex<PeerChannels>>,
}

#[derive(Debug, Default)]
struct PeerChannels {
    by_address: HashMap<String, Channel>,
    /// Mutual TLS towards other members (their certificates name their addresses); none
    /// with `--insecure`.
    tls: Option<ClientTlsConfig>,
    /// Counts credential renewals, so long-lived streams know to move to new connections.
    generation: u64,
    /// Open proposal streams to leaders, by address.
    proposal_streams: HashMap<String, Arc<ProposalStream>>,
    /// Leaders that did not serve the proposal stream, and since when: sent unary calls.
    unary_proposals: HashMap<String, Instant>,
}

impl Peers {
    pub fn new(tls: Option<ClientTlsConfig>) -> Peers {
        Peers { state: Arc::new(Mutex::new(PeerChannels { tls, ..PeerChannels::default() })) }
    }

    /// Connects with `tls` (a renewed credential) from now on: channels open so far are let
    /// go, calls already on them finish there.
    pub fn reconnect_with(&self, tls: ClientTlsConfig) {
        let mut state = self.lock();
        state.tls = Some(tls);
        Self::let_go(&mut state);
    }

    /// Opens new connections from now on; calls and streams on the old ones finish there.
    #[cfg(test)]
    pub(crate) fn let_go_of_connections(&self) {
        Self::let_go(&mut self.lock());
    }

    fn let_go(state: &mut PeerChannels) {
        state.by_address.clear();
        state.proposal_streams.clear();
        state.generation += 1;
    }

    /// Changes whenever the connections are let go ([`Peers::reconnect_with`]).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A client for the member at `addr` (host:port). Connection happens on first use.
    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, Status> {
        self.channel(addr).map(RaftServiceClient::new)
    }

    /// The channel to the member at `addr`, for any of its services.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        Self::channel_in(&mut self.lock(), addr)
    }

    fn channel_in(state: &mut PeerChannels, addr: &str) -> Result<Channel, Status> {
        if let Some(channel) = state.by_address.get(addr) {
            return Ok(channel.clone());
        }
        let scheme = if state.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Status::internal(format!("bad member address {addr:?}: {e}")))?;
        if let Some(tls) = &state.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| Status::internal(format!("TLS towards member {addr}: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        state.by_address.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Sends a batch of proposals to the member at `addr` (the leader), which commits them
    /// with its own; answers one result per proposal.
    pub async fn propose(
        &self,
        addr: &str,
        proposals: &[Proposal],
        timeout: Duration,
    ) -> Result<Vec<Result<Outcome, ForwardError>>, Status> {
        let Some(stream) = self.proposal_stream(addr)? else {
            return self.forward(addr, Forwarded::Propose, &proposals, timeout).await;
        };
        match stream.propose(proposals, timeout).await {
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    leader = addr,
                    "leader serves no proposal stream (an earlier release): unary calls"
                );
                self.send_unary_proposals(addr);
                self.forward(addr, Forwarded::Propose, &proposals, timeout).await
            }
            answered => answered,
        }
    }

    /// The open proposal stream to `addr`, opened (or reopened after a failure) as needed;
    /// none while that member is sent unary calls.
    fn proposal_stream(&self, addr: &str) -> Result<Option<Arc<ProposalStream>>, Status> {
        let mut state = self.lock();
        match state.unary_proposals.get(addr) {
            Some(since) if since.elapsed() < UNARY_RETRY => return Ok(None),
            Some(_) => {
                state.unary_proposals.remove(addr);
            }
            None => {}
        }
        if let Some(stream) = state.proposal_streams.get(addr).filter(|s| !s.failed()) {
            return Ok(Some(stream.clone()));
        }
        let stream = Arc::new(ProposalStream::open(Self::channel_in(&mut state, addr)?));
        state.proposal_streams.insert(addr.to_string(), stream.clone());
        Ok(Some(stream))
    }

    fn send_unary_proposals(&self, addr: &str) {
        let mut state = self.lock();
        state.proposal_streams.remove(addr);
        state.unary_proposals.insert(addr.to_string(), Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PeerChannels> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a node's heartbeat to the member at `addr`.
    pub async fn heartbeat(
        &self,
        addr: &str,
        beat: &Beat,
        timeout: Duration,
    ) -> Result<Result<HeartbeatAnswer, ForwardError>, Status> {
        self.forward(addr, Forwarded::Heartbeat, beat, timeout).await
    }

    /// Hands a membership change to the member at `addr`.
    pub async fn change_membership(
        &self,
        addr: &str,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<Result<(), ForwardError>, Status> {
        self.forward(addr, Forwarded::ChangeMembership, change, timeout).await
    }

    /// Hands an applied-everywhere wait to the member at `addr` (the leader).
    pub async fn await_applied(
        &self,
        addr: &str,
        wait: &AwaitApplied,
        timeout: Duration,
    ) -> Result<Result<AppliedAnswer, ForwardError>, Status> {
        self.forward(addr, Forwarded::AwaitApplied, wait, timeout).await
    }

    /// Asks the member at `addr` (the leader) for its view of the cluster.
    pub async fn leader_view(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Result<LeaderView, ForwardError>, Status> {
        self.forward(addr, Forwarded::LeaderView, &(), timeout).await
    }

    /// Asks the member at `addr` for a read index.
    pub async fn read_index(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Result<u64, ForwardError>, Status> {
        self.forward(addr, Forwarded::ReadIndex, &(), timeout).await
    }

    /// One forwarded request: encode, call with a deadline, decode the answer.
    async fn forward<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        addr: &str,
        method: Forwarded,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Status> {
        let data = encode(req).map_err(|e| Status::internal(e.to_string()))?;
        let mut request = Request::new(pb::Payload { data });
        request.set_timeout(timeout);
        let mut client = self.client(addr)?;
        let call = async {
            Ok::<_, Status>(match method {
                Forwarded::Propose => client.propose(request).await?,
                Forwarded::Heartbeat => client.heartbeat(request).await?,
                Forwarded::ChangeMembership => client.change_membership(request).await?,
                Forwarded::ReadIndex => client.read_index(request).await?,
                Forwarded::AwaitApplied => client.await_applied(request).await?,
                Forwarded::LeaderView => client.leader_view(request).await?,
            })
        };
        // The request's own timeout starts only once it is dispatched on a ready connection;
        // a member that hangs still has the kernel accept connections for it, and a new one
        // then waits for ever in the TLS handshake. Past the timeout and a grace for the
        // member's own DeadlineExceeded, the call is given up here.
        let limit = timeout + FORWARD_GRACE;
        let reply = tokio::time::timeout(limit, call)
            .await
            .map_err(|_| Status::unavailable(format!("member {addr} did not answer within {limit:?}")))??;
        decode(&reply.into_inner().data)
            .map_err(|e| Status::internal(format!("undecodable answer from {addr}: {e}")))
    }
}

/// How much longer than its timeout a forwarded call may take before it is given up.
const FORWARD_GRACE: Duration = Duration::from_secs(1);

/// The requests one member forwards to another.
#[derive(Debug, Clone, Copy)]
enum Forwarded {
    Propose,
    Heartbeat,
    ChangeMembership,
    ReadIndex,
    AwaitApplied,
    LeaderView,
}

/// The leader named by a forward-to-leader error, as (id, address).
pub(crate) fn leader_of(
    err: &openraft::error::ForwardToLeader<NodeId, BasicNode>,
) -> Option<(NodeId, String)> {
    Some((err.leader_id?, err.leader_node.as_ref()?.addr.clone()))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_forward_to_a_member_that_never_finishes_the_tls_handshake_is_given_up() {
        // A stopped member: the kernel completes the TCP handshake, nobody reads the TLS hello.
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = hung.local_addr().unwrap().to_string();
        let peers = Peers::new(Some(ClientTlsConfig::new().domain_name("weft-controller")));
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        let status = peers.read_index(&addr, timeout).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("did not answer"), "{status:?}");
        assert!(
            started.elapsed() < timeout + FORWARD_GRACE + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}
