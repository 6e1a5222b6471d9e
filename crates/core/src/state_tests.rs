//! Table and scenario tests for every rule of the state machine. Property tests of the same
//! rules over random command sequences live in `tests/properties.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::*;
use crate::command::LabelFilter;
use crate::error::ErrorKind;
use crate::model::AddressPool;
use crate::ports::{PortProtocol, PublishedPort};

const T0: u64 = 1_700_000_000_000;

fn apply(state: &mut State, command: Command) -> Result<Applied> {
    state.apply(&Proposal { at_ms: T0 + state.revision(), command })
}

/// Applies a command that must fail, and checks it changed nothing.
fn refused(state: &mut State, command: Command) -> Error {
    let before = state.clone();
    let err = apply(state, command).expect_err("command should be refused");
    assert_eq!(*state, before, "a refused command changed the state");
    err
}

fn network(name: &str) -> NetworkRequest {
    NetworkRequest { name: name.into(), ..NetworkRequest::default() }
}

fn with_subnet(name: &str, subnet: &str) -> NetworkRequest {
    NetworkRequest {
        name: name.into(),
        ipv4: SubnetRequest { subnet: Some(subnet.parse().unwrap()), ..SubnetRequest::default() },
        ..NetworkRequest::default()
    }
}

fn create(state: &mut State, request: NetworkRequest) -> Network {
    match apply(state, Command::CreateNetwork(request)).unwrap().response {
        Response::Network(n) => n,
        other => panic!("unexpected {other:?}"),
    }
}

fn node_request(name: &str, last_octet: u8) -> NodeRequest {
    NodeRequest {
        name: name.into(),
        underlay: IpAddr::V4(Ipv4Addr::new(192, 0, 2, last_octet)),
        underlay_mtu: 1500,
        wireguard_public_key: None,
        wireguard_port: 0,
        labels: BTreeMap::new(),
        agent_version: "test".into(),
        wireguard_backend: "off".into(),
    }
}

fn register(state: &mut State, name: &str, last_octet: u8) -> Node {
    match apply(state, Command::RegisterNode(node_request(name, last_octet))).unwrap().response {
        Response::Node(n) => n,
        other => panic!("unexpected {other:?}"),
    }
}

fn endpoint(net: &str, node: &str, container: &str) -> EndpointRequest {
    EndpointRequest {
        network: net.into(),
        node: node.into(),
        container_id: container.into(),
        container_name: container.into(),
        ..EndpointRequest::default()
    }
}

fn attach(state: &mut State, request: EndpointRequest) -> Endpoint {
    match apply(state, Command::CreateEndpoint(request)).unwrap().response {
        Response::Endpoint(e) => Endpoint::clone(&e),
        other => panic!("unexpected {other:?}"),
    }
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A cluster with one host, "h1".
fn cluster() -> State {
    let mut state = State::default();
    register(&mut state, "h1", 1);
    state
}

// === networks ===

#[test]
fn default_subnets_are_carved_in_order_from_the_pool() {
    let mut s = cluster();
    let a = create(&mut s, network("a"));
    let b = create(&mut s, network("b"));
    assert_eq!(a.ipv4.subnet.to_string(), "10.0.0.0/24");
    assert_eq!(a.ipv4.gateway, IpAddr::V4(ip4("10.0.0.1")));
    assert_eq!(b.ipv4.subnet.to_string(), "10.0.1.0/24");
    assert_eq!((a.vni, b.vni), (4096, 4097));
    assert_eq!(a.bridge_name(), "weft4096");
    assert!(a.settings.masquerade && a.settings.icc);
    assert_eq!(a.created_ms, T0 + 1);
    s.check_invariants().unwrap();
}

#[test]
fn carving_skips_explicit_subnets_and_reuses_removed_ones() {
    let mut s = cluster();
    create(&mut s, with_subnet("fixed", "10.0.0.0/23"));
    let a = create(&mut s, network("a"));
    assert_eq!(a.ipv4.subnet.to_string(), "10.0.2.0/24");
    apply(&mut s, Command::RemoveNetwork { network: "fixed".into(), force: false }).unwrap();
    let b = create(&mut s, network("b"));
    assert_eq!(b.ipv4.subnet.to_string(), "10.0.0.0/24");
    assert_eq!(b.vni, 4096, "the removed network's VNI is reused");
    s.check_invariants().unwrap();
}

#[test]
fn overlapping_subnets_are_refused_naming_the_other_network() {
    let mut s = cluster();
    create(&mut s, with_subnet("blue", "172.20.0.0/16"));
    let err = refused(&mut s, Command::CreateNetwork(with_subnet("red", "172.20.5.0/24")));
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains("overlaps 172.20.0.0/16 of network \"blue\""), "{err}");
    let err = refused(&mut s, Command::CreateNetwork(with_subnet("red", "10.255.3.0/24")));
    assert!(err.message().contains("tunnel pool 10.255.0.0/16"), "{err}");
}

#[test]
fn network_names_are_unique_ignoring_case() {
    let mut s = cluster();
    create(&mut s, network("Web"));
    let err = refused(&mut s, Command::CreateNetwork(network("web")));
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.message().contains("\"Web\""), "{err}");
}

#[test]
fn bad_network_requests_are_refused_with_the_rule() {
    let mut s = cluster();
    let v6_as_v4 = with_subnet("x", "fd00::/64");
    let range_without_subnet = NetworkRequest {
        name: "x".into(),
        ipv4: SubnetRequest { ip_range: Some("10.9.0.0/25".parse().unwrap()), ..SubnetRequest::default() },
        ..NetworkRequest::default()
    };
    let bad_driver = NetworkRequest { driver: Some("bridge".into()), ..network("x") };
    let bad_option =
        NetworkRequest { options: [("mtu".to_string(), "1".to_string())].into(), ..network("x") };
    let cases = [
        (network("bad name"), ErrorKind::Invalid, "invalid network name"),
        (v6_as_v4, ErrorKind::Invalid, "not an IPv4 subnet"),
        (with_subnet("x", "10.9.0.0/31"), ErrorKind::Invalid, "/30"),
        (range_without_subnet, ErrorKind::Invalid, "needs an explicit IPv4 subnet"),
        (bad_driver, ErrorKind::Invalid, "\"overlay\" driver"),
        (bad_option, ErrorKind::Invalid, "unknown network option"),
    ];
    for (request, kind, expect) in cases {
        let err = refused(&mut s, Command::CreateNetwork(request.clone()));
        assert_eq!(err.kind(), kind, "{request:?}");
        assert!(err.message().contains(expect), "{request:?}: {err}");
    }
}

#[test]
fn duplicate_bridge_names_are_refused() {
    let mut s = cluster();
    let opts: BTreeMap<String, String> =
        [(crate::options::OPT_BRIDGE_NAME.to_string(), "br-app".to_string())].into();
    create(&mut s, NetworkRequest { options: opts.clone(), ..network("a") });
    let err = refused(&mut s, Command::CreateNetwork(NetworkRequest { options: opts, ..network("b") }));
    assert!(err.message().contains("bridge name \"br-app\" is already used by network \"a\""), "{err}");
}

#[test]
fn pool_exhaustion_names_the_pools() {
    let config = ClusterConfig {
        ipv4_pools: vec![AddressPool::new("10.0.0.0/23".parse().unwrap(), 24).unwrap()],
        ..ClusterConfig::default()
    };
    let mut s = State::new(config).unwrap();
    create(&mut s, network("a"));
    create(&mut s, network("b"));
    let err = refused(&mut s, Command::CreateNetwork(network("c")));
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert!(err.message().contains("10.0.0.0/23 (subnets of /24)"), "{err}");
}

