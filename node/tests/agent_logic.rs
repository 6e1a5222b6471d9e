//! The agent's own logic — attachment records, the mirror of the registry, planning, the
//! janitor, restarts — against a real controller process, with the host's kernel simulated in
//! memory (`weft_dataplane::SimulatedHost`). No root needed: these run on any machine, while
//! `lifecycle.rs` and `overlay.rs` check the same paths against the real kernel.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use weft_api::agent;
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_dataplane::SimulatedHost;
use weft_dataplane::model::{LinkKind, Observed};
use weft_node::agent::{Agent, Settings};
use weft_node::controllers::Controllers;
use weft_node::desired::Host;
use weft_testbed::{Process, free_address_on, own_loopback};

const NODE: &str = env!("CARGO_BIN_EXE_weft-node");

/// One controller on a loopback address of this test process's own.
struct Controller {
    _process: Process,
    address: String,
    _dir: tempfile::TempDir,
}

impl Controller {
    async fn start() -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let address = free_address_on(&own_loopback(9));
        let child = Command::new(weft_testbed::workspace_binary(NODE, "weft-controller"))
            .args(["--insecure", "--listen", &address, "--heartbeat-ms", "50", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn,openraft=off")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let controller = Controller { _process: Process(child), address, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while controller.networks().list_networks(pb::ListNetworksRequest::default()).await.is_err() {
            assert!(Instant::now() < deadline, "the controller did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        controller
    }

    fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address)).unwrap().connect_lazy()
    }

    fn networks(&self) -> NetworkServiceClient<Channel> {
        NetworkServiceClient::new(self.channel())
    }

    async fn endpoints(&self) -> Vec<pb::Endpoint> {
        let listed = EndpointServiceClient::new(self.channel())
            .list_endpoints(pb::ListEndpointsRequest::default())
            .await
            .unwrap();
        listed.into_inner().endpoints
    }
}

/// An agent for host `h1` running in this process over a simulated kernel, with its tasks.
struct RunningAgent {
    agent: Arc<Agent<Arc<SimulatedHost>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn start_agent(
    controller: &Controller,
    host: &Arc<SimulatedHost>,
    state: &std::path::Path,
) -> RunningAgent {
    let settings = Settings {
        host: Host { name: "h1".into(), vtep: "192.0.2.1".parse().unwrap(), underlay_mtu: 1500 },
        state_dir: state.to_path_buf(),
        heartbeat: Duration::from_millis(100),
        resync: Duration::from_millis(300),
        request_timeout: Duration::from_secs(3),
        dns_port: 0,
        wireguard_interface: "weftwg-test".into(),
        docker_api: None,
        service_dns: None,
    };
    let controllers =
        Controllers::new(vec![controller.address.clone()], Duration::from_secs(3), None).unwrap();
    let dns = weft_dns::server::Dns::new(weft_dns::server::Settings {
        ttl: 5,
        upstreams: Vec::new(),
        upstream_timeout: Duration::from_millis(100),
        max_forwards: 1,
    });
    let agent = Arc::new(Agent::new(settings, controllers, host.clone(), dns, None).unwrap());
    agent.register().await;
    let spawn = |job: fn(Arc<Agent<Arc<SimulatedHost>>>) -> tokio::task::JoinHandle<()>| job(agent.clone());
    let tasks = vec![
        spawn(|a| tokio::spawn(async move { a.follow().await })),
        spawn(|a| tokio::spawn(async move { a.heartbeat().await })),
        spawn(|a| tokio::spawn(async move { a.janitor_forever().await })),
        spawn(|a| tokio::spawn(async move { a.reconcile_forever().await })),
    ];
    RunningAgent { agent, tasks }
}

/// A stand-in for a container's namespace: a file whose identity (device, inode) the agent
/// records, as it does with `/run/netns/NAME`.
fn container(dir: &std::path::Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, b"").unwrap();
    path
}

fn attach_request(netns: &std::path::Path, container: &str) -> agent::AttachRequest {
    agent::AttachRequest {
        netns: netns.display().to_string(),
        network: "blue".into(),
        container_id: container.into(),
        container_name: container.into(),
        ..Default::default()
    }
}

