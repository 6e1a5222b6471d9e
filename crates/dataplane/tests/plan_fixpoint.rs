//! The planner reaches a fixed point: whatever a host holds (leftovers of another state,
//! drift, stale entries, foreign links), carrying out `plan(desired, observed)` and planning
//! again finds nothing left to do. The kernel here is `weft_dataplane::simulated`, so this
//! runs without root; `tests/kernel.rs` checks the same operations against the real kernel.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use proptest::prelude::*;
use weft_dataplane::model::{Link, LinkKind, Place};
use weft_dataplane::{
    Desired, Handover, IfAddr, LocalEndpoint, Mac, NetworkDevices, Observed, Op, RemoteEndpoint, plan,
    simulated,
};

/// One network as the generator describes it: which of three, its MTU, which of four local
/// containers and which of six remote ones (each behind one of three hosts) it has.
#[derive(Debug, Clone)]
struct NetSpec {
    which: u8,
    small_mtu: bool,
    locals: BTreeSet<u8>,
    remotes: BTreeMap<u8, u8>,
}

fn net_spec() -> impl Strategy<Value = NetSpec> {
    (
        0u8..3,
        any::<bool>(),
        prop::collection::btree_set(0u8..4, 0..4),
        prop::collection::btree_map(0u8..6, 0u8..3, 0..6),
    )
        .prop_map(|(which, small_mtu, locals, remotes)| NetSpec { which, small_mtu, locals, remotes })
}

fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Container `c`'s host veth on network `n`, named as weft names them.
fn veth(n: u8, c: u8) -> String {
    weft_dataplane::model::veth_name(u64::from(n) * 16 + u64::from(c) + 1)
}

fn desired(specs: &[NetSpec]) -> Desired {
    let mut networks = BTreeMap::new();
    for spec in specs {
        let n = spec.which;
        let bridge = weft_dataplane::model::switch_bridge_name(4096 + u32::from(n));
        let mtu = if spec.small_mtu { 1400 } else { 1450 };
        let local = spec
            .locals
            .iter()
            .map(|c| {
                let veth = veth(n, *c);
                let endpoint = LocalEndpoint {
                    endpoint_id: format!("ep{n}-{c}"),
                    host_veth: veth.clone(),
                    netns: PathBuf::from(format!("/run/netns/c{c}")),
                    ifname: "eth0".into(),
                    mac: Mac([2, 0x42, 10, n, 1, *c]),
                    addresses: vec![IfAddr { ip: ip4(10, n, 1, *c + 2), prefix: 24 }],
                    default_routes: vec![ip4(10, n, 0, 1)],
                    mtu,
                    // Odd containers are Docker's: their runtime takes the container end.
                    handover: if c % 2 == 1 { Handover::Runtime } else { Handover::Weft },
                };
                (veth, endpoint)
            })
            .collect();
        let remote = spec
            .remotes
            .iter()
            .map(|(c, host)| {
                let mac = Mac([2, 0x42, 10, n, 2, *c]);
                (
                    mac,
                    RemoteEndpoint { mac, ips: vec![ip4(10, n, 2, *c + 2)], vtep: ip4(192, 0, 2, host + 2) },
                )
            })
            .collect();
        networks.insert(
            bridge.clone(),
            NetworkDevices {
                network_id: format!("net{n}"),
                gateway: format!("wbr{n}"),
                gateway_port: weft_dataplane::model::gateway_port_name(4096 + u32::from(n)),
                bridge,
                vxlan: format!("wvx{n}"),
                vni: 4096 + u32::from(n),
                port: 4789,
                local_vtep: ip4(192, 0, 2, 1),
                mtu,
                gateway_mac: Mac([2, 0x42, 10, n, 0, 1]),
                gateway_addresses: BTreeSet::from([IfAddr { ip: ip4(10, n, 0, 1), prefix: 16 }]),
                local,
                remote,
            },
        );
    }
    Desired { networks, services: None }
}