#[test]
fn vni_exhaustion_names_the_range_and_removal_frees_a_vni() {
    let config = ClusterConfig { vni_min: 100, vni_max: 101, ..ClusterConfig::default() };
    let mut s = State::new(config).unwrap();
    create(&mut s, network("a"));
    create(&mut s, network("b"));
    let err = refused(&mut s, Command::CreateNetwork(network("c")));
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert!(err.message().contains("all 2 VNIs of the cluster's range 100-101"), "{err}");
    apply(&mut s, Command::RemoveNetwork { network: "a".into(), force: false }).unwrap();
    assert_eq!(create(&mut s, network("c")).vni, 100);
}

#[test]
fn dual_stack_networks_carve_and_assign_both_families() {
    let mut s = cluster();
    let net = create(&mut s, NetworkRequest { ipv6: Some(SubnetRequest::default()), ..network("dual") });
    let v6 = net.ipv6.as_ref().unwrap();
    assert_eq!(v6.subnet.to_string(), "fd77:6566:7400::/64");
    let ep = attach(&mut s, endpoint("dual", "h1", "c1"));
    assert_eq!(ep.ipv6, Some("fd77:6566:7400::2".parse::<Ipv6Addr>().unwrap()));
    let ep2 = attach(
        &mut s,
        EndpointRequest { ipv6: Some("fd77:6566:7400::99".parse().unwrap()), ..endpoint("dual", "h1", "c2") },
    );
    assert_eq!(ep2.ipv6.unwrap().to_string(), "fd77:6566:7400::99");
    s.check_invariants().unwrap();
}

#[test]
fn networks_resolve_by_name_id_and_unique_prefix() {
    let mut s = cluster();
    let a = create(&mut s, network("a"));
    let full = a.id.to_string();
    assert_eq!(s.resolve_network("a").unwrap().id, a.id);
    assert_eq!(s.resolve_network("A").unwrap().id, a.id);
    assert_eq!(s.resolve_network(&full).unwrap().id, a.id);
    assert_eq!(s.resolve_network(&full[..5]).unwrap().id, a.id);
    assert_eq!(s.resolve_network(&full[..5].to_uppercase()).unwrap().id, a.id);
    let err = s.resolve_network("nope").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains("\"nope\""), "{err}");
}

#[test]
fn ambiguous_id_prefixes_are_refused() {
    let mut s = cluster();
    let ids: Vec<String> =
        (0..40).map(|i| create(&mut s, network(&format!("n{i}"))).id.to_string()).collect();
    // With 40 ids, some pair shares its first hex digit.
    let (a, _) = ids
        .iter()
        .enumerate()
        .find_map(|(i, a)| ids[i + 1..].iter().find(|b| b[..1] == a[..1]).map(|b| (a, b)))
        .unwrap();
    let err = s.resolve_network(&a[..1]).unwrap_err();
    assert!(err.message().contains("ambiguous"), "{err}");
}

#[test]
fn removing_a_network_with_endpoints_needs_force() {
    let mut s = cluster();
    register(&mut s, "h2", 2);
    create(&mut s, network("app"));
    let e1 = attach(&mut s, endpoint("app", "h1", "c1"));
    let e2 = attach(&mut s, endpoint("app", "h2", "c2"));
    let err = refused(&mut s, Command::RemoveNetwork { network: "app".into(), force: false });
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains("2 endpoint(s) attached (on h1, h2)"), "{err}");

    let applied = apply(&mut s, Command::RemoveNetwork { network: "app".into(), force: true }).unwrap();
    let kinds: Vec<_> = applied.events.iter().map(|e| &e.kind).collect();
    assert_eq!(kinds.len(), 3);
    assert!(matches!(kinds[2], EventKind::NetworkRemoved(n) if n.name == "app"));
    let mut removed: Vec<Id> = kinds[..2]
        .iter()
        .map(|k| match k {
            EventKind::EndpointRemoved(e) => e.id,
            other => panic!("{other:?}"),
        })
        .collect();
    removed.sort();
    let mut expected = vec![e1.id, e2.id];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(applied.events.iter().all(|e| e.revision == applied.revision));
    assert_eq!(s.endpoints().count(), 0);
    assert_eq!(s.node_endpoints("h1").count(), 0);
    s.check_invariants().unwrap();
}

#[test]
fn prune_removes_only_unused_networks_matching_the_filters() {
    let mut s = cluster();
    let labels = |v: &str| -> BTreeMap<String, String> { [("env".to_string(), v.to_string())].into() };
    create(&mut s, NetworkRequest { labels: labels("dev"), ..network("dev-empty") });
    create(&mut s, NetworkRequest { labels: labels("dev"), ..network("dev-used") });
    create(&mut s, NetworkRequest { labels: labels("prod"), ..network("prod-empty") });
    attach(&mut s, endpoint("dev-used", "h1", "c1"));
    let late = create(&mut s, NetworkRequest { labels: labels("dev"), ..network("dev-late") });

    let filter = PruneFilter {
        labels: vec!["env=dev".parse::<LabelFilter>().unwrap()],
        created_before_ms: Some(late.created_ms),
    };
    let applied = apply(&mut s, Command::PruneNetworks(filter.clone())).unwrap();
    match applied.response {
        Response::Pruned(removed) => {
            assert_eq!(removed.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["dev-empty"]);
        }
        other => panic!("{other:?}"),
    }
    let revision = s.revision();
    let again = apply(&mut s, Command::PruneNetworks(filter)).unwrap();
    assert_eq!(again.revision, revision, "a prune that removes nothing changes nothing");
    assert!(again.events.is_empty());
    let names: Vec<&str> = s.networks().map(|n| n.name.as_str()).collect();
    assert_eq!(names.len(), 3);
    s.check_invariants().unwrap();
}

// === endpoints ===

#[test]
fn endpoints_get_the_lowest_free_address_and_a_derived_mac() {
    let mut s = cluster();
    create(&mut s, with_subnet("app", "10.5.0.0/24"));
    let e1 = attach(&mut s, endpoint("app", "h1", "c1"));
    let e2 = attach(&mut s, endpoint("app", "h1", "c2"));
    assert_eq!(e1.ipv4, ip4("10.5.0.2"));
    assert_eq!(e1.mac.to_string(), "02:42:0a:05:00:02");
    assert_eq!(e2.ipv4, ip4("10.5.0.3"));
    apply(&mut s, Command::RemoveEndpoint(EndpointRef::Id(e1.id.to_string()))).unwrap();
    let e3 = attach(&mut s, endpoint("app", "h1", "c3"));
    assert_eq!(e3.ipv4, ip4("10.5.0.2"), "released addresses are reused lowest first");
    s.check_invariants().unwrap();
}

#[test]
fn static_addresses_and_macs_are_honoured() {
    let mut s = cluster();
    create(&mut s, with_subnet("app", "10.5.0.0/24"));
    let e = attach(
        &mut s,
        EndpointRequest {
            ipv4: Some(ip4("10.5.0.50")),
            mac: Some("06:00:00:00:00:01".parse().unwrap()),
            aliases: vec!["db".into(), "primary".into()],
            ..endpoint("app", "h1", "c1")
        },
    );
    assert_eq!(e.ipv4, ip4("10.5.0.50"));
    assert_eq!(e.mac.to_string(), "06:00:00:00:00:01");
    assert_eq!(e.aliases, ["db", "primary"]);
    // A MAC derived from its own address is fine when given explicitly.
    attach(
        &mut s,
        EndpointRequest {
            ipv4: Some(ip4("10.5.0.60")),
            mac: Some(MacAddr::from_ipv4(ip4("10.5.0.60"))),
            ..endpoint("app", "h1", "c2")
        },
    );
    s.check_invariants().unwrap();
}

