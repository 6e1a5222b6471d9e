//! Property tests of the state machine's invariants over random command sequences.
//!
//! The cluster is deliberately cramped (a pool of sixty-four /28s, eight VNIs, small subnets)
//! so that random sequences hit exhaustion, reuse and conflicts often. Every sequence is checked
//! step by step against a small reference model:
//! - no address, MAC, VNI or subnet is ever held twice, and the allocators agree with a rebuild
//!   from the records (`State::check_invariants`);
//! - a dynamic allocation returns exactly the lowest address the model says is free, so released
//!   addresses are reused first;
//! - two replicas fed the same proposals answer identically and snapshot to identical bytes;
//! - snapshot, restore and carry on gives the same answers as never stopping.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 2,000 per property).

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use weft_core::{
    AddressPool, ClusterConfig, Command, EndpointRef, EndpointRequest, Id, NetworkRequest, NodeRequest,
    NodeStatus, PortProtocol, Proposal, PruneFilter, PublishedPort, Response, State, SubnetRequest,
};

#[derive(Debug, Clone)]
enum Op {
    /// A network named n{index}; with a fixed /27../29 subnet in 172.16.0.0/16 or carved.
    CreateNetwork {
        index: u8,
        fixed: Option<(u8, u8)>,
        ipv6: bool,
        ip_range: bool,
    },
    RemoveNetwork {
        index: u8,
        force: bool,
    },
    Prune,
    Attach {
        network: u8,
        node: u8,
        container: u8,
        static_last_octet: Option<u8>,
        /// A published host port from a small set, so clashes are common.
        host_port: Option<u16>,
    },
    Rename {
        from: u8,
        to: u8,
    },
    /// Publishes one host port from the small set (or none) on an existing endpoint.
    Publish {
        network: u8,
        container: u8,
        host_port: Option<u16>,
    },
    /// Options from a small set: none, encrypted, or a bridge name two networks may want;
    /// with `ipv6`, through the command that also adds IPv6 (a pool subnet).
    Reshape {
        index: u8,
        internal: bool,
        options: u8,
        ipv6: bool,
    },
    Update {
        network: u8,
        container: u8,
        to: u8,
    },
    Detach {
        network: u8,
        container: u8,
    },
    Register {
        node: u8,
        underlay: u8,
    },
    SetStatus {
        node: u8,
        up: bool,
    },
    RemoveNode {
        node: u8,
    },
}

/// Mostly the prelude's fixed /29, so it fills up and empties often.
fn network() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(0u8), 2 => 0..4u8]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..4u8, prop::option::of((0..8u8, 27..=29u8)), any::<bool>(), any::<bool>())
            .prop_map(|(index, fixed, ipv6, ip_range)| Op::CreateNetwork { index, fixed, ipv6, ip_range }),
        1 => (0..4u8, prop::bool::weighted(0.3)).prop_map(|(index, force)| Op::RemoveNetwork { index, force }),
        1 => prop::bool::weighted(0.2).prop_map(|prune| if prune { Op::Prune } else { Op::Detach { network: 0, container: 0 } }),
        8 => (network(), 0..3u8, 0..16u8, prop::option::weighted(0.2, 0..20u8), prop::option::weighted(0.3, 8080..8084u16))
            .prop_map(|(network, node, container, static_last_octet, host_port)| Op::Attach { network, node, container, static_last_octet, host_port }),
        1 => (0..4u8, 0..5u8).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => (network(), 0..16u8, prop::option::weighted(0.8, 8080..8084u16))
            .prop_map(|(network, container, host_port)| Op::Publish { network, container, host_port }),
        1 => (0..4u8, any::<bool>(), 0..3u8, any::<bool>())
            .prop_map(|(index, internal, options, ipv6)| Op::Reshape { index, internal, options, ipv6 }),
        1 => (network(), 0..16u8, 0..16u8).prop_map(|(network, container, to)| Op::Update { network, container, to }),
        4 => (network(), 0..16u8).prop_map(|(network, container)| Op::Detach { network, container }),
        2 => (0..3u8, 0..4u8).prop_map(|(node, underlay)| Op::Register { node, underlay }),
        1 => (0..3u8, any::<bool>()).prop_map(|(node, up)| Op::SetStatus { node, up }),
        1 => (0..3u8, prop::bool::weighted(0.3)).prop_map(|(node, remove)| if remove { Op::RemoveNode { node } } else { Op::Register { node, underlay: 1 } }),
    ]
}

