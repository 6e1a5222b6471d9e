//! The data plane end to end: a three-member controller cluster and one `weft-node` per host,
//! every host a network namespace on a shared underlay, containers further namespaces.
//! Traffic never leaves the namespaces built here; everything is torn down when a test ends,
//! failed or not. Needs root; skips loudly otherwise.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::time::Duration;

use lab::*;
use weft_api::agent;
use weft_api::pb;
use weft_testbed::{Netns, root_or_skip};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_two_networks_isolation_egress_and_cleanup() {
    if !root_or_skip("three_hosts_two_networks_isolation_egress_and_cleanup") {
        return;
    }
    let lab = Lab::new(3);
    let blue = lab.create_network("blue", false);
    let red = lab.create_network("red", false);
    let _sealed = lab.create_network("sealed", true);
    let (mut h1, mut h2, mut h3) = (lab.agent(0).await, lab.agent(1).await, lab.agent(2).await);

    let (a1, a2, b1, b3, m3) =
        (Netns::new("c"), Netns::new("c"), Netns::new("c"), Netns::new("c"), Netns::new("c"));
    let (i1, i2) = (Netns::new("c"), Netns::new("c"));
    let a1_blue = attach(&mut h1, &a1, "blue", "a1").await;
    // With the barrier, h1 (which has a blue container) has a2's entries when attach returns.
    let mut waiting = attach_request(&a2, "blue", "a2");
    waiting.wait_everywhere = true;
    let a2_blue = h2.attach(waiting).await.unwrap().into_inner().attachment.unwrap();
    let fdb = lab.hosts[0].ns.switch_exec(&["bridge", "fdb", "show", "dev", &format!("weftx{}", blue.vni)]);
    assert!(fdb.contains(&a2_blue.mac_address), "h1 lacks a2's FDB entry after a waiting attach: {fdb}");
    assert!(a1.pings(&ip_of(&a2_blue)), "a1 cannot reach a2 right after a waiting attach");
    let b1_red = attach(&mut h1, &b1, "red", "b1").await;
    let b3_red = attach(&mut h3, &b3, "red", "b3").await;
    let m3_blue = attach(&mut h3, &m3, "blue", "m3").await;
    let m3_red = attach(&mut h3, &m3, "red", "m3").await;
    let _i1_sealed = attach(&mut h1, &i1, "sealed", "i1").await;
    let i2_sealed = attach(&mut h2, &i2, "sealed", "i2").await;
    assert_eq!((m3_blue.interface.as_str(), m3_red.interface.as_str()), ("eth0", "eth1"));
    assert_eq!(a1_blue.mtu, 1450, "underlay 1500 minus VXLAN");

    // The same container twice on one network is refused, with a clear reason.
    let again = h1.attach(attach_request(&a1, "blue", "a1")).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists, "{again:?}");

    // Same network, across hosts, by IP; the anycast gateway answers everywhere.
    assert!(reaches(&a1, &ip_of(&a2_blue)).await, "blue a1 (h1) -> a2 (h2)");
    assert!(reaches(&a2, &ip_of(&m3_blue)).await, "blue a2 (h2) -> m3 (h3)");
    assert!(reaches(&b1, &ip_of(&b3_red)).await, "red b1 (h1) -> b3 (h3)");
    assert!(reaches(&a2, &a2_blue.ipv4_gateway).await, "gateway on h2");

    // Different networks cannot reach each other, on one host or across hosts.
    assert!(blocked(&a1, &ip_of(&b1_red)), "blue a1 reached red b1 on the same host");
    assert!(blocked(&a1, &ip_of(&b3_red)), "blue a1 reached red b3 on another host");

    // A container on both networks reaches both, but does not route between them.
    assert!(reaches(&m3, &ip_of(&a1_blue)).await);
    assert!(reaches(&m3, &ip_of(&b1_red)).await);
    let red_subnet = red.ipam_config[0].subnet.clone();
    a1.exec(&["ip", "route", "add", &red_subnet, "via", &ip_of(&m3_blue)]);
    assert!(blocked(&a1, &ip_of(&b3_red)), "blue a1 reached red b3 through m3");

    // Egress: the outside has no route to container subnets, so an answer means the host
    // masqueraded the container behind its own underlay address. Internal networks stay in.
    assert!(reaches(&a1, OUTSIDE).await, "egress from blue on h1");
    assert!(reaches(&b3, OUTSIDE).await, "egress from red on h3");
    assert!(reaches(&i1, &ip_of(&i2_sealed)).await, "an internal network still spans hosts");
    assert!(blocked(&i1, OUTSIDE), "an internal network reached the outside");
    assert!(
        !lab.outside.exec(&["ip", "route"]).contains("10."),
        "the outside must not know container routes"
    );

    // The controller's view matches: blue has three endpoints.
    let blue_id = blue.id.clone();
    let inspected = lab.networks(move |mut c| {
        Box::pin(async move {
            c.inspect_network(pb::InspectNetworkRequest { network: blue_id }).await.unwrap().into_inner()
        })
    });
    assert_eq!(inspected.network.unwrap().endpoint_count, 3);

    // Detaching everything from blue removes its devices and entries on every host.
    for (client, container, name) in [(&mut h1, &a1, "a1"), (&mut h2, &a2, "a2"), (&mut h3, &m3, "m3")] {
        let request = agent::DetachRequest {
            network: "blue".into(),
            container_id: format!("{name}-{}", container.name),
        };
        client.detach(request).await.unwrap();
    }
    let (gateway, vxlan) = (format!("weft{}", blue.vni), format!("weftx{}", blue.vni));
    for host in &lab.hosts {
        eventually(&format!("{gateway} and {vxlan} gone from {}", host.name), Duration::from_secs(5), || {
            !host.ns.exec(&["ip", "-o", "link"]).contains(&format!(" {gateway}@"))
                && !host.ns.switch_exec(&["ip", "-o", "link"]).contains(&vxlan)
        })
        .await;
    }
    assert!(!a1.exec(&["ip", "-o", "link"]).contains("eth0"), "a1 keeps no interface");
    assert!(m3.exec(&["ip", "-o", "link"]).contains("eth1"), "m3 keeps its red interface");
    lab.remove_network("blue");
    // Red lives on: h1 still has it, and its entries for h3 are in place.
    let fdb = lab.hosts[0].ns.switch_exec(&["bridge", "fdb", "show", "dev", &format!("weftx{}", red.vni)]);
    assert!(fdb.contains(&format!("dst {UNDERLAY}.3")), "{fdb}");
    assert!(reaches(&b1, &ip_of(&m3_red)).await);
    drop((h1, h2, h3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_and_restarts_or_outages_do_not_stop_traffic() {
    if !root_or_skip("drift_is_repaired_and_restarts_or_outages_do_not_stop_traffic") {
        return;
    }
    let mut lab = Lab::new(2);
    let net = lab.create_network("green", false);
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let mut h2 = lab.agent(1).await;
    let e1 = attach(&mut h1, &c1, "green", "c1").await;
    let e1_gateway = e1.ipv4_gateway.clone();
    let e2 = attach(&mut h2, &c2, "green", "c2").await;
    let target = ip_of(&e2);
    assert!(reaches(&c1, &target).await);

    // Entries deleted by hand come back within the resync period.
    let vxlan = format!("weftx{}", net.vni);
    let h1ns = &lab.hosts[0].ns;
    h1ns.switch_exec(&[
        "bridge",
        "fdb",
        "del",
        &e2.mac_address,
        "dev",
        &vxlan,
        "dst",
        &format!("{UNDERLAY}.2"),
        "self",
    ]);
    h1ns.switch_exec(&["ip", "neigh", "del", &target, "dev", &vxlan]);
    eventually("the FDB entry repaired", Duration::from_secs(5), || {
        h1ns.switch_exec(&["bridge", "fdb", "show", "dev", &vxlan]).contains(&e2.mac_address)
    })
    .await;
    eventually("the neighbour entry repaired", Duration::from_secs(5), || {
        h1ns.switch_exec(&["ip", "neigh", "show", "dev", &vxlan]).contains(&target)
    })
    .await;
    // A gateway deleted by hand (taking its port along) comes back, and so does the path.
    h1ns.exec(&["ip", "link", "del", &format!("weft{}", net.vni)]);
    eventually("the gateway repaired", Duration::from_secs(5), || {
        h1ns.try_exec(&["ip", "link", "show", &format!("weft{}", net.vni)]).status.success()
    })
    .await;
    assert!(reaches(&c1, &target).await, "across hosts after the gateway came back");
    assert!(reaches(&c1, &e1_gateway).await, "the gateway after it came back");

    // Restarting an agent during a ping loses nothing: it adopts what it finds.
    let ping = BackgroundPing::start(&c1, &target, 60);
    tokio::time::sleep(Duration::from_millis(300)).await;
    lab.kill_agent(0);
    lab.start_agent(0);
    let _ = lab.agent(0).await;
    let (summary, received) = ping.finish().await;
    assert_eq!(received, 60, "{summary}");

    // With the agent down, or every controller down, traffic keeps flowing.
    lab.kill_agent(1);
    assert!(reaches(&c1, &target).await, "agent on h2 down");
    for i in 0..lab::CONTROLLERS.len() {
        lab.stop_controller(i);
    }
    assert!(reaches(&c1, &target).await, "controllers down");

    // Uninstall removes weft's links and tables, and nothing else.
    lab.kill_agent(0);
    let h1ns = &lab.hosts[0].ns;
    h1ns.exec(&["nft", "add", "table", "inet", "someone_elses"]);
    let state = lab.hosts[0].state.to_str().unwrap().to_string();
    let wireguard = lab.hosts[0].wireguard_interface.clone();
    assert!(lab.hosts[0].state.join("wireguard.key").exists());
    let switch = h1ns.switch_name();
    h1ns.exec(&[
        NODE,
        "--uninstall",
        "--state-dir",
        &state,
        "--wireguard-interface",
        &wireguard,
        "--switch-namespace",
        &switch,
    ]);
    assert!(!h1ns.switch_path().exists(), "the switch namespace outlived uninstall");
    let links = h1ns.exec(&["ip", "-o", "link"]);
    assert!(!links.contains("weft"), "{links}");
    assert!(!links.contains(&wireguard), "the WireGuard interface outlived uninstall: {links}");
    assert!(!lab.hosts[0].state.join("wireguard.key").exists());
    assert!(links.contains("ul0"), "{links}");
    let tables = h1ns.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("weft") && tables.contains("someone_elses"), "{tables}");
    assert!(!lab.hosts[0].state.join("attachments").exists());
}

/// Agents know every controller: when the one they watch and write through dies, they carry
/// on through the others, and what one host attaches reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_carry_on_when_a_controller_dies() {
    if !root_or_skip("agents_carry_on_when_a_controller_dies") {
        return;
    }
    let mut lab = Lab::new(2);
    lab.create_network("amber", false);
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let e1 = attach(&mut h1, &c1, "amber", "c1").await;
    // The first member is every agent's first choice; without it, watch and writes move on.
    lab.stop_controller(0);
    let mut h2 = lab.agent(1).await;
    let mut waiting = attach_request(&c2, "amber", "c2");
    waiting.wait_everywhere = true;
    let e2 = h2.attach(waiting).await.unwrap().into_inner().attachment.unwrap();
    assert!(c1.pings(&ip_of(&e2)), "h1 did not learn of c2 after losing its controller");
    assert!(c2.pings(&ip_of(&e1)));
}