/// Ways a host's kernel drifts from what weft last programmed.
#[derive(Debug, Clone)]
enum Drift {
    /// Someone changed a link's MTU or took it down.
    Tamper {
        link: u8,
        down: bool,
    },
    /// An address added to (or removed from) a bridge by hand.
    ExtraAddress {
        link: u8,
    },
    DropAddress {
        link: u8,
    },
    /// An FDB or neighbour entry nobody wants any more.
    StaleEntry {
        device: u8,
        last: u8,
    },
    /// A link weft never made, with a name weft does not use.
    Foreign {
        n: u8,
    },
    /// A link deleted behind weft's back.
    Vanish {
        link: u8,
    },
    /// An agent killed while plugging a container: a veth pair left in the host namespace,
    /// its host end labelled or not.
    HalfPlugged {
        n: u8,
        c: u8,
        labelled: bool,
    },
}

fn drift() -> impl Strategy<Value = Drift> {
    prop_oneof![
        (any::<u8>(), any::<bool>()).prop_map(|(link, down)| Drift::Tamper { link, down }),
        any::<u8>().prop_map(|link| Drift::ExtraAddress { link }),
        any::<u8>().prop_map(|link| Drift::DropAddress { link }),
        (any::<u8>(), any::<u8>()).prop_map(|(device, last)| Drift::StaleEntry { device, last }),
        (0u8..3).prop_map(|n| Drift::Foreign { n }),
        any::<u8>().prop_map(|link| Drift::Vanish { link }),
        (0u8..3, 0u8..6, any::<bool>()).prop_map(|(n, c, labelled)| Drift::HalfPlugged { n, c, labelled }),
    ]
}

fn nth_link(observed: &Observed, i: u8) -> Option<String> {
    let names: Vec<&String> = observed.links.keys().collect();
    (!names.is_empty()).then(|| names[usize::from(i) % names.len()].clone())
}

