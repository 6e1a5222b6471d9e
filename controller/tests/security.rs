//! Who may talk to a controller: mutual TLS with the cluster CA's certificates, and each role
//! only its own calls. A real controller process on loopback, real certificates.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_api::pb::watch_service_client::WatchServiceClient;
use weft_pki::{Authority, Credentials, Role};

struct Controller {
    child: Child,
    address: String,
    log: PathBuf,
    ca: Authority,
    _dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Controller {
    fn start() -> Controller {
        Controller::start_with(false, &[])
    }

    /// `signs`: the credential directory also holds the CA key, as `weft pki init` makes a
    /// controller's: it signs joiners' certificate requests. `flags` go to weft-controller.
    fn start_with(signs: bool, flags: &[&str]) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        // A loopback IP of this test process's own: no other test can take the port picked.
        let ip = weft_testbed::own_loopback(3);
        let address = weft_testbed::free_address_on(&ip);
        let ca = Authority::create("secure").unwrap();
        ca.issue(Role::Controller, "1", &[ip]).unwrap().save(&dir.path().join("tls")).unwrap();
        if signs {
            ca.save(&dir.path().join("tls")).unwrap();
        }
        let log = dir.path().join("controller.log");
        let child = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
            .args(["--listen", &address, "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-dir")
            .arg(dir.path().join("tls"))
            .args(flags)
            .env("RUST_LOG", "warn,openraft=off")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Controller { child, address, log, ca, _dir: dir }
    }

    async fn channel(&self, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("https://{}", self.address)).unwrap().tls_config(tls)?.connect().await
    }