/// `HOST_PORT:80/tcp`, or nothing published.
fn to_port_80(host_port: Option<u16>) -> Vec<PublishedPort> {
    host_port
        .map(|host_port| PublishedPort {
            protocol: PortProtocol::Tcp,
            host_ip: None,
            host_port,
            container_port: 80,
        })
        .into_iter()
        .collect()
}

fn cramped_config() -> ClusterConfig {
    ClusterConfig {
        cluster_id: "prop".into(),
        ipv4_pools: vec![AddressPool::new("10.0.0.0/22".parse().unwrap(), 28).unwrap()],
        ipv6_pools: vec![AddressPool::new("fd00:aa::/120".parse().unwrap(), 124).unwrap()],
        vni_min: 100,
        vni_max: 107,
        ..ClusterConfig::default()
    }
}

fn command(op: &Op) -> Command {
    match op {
        Op::CreateNetwork { index, fixed, ipv6, ip_range } => {
            let subnet =
                fixed.map(|(block, prefix)| format!("172.16.{}.0/{prefix}", block * 2).parse().unwrap());
            Command::CreateNetwork(NetworkRequest {
                name: format!("n{index}"),
                ipv4: SubnetRequest {
                    subnet,
                    ip_range: (subnet.is_some() && *ip_range)
                        .then(|| format!("172.16.{}.8/29", fixed.map_or(0, |f| f.0 * 2)).parse().unwrap()),
                    ..SubnetRequest::default()
                },
                ipv6: ipv6.then(SubnetRequest::default),
                ..NetworkRequest::default()
            })
        }
        Op::RemoveNetwork { index, force } => {
            Command::RemoveNetwork { network: format!("n{index}"), force: *force }
        }
        Op::Prune => Command::PruneNetworks(PruneFilter::default()),
        Op::Attach { network, node, container, static_last_octet, host_port } => Command::create_endpoint(
            EndpointRequest {
                network: format!("n{network}"),
                node: format!("h{node}"),
                container_id: format!("c{container}"),
                container_name: format!("c{container}"),
                ipv4: static_last_octet.map(|o| Ipv4Addr::new(172, 16, 0, o)),
                ..EndpointRequest::default()
            },
            to_port_80(*host_port),
        ),
        Op::Rename { from, to } => {
            Command::RenameNetwork { network: format!("n{from}"), name: format!("n{to}") }
        }
        Op::Publish { network, container, host_port } => Command::PublishPorts {
            endpoint: EndpointRef::Container {
                network: format!("n{network}"),
                container_id: format!("c{container}"),
            },
            ports: to_port_80(*host_port),
        },
        Op::Reshape { index, internal, options, ipv6 } => {
            let (network, internal) = (format!("n{index}"), *internal);
            let options = match options {
                0 => BTreeMap::new(),
                1 => BTreeMap::from([("encrypted".to_string(), String::new())]),
                _ => {
                    BTreeMap::from([("com.docker.network.bridge.name".to_string(), "br-shared".to_string())])
                }
            };
            if *ipv6 {
                Command::ReshapeNetworkWithIpv6 {
                    network,
                    internal,
                    options,
                    ipv6: Some(SubnetRequest::default()),
                }
            } else {
                Command::ReshapeNetwork { network, internal, options }
            }
        }
        Op::Update { network, container, to } => Command::UpdateEndpoint {
            endpoint: EndpointRef::Container {
                network: format!("n{network}"),
                container_id: format!("c{container}"),
            },
            container_id: Some(format!("c{to}")),
            container_name: format!("c{to}"),
            aliases: vec![format!("a{to}")],
        },
        Op::Detach { network, container } => Command::RemoveEndpoint(EndpointRef::Container {
            network: format!("n{network}"),
            container_id: format!("c{container}"),
        }),
        Op::Register { node, underlay } => Command::RegisterNode(NodeRequest {
            name: format!("h{node}"),
            underlay: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 * node + underlay)),
            underlay_mtu: 1500,
            wireguard_public_key: None,
            wireguard_port: 0,
            labels: BTreeMap::new(),
            agent_version: String::new(),
            wireguard_backend: String::new(),
        }),
        Op::SetStatus { node, up } => Command::SetNodeStatus {
            name: format!("h{node}"),
            status: if *up { NodeStatus::Up } else { NodeStatus::Down },
        },
        Op::RemoveNode { node } => Command::RemoveNode { name: format!("h{node}") },
    }
}

