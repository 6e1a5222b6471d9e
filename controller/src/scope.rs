//! What one host's watch stream carries (decision record 0005): the cluster configuration,
//! every network and node, and the endpoints of the networks where the host has endpoints of
//! its own. Pure: [`crate::watch`] feeds it the batches and sends what it selects.

use std::collections::BTreeMap;

use weft_api::pb;
use weft_api::pb::event::Kind;

/// The network an event is about, for events that change what a network's endpoints look
/// like to a watcher (its endpoints, or the network they name).
pub fn network_touched(event: &pb::Event) -> Option<&str> {
    match event.kind.as_ref()? {
        Kind::EndpointCreated(e) | Kind::EndpointRemoved(e) | Kind::EndpointUpdated(e) => Some(&e.network_id),
        Kind::NetworkCreated(n) | Kind::NetworkRemoved(n) | Kind::NetworkUpdated(n) => Some(&n.id),
        _ => None,
    }
}

/// The endpoint of an event that belongs to one network's endpoints (and so is sent only to
/// hosts that see that network).
fn endpoint_of(event: &pb::Event) -> Option<&pb::Endpoint> {
    match event.kind.as_ref()? {
        Kind::EndpointCreated(e) | Kind::EndpointRemoved(e) | Kind::EndpointUpdated(e) => Some(e),
        _ => None,
    }
}

/// Which events of a batch a host is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every one: the batch's shared frame.
    All,
    /// These, by position.
    Some(Vec<usize>),
    /// None: the host hears only that the revision passed.
    Nothing,
}

/// One host's view: how many endpoints it has on each network it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    node: String,
    own: BTreeMap<String, usize>,
}