fn weft_veths(observed: &Observed) -> BTreeSet<String> {
    observed
        .links
        .values()
        .filter(|l| l.kind == LinkKind::Veth && l.is_weft())
        .filter(|l| {
            !l.alias.as_deref().is_some_and(|a| a.starts_with(weft_dataplane::model::GATEWAY_ALIAS_PREFIX))
        })
        .map(|l| l.name.clone())
        .collect()
}

async fn eventually(what: &str, check: impl AsyncFn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup() -> (Controller, tempfile::TempDir) {
    let controller = Controller::start().await;
    controller
        .networks()
        .create_network(pb::CreateNetworkRequest { name: "blue".into(), ..Default::default() })
        .await
        .unwrap();
    (controller, tempfile::tempdir().unwrap())
}

/// Thirty containers attach and detach at once: each gets a registered endpoint, a record and
/// a veth on the network's bridge; after the detaches nothing of them is left anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attaches_and_detaches_leave_kernel_registry_and_records_in_step() {
    let (controller, dir) = setup().await;
    let host = Arc::new(SimulatedHost::default());
    let state = dir.path().join("state");
    let running = start_agent(&controller, &host, &state).await;

    let attaches: Vec<_> = (0..30)
        .map(|i| {
            let agent = running.agent.clone();
            let netns = container(dir.path(), &format!("ns{i}"));
            tokio::spawn(async move { agent.attach(attach_request(&netns, &format!("c{i}"))).await })
        })
        .collect();
    let mut addresses = BTreeSet::new();
    for task in attaches {
        let attachment = task.await.unwrap().expect("attach");
        assert!(addresses.insert(attachment.ipv4_address.clone()), "address handed out twice");
    }
    let endpoints = controller.endpoints().await;
    assert_eq!(endpoints.len(), 30);
    let observed = host.observed();
    let bridge = observed.links.values().find(|l| l.kind == LinkKind::Bridge).expect("the network's bridge");
    let veths = weft_veths(&observed);
    assert_eq!(veths.len(), 30);
    for veth in &veths {
        assert_eq!(observed.links[veth].master.as_deref(), Some(bridge.name.as_str()), "{veth}");
    }
    assert_eq!(std::fs::read_dir(state.join("attachments")).unwrap().count(), 30, "one record each");
    assert!(host.rules().is_some_and(|r| r.host.contains("table inet weft {")), "nftables rules loaded");

    let detaches: Vec<_> = (0..30)
        .map(|i| {
            let agent = running.agent.clone();
            tokio::spawn(async move {
                agent
                    .detach(agent::DetachRequest { network: "blue".into(), container_id: format!("c{i}") })
                    .await
            })
        })
        .collect();
    for task in detaches {
        task.await.unwrap().expect("detach");
    }
    assert!(controller.endpoints().await.is_empty());
    eventually("the veths are gone", async || weft_veths(&host.observed()).is_empty()).await;
    assert_eq!(std::fs::read_dir(state.join("attachments")).unwrap().count(), 0);
}

