//! The API contract as any gRPC client meets it: a three-member cluster over mutual TLS, driven
//! only through the stubs generated from `proto/weft/v1` (here Rust's; the last test runs the
//! Python grpcio client of `tests/python/weft_client.py`, the README's worked example).
//!
//! Each test checks what a client would: the status code, the `google.rpc` details, what is
//! in the registry afterwards, and that every member answers alike.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_api::pb::watch_service_client::WatchServiceClient;
use weft_pki::{Authority, Credentials, Role};
use weft_testbed::{Process, free_address_on, own_loopback};

/// Three controllers from one manifest, each with its own certificate from one CA; an admin
/// credential for the tests. Killed when dropped, even when a test fails.
struct SecureCluster {
    addresses: Vec<String>,
    members: Vec<Option<Process>>,
    dirs: Vec<PathBuf>,
    manifest: PathBuf,
    admin: Credentials,
    admin_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SecureCluster {
    async fn start() -> SecureCluster {
        let tmp = tempfile::tempdir().unwrap();
        let ip = own_loopback(7);
        let addresses: Vec<String> = (0..3).map(|_| free_address_on(&ip)).collect();
        let ca = Authority::create("conformance").unwrap();
        let members: Vec<String> = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, address = \"{a}\" }}", i + 1))
            .collect();
        let manifest = tmp.path().join("cluster.toml");
        std::fs::write(
            &manifest,
            format!("cluster_id = \"conformance\"\nmembers = [{}]\n", members.join(", ")),
        )
        .unwrap();
        let dirs: Vec<PathBuf> = (1..=3).map(|id| tmp.path().join(format!("m{id}"))).collect();
        for (i, dir) in dirs.iter().enumerate() {
            ca.issue(Role::Controller, &(i + 1).to_string(), std::slice::from_ref(&ip))
                .unwrap()
                .save(&dir.join("tls"))
                .unwrap();
        }
        let admin = ca.issue(Role::Admin, "conformance", &[]).unwrap();
        let admin_dir = tmp.path().join("admin");
        admin.save(&admin_dir).unwrap();
        let mut cluster = SecureCluster {
            addresses,
            members: vec![None, None, None],
            dirs,
            manifest,
            admin,
            admin_dir,
            _tmp: tmp,
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster.ready().await;
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let child = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
            .args(["--id", &(i + 1).to_string(), "--listen", &self.addresses[i], "--data-dir"])
            .arg(self.dirs[i].join("data"))
            .arg("--tls-dir")
            .arg(self.dirs[i].join("tls"))
            .arg("--manifest")
            .arg(&self.manifest)
            .args(["--heartbeat-ms", "50", "--request-timeout-ms", "3000"])
            .env("RUST_LOG", "warn,openraft=off")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn weft-controller");
        self.members[i] = Some(Process(child));
    }

    /// `kill -9`.
    fn kill(&mut self, i: usize) {
        self.members[i] = None;
    }