/// A controller that hangs (SIGSTOP: a paused VM, a host that lost power) closes nothing;
/// its kernel even keeps the connections up. Agents notice it stopped answering their pings
/// and carry on through the others, watch included: what one host attaches reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_carry_on_when_a_controller_hangs() {
    if !root_or_skip("agents_carry_on_when_a_controller_hangs") {
        return;
    }
    let lab = Lab::new(2);
    lab.create_network("amber", false);
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let e1 = attach(&mut h1, &c1, "amber", "c1").await;
    // The first member is every agent's first choice: what it watches and writes through.
    lab.signal_controller(0, "STOP");
    let e2 = attach(&mut lab.agent(1).await, &c2, "amber", "c2").await;
    // Within two missed pings and a reconnect, not the quarter of an hour TCP would take.
    eventually("h1 learns of c2 while its controller hangs", Duration::from_secs(20), || {
        c1.pings(&ip_of(&e2))
    })
    .await;
    assert!(c2.pings(&ip_of(&e1)));
}

/// A registry whose snapshot is larger than gRPC's default 4 MiB message limit still reaches
/// an agent (it broke the watch stream at about 20,000 endpoints once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_the_default_grpc_limit_reaches_the_agent() {
    if !root_or_skip("a_snapshot_larger_than_the_default_grpc_limit_reaches_the_agent") {
        return;
    }
    let mut lab = Lab::new(1);
    let network = lab.create(pb::CreateNetworkRequest {
        name: "wide".into(),
        ipam_config: vec![pb::IpamConfig { subnet: "100.64.0.0/20".into(), ..Default::default() }],
        ..Default::default()
    });
    lab.kill_agent(0);
    let count = 2500;
    // ~2 KB per endpoint: 32 long aliases.
    lab.remote_endpoints("wide", count, 32);
    lab.start_agent(0);
    let mut h1 = lab.agent(0).await;
    let c1 = Netns::new("c");
    attach(&mut h1, &c1, "wide", "c1").await;
    let vxlan = format!("weftx{}", network.vni);
    eventually("every remote endpoint programmed", Duration::from_secs(20), || {
        let fdb = lab.hosts[0].ns.switch_exec(&["bridge", "fdb", "show", "dev", &vxlan]);
        fdb.lines().filter(|l| l.contains(&format!("dst {UNDERLAY}.200"))).count() == count
    })
    .await;
}

