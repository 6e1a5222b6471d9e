//! Published ports end to end: containers' ports reached through their host's addresses from
//! another machine, from other containers and from the host itself, with the client's own
//! address; refusals that leave nothing behind; drift and agent restarts. Hosts are network
//! namespaces on a shared underlay; servers are small TCP and UDP responders inside the
//! containers. Needs root; skips loudly otherwise.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use lab::*;
use tonic::Code;
use weft_api::agent;
use weft_api::pb;
use weft_testbed::{Netns, root_or_skip};

const H1: &str = "192.168.77.1";

/// TCP and UDP responders on `port` inside `container`: each line (or datagram) is answered
/// with `"<tag> <the client's address>"`. They live as long as the test process.
fn serve(container: &Netns, port: u16, tag: &str) {
    let (tcp, udp) = container.run_in(|| {
        (TcpListener::bind(("0.0.0.0", port)).unwrap(), UdpSocket::bind(("0.0.0.0", port)).unwrap())
    });
    answer_lines(tcp, tag);
    let tag = tag.to_string();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 512];
        while let Ok((_, peer)) = udp.recv_from(&mut buffer) {
            let _ = udp.send_to(format!("{tag} {}", peer.ip()).as_bytes(), peer);
        }
    });
}

/// One line over a new TCP connection from inside `from`: the responder's answer, or `None`.
fn ask_tcp(from: &Netns, address: &str) -> Option<String> {
    let address: SocketAddr = address.parse().unwrap();
    from.run_in(|| {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"?\n").ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        (!line.is_empty()).then(|| line.trim().to_string())
    })
}

/// One datagram from inside `from` (from `local_port`, 0 for any): the answer, or `None`.
fn ask_udp(from: &Netns, address: &str, local_port: u16) -> Option<String> {
    from.run_in(|| {
        let socket = UdpSocket::bind(("0.0.0.0", local_port)).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        socket.send_to(b"?", address).ok()?;
        let mut buffer = [0u8; 512];
        let (n, _) = socket.recv_from(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..n]).to_string())
    })
}

