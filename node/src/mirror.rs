//! The agent's read-only copy of the registry, kept from the watch stream: a full snapshot
//! replaces it, events update it. Only what the host needs is kept, parsed once on arrival.

use std::collections::BTreeMap;
use std::net::IpAddr;

use weft_api::pb;
use weft_api::pb::event::Kind;
use weft_core::PublishedPort;
use weft_core::options::NetworkSettings;
use weft_dataplane::wireguard::Key;
use weft_dataplane::{IfAddr, Mac};

/// A network as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkView {
    pub id: String,
    pub name: String,
    pub vni: u32,
    /// Asked for by the user; `None` computes it from the underlay.
    pub mtu: Option<u32>,
    pub internal: bool,
    pub encrypted: bool,
    pub settings: NetworkSettings,
    /// Subnets with the gateway address in each: IPv4 first.
    pub gateways: Vec<IfAddr>,
}

impl NetworkView {
    pub fn bridge(&self) -> String {
        self.settings.bridge_name.clone().unwrap_or_else(|| format!("weft{}", self.vni))
    }

    pub fn vxlan(&self) -> String {
        format!("weftx{}", self.vni)
    }

    /// The gateway (with its prefix length) of the IPv6 subnet, or else the IPv4 one.
    pub fn gateway(&self, v6: bool) -> Option<IfAddr> {
        self.gateways.iter().find(|g| g.ip.is_ipv6() == v6).copied()
    }

    /// The gateway's MAC, the same on every host: 02:42 and the gateway's IPv4 octets, as
    /// Docker derives container MACs.
    pub fn gateway_mac(&self) -> Mac {
        let v4 = self.gateways.iter().find_map(|g| match g.ip {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        });
        let [a, b, c, d] = v4.unwrap_or([0, 0, 0, 1]);
        Mac([0x02, 0x42, a, b, c, d])
    }
}

/// An endpoint as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    pub id: String,
    pub network_id: String,
    pub node: String,
    pub container_id: String,
    pub container_name: String,
    pub aliases: Vec<String>,
    pub mac: Mac,
    pub ipv4: Option<IfAddr>,
    pub ipv6: Option<IfAddr>,
    /// The revision that created it: it names the host end of the container's veth pair.
    pub revision: u64,
    /// The revision of its latest change (its creation's until it changes).
    pub modified_revision: u64,
    /// Host ports published to the container, on its host.
    pub ports: Vec<PublishedPort>,
}

/// A host as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub underlay: IpAddr,
    pub mtu: u32,
    /// The host's address in the WireGuard mesh.
    pub tunnel: Option<IpAddr>,
    /// Its WireGuard public key and port, when it runs WireGuard.
    pub wireguard: Option<(Key, u16)>,
}

/// The registry as this host last heard of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mirror {
    /// The revision everything here reflects (0: nothing heard yet).
    pub revision: u64,
    /// A snapshot has arrived: until then the mirror knows nothing, and acting on it would
    /// tear down a restarted host's working plumbing.
    pub synced: bool,
    pub vxlan_port: u16,
    /// Prefix length of the cluster's tunnel pool: tunnel addresses carry it, so every other
    /// host's tunnel address is on-link through the WireGuard interface.
    pub tunnel_prefix: u8,
    pub networks: BTreeMap<String, NetworkView>,
    pub endpoints: BTreeMap<String, EndpointView>,
    pub nodes: BTreeMap<String, NodeView>,
    /// Endpoints this agent created or changed that the watch stream has not brought yet. A
    /// snapshot older than one of them (the controllers send a fresh one when this host joins
    /// a network, and it may have been taken before a concurrent attach's create committed)
    /// must not take it away or undo the change: the pass after it would unplumb a container
    /// that is attached, or drop the ports it just published.
    ahead: BTreeMap<String, EndpointView>,
}

/// A record the agent could not make sense of (it keeps going without it).
#[derive(Debug, thiserror::Error)]
#[error("unusable {what} from the controllers: {why}")]
pub struct Unusable {
    what: String,
    why: String,
}

fn unusable(what: &str, why: impl std::fmt::Display) -> Unusable {
    Unusable { what: what.to_string(), why: why.to_string() }
}

