//! The lab the agent's tests and benchmarks run in: hosts as network namespaces on a shared
//! underlay, each with its own `weft-node`; a three-member controller cluster in a namespace
//! of its own; and an "outside" namespace standing in for the internet. Everything is torn
//! down when the lab drops, failed test or not.

#![allow(dead_code)]

pub mod dockerd;
pub mod podman;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use weft_api::agent;
use weft_api::agent::agent_service_client::AgentServiceClient;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_testbed::{Netns, Underlay};

pub type Boxed<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

pub const NODE: &str = env!("CARGO_BIN_EXE_weft-node");
pub const UNDERLAY: &str = "192.168.77";
pub const OUTSIDE: &str = "192.168.77.254";
/// An underlay address nobody holds: an upstream resolver that never answers.
pub const DEAD_UPSTREAM: &str = "192.168.77.252";
/// The stub upstream resolver answers this name (and NXDOMAIN for anything else).
pub const OUTSIDE_NAME: &str = "outside.example.";
pub const OUTSIDE_NAME_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 80);

/// The controllers' addresses: one namespace, three ports.
pub const CONTROLLERS: [&str; 3] = ["192.168.77.250:7001", "192.168.77.250:7002", "192.168.77.250:7003"];

/// A container image's root directory under `dir`: busybox-static with the applets the tests
/// use, and a page for its httpd.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "ping", "wget", "nslookup", "ip", "cat", "hostname", "httpd"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), "served by weft\n").unwrap();
    root
}

fn controller_binary() -> PathBuf {
    weft_testbed::workspace_binary(NODE, "weft-controller")
}

pub struct Host {
    pub ns: Netns,
    pub name: String,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub agent: Option<Child>,
    /// Unique on the machine: wireguard-go's control sockets share one directory.
    pub wireguard_interface: String,
    /// A mount namespace of the host's own (for hosts running dockerd: its plugin directory
    /// and its sandboxes' mounts are the agent's too), entered with the network namespace.
    pub mount_ns: Option<PathBuf>,
}

/// Hosts on an underlay with an "outside" namespace standing in for the internet (it has no
/// route back to container subnets, so a reply reaches a container only through NAT), and a
/// controller in a namespace of its own.
pub struct Lab {
    pub hosts: Vec<Host>,
    controllers: Vec<Option<Child>>,
    pub ctl: Netns,
    pub outside: Netns,
    _underlay: Underlay,
    tmp: tempfile::TempDir,
    /// Resync and heartbeat periods the agents run with.
    agent_timing: &'static [&'static str],
}

/// Tests repair drift and notice silence quickly.
const TEST_TIMING: &[&str] = &["--resync-ms", "500", "--heartbeat-ms", "300"];

impl Lab {
    pub fn new(hosts: usize) -> Lab {
        Lab::with_timing(hosts, TEST_TIMING)
    }

    /// Agents with their production defaults (a full resync every 10 s, a heartbeat every
    /// second), for benchmarks: a resync every 500 ms dumps the kernel and reloads nftables
    /// twice a second, which shows up as latency in anything measured beside it.
    #[allow(dead_code)] // the benchmarks use it, the tests do not
    pub fn with_default_timing(hosts: usize) -> Lab {
        Lab::with_timing(hosts, &[])
    }