/// A dual-stack network: containers on two hosts reach each other and their gateway over IPv6
/// too (neighbour entries answer neighbour discovery locally, as ARP for IPv4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_networks_carry_ipv6_across_hosts() {
    if !root_or_skip("dual_stack_networks_carry_ipv6_across_hosts") {
        return;
    }
    let lab = Lab::new(2);
    let network =
        lab.create(pb::CreateNetworkRequest { name: "both".into(), enable_ipv6: true, ..Default::default() });
    assert_eq!(network.ipam_config.len(), 2, "{network:?}");
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let mut h2 = lab.agent(1).await;
    let e1 = attach(&mut h1, &c1, "both", "c1").await;
    let mut waiting = attach_request(&c2, "both", "c2");
    waiting.wait_everywhere = true;
    let e2 = h2.attach(waiting).await.unwrap().into_inner().attachment.unwrap();
    let v6 = |a: &agent::Attachment| a.ipv6_address.split('/').next().unwrap().to_string();
    assert!(!e2.ipv6_address.is_empty() && !e2.ipv6_gateway.is_empty(), "{e2:?}");
    assert!(reaches(&c1, &v6(&e2)).await, "c1 -> c2 over IPv6");
    assert!(reaches(&c2, &v6(&e1)).await, "c2 -> c1 over IPv6");
    assert!(reaches(&c1, &e1.ipv6_gateway).await, "the IPv6 gateway");
    // DNS answers AAAA for the IPv6 address.
    let aaaa = c1.exec(&["dig", "+short", &format!("@{}", e1.ipv4_gateway), "AAAA", "c2"]);
    assert_eq!(aaaa.trim(), v6(&e2), "{aaaa}");
    let routes = c1.exec(&["ip", "-6", "route"]);
    assert!(routes.contains(&format!("default via {}", e1.ipv6_gateway)), "{routes}");
}