#[test]
fn conflicting_endpoints_are_refused_without_leaking_addresses() {
    let mut s = cluster();
    create(&mut s, with_subnet("app", "10.5.0.0/24"));
    create(&mut s, with_subnet("v4only", "10.6.0.0/24"));
    attach(
        &mut s,
        EndpointRequest {
            ipv4: Some(ip4("10.5.0.9")),
            mac: Some("06:00:00:00:00:01".parse().unwrap()),
            ..endpoint("app", "h1", "web")
        },
    );
    let cases: Vec<(EndpointRequest, ErrorKind, &str)> = vec![
        (endpoint("app", "h1", "web"), ErrorKind::AlreadyExists, "already attached to network \"app\""),
        (
            EndpointRequest { container_name: "WEB".into(), ..endpoint("app", "h1", "other") },
            ErrorKind::AlreadyExists,
            "container name \"WEB\" is already used on network \"app\" by container \"web\" on node \"h1\"",
        ),
        (
            EndpointRequest { ipv4: Some(ip4("10.5.0.9")), ..endpoint("app", "h1", "c2") },
            ErrorKind::AlreadyExists,
            "10.5.0.9 is already in use on network \"app\"",
        ),
        (
            EndpointRequest { ipv4: Some(ip4("10.5.0.1")), ..endpoint("app", "h1", "c2") },
            ErrorKind::AlreadyExists,
            "gateway",
        ),
        (
            EndpointRequest { ipv4: Some(ip4("10.7.0.1")), ..endpoint("app", "h1", "c2") },
            ErrorKind::Invalid,
            "not in network \"app\"'s subnet 10.5.0.0/24",
        ),
        (
            EndpointRequest {
                mac: Some("06:00:00:00:00:01".parse().unwrap()),
                ..endpoint("app", "h1", "c2")
            },
            ErrorKind::AlreadyExists,
            "MAC address 06:00:00:00:00:01 is already used",
        ),
        (
            EndpointRequest {
                mac: Some(MacAddr::from_ipv4(ip4("10.5.0.77"))),
                ..endpoint("app", "h1", "c2")
            },
            ErrorKind::Invalid,
            "derives for 10.5.0.77",
        ),
        (
            EndpointRequest { ipv6: Some("fd00::5".parse().unwrap()), ..endpoint("v4only", "h1", "c2") },
            ErrorKind::Invalid,
            "has no IPv6 subnet",
        ),
        (endpoint("nope", "h1", "c2"), ErrorKind::NotFound, "\"nope\""),
        (endpoint("app", "ghost", "c2"), ErrorKind::NotFound, "no node named \"ghost\""),
        (endpoint("app", "h1", "bad id!"), ErrorKind::Invalid, "invalid container id"),
        (
            EndpointRequest { aliases: vec!["a".into(), "A".into()], ..endpoint("app", "h1", "c2") },
            ErrorKind::Invalid,
            "each alias may be given once",
        ),
    ];
    for (request, kind, expect) in cases {
        let err = refused(&mut s, Command::CreateEndpoint(request.clone()));
        assert_eq!(err.kind(), kind, "{request:?}: {err}");
        assert!(err.message().contains(expect), "{request:?}: {err}");
    }
    s.check_invariants().unwrap();
}

#[test]
fn subnet_exhaustion_names_the_network_and_its_size() {
    let mut s = cluster();
    create(&mut s, with_subnet("tiny", "10.5.0.0/29"));
    for i in 0..5 {
        attach(&mut s, endpoint("tiny", "h1", &format!("c{i}")));
    }
    let err = refused(&mut s, Command::CreateEndpoint(endpoint("tiny", "h1", "late")));
    assert_eq!(err.kind(), ErrorKind::Exhausted);
    assert!(
        err.message().contains("network \"tiny\" has no free IPv4 address: 10.5.0.0/29 holds 5 assignable"),
        "{err}"
    );
}

#[test]
fn a_failed_ipv6_allocation_gives_the_ipv4_address_back() {
    let mut s = cluster();
    let dual = NetworkRequest {
        ipv6: Some(SubnetRequest {
            subnet: Some("fd00:9::/126".parse().unwrap()),
            ..SubnetRequest::default()
        }),
        ..with_subnet("dual", "10.5.0.0/24")
    };
    create(&mut s, dual);
    attach(&mut s, endpoint("dual", "h1", "c1"));
    attach(&mut s, endpoint("dual", "h1", "c2"));
    // The /126 has three host addresses: the gateway and two endpoints.
    let err = refused(&mut s, Command::CreateEndpoint(endpoint("dual", "h1", "c3")));
    assert!(err.message().contains("no free IPv6 address"), "{err}");
    s.check_invariants().unwrap();
}

#[test]
fn endpoints_are_removed_by_container_and_network() {
    let mut s = cluster();
    create(&mut s, network("app"));
    let e = attach(&mut s, endpoint("app", "h1", "c1"));
    let reference = EndpointRef::Container { network: "app".into(), container_id: "c1".into() };
    let applied = apply(&mut s, Command::RemoveEndpoint(reference.clone())).unwrap();
    assert_eq!(applied.response, Response::EndpointRemoved(Arc::new(e)));
    let err = refused(&mut s, Command::RemoveEndpoint(reference));
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains("\"c1\" is not attached to network \"app\""), "{err}");
}

// === nodes ===

#[test]
fn registration_is_idempotent_and_changes_are_events() {
    let mut s = State::default();
    let n = register(&mut s, "h1", 1);
    assert_eq!(n.tunnel_address, IpAddr::V4(ip4("10.255.0.1")));
    assert_eq!(n.status, NodeStatus::Up);
    let revision = s.revision();
    let same = apply(&mut s, Command::RegisterNode(node_request("h1", 1))).unwrap();
    assert_eq!(same.revision, revision);
    assert!(same.events.is_empty());
    let moved = apply(&mut s, Command::RegisterNode(node_request("h1", 9))).unwrap();
    assert_eq!(moved.revision, revision + 1);
    assert!(
        matches!(&moved.events[..], [Event { kind: EventKind::NodeRegistered(n), .. }] if n.underlay == IpAddr::V4(ip4("192.0.2.9")))
    );
    let err = refused(&mut s, Command::RegisterNode(node_request("h2", 9)));
    assert!(err.message().contains("192.0.2.9 is already registered by node \"h1\""), "{err}");
    s.check_invariants().unwrap();
}

#[test]
fn bad_registrations_are_refused() {
    let mut s = State::default();
    let key = "YjNmZDk3ZTQ2ZjQyNDE5ZDhmNzBkZmM1YjA4Y2E0ZGU=".to_string();
    let cases = [
        (NodeRequest { underlay_mtu: 100, ..node_request("h", 1) }, "underlay MTU"),
        (NodeRequest { underlay: IpAddr::V4(Ipv4Addr::UNSPECIFIED), ..node_request("h", 1) }, "unicast"),
        (NodeRequest { name: "h_ 1".into(), ..node_request("h", 1) }, "node name"),
        (NodeRequest { wireguard_backend: "bad\nline".into(), ..node_request("h", 1) }, "WireGuard backend"),
        (NodeRequest { wireguard_public_key: Some("short".into()), ..node_request("h", 1) }, "44 characters"),
        (NodeRequest { wireguard_public_key: Some(key.clone()), ..node_request("h", 1) }, "UDP port"),
    ];
    for (request, expect) in cases {
        let err = refused(&mut s, Command::RegisterNode(request.clone()));
        assert!(err.message().contains(expect), "{request:?}: {err}");
    }
    let with_key = NodeRequest {
        wireguard_public_key: Some(key.clone()),
        wireguard_port: 51820,
        ..node_request("h1", 1)
    };
    apply(&mut s, Command::RegisterNode(with_key.clone())).unwrap();
    let err = refused(
        &mut s,
        Command::RegisterNode(NodeRequest {
            name: "h2".into(),
            underlay: IpAddr::V4(ip4("192.0.2.2")),
            ..with_key
        }),
    );
    assert!(err.message().contains("already registered by node \"h1\""), "{err}");
}

