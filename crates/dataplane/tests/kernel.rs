//! The executor against the real kernel: two hosts (namespaces on an underlay), a container on
//! each, one overlay network between them. Needs root; skips loudly otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use weft_dataplane::{Desired, IfAddr, Kernel, LocalEndpoint, Mac, NetworkDevices, Op, RemoteEndpoint, plan};
use weft_testbed::{Netns, Underlay, root_or_skip};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn container_mac(last: u8) -> Mac {
    Mac([2, 0x42, 10, 7, 0, last])
}

/// A host with VTEP `vtep`, container `.last` in `netns`, and container `.other` behind
/// `other_vtep`.
fn host_desired(vtep: &str, netns: &Netns, last: u8, other_vtep: &str, other: u8) -> Desired {
    let local = LocalEndpoint {
        endpoint_id: format!("endpoint-{last}"),
        host_veth: format!("weftp{last}"),
        netns: PathBuf::from(netns.path()),
        ifname: "eth0".into(),
        mac: container_mac(last),
        addresses: vec![IfAddr { ip: ip(&format!("10.7.0.{last}")), prefix: 24 }],
        default_routes: vec![ip("10.7.0.1")],
        mtu: 1450,
    };
    let remote = RemoteEndpoint {
        mac: container_mac(other),
        ips: vec![ip(&format!("10.7.0.{other}"))],
        vtep: ip(other_vtep),
    };
    let net = NetworkDevices {
        network_id: "net7".into(),
        bridge: "weft4100".into(),
        vxlan: "weftx4100".into(),
        vni: 4100,
        port: 4789,
        local_vtep: ip(vtep),
        mtu: 1450,
        gateway_mac: Mac([2, 0x42, 10, 7, 0, 1]),
        gateway_addresses: BTreeSet::from([IfAddr { ip: ip("10.7.0.1"), prefix: 24 }]),
        local: BTreeMap::from([(local.host_veth.clone(), local)]),
        remote: BTreeMap::from([(remote.mac, remote)]),
    };
    Desired { networks: BTreeMap::from([(net.bridge.clone(), net)]) }
}

async fn converge(kernel: &Kernel, desired: &Desired) {
    let ops = plan(desired, &kernel.observe().await.unwrap());
    let errors = kernel.apply(&ops).await;
    assert!(errors.is_empty(), "{errors:#?}");
    let again = plan(desired, &kernel.observe().await.unwrap());
    assert_eq!(again, vec![], "a host that was just programmed still differs");
}

#[tokio::test]
async fn two_hosts_carry_a_ping_and_drift_is_repaired() {
    if !root_or_skip("two_hosts_carry_a_ping_and_drift_is_repaired") {
        return;
    }
    let underlay = Underlay::new("192.168.77");
    let (h1, h2) = (Netns::new("h"), Netns::new("h"));
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let a = underlay.join(&h1, 1, 1500);
    let b = underlay.join(&h2, 2, 1500);
    let k1 = Kernel::connect_in(&PathBuf::from(h1.path())).await.unwrap();
    let k2 = Kernel::connect_in(&PathBuf::from(h2.path())).await.unwrap();
    let d1 = host_desired(&a, &c1, 2, &b, 3);
    let d2 = host_desired(&b, &c2, 3, &a, 2);
    converge(&k1, &d1).await;
    converge(&k2, &d2).await;

    assert!(c1.pings("10.7.0.3"), "container on host 1 cannot reach the one on host 2");
    assert!(c1.pings("10.7.0.1"), "the anycast gateway does not answer");
    let fdb = h1.exec(&["bridge", "fdb", "show", "dev", "weftx4100"]);
    assert!(fdb.contains("02:42:0a:07:00:03 dst 192.168.77.2"), "{fdb}");
    let routes = c1.exec(&["ip", "route"]);
    assert!(routes.contains("default via 10.7.0.1 dev eth0"), "{routes}");
    let link = c1.exec(&["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450") && link.contains("02:42:0a:07:00:02"), "{link}");

    // Drift by hand: the next plan puts it back.
    h1.exec(&[
        "bridge",
        "fdb",
        "del",
        "02:42:0a:07:00:03",
        "dev",
        "weftx4100",
        "dst",
        "192.168.77.2",
        "self",
    ]);
    h1.exec(&["ip", "neigh", "del", "10.7.0.3", "dev", "weftx4100"]);
    let ops = plan(&d1, &k1.observe().await.unwrap());
    assert_eq!(ops.len(), 2, "{ops:#?}");
    assert!(ops.iter().all(|op| matches!(op, Op::SetFdb { .. } | Op::SetNeighbour { .. })), "{ops:#?}");
    converge(&k1, &d1).await;
    assert!(c1.pings("10.7.0.3"));

    // Nothing left wanted: every weft link goes, the container loses its interface.
    converge(&k1, &Desired::default()).await;
    let links = h1.exec(&["ip", "-o", "link"]);
    assert!(!links.contains("weft"), "{links}");
    let inside = c1.exec(&["ip", "-o", "link"]);
    assert!(!inside.contains("eth0"), "{inside}");
}

#[test]
fn the_ruleset_loads_replaces_itself_and_leaves_other_tables_alone() {
    use weft_dataplane::rules::{NetworkRules, removal, ruleset};
    if !root_or_skip("the_ruleset_loads_replaces_itself_and_leaves_other_tables_alone") {
        return;
    }
    let host = Netns::new("h");
    host.exec(&["nft", "add", "table", "inet", "mine"]);
    let net = |bridge: &str, subnet: &str, internal, icc| NetworkRules {
        bridge: bridge.into(),
        subnets: vec![IfAddr { ip: ip(subnet), prefix: 24 }],
        internal,
        masquerade: true,
        icc,
        ports: vec!["weftx1".to_string(), "weftp1".to_string()],
    };
    let load = |script: String| {
        let out = host.try_exec_with_stdin(&["nft", "-f", "-"], &script);
        assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
    };
    load(ruleset(&[net("weft4096", "10.0.1.1", false, true), net("weft4097", "10.0.2.1", true, false)]));
    load(ruleset(&[net("weft4096", "10.0.1.1", false, true)]));
    let listed = host.exec(&["nft", "list", "ruleset"]);
    assert!(listed.contains("table inet mine"), "{listed}");
    assert!(listed.contains("10.0.1.0/24"), "{listed}");
    assert!(!listed.contains("weft4097"), "the second load replaced the first: {listed}");
    load(removal());
    load(removal());
    let listed = host.exec(&["nft", "list", "ruleset"]);
    assert!(!listed.contains("weft"), "{listed}");
    assert!(listed.contains("table inet mine"), "{listed}");
}
