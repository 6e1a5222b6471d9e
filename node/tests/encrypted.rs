//! Encrypted networks end to end: three hosts (namespaces) each running `weft-node` with
//! WireGuard (wireguard-go here: this machine has no kernel module), a capture on the underlay
//! to show what actually travels in the clear, key rotation under a running ping, and a host
//! leaving the cluster. Needs root; skips loudly otherwise.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lab::*;
use weft_api::agent;
use weft_api::pb;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_dataplane::wireguard::{Backend, DeviceState, Key};
use weft_testbed::{Netns, root_or_skip};

fn encrypted(name: &str) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        name: name.into(),
        options: BTreeMap::from([("encrypted".to_string(), "true".to_string())]),
        ..Default::default()
    }
}

fn nodes(lab: &Lab) -> Vec<pb::Node> {
    lab.with_controller(|channel| {
        Box::pin(async move {
            NodeServiceClient::new(channel)
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .nodes
        })
    })
}

fn device(lab: &Lab, host: usize) -> DeviceState {
    Backend::Userspace.get(&lab.hosts[host].wireguard_interface).unwrap()
}

/// `tcpdump` on a host's underlay interface, writing a capture file; stopped (and flushed)
/// on drop or by [`Capture::read`].
struct Capture {
    child: Option<Child>,
    file: std::path::PathBuf,
    /// tcpdump's standard error: "listening on", then its counts when it stops.
    stderr: Option<std::process::ChildStderr>,
}