    fn channel(&self, i: usize) -> Channel {
        Channel::from_shared(format!("https://{}", self.addresses[i]))
            .unwrap()
            .tls_config(self.admin.client())
            .unwrap()
            .connect_lazy()
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

    fn cluster(&self, i: usize) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel(i))
    }

    /// Waits until every running member knows a leader and the registry is configured.
    async fn ready(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut leaders = Vec::new();
            for i in (0..3).filter(|i| self.members[*i].is_some()) {
                match self.cluster(i).status(pb::StatusRequest {}).await {
                    Ok(s) if !s.get_ref().cluster_id.is_empty() => leaders.push(s.into_inner().leader_id),
                    _ => leaders.push(0),
                }
            }
            if leaders.iter().all(|l| *l != 0 && *l == leaders[0]) {
                return leaders[0];
            }
            assert!(Instant::now() < deadline, "the cluster never agreed on a leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn register(&self, name: &str, octet: u8) {
        self.nodes(0)
            .register_node(pb::RegisterNodeRequest {
                name: name.into(),
                underlay_address: format!("192.0.2.{octet}"),
                underlay_mtu: 1500,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn network(name: &str) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest { name: name.into(), ..Default::default() }
}

fn with_subnet(name: &str, subnet: &str) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        ipam_config: vec![pb::IpamConfig { subnet: subnet.into(), ..Default::default() }],
        enable_ipv6: subnet.contains(':'),
        ..network(name)
    }
}

fn endpoint(network: &str, node: &str, container: &str) -> pb::CreateEndpointRequest {
    pb::CreateEndpointRequest {
        network: network.into(),
        node: node.into(),
        container_id: container.into(),
        container_name: container.into(),
        ..Default::default()
    }
}

/// The refusal's code, checked, and the field its BadRequest details name.
fn bad_field(result: Result<impl std::fmt::Debug, Status>, words: &[&str]) -> String {
    let status = result.expect_err("the request was accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for word in words {
        assert!(status.message().contains(word), "{word:?} missing from {:?}", status.message());
    }
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("a BadRequest detail").field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    violations[0].field.clone()
}

async fn network_names(cluster: &SecureCluster, i: usize) -> Vec<String> {
    let listed = cluster.networks(i).list_networks(pb::ListNetworksRequest::default()).await.unwrap();
    let mut names: Vec<String> = listed.into_inner().networks.into_iter().map(|n| n.name).collect();
    names.sort();
    names
}

/// Item 1: special-purpose ranges and malformed CIDRs, wherever a request names a block or an
/// address, are InvalidArgument naming the range's purpose; none is created.
#[tokio::test]
async fn special_purpose_ranges_are_refused_by_purpose_wherever_a_request_names_them() {
    let cluster = SecureCluster::start().await;
    let mut client = cluster.networks(1);
    let cases = [
        ("224.0.0.0/24", "multicast"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("240.0.0.0/24", "reserved"),
        ("0.0.0.0/8", "this network"),
        ("0.0.0.0/0", "this network"),
        ("::/0", "unspecified"),
        ("ff00::/64", "multicast"),
        ("fe80::/64", "link-local"),
        ("::ffff:10.78.0.0/120", "IPv4-mapped"),
    ];
    for (i, (subnet, purpose)) in cases.iter().enumerate() {
        let refused = client.create_network(with_subnet(&format!("special{i}"), subnet)).await;
        let field = bad_field(refused, &[subnet, purpose]);
        assert_eq!(field, "ipam_config[0].subnet", "{subnet}");
    }
    let leading_zeros = client.create_network(with_subnet("zeros", "10.78.0.0/024")).await;
    bad_field(leading_zeros, &["10.78.0.0/024", "leading zeros"]);

    let range = pb::CreateNetworkRequest {
        ipam_config: vec![pb::IpamConfig {
            subnet: "10.78.0.0/16".into(),
            ip_range: "127.0.0.0/24".into(),
            ..Default::default()
        }],
        ..network("range")
    };
    assert_eq!(
        bad_field(client.create_network(range).await, &["ip range", "loopback"]),
        "ipam_config[0].ip_range"
    );
    let gateway = pb::CreateNetworkRequest {
        ipam_config: vec![pb::IpamConfig {
            subnet: "10.78.0.0/16".into(),
            gateway: "224.0.0.1".into(),
            ..Default::default()
        }],
        ..network("gateway")
    };
    assert_eq!(
        bad_field(client.create_network(gateway).await, &["gateway", "multicast"]),
        "ipam_config[0].gateway"
    );

    client.create_network(with_subnet("fine", "10.78.0.0/24")).await.unwrap();
    cluster.register("h1", 1).await;
    let stray =
        pb::CreateEndpointRequest { ipv4_address: "127.0.0.5".into(), ..endpoint("fine", "h1", "c1") };
    let field = bad_field(cluster.endpoints(2).create_endpoint(stray).await, &["IPv4 address", "loopback"]);
    assert_eq!(field, "ipv4_address");
    assert_eq!(network_names(&cluster, 0).await, ["fine"], "nothing refused was created");
}

/// Item 2 and 7: a refusal quotes a little of a huge input (so it stays InvalidArgument, not
/// RESOURCE_EXHAUSTED for an oversized header) and carries details a program can act on.
#[tokio::test]
async fn refusals_quote_input_briefly_and_carry_google_rpc_details() {
    let cluster = SecureCluster::start().await;
    let mut client = cluster.networks(0);
    let huge_name = "n".repeat(10_000);
    let refused = client.create_network(network(&huge_name)).await.expect_err("accepted");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().len() < 400, "{} bytes", refused.message().len());
    assert!(refused.message().contains("(10000 characters)"), "{}", refused.message());
    let label = pb::CreateNetworkRequest {
        labels: [("big".to_string(), "v".repeat(900_000))].into(),
        ..network("labelled")
    };
    let field = bad_field(client.create_network(label).await, &["(900000 characters)"]);
    assert_eq!(field, "labels");
    let unknown = cluster
        .networks(1)
        .inspect_network(pb::InspectNetworkRequest { network: "x".repeat(5_000) })
        .await
        .expect_err("found");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().len() < 400);

    client.create_network(network("blue")).await.unwrap();
    let taken = cluster.networks(2).create_network(network("blue")).await.expect_err("created twice");
    assert_eq!(taken.code(), Code::AlreadyExists);
    let info = taken.get_error_details().resource_info().cloned().expect("a ResourceInfo detail");
    assert_eq!((info.resource_type.as_str(), info.resource_name.as_str()), ("weft.v1.Network", "blue"));

    let missing = client.inspect_network(pb::InspectNetworkRequest { network: "nosuch".into() }).await;
    let info =
        missing.expect_err("found").get_error_details().resource_info().cloned().expect("ResourceInfo");
    assert_eq!(info.resource_name, "nosuch");

    cluster.register("h1", 1).await;
    cluster.endpoints(1).create_endpoint(endpoint("blue", "h1", "c1")).await.unwrap();
    let busy = client
        .remove_network(pb::RemoveNetworkRequest { network: "blue".into(), ..Default::default() })
        .await
        .expect_err("removed with an endpoint");
    assert_eq!(busy.code(), Code::FailedPrecondition);
    let failure = busy.get_error_details().precondition_failure().cloned().expect("PreconditionFailure");
    assert_eq!(failure.violations[0].r#type, "NETWORK_IN_USE");
    assert_eq!(failure.violations[0].subject, "blue");
}

/// Item 3: a request id makes a retry safe — through any member, concurrently, across a
/// leader kill — and a request that arrives past its deadline writes nothing.
#[tokio::test]
async fn writes_retried_with_their_request_id_happen_once_and_late_requests_write_nothing() {
    let mut cluster = SecureCluster::start().await;

    // Fifty clients retry one create at once, through every member, with one request id.
    let tries: Vec<_> = (0..50)
        .map(|i| {
            let mut client = cluster.networks(i % 3);
            tokio::spawn(async move {
                let request =
                    pb::CreateNetworkRequest { request_id: "create-blue-1".into(), ..network("blue") };
                client.create_network(request).await.map(|r| r.into_inner().id)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tries {
        ids.push(task.await.unwrap().expect("a retry with the request id succeeds"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every try answered with the one network: {ids:?}");
    assert_eq!(network_names(&cluster, 2).await, ["blue"]);

    // Somebody else (another id, or none) is still told the name is taken.
    let other = pb::CreateNetworkRequest { request_id: "create-blue-2".into(), ..network("blue") };
    assert_eq!(cluster.networks(0).create_network(other).await.unwrap_err().code(), Code::AlreadyExists);
    // The same id for a different request is the client's mistake, named.
    let reused = pb::CreateNetworkRequest { request_id: "create-blue-1".into(), ..network("green") };
    assert_eq!(
        bad_field(cluster.networks(0).create_network(reused).await, &["different request"]),
        "request_id"
    );

    // The answer survives the leader's death: the retry goes to a survivor.
    let leader = cluster.ready().await;
    let leader_index = usize::try_from(leader - 1).unwrap();
    let removal = |mut client: NetworkServiceClient<Channel>| async move {
        client
            .remove_network(pb::RemoveNetworkRequest {
                network: "blue".into(),
                request_id: "remove-blue".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    };
    let first = removal(cluster.networks(leader_index)).await.unwrap();
    cluster.kill(leader_index);
    let survivor = (leader_index + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(20);
    let retried = loop {
        match removal(cluster.networks(survivor)).await {
            Ok(answer) => break answer,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the retried removal failed: {status:?}"),
        }
    };
    assert_eq!(retried, first, "the retry answers what the first removal did, not NotFound");
    cluster.spawn(leader_index);
    cluster.ready().await;

    // Requests that arrive with their deadline already passed are never proposed.
    for (i, timeout) in ["1n", "1u"].iter().enumerate() {
        let mut request = Request::new(network(&format!("late{i}")));
        request.metadata_mut().insert("grpc-timeout", timeout.parse().unwrap());
        let status =
            cluster.networks(i % 3).create_network(request).await.expect_err("a late request succeeded");
        assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    }
    // And a client with a tiny deadline learns the outcome by retrying with its request id.
    for (i, timeout) in [Duration::from_micros(1), Duration::from_micros(100), Duration::from_millis(1)]
        .into_iter()
        .enumerate()
    {
        let id = format!("tiny-{i}");
        let name = format!("tiny{i}");
        let mut hurried = Request::new(pb::CreateNetworkRequest { request_id: id.clone(), ..network(&name) });
        hurried.set_timeout(timeout);
        let _ = cluster.networks(0).create_network(hurried).await;
        let calm = pb::CreateNetworkRequest { request_id: id, ..network(&name) };
        cluster.networks(1).create_network(calm).await.expect("the retry learns the outcome");
    }
    let names = network_names(&cluster, 0).await;
    assert_eq!(names, ["tiny0", "tiny1", "tiny2"], "late requests created nothing; tiny ones exactly once");
}

/// Item 4: every service served answers health checks by name, and reflection speaks both
/// v1 and v1alpha.
#[tokio::test]
async fn every_service_is_healthy_by_name_and_reflection_speaks_v1alpha_too() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let cluster = SecureCluster::start().await;
    let mut reflection = ServerReflectionClient::new(cluster.channel(1));
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        reflection.server_reflection_info(tokio_stream::iter([ask])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let services: Vec<String> =
        list.service.into_iter().map(|s| s.name).filter(|s| s.starts_with("weft.")).collect();
    assert_eq!(services.len(), 7, "{services:?}");
    for service in services.iter().map(String::as_str).chain([""]) {
        let health = HealthClient::new(cluster.channel(2))
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|s| panic!("health of {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(health.status(), ServingStatus::Serving, "{service:?}");
    }
}

/// Item 5: status, members and hosts' applied revisions are the same whichever member
/// answers: the leader's view.
#[tokio::test]
async fn any_member_reports_the_same_members_and_applied_revisions() {
    let cluster = SecureCluster::start().await;
    cluster.register("h1", 1).await;
    cluster.networks(0).create_network(network("blue")).await.unwrap();
    let revision = network_names(&cluster, 0).await.len() as u64; // at least one change
    // The host reports through a follower; every member then shows what it reported.
    let leader = cluster.ready().await;
    let follower = usize::try_from(leader % 3).unwrap();
    let beat =
        pb::HeartbeatRequest { name: "h1".into(), applied_revision: 41 + revision, problems: Vec::new() };
    cluster.nodes(follower).heartbeat(beat).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut views = Vec::new();
        for i in 0..3 {
            let status = cluster.cluster(i).status(pb::StatusRequest {}).await.unwrap().into_inner();
            let nodes = cluster.nodes(i).list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner();
            let members: Vec<(u64, bool, bool)> =
                status.members.iter().map(|m| (m.id, m.reachable, m.matched_index > 0)).collect();
            views.push((
                status.members_reported_by,
                status.leader_id,
                members,
                nodes.nodes[0].applied_revision,
            ));
        }
        let expected =
            (leader, leader, vec![(1, true, true), (2, true, true), (3, true, true)], 41 + revision);
        if views.iter().all(|v| *v == expected) {
            break;
        }
        assert!(Instant::now() < deadline, "members disagree: {views:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed =
        cluster.cluster(follower).list_members(pb::ListMembersRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.members_reported_by, leader);
    let node =
        cluster.nodes(follower).inspect_node(pb::InspectNodeRequest { name: "h1".into() }).await.unwrap();
    assert_eq!(node.into_inner().node.unwrap().applied_revision, 41 + revision);
}

/// Item 6: the edges where the proto and the server disagreed.
#[tokio::test]
async fn the_server_keeps_the_contract_the_proto_states() {
    let cluster = SecureCluster::start().await;
    cluster.register("h1", 1).await;
    let mut networks = cluster.networks(0);
    networks.create_network(network("blue")).await.unwrap();
    let created =
        cluster.endpoints(1).create_endpoint(endpoint("blue", "h1", "c1")).await.unwrap().into_inner();

    // The 12 digits `weft endpoint ls` prints name the endpoint.
    let by_prefix = pb::RemoveEndpointRequest {
        target: Some(pb::remove_endpoint_request::Target::EndpointId(created.id[..12].into())),
        ..Default::default()
    };
    let removed = cluster.endpoints(2).remove_endpoint(by_prefix).await.unwrap().into_inner();
    assert_eq!(removed.endpoint.unwrap().id, created.id);
    let too_short = pb::RemoveEndpointRequest {
        target: Some(pb::remove_endpoint_request::Target::EndpointId(created.id[..8].into())),
        ..Default::default()
    };
    assert_eq!(
        bad_field(cluster.endpoints(2).remove_endpoint(too_short).await, &["at least 12"]),
        "endpoint_id"
    );

    let nameless = networks.inspect_network(pb::InspectNetworkRequest::default()).await;
    assert_eq!(bad_field(nameless, &["name the network"]), "network");
    let ghost_host = pb::ListEndpointsRequest { node: "ghost".into(), ..Default::default() };
    let status = cluster.endpoints(1).list_endpoints(ghost_host).await.expect_err("listed");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("ghost"));

    let implicit_v6 = pb::CreateNetworkRequest { enable_ipv6: false, ..with_subnet("v6", "fd00:77::/64") };
    assert_eq!(bad_field(networks.create_network(implicit_v6).await, &["enable_ipv6"]), "enable_ipv6");

    let labelled = pb::CreateNetworkRequest {
        labels: [("env".to_string(), "prod".to_string())].into(),
        ..network("prod")
    };
    networks.create_network(labelled).await.unwrap();
    let not_prod = pb::ListNetworksRequest { labels: vec!["env!=prod".into()], ..Default::default() };
    let listed = networks.list_networks(not_prod).await.unwrap().into_inner();
    assert_eq!(listed.networks.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["blue"]);

    // A watcher from a revision this cluster never reached starts over from a snapshot,
    // whose lower revision tells it so.
    let ahead = listed.revision + 1_000;
    let mut stream = WatchServiceClient::new(cluster.channel(2))
        .watch(pb::WatchRequest { from_revision: ahead, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().kind {
        Some(pb::watch_response::Kind::Snapshot(full)) => assert!(full.revision < ahead),
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// Where the Python client's virtual environment lives: built once per target directory.
/// Tests run as processes of their own at the same time: the first builds it while holding a
/// lock, the others wait for it rather than build into the same directory at once.
fn python_env() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let venv = target.join("python-grpcio");
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    std::fs::create_dir_all(&target).unwrap();
    let lock = std::fs::File::create(target.join("python-grpcio.lock")).unwrap();
    let _building = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the Python environment");
    if ready.exists() {
        return python;
    }
    // What a build cut short left behind.
    let _ = std::fs::remove_dir_all(&venv);
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/requirements.txt");
    let created =
        Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 is installed");
    assert!(created.success(), "python3 -m venv failed (install python3-venv)");
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements)
        .status()
        .unwrap();
    assert!(installed.success(), "installing {} failed", requirements.display());
    std::fs::write(&ready, "").unwrap();
    python
}

/// The established TCP connections (local, peer) matching an `ss` filter.
fn established(filter: &str) -> Vec<(String, String, String)> {
    let out =
        Command::new("ss").args(["-Htnp", "state", "established", filter]).output().expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            Some((columns.get(2)?.to_string(), columns.get(3)?.to_string(), columns[4..].join(" ")))
        })
        .collect()
}

/// A client that stops answering without closing its connection (a host that lost power in
/// the middle of a watch, a paused VM) is let go: members ping their HTTP/2 connections and
/// close one whose peer does not answer, so its watch stream and buffers do not stay for
/// ever. The client is a stock Python grpcio watch, stopped with SIGSTOP; its kernel still
/// holds the TCP connection, so only the missing ping answers can tell.
#[tokio::test]
async fn a_watcher_that_stops_answering_is_let_go() {
    let cluster = SecureCluster::start().await;
    let python = python_env();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/stalled_watcher.py");
    let member = &cluster.addresses[0];
    let mut watcher = Process(
        Command::new(&python)
            .arg(&script)
            .args(["--controller", member, "--tls-dir"])
            .arg(&cluster.admin_dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(watcher.0.stdout.take().unwrap()), &mut first)
        .unwrap();
    assert_eq!(first.trim(), "watching");
    let port = member.rsplit(':').next().unwrap();
    let pid = format!("pid={},", watcher.0.id());
    let (watcher_end, _, _) = established(&format!("( dport = :{port} )"))
        .into_iter()
        .find(|(_, _, process)| process.contains(&pid))
        .expect("the watcher's connection");
    let watcher_port = watcher_end.rsplit(':').next().unwrap().to_string();
    let member_side = format!("( sport = :{port} and dport = :{watcher_port} )");
    assert_eq!(established(&member_side).len(), 1, "the member's end of the watch");

    weft_testbed::signal(watcher.0.id(), "STOP");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !established(&member_side).is_empty() {
        assert!(Instant::now() < deadline, "the member still holds the stopped watcher's connection");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The README's worked example, run with a stock Python grpcio client: stubs generated from
/// the .proto files, mutual TLS, health, v1alpha reflection, a retried create with a request
/// id, and a refusal's details decoded with grpcio-status.
#[tokio::test]
async fn a_stock_python_grpcio_client_uses_the_api_as_the_readme_shows() {
    let cluster = SecureCluster::start().await;
    let python = python_env();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/weft_client.py");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let out = Command::new(&python)
        .arg(&script)
        .args(["--controller", &cluster.addresses[1], "--tls-dir"])
        .arg(&cluster.admin_dir)
        .arg("--proto")
        .arg(&proto)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "health: SERVING",
        "created blue",
        "retry answered",
        "refused: INVALID_ARGUMENT field=ipam_config[0].subnet",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert_eq!(network_names(&cluster, 2).await, ["blue"], "the retry created nothing more");
}
