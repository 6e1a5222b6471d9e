use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use super::{Op, plan};
use crate::model::{
    Desired, Handover, IfAddr, Link, LinkKind, LocalEndpoint, Mac, NetworkDevices, Observed, Place,
    RemoteEndpoint, endpoint_alias, gateway_alias, gateway_port_name, network_alias, switch_bridge_name,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A network whose gateway (the name users know it by on the host) is `name`.
fn net(name: &str, vni: u32) -> NetworkDevices {
    NetworkDevices {
        network_id: format!("id-{name}"),
        gateway: name.into(),
        gateway_port: gateway_port_name(vni),
        bridge: switch_bridge_name(vni),
        vxlan: format!("{name}x"),
        vni,
        port: 4789,
        local_vtep: ip("192.0.2.1"),
        mtu: 1450,
        gateway_mac: Mac([2, 0x42, 10, 0, 0, 1]),
        gateway_addresses: BTreeSet::from([IfAddr { ip: ip("10.0.0.1"), prefix: 24 }]),
        local: BTreeMap::new(),
        remote: BTreeMap::new(),
    }
}

fn local(veth: &str, last: u8) -> LocalEndpoint {
    LocalEndpoint {
        endpoint_id: format!("ep-{veth}"),
        host_veth: veth.into(),
        netns: PathBuf::from("/run/netns/c"),
        ifname: "eth0".into(),
        mac: Mac([2, 0x42, 10, 0, 0, last]),
        addresses: vec![IfAddr { ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), prefix: 24 }],
        default_routes: vec![ip("10.0.0.1")],
        mtu: 1450,
        handover: Handover::Weft,
    }
}

fn remote(last: u8, vtep: &str) -> RemoteEndpoint {
    RemoteEndpoint {
        mac: Mac([2, 0x42, 10, 0, 0, last]),
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))],
        vtep: ip(vtep),
    }
}

fn desired(nets: Vec<NetworkDevices>) -> Desired {
    Desired { networks: nets.into_iter().map(|n| (n.bridge.clone(), n)).collect(), services: None }
}

/// A link in the switch namespace.
fn link(name: &str, kind: LinkKind, alias: Option<String>, master: Option<&str>, mtu: u32) -> Link {
    Link {
        index: 0,
        name: name.into(),
        place: Place::Switch,
        kind,
        alias,
        master: master.map(Into::into),
        mtu,
        up: true,
        mac: None,
        addresses: BTreeSet::new(),
    }
}

/// The kind of link weft makes a network's VXLAN device.
fn vxlan_kind(n: &NetworkDevices) -> LinkKind {
    LinkKind::Vxlan { vni: n.vni, port: n.port, local: Some(n.local_vtep), learning: false, proxy: true }
}

/// A link in the host namespace.
fn host_link(name: &str, kind: LinkKind, alias: Option<String>, mtu: u32) -> Link {
    Link { place: Place::Host, ..link(name, kind, alias, None, mtu) }
}

/// What a dump shows once `desired` has been carried out.
fn applied(desired: &Desired) -> Observed {
    let mut observed = Observed::default();
    for n in desired.networks.values() {
        let bridge = link(&n.bridge, LinkKind::Bridge, Some(network_alias(&n.network_id)), None, n.mtu);
        observed.links.insert(n.bridge.clone(), bridge);
        let alias = Some(gateway_alias(&n.network_id));
        let mut gateway = host_link(&n.gateway, LinkKind::Veth, alias.clone(), n.mtu);
        gateway.mac = Some(n.gateway_mac);
        gateway.addresses = n.gateway_addresses.clone();
        gateway.addresses.insert(IfAddr { ip: ip("fe80::42:aff:fe00:1"), prefix: 64 });
        observed.links.insert(n.gateway.clone(), gateway);
        observed.links.insert(
            n.gateway_port.clone(),
            link(&n.gateway_port, LinkKind::Veth, alias, Some(&n.bridge), n.mtu),
        );
        let kind = vxlan_kind(n);
        observed.links.insert(
            n.vxlan.clone(),
            link(&n.vxlan, kind, Some(network_alias(&n.network_id)), Some(&n.bridge), n.mtu),
        );
        for e in n.local.values() {
            observed.links.insert(
                e.host_veth.clone(),
                link(
                    &e.host_veth,
                    LinkKind::Veth,
                    Some(endpoint_alias(&e.endpoint_id)),
                    Some(&n.bridge),
                    e.mtu,
                ),
            );
        }
        observed.fdb.insert(n.vxlan.clone(), n.remote.values().map(|r| (r.mac, r.vtep)).collect());
        observed.neighbours.insert(
            n.vxlan.clone(),
            n.remote.values().flat_map(|r| r.ips.iter().map(|ip| (*ip, r.mac))).collect(),
        );
    }
    observed
}

