use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use super::{Op, plan};
use crate::model::{
    Desired, Handover, IfAddr, Link, LinkKind, LocalEndpoint, Mac, NetworkDevices, Observed, RemoteEndpoint,
    endpoint_alias, network_alias,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(bridge: &str, vni: u32) -> NetworkDevices {
    NetworkDevices {
        network_id: format!("id-{bridge}"),
        bridge: bridge.into(),
        vxlan: format!("{bridge}x"),
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

fn link(name: &str, kind: LinkKind, alias: Option<String>, master: Option<&str>, mtu: u32) -> Link {
    Link {
        index: 0,
        name: name.into(),
        kind,
        alias,
        master: master.map(Into::into),
        mtu,
        up: true,
        mac: None,
        addresses: BTreeSet::new(),
    }
}

/// What a dump shows once `desired` has been carried out.
fn applied(desired: &Desired) -> Observed {
    let mut observed = Observed::default();
    for n in desired.networks.values() {
        let mut bridge = link(&n.bridge, LinkKind::Bridge, Some(network_alias(&n.network_id)), None, n.mtu);
        bridge.mac = Some(n.gateway_mac);
        bridge.addresses = n.gateway_addresses.clone();
        bridge.addresses.insert(IfAddr { ip: ip("fe80::42:aff:fe00:1"), prefix: 64 });
        observed.links.insert(n.bridge.clone(), bridge);
        let kind = LinkKind::Vxlan {
            vni: n.vni,
            port: n.port,
            local: Some(n.local_vtep),
            learning: false,
            proxy: true,
        };
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
    let bridge = position(&|op| matches!(op, Op::CreateBridge { name, .. } if name == "weft4096"));
    let address = position(&|op| matches!(op, Op::AddAddress { link, .. } if link == "weft4096"));
    let vxlan = position(
        &|op| matches!(op, Op::CreateVxlan { name, bridge, .. } if name == "weft4096x" && bridge == "weft4096"),
    );
    let plug = position(&|op| matches!(op, Op::Plug { bridge, .. } if bridge == "weft4096"));
    let fdb = position(&|op| matches!(op, Op::SetFdb { vxlan, .. } if vxlan == "weft4096x"));
    let neighbour = position(&|op| matches!(op, Op::SetNeighbour { vxlan, .. } if vxlan == "weft4096x"));
    assert!(bridge < address && address < vxlan && vxlan < plug && plug < fdb && fdb < neighbour, "{ops:#?}");
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
                let bridge = o.links.get_mut("mybridge").unwrap();
                bridge.up = false;
                bridge.mtu = 1500;
            },
            vec![Op::SetLink { name: "mybridge".into(), mtu: 1450, master: None }],
        ),
        (
            "a VXLAN device taken off its bridge goes back",
            |o| o.links.get_mut("weft4096x").unwrap().master = None,
            vec![Op::SetLink { name: "weft4096x".into(), mtu: 1450, master: Some("weft4096".into()) }],
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
                    address: IfAddr { ip: ip("10.9.9.9"), prefix: 8 },
                },
            ],
        ),
        (
            "a veth deleted by hand is plugged again",
            |o| {
                o.links.remove("weftp1");
            },
            vec![Op::Plug { bridge: "weft4096".into(), endpoint: local("weftp1", 2) }],
        ),
        (
            "a stale veth of a removed endpoint is deleted",
            |o| {
                let alias = Some(endpoint_alias("gone"));
                o.links
                    .insert("weftp9".into(), link("weftp9", LinkKind::Veth, alias, Some("weft4096"), 1450));
            },
            vec![Op::DeleteLink { name: "weftp9".into() }],
        ),
        (
            "links weft did not make are never touched",
            |o| {
                o.links.insert("eth0".into(), link("eth0", LinkKind::Veth, None, None, 1500));
                o.links.insert("docker0".into(), link("docker0", LinkKind::Bridge, None, None, 1500));
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
    assert_eq!(ops[0], Op::DeleteLink { name: "weft4096x".into() });
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
    without_b.networks.remove("mybridge");
    assert_eq!(
        plan(&without_b, &observed),
        vec![
            Op::DeleteLink { name: "weftp2".into() },
            Op::DeleteLink { name: "mybridgex".into() },
            Op::DeleteLink { name: "mybridge".into() },
        ]
    );
    assert_eq!(
        plan(&Desired::default(), &observed).len(),
        6,
        "three veths/devices per network, two networks"
    );
}

#[test]
fn a_name_taken_by_something_else_is_reported_and_left_alone() {
    let d = populated();
    let mut observed = applied(&d);
    observed.links.insert("mybridge".into(), link("mybridge", LinkKind::Bridge, None, None, 1500));
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
    for (name, alias) in [
        ("weftp7", None),
        ("weftp7c", None),
        ("weftp1", Some(endpoint_alias("ep-weftp1"))),
        ("weftp1c", None),
    ] {
        observed.links.insert(name.into(), link(name, LinkKind::Veth, alias, None, 1450));
    }
    let ops = plan(&desired(vec![want.clone()]), &observed);
    assert!(ops.contains(&Op::DeleteLink { name: "weftp1".into() }), "{ops:?}");
    assert!(ops.contains(&Op::Plug { bridge: "weft4096".into(), endpoint: local("weftp1", 2) }), "{ops:?}");
    assert!(ops.contains(&Op::DeleteLink { name: "weftp7".into() }), "{ops:?}");
    for end in ["weftp7c", "weftp1c"] {
        assert!(!ops.contains(&Op::DeleteLink { name: end.into() }), "{end} goes with its pair: {ops:?}");
    }
    // Somebody else's veth with another name is still left alone.
    let mut theirs = Observed::default();
    theirs.links.insert("veth0".into(), link("veth0", LinkKind::Veth, None, None, 1500));
    assert!(plan(&Desired::default(), &theirs).is_empty());
}

/// Docker's endpoints: the pair is made with the container end left in the host namespace for
/// the runtime; nothing is redone while it waits or after the runtime took it, and both ends go
/// together.
#[test]
fn a_runtime_takes_the_container_end_and_weft_keeps_the_host_end() {
    let mut desired = desired(vec![net("wbr1", 100)]);
    let endpoint = LocalEndpoint { handover: Handover::Runtime, ..local("weftp7", 7) };
    desired.networks.get_mut("wbr1").unwrap().local.insert("weftp7".into(), endpoint);
    let mut observed = Observed::default();
    let ops = plan(&desired, &observed);
    assert!(
        ops.iter().any(|op| matches!(op, Op::Plug { endpoint, .. } if endpoint.host_veth == "weftp7")),
        "{ops:?}"
    );
    assert!(crate::simulated::apply_all(&mut observed, &ops).is_empty());
    let waiting = &observed.links["weftp7c"];
    assert_eq!((waiting.mac, waiting.master.as_deref()), (Some(Mac([2, 0x42, 10, 0, 0, 7])), None));
    assert_eq!(plan(&desired, &observed), vec![], "waiting for the runtime is not half made");
    // The runtime moves it into the container.
    observed.links.remove("weftp7c");
    assert_eq!(plan(&desired, &observed), vec![]);
    // Gone from the desired state, waiting or not: the host end goes, taking its pair along.
    let mut waiting = observed.clone();
    crate::simulated::apply_all(&mut waiting, &plan(&desired, &Observed::default()));
    desired.networks.get_mut("wbr1").unwrap().local.clear();
    for observed in [&observed, &waiting] {
        let ops = plan(&desired, observed);
        let deleted: Vec<&Op> = ops.iter().filter(|op| matches!(op, Op::DeleteLink { .. })).collect();
        assert_eq!(deleted, vec![&Op::DeleteLink { name: "weftp7".into() }], "{ops:?}");
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
    assert_eq!(plan(&desired(vec![]), &host), vec![Op::DeleteLink { name: "weft-dns".into() }]);
}

#[test]
fn a_service_link_name_taken_by_someone_else_is_left_alone() {
    let mut host = Observed::default();
    host.links.insert("weft-dns".into(), link("weft-dns", LinkKind::Bridge, None, None, 1500));
    let ops = plan(&with_dns(desired(vec![])), &host);
    assert!(matches!(ops.as_slice(), [Op::Conflict { name, .. }] if name == "weft-dns"), "{ops:?}");
}