fn if_addr(with_prefix: &str) -> Result<Option<IfAddr>, Unusable> {
    if with_prefix.is_empty() {
        return Ok(None);
    }
    let (ip, prefix) = with_prefix.split_once('/').ok_or_else(|| unusable("address", with_prefix))?;
    let ip = ip.parse().map_err(|_| unusable("address", with_prefix))?;
    let prefix = prefix.parse().map_err(|_| unusable("address", with_prefix))?;
    Ok(Some(IfAddr { ip, prefix }))
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(Mac(bytes))
}

pub fn network_view(n: &pb::Network) -> Result<NetworkView, Unusable> {
    let settings = NetworkSettings::parse(&n.options, n.encrypted, n.enable_ipv6)
        .map_err(|e| unusable(&format!("network {}", n.name), e))?;
    let mut gateways = Vec::new();
    for ipam in &n.ipam_config {
        let (_, prefix) = ipam.subnet.split_once('/').ok_or_else(|| unusable("subnet", &ipam.subnet))?;
        if let Some(gateway) = if_addr(&format!("{}/{prefix}", ipam.gateway))? {
            gateways.push(gateway);
        }
    }
    gateways.sort_by_key(|g| g.ip.is_ipv6());
    Ok(NetworkView {
        id: n.id.clone(),
        name: n.name.clone(),
        vni: n.vni,
        mtu: (n.mtu != 0).then_some(n.mtu),
        internal: n.internal,
        encrypted: n.encrypted,
        settings,
        gateways,
    })
}

pub fn endpoint_view(e: &pb::Endpoint) -> Result<EndpointView, Unusable> {
    Ok(EndpointView {
        id: e.id.clone(),
        network_id: e.network_id.clone(),
        node: e.node.clone(),
        container_id: e.container_id.clone(),
        container_name: e.container_name.clone(),
        aliases: e.aliases.clone(),
        mac: parse_mac(&e.mac_address).ok_or_else(|| unusable("MAC address", &e.mac_address))?,
        ipv4: if_addr(&e.ipv4_address)?,
        ipv6: if_addr(&e.ipv6_address)?,
        revision: e.created_revision,
        // Controllers older than the field send 0: the creation is the latest change they name.
        modified_revision: e.modified_revision.max(e.created_revision),
        ports: weft_api::convert::published_ports(&e.ports)
            .map_err(|err| unusable(&format!("published ports of endpoint {}", e.id), err))?,
    })
}

fn node_view(n: &pb::Node) -> Result<NodeView, Unusable> {
    let underlay =
        n.underlay_address.parse().map_err(|_| unusable("underlay address", &n.underlay_address))?;
    let tunnel = if n.tunnel_address.is_empty() {
        None
    } else {
        Some(n.tunnel_address.parse().map_err(|_| unusable("tunnel address", &n.tunnel_address))?)
    };
    let wireguard = if n.wireguard_public_key.is_empty() {
        None
    } else {
        let key = Key::from_base64(&n.wireguard_public_key)
            .ok_or_else(|| unusable("WireGuard public key", &n.wireguard_public_key))?;
        let port =
            u16::try_from(n.wireguard_port).map_err(|_| unusable("WireGuard port", n.wireguard_port))?;
        Some((key, port))
    };
    Ok(NodeView { name: n.name.clone(), underlay, mtu: n.underlay_mtu, tunnel, wireguard })
}

/// The prefix length of a pool such as "10.255.0.0/16" (a host route when unreadable).
fn tunnel_prefix(pool: &str) -> u8 {
    pool.split_once('/').and_then(|(_, p)| p.parse().ok()).unwrap_or(32)
}

impl Mirror {
    /// Replaces everything with a snapshot. Records that cannot be parsed are skipped and
    /// returned, so one bad record never blinds the host to the rest.
    pub fn reset(&mut self, state: &pb::FullState) -> Vec<Unusable> {
        let mut problems = Vec::new();
        let ahead = std::mem::take(&mut self.ahead);
        *self = Mirror { revision: state.revision, synced: true, ..Mirror::default() };
        self.vxlan_port = state
            .config
            .as_ref()
            .and_then(|c| u16::try_from(c.vxlan_port).ok())
            .filter(|p| *p != 0)
            .unwrap_or(4789);
        self.tunnel_prefix = state.config.as_ref().map_or(32, |c| tunnel_prefix(&c.tunnel_pool));
        for n in &state.networks {
            match network_view(n) {
                Ok(view) => {
                    self.networks.insert(view.id.clone(), view);
                }
                Err(e) => problems.push(e),
            }
        }
        for e in &state.endpoints {
            match endpoint_view(e) {
                Ok(view) => {
                    self.endpoints.insert(view.id.clone(), view);
                }
                Err(e) => problems.push(e),
            }
        }
        for n in &state.nodes {
            match node_view(n) {
                Ok(view) => {
                    self.nodes.insert(view.name.clone(), view);
                }
                Err(e) => problems.push(e),
            }
        }
        self.ahead = ahead;
        self.caught_up();
        problems
    }