/// A container that disappears without a detach (its namespace file deleted) is released by
/// the janitor; one that stays keeps its endpoint across an agent restart; a bridge deleted
/// behind the agent's back is put back; another host's container gets an FDB entry here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_containers_restarts_drift_and_remote_containers() {
    let (controller, dir) = setup().await;
    let host = Arc::new(SimulatedHost::default());
    let state = dir.path().join("state");
    let running = start_agent(&controller, &host, &state).await;
    let gone = container(dir.path(), "gone");
    let stays = container(dir.path(), "stays");
    running.agent.attach(attach_request(&gone, "gone")).await.unwrap();
    running.agent.attach(attach_request(&stays, "stays")).await.unwrap();

    std::fs::remove_file(&gone).unwrap();
    eventually("the vanished container is released", async || {
        controller.endpoints().await.iter().map(|e| e.container_id.clone()).collect::<Vec<_>>() == ["stays"]
    })
    .await;
    eventually("its veth is removed", async || weft_veths(&host.observed()).len() == 1).await;

    // Restart: the record is trusted (the veth is there), nothing is torn down or redone.
    drop(running);
    let before = host.observed();
    let running = start_agent(&controller, &host, &state).await;
    eventually("the attachment is listed again once the registry is followed", async || {
        running.agent.list().attachments.into_iter().map(|a| a.container_id).collect::<Vec<_>>() == ["stays"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await; // two resync periods
    assert_eq!(weft_veths(&host.observed()), weft_veths(&before));
    assert_eq!(controller.endpoints().await.len(), 1);

    // Drift: the bridge deleted by hand comes back, with the veth on it again.
    let bridge = before.links.values().find(|l| l.kind == LinkKind::Bridge).unwrap().name.clone();
    host.tamper(|o| {
        let delete =
            weft_dataplane::Op::DeleteLink { name: bridge.clone(), place: weft_dataplane::Place::Switch };
        weft_dataplane::simulated::apply(o, &delete).unwrap();
    });
    eventually("the bridge is back with its ports (VXLAN, gateway, veth)", async || {
        let now = host.observed();
        now.links.contains_key(&bridge)
            && now.links.values().filter(|l| l.master.as_deref() == Some(bridge.as_str())).count() == 3
    })
    .await;

    // Another host's container: an FDB entry towards that host's VTEP.
    let mut nodes = NodeServiceClient::new(controller.channel());
    nodes
        .register_node(pb::RegisterNodeRequest {
            name: "h2".into(),
            underlay_address: "192.0.2.2".into(),
            underlay_mtu: 1500,
            ..Default::default()
        })
        .await
        .unwrap();
    let remote = EndpointServiceClient::new(controller.channel())
        .create_endpoint(pb::CreateEndpointRequest {
            network: "blue".into(),
            node: "h2".into(),
            container_id: "far".into(),
            container_name: "far".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let vtep: IpAddr = "192.0.2.2".parse().unwrap();
    eventually("an FDB entry for the remote container", async || {
        host.observed()
            .fdb
            .values()
            .flat_map(|entries| entries.iter())
            .any(|(mac, at)| mac.to_string() == remote.mac_address && *at == vtep)
    })
    .await;
    assert!(running.agent.problems().is_empty(), "{:?}", running.agent.problems());
}

/// Published ports through the agent's own logic: random host ports chosen at once never
/// clash, each becomes a DNAT rule, the network's gateway takes 127.0.0.1, and a port that
/// goes has its flows forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_become_rules_and_their_flows_go_with_them() {
    let (controller, dir) = setup().await;
    let host = Arc::new(SimulatedHost::default());
    let running = start_agent(&controller, &host, &dir.path().join("state")).await;
    let attaches: Vec<_> = (0..10)
        .map(|i| {
            let agent = running.agent.clone();
            let netns = container(dir.path(), &format!("ns{i}"));
            let mut request = attach_request(&netns, &format!("c{i}"));
            request.publish_all = true;
            request.expose = vec![agent::ExposedPort { protocol: "tcp".into(), port: 80, port_end: 0 }];
            tokio::spawn(async move { agent.attach(request).await })
        })
        .collect();
    let mut host_ports = BTreeSet::new();
    let mut attached = Vec::new();
    for task in attaches {
        let attachment = task.await.unwrap().expect("attach");
        assert!(host_ports.insert(attachment.ports[0].host_port), "a random host port handed out twice");
        attached.push(attachment);
    }
    let rules = host.rules().unwrap().host;
    for a in &attached {
        let ip = a.ipv4_address.split('/').next().unwrap();
        let rule = format!("meta nfproto ipv4 tcp dport {} dnat ip to {ip}:80", a.ports[0].host_port);
        assert!(rules.contains(&rule), "{rule} missing from {rules}");
    }
    let observed = host.observed();
    let gateway = observed
        .links
        .values()
        .find(|l| l.place == weft_dataplane::Place::Host && l.kind == LinkKind::Veth && l.is_weft())
        .unwrap()
        .name
        .clone();
    assert_eq!(host.localnet(), vec![gateway]);

    let gone = &attached[0];
    running
        .agent
        .detach(agent::DetachRequest { network: "blue".into(), container_id: "c0".into() })
        .await
        .unwrap();
    let port = gone.ports[0].host_port;
    eventually("the gone port's flows are forgotten", async || {
        host.forgotten().iter().any(|f| u32::from(f.host_port) == port)
    })
    .await;
    assert!(
        !host.rules().unwrap().host.contains(&format!("dport {port} ")),
        "the rule went with the container"
    );
}
