//! The executor against the real kernel: two hosts (namespaces on an underlay), a container on
//! each, one overlay network between them. Needs root; skips loudly otherwise.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use weft_dataplane::{
    Desired, Handover, IfAddr, Kernel, LocalEndpoint, Mac, NetworkDevices, Op, Place, RemoteEndpoint, plan,
};
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
        handover: Handover::Weft,
    };
    let remote = RemoteEndpoint {
        mac: container_mac(other),
        ips: vec![ip(&format!("10.7.0.{other}"))],
        vtep: ip(other_vtep),
    };
    let net = NetworkDevices {
        network_id: "net7".into(),
        gateway: "weft4100".into(),
        gateway_port: "weftpg4100".into(),
        bridge: "weftb4100".into(),
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
    Desired { networks: BTreeMap::from([(net.bridge.clone(), net)]), services: None }
}

async fn converge(kernel: &Kernel, desired: &Desired) {
    let ops = plan(desired, &kernel.observe().await.unwrap());
    let errors = kernel.apply(&ops).await;
    assert!(errors.is_empty(), "{errors:#?}");
    let again = plan(desired, &kernel.observe().await.unwrap());
    assert_eq!(again, vec![], "a host that was just programmed still differs");
}

/// A kernel for the host namespace `host`, with `switch` as its switch namespace.
async fn kernel(host: &Netns, switch: &Netns) -> Kernel {
    let kernel = Kernel::connect_in(&PathBuf::from(host.path())).await.unwrap();
    kernel.with_switch(&PathBuf::from(switch.path())).await.unwrap()
}