#[test]
fn node_status_is_written_only_on_transitions() {
    let mut s = cluster();
    let r = s.revision();
    let same = apply(&mut s, Command::SetNodeStatus { name: "h1".into(), status: NodeStatus::Up }).unwrap();
    assert_eq!(same.revision, r);
    let down = apply(&mut s, Command::SetNodeStatus { name: "h1".into(), status: NodeStatus::Down }).unwrap();
    assert_eq!(down.revision, r + 1);
    assert_eq!(s.node("h1").unwrap().status, NodeStatus::Down);
    assert_eq!(s.node("h1").unwrap().status_changed_ms, T0 + r);
    // The next registration (an agent restarting) brings it back up.
    let up = apply(&mut s, Command::RegisterNode(node_request("h1", 1))).unwrap();
    assert!(
        up.events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::NodeStatusChanged(n) if n.status == NodeStatus::Up))
    );
    let err = refused(&mut s, Command::SetNodeStatus { name: "h9".into(), status: NodeStatus::Up });
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn removing_a_node_releases_its_endpoints_and_tunnel_address() {
    let mut s = cluster();
    register(&mut s, "h2", 2);
    create(&mut s, with_subnet("app", "10.5.0.0/24"));
    let keep = attach(&mut s, endpoint("app", "h1", "c1"));
    let gone = attach(&mut s, endpoint("app", "h2", "c2"));
    let applied = apply(&mut s, Command::RemoveNode { name: "h2".into() }).unwrap();
    match &applied.response {
        Response::NodeRemoved { node, endpoints } => {
            assert_eq!(node.name, "h2");
            assert_eq!(endpoints, &vec![Arc::new(gone.clone())]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.endpoints().map(|e| e.id).collect::<Vec<_>>(), vec![keep.id]);
    let again = attach(&mut s, endpoint("app", "h1", "c3"));
    assert_eq!(again.ipv4, gone.ipv4, "the removed node's address is free again");
    let h3 = register(&mut s, "h3", 3);
    assert_eq!(h3.tunnel_address, IpAddr::V4(ip4("10.255.0.2")), "the tunnel address is reused");
    s.check_invariants().unwrap();
}

// === configuration ===

#[test]
fn configuration_changes_are_checked_against_the_registry() {
    let mut s = cluster();
    create(&mut s, network("a"));
    let narrower = ClusterConfig { vni_min: 5000, ..s.config().clone() };
    let err = refused(&mut s, Command::Configure(narrower));
    assert!(err.message().contains("network \"a\" uses VNI 4096"), "{err}");
    let moved_pool = ClusterConfig { tunnel_pool: "10.254.0.0/16".parse().unwrap(), ..s.config().clone() };
    let err = refused(&mut s, Command::Configure(moved_pool));
    assert!(err.message().contains("while nodes are registered"), "{err}");
    let renamed = ClusterConfig { cluster_id: "other".into(), ..s.config().clone() };
    let err = refused(&mut s, Command::Configure(renamed));
    assert!(err.message().contains("cannot be changed"), "{err}");
    let encrypted = ClusterConfig { encrypt_by_default: true, ..s.config().clone() };
    apply(&mut s, Command::Configure(encrypted)).unwrap();
    assert!(create(&mut s, network("b")).settings.encrypted);
    s.check_invariants().unwrap();
}

#[test]
fn a_new_tunnel_pool_may_not_overlap_networks() {
    let mut s = State::default();
    apply(&mut s, Command::Configure(ClusterConfig { cluster_id: "c1".into(), ..ClusterConfig::default() }))
        .unwrap();
    create(&mut s, with_subnet("a", "10.254.1.0/24"));
    let base = s.config().clone();
    let err = refused(
        &mut s,
        Command::Configure(ClusterConfig { tunnel_pool: "10.254.0.0/16".parse().unwrap(), ..base.clone() }),
    );
    assert!(err.message().contains("overlaps network \"a\" (10.254.1.0/24)"), "{err}");
    apply(
        &mut s,
        Command::Configure(ClusterConfig { tunnel_pool: "10.253.0.0/16".parse().unwrap(), ..base }),
    )
    .unwrap();
    // The old pool's range is open to networks now.
    create(&mut s, with_subnet("b", "10.255.0.0/24"));
    s.check_invariants().unwrap();
}

#[test]
fn ids_depend_on_the_cluster_id() {
    let mut a = State::default();
    let mut b = State::default();
    apply(&mut b, Command::Configure(ClusterConfig { cluster_id: "b".into(), ..ClusterConfig::default() }))
        .unwrap();
    apply(&mut a, Command::Configure(ClusterConfig { cluster_id: "a".into(), ..ClusterConfig::default() }))
        .unwrap();
    assert_ne!(create(&mut a, network("n")).id, create(&mut b, network("n")).id);
}

// === revisions, events, snapshots ===

#[test]
fn every_change_bumps_the_revision_once_and_stamps_its_events() {
    let mut s = State::default();
    assert_eq!(s.revision(), 0);
    let applied = apply(&mut s, Command::RegisterNode(node_request("h1", 1))).unwrap();
    assert_eq!((applied.revision, s.revision()), (1, 1));
    refused(&mut s, Command::CreateNetwork(network("bad name")));
    assert_eq!(s.revision(), 1, "a refused command does not bump the revision");
    let applied = apply(&mut s, Command::CreateNetwork(network("a"))).unwrap();
    assert_eq!(applied.revision, 2);
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].revision, 2);
}

#[test]
fn snapshots_restore_to_an_equal_state() {
    let mut s = cluster();
    create(&mut s, NetworkRequest { ipv6: Some(SubnetRequest::default()), ..network("dual") });
    let aux = NetworkRequest {
        ipv4: SubnetRequest {
            subnet: Some("10.9.0.0/24".parse().unwrap()),
            ip_range: Some("10.9.0.128/25".parse().unwrap()),
            gateway: Some("10.9.0.254".parse().unwrap()),
            aux_addresses: [("printer".to_string(), "10.9.0.200".parse().unwrap())].into(),
        },
        ..network("aux")
    };
    create(&mut s, aux);
    for i in 0..20 {
        attach(&mut s, endpoint(if i % 2 == 0 { "dual" } else { "aux" }, "h1", &format!("c{i}")));
    }
    attach(
        &mut s,
        EndpointRequest { mac: Some("06:00:00:00:00:07".parse().unwrap()), ..endpoint("aux", "h1", "m") },
    );
    apply(
        &mut s,
        Command::RemoveEndpoint(EndpointRef::Container { network: "dual".into(), container_id: "c4".into() }),
    )
    .unwrap();

    let bytes = s.snapshot();
    let restored = State::restore(&bytes).unwrap();
    assert_eq!(restored, s);
    assert_eq!(restored.snapshot(), bytes);
    assert_eq!(restored.digest(), s.digest());
    // The restored state keeps allocating where the original would.
    let mut a = s.clone();
    let mut b = restored;
    let ea = attach(&mut a, endpoint("dual", "h1", "next"));
    let eb = attach(&mut b, endpoint("dual", "h1", "next"));
    assert_eq!(ea, eb);
}