impl Capture {
    async fn start(host: &Netns, file: std::path::PathBuf) -> Capture {
        let child = Command::new("ip")
            .args(["netns", "exec", &host.name, "tcpdump", "--immediate-mode", "-i", "ul0", "-n", "-U", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        let mut capture = Capture { child: Some(child), file, stderr: None };
        // tcpdump says "listening on" once the capture runs.
        let mut stderr = capture.child.as_mut().unwrap().stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            assert!(
                stderr.read(&mut byte).unwrap() == 1,
                "tcpdump ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.push(byte[0]);
        }
        capture.stderr = Some(stderr);
        capture
    }

    /// Stops the capture and decodes it (tcpdump decodes UDP port 4789 as VXLAN, with the
    /// inner packet).
    fn read(mut self) -> String {
        self.stop();
        let mut counts = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut counts);
        }
        let out = Command::new("tcpdump").args(["-r"]).arg(&self.file).arg("-n").output().unwrap();
        assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stdout.is_empty(), "empty capture; tcpdump said: {counts}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: tcpdump flushes and exits.
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `bytes` over TCP from `client` to `server_ip` inside the namespaces and returns what
/// the server received.
fn tcp_transfer(server: &Netns, server_ip: &str, client: &Netns, bytes: usize) -> usize {
    let ip: std::net::IpAddr = server_ip.parse().unwrap();
    let listener = server.run_in(|| std::net::TcpListener::bind((ip, 5001)).unwrap());
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        received.len()
    });
    client.run_in(|| {
        let mut stream =
            std::net::TcpStream::connect_timeout(&(ip, 5001).into(), Duration::from_secs(5)).unwrap();
        stream.write_all(&vec![0x5a; bytes]).unwrap();
    });
    receiver.join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_network_crosses_hosts_inside_wireguard_only() {
    if !root_or_skip("an_encrypted_network_crosses_hosts_inside_wireguard_only") {
        return;
    }
    let mut lab = Lab::new(3);
    let secret = lab.create(encrypted("secret"));
    let plain = lab.create_network("plain", false);
    assert!(secret.encrypted && !plain.encrypted);
    let (mut h1, mut h2, mut h3) = (lab.agent(0).await, lab.agent(1).await, lab.agent(2).await);
    let (s1, s2, s3, p1, p2) =
        (Netns::new("c"), Netns::new("c"), Netns::new("c"), Netns::new("c"), Netns::new("c"));
    let s1_at = attach(&mut h1, &s1, "secret", "s1").await;
    let s2_at = attach(&mut h2, &s2, "secret", "s2").await;
    let s3_at = attach(&mut h3, &s3, "secret", "s3").await;
    let p1_at = attach(&mut h1, &p1, "plain", "p1").await;
    let p2_at = attach(&mut h2, &p2, "plain", "p2").await;
    assert_eq!(s1_at.mtu, 1500 - 60 - 50, "room for WireGuard and VXLAN");
    assert_eq!(p1_at.mtu, 1500 - 50);

    // Every host runs wireguard-go, says so, and has the other two as peers.
    let listed = nodes(&lab);
    assert_eq!(listed.len(), 3);
    for node in &listed {
        assert_eq!(node.wireguard_backend, "userspace (wireguard-go)", "{node:?}");
        assert!(Key::from_base64(&node.wireguard_public_key).is_some(), "{node:?}");
    }
    eventually("every host has two peers", Duration::from_secs(10), || {
        (0..3).all(|h| device(&lab, h).peers.len() == 2)
    })
    .await;

    let (s2_ip, s3_ip, p2_ip) = (ip_of(&s2_at), ip_of(&s3_at), ip_of(&p2_at));
    let capture = Capture::start(&lab.hosts[0].ns, lab.tmp_path().join("h1.pcap")).await;
    assert!(reaches(&s1, &s2_ip).await, "s1 cannot reach s2 over the encrypted network");
    assert!(reaches(&s1, &s3_ip).await, "s1 cannot reach s3 over the encrypted network");
    assert!(reaches(&s3, &ip_of(&s1_at)).await, "s3 cannot reach s1");
    assert!(reaches(&p1, &p2_ip).await, "the unencrypted network alongside does not work");
    // Full-size segments: the MTU leaves room for both encapsulations.
    assert_eq!(tcp_transfer(&s2, &s2_ip, &s1, 4 << 20), 4 << 20);
    let seen = capture.read();

    // The plain network's VXLAN is on the wire (so the capture sees what crosses), the
    // encrypted one's never is, nor its containers' addresses; WireGuard is.
    assert!(seen.contains(&format!("vni {}", plain.vni)), "capture missed the plain network:\n{seen}");
    assert!(seen.contains(&p2_ip), "{seen}");
    assert!(
        !seen.contains(&format!("vni {}", secret.vni)),
        "cleartext VXLAN of the encrypted network:\n{seen}"
    );
    for ip in [&ip_of(&s1_at), &s2_ip, &s3_ip] {
        assert!(!seen.contains(ip.as_str()), "encrypted network address {ip} in the clear:\n{seen}");
    }
    assert!(seen.lines().any(|l| l.contains(".51820: UDP")), "no WireGuard traffic on the underlay:\n{seen}");

    // Fail closed: with h1's agent stopped, point s2's forwarding entry at h2's underlay (as a
    // bug would). The ping fails; nothing of that network leaves in the clear.
    lab.kill_agent(0);
    let vxlan = format!("weftx{}", secret.vni);
    lab.hosts[0].ns.switch_exec(&[
        "bridge",
        "fdb",
        "replace",
        &s2_at.mac_address,
        "dev",
        &vxlan,
        "dst",
        "192.168.77.2",
        "self",
        "permanent",
    ]);
    let capture = Capture::start(&lab.hosts[0].ns, lab.tmp_path().join("h1-closed.pcap")).await;
    assert!(blocked(&s1, &s2_ip), "traffic took the cleartext path");
    let seen = capture.read();
    assert!(!seen.contains(&format!("vni {}", secret.vni)), "cleartext VXLAN left the host:\n{seen}");
    // The agent repairs the entry when it is back.
    lab.start_agent(0);
    assert!(reaches(&s1, &s2_ip).await, "not repaired after the agent came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_a_running_ping_and_a_removed_host_loses_its_peers() {
    if !root_or_skip("key_rotation_keeps_a_running_ping_and_a_removed_host_loses_its_peers") {
        return;
    }
    let mut lab = Lab::new(3);
    lab.create(encrypted("secret"));
    let (mut h1, mut h2, mut h3) = (lab.agent(0).await, lab.agent(1).await, lab.agent(2).await);
    let (s1, s2, s3) = (Netns::new("c"), Netns::new("c"), Netns::new("c"));
    attach(&mut h1, &s1, "secret", "s1").await;
    let s2_at = attach(&mut h2, &s2, "secret", "s2").await;
    attach(&mut h3, &s3, "secret", "s3").await;
    let s2_ip = ip_of(&s2_at);
    assert!(reaches(&s1, &s2_ip).await);

    // 100 pings over 5 s; h2 rotates its key one second in.
    let ping = BackgroundPing::start(&s1, &s2_ip, 100);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_key = device(&lab, 1).public_key.unwrap();
    let rotated = h2.rotate_key(agent::RotateKeyRequest {}).await.unwrap().into_inner();
    let new_key = Key::from_base64(&rotated.public_key).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(device(&lab, 1).public_key, Some(new_key), "h2's device does not use the new key");
    eventually("h1 and h3 switch to h2's new key", Duration::from_secs(10), || {
        [0, 2].into_iter().all(|h| {
            let keys: Vec<_> = device(&lab, h).peers.iter().filter_map(|p| p.public_key).collect();
            keys.contains(&new_key) && !keys.contains(&old_key)
        })
    })
    .await;
    let (summary, received) = ping.finish().await;
    // A handshake's worth of loss at most: 20 pings is one second.
    assert!(received >= 80, "only {received}/100 pings answered across the rotation:\n{summary}");
    let key_file = std::fs::read_to_string(lab.hosts[1].state.join("wireguard.key")).unwrap();
    assert_eq!(
        Key::from_base64(key_file.trim()).map(|k| k.public()),
        Some(new_key),
        "the new key is not on disk"
    );

    // h3 leaves the cluster: both others drop it from their peers.
    let h3_key = device(&lab, 2).public_key.unwrap();
    lab.kill_agent(2);
    lab.with_controller(|channel| {
        Box::pin(async move {
            NodeServiceClient::new(channel)
                .remove_node(pb::RemoveNodeRequest { name: "h3".into(), ..Default::default() })
                .await
                .unwrap();
        })
    });
    eventually("h1 and h2 drop h3 from their peers", Duration::from_secs(10), || {
        [0, 1].into_iter().all(|h| device(&lab, h).peers.iter().all(|p| p.public_key != Some(h3_key)))
    })
    .await;
    assert!(reaches(&s1, &s2_ip).await, "h1 and h2 lost each other when h3 left");
}