/// Every sequence starts from three registered hosts and two networks (one fixed IPv4 /29,
/// one carved dual-stack), so the random operations mostly meet existing objects.
fn prelude() -> Vec<Op> {
    let mut ops: Vec<Op> = (0..3).map(|node| Op::Register { node, underlay: 0 }).collect();
    ops.push(Op::CreateNetwork { index: 0, fixed: Some((0, 29)), ipv6: false, ip_range: false });
    ops.push(Op::CreateNetwork { index: 1, fixed: None, ipv6: true, ip_range: false });
    ops
}

fn proposals(random: &[Op]) -> Vec<Proposal> {
    let ops: Vec<Op> = prelude().into_iter().chain(random.iter().cloned()).collect();
    ops.iter().enumerate().map(|(i, op)| Proposal { at_ms: 1_000 + i as u64, command: command(op) }).collect()
}

/// Every address of every endpoint is held once; every VNI once; subnets are disjoint.
fn check_no_double_holding(state: &State) -> Result<(), TestCaseError> {
    let mut addresses = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for e in state.endpoints() {
        prop_assert!(addresses.insert((e.network, IpAddr::V4(e.ipv4))), "IPv4 {} held twice", e.ipv4);
        if let Some(v6) = e.ipv6 {
            prop_assert!(addresses.insert((e.network, IpAddr::V6(v6))), "IPv6 {} held twice", v6);
        }
        prop_assert!(macs.insert((e.network, e.mac)), "MAC {} held twice", e.mac);
        let net = state.network(&e.network).expect("endpoint of a known network");
        prop_assert!(net.ipv4.subnet.contains(IpAddr::V4(e.ipv4)));
        prop_assert!(IpAddr::V4(e.ipv4) != net.ipv4.gateway);
    }
    let networks: Vec<_> = state.networks().collect();
    let vnis: BTreeSet<u32> = networks.iter().map(|n| n.vni).collect();
    prop_assert_eq!(vnis.len(), networks.len(), "a VNI is held twice");
    for (i, a) in networks.iter().enumerate() {
        for b in &networks[i + 1..] {
            prop_assert!(
                !a.ipv4.subnet.overlaps(&b.ipv4.subnet),
                "{} overlaps {}",
                a.ipv4.subnet,
                b.ipv4.subnet
            );
            if let (Some(x), Some(y)) = (&a.ipv6, &b.ipv6) {
                prop_assert!(!x.subnet.overlaps(&y.subnet));
            }
        }
    }
    let tunnels: BTreeSet<IpAddr> = state.nodes().map(|n| n.tunnel_address).collect();
    prop_assert_eq!(tunnels.len(), state.nodes().count(), "a tunnel address is held twice");
    state.check_invariants().map_err(|e| TestCaseError::fail(e.to_string()))
}