#[test]
fn a_write_retried_with_its_request_id_answers_what_the_first_attempt_did() {
    let mut s = cluster();
    let once = |id: &str, request: NetworkRequest| Command::once(id, Command::CreateNetwork(request));
    let first = apply(&mut s, once("req-1", network("blue"))).unwrap();
    let revision = s.revision();
    let retry = apply(&mut s, once("req-1", network("blue"))).unwrap();
    assert_eq!(retry.response, first.response, "the retry gets the first answer");
    assert_eq!(retry.revision, first.revision);
    assert!(retry.events.is_empty(), "nothing happens twice");
    assert_eq!(s.revision(), revision);
    // Somebody else's create of the same name is still refused as a duplicate.
    assert_eq!(refused(&mut s, once("req-2", network("blue"))).kind(), ErrorKind::AlreadyExists);
    // The same id for another request is an error the client can see.
    let err = refused(&mut s, once("req-1", network("green")));
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.message().contains("used for a different request"), "{err}");
    // Refusals are not remembered: fixing the request and retrying with the id works.
    let bad = NetworkRequest { driver: Some("bridge".into()), ..network("red") };
    refused(&mut s, once("req-3", bad));
    apply(&mut s, once("req-3", network("red"))).unwrap();
    let empty =
        Command::Once { request_id: String::new(), command: Box::new(Command::CreateNetwork(network("x"))) };
    assert_eq!(refused(&mut s, empty).kind(), ErrorKind::Invalid);
    assert_eq!(refused(&mut s, once("a b", network("x"))).kind(), ErrorKind::Invalid);

    // Kept across snapshots, and forgotten after the retention time.
    let restored = State::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    let mut later = restored;
    let after = T0 + crate::requests::RETENTION_MS + 1_000;
    let err = later
        .apply(&Proposal { at_ms: after, command: once("req-1", network("blue")) })
        .expect_err("a forgotten id is a new request");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[test]
fn a_snapshot_view_encodes_the_registry_as_it_was_when_taken() {
    let mut s = cluster();
    create(&mut s, network("blue"));
    attach(&mut s, endpoint("blue", "h1", "web"));
    apply(&mut s, Command::once("req-1", Command::CreateEndpoint(endpoint("blue", "h1", "db")))).unwrap();
    let before = s.clone();
    let view = s.snapshot_view();

    // Writes after the view (a new host and endpoint, a removal, another remembered answer)
    // do not reach it: it holds the records as they were, shared rather than copied.
    register(&mut s, "h2", 2);
    attach(&mut s, endpoint("blue", "h2", "cache"));
    apply(&mut s, Command::once("req-2", Command::CreateNetwork(network("green")))).unwrap();
    let web = before.endpoints().find(|e| e.container_name == "web").unwrap().clone();
    apply(&mut s, Command::RemoveEndpoint(EndpointRef::Id(web.id.to_string()))).unwrap();

    let bytes = view.encode();
    assert_eq!(bytes, before.snapshot());
    assert_eq!(State::restore(&bytes).unwrap(), before);
    assert_ne!(s.snapshot(), bytes);
    assert_eq!(s.snapshot_view().encode(), s.snapshot());
}

#[test]
fn version_5_snapshots_restore_without_request_ids() {
    let mut s = cluster();
    create(&mut s, network("blue"));
    let current = s.snapshot();
    let mut v5 = current.clone();
    v5[8..12].copy_from_slice(&5u32.to_le_bytes());
    v5.pop(); // the empty list of request ids version 6 appends
    assert_eq!(State::restore(&v5).unwrap(), s);
}

#[test]
fn bad_snapshots_are_refused() {
    let s = cluster();
    let bytes = s.snapshot();
    assert_eq!(State::restore(b"nonsense").unwrap_err(), SnapshotError::BadHeader);
    let mut wrong_version = bytes.clone();
    wrong_version[8] = 99;
    assert_eq!(State::restore(&wrong_version).unwrap_err(), SnapshotError::UnsupportedVersion(99));
    let truncated = &bytes[..bytes.len() - 3];
    assert!(matches!(State::restore(truncated).unwrap_err(), SnapshotError::Decode(_)));
}

#[test]
fn inconsistent_snapshots_are_refused() {
    let mut s = cluster();
    create(&mut s, with_subnet("a", "10.5.0.0/24"));
    let e = attach(&mut s, endpoint("a", "h1", "c1"));
    // Forge a second endpoint holding the same address.
    let mut forged = SnapshotBody {
        revision: s.revision() + 1,
        config: s.config().clone(),
        networks: s.networks().cloned().collect(),
        nodes: s.nodes().cloned().collect(),
        endpoints: vec![Arc::new(e.clone())],
        revoked_nodes: BTreeMap::new(),
        tokens: BTreeMap::new(),
    };
    let mut twin = e.clone();
    twin.created_revision = forged.revision;
    twin.id = s.new_id(twin.created_revision);
    twin.modified_revision = twin.created_revision;
    twin.container_id = "c2".into();
    twin.container_name = "c2".into();
    let encode = |snapshot: &SnapshotBody| snapshot_bytes(SNAPSHOT_VERSION, snapshot);
    forged.endpoints.push(Arc::new(twin.clone()));
    let err = State::restore(&encode(&forged)).unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Inconsistent(m) if m.contains("10.5.0.2 is already in use")),
        "{err}"
    );

    // An id that is not the one its creation revision yields.
    twin.ipv4 = ip4("10.5.0.3");
    twin.mac = MacAddr::from_ipv4(twin.ipv4);
    twin.id = Id([7; 32]);
    forged.endpoints[1] = Arc::new(twin);
    let err = State::restore(&encode(&forged)).unwrap_err();
    assert!(matches!(&err, SnapshotError::Inconsistent(m) if m.contains("does not match")), "{err}");
}