/// An agent whose credential is about to expire renews it (a new key made on the host, signed
/// by a controller on the strength of the old credential) and carries on: traffic does not
/// notice, and new requests to the controllers go out with the new credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_its_credential_without_interrupting_anything() {
    if !root_or_skip("an_agent_renews_its_credential_without_interrupting_anything") {
        return;
    }
    let mut lab = Lab::new(2);
    lab.create_network("steady", false);
    let (c1, c2, c3) = (Netns::new("c"), Netns::new("c"), Netns::new("c"));
    attach(&mut lab.agent(0).await, &c1, "steady", "c1").await;
    let mut waiting = attach_request(&c2, "steady", "c2");
    waiting.wait_everywhere = true;
    let c2_at = lab.agent(1).await.attach(waiting).await.unwrap().into_inner().attachment.unwrap();
    let target = ip_of(&c2_at);
    assert!(reaches(&c1, &target).await);

    // Credentials last a year; "renew within 400 days" makes h1's due at once.
    let cert = lab.tmp_path().join("pki/h1/cert.pem");
    let key = lab.tmp_path().join("pki/h1/key.pem");
    let (old_cert, old_key) =
        (std::fs::read_to_string(&cert).unwrap(), std::fs::read_to_string(&key).unwrap());
    lab.kill_agent(0);
    let ping = BackgroundPing::start(&c1, &target, 40);
    lab.start_agent_with(0, &["--renew-within-days", "400", "--renew-check-ms", "60000"]);
    eventually("h1 renews its credential", Duration::from_secs(20), || {
        std::fs::read_to_string(&cert).is_ok_and(|c| c != old_cert)
    })
    .await;
    assert_ne!(std::fs::read_to_string(&key).unwrap(), old_key, "the renewed credential has a new key");
    // The renewed credential is what the agent now uses towards the controllers.
    let c3_at = attach(&mut lab.agent(0).await, &c3, "steady", "c3").await;
    assert!(reaches(&c3, &target).await, "{c3_at:?}");
    let (summary, received) = ping.finish().await;
    assert_eq!(received, 40, "{summary}");
}

