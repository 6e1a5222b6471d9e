//! What this host's kernel should hold, from the registry mirror and the local sandboxes.
//! Pure: the reconciler hands the result to `weft_dataplane::plan`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use weft_dataplane::rules::{EncryptedVxlan, NetworkRules, PublishedRule};
use weft_dataplane::wireguard::Peer;
use weft_dataplane::{Desired, IfAddr, KernelError, LocalEndpoint, NetworkDevices, Op, RemoteEndpoint};

use crate::mirror::{EndpointView, Mirror, NetworkView};
use crate::sandboxes::Sandboxes;

/// VXLAN over IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// WireGuard over an IPv4 underlay: outer IP 20 + UDP 8 + header 16 + tag 16 (80 over IPv6).
pub fn wireguard_overhead(underlay: IpAddr) -> u32 {
    if underlay.is_ipv4() { 60 } else { 80 }
}

/// This host, as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub vtep: IpAddr,
    pub underlay_mtu: u32,
}

/// The name of an endpoint's host-side veth: unique per host because revisions are unique,
/// and within the 15 characters Linux allows up to revision 2^40.
pub fn host_veth(endpoint: &EndpointView) -> String {
    host_veth_name(endpoint.revision)
}

/// [`host_veth`] from the endpoint's revision alone.
pub fn host_veth_name(revision: u64) -> String {
    weft_dataplane::model::veth_name(revision)
}

/// Networks with at least one container on this host get devices; each gets an entry for
/// every endpoint of that network on other hosts. Local endpoints without a sandbox record
/// (made through the API by someone else, say) have nowhere to go and are left out.
pub fn desired(mirror: &Mirror, host: &Host, sandboxes: &Sandboxes) -> Desired {
    let mut networks: BTreeMap<String, NetworkDevices> = BTreeMap::new();
    let mut by_network: BTreeMap<&str, Vec<&EndpointView>> = BTreeMap::new();
    for endpoint in mirror.endpoints.values() {
        by_network.entry(endpoint.network_id.as_str()).or_default().push(endpoint);
    }
    for (network_id, endpoints) in by_network {
        let Some(network) = mirror.networks.get(network_id) else { continue };
        let local: Vec<(&EndpointView, _)> = endpoints
            .iter()
            .filter(|e| e.node == host.name)
            .filter_map(|e| sandboxes.endpoints.get(&e.id).map(|s| (*e, s)))
            .collect();
        if local.is_empty() {
            continue;
        }
        // An encrypted network's VXLAN runs between tunnel addresses, inside WireGuard. Until
        // this host has its tunnel address it cannot carry the network at all: nothing is
        // set up rather than something unencrypted.
        let tunnel = mirror.nodes.get(&host.name).and_then(|n| n.tunnel);
        let (local_vtep, overhead) = match (network.encrypted, tunnel) {
            (false, _) => (host.vtep, VXLAN_OVERHEAD),
            (true, Some(tunnel)) => (tunnel, VXLAN_OVERHEAD + wireguard_overhead(host.vtep)),
            (true, None) => continue,
        };
        let mtu = network.mtu.unwrap_or(host.underlay_mtu.saturating_sub(overhead));
        debug_assert_eq!(mtu, network_mtu(network, host));
        let gateways: Vec<IpAddr> = network.gateways.iter().map(|g| g.ip).collect();
        let local = local
            .into_iter()
            .map(|(e, sandbox)| {
                let endpoint = LocalEndpoint {
                    endpoint_id: e.id.clone(),
                    host_veth: host_veth(e),
                    netns: sandbox.netns.clone(),
                    ifname: sandbox.ifname.clone(),
                    mac: e.mac,
                    addresses: e.ipv4.iter().chain(e.ipv6.iter()).copied().collect(),
                    default_routes: if sandbox.default_route { gateways.clone() } else { Vec::new() },
                    mtu,
                    handover: if sandbox.runtime_handover {
                        weft_dataplane::Handover::Runtime
                    } else {
                        weft_dataplane::Handover::Weft
                    },
                };
                (endpoint.host_veth.clone(), endpoint)
            })
            .collect();
        let remote = endpoints
            .iter()
            .filter(|e| e.node != host.name)
            .filter_map(|e| {
                let node = mirror.nodes.get(&e.node)?;
                let vtep = if network.encrypted { node.tunnel? } else { node.underlay };
                let ips = e.ipv4.iter().chain(e.ipv6.iter()).map(|a| a.ip).collect();
                Some((e.mac, RemoteEndpoint { mac: e.mac, ips, vtep }))
            })
            .collect();
        let devices = NetworkDevices {
            network_id: network.id.clone(),
            gateway: network.bridge(),
            gateway_port: weft_dataplane::model::gateway_port_name(network.vni),
            bridge: weft_dataplane::model::switch_bridge_name(network.vni),
            vxlan: network.vxlan(),
            vni: network.vni,
            port: mirror.vxlan_port,
            local_vtep,
            mtu,
            gateway_mac: network.gateway_mac(),
            gateway_addresses: network.gateways.iter().copied().collect(),
            local,
            remote,
        };
        networks.insert(devices.bridge.clone(), devices);
    }
    Desired { networks, services: None }
}

