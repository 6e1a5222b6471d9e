//! Assembles one controller: store, state machine, Raft, the gRPC server, and bootstrap.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use openraft::{BasicNode, SnapshotPolicy};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use weft_api::pb;
use weft_core::{ClusterConfig, Command};

use crate::batcher::Batcher;
use crate::cluster::Controller;
use crate::error::ControllerError;
use crate::forward::{Peers, pb as raft_pb};
use crate::liveness::Liveness;
use crate::manifest::Manifest;
use crate::metrics::{CountRequests, Metrics};
use crate::raft_network::Network;
use crate::raft_server::RaftServer;
use crate::raft_types::{NodeId, Raft};
use crate::registry::{Registry, StateMachine};
use crate::store::Store;
use crate::watch::WatchRoute;
use crate::{MAX_RAFT_MESSAGE_BYTES, MAX_REQUEST_BYTES};

/// Which cluster a data directory belongs to; written at bootstrap, checked at every start.
const KEY_IDENTITY: &str = "identity";

/// How long an idle connection may go without a sign of its peer before a ping is sent, and
/// how long the ping may then go unanswered before the connection is closed. A ping every
/// 10 s per connection is 500 small frames a second for 5,000 hosts.
const PEER_SILENCE: Duration = Duration::from_secs(10);

/// How to run one controller.
#[derive(Debug, Clone)]
pub struct Options {
    pub id: NodeId,
    /// Where the gRPC server listens (Raft traffic and the public API share it).
    pub listen: SocketAddr,
    /// The address other members and clients use to reach this one; defaults to `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// Bootstrap a new cluster from this manifest; without one, an uninitialised data
    /// directory becomes a single-member cluster.
    pub manifest: Option<Manifest>,
    pub request_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Recent revisions kept for watchers that resume; older ones get a full snapshot.
    pub watch_retained_revisions: usize,
    /// Batches a watcher may fall behind before it is reset with a snapshot.
    pub watch_buffer: usize,
    /// Silence after which the leader marks a host down.
    pub node_timeout: Duration,
    /// Where Prometheus metrics are served (`/metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Join an existing cluster: never bootstrap; wait for `cluster add` on a member.
    pub join: bool,
    /// Build a snapshot (and compact the log) after this many new log entries.
    pub snapshot_every: u64,
    /// This member's credentials from the cluster CA; `None` serves plaintext and lets
    /// anyone do anything (`--insecure`).
    pub tls: Option<weft_pki::Credentials>,
    /// Where they came from; a `ca-key.pem` there lets this member sign joiners' requests.
    pub tls_dir: Option<PathBuf>,
    /// How long before its credential expires this member renews it (or warns).
    pub renew_within: Duration,
    /// How often it looks at the credential in `tls_dir`.
    pub renew_check: Duration,
}

fn raft_config(opts: &Options) -> anyhow::Result<openraft::Config> {
    let heartbeat = u64::try_from(opts.heartbeat_interval.as_millis()).unwrap_or(100).max(10);
    let config = openraft::Config {
        cluster_name: "weft".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: heartbeat * 3,
        election_timeout_max: heartbeat * 6,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every.max(1)),
        // Keep some entries behind a snapshot so a briefly lagging member catches up from the
        // log rather than a whole snapshot.
        max_in_snapshot_log_to_keep: (opts.snapshot_every / 2).min(1_000),
        ..openraft::Config::default()
    };
    config.validate().context("raft configuration")
}

/// A cluster id for a single-member cluster started without a manifest.
fn generated_cluster_id(id: NodeId) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let digest = Sha256::digest(format!("{nanos}:{id}:{}", std::process::id()));
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("weft-{hex}")
}

