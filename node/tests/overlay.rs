//! The data plane end to end: a controller and one `weft-node` per host, every host a network
//! namespace on a shared underlay, containers further namespaces. Traffic never leaves the
//! namespaces built here; everything is torn down when a test ends, failed or not.
//! Needs root; skips loudly otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use weft_api::agent;
use weft_api::agent::agent_service_client::AgentServiceClient;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_testbed::{Netns, Underlay, root_or_skip};

type Boxed<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

const NODE: &str = env!("CARGO_BIN_EXE_weft-node");
const UNDERLAY: &str = "192.168.77";
const OUTSIDE: &str = "192.168.77.254";
const CONTROLLER: &str = "192.168.77.250:7001";

/// `weft-controller`, built next to `weft-node` when the workspace is built.
fn controller_binary() -> PathBuf {
    let path = Path::new(NODE).with_file_name("weft-controller");
    assert!(
        path.exists(),
        "{} is missing: build the whole workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

struct Host {
    ns: Netns,
    name: String,
    socket: PathBuf,
    state: PathBuf,
    agent: Option<Child>,
}

/// Hosts on an underlay with an "outside" namespace standing in for the internet (it has no
/// route back to container subnets, so a reply reaches a container only through NAT), and a
/// controller in a namespace of its own.
struct Lab {
    hosts: Vec<Host>,
    controller: Option<Child>,
    ctl: Netns,
    outside: Netns,
    _underlay: Underlay,
    tmp: tempfile::TempDir,
}

impl Lab {
    fn new(hosts: usize) -> Lab {
        let underlay = Underlay::new(UNDERLAY);
        let tmp = tempfile::tempdir().unwrap();
        let outside = Netns::new("o");
        underlay.join(&outside, 254, 1500);
        let ctl = Netns::new("k");
        underlay.join(&ctl, 250, 1500);
        let hosts = (1..=hosts)
            .map(|i| {
                let ns = Netns::new("h");
                underlay.join(&ns, u8::try_from(i).unwrap(), 1500);
                ns.exec(&["ip", "route", "add", "default", "via", OUTSIDE]);
                Host {
                    ns,
                    name: format!("h{i}"),
                    socket: tmp.path().join(format!("h{i}.sock")),
                    state: tmp.path().join(format!("h{i}")),
                    agent: None,
                }
            })
            .collect();
        let mut lab = Lab { hosts, controller: None, ctl, outside, _underlay: underlay, tmp };
        lab.start_controller();
        for i in 0..lab.hosts.len() {
            lab.start_agent(i);
        }
        lab
    }

    fn start_controller(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ctl.name])
            .arg(controller_binary())
            .args(["--id", "1", "--listen", CONTROLLER, "--data-dir"])
            .arg(self.tmp.path().join("controller"))
            .env("RUST_LOG", "warn,openraft=off")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.controller = Some(child);
    }

    fn stop_controller(&mut self) {
        if let Some(mut child) = self.controller.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start_agent(&mut self, i: usize) {
        let host = &mut self.hosts[i];
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns.name, NODE, "--controllers", CONTROLLER, "--name", &host.name])
            .arg("--socket")
            .arg(&host.socket)
            .arg("--state-dir")
            .arg(&host.state)
            .args(["--resync-ms", "500", "--heartbeat-ms", "300", "--request-timeout-ms", "3000"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        host.agent = Some(child);
    }

    /// `kill -9` of a host's agent: its kernel state stays as it was.
    fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i].agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn agent(&self, i: usize) -> AgentServiceClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = weft_node::client::connect(&self.hosts[i].socket).await {
                if client.list(agent::ListRequest {}).await.is_ok() {
                    return client;
                }
            }
            assert!(Instant::now() < deadline, "agent on {} did not come up", self.hosts[i].name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a request against the controller from inside its namespace.
    fn networks<T: Send>(&self, call: impl FnOnce(NetworkServiceClient<Channel>) -> Boxed<T> + Send) -> T {
        tokio::task::block_in_place(|| {
            self.ctl.run_in(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    // Connected, and past its first configuration (writes are refused before).
                    let channel = loop {
                        let problem = match Channel::from_shared(format!("http://{CONTROLLER}"))
                            .unwrap()
                            .connect()
                            .await
                        {
                            Ok(channel) => {
                                let status = ClusterServiceClient::new(channel.clone())
                                    .status(pb::StatusRequest {})
                                    .await;
                                match status {
                                    Ok(s) if !s.get_ref().cluster_id.is_empty() => break channel,
                                    Ok(_) => "not configured yet".to_string(),
                                    Err(e) => e.to_string(),
                                }
                            }
                            Err(e) => e.to_string(),
                        };
                        assert!(Instant::now() < deadline, "controller not ready: {problem}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    };
                    call(NetworkServiceClient::new(channel)).await
                })
            })
        })
    }

    fn create_network(&self, name: &str, internal: bool) -> pb::Network {
        let request = pb::CreateNetworkRequest { name: name.into(), internal, ..Default::default() };
        self.networks(move |mut client| {
            Box::pin(async move { client.create_network(request).await.unwrap().into_inner() })
        })
    }

    fn remove_network(&self, name: &str) {
        let request = pb::RemoveNetworkRequest { network: name.into(), force: false };
        self.networks(move |mut client| {
            Box::pin(async move { client.remove_network(request).await.unwrap() })
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.kill_agent(i);
        }
        self.stop_controller();
        // The namespaces (and everything in them) go as their guards drop.
    }
}

fn attach_request(container: &Netns, network: &str, name: &str) -> agent::AttachRequest {
    agent::AttachRequest {
        netns: container.path(),
        network: network.into(),
        container_id: format!("{name}-{}", container.name),
        container_name: name.into(),
        ..Default::default()
    }
}

async fn attach(
    client: &mut AgentServiceClient<Channel>,
    container: &Netns,
    network: &str,
    name: &str,
) -> agent::Attachment {
    client.attach(attach_request(container, network, name)).await.unwrap().into_inner().attachment.unwrap()
}

fn ip_of(attachment: &agent::Attachment) -> String {
    attachment.ipv4_address.split('/').next().unwrap().to_string()
}

/// Waits until `check` holds, up to `timeout`.
async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A ping that must succeed; retried briefly, as the remote host programs its side within the
/// convergence bound rather than before our attach returns.
async fn reaches(from: &Netns, ip: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if from.try_exec(&["ping", "-c", "1", "-W", "1", "-q", ip]).status.success() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A ping that must fail: a few probes, none answered.
fn blocked(from: &Netns, ip: &str) -> bool {
    !from.try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", ip]).status.success()
}

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
    let fdb = lab.hosts[0].ns.exec(&["bridge", "fdb", "show", "dev", &format!("weftx{}", blue.vni)]);
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
    let bridge = format!("weft{}", blue.vni);
    for host in &lab.hosts {
        eventually(&format!("{bridge} gone from {}", host.name), Duration::from_secs(5), || {
            !host.ns.exec(&["ip", "-o", "link"]).contains(&bridge)
        })
        .await;
    }
    assert!(!a1.exec(&["ip", "-o", "link"]).contains("eth0"), "a1 keeps no interface");
    assert!(m3.exec(&["ip", "-o", "link"]).contains("eth1"), "m3 keeps its red interface");
    lab.remove_network("blue");
    // Red lives on: h1 still has it, and its entries for h3 are in place.
    let fdb = lab.hosts[0].ns.exec(&["bridge", "fdb", "show", "dev", &format!("weftx{}", red.vni)]);
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
    let _e1 = attach(&mut h1, &c1, "green", "c1").await;
    let e2 = attach(&mut h2, &c2, "green", "c2").await;
    let target = ip_of(&e2);
    assert!(reaches(&c1, &target).await);

    // Entries deleted by hand come back within the resync period.
    let vxlan = format!("weftx{}", net.vni);
    let h1ns = &lab.hosts[0].ns;
    h1ns.exec(&[
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
    h1ns.exec(&["ip", "neigh", "del", &target, "dev", &vxlan]);
    eventually("the FDB entry repaired", Duration::from_secs(5), || {
        h1ns.exec(&["bridge", "fdb", "show", "dev", &vxlan]).contains(&e2.mac_address)
    })
    .await;
    eventually("the neighbour entry repaired", Duration::from_secs(5), || {
        h1ns.exec(&["ip", "neigh", "show", "dev", &vxlan]).contains(&target)
    })
    .await;

    // Restarting an agent during a ping loses nothing: it adopts what it finds.
    let ping = Command::new("ip")
        .args(["netns", "exec", &c1.name, "ping", "-c", "60", "-i", "0.05", "-W", "1", &target])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    lab.kill_agent(0);
    lab.start_agent(0);
    let _ = lab.agent(0).await;
    let out = tokio::task::spawn_blocking(move || ping.wait_with_output().unwrap()).await.unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" 0% packet loss"), "{summary}");

    // With the agent down, or every controller down, traffic keeps flowing.
    lab.kill_agent(1);
    assert!(reaches(&c1, &target).await, "agent on h2 down");
    lab.stop_controller();
    assert!(reaches(&c1, &target).await, "controllers down");

    // Uninstall removes weft's links and tables, and nothing else.
    lab.kill_agent(0);
    let h1ns = &lab.hosts[0].ns;
    h1ns.exec(&["nft", "add", "table", "inet", "someone_elses"]);
    let state = lab.hosts[0].state.to_str().unwrap().to_string();
    h1ns.exec(&[NODE, "--uninstall", "--state-dir", &state]);
    let links = h1ns.exec(&["ip", "-o", "link"]);
    assert!(!links.contains("weft"), "{links}");
    assert!(links.contains("ul0"), "{links}");
    let tables = h1ns.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("weft") && tables.contains("someone_elses"), "{tables}");
    assert!(!lab.hosts[0].state.join("sandboxes.json").exists());
}