fn apply_drift(observed: &mut Observed, drift: &Drift) {
    match drift {
        Drift::Tamper { link, down } => {
            if let Some(name) = nth_link(observed, *link) {
                let link = observed.links.get_mut(&name).unwrap();
                if *down {
                    link.up = false;
                } else {
                    link.mtu = 9000;
                }
            }
        }
        Drift::ExtraAddress { link } => {
            if let Some(name) = nth_link(observed, *link) {
                let link = observed.links.get_mut(&name).unwrap();
                link.addresses.insert(IfAddr { ip: ip4(172, 31, 0, 9), prefix: 24 });
            }
        }
        Drift::DropAddress { link } => {
            if let Some(name) = nth_link(observed, *link) {
                let link = observed.links.get_mut(&name).unwrap();
                if let Some(first) = link.addresses.iter().next().copied() {
                    link.addresses.remove(&first);
                }
            }
        }
        Drift::StaleEntry { device, last } => {
            let vxlans: Vec<String> = observed
                .links
                .values()
                .filter(|l| matches!(l.kind, LinkKind::Vxlan { .. }))
                .map(|l| l.name.clone())
                .collect();
            if !vxlans.is_empty() {
                let vxlan = vxlans[usize::from(*device) % vxlans.len()].clone();
                let mac = Mac([6, 0, 0, 0, 9, *last]);
                observed.fdb.entry(vxlan.clone()).or_default().insert(mac, ip4(192, 0, 2, 99));
                observed.neighbours.entry(vxlan).or_default().insert(ip4(10, 99, 0, *last), mac);
            }
        }
        Drift::Foreign { n } => {
            let name = format!("eth{n}");
            observed.links.insert(
                name.clone(),
                Link {
                    index: 0,
                    name,
                    place: Place::Host,
                    kind: LinkKind::Other("dummy".into()),
                    alias: None,
                    master: None,
                    mtu: 1500,
                    up: true,
                    mac: None,
                    addresses: BTreeSet::new(),
                },
            );
        }
        Drift::HalfPlugged { n, c, labelled } => {
            let host = veth(*n, *c);
            let alias = labelled.then(|| weft_dataplane::model::endpoint_alias(&format!("ep{n}-{c}")));
            let ends = [
                (weft_dataplane::plan::container_end_name(&host), None, Place::Host),
                (host, alias, Place::Switch),
            ];
            for (name, alias, place) in ends {
                observed.links.insert(
                    name.clone(),
                    Link {
                        index: 0,
                        name,
                        place,
                        kind: LinkKind::Veth,
                        alias,
                        master: None,
                        mtu: 1500,
                        up: false,
                        mac: None,
                        addresses: BTreeSet::new(),
                    },
                );
            }
        }
        Drift::Vanish { link } => {
            if let Some(name) = nth_link(observed, *link) {
                let place = observed.links[&name].place;
                simulated::apply(observed, &Op::DeleteLink { name, place }).unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn carrying_out_the_plan_leaves_nothing_to_do(
        before in prop::collection::vec(net_spec(), 0..4),
        after in prop::collection::vec(net_spec(), 0..4),
        drifts in prop::collection::vec(drift(), 0..6),
    ) {
        // The host as weft left it for an earlier registry state, then drifted.
        let mut observed = Observed::default();
        let earlier = plan(&desired(&before), &observed);
        prop_assert!(simulated::apply_all(&mut observed, &earlier).is_empty());
        for d in &drifts {
            apply_drift(&mut observed, d);
        }

        let want = desired(&after);
        let ops = plan(&want, &observed);
        let refused = simulated::apply_all(&mut observed, &ops);
        prop_assert!(refused.is_empty(), "the kernel refused {:?} of {:?}", refused, ops);
        let again = plan(&want, &observed);
        prop_assert!(again.is_empty(), "left to do after carrying out {:?}: {:?}", ops, again);

        // And what is there is what was wanted (a planner that ignored some drift would also
        // reach a fixed point): every device and veth up, with its MTU and master, the
        // gateway addresses and nothing else, exactly the remote entries, and no weft link
        // nobody wants.
        for net in want.networks.values() {
            let bridge = &observed.links[&net.bridge];
            let vxlan = &observed.links[&net.vxlan];
            let gateway = &observed.links[&net.gateway];
            let port = &observed.links[&net.gateway_port];
            prop_assert!(bridge.up && vxlan.up && gateway.up && port.up, "{bridge:?} {vxlan:?} {gateway:?} {port:?}");
            prop_assert_eq!((bridge.mtu, vxlan.mtu, gateway.mtu, port.mtu), (net.mtu, net.mtu, net.mtu, net.mtu));
            prop_assert_eq!(
                (bridge.place, vxlan.place, gateway.place, port.place),
                (Place::Switch, Place::Switch, Place::Host, Place::Switch)
            );
            prop_assert_eq!(&gateway.addresses, &net.gateway_addresses);
            prop_assert_eq!(gateway.mac, Some(net.gateway_mac));
            prop_assert!(bridge.addresses.is_empty(), "{bridge:?}");
            prop_assert_eq!(vxlan.master.as_deref(), Some(net.bridge.as_str()));
            prop_assert_eq!(port.master.as_deref(), Some(net.bridge.as_str()));
            for (name, endpoint) in &net.local {
                let veth = &observed.links[name];
                prop_assert!(veth.up);
                prop_assert_eq!(veth.place, Place::Switch);
                prop_assert_eq!(veth.mtu, endpoint.mtu);
                prop_assert_eq!(veth.master.as_deref(), Some(net.bridge.as_str()));
            }
            let fdb = observed.fdb.get(&net.vxlan).cloned().unwrap_or_default();
            let wanted_fdb: BTreeMap<Mac, IpAddr> = net.remote.values().map(|r| (r.mac, r.vtep)).collect();
            prop_assert_eq!(fdb, wanted_fdb);
            let neighbours = observed.neighbours.get(&net.vxlan).cloned().unwrap_or_default();
            let wanted_neighbours: BTreeMap<IpAddr, Mac> =
                net.remote.values().flat_map(|r| r.ips.iter().map(|ip| (*ip, r.mac))).collect();
            prop_assert_eq!(neighbours, wanted_neighbours);
        }
        // Container ends left for a runtime stay in the host namespace until it takes them
        // (a drift that removes one is the runtime taking it).
        let handed_over =
            |l: &&Link| l.alias.as_deref().is_some_and(|a| a.starts_with(weft_dataplane::model::HANDOVER_ALIAS_PREFIX));
        let runtime_ends = want.networks.values().flat_map(|n| n.local.values()).filter(|e| e.handover == Handover::Runtime).count();
        prop_assert!(observed.links.values().filter(handed_over).count() <= runtime_ends);
        let wanted = want.networks.values().map(|n| n.local.len() + 4).sum::<usize>();
        prop_assert_eq!(observed.links.values().filter(|l| l.is_weft() && !handed_over(l)).count(), wanted);
    }
}