/// Asks until an answer comes (rules on another host land within the convergence bound).
async fn answer(what: &str, mut ask: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(answer) = ask() {
            return answer;
        }
        assert!(Instant::now() < deadline, "{what}: no answer within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn publish(specs: &[&str]) -> Vec<agent::PortRequest> {
    specs.iter().map(|text| weft_api::agent_client::port_request(&text.parse().unwrap())).collect()
}

fn publishing(container: &Netns, network: &str, name: &str, specs: &[&str]) -> agent::AttachRequest {
    agent::AttachRequest { publish: publish(specs), ..attach_request(container, network, name) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_reach_containers_from_everywhere_with_the_clients_address() {
    if !root_or_skip("published_ports_reach_containers_from_everywhere_with_the_clients_address") {
        return;
    }
    reached_from_everywhere(false).await;
}

/// The same where br_netfilter hands bridged frames to the IP hooks, as on hosts that run
/// Docker or Kubernetes: hairpin paths differ there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_reach_containers_from_everywhere_under_br_netfilter() {
    if !root_or_skip("published_ports_reach_containers_from_everywhere_under_br_netfilter") {
        return;
    }
    if !std::path::Path::new(BR_NETFILTER).exists() {
        eprintln!(
            "\n#### br_netfilter is not loaded on this machine: `modprobe br_netfilter` to run this test ####\n"
        );
        return;
    }
    reached_from_everywhere(true).await;
}

const BR_NETFILTER: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

async fn reached_from_everywhere(br_netfilter: bool) {
    let lab = Lab::new(2);
    // Per network namespace: each host gets the setting under test.
    for host in &lab.hosts {
        if std::path::Path::new(BR_NETFILTER).exists() {
            let value = if br_netfilter { "1" } else { "0" };
            host.ns.exec(&["sh", "-c", &format!("echo {value} > {BR_NETFILTER}")]);
        }
    }
    lab.create_network("web", false);
    lab.create_network("other", false);
    let (mut h1, mut h2) = (lab.agent(0).await, lab.agent(1).await);
    let (s1, peer, stranger, remote) = (Netns::new("c"), Netns::new("c"), Netns::new("c"), Netns::new("c"));
    serve(&s1, 80, "s1");
    serve(&s1, 81, "s1");
    let mut request = publishing(&s1, "web", "s1", &["8080:80", "8080:80/udp"]);
    request.publish_all = true;
    request.expose = vec![agent::ExposedPort { protocol: "tcp".into(), port: 81, port_end: 0 }];
    let s1_web = h1.attach(request).await.unwrap().into_inner().attachment.unwrap();
    let random = s1_web.ports.iter().find(|p| p.container_port == 81).expect("-P published 81").host_port;
    assert!((32768..=60999).contains(&random), "a random port from the ephemeral range: {random}");
    let peer_web = attach(&mut h1, &peer, "web", "peer").await;
    attach(&mut h1, &stranger, "other", "stranger").await;
    attach(&mut h2, &remote, "web", "remote").await;
    let at = |port: u32| format!("{H1}:{port}");

    // From outside the cluster, TCP and UDP: the container sees the client's own address.
    assert_eq!(answer("outside, tcp", || ask_tcp(&lab.outside, &at(8080))).await, format!("s1 {OUTSIDE}"));
    assert_eq!(answer("outside, udp", || ask_udp(&lab.outside, &at(8080), 0)).await, format!("s1 {OUTSIDE}"));
    assert_eq!(answer("outside, -P", || ask_tcp(&lab.outside, &at(random))).await, format!("s1 {OUTSIDE}"));
    // From another host, and from the host itself (its own address and 127.0.0.1).
    let h2_ns = &lab.hosts[1].ns;
    assert_eq!(answer("host h2", || ask_tcp(h2_ns, &at(8080))).await, "s1 192.168.77.2");
    let h1_ns = &lab.hosts[0].ns;
    assert_eq!(answer("host h1 itself", || ask_tcp(h1_ns, &at(8080))).await, format!("s1 {H1}"));
    let gateway = s1_web.ipv4_gateway.clone();
    assert_eq!(
        answer("h1's 127.0.0.1", || ask_tcp(h1_ns, "127.0.0.1:8080")).await,
        format!("s1 {gateway}"),
        "127.0.0.1 reaches the container, which answers the bridge's address"
    );
    assert_eq!(
        answer("h1's 127.0.0.1, udp", || ask_udp(h1_ns, "127.0.0.1:8080", 0)).await,
        format!("s1 {gateway}")
    );
    // Hairpin: a neighbour on the same network, the owner itself, a container of another
    // network, and a container of the same network on another host.
    assert_eq!(answer("hairpin", || ask_tcp(&peer, &at(8080))).await, format!("s1 {gateway}"));
    assert_eq!(answer("self hairpin", || ask_tcp(&s1, &at(8080))).await, format!("s1 {gateway}"));
    // Another network's container leaves its own network through the egress masquerade, as
    // in Docker: it arrives as the publishing network's gateway.
    assert_eq!(answer("another network", || ask_tcp(&stranger, &at(8080))).await, format!("s1 {gateway}"));
    assert_eq!(answer("remote container", || ask_tcp(&remote, &at(8080))).await, "s1 192.168.77.2");
    assert!(ask_tcp(&peer, &format!("{}:8080", ip_of(&peer_web))).is_none(), "only s1 publishes 8080");

    // The registry lists them, in the attach's answer and to any client.
    let listed = lab.endpoints();
    let s1_listed = listed.iter().find(|e| e.container_name == "s1").unwrap();
    let mut shown: Vec<String> = s1_listed
        .ports
        .iter()
        .map(|p| format!("{}:{}/{}", p.host_port, p.container_port, p.protocol))
        .collect();
    shown.sort();
    assert_eq!(shown, [format!("{random}:81/tcp"), "8080:80/tcp".into(), "8080:80/udp".into()]);

    // Unpublished with the container: the port closes, and a new container on the same port
    // gets the next datagrams of the same client flow (its old conntrack entry is gone).
    assert_eq!(
        answer("flow to s1", || ask_udp(&lab.outside, &at(8080), 40000)).await,
        format!("s1 {OUTSIDE}")
    );
    h1.detach(agent::DetachRequest { network: "web".into(), container_id: s1_web.container_id.clone() })
        .await
        .unwrap();
    let s3 = Netns::new("c");
    serve(&s3, 80, "s3");
    h1.attach(publishing(&s3, "web", "s3", &["8080:80/udp"])).await.unwrap();
    assert_eq!(
        answer("same flow, new container", || ask_udp(&lab.outside, &at(8080), 40000)).await,
        format!("s3 {OUTSIDE}")
    );
    assert!(ask_tcp(&lab.outside, &at(8080)).is_none(), "8080/tcp went with s1");
    assert!(ask_tcp(&lab.outside, &at(random)).is_none(), "the random port went with s1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clashes_bad_specs_and_internal_networks_are_refused_leaving_nothing_behind() {
    if !root_or_skip("clashes_bad_specs_and_internal_networks_are_refused_leaving_nothing_behind") {
        return;
    }
    let lab = Lab::new(1);
    lab.create_network("web", false);
    lab.create_network("other", false);
    lab.create_network("closed", true);
    let mut h1 = lab.agent(0).await;
    let holder = Netns::new("c");
    h1.attach(publishing(&holder, "web", "holder", &["8080:80"])).await.unwrap();
    // A program on the host holds 9090.
    let host_ns = &lab.hosts[0].ns;
    let _program = host_ns.run_in(|| TcpListener::bind("0.0.0.0:9090").unwrap());
    let rules_before = host_ns.exec(&["nft", "list", "chain", "inet", "weft", "published"]);

    let refused = Netns::new("c");
    let cases: [(&str, &[&str], Code, &str); 8] = [
        ("web", &["8080:81"], Code::AlreadyExists, "published by container \"holder\""),
        ("other", &["8080:80"], Code::AlreadyExists, "published by container \"holder\""),
        ("web", &["9090:80"], Code::AlreadyExists, "by a program outside weft"),
        ("web", &["10.99.99.99:8081:80"], Code::InvalidArgument, "not an address of host"),
        ("web", &["8081:80", "8081:81"], Code::InvalidArgument, "asked for twice"),
        ("web", &["[::1]:8081:80"], Code::InvalidArgument, "no IPv6 subnet"),
        ("closed", &["8081:80"], Code::FailedPrecondition, "internal"),
        ("web", &["8085:80", "8080:80"], Code::AlreadyExists, "holder"),
    ];
    for (network, specs, code, expect) in cases {
        let err = h1.attach(publishing(&refused, network, "refused", specs)).await.unwrap_err();
        assert_eq!(err.code(), code, "{specs:?}: {err:?}");
        assert!(err.message().contains(expect), "{specs:?}: {}", err.message());
    }
    // Bad fields of the attach API itself.
    for (port, expect) in [
        (agent::PortRequest { container_port: 0, ..Default::default() }, "1 to 65535"),
        (agent::PortRequest { host_port: 70_000, container_port: 80, ..Default::default() }, "1 to 65535"),
        (
            agent::PortRequest { protocol: "icmp".into(), container_port: 80, ..Default::default() },
            "tcp, udp or sctp",
        ),
    ] {
        let request =
            agent::AttachRequest { publish: vec![port], ..attach_request(&refused, "web", "refused") };
        let err = h1.attach(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(expect), "{}", err.message());
    }
    // Nothing half-made: no endpoint, no attachment, no interface, no rule.
    assert!(lab.endpoints().iter().all(|e| e.container_name != "refused"));
    let listed = h1.list(agent::ListRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.attachments.len(), 1, "{listed:?}");
    assert!(!refused.exec(&["ip", "-o", "link"]).contains("eth0"), "an interface was left behind");
    assert_eq!(host_ns.exec(&["nft", "list", "chain", "inet", "weft", "published"]), rules_before);

    // Many attaches at once with -P: every container gets its own host port.
    let containers: Vec<Netns> = (0..12).map(|_| Netns::new("c")).collect();
    let attaches = containers.iter().enumerate().map(|(i, c)| {
        let mut client = h1.clone();
        let mut request = attach_request(c, "web", &format!("p{i}"));
        request.publish_all = true;
        request.expose = vec![agent::ExposedPort { protocol: "tcp".into(), port: 80, port_end: 0 }];
        async move { client.attach(request).await.unwrap().into_inner().attachment.unwrap() }
    });
    let attached = futures::future::join_all(attaches).await;
    let mut ports: Vec<u32> = attached.iter().map(|a| a.ports[0].host_port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), containers.len(), "random ports collided: {attached:?}");

    // A container that dies without a detach gives its ports back once the agent notices.
    drop(holder);
    let taker = Netns::new("c");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match h1.attach(publishing(&taker, "other", "taker", &["8080:80"])).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::AlreadyExists && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("8080 was not released with its vanished container: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_deleted_rules_come_back_and_an_agent_restart_keeps_flows() {
    if !root_or_skip("hand_deleted_rules_come_back_and_an_agent_restart_keeps_flows") {
        return;
    }
    let mut lab = Lab::new(1);
    lab.create_network("web", false);
    let mut h1 = lab.agent(0).await;
    let s1 = Netns::new("c");
    serve(&s1, 80, "s1");
    h1.attach(publishing(&s1, "web", "s1", &["8080:80"])).await.unwrap();
    let at = format!("{H1}:8080");
    answer("published", || ask_tcp(&lab.outside, &at)).await;

    // Drift: the rules removed by hand are back within a resync.
    let host_ns = &lab.hosts[0].ns;
    host_ns.exec(&["nft", "flush", "chain", "inet", "weft", "published"]);
    assert!(ask_tcp(&lab.outside, &at).is_none(), "the flush should close the port");
    answer("restored after drift", || ask_tcp(&lab.outside, &at)).await;

    // An established connection carries on through an agent's kill -9 and restart; new
    // connections work while it is down and after.
    let address: SocketAddr = at.parse().unwrap();
    let mut flow =
        lab.outside.run_in(|| TcpStream::connect_timeout(&address, Duration::from_secs(2)).unwrap());
    flow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reader = BufReader::new(flow.try_clone().unwrap());
    let mut exchange = |flow: &mut TcpStream| {
        flow.write_all(b"?\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(exchange(&mut flow), format!("s1 {OUTSIDE}"));
    lab.kill_agent(0);
    assert_eq!(exchange(&mut flow), format!("s1 {OUTSIDE}"), "with the agent down");
    assert!(ask_tcp(&lab.outside, &at).is_some(), "a new connection with the agent down");
    lab.start_agent(0);
    lab.agent(0).await;
    for _ in 0..20 {
        assert_eq!(exchange(&mut flow), format!("s1 {OUTSIDE}"), "after the restart");
        assert!(ask_tcp(&lab.outside, &at).is_some(), "a new connection after the restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_networks_publish_on_ipv6_and_a_named_host_address_only() {
    if !root_or_skip("dual_stack_networks_publish_on_ipv6_and_a_named_host_address_only") {
        return;
    }
    let lab = Lab::new(1);
    lab.create(pb::CreateNetworkRequest { name: "both".into(), enable_ipv6: true, ..Default::default() });
    // The underlay gets IPv6 too: the host fd77::1, the outside machine fd77::fe.
    let host_ns = &lab.hosts[0].ns;
    host_ns.exec(&["ip", "-6", "addr", "add", "fd77::1/64", "dev", "ul0", "nodad"]);
    lab.outside.exec(&["ip", "-6", "addr", "add", "fd77::fe/64", "dev", "ul0", "nodad"]);
    let mut h1 = lab.agent(0).await;
    let s1 = Netns::new("c");
    serve_v6(&s1, 80, "s1");
    let attached = h1
        .attach(publishing(&s1, "both", "s1", &["8080:80", "192.168.77.1:8090:80", "[fd77::1]:8091:80"]))
        .await
        .unwrap()
        .into_inner()
        .attachment
        .unwrap();
    assert!(!attached.ipv6_address.is_empty(), "{attached:?}");

    // Every address of the host, both families: the container sees the client's own address.
    assert_eq!(answer("v4", || ask_tcp(&lab.outside, &format!("{H1}:8080"))).await, format!("s1 {OUTSIDE}"));
    assert_eq!(answer("v6", || ask_tcp(&lab.outside, "[fd77::1]:8080")).await, "s1 fd77::fe");
    // A port published on one address answers there only.
    assert_eq!(
        answer("named v4", || ask_tcp(&lab.outside, &format!("{H1}:8090"))).await,
        format!("s1 {OUTSIDE}")
    );
    assert!(ask_tcp(host_ns, "127.0.0.1:8090").is_none(), "8090 is published on 192.168.77.1 only");
    assert_eq!(answer("named v6", || ask_tcp(&lab.outside, "[fd77::1]:8091")).await, "s1 fd77::fe");
    assert!(ask_tcp(&lab.outside, &format!("{H1}:8091")).is_none(), "8091 is published on fd77::1 only");
}

/// A TCP responder on `port` for both families inside `container` (IPv6-only socket beside
/// the IPv4 one [`serve`] opens).
fn serve_v6(container: &Netns, port: u16, tag: &str) {
    serve(container, port, tag);
    let listener = container.run_in(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        socket.set_only_v6(true).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into()).unwrap();
        socket.listen(128).unwrap();
        TcpListener::from(socket)
    });
    answer_lines(listener, tag);
}

/// Answers each line on each connection with `"<tag> <the client's address>"`, on threads of
/// its own for the life of the test process.
fn answer_lines(listener: TcpListener, tag: &str) {
    let tag = tag.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tag = tag.clone();
            std::thread::spawn(move || {
                let peer = stream.peer_addr().unwrap().ip();
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    if line.is_err() || writeln!(writer, "{tag} {peer}").is_err() {
                        break;
                    }
                }
            });
        }
    });
}