    /// Applies one batch of events: everything one revision changed (removing a host also
    /// removes its endpoints, all at one revision). Events at or below the revision the mirror
    /// had before the batch were already seen (a resumed stream may repeat the edge) and
    /// change nothing. Events that cannot be used are skipped and returned with their
    /// revision.
    pub fn apply(&mut self, events: &[pb::Event]) -> Vec<(u64, Unusable)> {
        let seen = self.revision;
        let mut problems = Vec::new();
        for event in events.iter().filter(|e| e.revision > seen) {
            self.revision = self.revision.max(event.revision);
            if let Err(problem) = self.apply_one(event) {
                problems.push((event.revision, problem));
            }
        }
        self.caught_up();
        problems
    }

    /// The stream says nothing changed up to `revision`.
    pub fn progress(&mut self, revision: u64) {
        self.revision = self.revision.max(revision);
        self.caught_up();
    }

    /// What the stream has reached, it has told: those changes (or later ones) are here. An
    /// event older than a change still ahead does not undo it.
    fn caught_up(&mut self) {
        let revision = self.revision;
        self.ahead.retain(|_, view| view.modified_revision > revision);
        for (id, view) in &self.ahead {
            self.endpoints.insert(id.clone(), view.clone());
        }
    }

    fn apply_one(&mut self, event: &pb::Event) -> Result<(), Unusable> {
        match &event.kind {
            Some(Kind::NetworkCreated(n) | Kind::NetworkUpdated(n)) => {
                let view = network_view(n)?;
                self.networks.insert(view.id.clone(), view);
            }
            Some(Kind::NetworkRemoved(n)) => {
                self.networks.remove(&n.id);
            }
            Some(Kind::EndpointCreated(e) | Kind::EndpointUpdated(e)) => {
                let view = endpoint_view(e)?;
                self.endpoints.insert(view.id.clone(), view);
            }
            Some(Kind::EndpointRemoved(e)) => {
                self.endpoints.remove(&e.id);
            }
            Some(Kind::NodeRegistered(n) | Kind::NodeStatusChanged(n)) => {
                let view = node_view(n)?;
                self.nodes.insert(view.name.clone(), view);
            }
            Some(Kind::NodeRemoved(n)) => {
                self.nodes.remove(&n.name);
            }
            Some(Kind::ClusterConfigured(c)) => {
                self.vxlan_port = u16::try_from(c.vxlan_port).ok().filter(|p| *p != 0).unwrap_or(4789);
                self.tunnel_prefix = tunnel_prefix(&c.tunnel_pool);
            }
            None => {}
        }
        Ok(())
    }

    /// Records an endpoint this agent just created or changed, before the watch stream
    /// brings it. One changed after everything the stream has told is kept until the stream
    /// reaches that change, whatever snapshot comes first.
    pub fn insert_endpoint(&mut self, view: EndpointView) {
        if view.modified_revision > self.revision {
            self.ahead.insert(view.id.clone(), view.clone());
        }
        self.endpoints.insert(view.id.clone(), view);
    }

    /// Forgets an endpoint this agent released, before the watch stream confirms it.
    pub fn remove_endpoint(&mut self, id: &str) {
        self.ahead.remove(id);
        self.endpoints.remove(id);
    }