    fn with_timing(hosts: usize, agent_timing: &'static [&'static str]) -> Lab {
        let underlay = Underlay::new(UNDERLAY);
        let tmp = tempfile::tempdir().unwrap();
        let outside = Netns::new("o");
        underlay.join(&outside, 254, 1500);
        let ctl = Netns::new("k");
        underlay.join(&ctl, 250, 1500);
        let hosts: Vec<Host> = (1..=hosts)
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
                    wireguard_interface: weft_testbed::unique("wg"),
                    mount_ns: None,
                }
            })
            .collect();
        // Mutual TLS everywhere, as in production: a CA for the lab, a credential for each
        // controller, host and the test itself (admin).
        let ca = weft_pki::Authority::create("lab").unwrap();
        for i in 1..=CONTROLLERS.len() {
            let host = CONTROLLERS[0].split(':').next().unwrap().to_string();
            let dir = tmp.path().join(format!("pki/controller{i}"));
            ca.issue(weft_pki::Role::Controller, &i.to_string(), &[host]).unwrap().save(&dir).unwrap();
            // The CA key too, as `weft pki init` leaves it: controllers sign renewals.
            ca.save(&dir).unwrap();
        }
        for i in 1..=hosts.len() {
            ca.issue(weft_pki::Role::Node, &format!("h{i}"), &[])
                .unwrap()
                .save(&tmp.path().join(format!("pki/h{i}")))
                .unwrap();
        }
        ca.issue(weft_pki::Role::Admin, "lab", &[]).unwrap().save(&tmp.path().join("pki/admin")).unwrap();
        let manifest = tmp.path().join("cluster.toml");
        weft_testbed::write_manifest(&manifest, "lab", &CONTROLLERS);
        let mut lab = Lab {
            hosts,
            controllers: vec![None, None, None],
            ctl,
            outside,
            _underlay: underlay,
            tmp,
            agent_timing,
        };
        for i in 0..CONTROLLERS.len() {
            lab.start_controller(i);
        }
        for i in 0..lab.hosts.len() {
            lab.start_agent(i);
        }
        lab
    }

    /// Joins `ns` to the lab's underlay at `UNDERLAY.octet`, routed through the outside.
    pub fn join_underlay(&self, ns: &Netns, octet: u8) {
        self._underlay.join(ns, octet, 1500);
        ns.exec(&["ip", "route", "add", "default", "via", OUTSIDE]);
    }

    pub fn start_controller(&mut self, i: usize) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ctl.name])
            .arg(controller_binary())
            .args(["--id", &(i + 1).to_string(), "--listen", CONTROLLERS[i], "--data-dir"])
            .arg(self.tmp.path().join(format!("controller{}", i + 1)))
            .arg("--manifest")
            .arg(self.tmp.path().join("cluster.toml"))
            .arg("--tls-dir")
            .arg(self.tmp.path().join(format!("pki/controller{}", i + 1)))
            .env("RUST_LOG", "warn,openraft=off")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.controllers[i] = Some(child);
    }

    /// `kill -9` of one controller.
    pub fn stop_controller(&mut self, i: usize) {
        if let Some(mut child) = self.controllers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to controller `i`.
    pub fn signal_controller(&self, i: usize, signal: &str) {
        weft_testbed::signal(self.controllers[i].as_ref().expect("controller running").id(), signal);
    }

    pub fn start_agent(&mut self, i: usize) {
        self.start_agent_with(i, &[]);
    }

    /// Starts host `i`'s agent with extra flags.
    pub fn start_agent_with(&mut self, i: usize, extra: &[&str]) {
        let host = &mut self.hosts[i];
        let mut command = match &host.mount_ns {
            Some(mount_ns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--mount={}", mount_ns.display()))
                    .arg(format!("--net={}", host.ns.path()))
                    .arg(NODE);
                command
            }
            // nsenter, not `ip netns exec`: that gives the agent a mount namespace of its own,
            // and the switch namespace it pins under /run/netns would be seen (and kept)
            // only there.
            None => {
                let mut command = Command::new("nsenter");
                command.arg(format!("--net={}", host.ns.path())).arg(NODE);
                command
            }
        };
        let child = command
            .args(["--controllers", &CONTROLLERS.join(","), "--name", &host.name])
            .args(["--switch-namespace", &host.ns.switch_name()])
            .arg("--socket")
            .arg(&host.socket)
            .arg("--state-dir")
            .arg(&host.state)
            .arg("--tls-dir")
            .arg(self.tmp.path().join(format!("pki/{}", host.name)))
            .args(self.agent_timing)
            .args(["--request-timeout-ms", "3000"])
            .args(["--wireguard-interface", &host.wireguard_interface])
            .args(extra)
            // A dead upstream first (nothing answers at .252), then the lab's stub.
            .args([
                "--dns-upstream",
                &format!("{DEAD_UPSTREAM},{OUTSIDE}"),
                "--dns-upstream-timeout-ms",
                "300",
            ])
            .env("RUST_LOG", std::env::var("WEFT_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        host.agent = Some(child);
    }

    /// `kill -9` of a host's agent: its kernel state stays as it was.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i].agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn agent(&self, i: usize) -> AgentServiceClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = weft_api::agent_client::connect(&self.hosts[i].socket).await
                && client.list(agent::ListRequest {}).await.is_ok()
            {
                return client;
            }
            assert!(Instant::now() < deadline, "agent on {} did not come up", self.hosts[i].name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a request against the controller from inside its namespace.
    pub fn networks<T: Send>(
        &self,
        call: impl FnOnce(NetworkServiceClient<Channel>) -> Boxed<T> + Send,
    ) -> T {
        self.with_controller(|channel| call(NetworkServiceClient::new(channel)))
    }

    /// Runs requests against a ready controller from inside the controllers' namespace (on a
    /// runtime of its own there, so its sockets belong to that namespace).
    pub fn with_controller<T: Send>(&self, call: impl FnOnce(Channel) -> Boxed<T> + Send) -> T {
        let admin = weft_pki::Credentials::load(&self.admin_tls()).unwrap();
        tokio::task::block_in_place(|| {
            self.ctl.run_in(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    // A member that answers, past the cluster's first configuration (writes
                    // are refused before it).
                    let channel = 'found: loop {
                        let mut problem = String::new();
                        for address in CONTROLLERS {
                            let Ok(channel) = Channel::from_shared(format!("https://{address}"))
                                .unwrap()
                                .tls_config(admin.client())
                                .unwrap()
                                .connect()
                                .await
                            else {
                                continue;
                            };
                            match ClusterServiceClient::new(channel.clone())
                                .status(pb::StatusRequest {})
                                .await
                            {
                                Ok(s) if !s.get_ref().cluster_id.is_empty() && s.get_ref().leader_id != 0 => {
                                    break 'found channel;
                                }
                                Ok(_) => problem = format!("{address}: not ready"),
                                Err(e) => problem = format!("{address}: {e}"),
                            }
                        }
                        assert!(Instant::now() < deadline, "no controller ready: {problem}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    };
                    call(channel).await
                })
            })
        })
    }

    /// Every endpoint in the registry.
    pub fn endpoints(&self) -> Vec<pb::Endpoint> {
        self.with_controller(|channel| {
            Box::pin(async move {
                EndpointServiceClient::new(channel)
                    .list_endpoints(pb::ListEndpointsRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .endpoints
            })
        })
    }

    pub fn create_network(&self, name: &str, internal: bool) -> pb::Network {
        self.create(pb::CreateNetworkRequest { name: name.into(), internal, ..Default::default() })
    }

    pub fn create(&self, request: pb::CreateNetworkRequest) -> pb::Network {
        self.networks(move |mut client| {
            Box::pin(async move { client.create_network(request).await.unwrap().into_inner() })
        })
    }

    /// Registers a host (`elsewhere`, VTEP `.200`) that runs no agent and creates `count`
    /// endpoints on it, 64 at a time, each with `aliases` long aliases (to make the registry
    /// big); returns the last revision.
    pub fn remote_endpoints(&self, network: &str, count: usize, aliases: usize) -> u64 {
        let network = network.to_string();
        self.with_controller(move |channel| {
            Box::pin(async move {
                NodeServiceClient::new(channel.clone())
                    .register_node(pb::RegisterNodeRequest {
                        name: "elsewhere".into(),
                        underlay_address: format!("{UNDERLAY}.200"),
                        underlay_mtu: 1500,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                let workers = 64;
                let tasks: Vec<_> = (0..workers)
                    .map(|w| {
                        let mut client = EndpointServiceClient::new(channel.clone());
                        let network = network.clone();
                        tokio::spawn(async move {
                            let mut last = 0;
                            for k in (w..count).step_by(workers) {
                                let request = pb::CreateEndpointRequest {
                                    network: network.clone(),
                                    node: "elsewhere".into(),
                                    container_id: format!("r{k}"),
                                    container_name: format!("r{k}"),
                                    aliases: (0..aliases)
                                        .map(|a| format!("alias-{k}-{a}-{}", "x".repeat(48)))
                                        .collect(),
                                    ..Default::default()
                                };
                                last = last.max(
                                    client
                                        .create_endpoint(request)
                                        .await
                                        .unwrap()
                                        .into_inner()
                                        .created_revision,
                                );
                            }
                            last
                        })
                    })
                    .collect();
                let mut last = 0;
                for task in tasks {
                    last = last.max(task.await.unwrap());
                }
                last
            })
        })
    }

    pub fn remove_network(&self, name: &str) {
        let request = pb::RemoveNetworkRequest { network: name.into(), force: false, ..Default::default() };
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
        for i in 0..CONTROLLERS.len() {
            self.stop_controller(i);
        }
        // The namespaces (and everything in them) go as their guards drop.
    }
}

pub fn attach_request(container: &Netns, network: &str, name: &str) -> agent::AttachRequest {
    agent::AttachRequest {
        netns: container.path(),
        network: network.into(),
        container_id: format!("{name}-{}", container.name),
        container_name: name.into(),
        ..Default::default()
    }
}

pub async fn attach(
    client: &mut AgentServiceClient<Channel>,
    container: &Netns,
    network: &str,
    name: &str,
) -> agent::Attachment {
    client.attach(attach_request(container, network, name)).await.unwrap().into_inner().attachment.unwrap()
}

/// A container's attach, answered or refused.
pub type Attaching = tokio::task::JoinHandle<Result<tonic::Response<agent::AttachResponse>, tonic::Status>>;

/// Starts attaching every one of `containers` to `network` at once, as `{prefix}{i}`, the way
/// a runtime starting many containers does.
pub fn attach_all(
    client: &AgentServiceClient<Channel>,
    containers: &[Netns],
    network: &str,
    prefix: &str,
) -> Vec<Attaching> {
    containers
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let mut client = client.clone();
            let request = attach_request(ns, network, &format!("{prefix}{i}"));
            tokio::spawn(async move { client.attach(request).await })
        })
        .collect()
}

pub fn ip_of(attachment: &agent::Attachment) -> String {
    attachment.ipv4_address.split('/').next().unwrap().to_string()
}

/// Waits until `check` holds, up to `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A ping that must succeed; retried briefly, as the remote host programs its side within the
/// convergence bound rather than before our attach returns.
pub async fn reaches(from: &Netns, ip: &str) -> bool {
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

/// `count` pings 50 ms apart from `from` to `ip`, running while the test does something else;
/// [`BackgroundPing::finish`] waits for them and returns ping's summary and how many were
/// answered.
pub struct BackgroundPing(Child);

impl BackgroundPing {
    pub fn start(from: &Netns, ip: &str, count: u32) -> BackgroundPing {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &from.name,
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "1",
                ip,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        BackgroundPing(child)
    }

    pub async fn finish(self) -> (String, u32) {
        let out = tokio::task::spawn_blocking(move || self.0.wait_with_output().unwrap()).await.unwrap();
        let summary = String::from_utf8_lossy(&out.stdout).into_owned();
        let received = summary
            .split(", ")
            .find_map(|part| part.strip_suffix(" received"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no ping summary: {summary}"));
        (summary, received)
    }
}

/// A ping that must fail: a few probes, none answered.
pub fn blocked(from: &Netns, ip: &str) -> bool {
    !from.try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", ip]).status.success()
}

/// A stub upstream resolver in the outside namespace (port 53 of the outside address): it
/// answers [`OUTSIDE_NAME`] and NXDOMAIN for the rest, and counts queries. Stops on drop.
pub struct StubUpstream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lab {
    /// The admin credential (for `weft --tls-dir`).
    pub fn admin_tls(&self) -> PathBuf {
        self.tmp.path().join("pki/admin")
    }

    /// The `weft` CLI run in host `host`'s namespace, as its operator would: the cluster's
    /// controllers, the host's agent socket, the admin credential.
    pub fn weft_cli(&self, host: usize, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[host].ns.name])
            .arg(weft_testbed::workspace_binary(NODE, "weft"))
            .args(["--controller", &CONTROLLERS.join(","), "--node-socket"])
            .arg(&self.hosts[host].socket)
            .arg("--tls-dir")
            .arg(self.admin_tls())
            .args(args)
            .env("HOME", "/nonexistent")
            .output()
            .unwrap()
    }

    /// A directory that lives as long as the lab.
    pub fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn stub_upstream(&self) -> StubUpstream {
        use hickory_proto::op::{Message, ResponseCode};
        use hickory_proto::rr::{RData, Record, rdata::A};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let path = self.outside.path();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let (stop, queries) = (stop.clone(), queries.clone());
            move || {
                let ns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let socket = std::net::UdpSocket::bind((OUTSIDE, 53)).unwrap();
                socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buffer = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, peer)) = socket.recv_from(&mut buffer) else { continue };
                    let Ok(request) = Message::from_vec(&buffer[..len]) else { continue };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
                    response.metadata.recursion_desired = request.metadata.recursion_desired;
                    response.metadata.recursion_available = true;
                    response.add_queries(request.queries.clone());
                    match request.queries.first() {
                        Some(q) if q.name().to_ascii().eq_ignore_ascii_case(OUTSIDE_NAME) => {
                            response.add_answer(Record::from_rdata(
                                q.name().clone(),
                                60,
                                RData::A(A(OUTSIDE_NAME_ADDRESS)),
                            ));
                        }
                        _ => response.metadata.response_code = ResponseCode::NXDomain,
                    }
                    let _ = socket.send_to(&response.to_vec().unwrap(), peer);
                }
            }
        });
        ready.recv().unwrap();
        StubUpstream { stop, queries, thread: Some(thread) }
    }
}

impl Drop for StubUpstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