#[test]
fn endpoint_ids_resolve_from_the_twelve_digits_endpoint_ls_prints() {
    let mut s = cluster();
    create(&mut s, network("app"));
    let e = attach(&mut s, endpoint("app", "h1", "c1"));
    for i in 2..40 {
        attach(&mut s, endpoint("app", "h1", &format!("c{i}")));
    }
    let full = e.id.to_string();
    assert_eq!(s.endpoint(&e.id).map(|found| found.id), Some(e.id));
    assert_eq!(s.resolve_endpoint(&EndpointRef::Id(full[..16].to_uppercase())).unwrap(), e.created_revision);
    assert_eq!(s.resolve_endpoint(&EndpointRef::Id(full[..12].into())).unwrap(), e.created_revision);
    assert_eq!(s.resolve_endpoint(&EndpointRef::Id(full[..13].into())).unwrap(), e.created_revision);
    let err = s.resolve_endpoint(&EndpointRef::Id(full[..11].into())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.message().contains("at least 12 hex digits"), "{err}");
    let mut unknown = full[..12].to_string();
    unknown.replace_range(11..12, if &full[11..12] == "0" { "1" } else { "0" });
    if s.endpoints().all(|other| !other.id.to_string().starts_with(&unknown)) {
        assert_eq!(s.resolve_endpoint(&EndpointRef::Id(unknown)).unwrap_err().kind(), ErrorKind::NotFound);
    }
    let mut wrong = full.clone();
    wrong.replace_range(20..21, if &full[20..21] == "0" { "1" } else { "0" });
    assert_eq!(s.resolve_endpoint(&EndpointRef::Id(wrong)).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(s.endpoint(&Id([3; 32])), None);
}

#[test]
fn unmix_inverts_mix() {
    for x in [0u64, 1, 42, u64::MAX, 0x0123_4567_89ab_cdef, 1 << 63] {
        assert_eq!(unmix64(mix64(x)), x);
    }
}

#[test]
fn removing_a_node_revokes_its_name_until_then_and_survives_a_snapshot() {
    let mut s = cluster();
    assert_eq!(s.node_revoked_at("h1"), None);
    s.apply(&Proposal { at_ms: 777, command: Command::RemoveNode { name: "h1".into() } }).unwrap();
    assert_eq!(s.node_revoked_at("h1"), Some(777));
    let restored = State::restore(&s.snapshot()).unwrap();
    assert_eq!(restored.node_revoked_at("h1"), Some(777));
    assert_eq!(restored.snapshot(), s.snapshot());
}

#[test]
fn join_tokens_admit_until_they_expire_or_are_revoked_and_never_move_the_revision() {
    let mut s = cluster();
    let revision = s.revision();
    let token = crate::JoinToken {
        id: "0123456789abcdef".into(),
        secret_sha256: "a".repeat(64),
        role: crate::TokenRole::Node,
        created_ms: 1_000,
        expires_ms: 2_000,
        revoked: false,
    };
    s.apply(&Proposal { at_ms: 1_000, command: Command::CreateToken(token.clone()) }).unwrap();
    assert_eq!(s.revision(), revision, "tokens are not part of the watched registry");
    assert_eq!(s.admit(&token.id, &token.secret_sha256, 1_500), Ok(crate::TokenRole::Node));
    assert!(s.admit(&token.id, &"b".repeat(64), 1_500).is_err(), "wrong secret");
    assert!(s.admit(&token.id, &token.secret_sha256, 2_000).is_err(), "expired");
    assert!(s.admit("ffffffffffffffff", &token.secret_sha256, 1_500).is_err(), "unknown");
    let again = s.apply(&Proposal { at_ms: 1_000, command: Command::CreateToken(token.clone()) });
    assert_eq!(again.unwrap_err().kind(), ErrorKind::AlreadyExists);
    let bad = crate::JoinToken { id: "XYZ".into(), ..token.clone() };
    assert_eq!(
        s.apply(&Proposal { at_ms: 1, command: Command::CreateToken(bad) }).unwrap_err().kind(),
        ErrorKind::Invalid
    );

    s.apply(&Proposal { at_ms: 1_100, command: Command::RevokeToken { id: token.id.clone() } }).unwrap();
    assert!(s.admit(&token.id, &token.secret_sha256, 1_500).is_err(), "revoked");
    let restored = State::restore(&s.snapshot()).unwrap();
    assert!(restored.tokens().all(|t| t.revoked));
    s.check_invariants().unwrap();
}

// === endpoint problems ===

#[test]
fn hosts_report_problems_with_their_own_endpoints_only() {
    let mut s = cluster();
    register(&mut s, "h2", 2);
    create(&mut s, network("app"));
    let mine = attach(&mut s, endpoint("app", "h1", "c1"));
    let theirs = attach(&mut s, endpoint("app", "h2", "c2"));
    let id = |e: &Endpoint| e.id.to_string();
    let report = |problems: Vec<(String, Option<String>)>| Command::SetEndpointProblems {
        node: "h1".into(),
        problems,
    };

    let before = s.revision();
    let applied = apply(
        &mut s,
        report(vec![
            (id(&mine), Some("moving eth0: File exists".into())),
            // Another host's endpoint and an unknown one are skipped, not refused.
            (id(&theirs), Some("not h1's to report".into())),
            ("0".repeat(64), Some("gone meanwhile".into())),
        ]),
    )
    .unwrap();
    assert_eq!(applied.revision, before + 1);
    assert!(
        matches!(&applied.events[..], [Event { kind: EventKind::EndpointUpdated(e), .. }] if e.id == mine.id)
    );
    let listed: Vec<Option<String>> = s.network_endpoints(&mine.network).map(|e| e.problem.clone()).collect();
    assert_eq!(listed, [Some("moving eth0: File exists".to_string()), None]);

    // The same report again changes nothing; a solved problem clears.
    let again = apply(&mut s, report(vec![(id(&mine), Some("moving eth0: File exists".into()))])).unwrap();
    assert_eq!(again.revision, before + 1);
    assert!(again.events.is_empty());
    apply(&mut s, report(vec![(id(&mine), None)])).unwrap();
    assert!(s.network_endpoints(&mine.network).all(|e| e.problem.is_none()));

    // A long report is kept cut, so a host cannot fill the registry.
    apply(&mut s, report(vec![(id(&mine), Some("x".repeat(10_000)))])).unwrap();
    let kept = s.network_endpoints(&mine.network).find(|e| e.id == mine.id).unwrap().problem.clone().unwrap();
    assert_eq!(kept.chars().count(), MAX_PROBLEM_CHARS + 1);

    // Snapshots carry problems.
    let restored = State::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    s.check_invariants().unwrap();

    let err = refused(&mut s, Command::SetEndpointProblems { node: "ghost".into(), problems: Vec::new() });
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

// === published ports ===

fn published(text: &str) -> PublishedPort {
    let spec: crate::ports::PortSpec = text.parse().unwrap();
    let host = spec.host_ports.unwrap();
    PublishedPort {
        protocol: spec.protocol,
        host_ip: spec.host_ip,
        host_port: *host.start(),
        container_port: *spec.container_ports.start(),
    }
}

fn publish(state: &mut State, request: EndpointRequest, ports: &[&str]) -> Result<Applied> {
    apply(state, Command::create_endpoint(request, ports.iter().map(|p| published(p)).collect()))
}

#[test]
fn published_ports_are_recorded_and_a_host_port_is_held_once_per_host() {
    let mut s = cluster();
    register(&mut s, "h2", 2);
    create(&mut s, network("web"));
    create(&mut s, network("other"));
    let Response::Endpoint(first) =
        publish(&mut s, endpoint("web", "h1", "a"), &["8080:80", "127.0.0.1:9000:90/udp"]).unwrap().response
    else {
        panic!("an endpoint")
    };
    assert_eq!(first.ports.len(), 2);
    assert_eq!(first.ports[0].docker_form(), "*:8080->80/tcp");

    // The same host port on the same host, from any network and any overlapping address.
    for (net, port) in [("web", "8080:81"), ("other", "10.0.0.1:8080:80"), ("other", "127.0.0.1:9000:91/udp")]
    {
        let err = publish(&mut s, endpoint(net, "h1", "b"), &[port]).expect_err(port);
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        assert!(err.message().contains("container \"a\""), "{err}");
    }
    // Another protocol, another address of the same family where the first named one, or
    // another host: free.
    publish(&mut s, endpoint("other", "h1", "b"), &["8080:80/udp", "127.0.0.2:9000:90/udp"]).unwrap();
    publish(&mut s, endpoint("web", "h2", "c"), &["8080:80"]).unwrap();
    s.check_invariants().unwrap();

    // Removing the container frees its ports.
    apply(
        &mut s,
        Command::RemoveEndpoint(EndpointRef::Container { network: "web".into(), container_id: "a".into() }),
    )
    .unwrap();
    publish(&mut s, endpoint("other", "h1", "d"), &["8080:80"]).unwrap();
}

#[test]
fn an_endpoint_publishes_ports_after_it_is_made_and_unpublishes_them() {
    let mut s = cluster();
    create(&mut s, network("web"));
    publish(&mut s, endpoint("web", "h1", "holder"), &["8080:80"]).unwrap();
    attach(&mut s, endpoint("web", "h1", "late"));
    let late = EndpointRef::Container { network: "web".into(), container_id: "late".into() };
    let set = |ports: &[&str]| Command::PublishPorts {
        endpoint: late.clone(),
        ports: ports.iter().map(|p| published(p)).collect(),
    };
    let before = s.clone();
    let err = refused(&mut s, set(&["8080:80"]));
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.message().contains("container \"holder\""), "{err}");
    assert_eq!(s, before, "a refusal changes nothing");
    let applied = apply(&mut s, set(&["8081:80", "8082:81"])).unwrap();
    let Response::Endpoint(published_now) = &applied.response else { panic!("{applied:?}") };
    assert_eq!(published_now.ports.len(), 2);
    assert!(
        matches!(&applied.events[..], [Event { kind: EventKind::EndpointUpdated(e), .. }] if e.ports.len() == 2)
    );
    // The same again changes nothing; its own ports are no clash with themselves.
    assert!(apply(&mut s, set(&["8081:80", "8082:81"])).unwrap().events.is_empty());
    apply(&mut s, set(&["8081:80"])).unwrap();
    s.check_invariants().unwrap();
    // None: unpublished, and the port is free for another container.
    apply(&mut s, set(&[])).unwrap();
    publish(&mut s, endpoint("web", "h1", "next"), &["8081:80"]).unwrap();
    s.check_invariants().unwrap();
    assert_eq!(State::restore(&s.snapshot()).unwrap(), s);
}

#[test]
fn publishing_is_refused_where_it_cannot_work_and_nothing_is_allocated() {
    let mut s = cluster();
    create(&mut s, NetworkRequest { internal: true, ..network("closed") });
    create(&mut s, network("v4only"));
    let before = s.clone();
    let err = publish(&mut s, endpoint("closed", "h1", "a"), &["8080:80"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains("internal"), "{err}");
    let err = publish(&mut s, endpoint("v4only", "h1", "a"), &["[::1]:8080:80"]).unwrap_err();
    assert!(err.message().contains("no IPv6 subnet"), "{err}");
    let err = publish(&mut s, endpoint("v4only", "h1", "a"), &["8080:80", "8080:81"]).unwrap_err();
    assert!(err.message().contains("asked for twice"), "{err}");
    let zero = PublishedPort { protocol: PortProtocol::Tcp, host_ip: None, host_port: 0, container_port: 80 };
    let err = apply(&mut s, Command::create_endpoint(endpoint("v4only", "h1", "a"), vec![zero])).unwrap_err();
    assert!(err.message().contains("1 to 65535"), "{err}");
    assert_eq!(s, before);
}

/// An endpoint as snapshot formats 5 and 6 held it.
fn before_ports(e: &Endpoint) -> EndpointV6 {
    EndpointV6 {
        id: e.id,
        network: e.network,
        node: e.node.clone(),
        container_id: e.container_id.clone(),
        container_name: e.container_name.clone(),
        aliases: e.aliases.clone(),
        mac: e.mac,
        ipv4: e.ipv4,
        ipv6: e.ipv6,
        created_ms: e.created_ms,
        created_revision: e.created_revision,
        problem: e.problem.clone(),
    }
}

/// A snapshot of the given format version holding `body`, with no remembered request ids.
fn snapshot_bytes(version: u32, body: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = SNAPSHOT_MAGIC.to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend(postcard::to_stdvec(body).unwrap());
    bytes.push(0);
    bytes
}

/// The registry as an older snapshot format wrote it, endpoints in that format's shape.
fn old_snapshot<E: serde::Serialize>(s: &State, version: u32, shape: impl Fn(&Endpoint) -> E) -> Vec<u8> {
    let body = OldSnapshotBody {
        revision: s.revision,
        config: s.config.clone(),
        networks: s.networks().cloned().collect(),
        nodes: s.nodes().cloned().collect(),
        endpoints: s.endpoints.values().map(|e| shape(e)).collect(),
        revoked_nodes: s.revoked_nodes.clone(),
        tokens: s.tokens.clone(),
    };
    snapshot_bytes(version, &body)
}

#[test]
fn published_ports_survive_snapshots_and_version_6_snapshots_still_restore() {
    let mut s = cluster();
    create(&mut s, network("web"));
    publish(&mut s, endpoint("web", "h1", "a"), &["8080:80"]).unwrap();
    attach(&mut s, endpoint("web", "h1", "b"));
    let restored = State::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    assert_eq!(restored.endpoints.values().next().unwrap().ports, vec![published("8080:80")]);

    // The same registry as a version 6 snapshot wrote it (no ports; remembered answers after).
    let v6 = old_snapshot(&s, 6, before_ports);
    let old = State::restore(&v6).unwrap();
    assert_eq!(old.endpoints.len(), 2);
    assert!(old.endpoints.values().all(|e| e.ports.is_empty()));
    old.check_invariants().unwrap();
}

#[test]
fn every_change_to_an_endpoint_moves_its_modified_revision_and_older_snapshots_restore() {
    let mut s = cluster();
    create(&mut s, network("web"));
    let e = attach(&mut s, endpoint("web", "h1", "a"));
    assert_eq!(e.modified_revision, e.created_revision);
    let current = |s: &State| s.endpoints[&e.created_revision].clone();
    let reference = EndpointRef::Id(e.id.to_string());

    let renamed = apply(
        &mut s,
        Command::UpdateEndpoint {
            endpoint: reference.clone(),
            container_id: None,
            container_name: "a-1".into(),
            aliases: vec![],
        },
    )
    .unwrap();
    assert_eq!(current(&s).modified_revision, renamed.revision);
    let publication =
        apply(&mut s, Command::PublishPorts { endpoint: reference, ports: vec![published("8080:80")] })
            .unwrap();
    assert_eq!(current(&s).modified_revision, publication.revision);
    let reported = apply(
        &mut s,
        Command::SetEndpointProblems {
            node: "h1".into(),
            problems: vec![(e.id.to_string(), Some("x".into()))],
        },
    )
    .unwrap();
    assert_eq!(current(&s).modified_revision, reported.revision);
    // The event carries it, so a watcher learns when the endpoint it holds was last changed.
    assert!(matches!(&reported.events[..],
        [Event { kind: EventKind::EndpointUpdated(u), revision }] if u.modified_revision == *revision));
    // Another endpoint's change leaves it alone.
    attach(&mut s, endpoint("web", "h1", "b"));
    assert_eq!(current(&s).modified_revision, reported.revision);
    assert_eq!(State::restore(&s.snapshot()).unwrap(), s);

    // A version 7 snapshot (no modification revisions): each endpoint modified when created.
    let as_v7 = |e: &Endpoint| EndpointV7 { before_ports: before_ports(e), ports: e.ports.clone() };
    // Format 7 wrote today's endpoint without its last field: the nested shape is those bytes.
    let today = postcard::to_allocvec(&*current(&s)).unwrap();
    let then = postcard::to_allocvec(&as_v7(&current(&s))).unwrap();
    assert_eq!(today[..then.len()], then[..]);
    assert_eq!(postcard::from_bytes::<u64>(&today[then.len()..]).unwrap(), reported.revision);
    let v7 = old_snapshot(&s, 7, as_v7);
    let old = State::restore(&v7).unwrap();
    assert_eq!(old.endpoints.len(), 2);
    assert!(old.endpoints.values().all(|e| e.modified_revision == e.created_revision));
    assert_eq!(old.endpoints[&e.created_revision].ports, vec![published("8080:80")]);
    old.check_invariants().unwrap();

    // A modification revision outside the endpoint's life is refused, naming both ends.
    let mut forged = s.clone();
    Arc::make_mut(forged.endpoints.get_mut(&e.created_revision).unwrap()).modified_revision = s.revision + 1;
    let err = State::restore(&forged.snapshot()).unwrap_err();
    assert!(matches!(&err, SnapshotError::Inconsistent(m) if m.contains("modified at revision")), "{err}");
}

// === renames and endpoint updates (runtimes that learn names late) ===

#[test]
fn an_empty_network_takes_new_options_and_only_while_empty() {
    let mut s = cluster();
    let created = create(&mut s, network("docker-77aa"));
    let encrypted = BTreeMap::from([("encrypted".to_string(), String::new())]);
    let reshape = |internal: bool, options: &BTreeMap<String, String>| Command::ReshapeNetwork {
        network: "docker-77aa".into(),
        internal,
        options: options.clone(),
    };
    let applied = apply(&mut s, reshape(true, &encrypted)).unwrap();
    let Response::Network(reshaped) = &applied.response else { panic!("{applied:?}") };
    assert_eq!((reshaped.id, reshaped.vni, &reshaped.ipv4), (created.id, created.vni, &created.ipv4));
    assert!(reshaped.internal && reshaped.settings.encrypted);
    assert!(matches!(&applied.events[..], [Event { kind: EventKind::NetworkUpdated(n), .. }] if n.internal));
    // The same again changes nothing; options a network cannot have are refused.
    assert!(apply(&mut s, reshape(true, &encrypted)).unwrap().events.is_empty());
    let bad = BTreeMap::from([("com.docker.network.driver.mtu".to_string(), "12".to_string())]);
    assert_eq!(refused(&mut s, reshape(true, &bad)).kind(), ErrorKind::Invalid);
    let bridge = BTreeMap::from([("com.docker.network.bridge.name".to_string(), "br-taken".to_string())]);
    create(&mut s, NetworkRequest { options: bridge.clone(), ..network("other") });
    assert_eq!(refused(&mut s, reshape(true, &bridge)).kind(), ErrorKind::AlreadyExists);
    attach(&mut s, endpoint("docker-77aa", "h1", "c1"));
    let err = refused(&mut s, reshape(false, &BTreeMap::new()));
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains("only while empty"), "{err}");
    s.check_invariants().unwrap();
    assert_eq!(State::restore(&s.snapshot()).unwrap(), s);
}

#[test]
fn an_empty_network_takes_ipv6_once_and_keeps_it() {
    let mut s = cluster();
    let created = create(&mut s, network("docker-5a5a"));
    let taken = create(
        &mut s,
        NetworkRequest {
            ipv6: Some(SubnetRequest { subnet: Some("fd00:77::/64".parse().unwrap()), ..Default::default() }),
            ..network("six")
        },
    );
    let reshape = |ipv6: Option<&str>| Command::ReshapeNetworkWithIpv6 {
        network: "docker-5a5a".into(),
        internal: false,
        options: BTreeMap::new(),
        ipv6: Some(SubnetRequest { subnet: ipv6.map(|c| c.parse().unwrap()), ..Default::default() }),
    };
    // A subnet another network holds is refused, and nothing changes.
    assert_eq!(refused(&mut s, reshape(Some("fd00:77::/64"))).kind(), ErrorKind::Conflict);
    assert!(s.resolve_network("docker-5a5a").unwrap().ipv6.is_none());
    let applied = apply(&mut s, reshape(None)).unwrap();
    let Response::Network(reshaped) = &applied.response else { panic!("{applied:?}") };
    let ipv6 = reshaped.ipv6.clone().expect("a pool subnet");
    assert_ne!(Some(ipv6.subnet), taken.ipv6.as_ref().map(|t| t.subnet));
    assert_eq!((reshaped.id, reshaped.vni, &reshaped.ipv4), (created.id, created.vni, &created.ipv4));
    // Asked again (a retry, or its own subnet named) changes nothing; another subnet is refused.
    assert!(apply(&mut s, reshape(None)).unwrap().events.is_empty());
    assert!(apply(&mut s, reshape(Some(&ipv6.subnet.to_string()))).unwrap().events.is_empty());
    assert_eq!(refused(&mut s, reshape(Some("fd00:99::/64"))).kind(), ErrorKind::Conflict);
    // The older command keeps the IPv6 it was given; endpoints get addresses of both families.
    let keep =
        Command::ReshapeNetwork { network: "docker-5a5a".into(), internal: true, options: BTreeMap::new() };
    apply(&mut s, keep).unwrap();
    assert_eq!(s.resolve_network("docker-5a5a").unwrap().ipv6.as_ref(), Some(&ipv6));
    let endpoint = attach(&mut s, endpoint("docker-5a5a", "h1", "c1"));
    assert!(endpoint.ipv6.is_some_and(|a| ipv6.subnet.contains(IpAddr::V6(a))), "{endpoint:?}");
    s.check_invariants().unwrap();
    assert_eq!(State::restore(&s.snapshot()).unwrap(), s);
    // Removing the network frees its IPv6 subnet for another.
    apply(&mut s, Command::RemoveNetwork { network: "docker-5a5a".into(), force: true }).unwrap();
    let again = NetworkRequest {
        ipv6: Some(SubnetRequest { subnet: Some(ipv6.subnet), ..Default::default() }),
        ..network("again")
    };
    create(&mut s, again);
    s.check_invariants().unwrap();
}

#[test]
fn an_empty_network_takes_a_new_name_and_only_while_empty() {
    let mut s = cluster();
    let provisional = create(&mut s, network("docker-1f2e"));
    create(&mut s, network("taken"));
    let applied =
        apply(&mut s, Command::RenameNetwork { network: "docker-1f2e".into(), name: "app".into() }).unwrap();
    let Response::Network(renamed) = &applied.response else { panic!("{applied:?}") };
    assert_eq!((renamed.id, renamed.name.as_str()), (provisional.id, "app"));
    assert!(
        matches!(&applied.events[..], [Event { kind: EventKind::NetworkUpdated(n), .. }] if n.name == "app")
    );
    assert_eq!(s.resolve_network("APP").unwrap().id, provisional.id);
    assert_eq!(
        refused(&mut s, Command::RenameNetwork { network: "docker-1f2e".into(), name: "x".into() }).kind(),
        ErrorKind::NotFound
    );
    // The same name again changes nothing; a taken or bad name is refused.
    let again = apply(&mut s, Command::RenameNetwork { network: "app".into(), name: "app".into() }).unwrap();
    assert!(again.events.is_empty());
    assert_eq!(
        refused(&mut s, Command::RenameNetwork { network: "app".into(), name: "Taken".into() }).kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        refused(&mut s, Command::RenameNetwork { network: "app".into(), name: "no spaces".into() }).kind(),
        ErrorKind::Invalid
    );
    attach(&mut s, endpoint("app", "h1", "c1"));
    let err = refused(&mut s, Command::RenameNetwork { network: "app".into(), name: "other".into() });
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains("only while empty"), "{err}");
    // The old name is free for another network.
    create(&mut s, network("docker-1f2e"));
    s.check_invariants().unwrap();
    assert_eq!(State::restore(&s.snapshot()).unwrap(), s);
}