    /// An admin's channel, once the cluster takes writes (its configuration, which carries
    /// the cluster id, is in).
    async fn admin(&self) -> Channel {
        let admin = self.as_(Role::Admin, "ops").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while pb::cluster_service_client::ClusterServiceClient::new(admin.clone())
            .status(pb::StatusRequest {})
            .await
            .map_or(true, |s| s.into_inner().cluster_id.is_empty())
        {
            assert!(Instant::now() < deadline, "the cluster was never configured");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        admin
    }

    /// A channel as `role:name`, once the controller answers.
    async fn as_(&self, role: Role, name: &str) -> Channel {
        let credentials = self.ca.issue(role, name, &[]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = self.channel(credentials.client()).await {
                let probe = NetworkServiceClient::new(channel.clone())
                    .list_networks(pb::ListNetworksRequest::default())
                    .await;
                // Nodes may not list networks: a PermissionDenied answer proves the server is up.
                match probe {
                    Ok(_) => return channel,
                    Err(s) if s.code() == Code::PermissionDenied => return channel,
                    Err(_) => {}
                }
            }
            assert!(Instant::now() < deadline, "controller did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn denied<T: std::fmt::Debug>(result: Result<T, Status>, words: &[&str]) {
    let status = result.expect_err("the call was allowed");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    for word in words {
        assert!(status.message().contains(word), "{word:?} missing from {status:?}");
    }
}

/// A certificate from another CA fails the handshake; no certificate gets through it (joining
/// needs that) but is refused every call.
#[tokio::test]
async fn strangers_get_nothing() {
    let controller = Controller::start();
    let _admin = controller.as_(Role::Admin, "ops").await;
    let ca_only = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(controller.ca.certificate()));
    let stranger = Authority::create("another").unwrap().issue(Role::Admin, "ops", &[]).unwrap();
    let other_ca = Credentials { ca: controller.ca.certificate().to_string(), ..stranger };
    for (what, tls) in
        [("no client certificate", ca_only), ("a certificate from another CA", other_ca.client())]
    {
        let refused = match controller.channel(tls).await {
            Err(_) => true,
            Ok(channel) => NetworkServiceClient::new(channel)
                .list_networks(pb::ListNetworksRequest::default())
                .await
                .is_err(),
        };
        assert!(refused, "a client with {what} was served");
    }
    // Plaintext gets nowhere either.
    let plain = Channel::from_shared(format!("http://{}", controller.address)).unwrap().connect().await;
    if let Ok(channel) = plain {
        assert!(
            NetworkServiceClient::new(channel)
                .list_networks(pb::ListNetworksRequest::default())
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn a_node_acts_for_its_own_host_only_until_removed_and_denials_are_logged() {
    let controller = Controller::start();
    let admin = controller.admin().await;
    let (a, b) = (controller.as_(Role::Node, "a").await, controller.as_(Role::Node, "b").await);
    NetworkServiceClient::new(admin.clone())
        .create_network(pb::CreateNetworkRequest { name: "shared".into(), ..Default::default() })
        .await
        .unwrap();
    let register = |name: &str, octet: u8| pb::RegisterNodeRequest {
        name: name.into(),
        underlay_address: format!("192.0.2.{octet}"),
        underlay_mtu: 1500,
        labels: BTreeMap::new(),
        ..Default::default()
    };
    NodeServiceClient::new(a.clone()).register_node(register("a", 1)).await.unwrap();
    NodeServiceClient::new(b.clone()).register_node(register("b", 2)).await.unwrap();
    denied(NodeServiceClient::new(a.clone()).register_node(register("b", 3)).await, &["node:a", "\"b\""]);
    denied(
        NodeServiceClient::new(a.clone())
            .heartbeat(pb::HeartbeatRequest { name: "b".into(), ..Default::default() })
            .await,
        &["node:a"],
    );

    let endpoint = |node: &str, container: &str| pb::CreateEndpointRequest {
        network: "shared".into(),
        node: node.into(),
        container_id: container.into(),
        container_name: container.into(),
        ..Default::default()
    };
    EndpointServiceClient::new(a.clone()).create_endpoint(endpoint("a", "ca")).await.unwrap();
    let on_b = EndpointServiceClient::new(b.clone())
        .create_endpoint(endpoint("b", "cb"))
        .await
        .unwrap()
        .into_inner();
    denied(
        EndpointServiceClient::new(a.clone()).create_endpoint(endpoint("b", "sneaky")).await,
        &["node:a", "\"b\""],
    );
    let remove = |container: &str| pb::RemoveEndpointRequest {
        target: Some(pb::remove_endpoint_request::Target::Container(pb::ContainerOnNetwork {
            network: "shared".into(),
            container_id: container.into(),
        })),
        ..Default::default()
    };
    denied(EndpointServiceClient::new(a.clone()).remove_endpoint(remove("cb")).await, &["node:a", "remove"]);
    // A host names its own endpoints (as the Docker plugin does once Docker tells it), and
    // only its own.
    let update = |container: &str, name: &str| pb::UpdateEndpointRequest {
        target: Some(pb::update_endpoint_request::Target::Container(pb::ContainerOnNetwork {
            network: "shared".into(),
            container_id: container.into(),
        })),
        container_name: name.into(),
        aliases: vec![format!("{name}-alias")],
        ..Default::default()
    };
    let named = EndpointServiceClient::new(a.clone())
        .update_endpoint(update("ca", "web"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (named.container_name.as_str(), named.aliases.as_slice()),
        ("web", ["web-alias".to_string()].as_slice())
    );
    assert!(named.modified_revision > named.created_revision, "the rename is a change: {named:?}");
    denied(
        EndpointServiceClient::new(a.clone()).update_endpoint(update("cb", "stolen")).await,
        &["node:a", "update"],
    );
    // Nodes do not manage networks or other nodes.
    denied(
        NetworkServiceClient::new(a.clone())
            .create_network(pb::CreateNetworkRequest { name: "mine".into(), ..Default::default() })
            .await,
        &["node:a", "CreateNetwork"],
    );
    denied(
        NodeServiceClient::new(a.clone())
            .remove_node(pb::RemoveNodeRequest { name: "b".into(), ..Default::default() })
            .await,
        &["RemoveNode"],
    );
    // Except the Docker plugin's provisional networks: made, renamed once (then an
    // administrator's), removed while still provisional.
    let provisional = |name: &str| pb::CreateNetworkRequest {
        name: name.into(),
        labels: BTreeMap::from([("weft.docker.provisional".to_string(), "true".to_string())]),
        ..Default::default()
    };
    let mut nets = NetworkServiceClient::new(a.clone());
    nets.create_network(provisional("docker-0a1b")).await.unwrap();
    nets.create_network(provisional("docker-0a1c")).await.unwrap();
    denied(nets.create_network(provisional("not-provisional")).await, &["node:a", "CreateNetwork"]);
    let rename = |network: &str, name: &str| pb::RenameNetworkRequest {
        network: network.into(),
        name: name.into(),
        ..Default::default()
    };
    let reshape = |network: &str| pb::ReshapeNetworkRequest {
        network: network.into(),
        internal: true,
        ..Default::default()
    };
    nets.reshape_network(reshape("docker-0a1b")).await.unwrap();
    nets.rename_network(rename("docker-0a1b", "app")).await.unwrap();
    denied(nets.rename_network(rename("app", "app2")).await, &["node:a", "RenameNetwork"]);
    denied(nets.reshape_network(reshape("app")).await, &["node:a", "ReshapeNetwork"]);
    denied(
        nets.remove_network(pb::RemoveNetworkRequest { network: "app".into(), ..Default::default() }).await,
        &["node:a", "RemoveNetwork"],
    );
    nets.remove_network(pb::RemoveNetworkRequest { network: "docker-0a1c".into(), ..Default::default() })
        .await
        .unwrap();
    // b's endpoint is still there; its own host and an admin may remove endpoints.
    let listed = EndpointServiceClient::new(admin.clone())
        .list_endpoints(pb::ListEndpointsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.endpoints.iter().any(|e| e.id == on_b.id));
    // A host retrying its own removal with the request id of the first attempt gets that
    // attempt's answer, though the endpoint is gone by then.
    let once = pb::RemoveEndpointRequest { request_id: "b-removes-cb".into(), ..remove("cb") };
    let first =
        EndpointServiceClient::new(b.clone()).remove_endpoint(once.clone()).await.unwrap().into_inner();
    let retry = EndpointServiceClient::new(b.clone()).remove_endpoint(once).await.unwrap().into_inner();
    assert_eq!(retry, first);
    EndpointServiceClient::new(admin.clone()).remove_endpoint(remove("ca")).await.unwrap();

    // An oversized request is refused before it is decoded, and the server carries on.
    let huge = pb::CreateNetworkRequest {
        name: "huge".into(),
        labels: BTreeMap::from([("blob".to_string(), "x".repeat(2 << 20))]),
        ..Default::default()
    };
    let refused = NetworkServiceClient::new(admin.clone()).create_network(huge).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("too large"), "{refused:?}");
    NetworkServiceClient::new(admin.clone()).list_networks(pb::ListNetworksRequest::default()).await.unwrap();

    // Removing host b revokes its credential: b's calls are refused from then on, while a
    // credential issued after the removal is good.
    NodeServiceClient::new(admin.clone())
        .remove_node(pb::RemoveNodeRequest { name: "b".into(), ..Default::default() })
        .await
        .unwrap();
    denied(NodeServiceClient::new(b.clone()).register_node(register("b", 2)).await, &["revoked", "node:b"]);
    // Certificate times have one-second resolution: the new one must be issued in a later
    // second than the removal to count as newer.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    tokio::time::sleep(
        Duration::from_nanos(u64::from(1_000_000_000 - now.subsec_nanos())) + Duration::from_millis(20),
    )
    .await;
    let b_again = controller.as_(Role::Node, "b").await;
    NodeServiceClient::new(b_again).register_node(register("b", 2)).await.unwrap();

    let log = std::fs::read_to_string(&controller.log).unwrap();
    assert!(log.contains("permission denied") && log.contains("node:a"), "denials are not logged:\n{log}");
}

/// The first snapshot of a watch: the endpoint ids it holds, by container.
async fn watched_containers(channel: Channel, node: &str) -> Result<Vec<String>, Status> {
    let request = pb::WatchRequest { from_revision: 0, node: node.into() };
    let mut stream = WatchServiceClient::new(channel).watch(request).await?.into_inner();
    loop {
        match stream.message().await?.expect("the stream stays open").kind.unwrap() {
            pb::watch_response::Kind::Snapshot(full) => {
                let mut containers: Vec<String> =
                    full.endpoints.into_iter().map(|e| e.container_id).collect();
                containers.sort();
                return Ok(containers);
            }
            _ => continue,
        }
    }
}

/// A host's agent is sent its own view of the registry and cannot read another host's: the
/// name comes from its certificate.
#[tokio::test]
async fn a_host_watches_its_own_networks_only() {
    let controller = Controller::start();
    let admin = controller.admin().await;
    let (a, b) = (controller.as_(Role::Node, "a").await, controller.as_(Role::Node, "b").await);
    for (name, channel, octet) in [("a", &a, 1), ("b", &b, 2)] {
        let request = pb::RegisterNodeRequest {
            name: name.into(),
            underlay_address: format!("192.0.2.{octet}"),
            underlay_mtu: 1500,
            ..Default::default()
        };
        NodeServiceClient::new(channel.clone()).register_node(request).await.unwrap();
    }
    for (network, node, channel) in [("red", "a", &a), ("blue", "b", &b)] {
        NetworkServiceClient::new(admin.clone())
            .create_network(pb::CreateNetworkRequest { name: network.into(), ..Default::default() })
            .await
            .unwrap();
        let request = pb::CreateEndpointRequest {
            network: network.into(),
            node: node.into(),
            container_id: format!("{network}-{node}"),
            container_name: format!("{network}-{node}"),
            ..Default::default()
        };
        EndpointServiceClient::new(channel.clone()).create_endpoint(request).await.unwrap();
    }
    assert_eq!(watched_containers(a.clone(), "").await.unwrap(), ["red-a"], "a node is its own host");
    assert_eq!(watched_containers(a.clone(), "a").await.unwrap(), ["red-a"]);
    denied(watched_containers(a.clone(), "b").await, &["node:a", "\"b\"", "own host"]);
    assert_eq!(watched_containers(admin.clone(), "").await.unwrap(), ["blue-b", "red-a"]);
    assert_eq!(
        watched_containers(admin.clone(), "b").await.unwrap(),
        ["blue-b"],
        "an administrator looks as b"
    );
}

#[tokio::test]
async fn a_host_joins_with_a_token_and_the_ca_fingerprint_and_its_key_never_leaves() {
    let controller = Controller::start_with(true, &[]);
    let admin = controller.admin().await;
    let mut tokens = pb::token_service_client::TokenServiceClient::new(admin.clone());
    let made = tokens
        .create_token(pb::CreateTokenRequest { role: pb::TokenRole::Node.into(), ttl_seconds: 600 })
        .await
        .unwrap()
        .into_inner();
    assert!(made.secret_token.starts_with("weft1."), "{made:?}");
    assert_eq!(made.ca_fingerprint, weft_pki::fingerprint(controller.ca.certificate()).unwrap());

    // The joiner: a key made here, a request asking (in vain) to be an admin.
    let (csr, key) = weft_pki::certificate_request(Role::Admin, "sneaky").unwrap();
    let wrong = "0".repeat(64);
    let refused = weft_pki::join::pinned_channel(&controller.address, &wrong, Duration::from_secs(5)).await;
    assert!(
        refused.unwrap_err().to_string().contains("fingerprint"),
        "a controller with another CA was trusted"
    );
    let channel =
        weft_pki::join::pinned_channel(&controller.address, &made.ca_fingerprint, Duration::from_secs(5))
            .await
            .unwrap();
    let mut join = pb::join_service_client::JoinServiceClient::new(channel);
    let joined = join
        .join(pb::JoinRequest {
            token: made.secret_token.clone(),
            name: "h9".into(),
            csr_pem: csr,
            addresses: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let credentials = Credentials { ca: joined.ca_pem, cert: joined.certificate_pem, key };
    let der = x509_parser_der(&credentials.cert);
    let caller = weft_pki::Caller::from_certificate(&der).unwrap();
    assert_eq!(
        (caller.role, caller.name.as_str()),
        (Role::Node, "h9"),
        "the token, not the request, decides"
    );
    // The new credential works, as node h9 only.
    let h9 = controller.channel(credentials.client()).await.unwrap();
    NodeServiceClient::new(h9.clone())
        .register_node(pb::RegisterNodeRequest {
            name: "h9".into(),
            underlay_address: "192.0.2.9".into(),
            underlay_mtu: 1500,
            ..Default::default()
        })
        .await
        .unwrap();
    denied(
        NetworkServiceClient::new(h9)
            .create_network(pb::CreateNetworkRequest { name: "x".into(), ..Default::default() })
            .await,
        &["node:h9"],
    );

    // Every other call is refused without a certificate; a bad or revoked token gets nothing.
    let anonymous =
        weft_pki::join::pinned_channel(&controller.address, &made.ca_fingerprint, Duration::from_secs(5))
            .await
            .unwrap();
    denied(
        NetworkServiceClient::new(anonymous.clone()).list_networks(pb::ListNetworksRequest::default()).await,
        &["no client certificate"],
    );
    let (csr, _) = weft_pki::certificate_request(Role::Node, "h10").unwrap();
    // The last hex digit of the secret changed (to another digit: one time in sixteen it
    // already was the one a fixed replacement would pick).
    let (kept, last) = made.secret_token.split_at(made.secret_token.len() - 1);
    let forged = format!("{kept}{}", if last == "0" { "1" } else { "0" });
    denied(
        pb::join_service_client::JoinServiceClient::new(anonymous.clone())
            .join(pb::JoinRequest {
                token: forged,
                name: "h10".into(),
                csr_pem: csr.clone(),
                addresses: vec![],
            })
            .await,
        &["join token"],
    );
    let id = made.token.as_ref().unwrap().id.clone();
    tokens.revoke_token(pb::RevokeTokenRequest { id }).await.unwrap();
    denied(
        pb::join_service_client::JoinServiceClient::new(anonymous)
            .join(pb::JoinRequest {
                token: made.secret_token,
                name: "h10".into(),
                csr_pem: csr,
                addresses: vec![],
            })
            .await,
        &["revoked"],
    );
    let listed = tokens.list_tokens(pb::ListTokensRequest {}).await.unwrap().into_inner();
    assert!(listed.tokens.iter().all(|t| t.revoked) && listed.tokens.len() == 1);
}

fn x509_parser_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

/// A new controller gets its credential with a controller token, joins over mutual TLS and
/// becomes a member.
#[tokio::test]
async fn a_new_controller_joins_with_a_controller_token() {
    let first = Controller::start_with(true, &[]);
    let admin = first.admin().await;
    let made = pb::token_service_client::TokenServiceClient::new(admin.clone())
        .create_token(pb::CreateTokenRequest { role: pb::TokenRole::Controller.into(), ttl_seconds: 600 })
        .await
        .unwrap()
        .into_inner();
    let ip = first.address.rsplit_once(':').unwrap().0.to_string();
    let port = std::net::TcpListener::bind((ip.as_str(), 0)).unwrap().local_addr().unwrap().port();
    let second_address = format!("{ip}:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .args(["--id", "2", "--join", "--listen", &second_address, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-dir")
        .arg(dir.path().join("tls"))
        .args([
            "--join-token",
            &made.secret_token,
            "--ca-fingerprint",
            &made.ca_fingerprint,
            "--join-via",
            &first.address,
        ])
        .env("RUST_LOG", "warn,openraft=off")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _second = Kill(&mut second);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("tls/cert.pem").exists() {
        assert!(Instant::now() < deadline, "the new controller got no credential");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let credentials = Credentials::load(&dir.path().join("tls")).unwrap();
    let der = x509_parser_der(&credentials.cert);
    let caller = weft_pki::Caller::from_certificate(&der).unwrap();
    assert_eq!((caller.role, caller.name.as_str()), (Role::Controller, "2"));

    let members = pb::cluster_service_client::ClusterServiceClient::new(admin)
        .add_member(pb::AddMemberRequest { id: 2, address: second_address })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(members.iter().any(|m| m.id == 2 && m.voter), "{members:?}");
}

/// A member that cannot renew its own credential (no CA key in its directory) says when it
/// expires: in its status, in its metrics, and in a warning logged once the expiry is inside
/// the renewal period, naming the command that renews it.
#[tokio::test]
async fn a_member_says_when_its_credential_expires_and_warns_before_it_does() {
    let metrics = weft_testbed::free_address_on(&weft_testbed::own_loopback(4));
    // Credentials last a year: warning 400 days ahead puts this one inside the period.
    let c = Controller::start_with(false, &["--renew-within-days", "400", "--metrics-listen", &metrics]);
    let expires_ms = Credentials::load(&c._dir.path().join("tls")).unwrap().expires_ms().unwrap();
    let admin = c.admin().await;
    let status = pb::cluster_service_client::ClusterServiceClient::new(admin)
        .status(pb::StatusRequest {})
        .await
        .unwrap();
    let expires = status.into_inner().credential_expires.expect("a member with TLS says when it expires");
    assert_eq!(weft_api::convert::millis(&expires), expires_ms);

    let scraped = weft_testbed::http_get(&metrics, "/metrics");
    let line = format!("weft_controller_credential_expiry_timestamp_seconds {}\n", expires_ms / 1000);
    assert!(scraped.contains(&line), "{line} missing from:\n{scraped}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let log = std::fs::read_to_string(&c.log).unwrap();
        if let Some(line) = log.lines().find(|l| l.contains("this member's credential expires soon")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no warning logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        warning.contains("days_left=364") && warning.contains("weft pki issue --controller 1="),
        "{warning}"
    );

    // With the default period (30 days) a fresh credential is no news.
    let quiet = Controller::start();
    quiet.admin().await;
    let log = std::fs::read_to_string(&quiet.log).unwrap();
    assert!(!log.contains("credential expires"), "{log}");
}

/// Three members whose credentials, issued together, expire 20 s after the cluster starts.
/// Member 1 holds the CA key and renews its own at once; members 2 and 3 (joined ones hold no
/// key) have member 1 sign theirs. Each gets a new key with the same name and address and
/// presents it without a restart. Past the old credentials' expiry a member restarted from
/// its disk is caught up by the leader over new connections both ways, and fresh clients
/// reach every member: only renewed credentials can do that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_renew_credentials_issued_together_and_go_on_past_their_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let ip = weft_testbed::own_loopback(5);
    let ca = Authority::create("renewing").unwrap();
    let lifetime = Duration::from_secs(20);
    let issued = Instant::now();
    let addresses: Vec<String> = (0..3).map(|_| weft_testbed::free_address_on(&ip)).collect();
    let manifest = tmp.path().join("cluster.toml");
    weft_testbed::write_manifest(&manifest, "renewing", &addresses);
    let mut originals = Vec::new();
    for i in 0..3 {
        let tls = tmp.path().join(format!("m{}/tls", i + 1));
        let credentials = ca
            .issue_valid_for(Role::Controller, &(i + 1).to_string(), std::slice::from_ref(&ip), lifetime)
            .unwrap();
        credentials.save(&tls).unwrap();
        if i == 0 {
            ca.save(&tls).unwrap();
        }
        originals.push(credentials);
    }
    let spawn = |i: usize| {
        let dir = tmp.path().join(format!("m{}", i + 1));
        weft_testbed::Process(
            Command::new(env!("CARGO_BIN_EXE_weft-controller"))
                .args(["--id", &(i + 1).to_string(), "--listen", &addresses[i], "--manifest"])
                .arg(&manifest)
                .arg("--data-dir")
                .arg(dir.join("data"))
                .arg("--tls-dir")
                .arg(dir.join("tls"))
                .args(["--renew-within-days", "1", "--renew-check-ms", "60000", "--heartbeat-ms", "100"])
                .env("RUST_LOG", "warn,openraft=off")
                .stdin(Stdio::null())
                .stderr(std::fs::File::create(dir.join("controller.log")).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let mut members: Vec<weft_testbed::Process> = (0..3).map(spawn).collect();
    let admin = ca.issue(Role::Admin, "ops", &[]).unwrap();
    let channel = |i: usize| {
        Channel::from_shared(format!("https://{}", addresses[i]))
            .unwrap()
            .tls_config(admin.client())
            .unwrap()
            .connect_lazy()
    };
    let status = |i: usize| async move {
        pb::cluster_service_client::ClusterServiceClient::new(channel(i)).status(pb::StatusRequest {}).await
    };

    // Every member renews at once: its credential is inside the renewal period from the start.
    // (Members 2 and 3 may find member 1 not serving yet, and try again 5 s later.)
    for (i, original) in originals.iter().enumerate() {
        let tls = tmp.path().join(format!("m{}/tls", i + 1));
        let deadline = issued + lifetime - Duration::from_secs(2);
        while Credentials::load(&tls).unwrap().cert == original.cert {
            assert!(Instant::now() < deadline, "member {} did not renew its credential", i + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let renewed = Credentials::load(&tls).unwrap();
        assert_ne!(renewed.key, original.key, "member {}: a new key", i + 1);
        assert_eq!(renewed.sans().unwrap(), std::slice::from_ref(&ip), "member {}: the same address", i + 1);
    }

    // Past the old credentials' expiry, nothing made with them is accepted any more.
    tokio::time::sleep_until((issued + lifetime + Duration::from_secs(1)).into()).await;
    let leader = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = status(0).await
                && s.get_ref().leader_id != 0
            {
                break s.into_inner().leader_id;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = (1..=3)
                    .map(|m| {
                        let log = std::fs::read_to_string(tmp.path().join(format!("m{m}/controller.log")));
                        format!("member {m}:\n{}", log.unwrap_or_default())
                    })
                    .collect();
                panic!("no leader after the old credentials expired:\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    for (i, original) in originals.iter().enumerate() {
        let s = status(i).await.unwrap_or_else(|e| panic!("member {} refused a fresh client: {e}", i + 1));
        let expires = s.into_inner().credential_expires.unwrap();
        assert!(
            weft_api::convert::millis(&expires) > original.expires_ms().unwrap() + 300 * 86_400_000,
            "member {} reports its old credential",
            i + 1
        );
    }

    // A follower restarted from its disk: the leader reaches it over a new connection, with
    // its renewed client credential, and it answers with its renewed server credential.
    let follower = (0..3).find(|i| (*i as u64 + 1) != leader).unwrap();
    drop(members.remove(follower));
    members.insert(follower, spawn(follower));
    let leader_index = usize::try_from(leader - 1).unwrap();
    let created = NetworkServiceClient::new(channel(leader_index))
        .create_network(pb::CreateNetworkRequest { name: "after-expiry".into(), ..Default::default() })
        .await;
    assert!(created.is_ok(), "{created:?}");
    let target = status(leader_index).await.unwrap().into_inner().revision;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if status(follower).await.is_ok_and(|s| s.get_ref().revision >= target) {
            break;
        }
        let log =
            std::fs::read_to_string(tmp.path().join(format!("m{}/controller.log", follower + 1))).unwrap();
        assert!(Instant::now() < deadline, "the restarted member {} never caught up:\n{log}", follower + 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