#[tokio::test]
async fn two_hosts_carry_a_ping_and_drift_is_repaired() {
    if !root_or_skip("two_hosts_carry_a_ping_and_drift_is_repaired") {
        return;
    }
    let underlay = Underlay::new("192.168.77");
    let (h1, h2) = (Netns::new("h"), Netns::new("h"));
    let (s1, s2) = (Netns::new("s"), Netns::new("s"));
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let a = underlay.join(&h1, 1, 1500);
    let b = underlay.join(&h2, 2, 1500);
    let k1 = kernel(&h1, &s1).await;
    let k2 = kernel(&h2, &s2).await;
    let d1 = host_desired(&a, &c1, 2, &b, 3);
    let d2 = host_desired(&b, &c2, 3, &a, 2);
    converge(&k1, &d1).await;
    converge(&k2, &d2).await;

    assert!(c1.pings("10.7.0.3"), "container on host 1 cannot reach the one on host 2");
    assert!(c1.pings("10.7.0.1"), "the anycast gateway does not answer");
    let fdb = s1.exec(&["bridge", "fdb", "show", "dev", "weftx4100"]);
    assert!(fdb.contains("02:42:0a:07:00:03 dst 192.168.77.2"), "{fdb}");
    // The network's devices are in the switch; the host holds the gateway, and the VXLAN
    // device's socket (its UDP port is open in the host namespace, not the switch's).
    let switched = s1.exec(&["ip", "-o", "link"]);
    for device in ["weftb4100", "weftx4100", "weftp2", "weftpg4100"] {
        assert!(switched.contains(&format!(": {device}")), "{device} not in the switch: {switched}");
    }
    let gateway = h1.exec(&["ip", "-o", "addr", "show", "weft4100"]);
    assert!(gateway.contains("10.7.0.1/24"), "{gateway}");
    assert!(h1.exec(&["ss", "-uln"]).contains(":4789"), "the VXLAN socket is not in the host namespace");
    assert!(!s1.exec(&["ss", "-uln"]).contains(":4789"), "the VXLAN socket is in the switch");
    let routes = c1.exec(&["ip", "route"]);
    assert!(routes.contains("default via 10.7.0.1 dev eth0"), "{routes}");
    let link = c1.exec(&["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450") && link.contains("02:42:0a:07:00:02"), "{link}");

    // Drift by hand: the next plan puts it back.
    s1.exec(&[
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
    s1.exec(&["ip", "neigh", "del", "10.7.0.3", "dev", "weftx4100"]);
    let ops = plan(&d1, &k1.observe().await.unwrap());
    assert_eq!(ops.len(), 2, "{ops:#?}");
    assert!(ops.iter().all(|op| matches!(op, Op::SetFdb { .. } | Op::SetNeighbour { .. })), "{ops:#?}");
    converge(&k1, &d1).await;
    assert!(c1.pings("10.7.0.3"));

    // Nothing left wanted: every weft link goes, the container loses its interface.
    converge(&k1, &Desired::default()).await;
    for ns in [&h1, &s1] {
        let links = ns.exec(&["ip", "-o", "link"]);
        assert!(!links.contains("weft"), "{links}");
    }
    let inside = c1.exec(&["ip", "-o", "link"]);
    assert!(!inside.contains("eth0"), "{inside}");
}

/// A host an agent from before the switch namespace programmed: the network's bridge, VXLAN
/// device and the container's veth in the host namespace. The first pass with the switch moves
/// all of it (the container is plugged again), after which the host namespace holds only the
/// gateway and the container reaches the other host and its gateway.
#[tokio::test]
async fn a_host_programmed_before_the_switch_is_moved_into_it() {
    if !root_or_skip("a_host_programmed_before_the_switch_is_moved_into_it") {
        return;
    }
    let underlay = Underlay::new("192.168.79");
    let (h1, h2) = (Netns::new("h"), Netns::new("h"));
    let (s1, s2) = (Netns::new("s"), Netns::new("s"));
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let a = underlay.join(&h1, 1, 1500);
    let b = underlay.join(&h2, 2, 1500);
    let d1 = host_desired(&a, &c1, 2, &b, 3);
    converge(&kernel(&h2, &s2).await, &host_desired(&b, &c2, 3, &a, 2)).await;

    // What the earlier agent left on host 1, labelled as it labelled things.
    let network = "weft network net7";
    let steps: [&[&str]; 6] = [
        &["link", "add", "weft4100", "address", "02:42:0a:07:00:01", "mtu", "1450", "type", "bridge"],
        &["link", "set", "weft4100", "alias", network, "up"],
        &["addr", "add", "10.7.0.1/24", "dev", "weft4100"],
        &[
            "link",
            "add",
            "weftx4100",
            "type",
            "vxlan",
            "id",
            "4100",
            "dstport",
            "4789",
            "local",
            &a,
            "nolearning",
            "proxy",
        ],
        &["link", "set", "weftx4100", "master", "weft4100", "mtu", "1450", "alias", network, "up"],
        &["link", "add", "weftp2", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "mtu", "1450"],
    ];
    for step in steps {
        let mut full = vec!["ip"];
        full.extend_from_slice(step);
        h1.exec(&full);
    }
    h1.exec(&[
        "ip",
        "link",
        "set",
        "weftp2",
        "master",
        "weft4100",
        "alias",
        "weft endpoint endpoint-2",
        "up",
    ]);
    h1.exec(&["ip", "link", "set", "eth0", "address", "02:42:0a:07:00:02"]);
    h1.exec(&["ip", "link", "set", "eth0", "netns", &c1.name]);
    c1.exec(&["ip", "addr", "add", "10.7.0.2/24", "dev", "eth0"]);
    c1.exec(&["ip", "link", "set", "eth0", "up"]);
    c1.exec(&["ip", "route", "add", "default", "via", "10.7.0.1"]);
    let alias = h1.exec(&["ip", "-d", "link", "show", "weftx4100"]);
    assert!(alias.contains("alias weft network net7"), "{alias}");

    let k1 = kernel(&h1, &s1).await;
    let ops = plan(&d1, &k1.observe().await.unwrap());
    let moved = ops.iter().filter(|op| matches!(op, Op::DeleteLink { place: Place::Host, .. })).count();
    assert_eq!(moved, 3, "{ops:#?}");
    converge(&k1, &d1).await;
    let host = h1.exec(&["ip", "-o", "link"]);
    assert!(
        host.contains(": weft4100@") && !host.contains("weftx4100") && !host.contains("weftp2"),
        "{host}"
    );
    assert!(s1.exec(&["ip", "-o", "link"]).contains(": weftx4100"));
    assert!(c1.pings("10.7.0.3"), "the container does not reach the other host after the move");
    assert!(c1.pings("10.7.0.1"), "the gateway does not answer after the move");
}

#[test]
fn the_ruleset_loads_replaces_itself_and_leaves_other_tables_alone() {
    use weft_core::PortProtocol;
    use weft_dataplane::rules::{EncryptedVxlan, NetworkRules, PublishedRule, removal, ruleset};
    if !root_or_skip("the_ruleset_loads_replaces_itself_and_leaves_other_tables_alone") {
        return;
    }
    let host = Netns::new("h");
    host.exec(&["nft", "add", "table", "inet", "mine"]);
    let switch = Netns::new("s");
    let net = |gateway: &str, subnet: &str, internal, icc| NetworkRules {
        gateway: gateway.into(),
        subnets: vec![IfAddr { ip: ip(subnet), prefix: 24 }],
        internal,
        masquerade: true,
        icc,
        ports: vec!["weftx1".to_string(), "weftp1".to_string()],
        published: vec![],
    };
    let load_in = |ns: &Netns, script: &str| {
        let out = ns.try_exec_with_stdin(&["nft", "-f", "-"], script);
        assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
    };
    let load = |rules: weft_dataplane::rules::Rulesets| {
        load_in(&host, &rules.host);
        load_in(&switch, &rules.switch);
    };
    let encrypted = EncryptedVxlan { port: 4789, vnis: vec![4097], tunnel: "weftwg".into() };
    load(ruleset(
        &[net("weft4096", "10.0.1.1", false, true), net("weft4097", "10.0.2.1", true, false)],
        &encrypted,
    ));
    let listed = host.exec(&["nft", "list", "chain", "inet", "weft", "output"]);
    assert!(listed.contains("oifname != \"weftwg\" udp dport 4789 @th,96,24 0x1001 drop"), "{listed}");
    let icc = switch.exec(&["nft", "list", "chain", "bridge", "weft", "forward"]);
    assert!(
        icc.contains("iifname { \"weftp1\", \"weftx1\" } oifname { \"weftp1\", \"weftx1\" } drop"),
        "{icc}"
    );
    // Published ports of every protocol and family load as the kernel takes them.
    let publish = |protocol, host_ip: Option<&str>, container_ip: &str| PublishedRule {
        protocol,
        host_ip: host_ip.map(ip),
        host_port: 8080,
        container_ip: ip(container_ip),
        container_port: 80,
    };
    let publishing = NetworkRules {
        published: vec![
            publish(PortProtocol::Tcp, None, "10.0.1.2"),
            publish(PortProtocol::Udp, Some("127.0.0.1"), "10.0.1.2"),
            publish(PortProtocol::Sctp, None, "fd00:1::2"),
            publish(PortProtocol::Tcp, Some("fd00:9::1"), "fd00:1::2"),
        ],
        ..net("weft4096", "10.0.1.1", false, true)
    };
    load(ruleset(&[publishing], &EncryptedVxlan::default()));
    let listed = host.exec(&["nft", "list", "chain", "inet", "weft", "published"]);
    for rule in [
        "meta nfproto ipv4 tcp dport 8080 dnat ip to 10.0.1.2:80",
        "ip daddr 127.0.0.1 udp dport 8080 dnat ip to 10.0.1.2:80",
        "meta nfproto ipv6 sctp dport 8080 dnat ip6 to [fd00:1::2]:80",
        "ip6 daddr fd00:9::1 tcp dport 8080 dnat ip6 to [fd00:1::2]:80",
    ] {
        assert!(listed.contains(rule), "{rule}: {listed}");
    }
    load(ruleset(&[net("weft4096", "10.0.1.1", false, true)], &EncryptedVxlan::default()));
    let listed = host.exec(&["nft", "list", "ruleset"]);
    assert!(listed.contains("table inet mine"), "{listed}");
    assert!(listed.contains("10.0.1.0/24"), "{listed}");
    assert!(!listed.contains("weft4097"), "the second load replaced the first: {listed}");
    load_in(&host, &removal());
    load_in(&host, &removal());
    let listed = host.exec(&["nft", "list", "ruleset"]);
    assert!(!listed.contains("weft"), "{listed}");
    assert!(listed.contains("table inet mine"), "{listed}");
}

/// The switch namespace is made and pinned once (a second agent start finds it), has
/// br_netfilter's hooks off where the module is loaded, and goes on removal.
#[test]
fn the_switch_namespace_is_pinned_once_quiet_and_removable() {
    use weft_dataplane::switch;
    if !root_or_skip("the_switch_namespace_is_pinned_once_quiet_and_removable") {
        return;
    }
    let name = format!("{}-sw", weft_testbed::unique("t"));
    struct Unpin(String);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = switch::remove(&self.0);
        }
    }
    let _unpin = Unpin(name.clone());
    let path = switch::ensure(&name).unwrap();
    let inode = |p: &std::path::Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let listed = weft_testbed::run("ip", &["netns", "list"]);
    assert!(listed.lines().any(|l| l.split_whitespace().next() == Some(name.as_str())), "{listed}");
    weft_testbed::run("ip", &["-n", &name, "link", "add", "probe0", "type", "bridge"]);
    assert_eq!(switch::ensure(&name).unwrap(), path);
    let kept = weft_testbed::run("ip", &["-n", &name, "-o", "link"]);
    assert!(kept.contains("probe0"), "a second ensure made a new namespace: {kept}");
    assert!(inode(&path).is_ok());
    let hook = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    if std::path::Path::new(hook).exists() {
        let value = weft_testbed::run("ip", &["netns", "exec", &name, "cat", hook]);
        assert_eq!(value.trim(), "0", "br_netfilter's hooks are on in the switch");
    } else {
        eprintln!("\n#### br_netfilter is not loaded: the hooks part of this test did not run ####\n");
    }
    switch::remove(&name).unwrap();
    switch::remove(&name).unwrap();
    assert!(!path.exists(), "the pin outlived removal");
}