#[test]
fn an_endpoint_takes_its_name_and_aliases_after_its_address() {
    let mut s = cluster();
    create(&mut s, network("app"));
    let reserved = attach(&mut s, endpoint("app", "h1", "reservation-1"));
    attach(&mut s, endpoint("app", "h1", "web"));
    let update = |name: &str, aliases: &[&str]| Command::UpdateEndpoint {
        endpoint: EndpointRef::Id(reserved.id.to_string()),
        container_id: Some("d0c4e2".into()),
        container_name: name.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
    };
    let applied = apply(&mut s, update("api-1", &["api"])).unwrap();
    let Response::Endpoint(updated) = &applied.response else { panic!("{applied:?}") };
    assert_eq!(
        (updated.container_id.as_str(), updated.container_name.as_str(), updated.aliases.clone()),
        ("d0c4e2", "api-1", vec!["api".to_string()])
    );
    assert_eq!((updated.ipv4, updated.id), (reserved.ipv4, reserved.id), "the address and id stay");
    assert!(matches!(&applied.events[..], [Event { kind: EventKind::EndpointUpdated(_), .. }]));
    assert!(apply(&mut s, update("api-1", &["api"])).unwrap().events.is_empty(), "no change, no event");
    let err = refused(&mut s, update("WEB", &[]));
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert!(err.message().contains("\"web\""), "{err}");
    assert_eq!(refused(&mut s, update("bad name", &[])).kind(), ErrorKind::Invalid);
    // Another endpoint may not take a container that is already on the network.
    let web = s.endpoints.values().find(|e| e.container_id == "web").unwrap().id;
    let taken = Command::UpdateEndpoint {
        endpoint: EndpointRef::Id(web.to_string()),
        container_id: Some("d0c4e2".into()),
        container_name: "web".into(),
        aliases: vec![],
    };
    assert_eq!(refused(&mut s, taken).kind(), ErrorKind::AlreadyExists);
    // The provisional container and name are free again; the new ones are held.
    attach(&mut s, endpoint("app", "h1", "reservation-1"));
    assert_eq!(
        apply(
            &mut s,
            Command::RemoveEndpoint(EndpointRef::Container {
                network: "app".into(),
                container_id: "d0c4e2".into()
            })
        )
        .unwrap()
        .events
        .len(),
        1
    );
    s.check_invariants().unwrap();
    assert_eq!(State::restore(&s.snapshot()).unwrap(), s);
}