impl HostView {
    /// `own`: the host's endpoint count per network at the revision the stream starts from.
    pub fn new(node: impl Into<String>, own: BTreeMap<String, usize>) -> HostView {
        let own = own.into_iter().filter(|(_, count)| *count > 0).collect();
        HostView { node: node.into(), own }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the host is sent the endpoints of `network_id`.
    pub fn sees(&self, network_id: &str) -> bool {
        self.own.contains_key(network_id)
    }

    /// The networks the host sees.
    pub fn networks(&self) -> impl Iterator<Item = &str> {
        self.own.keys().map(String::as_str)
    }

    /// Whether a batch creates or removes an endpoint of this host: a replay containing one
    /// may change what the host sees half-way, so it starts over from a snapshot instead.
    pub fn moves_own(&self, events: &[pb::Event]) -> bool {
        events.iter().any(|event| {
            matches!(&event.kind, Some(Kind::EndpointCreated(e) | Kind::EndpointRemoved(e)) if e.node == self.node)
        })
    }

    /// Follows a batch's changes to this host's own endpoints; whether the networks it sees
    /// changed (a first endpoint on one, or the last gone), in which case the stream sends a
    /// fresh snapshot of the view instead of the batch.
    pub fn follow(&mut self, events: &[pb::Event]) -> bool {
        // Every watcher looks at every batch; most batches are other hosts' business.
        if !self.moves_own(events) {
            return false;
        }
        let before: Vec<String> = self.own.keys().cloned().collect();
        for event in events {
            match &event.kind {
                Some(Kind::EndpointCreated(e)) if e.node == self.node => {
                    *self.own.entry(e.network_id.clone()).or_default() += 1;
                }
                Some(Kind::EndpointRemoved(e)) if e.node == self.node => {
                    if let Some(count) = self.own.get_mut(&e.network_id) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            self.own.remove(&e.network_id);
                        }
                    }
                }
                _ => {}
            }
        }
        !self.own.keys().eq(before.iter())
    }

    /// The events of a batch this host is sent: all but the endpoints of networks it does not
    /// see.
    pub fn select(&self, events: &[pb::Event]) -> Selection {
        let kept: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, event)| endpoint_of(event).is_none_or(|e| self.sees(&e.network_id)))
            .map(|(i, _)| i)
            .collect();
        if kept.len() == events.len() {
            Selection::All
        } else if kept.is_empty() {
            Selection::Nothing
        } else {
            Selection::Some(kept)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(kind: fn(pb::Endpoint) -> Kind, network: &str, node: &str) -> pb::Event {
        let e = pb::Endpoint { network_id: network.into(), node: node.into(), ..Default::default() };
        pb::Event { revision: 1, kind: Some(kind(e)) }
    }

    fn created(network: &str, node: &str) -> pb::Event {
        endpoint(Kind::EndpointCreated, network, node)
    }

    fn removed(network: &str, node: &str) -> pb::Event {
        endpoint(Kind::EndpointRemoved, network, node)
    }

    fn view(node: &str, own: &[(&str, usize)]) -> HostView {
        HostView::new(node, own.iter().map(|(n, c)| (n.to_string(), *c)).collect())
    }

    #[test]
    fn a_host_is_sent_the_endpoints_of_its_networks_and_everything_else() {
        let h1 = view("h1", &[("a", 2)]);
        let network = pb::Event {
            revision: 1,
            kind: Some(Kind::NetworkCreated(pb::Network { id: "b".into(), ..Default::default() })),
        };
        let node = pb::Event { revision: 1, kind: Some(Kind::NodeRegistered(pb::Node::default())) };
        assert_eq!(h1.select(&[created("a", "h2"), network.clone(), node.clone()]), Selection::All);
        assert_eq!(h1.select(&[created("b", "h2")]), Selection::Nothing);
        assert_eq!(
            h1.select(&[created("b", "h2"), network, endpoint(Kind::EndpointUpdated, "a", "h3"), node]),
            Selection::Some(vec![1, 2, 3])
        );
        assert_eq!(h1.select(&[]), Selection::All, "an empty batch is shared as it is");
    }

    #[test]
    fn the_first_endpoint_on_a_network_and_the_last_change_the_view() {
        let mut h1 = view("h1", &[("a", 1)]);
        assert!(!h1.follow(&[created("b", "h2"), removed("a", "h2")]), "other hosts' endpoints");
        assert!(!h1.follow(&[created("a", "h1")]), "a second endpoint on a seen network");
        assert!(h1.follow(&[created("b", "h1")]), "joins b");
        assert!(h1.sees("b"));
        assert!(!h1.follow(&[removed("a", "h1")]), "one of two on a goes");
        assert!(h1.follow(&[removed("a", "h1")]), "the last on a goes");
        assert!(!h1.sees("a"));
        assert!(!h1.follow(&[created("c", "h1"), removed("c", "h1")]), "in and out in one batch");
        assert!(!h1.sees("c"));
        assert!(!h1.follow(&[removed("z", "h1")]), "a removal of something never counted is ignored");
        assert_eq!(h1.networks().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn replays_that_move_the_hosts_own_endpoints_are_noticed() {
        let h1 = view("h1", &[("a", 1), ("gone", 0)]);
        assert!(!h1.sees("gone"), "zero counts are not seen");
        assert!(!h1.moves_own(&[created("a", "h2"), endpoint(Kind::EndpointUpdated, "a", "h1")]));
        assert!(h1.moves_own(&[created("a", "h1")]));
        assert!(h1.moves_own(&[removed("x", "h1")]));
    }

    #[test]
    fn touched_networks_are_named_by_their_events() {
        assert_eq!(network_touched(&created("a", "h1")), Some("a"));
        let renamed = pb::Event {
            revision: 1,
            kind: Some(Kind::NetworkUpdated(pb::Network { id: "n".into(), ..Default::default() })),
        };
        assert_eq!(network_touched(&renamed), Some("n"));
        let node = pb::Event { revision: 1, kind: Some(Kind::NodeStatusChanged(pb::Node::default())) };
        assert_eq!(network_touched(&node), None);
    }
}