    /// Finds a network by name, full id or unique id prefix, as the controllers do.
    pub fn find_network(&self, reference: &str) -> Option<&NetworkView> {
        if let Some(n) = self.networks.get(reference) {
            return Some(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.name.eq_ignore_ascii_case(reference)) {
            return Some(n);
        }
        let mut by_prefix = self.networks.values().filter(|n| n.id.starts_with(reference));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(n), None) if !reference.is_empty() => Some(n),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(id: &str, name: &str, vni: u32) -> pb::Network {
        pb::Network {
            id: id.into(),
            name: name.into(),
            vni,
            ipam_config: vec![pb::IpamConfig {
                subnet: "10.0.1.0/24".into(),
                gateway: "10.0.1.1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn endpoint(id: &str, network: &str, node: &str, ip: &str) -> pb::Endpoint {
        pb::Endpoint {
            id: id.into(),
            network_id: network.into(),
            node: node.into(),
            container_id: format!("c-{id}"),
            container_name: format!("n-{id}"),
            mac_address: "02:42:0a:00:01:02".into(),
            ipv4_address: format!("{ip}/24"),
            ..Default::default()
        }
    }

    fn event(revision: u64, kind: Kind) -> pb::Event {
        pb::Event { revision, kind: Some(kind) }
    }

    #[test]
    fn a_snapshot_then_events_build_the_view() {
        let mut mirror = Mirror::default();
        let problems = mirror.reset(&pb::FullState {
            revision: 5,
            networks: vec![network("aa11", "blue", 4096)],
            nodes: vec![pb::Node {
                name: "h1".into(),
                underlay_address: "192.0.2.1".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(problems.is_empty());
        assert_eq!(mirror.vxlan_port, 4789);
        let blue = &mirror.networks["aa11"];
        assert_eq!(blue.bridge(), "weft4096");
        assert_eq!(blue.gateways, vec![IfAddr { ip: "10.0.1.1".parse().unwrap(), prefix: 24 }]);
        assert_eq!(blue.gateway_mac(), Mac([2, 0x42, 10, 0, 1, 1]));

        mirror.apply(&[event(6, Kind::EndpointCreated(endpoint("e1", "aa11", "h1", "10.0.1.2")))]);
        assert_eq!(mirror.endpoints["e1"].ipv4, Some(IfAddr { ip: "10.0.1.2".parse().unwrap(), prefix: 24 }));
        // A repeated event (a resumed stream) changes nothing; a later removal does.
        mirror.apply(&[event(6, Kind::EndpointRemoved(endpoint("e1", "aa11", "h1", "10.0.1.2")))]);
        assert!(mirror.endpoints.contains_key("e1"));
        mirror.apply(&[event(7, Kind::EndpointRemoved(endpoint("e1", "aa11", "h1", "10.0.1.2")))]);
        assert!(mirror.endpoints.is_empty());
        assert_eq!(mirror.revision, 7);

        // Removing a host removes its endpoints at the same revision: one batch, all applied.
        mirror.apply(&[event(8, Kind::EndpointCreated(endpoint("e2", "aa11", "h1", "10.0.1.3")))]);
        let h1 = pb::Node { name: "h1".into(), underlay_address: "192.0.2.1".into(), ..Default::default() };
        mirror.apply(&[
            event(9, Kind::EndpointRemoved(endpoint("e2", "aa11", "h1", "10.0.1.3"))),
            event(9, Kind::NodeRemoved(h1)),
        ]);
        assert!(mirror.endpoints.is_empty() && mirror.nodes.is_empty(), "{mirror:?}");
        assert_eq!(mirror.revision, 9);
    }

    /// The controllers send a fresh snapshot when this host joins a network; one taken before
    /// a concurrent attach's endpoint committed must not take that endpoint away.
    #[test]
    fn an_endpoint_created_here_outlives_a_snapshot_older_than_it() {
        let mut mirror = Mirror::default();
        let blue = || vec![network("aa11", "blue", 4096)];
        mirror.reset(&pb::FullState { revision: 5, networks: blue(), ..Default::default() });
        let created = |id: &str, revision: u64| {
            let mut e = endpoint(id, "aa11", "h1", "10.0.1.2");
            e.created_revision = revision;
            endpoint_view(&e).unwrap()
        };
        mirror.insert_endpoint(created("e8", 8));
        mirror.insert_endpoint(created("e9", 9));

        mirror.reset(&pb::FullState { revision: 6, networks: blue(), ..Default::default() });
        assert!(mirror.endpoints.contains_key("e8") && mirror.endpoints.contains_key("e9"), "{mirror:?}");
        assert_eq!(mirror.revision, 6);

        // A snapshot at or past e8's revision tells the truth about it: here, released already.
        mirror.reset(&pb::FullState { revision: 8, networks: blue(), ..Default::default() });
        assert!(!mirror.endpoints.contains_key("e8"), "{mirror:?}");
        assert!(mirror.endpoints.contains_key("e9"));

        // Once the stream has passed e9's revision, its own word counts.
        mirror.apply(&[event(9, Kind::EndpointCreated(endpoint("e9", "aa11", "h1", "10.0.1.2")))]);
        mirror.apply(&[event(10, Kind::EndpointRemoved(endpoint("e9", "aa11", "h1", "10.0.1.2")))]);
        mirror.reset(&pb::FullState { revision: 9, networks: blue(), ..Default::default() });
        assert!(mirror.endpoints.is_empty(), "{mirror:?}");

        // Released here before the stream said anything: no snapshot brings it back.
        mirror.insert_endpoint(created("e12", 12));
        mirror.remove_endpoint("e12");
        mirror.reset(&pb::FullState { revision: 10, networks: blue(), ..Default::default() });
        assert!(mirror.endpoints.is_empty(), "{mirror:?}");

        // A progress notice past it counts as the stream having told.
        mirror.insert_endpoint(created("e13", 13));
        mirror.progress(13);
        mirror.reset(&pb::FullState { revision: 11, networks: blue(), ..Default::default() });
        assert!(mirror.endpoints.is_empty(), "{mirror:?}");
    }

    /// The same for a change this agent made (ports published, a rename): a snapshot taken
    /// before the change committed must not undo it.
    #[test]
    fn a_change_made_here_outlives_a_snapshot_older_than_it() {
        let mut mirror = Mirror::default();
        let blue = || vec![network("aa11", "blue", 4096)];
        let at = |created: u64, modified: u64, ports: Vec<pb::PublishedPort>| {
            let mut e = endpoint("e5", "aa11", "h1", "10.0.1.2");
            (e.created_revision, e.modified_revision, e.ports) = (created, modified, ports);
            e
        };
        let port = pb::PublishedPort {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            ..Default::default()
        };
        let snapshot = |revision: u64, e: pb::Endpoint| pb::FullState {
            revision,
            networks: blue(),
            endpoints: vec![e],
            ..Default::default()
        };
        mirror.reset(&snapshot(6, at(5, 5, vec![])));
        mirror.insert_endpoint(endpoint_view(&at(5, 9, vec![port.clone()])).unwrap());

        mirror.reset(&snapshot(7, at(5, 5, vec![])));
        assert_eq!(mirror.endpoints["e5"].ports.len(), 1, "{mirror:?}");
        assert_eq!(mirror.endpoints["e5"].revision, 5, "the veth's name stays the creation's");
        // Nor does an event from before the change (its host's problem report, say).
        mirror.apply(&[event(8, Kind::EndpointUpdated(at(5, 8, vec![])))]);
        assert_eq!(mirror.endpoints["e5"].ports.len(), 1, "{mirror:?}");

        // At the change's revision, the snapshot has it (or whatever came after it).
        mirror.reset(&snapshot(9, at(5, 9, vec![])));
        assert!(mirror.endpoints["e5"].ports.is_empty(), "{mirror:?}");

        // Controllers older than modification revisions send 0: the creation's stands in.
        let old = endpoint_view(&at(12, 0, vec![])).unwrap();
        assert_eq!(old.modified_revision, 12);
    }

    #[test]
    fn networks_are_found_by_name_id_or_unique_prefix() {
        let mut mirror = Mirror::default();
        mirror.reset(&pb::FullState {
            networks: vec![network("aa11", "blue", 4096), network("aa22", "red", 4097)],
            ..Default::default()
        });
        assert_eq!(mirror.find_network("BLUE").map(|n| n.vni), Some(4096));
        assert_eq!(mirror.find_network("aa22").map(|n| n.vni), Some(4097));
        assert_eq!(mirror.find_network("aa2").map(|n| n.vni), Some(4097));
        assert_eq!(mirror.find_network("aa"), None, "ambiguous prefix");
        assert_eq!(mirror.find_network(""), None);
    }

    #[test]
    fn a_bad_record_is_reported_and_the_rest_kept() {
        let mut mirror = Mirror::default();
        let mut bad = endpoint("e2", "aa11", "h1", "10.0.1.3");
        bad.mac_address = "nonsense".into();
        let problems = mirror.reset(&pb::FullState {
            endpoints: vec![endpoint("e1", "aa11", "h1", "10.0.1.2"), bad],
            ..Default::default()
        });
        assert_eq!(problems.len(), 1);
        assert!(mirror.endpoints.contains_key("e1"));
    }
}