/// Docker's way: weft leaves the container end in the host namespace with the endpoint's MAC;
/// the runtime moves, renames and addresses it; weft then keeps only the host end in line, and
/// takes the pair away when the endpoint goes.
#[tokio::test]
async fn a_runtime_takes_the_container_end_weft_leaves_for_it() {
    if !root_or_skip("a_runtime_takes_the_container_end_weft_leaves_for_it") {
        return;
    }
    let (host, switch, container, peer) =
        (Netns::new("h"), Netns::new("s"), Netns::new("c"), Netns::new("c"));
    let kernel = kernel(&host, &switch).await;
    let mut desired = host_desired("192.0.2.1", &peer, 2, "192.0.2.9", 9);
    let net = desired.networks.get_mut("weftb4100").unwrap();
    let handed = LocalEndpoint {
        endpoint_id: "endpoint-5".into(),
        host_veth: "weftp5".into(),
        mac: container_mac(5),
        addresses: vec![IfAddr { ip: ip("10.7.0.5"), prefix: 24 }],
        handover: Handover::Runtime,
        ..net.local["weftp2"].clone()
    };
    net.local.insert("weftp5".into(), handed);
    converge(&kernel, &desired).await;
    let waiting = host.exec(&["ip", "-o", "link", "show", "weftp5c"]);
    assert!(waiting.contains("02:42:0a:07:00:05") && waiting.contains("mtu 1450"), "{waiting}");
    assert!(host.exec(&["ip", "-d", "link", "show", "weftp5c"]).contains("alias weft handover endpoint-5"));

    // What dockerd does with the Join answer.
    host.exec(&["ip", "link", "set", "weftp5c", "netns", &container.name]);
    container.exec(&["ip", "link", "set", "weftp5c", "name", "eth0"]);
    container.exec(&["ip", "addr", "add", "10.7.0.5/24", "dev", "eth0"]);
    container.exec(&["ip", "link", "set", "eth0", "up"]);
    assert_eq!(plan(&desired, &kernel.observe().await.unwrap()), vec![], "weft redid the runtime's part");
    assert!(container.pings("10.7.0.2"), "the runtime's container cannot reach weft's on the same bridge");

    // The endpoint goes: both ends with it.
    desired.networks.get_mut("weftb4100").unwrap().local.remove("weftp5");
    converge(&kernel, &desired).await;
    assert!(!container.exec(&["ip", "-o", "link"]).contains("eth0"), "the container kept its interface");
}

