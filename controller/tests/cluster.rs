//! Controllers as real processes on loopback with real data directories: bootstrap, forwarding,
//! leader failure, restarts, quorum loss.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_api::pb::watch_response::Kind;
use weft_api::pb::watch_service_client::WatchServiceClient;

const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");

/// A free loopback port (bound and released; the controller binds it right after).
/// A free address on a loopback IP of this test process's own (127.A.B.1 from the process
/// id; nextest runs each test in its own process). Ports are picked by bind-and-release; on a
/// shared 127.0.0.1 another test could take the port between release and the controller's
/// bind, and a member of its cluster would then answer this one's Raft traffic.
fn free_address() -> String {
    weft_testbed::free_address_on(&weft_testbed::own_loopback(1))
}

struct Member {
    id: u64,
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

/// Controllers started from one manifest; killed when dropped, even when a test fails.
struct Cluster {
    members: Vec<Member>,
    manifest: Option<PathBuf>,
    /// Flags every member gets besides the defaults below.
    extra_args: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &[])
    }

    fn start_with(size: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_full(size, extra_args, "")
    }

    /// `manifest_extra` is appended to the manifest (e.g. `[[networks]]` entries).
    fn start_full(size: usize, extra_args: &[&str], manifest_extra: &str) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (1..=size as u64)
            .map(|id| Member {
                id,
                addr: free_address(),
                dir: tmp.path().join(format!("m{id}")),
                child: None,
            })
            .collect();
        let manifest = (size > 1).then(|| {
            let path = tmp.path().join("cluster.toml");
            let list: Vec<String> =
                members.iter().map(|m| format!("{{ id = {}, address = \"{}\" }}", m.id, m.addr)).collect();
            std::fs::write(
                &path,
                format!("cluster_id = \"test\"\nmembers = [{}]\n{manifest_extra}", list.join(", ")),
            )
            .unwrap();
            path
        });
        let extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        let mut cluster = Cluster { members, manifest, extra_args, _tmp: tmp };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    /// Starts one more member that joins rather than bootstraps; returns its index.
    fn spawn_joiner(&mut self, id: u64) -> usize {
        let dir = self.members[0].dir.with_file_name(format!("m{id}"));
        self.members.push(Member { id, addr: free_address(), dir, child: None });
        let i = self.members.len() - 1;
        let manifest = self.manifest.take();
        self.extra_args.push("--join".into());
        self.spawn(i);
        self.extra_args.pop();
        self.manifest = manifest;
        i
    }

    async fn status(&self, i: usize) -> pb::StatusResponse {
        ClusterServiceClient::new(self.channel(i)).status(pb::StatusRequest {}).await.unwrap().into_inner()
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut cmd = Command::new(BIN);
        cmd.args(["--insecure", "--id", &m.id.to_string(), "--listen", &m.addr, "--data-dir"])
            .arg(&m.dir)
            .args([
                "--request-timeout-ms",
                "3000",
                "--heartbeat-ms",
                "50",
                "--watch-retained-revisions",
                "16",
            ])
            .args(&self.extra_args)
            .env("RUST_LOG", "warn,openraft=off")
            .stdin(Stdio::null());
        if let Some(manifest) = &self.manifest {
            cmd.arg("--manifest").arg(manifest);
        }
        m.child = Some(cmd.spawn().expect("spawn weft-controller"));
    }

    /// `kill -9`.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to member `i`.
    fn signal(&self, i: usize, signal: &str) {
        weft_testbed::signal(self.members[i].child.as_ref().expect("member running").id(), signal);
    }

    fn channel(&self, i: usize) -> Channel {
        Channel::from_shared(format!("http://{}", self.members[i].addr)).unwrap().connect_lazy()
    }

    fn networks(&self, i: usize) -> NetworkServiceClient<Channel> {
        NetworkServiceClient::new(self.channel(i))
    }

    fn endpoints(&self, i: usize) -> EndpointServiceClient<Channel> {
        EndpointServiceClient::new(self.channel(i))
    }

    fn nodes(&self, i: usize) -> NodeServiceClient<Channel> {
        NodeServiceClient::new(self.channel(i))
    }

    /// Waits until member `i` reports a leader and a configured registry; returns the leader id.
    async fn wait_ready(&self, i: usize, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut client = ClusterServiceClient::new(self.channel(i));
            if let Ok(status) = client.status(pb::StatusRequest {}).await {
                let s = status.into_inner();
                if s.leader_id != 0 && !s.cluster_id.is_empty() {
                    return s.leader_id;
                }
            }
            assert!(Instant::now() < deadline, "member {} not ready within {timeout:?}", i + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` of every member, then all started again from their disks and ready.
    async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            self.wait_ready(i, Duration::from_secs(30)).await;
        }
    }

    fn index_of(&self, id: u64) -> usize {
        self.members.iter().position(|m| m.id == id).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

async fn register(cluster: &Cluster, i: usize, name: &str, octet: u8) {
    cluster
        .nodes(i)
        .register_node(pb::RegisterNodeRequest {
            name: name.into(),
            underlay_address: format!("192.0.2.{octet}"),
            underlay_mtu: 1500,
            ..Default::default()
        })
        .await
        .unwrap();
}

fn attach(network: &str, node: &str, container: &str) -> pb::CreateEndpointRequest {
    pb::CreateEndpointRequest {
        network: network.into(),
        node: node.into(),
        container_id: container.into(),
        container_name: container.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_single_member_needs_only_a_data_dir_and_keeps_state_across_restarts() {
    let mut cluster = Cluster::start(1);
    cluster.wait_ready(0, Duration::from_secs(20)).await;
    let created = cluster
        .networks(0)
        .create_network(pb::CreateNetworkRequest { name: "blue".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.ipam_config[0].subnet, "10.0.0.0/24");

    let err = cluster
        .networks(0)
        .create_network(pb::CreateNetworkRequest { name: "blue".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = cluster
        .networks(0)
        .create_network(pb::CreateNetworkRequest {
            name: "bad".into(),
            ipam_config: vec![pb::IpamConfig { subnet: "10.0.0.1/24".into(), ..Default::default() }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("did you mean 10.0.0.0/24"), "{}", err.message());

    cluster.kill(0);
    cluster.spawn(0);
    cluster.wait_ready(0, Duration::from_secs(20)).await;
    let inspected = cluster
        .networks(0)
        .inspect_network(pb::InspectNetworkRequest { network: "blue".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inspected.network.unwrap().id, created.id);
}

#[tokio::test]
async fn three_members_forward_writes_and_survive_a_leader_kill() {
    // One worker thread each, as the quickstart gives members sharing a small machine: Raft,
    // forwarding and the API all take turns on it.
    let mut cluster = Cluster::start_with(3, &["--worker-threads", "1"]);
    let leader = cluster.wait_ready(0, Duration::from_secs(30)).await;
    big_network(&cluster, 2).await;

    // 1,000 endpoints created concurrently through all three members; the leader is killed once
    // the first half is acknowledged, while the second half is in flight. Every acknowledged
    // create must be present exactly once afterwards.
    let leader_index = cluster.index_of(leader);
    let spawn_create = |k: usize| {
        let clients: Vec<_> = (0..3).map(|m| cluster.endpoints(m)).collect();
        tokio::spawn(async move {
            let container = format!("c{k}");
            let mut last = None;
            // A real client knows every member and moves on when one fails; a retry of a create
            // that did commit answers AlreadyExists. Its first call never does: a member that
            // retries the call itself (the leader died before answering) must not find the
            // write it made on the first try and call it somebody else's.
            for attempt in 0..30 {
                let mut client = clients[(k + attempt) % 3].clone();
                match client.create_endpoint(attach("big", "h1", &container)).await {
                    Ok(ep) => return (container, Some(ep.into_inner())),
                    Err(s) if s.code() == Code::AlreadyExists && attempt == 0 => {
                        panic!("the first call to create {container} answered: {s:?}")
                    }
                    Err(s) if s.code() == Code::AlreadyExists => return (container, None),
                    Err(s) => last = Some(s),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("create {container} kept failing: {last:?}");
        })
    };
    let first: Vec<_> = (0..500).map(spawn_create).collect();
    let mut acknowledged = Vec::new();
    for task in first {
        acknowledged.push(task.await.unwrap());
    }
    let second: Vec<_> = (500..1000).map(spawn_create).collect();
    cluster.kill(leader_index);
    for task in second {
        acknowledged.push(task.await.unwrap());
    }
    let survivor = (leader_index + 1) % 3;
    let new_leader = cluster.wait_ready(survivor, Duration::from_secs(30)).await;
    assert_ne!(new_leader, leader, "a new leader was elected");

    let listed = cluster
        .endpoints(survivor)
        .list_endpoints(pb::ListEndpointsRequest { network: "big".into(), node: String::new() })
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    assert_eq!(listed.len(), 1000, "every container is attached exactly once");
    let containers: BTreeSet<&str> = listed.iter().map(|e| e.container_id.as_str()).collect();
    assert_eq!(containers.len(), 1000);
    let addresses: BTreeSet<&str> = listed.iter().map(|e| e.ipv4_address.as_str()).collect();
    assert_eq!(addresses.len(), 1000, "no address is held twice");
    for (container, endpoint) in &acknowledged {
        if let Some(ep) = endpoint {
            let found = listed.iter().find(|e| &e.container_id == container).unwrap();
            assert_eq!(found.ipv4_address, ep.ipv4_address, "{container} kept its acknowledged address");
        }
    }

    // Writes continue through the survivors.
    cluster.endpoints(survivor).create_endpoint(attach("big", "h1", "after")).await.unwrap();
}

#[tokio::test]
async fn without_quorum_writes_and_reads_fail_with_unavailable_within_the_deadline() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(0, Duration::from_secs(30)).await;
    cluster
        .networks(0)
        .create_network(pb::CreateNetworkRequest { name: "n".into(), ..Default::default() })
        .await
        .unwrap();
    cluster.kill(1);
    cluster.kill(2);

    let started = Instant::now();
    let err = cluster
        .networks(0)
        .create_network(pb::CreateNetworkRequest { name: "m".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("quorum"), "{}", err.message());
    let err = cluster.networks(0).list_networks(pb::ListNetworksRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "both answered within their 3 s deadlines");

    // After recovery writes resume. The timed-out create of "m" had reached the old leader's
    // log, so its outcome was unknown (the error says so): it may commit now, but only once.
    cluster.spawn(1);
    cluster.wait_ready(1, Duration::from_secs(30)).await;
    cluster
        .networks(1)
        .create_network(pb::CreateNetworkRequest { name: "k".into(), ..Default::default() })
        .await
        .unwrap();
    let names: Vec<String> = cluster
        .networks(1)
        .list_networks(pb::ListNetworksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .networks
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert!(names.contains(&"n".to_string()) && names.contains(&"k".to_string()), "{names:?}");
    assert!(names.iter().filter(|n| *n == "m").count() <= 1, "{names:?}");
}

#[test]
fn a_data_directory_of_another_cluster_is_refused() {
    let mut cluster = Cluster::start(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cluster.wait_ready(0, Duration::from_secs(20)));
    cluster.kill(0);
    let member = &cluster.members[0];
    let manifest = member.dir.with_extension("toml");
    std::fs::write(
        &manifest,
        format!("cluster_id = \"other\"\nmembers = [{{ id = 1, address = \"{}\" }}]\n", member.addr),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--insecure", "--id", "1", "--listen", &member.addr, "--data-dir"])
        .arg(&member.dir)
        .arg("--manifest")
        .arg(&manifest)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the controller started over another cluster's data directory instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to bootstrap") && stderr.contains("\"other\""), "{stderr}");
}

#[test]
fn a_worker_thread_count_out_of_range_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "many", "5000"] {
        let out = Command::new(BIN)
            .args(["--insecure", "--listen", &free_address(), "--worker-threads", bad, "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "--worker-threads {bad} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(&format!("'{bad}'")) && first.contains("--worker-threads"), "{stderr}");
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused start wrote to its data directory"
    );
}

/// The next watch message that is not a progress note, within 10 s.
async fn next_change(stream: &mut tonic::Streaming<pb::WatchResponse>) -> Kind {
    let next = async {
        loop {
            let message = stream.message().await.unwrap().expect("the stream stays open");
            match message.kind.unwrap() {
                Kind::Progress(_) => continue,
                other => return other,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), next).await.expect("a watch change within 10 s")
}

fn revisions(kind: &Kind) -> Vec<u64> {
    match kind {
        Kind::Events(batch) => batch.events.iter().map(|e| e.revision).collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

#[tokio::test]
async fn watchers_resume_from_their_revision_and_get_a_snapshot_when_it_is_compacted() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(0, Duration::from_secs(20)).await;
    let mut watch = WatchServiceClient::new(cluster.channel(0));
    let create = |name: String| {
        let mut client = cluster.networks(0);
        async move {
            client.create_network(pb::CreateNetworkRequest { name, ..Default::default() }).await.unwrap()
        }
    };

    // From scratch: a snapshot, then live events.
    let mut stream =
        watch.watch(pb::WatchRequest { from_revision: 0, ..Default::default() }).await.unwrap().into_inner();
    let start = match next_change(&mut stream).await {
        Kind::Snapshot(full) => full.revision,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    create("a".into()).await;
    let seen = revisions(&next_change(&mut stream).await);
    assert_eq!(seen, vec![start + 1]);
    drop(stream);

    // Away for three changes: resuming replays exactly those, in order, once.
    for name in ["b", "c", "d"] {
        create(name.into()).await;
    }
    let mut stream = watch
        .watch(pb::WatchRequest { from_revision: start + 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.extend(revisions(&next_change(&mut stream).await));
    }
    assert_eq!(replayed, vec![start + 2, start + 3, start + 4]);
    create("e".into()).await;
    assert_eq!(revisions(&next_change(&mut stream).await), vec![start + 5]);
    drop(stream);

    // Away for longer than the 16 revisions the controller keeps: a snapshot instead.
    for i in 0..20 {
        create(format!("f{i}")).await;
    }
    let mut stream = watch
        .watch(pb::WatchRequest { from_revision: start + 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    match next_change(&mut stream).await {
        Kind::Snapshot(full) => {
            assert_eq!(full.revision, start + 25);
            assert_eq!(full.networks.len(), 25);
        }
        other => panic!("expected a snapshot for a compacted revision, got {other:?}"),
    }

    // Ahead of a member that is up to date with its cluster: the watcher saw another history
    // (a cluster rebuilt from scratch) and starts over.
    let mut stream = watch
        .watch(pb::WatchRequest { from_revision: start + 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    match next_change(&mut stream).await {
        Kind::Snapshot(full) => assert_eq!(full.revision, start + 25),
        other => panic!("expected a snapshot for a revision from another history, got {other:?}"),
    }
}

/// An agent that has seen revision R and reconnects to a member that restarted and has not
/// caught up must not get that member's older state: applying it would remove entries for
/// containers that exist. The member holds the watcher until it has R.
#[tokio::test]
async fn a_watcher_is_never_taken_back_in_time_by_a_member_behind_it() {
    let mut cluster = Cluster::start(3);
    for i in 0..3 {
        cluster.wait_ready(i, Duration::from_secs(20)).await;
    }
    for k in 0..5 {
        let request = pb::CreateNetworkRequest { name: format!("n{k}"), ..Default::default() };
        cluster.networks(0).create_network(request).await.unwrap();
    }
    let seen = cluster.status(0).await.revision;

    // Every member down, one back alone: without a quorum it cannot learn what was committed,
    // so its registry is older than what the watcher has.
    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.spawn(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match WatchServiceClient::new(cluster.channel(2))
            .watch(pb::WatchRequest { from_revision: seen, ..Default::default() })
            .await
        {
            Ok(response) => break response.into_inner(),
            Err(e) => assert!(Instant::now() < deadline, "member 3 never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alone = cluster.status(2).await.revision;
    assert!(alone < seen, "member 3 alone is at {alone}, expected behind {seen}");
    // It cannot catch up without a quorum: the stream ends with Unavailable (after the 3 s
    // request deadline) and never carries the older state.
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("a member behind the watcher answered {other:?}"),
    }

    // With a quorum back it catches up, and the watcher, reconnecting as agents do, carries on
    // from where it was.
    cluster.spawn(0);
    cluster.spawn(1);
    cluster.wait_ready(2, Duration::from_secs(30)).await;
    let request = pb::CreateNetworkRequest { name: "after".into(), ..Default::default() };
    let created = cluster.networks(2).create_network(request).await.unwrap().into_inner();
    let mut stream = WatchServiceClient::new(cluster.channel(2))
        .watch(pb::WatchRequest { from_revision: seen, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    while !received.contains(&created.created_revision) {
        let batch = revisions(&next_change(&mut stream).await);
        assert!(batch.iter().all(|r| *r > seen), "events {batch:?} again after seeing {seen}");
        received.extend(batch);
    }
}

/// What a host's agent makes of its watch stream: the endpoints it holds and the revision.
#[derive(Debug, Default, Clone)]
struct HostMirror {
    revision: u64,
    endpoints: BTreeMap<String, pb::Endpoint>,
    networks: BTreeSet<String>,
    snapshots: usize,
}

impl HostMirror {
    fn take(&mut self, kind: Kind) {
        match kind {
            Kind::Snapshot(full) => {
                self.revision = full.revision;
                self.endpoints = full.endpoints.into_iter().map(|e| (e.id.clone(), e)).collect();
                self.networks = full.networks.into_iter().map(|n| n.id).collect();
                self.snapshots += 1;
            }
            Kind::Events(batch) => {
                for event in batch.events {
                    self.revision = event.revision;
                    match event.kind.unwrap() {
                        pb::event::Kind::EndpointCreated(e) | pb::event::Kind::EndpointUpdated(e) => {
                            self.endpoints.insert(e.id.clone(), e);
                        }
                        pb::event::Kind::EndpointRemoved(e) => {
                            self.endpoints.remove(&e.id);
                        }
                        pb::event::Kind::NetworkCreated(n) => {
                            self.networks.insert(n.id);
                        }
                        pb::event::Kind::NetworkRemoved(n) => {
                            self.networks.remove(&n.id);
                        }
                        _ => {}
                    }
                }
            }
            Kind::Progress(progress) => self.revision = self.revision.max(progress.revision),
        }
    }

    fn endpoint_networks(&self) -> BTreeSet<&str> {
        self.endpoints.values().map(|e| e.network_id.as_str()).collect()
    }
}

/// What `host` should hold: every endpoint of the networks it has an endpoint on.
fn view_of(all: &[pb::Endpoint], host: &str) -> BTreeMap<String, pb::Endpoint> {
    let seen: BTreeSet<&str> = all.iter().filter(|e| e.node == host).map(|e| e.network_id.as_str()).collect();
    all.iter().filter(|e| seen.contains(e.network_id.as_str())).map(|e| (e.id.clone(), e.clone())).collect()
}

async fn all_endpoints(cluster: &Cluster, i: usize) -> Vec<pb::Endpoint> {
    cluster
        .endpoints(i)
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints
}

fn watch_as(node: &str, from_revision: u64) -> pb::WatchRequest {
    pb::WatchRequest { from_revision, node: node.into() }
}

/// Reads the stream into `mirror` until it reaches `revision`, within 10 s.
async fn follow_to(stream: &mut tonic::Streaming<pb::WatchResponse>, mirror: &mut HostMirror, revision: u64) {
    let follow = async {
        while mirror.revision < revision {
            mirror.take(stream.message().await.unwrap().expect("the stream stays open").kind.unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(10), follow).await.expect("the watcher reached the revision");
}

#[tokio::test]
async fn a_host_is_sent_the_endpoints_of_its_networks_and_the_whole_of_one_it_joins() {
    let cluster = Cluster::start(1);
    cluster.wait_ready(0, Duration::from_secs(20)).await;
    for (octet, host) in (1..).zip(["h1", "h2", "h3"]) {
        register(&cluster, 0, host, octet).await;
    }
    for name in ["a", "b", "c"] {
        cluster
            .networks(0)
            .create_network(pb::CreateNetworkRequest { name: name.into(), ..Default::default() })
            .await
            .unwrap();
    }
    let create = |network: &str, node: &str, container: &str| {
        let mut client = cluster.endpoints(0);
        let request = attach(network, node, container);
        async move { client.create_endpoint(request).await.unwrap().into_inner() }
    };
    create("a", "h2", "a-h2-1").await;
    create("a", "h2", "a-h2-2").await;
    let b_h3 = create("b", "h3", "b-h3-1").await;
    let a_h1 = create("a", "h1", "a-h1-1").await;

    // Its view: every network and node, and the endpoints of a only.
    let mut watch = WatchServiceClient::new(cluster.channel(0));
    let mut stream = watch.watch(watch_as("h1", 0)).await.unwrap().into_inner();
    let mut h1 = HostMirror::default();
    let Kind::Snapshot(full) = next_change(&mut stream).await else { panic!("expected a snapshot") };
    assert_eq!((full.networks.len(), full.nodes.len()), (3, 3), "networks and nodes go to every host");
    h1.take(Kind::Snapshot(full));
    assert_eq!(h1.endpoints, view_of(&all_endpoints(&cluster, 0).await, "h1"));
    assert_eq!(h1.endpoints.len(), 3);

    // A change on a network it does not see moves only its revision; one on a is sent.
    let b_h3_2 = create("b", "h3", "b-h3-2").await;
    follow_to(&mut stream, &mut h1, b_h3_2.created_revision).await;
    assert!(!h1.endpoints.contains_key(&b_h3_2.id));
    let a_h2_3 = create("a", "h2", "a-h2-3").await;
    match next_change(&mut stream).await {
        Kind::Events(batch) => {
            assert_eq!(batch.events.len(), 1);
            h1.take(Kind::Events(batch));
        }
        other => panic!("expected a's new endpoint, got {other:?}"),
    }
    assert!(h1.endpoints.contains_key(&a_h2_3.id));
    let before_joining = h1.revision;

    // Its first container on b: b's endpoints arrive whole, as a snapshot of its view.
    let b_h1 = create("b", "h1", "b-h1-1").await;
    let joined = next_change(&mut stream).await;
    assert!(matches!(joined, Kind::Snapshot(_)), "expected a snapshot on joining b, got {joined:?}");
    h1.take(joined);
    assert!(h1.revision >= b_h1.created_revision);
    assert!(h1.endpoints.contains_key(&b_h3.id) && h1.endpoints.contains_key(&b_h3_2.id));
    assert_eq!(h1.endpoints, view_of(&all_endpoints(&cluster, 0).await, "h1"));

    // Its last container on a goes: a's endpoints go with it.
    cluster
        .endpoints(0)
        .remove_endpoint(pb::RemoveEndpointRequest {
            target: Some(pb::remove_endpoint_request::Target::EndpointId(a_h1.id.clone())),
            ..Default::default()
        })
        .await
        .unwrap();
    let left = next_change(&mut stream).await;
    assert!(matches!(left, Kind::Snapshot(_)), "expected a snapshot on leaving a, got {left:?}");
    h1.take(left);
    assert_eq!(h1.endpoint_networks().len(), 1, "only b's endpoints are left: {:?}", h1.endpoints);
    assert_eq!(h1.endpoints, view_of(&all_endpoints(&cluster, 0).await, "h1"));
    drop(stream);

    // Away while others change: resuming replays what concerns it, and the revision passes
    // the rest.
    let resumed_from = h1.revision;
    create("a", "h2", "a-h2-4").await;
    let b_h3_3 = create("b", "h3", "b-h3-3").await;
    let mut stream = watch.watch(watch_as("h1", resumed_from)).await.unwrap().into_inner();
    let snapshots = h1.snapshots;
    follow_to(&mut stream, &mut h1, b_h3_3.created_revision).await;
    assert_eq!(h1.snapshots, snapshots, "a replay, not a snapshot");
    assert_eq!(h1.endpoints, view_of(&all_endpoints(&cluster, 0).await, "h1"));
    drop(stream);

    // Resuming from before it joined b: the replay would lack b's older endpoints, so it
    // starts over from a snapshot of its view.
    let mut stream = watch.watch(watch_as("h1", before_joining)).await.unwrap().into_inner();
    let mut again = HostMirror { revision: before_joining, ..Default::default() };
    let first = next_change(&mut stream).await;
    assert!(matches!(first, Kind::Snapshot(_)), "expected a snapshot, got {first:?}");
    again.take(first);
    assert_eq!(again.endpoints, view_of(&all_endpoints(&cluster, 0).await, "h1"));

    // Without a host named: everything, as before.
    let mut stream = watch.watch(watch_as("", 0)).await.unwrap().into_inner();
    let Kind::Snapshot(full) = next_change(&mut stream).await else { panic!("expected a snapshot") };
    assert_eq!(full.endpoints.len(), all_endpoints(&cluster, 0).await.len());
}

/// Six hosts attach and detach containers at once on four networks through a three-member
/// cluster, while one member is killed; each host follows the watch as its agent does
/// (reconnecting to the next member and resuming from its revision). In the end each holds
/// exactly its networks' endpoints.
#[tokio::test]
async fn host_views_stay_exact_through_concurrent_attaches_and_a_member_kill() {
    const HOSTS: usize = 6;
    let mut cluster = Cluster::start(3);
    for i in 0..3 {
        cluster.wait_ready(i, Duration::from_secs(20)).await;
    }
    for (h, octet) in (0..HOSTS).zip(10..) {
        register(&cluster, 0, &format!("h{h}"), octet).await;
    }
    for n in 0..4 {
        let request = pb::CreateNetworkRequest { name: format!("n{n}"), ..Default::default() };
        cluster.networks(0).create_network(request).await.unwrap();
    }
    let channels: Vec<Channel> = (0..3).map(|i| cluster.channel(i)).collect();
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let mirrors: Vec<_> =
        (0..HOSTS).map(|_| std::sync::Arc::new(std::sync::Mutex::new(HostMirror::default()))).collect();
    let mut watchers = Vec::new();
    for (h, mirror) in mirrors.iter().enumerate() {
        let (channels, mirror, stop) = (channels.clone(), mirror.clone(), stop.clone());
        watchers.push(tokio::spawn(async move {
            let follow = async {
                for member in (h..).map(|m| m % 3) {
                    let from = mirror.lock().unwrap().revision;
                    let Ok(response) = WatchServiceClient::new(channels[member].clone())
                        .watch(watch_as(&format!("h{h}"), from))
                        .await
                    else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let mut stream = response.into_inner();
                    while let Ok(Some(message)) = stream.message().await {
                        mirror.lock().unwrap().take(message.kind.unwrap());
                    }
                }
            };
            tokio::select! { () = follow => {}, () = stop.notified() => {} }
        }));
    }

    // Writers: each host attaches 12 containers over two of the networks and detaches every
    // third; even hosts then leave their second network. Through the two members that stay
    // up, retrying with the request id as agents do.
    let mut writers = Vec::new();
    for h in 0..HOSTS {
        let channels = channels[..2].to_vec();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let detach = |id: String, request_id: String, through: usize| {
                let channel = channels[through % 2].clone();
                async move {
                    let remove = pb::RemoveEndpointRequest {
                        target: Some(pb::remove_endpoint_request::Target::EndpointId(id)),
                        request_id,
                    };
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while let Err(status) =
                        EndpointServiceClient::new(channel.clone()).remove_endpoint(remove.clone()).await
                    {
                        assert!(Instant::now() < deadline, "detach never went through: {status:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            for k in 0..12 {
                let network = format!("n{}", (h + k % 2) % 4);
                let mut request = attach(&network, &format!("h{h}"), &format!("c{h}-{k}"));
                request.request_id = format!("attach-{h}-{k}");
                let deadline = Instant::now() + Duration::from_secs(30);
                let created = loop {
                    let mut client = EndpointServiceClient::new(channels[k % 2].clone());
                    match client.create_endpoint(request.clone()).await {
                        Ok(created) => break created.into_inner(),
                        Err(status) => {
                            assert!(Instant::now() < deadline, "attach never went through: {status:?}")
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                mine.push((created.id, network));
                if k % 3 == 2 {
                    let (id, _) = mine.remove(0);
                    detach(id, format!("detach-{h}-{k}"), k).await;
                }
            }
            if h % 2 == 0 {
                let second = format!("n{}", (h + 1) % 4);
                for (k, (id, _)) in mine.into_iter().filter(|(_, n)| *n == second).enumerate() {
                    detach(id, format!("leave-{h}-{k}"), k).await;
                }
            }
        }));
    }
    // A member down half-way through (a third of the attaches in): its watchers move on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while all_endpoints(&cluster, 0).await.len() < HOSTS * 4 {
        assert!(Instant::now() < deadline, "the attaches never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill(2);
    let killed_at = cluster.status(0).await.revision;
    for writer in writers {
        writer.await.unwrap();
    }

    let all = all_endpoints(&cluster, 0).await;
    let revision = cluster.status(0).await.revision;
    assert!(revision > killed_at + 20, "the kill came too late to matter: {killed_at} of {revision}");
    let deadline = Instant::now() + Duration::from_secs(20);
    for (h, mirror) in mirrors.iter().enumerate() {
        let expected = view_of(&all, &format!("h{h}"));
        loop {
            let held = mirror.lock().unwrap().clone();
            if held.revision >= revision {
                assert_eq!(held.endpoints, expected, "host h{h} at revision {}", held.revision);
                let networks = if h % 2 == 0 { 1 } else { 2 };
                assert_eq!(
                    held.endpoint_networks().len(),
                    networks,
                    "host h{h} sees {networks} of 4 networks"
                );
                break;
            }
            assert!(Instant::now() < deadline, "host h{h} stuck at revision {} of {revision}", held.revision);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.notify_waiters();
    for watcher in watchers {
        let _ = watcher.await;
    }
}

/// Everything a user can list, as one comparable value.
async fn everything(cluster: &Cluster, i: usize) -> (Vec<pb::Network>, Vec<pb::Endpoint>, Vec<pb::Node>) {
    let networks = cluster
        .networks(i)
        .list_networks(pb::ListNetworksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .networks;
    let endpoints = cluster
        .endpoints(i)
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    let nodes = cluster.nodes(i).list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner().nodes;
    (networks, endpoints, nodes)
}

#[tokio::test]
async fn restarting_every_member_keeps_identical_state() {
    let mut cluster = Cluster::start(3);
    cluster.wait_ready(0, Duration::from_secs(30)).await;
    register(&cluster, 0, "h1", 1).await;
    register(&cluster, 1, "h2", 2).await;
    for (i, name) in ["red", "green", "blue"].iter().enumerate() {
        cluster
            .networks(i)
            .create_network(pb::CreateNetworkRequest {
                name: name.to_string(),
                enable_ipv6: i == 1,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for k in 0..60usize {
        let network = ["red", "green", "blue"][k % 3];
        let node = if k % 2 == 0 { "h1" } else { "h2" };
        cluster.endpoints(k % 3).create_endpoint(attach(network, node, &format!("c{k}"))).await.unwrap();
    }
    cluster
        .endpoints(0)
        .remove_endpoint(pb::RemoveEndpointRequest {
            target: Some(pb::remove_endpoint_request::Target::Container(pb::ContainerOnNetwork {
                network: "red".into(),
                container_id: "c0".into(),
            })),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = everything(&cluster, 0).await;
    assert_eq!(before.1.len(), 59);

    cluster.restart_all().await;
    for i in 0..3 {
        assert_eq!(everything(&cluster, i).await, before, "member {} after restarting all", i + 1);
    }
}

/// A write taken by a follower is answered from the follower's own state once it has applied
/// the write (it waits for its applied revision, not for a read-index round to the leader):
/// networks created through the leader and, at once, an endpoint on each through a follower,
/// all concurrently. Each answer comes within the deadline (a follower whose applied revision
/// never reached the waiter would answer Unavailable) and names its network and address.
#[tokio::test]
async fn a_follower_answers_forwarded_writes_from_its_own_applied_state() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_ready(0, Duration::from_secs(30)).await;
    let (leading, follower) = (cluster.index_of(leader), (cluster.index_of(leader) + 1) % 3);
    register(&cluster, leading, "h1", 1).await;
    let tasks: Vec<_> = (0..24)
        .map(|k| {
            let (mut networks, mut endpoints) = (cluster.networks(leading), cluster.endpoints(follower));
            tokio::spawn(async move {
                let name = format!("n{k}");
                let request = pb::CreateNetworkRequest { name: name.clone(), ..Default::default() };
                let network = networks.create_network(request).await.unwrap().into_inner();
                let endpoint = endpoints
                    .create_endpoint(attach(&name, "h1", &format!("c{k}")))
                    .await
                    .unwrap()
                    .into_inner();
                (network, endpoint)
            })
        })
        .collect();
    for task in tasks {
        let (network, endpoint) = task.await.unwrap();
        assert_eq!(
            (endpoint.network_id.as_str(), endpoint.network_name.as_str()),
            (network.id.as_str(), network.name.as_str())
        );
        assert!(!endpoint.ipv4_address.is_empty(), "{endpoint:?}");
        assert!(endpoint.created_revision > 0, "{endpoint:?}");
    }
}

async fn node_status(cluster: &Cluster, i: usize, name: &str) -> (i32, u64) {
    let nodes = cluster.nodes(i).list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner();
    let node = nodes.nodes.iter().find(|n| n.name == name).unwrap();
    (node.status, nodes.revision)
}

#[tokio::test]
async fn silent_hosts_are_marked_down_and_come_back_with_a_heartbeat() {
    let cluster = Cluster::start_with(3, &["--node-timeout-ms", "1000"]);
    let leader = cluster.wait_ready(0, Duration::from_secs(30)).await;
    let follower = (cluster.index_of(leader) + 1) % 3;
    register(&cluster, 0, "h1", 1).await;
    let beat = |applied: u64| {
        let mut client = cluster.nodes(follower);
        async move {
            client
                .heartbeat(pb::HeartbeatRequest {
                    name: "h1".into(),
                    applied_revision: applied,
                    ..Default::default()
                })
                .await
        }
    };

    // Heartbeats through a follower reach the leader and write nothing to the log.
    let first = beat(1).await.unwrap().into_inner();
    assert_eq!(first.status, pb::NodeStatus::Up as i32);
    assert_eq!(first.liveness_timeout_seconds, 1);
    for applied in 2..6 {
        let answer = beat(applied).await.unwrap().into_inner();
        assert_eq!(answer.revision, first.revision, "a heartbeat is not a change");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader_nodes =
        cluster.nodes(cluster.index_of(leader)).list_nodes(pb::ListNodesRequest {}).await.unwrap();
    assert_eq!(leader_nodes.into_inner().nodes[0].applied_revision, 5, "the leader knows what h1 applied");

    // Silence: marked down after the timeout, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let down_revision = loop {
        let (status, revision) = node_status(&cluster, 0, "h1").await;
        if status == pb::NodeStatus::Down as i32 {
            break revision;
        }
        assert!(Instant::now() < deadline, "h1 was not marked down within 10 s of silence");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(down_revision, first.revision + 1, "one log entry for the transition");

    // The next heartbeat brings it back.
    let back = beat(6).await.unwrap().into_inner();
    assert_eq!(back.status, pb::NodeStatus::Up as i32);
    assert_eq!(node_status(&cluster, 0, "h1").await, (pb::NodeStatus::Up as i32, down_revision + 1));

    let err = cluster
        .nodes(follower)
        .heartbeat(pb::HeartbeatRequest { name: "ghost".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("register the host"), "{}", err.message());
}

/// A plain HTTP GET over loopback; the body after the headers.
/// The barrier behind `attach --wait`: asked through a follower, answered by the leader from
/// the hosts' heartbeats; a host that has not applied the revision is named when time runs out.
#[tokio::test]
async fn await_applied_waits_for_every_other_host_with_the_network() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_ready(0, Duration::from_secs(30)).await;
    let follower = (cluster.index_of(leader) + 1) % 3;
    for (i, name) in ["h1", "h2", "h3"].into_iter().enumerate() {
        register(&cluster, 0, name, u8::try_from(i + 1).unwrap()).await;
    }
    cluster
        .networks(0)
        .create_network(pb::CreateNetworkRequest { name: "n".into(), ..Default::default() })
        .await
        .unwrap();
    cluster.endpoints(0).create_endpoint(attach("n", "h2", "c2")).await.unwrap();
    let created = cluster.endpoints(0).create_endpoint(attach("n", "h1", "c1")).await.unwrap().into_inner();
    let revision = created.created_revision;
    let beat = |name: &str, applied: u64| {
        let mut client = cluster.nodes(follower);
        let request =
            pb::HeartbeatRequest { name: name.into(), applied_revision: applied, ..Default::default() };
        async move { client.heartbeat(request).await.unwrap() }
    };
    let wait = |timeout_ms: u32| {
        let mut client = cluster.nodes(follower);
        let request = pb::AwaitAppliedRequest {
            network: "n".into(),
            revision,
            except_node: "h1".into(),
            timeout_ms,
            ..Default::default()
        };
        async move { client.await_applied(request).await }
    };

    // h2 has a container on n and is behind; h3 has none and is not waited for.
    beat("h2", revision - 1).await;
    let began = Instant::now();
    let behind = wait(300).await.unwrap_err();
    assert_eq!(behind.code(), Code::DeadlineExceeded, "{behind:?}");
    assert!(behind.message().contains("h2") && !behind.message().contains("h3"), "{}", behind.message());
    assert!(began.elapsed() < Duration::from_secs(3), "the wait must end at its timeout");

    // A heartbeat with the revision releases a waiter at once.
    let waiting = tokio::spawn(wait(5000));
    tokio::time::sleep(Duration::from_millis(100)).await;
    beat("h2", revision).await;
    let done = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(done.nodes, vec!["h2".to_string()]);

    // A host that reports it cannot program the endpoint ends the wait at once, named with
    // its reason, even though its applied revision has moved past it.
    let problem = |name: &str, applied: u64, endpoint: &str, reason: &str| {
        let mut client = cluster.nodes(follower);
        let request = pb::HeartbeatRequest {
            name: name.into(),
            applied_revision: applied,
            problems: vec![pb::EndpointProblem { endpoint_id: endpoint.into(), reason: reason.into() }],
        };
        async move { client.heartbeat(request).await.unwrap() }
    };
    problem("h2", revision + 5, &created.id, "setting FDB entry: No buffer space").await;
    let began = Instant::now();
    let request = pb::AwaitAppliedRequest {
        network: "n".into(),
        revision,
        except_node: "h1".into(),
        timeout_ms: 5000,
        endpoint_id: created.id.clone(),
    };
    let blocked = cluster.nodes(follower).await_applied(request).await.unwrap_err();
    assert_eq!(blocked.code(), Code::FailedPrecondition, "{blocked:?}");
    assert!(
        blocked.message().contains("host h2 cannot program it: setting FDB entry: No buffer space")
            && blocked.message().contains(&created.id[..12]),
        "{}",
        blocked.message()
    );
    assert!(began.elapsed() < Duration::from_secs(2), "a blocked wait ends at once");

    // A host's problem with its own endpoint is replicated: every member lists it, and it
    // clears when the host reports the endpoint programmed.
    problem("h1", revision + 5, &created.id, "moving eth0 into /run/netns/x: File exists").await;
    let problem_on = |i: usize| {
        let mut client = cluster.endpoints(i);
        let id = created.id.clone();
        async move {
            let list = client
                .list_endpoints(pb::ListEndpointsRequest { node: "h1".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            list.endpoints.into_iter().find(|e| e.id == id).unwrap().problem
        }
    };
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while problem_on(i).await != "moving eth0 into /run/netns/x: File exists" {
            assert!(Instant::now() < deadline, "member {} does not list h1's problem", i + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    beat("h1", revision + 6).await;
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !problem_on(i).await.is_empty() {
            assert!(Instant::now() < deadline, "member {} still lists h1's solved problem", i + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let unknown = cluster
        .nodes(follower)
        .await_applied(pb::AwaitAppliedRequest { network: "nope".into(), revision, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

#[tokio::test]
async fn metrics_show_leadership_commits_and_requests_by_code() {
    let metrics_addr = free_address();
    let cluster = Cluster::start_with(1, &["--metrics-listen", &metrics_addr, "--snapshot-every", "8"]);
    let cluster_metrics = metrics_addr.clone();
    cluster.wait_ready(0, Duration::from_secs(20)).await;
    let create = || pb::CreateNetworkRequest { name: "n".into(), ..Default::default() };
    cluster.networks(0).create_network(create()).await.unwrap();
    assert_eq!(cluster.networks(0).create_network(create()).await.unwrap_err().code(), Code::AlreadyExists);

    let body =
        tokio::task::spawn_blocking(move || weft_testbed::http_get(&metrics_addr, "/metrics")).await.unwrap();
    for expected in [
        "weft_controller_is_leader 1\n",
        "weft_controller_requests_total{method=\"CreateNetwork\",code=\"OK\"} 1\n",
        "weft_controller_requests_total{method=\"CreateNetwork\",code=\"AlreadyExists\"} 1\n",
        "# TYPE weft_controller_commit_seconds histogram\n",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in\n{body}");
    }
    let revision: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("weft_controller_revision "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(revision >= 2, "configure + create: {revision}");
    let commits: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("weft_controller_commit_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(commits >= 2, "{commits}");

    // Enough entries for a snapshot: the gauge then gives its size.
    let metrics_addr = cluster_metrics;
    for k in 0..4 {
        let request = pb::CreateNetworkRequest { name: format!("more{k}"), ..Default::default() };
        cluster.networks(0).create_network(request).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let addr = metrics_addr.clone();
        let body =
            tokio::task::spawn_blocking(move || weft_testbed::http_get(&addr, "/metrics")).await.unwrap();
        let bytes: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix("weft_controller_snapshot_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        if bytes > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot after 9 entries with --snapshot-every 8");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `grpcurl` and load balancers use: the standard health service answers SERVING, and
/// server reflection lists weft's services and hands out their descriptors.
#[tokio::test]
async fn health_checking_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let cluster = Cluster::start(1);
    cluster.wait_ready(0, Duration::from_secs(20)).await;
    for service in ["", "weft.v1.NetworkService", "weft.v1.EndpointService", "weft.v1.WatchService"] {
        let health = HealthClient::new(cluster.channel(0))
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status(), ServingStatus::Serving, "service {service:?}");
    }

    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let answer = |response: ServerReflectionResponse| response.message_response.unwrap();
    let mut reflection = ServerReflectionClient::new(cluster.channel(0));
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol("weft.v1.EndpointService".into())),
        ]))
        .await
        .unwrap()
        .into_inner();
    let MessageResponse::ListServicesResponse(list) = answer(replies.message().await.unwrap().unwrap())
    else {
        panic!("expected a service list")
    };
    let services: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["weft.v1.NetworkService", "weft.v1.EndpointService", "grpc.health.v1.Health"] {
        assert!(services.contains(expected), "{expected} missing from {services:?}");
    }
    assert!(
        !services.iter().any(|s| s.starts_with("weft.raft")),
        "internal Raft service exposed: {services:?}"
    );
    let MessageResponse::FileDescriptorResponse(files) = answer(replies.message().await.unwrap().unwrap())
    else {
        panic!("expected file descriptors")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// Creates endpoints c{from}..c{to} on network "big" from host h1, through rotating members,
/// retrying as a client that knows every member would; returns the containers acknowledged.
async fn create_many(clients: Vec<EndpointServiceClient<Channel>>, from: usize, to: usize) -> Vec<String> {
    let mut acknowledged = Vec::new();
    for k in from..to {
        let container = format!("c{k}");
        let mut done = false;
        for attempt in 0..50 {
            let mut client = clients[(k + attempt) % clients.len()].clone();
            match client.create_endpoint(attach("big", "h1", &container)).await {
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(s) if s.code() == Code::AlreadyExists => {
                    done = true;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert!(done, "create {container} kept failing");
        acknowledged.push(container);
    }
    acknowledged
}

/// Host h1 and a /16 network "big", created through member `via`.
async fn big_network(cluster: &Cluster, via: usize) {
    register(cluster, via, "h1", 1).await;
    cluster
        .networks(via)
        .create_network(pb::CreateNetworkRequest {
            name: "big".into(),
            ipam_config: vec![pb::IpamConfig { subnet: "172.16.0.0/16".into(), ..Default::default() }],
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn members_are_added_and_removed_while_writes_go_on() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_ready(0, Duration::from_secs(30)).await;
    big_network(&cluster, 0).await;
    let writers: Vec<_> = (0..3).map(|i| cluster.endpoints(i)).collect();
    let writing = tokio::spawn(create_many(writers, 0, 300));

    // A fourth member joins through a follower, catches up and becomes a voter.
    let joiner = cluster.spawn_joiner(4);
    let follower = (cluster.index_of(leader) + 1) % 3;
    // As an operator's client would, it asks again while the answer is Unavailable: on two
    // busy cores the joiner's catching up under 300 writes can take longer than one request's
    // timeout (seen in a CI run), and asking again for a member already added is no change.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let added = loop {
        let asked = ClusterServiceClient::new(cluster.channel(follower))
            .add_member(pb::AddMemberRequest { id: 4, address: cluster.members[joiner].addr.clone() })
            .await;
        match asked {
            Ok(answer) => break answer.into_inner(),
            Err(status) if status.code() == Code::Unavailable && std::time::Instant::now() < deadline => {}
            Err(status) => panic!("adding member 4: {status:?}"),
        }
    };
    assert!(added.members.iter().any(|m| m.id == 4 && m.voter), "{added:?}");

    // A member other than the leader is removed, through the new member.
    let leaving = cluster.members[(cluster.index_of(leader) + 2) % 3].id;
    let after = ClusterServiceClient::new(cluster.channel(joiner))
        .remove_member(pb::RemoveMemberRequest { id: leaving })
        .await
        .unwrap()
        .into_inner();
    let ids: BTreeSet<u64> = after.members.iter().map(|m| m.id).collect();
    assert!(!ids.contains(&leaving) && ids.contains(&4) && ids.len() == 3, "{after:?}");
    // An operator stops a removed member; writers still pointed at it move on.
    let leaving_index = cluster.index_of(leaving);
    cluster.kill(leaving_index);

    let acknowledged = writing.await.unwrap();
    assert_eq!(acknowledged.len(), 300);
    let on_joiner = everything(&cluster, joiner).await;
    assert_eq!(on_joiner.1.len(), 300, "the new member sees every endpoint");
    let on_leader = everything(&cluster, cluster.index_of(leader)).await;
    assert_eq!(on_joiner, on_leader);

    let err = ClusterServiceClient::new(cluster.channel(joiner))
        .remove_member(pb::RemoveMemberRequest { id: 99 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn a_member_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-every", "20"]);
    let leader = cluster.wait_ready(0, Duration::from_secs(30)).await;
    big_network(&cluster, 0).await;
    let lagging = (cluster.index_of(leader) + 1) % 3;
    let behind = cluster.status(lagging).await.applied_index;
    cluster.kill(lagging);

    let writers: Vec<_> = (0..3).filter(|i| *i != lagging).map(|i| cluster.endpoints(i)).collect();
    create_many(writers, 0, 120).await;
    // The leader purges only once its latest snapshot is built and no append to the stopped
    // member is still in flight, which can come a moment after the last write is answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader_status = loop {
        let status = cluster.status(cluster.index_of(leader)).await;
        if status.purged_index > behind {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the log the lagging member needs was never compacted away ({} <= {behind})",
            status.purged_index
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    cluster.spawn(lagging);
    cluster.wait_ready(lagging, Duration::from_secs(30)).await;
    let caught_up = everything(&cluster, lagging).await;
    assert_eq!(caught_up.1.len(), 120);
    assert_eq!(caught_up, everything(&cluster, cluster.index_of(leader)).await);
    assert!(cluster.status(lagging).await.snapshot_index >= leader_status.purged_index);
}

/// A follower stops running in the middle of replication (SIGSTOP, as a paused VM or a
/// stalled disk would), with the leader's AppendEntries to it still in flight on their stream.
/// The leader's calls time out and their late answers must never be taken for later calls'.
/// Writes go on committing with the other two; when the follower runs again it catches up and
/// answers every write, without a snapshot.
#[tokio::test]
async fn a_follower_that_stalls_mid_replication_catches_up_when_it_runs_again() {
    let cluster = Cluster::start(3);
    let leader = cluster.index_of(cluster.wait_ready(0, Duration::from_secs(30)).await);
    big_network(&cluster, leader).await;
    let stalled = (leader + 1) % 3;
    let writers: Vec<_> = (0..3).filter(|i| *i != stalled).map(|i| cluster.endpoints(i)).collect();
    let writes = tokio::spawn(async move {
        let batches = (0..4).map(|b| create_many(writers.clone(), b * 100, b * 100 + 100));
        all_at_once(batches).await
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.status(leader).await.applied_index < 50 {
        assert!(Instant::now() < deadline, "writes did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.signal(stalled, "STOP");
    let stopped_at = cluster.status(leader).await.applied_index;
    while cluster.status(leader).await.applied_index < stopped_at + 100 {
        assert!(Instant::now() < deadline, "writes stopped committing while one follower was stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.signal(stalled, "CONT");

    let acknowledged: usize = writes.await.unwrap().iter().map(Vec::len).sum();
    assert_eq!(acknowledged, 400);
    let leader_state = everything(&cluster, leader).await;
    assert_eq!(leader_state.1.len(), 400);
    assert_eq!(everything(&cluster, stalled).await, leader_state);
    let status = cluster.status(stalled).await;
    assert_eq!(status.snapshot_index, 0, "caught up from the log, not a snapshot");
    assert_eq!(status.applied_index, cluster.status(leader).await.applied_index);
}

/// Runs every future to completion, concurrently; their outputs in order.
async fn all_at_once<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.unwrap());
    }
    outputs
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_reset_with_a_snapshot_without_slowing_writes() {
    let cluster = Cluster::start_with(1, &["--watch-buffer", "256"]);
    cluster.wait_ready(0, Duration::from_secs(20)).await;
    big_network(&cluster, 0).await;
    // Small HTTP/2 windows, so the stalled stream stops taking data after a few messages
    // (the client's default window would absorb megabytes).
    let small_windows = Channel::from_shared(format!("http://{}", cluster.members[0].addr))
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect_lazy();
    let mut stream = WatchServiceClient::new(small_windows)
        .watch(pb::WatchRequest { from_revision: 0, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let start = match next_change(&mut stream).await {
        Kind::Snapshot(full) => full.revision,
        other => panic!("expected a snapshot, got {other:?}"),
    };

    // 4,800 changes while the watcher reads nothing: far past its buffer of 256 batches (and
    // the stream's own flow-control windows).
    let began = Instant::now();
    let writers: Vec<_> = (0..16)
        .map(|w| tokio::spawn(create_many(vec![cluster.endpoints(0)], w * 300, w * 300 + 300)))
        .collect();
    for writer in writers {
        assert_eq!(writer.await.unwrap().len(), 300);
    }
    let took = began.elapsed();
    assert!(took < Duration::from_secs(60), "writes were not held up by the stalled watcher: {took:?}");

    // Reading again: what was buffered, then a fresh snapshot, then live events, in order.
    let mut last = start;
    let reset = loop {
        match next_change(&mut stream).await {
            Kind::Events(batch) => {
                for event in &batch.events {
                    assert!(
                        event.revision > last,
                        "revisions only go forward: {} after {last}",
                        event.revision
                    );
                    last = event.revision;
                }
            }
            Kind::Snapshot(full) => break full,
            Kind::Progress(_) => unreachable!("filtered by next_change"),
        }
    };
    assert!(last < start + 4800, "the watcher fell behind and was reset before seeing everything");
    assert_eq!(reset.endpoints.len(), 4800, "the reset snapshot holds every endpoint");
    cluster.endpoints(0).create_endpoint(attach("big", "h1", "after-reset")).await.unwrap();
    let after = revisions(&next_change(&mut stream).await);
    assert_eq!(after, vec![reset.revision + 1], "live events continue right after the snapshot");
}

/// The manifest's networks exist once the cluster is bootstrapped; starting every member
/// again with the same manifest changes nothing, and a network removed since stays removed.
#[tokio::test]
async fn manifest_networks_are_created_once_at_bootstrap() {
    let mut cluster = Cluster::start_full(
        3,
        &[],
        "[[networks]]\nname = \"front\"\nsubnet = \"10.30.0.0/24\"\nlabels = { team = \"web\" }\n",
    );
    cluster.wait_ready(0, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let front = loop {
        let listed = cluster
            .networks(0)
            .list_networks(pb::ListNetworksRequest::default())
            .await
            .unwrap()
            .into_inner()
            .networks;
        if let Some(front) = listed.into_iter().find(|n| n.name == "front") {
            break front;
        }
        assert!(Instant::now() < deadline, "the manifest's network never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(front.ipam_config[0].subnet, "10.30.0.0/24");
    assert_eq!(front.labels.get("team").map(String::as_str), Some("web"));

    cluster
        .networks(0)
        .remove_network(pb::RemoveNetworkRequest {
            network: "front".into(),
            force: false,
            ..Default::default()
        })
        .await
        .unwrap();
    cluster.restart_all().await;
    let listed =
        cluster.networks(1).list_networks(pb::ListNetworksRequest::default()).await.unwrap().into_inner();
    assert!(listed.networks.is_empty(), "a removed manifest network came back: {listed:?}");
}
