//! Node liveness: agents heartbeat to the leader, which marks a host down after a timeout of
//! silence and up again on its next heartbeat. Heartbeats themselves stay in the leader's
//! memory; only status transitions are written to the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_core::{Node, NodeStatus};

/// Default silence after which a host is marked down.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    applied_revision: u64,
    /// Endpoints the host could not program at that revision, with why.
    problems: Arc<BTreeMap<String, String>>,
}

/// A host's problem report found matching the registry, and the term it was found in.
type SettledReport = (u64, Arc<BTreeMap<String, String>>);

/// What the leader knows of each host's heartbeats.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    seen: Mutex<HashMap<String, Seen>>,
    /// Per host, the problem report last found matching the registry, and in which term. A
    /// host repeating it in the same term needs no look at its endpoints: within a term only
    /// this leader writes endpoint problems, and only from heartbeats.
    settled: Mutex<HashMap<String, SettledReport>>,
    /// Woken on every heartbeat, for those waiting on hosts' applied revisions.
    heard: tokio::sync::Notify,
}

impl Liveness {
    pub fn new(timeout: Duration) -> Liveness {
        Liveness {
            timeout,
            seen: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
            heard: tokio::sync::Notify::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(
        &self,
        name: &str,
        applied_revision: u64,
        problems: BTreeMap<String, String>,
        now: Instant,
    ) {
        self.seen()
            .insert(name.to_string(), Seen { at: now, applied_revision, problems: Arc::new(problems) });
        self.heard.notify_waiters();
    }

    fn settled_reports(&self) -> std::sync::MutexGuard<'_, HashMap<String, SettledReport>> {
        self.settled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `problems` is what the host last reported in `term` and was found to match the
    /// registry then.
    pub fn is_settled(&self, name: &str, term: u64, problems: &BTreeMap<String, String>) -> bool {
        self.settled_reports().get(name).is_some_and(|(at, settled)| *at == term && **settled == *problems)
    }

    /// Notes that the registry holds exactly `problems` for the host's endpoints, in `term`.
    pub fn settle(&self, name: &str, term: u64, problems: BTreeMap<String, String>) {
        self.settled_reports().insert(name.to_string(), (term, Arc::new(problems)));
    }

    /// What the host last reported it cannot program about `endpoint_id`, if anything.
    pub fn problem(&self, name: &str, endpoint_id: &str) -> Option<String> {
        self.seen().get(name).and_then(|s| s.problems.get(endpoint_id).cloned())
    }

    /// Resolves at the next heartbeat (create it before checking, so none is missed).
    pub fn next_heartbeat(&self) -> tokio::sync::futures::Notified<'_> {
        self.heard.notified()
    }

    /// Every host's last reported revision.
    pub fn applied_revisions(&self) -> BTreeMap<String, u64> {
        self.seen().iter().map(|(name, seen)| (name.clone(), seen.applied_revision)).collect()
    }

    /// The revision the host last reported as programmed; 0 when unknown here.
    pub fn applied_revision(&self, name: &str) -> u64 {
        self.seen().get(name).map_or(0, |s| s.applied_revision)
    }

    /// Hosts marked up that have been silent for longer than the timeout. Silence is counted
    /// from no earlier than `leader_since`: heartbeats sent to a previous leader are unknown
    /// here, so a new leader gives every host a full timeout first.
    pub fn overdue<'a>(
        &self,
        nodes: impl Iterator<Item = &'a Node>,
        leader_since: Instant,
        now: Instant,
    ) -> Vec<String> {
        let seen = self.seen();
        nodes
            .filter(|n| n.status == NodeStatus::Up)
            .filter(|n| {
                let last = seen.get(&n.name).map_or(leader_since, |s| s.at.max(leader_since));
                now.saturating_duration_since(last) > self.timeout
            })
            .map(|n| n.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use weft_core::Id;

    use super::*;

    fn node(name: &str, status: NodeStatus) -> Node {
        Node {
            id: Id([0; 32]),
            name: name.into(),
            underlay: IpAddr::V4(Ipv4Addr::LOCALHOST),
            underlay_mtu: 1500,
            wireguard_public_key: None,
            wireguard_port: 0,
            tunnel_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            status,
            labels: BTreeMap::new(),
            agent_version: String::new(),
            wireguard_backend: String::new(),
            registered_ms: 0,
            status_changed_ms: 0,
        }
    }

    #[test]
    fn silent_up_hosts_become_overdue_after_the_timeout() {
        let t0 = Instant::now();
        let live = Liveness::new(Duration::from_secs(10));
        let nodes = [node("a", NodeStatus::Up), node("b", NodeStatus::Up), node("c", NodeStatus::Down)];
        live.record("a", 7, BTreeMap::from([("e1".into(), "refused".into())]), t0 + Duration::from_secs(5));
        // Leader since t0: b never heartbeated to this leader, a did at t0+5s.
        assert!(live.overdue(nodes.iter(), t0, t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(live.overdue(nodes.iter(), t0, t0 + Duration::from_secs(11)), ["b"]);
        assert_eq!(live.overdue(nodes.iter(), t0, t0 + Duration::from_secs(16)), ["a", "b"]);
        assert_eq!(live.applied_revision("a"), 7);
        assert_eq!(live.applied_revision("b"), 0);
        assert_eq!(live.problem("a", "e1").as_deref(), Some("refused"));
        assert_eq!(live.problem("a", "e2"), None);
    }

    #[test]
    fn a_new_leader_gives_every_host_a_full_timeout() {
        let t0 = Instant::now();
        let live = Liveness::new(Duration::from_secs(10));
        let nodes = [node("a", NodeStatus::Up)];
        live.record("a", 0, BTreeMap::new(), t0);
        let leader_since = t0 + Duration::from_secs(60);
        assert!(live.overdue(nodes.iter(), leader_since, leader_since + Duration::from_secs(9)).is_empty());
        assert_eq!(live.overdue(nodes.iter(), leader_since, leader_since + Duration::from_secs(11)), ["a"]);
    }

    #[test]
    fn a_report_is_settled_for_its_host_and_term_only() {
        let liveness = Liveness::new(Duration::from_secs(10));
        let report = BTreeMap::from([("e1".to_string(), "no buffer space".to_string())]);
        assert!(!liveness.is_settled("h1", 3, &report), "nothing settled yet");
        liveness.settle("h1", 3, report.clone());
        assert!(liveness.is_settled("h1", 3, &report));
        assert!(!liveness.is_settled("h1", 4, &report), "another leader's term looks again");
        assert!(!liveness.is_settled("h2", 3, &report), "another host");
        assert!(!liveness.is_settled("h1", 3, &BTreeMap::new()), "a changed report");
        liveness.settle("h1", 3, BTreeMap::new());
        assert!(liveness.is_settled("h1", 3, &BTreeMap::new()));
        assert!(
            !liveness.is_settled("h1", 3, &report),
            "the old report is no longer what the registry holds"
        );
    }
}