/// The userspace backend end to end: wireguard-go in two host namespaces, configured only
/// through weft's UAPI client, carries a ping between the tunnel addresses.
#[test]
fn wireguard_go_configured_through_uapi_and_wg_carries_a_ping() {
    use weft_dataplane::wireguard::{Backend, Key, Peer, Update, get, socket_path};
    if !root_or_skip("wireguard_go_configured_through_uapi_and_wg_carries_a_ping") {
        return;
    }
    if weft_testbed::output("sh", &["-c", "command -v wireguard-go"]).stdout.is_empty() {
        panic!("wireguard-go is not installed (apt-get install wireguard-go)");
    }
    let underlay = Underlay::new("192.168.78");
    let (h1, h2) = (Netns::new("h"), Netns::new("h"));
    let a = underlay.join(&h1, 1, 1500);
    let b = underlay.join(&h2, 2, 1500);
    // Interface names are machine-wide (the UAPI sockets share one directory).
    let (w1, w2) = (weft_testbed::unique("wg"), weft_testbed::unique("wg"));
    let mut daemons: Vec<std::process::Child> = [(&h1, &w1), (&h2, &w2)]
        .into_iter()
        .map(|(host, name)| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &host.name, "wireguard-go", "-f", name])
                .env("WG_PROCESS_FOREGROUND", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // The daemons and their sockets go even when the test fails.
    struct Kill<'a>(&'a mut Vec<std::process::Child>, [&'a str; 2]);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            for child in self.0.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            for name in self.1 {
                let _ = std::fs::remove_file(socket_path(name));
            }
        }
    }
    let _kill = Kill(&mut daemons, [w1.as_str(), w2.as_str()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(socket_path(&w1).exists() && socket_path(&w2).exists()) {
        assert!(std::time::Instant::now() < deadline, "wireguard-go did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (k1, k2) = (Key([0x11; 32]), Key([0x22; 32]));
    // One side through weft's UAPI client, the other through `wg` (the path the kernel
    // backend takes; `wg` reaches wireguard-go through the same socket).
    let configure = |backend: Backend, me: &str, key: Key, peer: Key, peer_at: &str, peer_tunnel: &str| {
        let update = Update {
            private_key: Some(key),
            listen_port: Some(51820),
            replace_peers: true,
            peers: vec![Peer {
                public_key: peer.public(),
                endpoint: Some(format!("{peer_at}:51820").parse().unwrap()),
                allowed_ips: vec![(peer_tunnel.parse().unwrap(), 32)],
                keepalive_seconds: None,
            }],
            remove: vec![],
        };
        backend.apply(me, &update).unwrap();
    };
    configure(Backend::Userspace, &w1, k1, k2, &b, "10.255.0.2");
    configure(Backend::Kernel, &w2, k2, k1, &a, "10.255.0.1");
    for (host, name, me, peer) in
        [(&h1, &w1, "10.255.0.1", "10.255.0.2"), (&h2, &w2, "10.255.0.2", "10.255.0.1")]
    {
        host.exec(&["ip", "addr", "add", &format!("{me}/32"), "dev", name]);
        host.exec(&["ip", "link", "set", name, "up"]);
        host.exec(&["ip", "route", "add", &format!("{peer}/32"), "dev", name]);
    }
    assert!(h1.pings("10.255.0.2"), "no ping through the tunnel");
    let device = get(&socket_path(&w1)).unwrap();
    assert_eq!(device.public_key, Some(k1.public()));
    assert_eq!(device.peers.len(), 1);
    assert!(device.peers[0].last_handshake_seconds > 0 && device.peers[0].rx_bytes > 0, "{device:?}");
    let other = Backend::Kernel.get(&w2).unwrap();
    assert_eq!(other.public_key, Some(k2.public()));
    assert_eq!(other.peers[0].public_key, Some(k1.public()));
    assert_eq!(other.peers[0].allowed_ips, vec![("10.255.0.1".parse().unwrap(), 32)]);
    assert!(other.peers[0].rx_bytes > 0, "{other:?}");
}
