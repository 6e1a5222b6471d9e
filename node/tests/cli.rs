//! The `weft` binary with real node agents: connecting containers on two hosts, what
//! `inspect`, `endpoint ls` and `node ls` show across the cluster, and the errors a user
//! meets. Runs `weft` inside a host's namespace as an operator on that host would. Needs
//! root; skips loudly otherwise.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::process::Output;

use lab::*;
use weft_testbed::{Netns, root_or_skip};

fn weft(lab: &Lab, host: usize, args: &[&str]) -> Output {
    lab.weft_cli(host, args)
}

fn ok(lab: &Lab, host: usize, args: &[&str]) -> String {
    let out = weft(lab, host, args);
    assert!(out.status.success(), "weft {args:?} on h{}: {}", host + 1, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(lab: &Lab, host: usize, args: &[&str], words: &[&str]) {
    let out = weft(lab, host, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weft {args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "weft {args:?}: {word:?} missing from {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_connect_through_the_cli_and_show_up_cluster_wide() {
    if !root_or_skip("containers_connect_through_the_cli_and_show_up_cluster_wide") {
        return;
    }
    let lab = Lab::new(2);
    let _ = lab.agent(0).await;
    let _ = lab.agent(1).await;
    ok(&lab, 0, &["network", "create", "--subnet", "10.60.0.0/24", "web"]);
    ok(&lab, 0, &["network", "create", "--subnet", "10.61.0.0/30", "tiny"]);
    let (a, b, c) = (Netns::new("c"), Netns::new("c"), Netns::new("c"));

    ok(
        &lab,
        0,
        &["network", "connect", "--alias", "frontend", "-p", "8080:80", "-p", "127.0.0.1:5353:53/udp", "-P"]
            .into_iter()
            .chain(["--expose", "81", "web", "a", "--netns", &a.name])
            .collect::<Vec<_>>(),
    );
    ok(&lab, 1, &["network", "connect", "--ip", "10.60.0.50", "--wait", "web", "b", "--netns", &b.path()]);
    assert!(a.pings("10.60.0.50"), "a cannot reach b after a waiting connect");
    // The name is resolvable: `ip netns exec` shows the resolv.conf weft wrote.
    let answer = b.exec(&["dig", "+short", "+time=2", "+tries=2", "frontend"]);
    assert!(answer.trim().starts_with("10.60.0."), "{answer}");

    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&lab, 1, &["network", "inspect", "web"])).unwrap();
    let containers = inspected[0]["Containers"].as_object().unwrap();
    assert_eq!(containers.len(), 2, "{inspected}");
    assert_eq!(containers["a"]["Node"], "h1");
    assert_eq!(containers["b"]["Node"], "h2");
    assert_eq!(containers["b"]["IPv4Address"], "10.60.0.50/24");
    assert_eq!(containers["a"]["Aliases"][0], "frontend");
    // Docker's Ports shape: container port/protocol → host bindings.
    let ports = &containers["a"]["Ports"];
    assert_eq!(ports["80/tcp"][0]["HostIp"], "0.0.0.0", "{ports}");
    assert_eq!(ports["80/tcp"][0]["HostPort"], "8080", "{ports}");
    assert_eq!(ports["53/udp"][0]["HostIp"], "127.0.0.1", "{ports}");
    let random: u32 = ports["81/tcp"][0]["HostPort"].as_str().unwrap().parse().unwrap();
    let listed = ok(&lab, 0, &["endpoint", "ls", "--network", "web", "--format", "{{.Name}} {{.Ports}}"]);
    assert!(
        listed.contains(&format!("a 0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp, 0.0.0.0:{random}->81/tcp")),
        "{listed}"
    );
    // Bad specs stop at the CLI with one line naming the rule; a clash names the holder.
    fails(
        &lab,
        1,
        &["network", "connect", "-p", "8080:80/icmp", "web", "x", "--netns", &c.name],
        &["tcp, udp or sctp"],
    );
    fails(&lab, 1, &["network", "connect", "-p", "0:80", "web", "x", "--netns", &c.name], &["1 to 65535"]);
    fails(
        &lab,
        0,
        &["network", "connect", "-p", "8080:80", "tiny", "x", "--netns", &c.name],
        &["container \"a\""],
    );

    let endpoints =
        ok(&lab, 0, &["endpoint", "ls", "--network", "web", "--format", "{{.Node}} {{.Name}} {{.IPv4}}"]);
    assert!(!endpoints.contains("x "), "a refused connect left an endpoint: {endpoints}");
    let mut lines: Vec<&str> = endpoints.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["h1 a 10.60.0.2/24", "h2 b 10.60.0.50/24"]);
    let nodes = ok(&lab, 0, &["node", "ls"]);
    assert!(
        nodes.lines().filter(|l| l.contains("userspace (wireguard-go)") && l.contains(" up ")).count() == 2,
        "{nodes}"
    );

    // What a user gets wrong.
    fails(&lab, 0, &["network", "rm", "web"], &["web", "endpoint"]);
    fails(
        &lab,
        0,
        &["network", "connect", "web", "ghost", "--netns", "/run/netns/does-not-exist"],
        &["does-not-exist"],
    );
    fails(&lab, 0, &["network", "connect", "nowhere", "c", "--netns", &c.name], &["nowhere"]);
    fails(&lab, 0, &["network", "connect", "web", "a", "--netns", &a.name], &["already"]);
    ok(&lab, 0, &["network", "connect", "tiny", "c", "--netns", &c.name]);
    fails(&lab, 1, &["network", "connect", "tiny", "b", "--netns", &b.name], &["tiny"]);
    let out = weft(&lab, 1, &["network", "connect", "tiny", "b", "--netns", &b.name]);
    assert!(
        String::from_utf8_lossy(&out.stderr).to_lowercase().contains("no free"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Disconnecting everything lets the network go.
    ok(&lab, 0, &["network", "disconnect", "web", "a"]);
    ok(&lab, 1, &["network", "disconnect", "web", "b"]);
    fails(&lab, 1, &["network", "disconnect", "web", "b"], &["b"]);
    assert_eq!(ok(&lab, 0, &["network", "rm", "web"]), "web\n");

    // A new WireGuard key for h2, through its agent.
    let key = ok(&lab, 1, &["node", "rotate-key"]);
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&lab, 0, &["node", "inspect", "h2"])).unwrap();
    assert_eq!(inspected[0]["WireGuard"]["PublicKey"], key.trim());
}