/// A network's MTU on this host: what the user set, or the underlay's less VXLAN (and
/// WireGuard, for encrypted networks).
pub fn network_mtu(network: &NetworkView, host: &Host) -> u32 {
    let overhead = VXLAN_OVERHEAD + if network.encrypted { wireguard_overhead(host.vtep) } else { 0 };
    network.mtu.unwrap_or(host.underlay_mtu.saturating_sub(overhead))
}

/// This host's WireGuard peers: every other host that registered a key, reached at its
/// underlay address, allowed to send from its tunnel address only.
pub fn wireguard_peers(mirror: &Mirror, host: &Host) -> Vec<Peer> {
    mirror
        .nodes
        .values()
        .filter(|n| n.name != host.name)
        .filter_map(|n| {
            let (public_key, port) = n.wireguard?;
            let tunnel = n.tunnel?;
            Some(Peer {
                public_key,
                endpoint: Some(SocketAddr::new(n.underlay, port)),
                allowed_ips: vec![(tunnel, if tunnel.is_ipv4() { 32 } else { 128 })],
                keepalive_seconds: None,
            })
        })
        .collect()
}

/// This host's own address on its WireGuard interface.
pub fn tunnel_address(mirror: &Mirror, host: &Host) -> Option<IfAddr> {
    let ip = mirror.nodes.get(&host.name)?.tunnel?;
    Some(IfAddr { ip, prefix: mirror.tunnel_prefix })
}

/// What keeps encrypted networks' VXLAN inside WireGuard: all of them, present here or not.
pub fn encrypted_vxlan(mirror: &Mirror, tunnel_interface: &str) -> EncryptedVxlan {
    EncryptedVxlan {
        port: mirror.vxlan_port,
        vnis: mirror.networks.values().filter(|n| n.encrypted).map(|n| n.vni).collect(),
        tunnel: tunnel_interface.to_string(),
    }
}

/// The host rules for the networks present on this host.
pub fn rules(mirror: &Mirror, desired: &Desired) -> Vec<NetworkRules> {
    desired
        .networks
        .values()
        .filter_map(|devices| {
            let network = mirror.networks.get(&devices.network_id)?;
            Some(NetworkRules {
                gateway: devices.gateway.clone(),
                subnets: network.gateways.clone(),
                internal: network.internal,
                masquerade: network.settings.masquerade,
                icc: network.settings.icc,
                ports: std::iter::once(devices.vxlan.clone()).chain(devices.local.keys().cloned()).collect(),
                published: devices
                    .local
                    .values()
                    .filter_map(|local| mirror.endpoints.get(&local.endpoint_id))
                    .flat_map(published_rules)
                    .collect(),
            })
        })
        .collect()
}