/// An operator puts a new credential in a host's directory by hand (`weft pki issue`), as
/// when the one it runs with can no longer be renewed: the agent presents it from its next
/// check, without a restart. Once the credential it started with has expired and every
/// controller has restarted, so that no connection made before is left, the host still
/// attaches containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_presents_a_credential_placed_in_its_directory_without_a_restart() {
    if !root_or_skip("an_agent_presents_a_credential_placed_in_its_directory_without_a_restart") {
        return;
    }
    let mut lab = Lab::new(1);
    lab.create_network("steady", false);
    let authority = weft_pki::Authority::load(&lab.tmp_path().join("pki/controller1")).unwrap();
    let dir = lab.tmp_path().join("pki/h1");
    lab.kill_agent(0);
    const SHORT: Duration = Duration::from_secs(15);
    let started_with = authority.issue_valid_for(weft_pki::Role::Node, "h1", &[], SHORT).unwrap();
    let expired_at = tokio::time::Instant::now() + SHORT;
    started_with.save(&dir).unwrap();
    // Renewing only once expired: nothing but the operator replaces this credential.
    lab.start_agent_with(0, &["--renew-within-days", "0", "--renew-check-ms", "300"]);
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let first = attach(&mut lab.agent(0).await, &c1, "steady", "c1").await;

    authority.issue(weft_pki::Role::Node, "h1", &[]).unwrap().save(&dir).unwrap();
    // The old certificate's expiry is the event waited for.
    tokio::time::sleep_until(expired_at + Duration::from_secs(1)).await;
    for i in 0..3 {
        lab.stop_controller(i);
    }
    for i in 0..3 {
        lab.start_controller(i);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut agent = lab.agent(0).await;
    let attached = loop {
        match agent.attach(attach_request(&c2, "steady", "c2")).await {
            Ok(answer) => break answer.into_inner().attachment.unwrap(),
            Err(status) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no attach after the old credential expired: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(attached.network_name, "steady", "{attached:?}");
    assert!(reaches(&c2, &ip_of(&first)).await, "c2 -> c1");
}

/// Where br_netfilter hands bridged frames to the IP hooks (hosts running Docker or
/// Kubernetes load it), a bridge in the host namespace would have every container flow of a
/// network walk the host's firewall and connection tracking on both hosts, for nothing: no NAT
/// or state is needed within a network. weft's bridges live in its switch namespace, with the
/// hooks off there, so that traffic never reaches the host's netfilter; the containers' DNS
/// goes untracked; what needs state keeps it (egress NAT), and isolation between networks
/// still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_within_a_network_never_enters_the_hosts_netfilter() {
    if !root_or_skip("traffic_within_a_network_never_enters_the_hosts_netfilter") {
        return;
    }
    let switches =
        ["/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables"];
    if !std::path::Path::new(switches[0]).exists() {
        eprintln!(
            "\n#### br_netfilter is not loaded on this machine: `modprobe br_netfilter` to run this test ####\n"
        );
        return;
    }
    let lab = Lab::new(2);
    for host in &lab.hosts {
        for switch in switches {
            host.ns.exec(&["sh", "-c", &format!("echo 1 > {switch}")]);
        }
    }
    lab.create(pb::CreateNetworkRequest { name: "web".into(), enable_ipv6: true, ..Default::default() });
    lab.create_network("other", false);
    let (c1, c2, stranger) = (Netns::new("c"), Netns::new("c"), Netns::new("c"));
    let (mut h1, mut h2) = (lab.agent(0).await, lab.agent(1).await);
    let e1 = attach(&mut h1, &c1, "web", "c1").await;
    let mut waiting = attach_request(&c2, "web", "c2");
    waiting.wait_everywhere = true;
    let e2 = h2.attach(waiting).await.unwrap().into_inner().attachment.unwrap();
    let other = attach(&mut h1, &stranger, "other", "stranger").await;
    let v6 = |a: &agent::Attachment| a.ipv6_address.split('/').next().unwrap().to_string();

    assert!(reaches(&c1, &ip_of(&e2)).await, "c1 -> c2 across hosts");
    assert!(reaches(&c2, &v6(&e1)).await, "c2 -> c1 over IPv6");
    let answer = c1.exec(&["dig", "+short", &format!("@{}", e1.ipv4_gateway), "c2"]);
    assert_eq!(answer.trim(), ip_of(&e2), "DNS answers untracked");
    assert!(reaches(&c1, OUTSIDE).await, "egress from web");
    assert!(blocked(&c1, &ip_of(&other)), "web reached the other network");

    let flows = |host: usize| {
        let ns = &lab.hosts[host].ns;
        ns.exec(&["conntrack", "-L", "-f", "ipv4"]) + &ns.exec(&["conntrack", "-L", "-f", "ipv6"])
    };
    let (c1_ip, c2_ip) = (ip_of(&e1), ip_of(&e2));
    for host in 0..2 {
        let table = flows(host);
        for (from, to) in [(&c1_ip, &c2_ip), (&c2_ip, &c1_ip), (&v6(&e2), &v6(&e1))] {
            assert!(
                !table.contains(&format!("src={from} dst={to} ")),
                "h{}: {from} -> {to} tracked:\n{table}",
                host + 1
            );
        }
        assert!(!table.contains("dport=53 "), "h{}: DNS tracked:\n{table}", host + 1);
    }
    let h1 = flows(0);
    assert!(h1.contains(&format!("src={c1_ip} dst={OUTSIDE} ")), "egress must stay tracked (NAT):\n{h1}");
    for host in &lab.hosts {
        for switch in switches {
            let value = host.ns.switch_exec(&["cat", switch]);
            assert_eq!(value.trim(), "0", "{switch} in {}'s switch namespace", host.name);
        }
    }
}

/// `ip netns del` on the switch namespace removes only its pin: the agent holds the namespace
/// open, so bridges, VXLAN devices and veths stay and traffic goes on; the agent pins it again
/// where operators and restarts look for it. Containers attached while the pin is gone, as it
/// goes and after it is back are all plumbed into that same namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_namespace_deleted_by_hand_is_pinned_again_and_traffic_goes_on() {
    if !root_or_skip("a_switch_namespace_deleted_by_hand_is_pinned_again_and_traffic_goes_on") {
        return;
    }
    let lab = Lab::new(2);
    let net = lab.create_network("amber", false);
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let mut h2 = lab.agent(1).await;
    attach(&mut h1, &c1, "amber", "c1").await;
    let e2 = attach(&mut h2, &c2, "amber", "c2").await;
    let target = ip_of(&e2);
    assert!(reaches(&c1, &target).await);

    let h1ns = &lab.hosts[0].ns;
    let switch = h1ns.switch_name();
    let bridge = format!("weftb{}", net.vni);
    let ports = || h1ns.switch_exec(&["ip", "-o", "link", "show", "master", &bridge]).lines().count();
    let ports_before = ports();
    let ping = BackgroundPing::start(&c1, &target, 40);
    // Let a few pings through before the pin goes, so the run spans the deletion.
    tokio::time::sleep(Duration::from_millis(300)).await;
    const RACING: usize = 8;
    let racing: Vec<Netns> = (0..RACING).map(|_| Netns::new("c")).collect();
    let attaches = attach_all(&h1, &racing, "amber", "r");
    weft_testbed::run("ip", &["netns", "del", &switch]);
    assert!(!h1ns.switch_path().exists(), "ip netns del removed the pin");
    // While the containers attach, the pin is deleted again each time the agent restores it.
    let attaching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let deleter = {
        let (attaching, pin, switch) = (attaching.clone(), h1ns.switch_path(), switch.clone());
        std::thread::spawn(move || {
            let mut deletions = 1;
            while attaching.load(std::sync::atomic::Ordering::Relaxed) {
                if pin.exists() && weft_testbed::output("ip", &["netns", "del", &switch]).status.success() {
                    deletions += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            deletions
        })
    };
    let mut attached = Vec::new();
    for (i, task) in attaches.into_iter().enumerate() {
        let reply = task.await.unwrap().unwrap_or_else(|e| panic!("r{i}, attached as the pin went: {e}"));
        attached.push(reply.into_inner().attachment.unwrap());
    }
    attaching.store(false, std::sync::atomic::Ordering::Relaxed);
    let deletions = deleter.join().unwrap();
    let vxlan = format!("weftx{}", net.vni);
    eventually("the switch namespace pinned again, devices and all", Duration::from_secs(5), || {
        h1ns.switch_path().exists() && h1ns.switch_try_exec(&["ip", "link", "show", &vxlan]).status.success()
    })
    .await;
    let (summary, received) = ping.finish().await;
    assert_eq!(received, 40, "{summary}");
    for (i, attachment) in attached.iter().enumerate() {
        let ip = ip_of(attachment);
        assert!(reaches(&racing[i], &target).await, "r{i} ({ip}), attached as the pin went");
    }
    eprintln!("the pin was deleted {deletions} times while {RACING} containers attached");
    let c3 = Netns::new("c");
    attach(&mut h1, &c3, "amber", "c3").await;
    assert!(reaches(&c3, &target).await, "a container attached after the pin came back");
    assert_eq!(ports(), ports_before + RACING + 1, "every new container's port is on the same bridge");
}