/// Runs a controller until `shutdown` completes.
pub async fn run(opts: Options, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let advertise = opts.advertise.clone().unwrap_or_else(|| opts.listen.to_string());
    let store = Store::open(&opts.data_dir.join("raft"))
        .with_context(|| format!("opening the data directory {}", opts.data_dir.display()))?;

    let identity: Option<String> = store.get_meta(KEY_IDENTITY)?;
    if let (Some(found), Some(manifest)) = (&identity, &opts.manifest)
        && *found != manifest.config.cluster_id
    {
        bail!(
            "refusing to bootstrap: the data directory {} belongs to cluster {found:?}, not {:?}; \
                 use an empty directory for a new cluster",
            opts.data_dir.display(),
            manifest.config.cluster_id
        );
    }
    if opts.join && opts.manifest.is_some() {
        bail!(
            "--join and --manifest exclude each other: a joining member learns the cluster from its members"
        );
    }
    if let Some(manifest) = &opts.manifest
        && !manifest.members.contains_key(&opts.id)
    {
        bail!("member {} is not in the manifest (members: {:?})", opts.id, manifest.members.keys());
    }

    let credential_expires_ms = opts
        .tls
        .as_ref()
        .map(weft_pki::Credentials::expires_ms)
        .transpose()
        .context("reading when this member's certificate expires")?
        .map(|ms| Arc::new(std::sync::atomic::AtomicU64::new(ms)));
    let registry = Arc::new(Registry::new(opts.watch_retained_revisions, opts.watch_buffer));
    let state_machine = StateMachine::open(store.clone(), registry.clone())?;
    let peers = Peers::new(opts.tls.as_ref().map(weft_pki::Credentials::client));
    let raft = Raft::new(
        opts.id,
        Arc::new(raft_config(&opts)?),
        Network::new(peers.clone()),
        store.clone(),
        state_machine,
    )
    .await
    .context("starting raft")?;
    let controller = Controller {
        id: opts.id,
        raft: raft.clone(),
        registry,
        batcher: Batcher::start(opts.id, raft.clone(), peers.clone(), opts.request_timeout),
        peers,
        liveness: Arc::new(Liveness::new(opts.node_timeout)),
        metrics: Arc::new(Metrics::default()),
        request_timeout: opts.request_timeout,
        signer: match (&opts.tls, &opts.tls_dir) {
            (Some(tls), Some(dir)) => Some(Arc::new(crate::signer::Signer {
                ca_pem: tls.ca.clone(),
                authority: if dir.join("ca-key.pem").exists() {
                    Some(weft_pki::Authority::load(dir).context("loading the CA key for join tokens")?)
                } else {
                    None
                },
            })),
            _ => None,
        },
        credential_expires_ms: credential_expires_ms.clone(),
    };
    tokio::spawn(controller.clone().watch_liveness());

    let listener =
        TcpListener::bind(opts.listen).await.with_context(|| format!("listening on {}", opts.listen))?;
    tracing::info!(id = opts.id, listen = %opts.listen, advertise = %advertise, "controller starting");

    if opts.join {
        tracing::info!("waiting to be added to a cluster (weft cluster add {} {advertise})", opts.id);
        tokio::spawn(record_identity_when_configured(controller.clone(), store, identity));
    } else {
        if !raft.is_initialized().await? {
            bootstrap(&controller, &opts, &advertise).await?;
        }
        let config = match (&opts.manifest, identity.clone()) {
            (Some(manifest), _) => manifest.config.clone(),
            (None, cluster_id) => ClusterConfig {
                cluster_id: cluster_id.unwrap_or_else(|| generated_cluster_id(opts.id)),
                ..ClusterConfig::default()
            },
        };
        if identity.is_none() {
            // Claimed before the cluster holds anything, so this directory can never be
            // mistaken for another cluster's.
            store.put_meta(KEY_IDENTITY, &config.cluster_id)?;
        }
        let networks = opts.manifest.as_ref().map(|m| m.networks.clone()).unwrap_or_default();
        tokio::spawn(configure_when_leader(controller.clone(), config, networks));
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    // The empty service name ("the server as a whole", what probes ask by default) is SERVING
    // from the start; so is each public service by name.
    health_reporter.set_serving::<pb::network_service_server::NetworkServiceServer<Controller>>().await;
    health_reporter.set_serving::<pb::endpoint_service_server::EndpointServiceServer<Controller>>().await;
    health_reporter.set_serving::<pb::node_service_server::NodeServiceServer<Controller>>().await;
    health_reporter.set_serving::<pb::cluster_service_server::ClusterServiceServer<Controller>>().await;
    health_reporter.set_serving::<WatchRoute>().await;
    health_reporter.set_serving::<pb::token_service_server::TokenServiceServer<Controller>>().await;
    health_reporter.set_serving::<pb::join_service_server::JoinServiceServer<Controller>>().await;
    // Both reflection versions: grpcurl and grpcio-reflection before 2023 speak only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(weft_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1().context("building the reflection service")?;
    let reflection_v1alpha =
        reflection_builder().build_v1alpha().context("building the v1alpha reflection service")?;

    let metrics_server = match opts.metrics_listen {
        Some(addr) => Some(tokio::spawn(serve_metrics(
            TcpListener::bind(addr).await.with_context(|| format!("listening for metrics on {addr}"))?,
            controller.clone(),
        ))),
        None => None,
    };

    // With TLS, the certificate is presented through `Presented`, which a renewal replaces
    // while the member serves.
    let tls_server = match &opts.tls {
        Some(tls) => {
            let presented = weft_pki::serve::Presented::new(tls).context("loading the TLS credentials")?;
            let config = presented.server_config(&tls.ca).context("loading the TLS credentials")?;
            Some((presented, config))
        }
        None => {
            tracing::warn!(
                "--insecure: serving plaintext gRPC; anyone who can reach this port controls the cluster"
            );
            None
        }
    };
    let router = tonic::transport::Server::builder()
        // A peer that vanished without closing (a host that lost power, a paused VM) would
        // otherwise hold its connection, its watch stream and that stream's buffers, or a
        // former leader's replication stream, until the process restarts: a peer that does
        // not answer a ping within PEER_SILENCE is disconnected.
        .http2_keepalive_interval(Some(PEER_SILENCE))
        .http2_keepalive_timeout(Some(PEER_SILENCE))
        .layer(CountRequests { metrics: controller.metrics.clone() })
        .layer(weft_pki::authorize::Authorize {
            insecure: opts.tls.is_none(),
            revoked: {
                let registry = controller.registry.clone();
                Arc::new(move |name: &str| registry.with_state(|state| state.node_revoked_at(name)))
            },
        })
        .add_service(
            raft_pb::raft_service_server::RaftServiceServer::new(RaftServer::new(controller.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        )
        .add_service(
            pb::network_service_server::NetworkServiceServer::new(controller.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::endpoint_service_server::EndpointServiceServer::new(controller.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::node_service_server::NodeServiceServer::new(controller.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::cluster_service_server::ClusterServiceServer::new(controller.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(WatchRoute::new(controller.clone()))
        .add_service(
            pb::token_service_server::TokenServiceServer::new(controller.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::join_service_server::JoinServiceServer::new(controller.clone())
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    let renewal = match (&tls_server, &opts.tls, &opts.tls_dir, &credential_expires_ms) {
        (Some((presented, _)), Some(tls), Some(dir), Some(expires_ms)) => {
            Some(tokio::spawn(renewal(&opts, &controller, &advertise, tls, dir, presented, expires_ms).run()))
        }
        _ => None,
    };
    let served = match tls_server {
        Some((_presented, config)) => {
            router.serve_with_incoming_shutdown(weft_pki::serve::incoming(listener, config), shutdown).await
        }
        None => {
            // Small request/response messages: without TCP_NODELAY, Nagle's algorithm and
            // delayed ACKs add ~40 ms to replies.
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    };
    let result = served.context("serving gRPC");
    for task in [metrics_server, renewal].into_iter().flatten() {
        task.abort();
    }
    let _ = raft.shutdown().await;
    result
}

/// The renewal of this member's own credential (decision record 0007).
fn renewal(
    opts: &Options,
    controller: &Controller,
    advertise: &str,
    tls: &weft_pki::Credentials,
    dir: &Path,
    presented: &Arc<weft_pki::serve::Presented>,
    expires_ms: &Arc<std::sync::atomic::AtomicU64>,
) -> crate::renewal::Renewal {
    let (raft, id) = (controller.raft.clone(), opts.id);
    crate::renewal::Renewal {
        id,
        advertise: advertise.to_string(),
        dir: dir.to_path_buf(),
        within: opts.renew_within,
        period: opts.renew_check,
        presented: presented.clone(),
        peers: controller.peers.clone(),
        signer: controller.signer.clone(),
        expires_ms: expires_ms.clone(),
        current: std::sync::Mutex::new(tls.cert.clone()),
        others: Arc::new(move || {
            let metrics = raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            membership.nodes().filter(|(other, _)| **other != id).map(|(_, node)| node.addr.clone()).collect()
        }),
    }
}

/// The manifest's networks, created once by the member that configured the new cluster (by
/// name: one that exists already is left as it is).
async fn create_missing_networks(controller: &Controller, networks: Vec<pb::CreateNetworkRequest>) {
    for request in networks {
        loop {
            if controller.registry.with_state(|s| s.resolve_network(&request.name).is_ok()) {
                break;
            }
            let command = match weft_api::convert::network_request(&request) {
                Ok(req) => Command::CreateNetwork(req),
                Err(e) => {
                    tracing::error!(network = %request.name, "manifest network refused: {e}");
                    break;
                }
            };
            match controller.propose(command).await {
                Ok(_) => {
                    tracing::info!(network = %request.name, "created from the manifest");
                    break;
                }
                Err(ControllerError::Refused(refusal))
                    if refusal.kind() == weft_core::ErrorKind::AlreadyExists =>
                {
                    break;
                }
                Err(ControllerError::Refused(refusal)) => {
                    tracing::error!(network = %request.name, cause = %refusal, "manifest network refused");
                    break;
                }
                Err(unavailable) => {
                    tracing::debug!(network = %request.name, cause = %unavailable, "creating a manifest network: retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Serves `GET /metrics` in Prometheus' text format.
async fn serve_metrics(listener: TcpListener, controller: Controller) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let controller = controller.clone();
            async move {
                let body = controller.metrics.render(controller.gauges());
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(cause = %e, "metrics endpoint stopped");
    }
}

/// Initialises Raft membership on a fresh data directory: the whole manifest on the member
/// with the lowest id (the others wait to be contacted), or this member alone.
async fn bootstrap(controller: &Controller, opts: &Options, advertise: &str) -> anyhow::Result<()> {
    let members: BTreeMap<NodeId, BasicNode> = match &opts.manifest {
        Some(manifest) => {
            if manifest.members.keys().next() != Some(&opts.id) {
                tracing::info!("waiting for the first member of the manifest to bootstrap the cluster");
                return Ok(());
            }
            manifest.members.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect()
        }
        None => [(opts.id, BasicNode { addr: advertise.to_string() })].into(),
    };
    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "bootstrapping a new cluster");
    controller.raft.initialize(members).await.context("initialising the cluster")?;
    Ok(())
}

/// A joining member learns its cluster's id from the log; it is recorded once known.
async fn record_identity_when_configured(controller: Controller, store: Store, identity: Option<String>) {
    if identity.is_some() {
        return;
    }
    loop {
        let cluster_id = controller.registry.with_state(|s| s.config().cluster_id.clone());
        if !cluster_id.is_empty() {
            if let Err(e) = store.put_meta(KEY_IDENTITY, &cluster_id) {
                tracing::error!(cause = %e, "recording the cluster identity failed");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Once a leader exists, makes sure the registry carries the bootstrap configuration.
async fn configure_when_leader(
    controller: Controller,
    config: ClusterConfig,
    networks: Vec<pb::CreateNetworkRequest>,
) {
    loop {
        // Configured already (by another member, or before a restart): the manifest's
        // networks were created then, and any removed since stay removed.
        if controller.registry.with_state(|s| !s.config().cluster_id.is_empty()) {
            return;
        }
        let leader = controller.raft.metrics().borrow().current_leader;
        if leader == Some(controller.id) {
            match controller.propose(Command::Configure(config.clone())).await {
                Ok((revision, _)) => {
                    tracing::info!(cluster_id = %config.cluster_id, "cluster configured");
                    // Revision 1: this configuration was the cluster's first change, so the
                    // cluster is new. (After a restart the same proposal is a no-op, applied
                    // after the whole history, and the revision shows it.)
                    if revision == 1 {
                        create_missing_networks(&controller, networks).await;
                    }
                    return;
                }
                Err(status) => {
                    tracing::warn!(cause = %status, "configuring the cluster failed; retrying")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