/// The forwarding rules of one container's published ports: a mapping for every host address
/// becomes one rule per family the container has; one for an address of a family the container
/// lacks (IPv6 on an IPv4-only network, refused by the controllers) none.
pub fn published_rules(endpoint: &EndpointView) -> Vec<PublishedRule> {
    let mut rules = Vec::new();
    for port in &endpoint.ports {
        for container in [endpoint.ipv4, endpoint.ipv6].into_iter().flatten() {
            let family_matches = port.host_ip.is_none_or(|ip| ip.is_ipv4() == container.ip.is_ipv4());
            if family_matches {
                rules.push(PublishedRule {
                    protocol: port.protocol,
                    host_ip: port.host_ip,
                    host_port: port.host_port,
                    container_ip: container.ip,
                    container_port: port.container_port,
                });
            }
        }
    }
    rules
}

/// What a reconcile pass could not do, sorted by whose it was.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    /// Endpoints (local or on other hosts) this host could not program, with why.
    pub endpoints: BTreeMap<String, String>,
    /// Failures that belong to no endpoint: they hold the whole host back.
    pub host: Vec<String>,
}

/// Whose each failed operation was. A network's devices failing holds up every endpoint of
/// that network; an entry or a veth holds up its own endpoint only; removing what nobody wants
/// any more, and anything else, is the host's. Pure: `failed` pairs indexes into `ops` with
/// what the kernel said.
pub fn blame(desired: &Desired, mirror: &Mirror, ops: &[Op], failed: &[(usize, KernelError)]) -> Failures {
    let mut failures = Failures::default();
    let network_of_device =
        |name: &str| desired.networks.values().find(|n| n.devices().into_iter().any(|d| d == name));
    let endpoints_of = |net: &NetworkDevices| -> Vec<String> {
        mirror.endpoints.values().filter(|e| e.network_id == net.network_id).map(|e| e.id.clone()).collect()
    };
    let remote_by_mac = |vxlan: &str, mac: &weft_dataplane::Mac| -> Option<String> {
        let net = network_of_device(vxlan)?;
        mirror
            .endpoints
            .values()
            .find(|e| e.network_id == net.network_id && e.mac == *mac)
            .map(|e| e.id.clone())
    };
    let local_veth = |name: &str| -> Option<String> {
        desired.networks.values().find_map(|n| n.local.get(name)).map(|l| l.endpoint_id.clone())
    };
    for (index, error) in failed {
        let reason = error.to_string();
        let owners: Vec<String> = match ops.get(*index) {
            Some(Op::Plug { endpoint, .. }) => vec![endpoint.endpoint_id.clone()],
            Some(Op::SetFdb { vxlan, mac, .. } | Op::SetNeighbour { vxlan, mac, .. }) => {
                remote_by_mac(vxlan, mac).into_iter().collect()
            }
            Some(
                Op::CreateBridge { name, .. }
                | Op::CreateVxlan { name, .. }
                | Op::CreateGateway { name, .. }
                | Op::SetLink { name, .. }
                | Op::Conflict { name, .. }
                | Op::AddAddress { link: name, .. }
                | Op::DeleteAddress { link: name, .. },
            ) => match (network_of_device(name), local_veth(name)) {
                (Some(net), _) => endpoints_of(net),
                (None, Some(endpoint)) => vec![endpoint],
                (None, None) => Vec::new(),
            },
            _ => Vec::new(),
        };
        if owners.is_empty() {
            failures.host.push(reason);
        } else {
            for owner in owners {
                failures.endpoints.entry(owner).or_insert_with(|| reason.clone());
            }
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use weft_api::pb;

    use weft_dataplane::wireguard::Key;

    use super::*;
    use crate::mirror::{endpoint_view, network_view};
    use crate::sandboxes::Sandbox;

    fn mirror() -> Mirror {
        let mut m = Mirror::default();
        (m.revision, m.vxlan_port) = (10, 4789);
        for (id, name, vni, mtu, subnet, gateway) in [
            ("n1", "blue", 4096, 0, "10.0.1.0/24", "10.0.1.1"),
            ("n2", "red", 4097, 1400, "10.0.2.0/24", "10.0.2.1"),
        ] {
            let net = pb::Network {
                id: id.into(),
                name: name.into(),
                vni,
                mtu,
                ipam_config: vec![pb::IpamConfig {
                    subnet: subnet.into(),
                    gateway: gateway.into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            m.networks.insert(id.into(), network_view(&net).unwrap());
        }
        for (id, network, node, ip, rev) in [
            ("e1", "n1", "h1", "10.0.1.2", 3),
            ("e2", "n1", "h2", "10.0.1.3", 4),
            ("e3", "n2", "h2", "10.0.2.2", 5),
            ("e4", "n1", "h3", "10.0.1.4", 6),
        ] {
            let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
            let ep = pb::Endpoint {
                id: id.into(),
                network_id: network.into(),
                node: node.into(),
                mac_address: format!(
                    "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
                    octets[0], octets[1], octets[2], octets[3]
                ),
                ipv4_address: format!("{ip}/24"),
                created_revision: rev,
                ..Default::default()
            };
            m.endpoints.insert(id.into(), endpoint_view(&ep).unwrap());
        }
        for (i, (name, addr)) in [("h1", "192.0.2.1"), ("h2", "192.0.2.2")].into_iter().enumerate() {
            let byte = u8::try_from(i).unwrap() + 1;
            m.nodes.insert(
                name.into(),
                crate::mirror::NodeView {
                    name: name.into(),
                    underlay: addr.parse().unwrap(),
                    mtu: 1500,
                    tunnel: Some(format!("10.255.0.{byte}").parse().unwrap()),
                    wireguard: Some((Key([byte; 32]).public(), 51820)),
                },
            );
        }
        m.tunnel_prefix = 16;
        m
    }

    fn host() -> Host {
        Host { name: "h1".into(), vtep: "192.0.2.1".parse().unwrap(), underlay_mtu: 1500 }
    }

    fn failure(what: &str) -> KernelError {
        KernelError { doing: what.into(), reason: "refused".into(), source: None }
    }

    #[test]
    fn failures_are_blamed_on_the_endpoints_they_hold_up() {
        let m = mirror();
        let d = desired(&m, &host(), &sandboxes());
        let blue = &d.networks["weftb4096"];
        let plug =
            Op::Plug { bridge: blue.bridge.clone(), endpoint: blue.local.values().next().unwrap().clone() };
        let remote = m.endpoints["e2"].mac;
        let ops = vec![
            plug,
            Op::SetFdb { vxlan: blue.vxlan.clone(), mac: remote, vtep: "192.0.2.2".parse().unwrap() },
            Op::DeleteLink { name: "weftp99".into(), place: weft_dataplane::Place::Switch },
            Op::CreateBridge { name: blue.bridge.clone(), alias: String::new(), mtu: 1450 },
            Op::AddAddress { link: blue.gateway.clone(), address: *blue.gateway_addresses.first().unwrap() },
        ];
        let only = |i: usize| vec![(i, failure(&format!("op {i}")))];
        let f = blame(&d, &m, &ops, &only(0));
        assert_eq!(f.endpoints.keys().collect::<Vec<_>>(), ["e1"]);
        assert!(f.host.is_empty());
        let f = blame(&d, &m, &ops, &only(1));
        assert_eq!(f.endpoints.keys().collect::<Vec<_>>(), ["e2"]);
        let f = blame(&d, &m, &ops, &only(2));
        assert!(f.endpoints.is_empty());
        assert_eq!(f.host, ["op 2: refused"]);
        // The network's bridge, or its gateway: every endpoint of the network, here and
        // elsewhere.
        for i in [3, 4] {
            let f = blame(&d, &m, &ops, &only(i));
            assert_eq!(f.endpoints.keys().collect::<Vec<_>>(), ["e1", "e2", "e4"]);
        }
    }

    fn sandboxes() -> Sandboxes {
        let mut s = Sandboxes::default();
        s.endpoints.insert(
            "e1".into(),
            Sandbox {
                network_id: "n1".into(),
                container_id: "c1".into(),
                netns: PathBuf::from("/run/netns/c1"),
                ifname: "eth0".into(),
                default_route: true,
                runtime_handover: false,
            },
        );
        s
    }

    #[test]
    fn only_networks_with_a_local_container_get_devices() {
        let d = desired(&mirror(), &host(), &sandboxes());
        assert_eq!(d.networks.keys().collect::<Vec<_>>(), vec!["weftb4096"], "red has no container on h1");
        let blue = &d.networks["weftb4096"];
        assert_eq!(blue.vxlan, "weftx4096");
        assert_eq!(blue.mtu, 1450, "underlay 1500 minus VXLAN");
        let local = &blue.local["weftp3"];
        assert_eq!(local.ifname, "eth0");
        assert_eq!(local.default_routes, vec!["10.0.1.1".parse::<IpAddr>().unwrap()]);
        // e2 is on h2; e4's host never registered, so there is nowhere to send its traffic.
        assert_eq!(blue.remote.len(), 1);
        let remote = blue.remote.values().next().unwrap();
        assert_eq!(remote.vtep, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(remote.ips, vec!["10.0.1.3".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn a_network_mtu_wins_and_no_sandbox_means_no_devices() {
        let mut s = sandboxes();
        assert!(desired(&mirror(), &host(), &Sandboxes::default()).networks.is_empty());
        let mut m = mirror();
        m.endpoints.get_mut("e3").unwrap().node = "h1".into();
        s.endpoints.insert(
            "e3".into(),
            Sandbox {
                network_id: "n2".into(),
                container_id: "c1".into(),
                netns: PathBuf::from("/run/netns/c1"),
                ifname: "eth1".into(),
                default_route: false,
                runtime_handover: false,
            },
        );
        let d = desired(&m, &host(), &s);
        let red = &d.networks["weftb4097"];
        assert_eq!(red.mtu, 1400);
        assert!(red.local["weftp5"].default_routes.is_empty(), "only the first network routes by default");
    }

    #[test]
    fn an_encrypted_network_runs_between_tunnel_addresses_with_room_for_wireguard() {
        let mut m = mirror();
        m.networks.get_mut("n1").unwrap().encrypted = true;
        let d = desired(&m, &host(), &sandboxes());
        let blue = &d.networks["weftb4096"];
        assert_eq!(blue.local_vtep, "10.255.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(blue.mtu, 1500 - 60 - 50);
        assert_eq!(blue.remote.values().next().unwrap().vtep, "10.255.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(encrypted_vxlan(&m, "weftwg").vnis, vec![4096]);
        assert_eq!(
            tunnel_address(&m, &host()),
            Some(IfAddr { ip: "10.255.0.1".parse().unwrap(), prefix: 16 })
        );

        // Without its own tunnel address the host sets up nothing for it, never cleartext.
        m.nodes.get_mut("h1").unwrap().tunnel = None;
        assert!(desired(&m, &host(), &sandboxes()).networks.is_empty());
    }

    #[test]
    fn every_other_host_with_a_key_is_a_peer() {
        let mut m = mirror();
        let peers = wireguard_peers(&m, &host());
        assert_eq!(peers.len(), 1, "h1 is not its own peer");
        assert_eq!(peers[0].public_key, Key([2; 32]).public());
        assert_eq!(peers[0].endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(peers[0].allowed_ips, vec![("10.255.0.2".parse().unwrap(), 32)]);
        m.nodes.get_mut("h2").unwrap().wireguard = None;
        assert!(wireguard_peers(&m, &host()).is_empty(), "a host without WireGuard is no peer");
    }
}