/// The lowest address of a network's dynamic range that no endpoint, gateway or aux address
/// holds, computed the slow way from the records alone.
fn expected_lowest_free(state: &State, network: &Id) -> Option<Ipv4Addr> {
    let net = state.network(network)?;
    let subnet = net.ipv4.subnet;
    let range = net.ipv4.ip_range.unwrap_or(subnet);
    let held: BTreeSet<IpAddr> = state
        .network_endpoints(network)
        .map(|e| IpAddr::V4(e.ipv4))
        .chain(std::iter::once(net.ipv4.gateway))
        .chain(net.ipv4.aux_addresses.values().copied())
        .collect();
    let first = u32::from(match range.addr() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => return None,
    });
    let size = 1u32 << (32 - range.prefix());
    (first..first + size)
        .map(Ipv4Addr::from)
        .filter(|a| {
            let v = u32::from(*a);
            let net_first = u32::from(match subnet.addr() {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!(),
            });
            v != net_first && v != net_first + (1u32 << (32 - subnet.prefix())) - 1
        })
        .find(|a| !held.contains(&IpAddr::V4(*a)))
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn nothing_is_held_twice_and_reuse_is_lowest_free(ops in prop::collection::vec(op(), 1..80)) {
        let mut state = State::new(cramped_config()).unwrap();
        for proposal in proposals(&ops) {
            let expected = match &proposal.command {
                Command::CreateEndpoint(req) if req.ipv4.is_none() => state
                    .resolve_network(&req.network)
                    .ok()
                    .map(|n| n.id)
                    .map(|id| expected_lowest_free(&state, &id)),
                _ => None,
            };
            let before = state.clone();
            match state.apply(&proposal) {
                Ok(applied) => {
                    prop_assert_eq!(applied.revision, state.revision());
                    prop_assert!(applied.events.iter().all(|e| e.revision == applied.revision));
                    if let (Response::Endpoint(e), Some(expected)) = (&applied.response, expected) {
                        prop_assert_eq!(Some(e.ipv4), expected, "not the lowest free address");
                    }
                }
                Err(err) => {
                    prop_assert_eq!(&state, &before, "refused command changed the state: {}", err);
                    if let (Command::CreateEndpoint(_), Some(Some(free))) = (&proposal.command, expected) {
                        prop_assert!(
                            !(err.kind() == weft_core::ErrorKind::Exhausted && err.message().contains("IPv4")),
                            "IPv4 exhausted while {} was free", free
                        );
                    }
                }
            }
            check_no_double_holding(&state)?;
        }
    }

    #[test]
    fn replicas_fed_the_same_log_are_byte_identical(ops in prop::collection::vec(op(), 1..80)) {
        let mut a = State::new(cramped_config()).unwrap();
        let mut b = State::new(cramped_config()).unwrap();
        for proposal in proposals(&ops) {
            let ra = a.apply(&proposal);
            let rb = b.apply(&proposal);
            prop_assert_eq!(ra, rb);
        }
        prop_assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn restore_then_continue_matches_never_stopping(
        ops in prop::collection::vec(op(), 2..80),
        cut in any::<prop::sample::Index>(),
    ) {
        let all = proposals(&ops);
        let cut = cut.index(all.len());
        let mut original = State::new(cramped_config()).unwrap();
        for p in &all[..cut] {
            let _ = original.apply(p);
        }
        let bytes = original.snapshot();
        let mut restored = State::restore(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&restored, &original);
        prop_assert_eq!(restored.snapshot(), bytes);
        for p in &all[cut..] {
            prop_assert_eq!(original.apply(p), restored.apply(p));
        }
        prop_assert_eq!(original.snapshot(), restored.snapshot());
    }
}

/// Guards the properties above against going vacuous: the generator must reach successes and
/// every interesting refusal (exhaustion, conflicts, duplicates), not only "not found".
#[test]
fn the_generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..300 {
        let ops = prop::collection::vec(op(), 1..80).new_tree(&mut runner).unwrap().current();
        let mut state = State::new(cramped_config()).unwrap();
        for (op, proposal) in prelude().iter().chain(ops.iter()).zip(proposals(&ops)) {
            let name = format!("{op:?}").split([' ', '{']).next().unwrap_or_default().to_string();
            let outcome = match state.apply(&proposal) {
                Ok(_) => name,
                Err(e) => format!("{name} {:?}", e.kind()),
            };
            *seen.entry(outcome).or_default() += 1;
        }
    }
    for outcome in [
        "Attach",
        "Attach Exhausted",
        "Attach AlreadyExists",
        "Attach Invalid",
        "Detach",
        "CreateNetwork",
        "CreateNetwork Conflict",
        "RemoveNetwork",
        "RemoveNetwork Conflict",
        "Prune",
        "RemoveNode",
        "SetStatus",
    ] {
        assert!(seen.get(outcome).copied().unwrap_or(0) >= 10, "{outcome} too rare: {seen:?}");
    }
}