fn populated() -> Desired {
    let mut a = net("weft4096", 4096);
    a.local.insert("weftp1".into(), local("weftp1", 2));
    a.remote.insert(remote(3, "192.0.2.2").mac, remote(3, "192.0.2.2"));
    a.remote.insert(remote(4, "192.0.2.3").mac, remote(4, "192.0.2.3"));
    let mut b = net("mybridge", 4097);
    b.local.insert("weftp2".into(), local("weftp2", 5));
    desired(vec![a, b])
}

#[test]
fn a_host_that_matches_needs_nothing() {
    let d = populated();
    assert_eq!(plan(&d, &applied(&d)), vec![]);
    assert_eq!(plan(&Desired::default(), &Observed::default()), vec![]);
}

#[test]
fn an_empty_host_gets_devices_before_what_hangs_on_them() {
    let d = populated();
    let ops = plan(&d, &Observed::default());
    let position = |want: &dyn Fn(&Op) -> bool| ops.iter().position(want).unwrap();
    let bridge = position(&|op| matches!(op, Op::CreateBridge { name, .. } if name == "weftb4096"));
    let gateway = position(
        &|op| matches!(op, Op::CreateGateway { name, port, bridge, mac, .. } if name == "weft4096" && port == "weftpg4096" && bridge == "weftb4096" && *mac == Mac([2, 0x42, 10, 0, 0, 1])),
    );
    let address = position(&|op| matches!(op, Op::AddAddress { link, .. } if link == "weft4096"));
    let vxlan = position(
        &|op| matches!(op, Op::CreateVxlan { name, bridge, .. } if name == "weft4096x" && bridge == "weftb4096"),
    );
    let plug = position(&|op| matches!(op, Op::Plug { bridge, .. } if bridge == "weftb4096"));
    let fdb = position(&|op| matches!(op, Op::SetFdb { vxlan, .. } if vxlan == "weft4096x"));
    let neighbour = position(&|op| matches!(op, Op::SetNeighbour { vxlan, .. } if vxlan == "weft4096x"));
    let order = [bridge, gateway, address, vxlan, plug, fdb, neighbour];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{ops:#?}");
    assert_eq!(ops.iter().filter(|op| matches!(op, Op::SetFdb { .. })).count(), 2);
    assert_eq!(ops.iter().filter(|op| matches!(op, Op::Plug { .. })).count(), 2);
    assert!(!ops.iter().any(|op| matches!(op, Op::DeleteLink { .. } | Op::Conflict { .. })));
}

#[test]
fn drift_is_repaired_one_entry_at_a_time() {
    let d = populated();
    type Case = (&'static str, fn(&mut Observed), Vec<Op>);
    let cases: Vec<Case> = vec![
        (
            "an FDB entry deleted by hand comes back",
            |o| {
                o.fdb.get_mut("weft4096x").unwrap().remove(&Mac([2, 0x42, 10, 0, 0, 3]));
            },
            vec![Op::SetFdb {
                vxlan: "weft4096x".into(),
                mac: Mac([2, 0x42, 10, 0, 0, 3]),
                vtep: ip("192.0.2.2"),
            }],
        ),
        (
            "an FDB entry pointing at the wrong host is replaced",
            |o| {
                o.fdb.get_mut("weft4096x").unwrap().insert(Mac([2, 0x42, 10, 0, 0, 3]), ip("192.0.2.9"));
            },
            vec![Op::SetFdb {
                vxlan: "weft4096x".into(),
                mac: Mac([2, 0x42, 10, 0, 0, 3]),
                vtep: ip("192.0.2.2"),
            }],
        ),
        (
            "a neighbour entry deleted by hand comes back",
            |o| {
                o.neighbours.get_mut("weft4096x").unwrap().remove(&ip("10.0.0.4"));
            },
            vec![Op::SetNeighbour {
                vxlan: "weft4096x".into(),
                ip: ip("10.0.0.4"),
                mac: Mac([2, 0x42, 10, 0, 0, 4]),
            }],
        ),
        (
            "entries nobody wants go",
            |o| {
                o.fdb.get_mut("weft4096x").unwrap().insert(Mac([2, 0x42, 10, 0, 0, 9]), ip("192.0.2.2"));
                o.neighbours
                    .get_mut("weft4096x")
                    .unwrap()
                    .insert(ip("10.0.0.9"), Mac([2, 0x42, 10, 0, 0, 9]));
            },
            vec![
                Op::DeleteFdb {
                    vxlan: "weft4096x".into(),
                    mac: Mac([2, 0x42, 10, 0, 0, 9]),
                    vtep: ip("192.0.2.2"),
                },
                Op::DeleteNeighbour { vxlan: "weft4096x".into(), ip: ip("10.0.0.9") },
            ],
        ),
        (
            "a bridge brought down or given another MTU is set right",
            |o| {
                let bridge = o.links.get_mut("weftb4097").unwrap();
                bridge.up = false;
                bridge.mtu = 1500;
            },
            vec![Op::SetLink { name: "weftb4097".into(), place: Place::Switch, mtu: 1450, master: None }],
        ),
        (
            "a VXLAN device taken off its bridge goes back",
            |o| o.links.get_mut("weft4096x").unwrap().master = None,
            vec![Op::SetLink {
                name: "weft4096x".into(),
                place: Place::Switch,
                mtu: 1450,
                master: Some("weftb4096".into()),
            }],
        ),
        (
            "a gateway brought down comes up; its port taken off the bridge goes back",
            |o| {
                o.links.get_mut("mybridge").unwrap().up = false;
                o.links.get_mut("weftpg4097").unwrap().master = None;
            },
            vec![
                Op::SetLink { name: "mybridge".into(), place: Place::Host, mtu: 1450, master: None },
                Op::SetLink {
                    name: "weftpg4097".into(),
                    place: Place::Switch,
                    mtu: 1450,
                    master: Some("weftb4097".into()),
                },
            ],
        ),
        (
            "a gateway address removed by hand comes back; a stray one goes",
            |o| {
                let addresses = &mut o.links.get_mut("weft4096").unwrap().addresses;
                addresses.remove(&IfAddr { ip: ip("10.0.0.1"), prefix: 24 });
                addresses.insert(IfAddr { ip: ip("10.9.9.9"), prefix: 8 });
            },
            vec![
                Op::AddAddress {
                    link: "weft4096".into(),
                    address: IfAddr { ip: ip("10.0.0.1"), prefix: 24 },
                },
                Op::DeleteAddress {
                    link: "weft4096".into(),
                    place: Place::Host,
                    address: IfAddr { ip: ip("10.9.9.9"), prefix: 8 },
                },
            ],
        ),
        (
            "a veth deleted by hand is plugged again",
            |o| {
                o.links.remove("weftp1");
            },
            vec![Op::Plug { bridge: "weftb4096".into(), endpoint: local("weftp1", 2) }],
        ),
        (
            "a stale veth of a removed endpoint is deleted",
            |o| {
                let alias = Some(endpoint_alias("gone"));
                o.links
                    .insert("weftp9".into(), link("weftp9", LinkKind::Veth, alias, Some("weftb4096"), 1450));
            },
            vec![Op::DeleteLink { name: "weftp9".into(), place: Place::Switch }],
        ),
        (
            "links weft did not make are never touched",
            |o| {
                o.links.insert("eth0".into(), host_link("eth0", LinkKind::Veth, None, 1500));
                o.links.insert("docker0".into(), host_link("docker0", LinkKind::Bridge, None, 1500));
            },
            vec![],
        ),
    ];
    for (case, drift, expected) in cases {
        let mut observed = applied(&d);
        drift(&mut observed);
        assert_eq!(plan(&d, &observed), expected, "{case}");
    }
}

#[test]
fn a_vxlan_device_with_the_wrong_settings_is_replaced_and_refilled() {
    let d = populated();
    let mut observed = applied(&d);
    let vxlan = observed.links.get_mut("weft4096x").unwrap();
    vxlan.kind =
        LinkKind::Vxlan { vni: 4096, port: 4789, local: Some(ip("192.0.2.1")), learning: true, proxy: true };
    let ops = plan(&d, &observed);
    assert_eq!(ops[0], Op::DeleteLink { name: "weft4096x".into(), place: Place::Switch });
    assert!(matches!(&ops[1], Op::CreateVxlan { name, .. } if name == "weft4096x"));
    // Its entries went with it, so all of them are written again.
    assert_eq!(ops.iter().filter(|op| matches!(op, Op::SetFdb { .. })).count(), 2);
    assert_eq!(ops.iter().filter(|op| matches!(op, Op::SetNeighbour { .. })).count(), 2);
}

#[test]
fn the_last_endpoint_leaving_takes_the_network_devices_with_it() {
    let d = populated();
    let observed = applied(&d);
    let mut without_b = d.clone();
    without_b.networks.remove("weftb4097");
    assert_eq!(
        plan(&without_b, &observed),
        vec![
            // The gateway's port goes with it.
            Op::DeleteLink { name: "mybridge".into(), place: Place::Host },
            Op::DeleteLink { name: "weftp2".into(), place: Place::Switch },
            Op::DeleteLink { name: "mybridgex".into(), place: Place::Switch },
            Op::DeleteLink { name: "weftb4097".into(), place: Place::Switch },
        ]
    );
    let mut emptied = observed.clone();
    let everything = plan(&Desired::default(), &observed);
    assert_eq!(
        everything.len(),
        8,
        "a gateway, a veth, a VXLAN device, a bridge per network: {everything:#?}"
    );
    assert!(crate::simulated::apply_all(&mut emptied, &everything).is_empty(), "{everything:#?}");
    assert!(emptied.links.is_empty(), "{emptied:#?}");
}

#[test]
fn a_name_taken_by_something_else_is_reported_and_left_alone() {
    let d = populated();
    let mut observed = applied(&d);
    observed.links.insert("mybridge".into(), host_link("mybridge", LinkKind::Bridge, None, 1500));
    let ops = plan(&d, &observed);
    assert!(matches!(&ops[..], [Op::Conflict { name, .. }] if name == "mybridge"), "{ops:#?}");
}

/// An agent killed while plugging leaves a veth pair in the host namespace, unlabelled (the
/// kernel takes no alias at creation) or labelled with its container end not handed over.
/// Weft recognises its own names: an unwanted half-made pair is removed through its host end,
/// a wanted one is replaced.
#[test]
fn half_made_veth_pairs_are_removed_or_replugged() {
    let mut want = net("weft4096", 4096);
    want.local.insert("weftp1".into(), local("weftp1", 2));
    let mut observed = Observed::default();
    for (name, alias, place) in [
        ("weftp7", None, Place::Switch),
        ("weftp7c", None, Place::Host),
        ("weftp1", Some(endpoint_alias("ep-weftp1")), Place::Switch),
        ("weftp1c", None, Place::Host),
    ] {
        observed.links.insert(name.into(), Link { place, ..link(name, LinkKind::Veth, alias, None, 1450) });
    }
    let ops = plan(&desired(vec![want.clone()]), &observed);
    assert!(ops.contains(&Op::DeleteLink { name: "weftp1".into(), place: Place::Switch }), "{ops:?}");
    assert!(ops.contains(&Op::Plug { bridge: "weftb4096".into(), endpoint: local("weftp1", 2) }), "{ops:?}");
    assert!(ops.contains(&Op::DeleteLink { name: "weftp7".into(), place: Place::Switch }), "{ops:?}");
    for end in ["weftp7c", "weftp1c"] {
        assert!(
            !ops.iter().any(|op| matches!(op, Op::DeleteLink { name, .. } if name == end)),
            "{end} goes with its pair: {ops:?}"
        );
    }
    // Somebody else's veth with another name is still left alone.
    let mut theirs = Observed::default();
    theirs.links.insert("veth0".into(), host_link("veth0", LinkKind::Veth, None, 1500));
    assert!(plan(&Desired::default(), &theirs).is_empty());
}

/// Docker's endpoints: the pair is made with the container end left in the host namespace for
/// the runtime; nothing is redone while it waits or after the runtime took it, and both ends go
/// together.
#[test]
fn a_runtime_takes_the_container_end_and_weft_keeps_the_host_end() {
    let mut desired = desired(vec![net("wbr1", 100)]);
    let endpoint = LocalEndpoint { handover: Handover::Runtime, ..local("weftp7", 7) };
    desired.networks.get_mut("weftb100").unwrap().local.insert("weftp7".into(), endpoint);
    let mut observed = Observed::default();
    let ops = plan(&desired, &observed);
    assert!(
        ops.iter().any(|op| matches!(op, Op::Plug { endpoint, .. } if endpoint.host_veth == "weftp7")),
        "{ops:?}"
    );
    assert!(crate::simulated::apply_all(&mut observed, &ops).is_empty());
    let waiting = &observed.links["weftp7c"];
    assert_eq!((waiting.mac, waiting.master.as_deref()), (Some(Mac([2, 0x42, 10, 0, 0, 7])), None));
    assert_eq!((waiting.place, observed.links["weftp7"].place), (Place::Host, Place::Switch));
    assert_eq!(plan(&desired, &observed), vec![], "waiting for the runtime is not half made");
    // The runtime moves it into the container.
    observed.links.remove("weftp7c");
    assert_eq!(plan(&desired, &observed), vec![]);
    // Gone from the desired state, waiting or not: the host end goes, taking its pair along.
    let mut waiting = observed.clone();
    crate::simulated::apply_all(&mut waiting, &plan(&desired, &Observed::default()));
    desired.networks.get_mut("weftb100").unwrap().local.clear();
    for observed in [&observed, &waiting] {
        let ops = plan(&desired, observed);
        let deleted: Vec<&Op> = ops.iter().filter(|op| matches!(op, Op::DeleteLink { .. })).collect();
        assert_eq!(deleted, vec![&Op::DeleteLink { name: "weftp7".into(), place: Place::Switch }], "{ops:?}");
    }
}

fn with_dns(mut desired: Desired) -> Desired {
    desired.services = Some(crate::model::ServiceLink {
        name: "weft-dns".into(),
        addresses: BTreeSet::from([IfAddr { ip: ip("169.254.53.53"), prefix: 32 }]),
    });
    desired
}

#[test]
fn the_service_link_is_made_kept_repaired_and_removed_with_weft() {
    let want = with_dns(desired(vec![]));
    let mut host = Observed::default();
    let ops = plan(&want, &host);
    assert_eq!(
        ops,
        vec![
            Op::CreateServiceLink { name: "weft-dns".into(), alias: crate::model::service_alias() },
            Op::AddAddress {
                link: "weft-dns".into(),
                address: IfAddr { ip: ip("169.254.53.53"), prefix: 32 }
            },
        ]
    );
    assert!(crate::simulated::apply_all(&mut host, &ops).is_empty());
    assert_eq!(plan(&want, &host), vec![], "a host that has it needs nothing");

    // Someone took the address off and the link down: both come back, nothing else moves.
    let link = host.links.get_mut("weft-dns").unwrap();
    link.addresses.clear();
    link.up = false;
    let ops = plan(&want, &host);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(matches!(&ops[0], Op::SetLink { name, .. } if name == "weft-dns"), "{ops:?}");
    assert!(matches!(&ops[1], Op::AddAddress { link, .. } if link == "weft-dns"), "{ops:?}");
    assert!(crate::simulated::apply_all(&mut host, &ops).is_empty());

    // Without the Docker plugin (or at uninstall) it goes, like every link weft made.
    assert_eq!(
        plan(&desired(vec![]), &host),
        vec![Op::DeleteLink { name: "weft-dns".into(), place: Place::Host }]
    );
}

#[test]
fn a_service_link_name_taken_by_someone_else_is_left_alone() {
    let mut host = Observed::default();
    host.links.insert("weft-dns".into(), host_link("weft-dns", LinkKind::Bridge, None, 1500));
    let ops = plan(&with_dns(desired(vec![])), &host);
    assert!(matches!(ops.as_slice(), [Op::Conflict { name, .. }] if name == "weft-dns"), "{ops:?}");
}

/// A gateway deleted by hand takes its port along (one veth pair); both come back whole,
/// with the gateway's MAC and addresses. A gateway with another MAC is made again.
#[test]
fn a_gateway_pair_is_made_again_whole() {
    let d = populated();
    let mut observed = applied(&d);
    crate::simulated::apply(&mut observed, &Op::DeleteLink { name: "weft4096".into(), place: Place::Host })
        .unwrap();
    assert!(!observed.links.contains_key("weftpg4096"), "the port went with its gateway");
    let ops = plan(&d, &observed);
    assert!(
        matches!(&ops[0], Op::CreateGateway { name, port, .. } if name == "weft4096" && port == "weftpg4096"),
        "{ops:#?}"
    );
    assert!(matches!(&ops[1], Op::AddAddress { link, .. } if link == "weft4096"), "{ops:#?}");
    assert_eq!(ops.len(), 2, "{ops:#?}");
    assert!(crate::simulated::apply_all(&mut observed, &ops).is_empty());
    assert_eq!(plan(&d, &observed), vec![]);

    observed.links.get_mut("mybridge").unwrap().mac = Some(Mac([2, 0, 0, 0, 0, 9]));
    let ops = plan(&d, &observed);
    assert_eq!(ops[0], Op::DeleteLink { name: "mybridge".into(), place: Place::Host }, "{ops:#?}");
    assert!(!ops.contains(&Op::DeleteLink { name: "weftpg4097".into(), place: Place::Switch }), "{ops:#?}");
    assert!(crate::simulated::apply_all(&mut observed, &ops).is_empty(), "{ops:#?}");
    assert_eq!(plan(&d, &observed), vec![]);
}

/// A host an agent from before the switch namespace programmed: the bridge (named as the
/// network), VXLAN device and veths in the host namespace. They are removed there and made
/// again in the switch, in one pass, and nothing is left to do.
#[test]
fn devices_of_an_agent_from_before_the_switch_move_into_it() {
    let d = populated();
    let mut observed = Observed::default();
    for n in d.networks.values() {
        let alias = Some(network_alias(&n.network_id));
        let mut bridge = host_link(&n.gateway, LinkKind::Bridge, alias.clone(), n.mtu);
        bridge.mac = Some(n.gateway_mac);
        bridge.addresses = n.gateway_addresses.clone();
        observed.links.insert(n.gateway.clone(), bridge);
        let kind = vxlan_kind(n);
        let vxlan = Link { master: Some(n.gateway.clone()), ..host_link(&n.vxlan, kind, alias, n.mtu) };
        observed.links.insert(n.vxlan.clone(), vxlan);
        for e in n.local.values() {
            let veth = host_link(&e.host_veth, LinkKind::Veth, Some(endpoint_alias(&e.endpoint_id)), e.mtu);
            observed.links.insert(e.host_veth.clone(), Link { master: Some(n.gateway.clone()), ..veth });
        }
    }
    let ops = plan(&d, &observed);
    let removed: Vec<&Op> =
        ops.iter().filter(|op| matches!(op, Op::DeleteLink { place: Place::Host, .. })).collect();
    assert_eq!(removed.len(), 6, "{ops:#?}");
    assert!(crate::simulated::apply_all(&mut observed, &ops).is_empty(), "{ops:#?}");
    assert_eq!(plan(&d, &observed), vec![]);
    let in_host: Vec<(&str, &LinkKind)> = observed
        .links
        .values()
        .filter(|l| l.place == Place::Host)
        .map(|l| (l.name.as_str(), &l.kind))
        .collect();
    assert_eq!(
        in_host,
        vec![("mybridge", &LinkKind::Veth), ("weft4096", &LinkKind::Veth)],
        "only the gateways"
    );
}

/// weft's link left in the host namespace under a name its switch uses now goes.
#[test]
fn a_misplaced_link_goes_first() {
    let d = populated();
    let mut observed = applied(&d);
    let stray = host_link("weft4096x", LinkKind::Bridge, Some(network_alias("id-weft4096")), 1450);
    observed.misplaced.push(stray);
    let ops = plan(&d, &observed);
    assert_eq!(ops, vec![Op::DeleteLink { name: "weft4096x".into(), place: Place::Host }]);
    assert!(crate::simulated::apply_all(&mut observed, &ops).is_empty());
    assert!(observed.misplaced.is_empty() && observed.links.contains_key("weft4096x"));
}
