//! `weft-controller`: parses flags, sets up logging and runs one member (see `server::run`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use weft_controller::manifest::Manifest;
use weft_controller::server::{Options, run};

// Raft entries, gRPC frames and registry records are many short-lived small allocations;
// glibc's allocator spent about a tenth of the controller's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A member of weft's controller cluster: holds the registry (networks, addresses, endpoints,
/// hosts) replicated with Raft, and serves the gRPC API.
///
/// Examples:
///   weft-controller --data-dir /var/lib/weft              # a single-member cluster
///   weft-controller --id 2 --listen 10.1.0.2:7001 --manifest cluster.toml --data-dir /var/lib/weft
///   weft-controller --id 4 --listen 10.1.0.4:7001 --join --data-dir /var/lib/weft
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This member's id (as in the manifest).
    #[arg(long, env = "WEFT_CONTROLLER_ID", default_value_t = 1)]
    id: u64,
    /// Address the gRPC server listens on.
    #[arg(long, env = "WEFT_CONTROLLER_LISTEN", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Address other members reach this one at, when it differs from --listen.
    #[arg(long, env = "WEFT_CONTROLLER_ADVERTISE")]
    advertise: Option<String>,
    /// Where the Raft log and snapshots live.
    #[arg(long, env = "WEFT_CONTROLLER_DATA_DIR")]
    data_dir: PathBuf,
    /// Bootstrap manifest (TOML) of a new cluster: members, address pools, VNI range.
    #[arg(long, env = "WEFT_CONTROLLER_MANIFEST")]
    manifest: Option<PathBuf>,
    /// Deadline of each client request, in milliseconds.
    #[arg(long, default_value_t = millis(weft_controller::cluster::DEFAULT_REQUEST_TIMEOUT))]
    request_timeout_ms: u64,
    /// Raft heartbeat interval in milliseconds; elections time out after 3 to 6 of them.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Recent revisions kept for watchers that resume; a watcher asking for an older one gets
    /// a full snapshot.
    #[arg(long, default_value_t = weft_controller::registry::DEFAULT_RETAINED_REVISIONS)]
    watch_retained_revisions: usize,
    /// Batches a watcher may fall behind before it is reset with a fresh snapshot.
    #[arg(long, default_value_t = weft_controller::registry::DEFAULT_WATCH_BUFFER)]
    watch_buffer: usize,
    /// Milliseconds of heartbeat silence after which the leader marks a host down.
    #[arg(long, default_value_t = millis(weft_controller::liveness::DEFAULT_NODE_TIMEOUT))]
    node_timeout_ms: u64,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, env = "WEFT_CONTROLLER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Join an existing cluster instead of bootstrapping one: start, then run
    /// `cluster add ID ADDRESS` against any member.
    #[arg(long, conflicts_with = "manifest")]
    join: bool,
    /// Snapshot the registry and compact the log after this many log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// This member's TLS credentials: ca.pem (the cluster CA), cert.pem and key.pem (0600),
    /// as `weft pki init` writes them. Every connection is mutual TLS.
    #[arg(long, env = "WEFT_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Renew this member's credential when it expires within this many days: the member
    /// does it itself when --tls-dir holds the CA key, and warns (log, `weft cluster
    /// status`) when it does not.
    #[arg(long, default_value_t = 30)]
    renew_within_days: u64,
    /// How often to check the credential in --tls-dir (its expiry, and one renewed there by
    /// hand, which is presented from then on).
    #[arg(long, default_value_t = 3_600_000)]
    renew_check_ms: u64,
    /// With --tls-dir holding no credential yet: get this member's credential with a
    /// controller join token (`weft token create --role controller`), from --join-via.
    #[arg(long, env = "WEFT_JOIN_TOKEN")]
    join_token: Option<String>,
    /// SHA-256 of the cluster CA certificate, checked before the token is sent.
    #[arg(long, env = "WEFT_CA_FINGERPRINT")]
    ca_fingerprint: Option<String>,
    /// A member (host:port) to join through.
    #[arg(long)]
    join_via: Option<String>,
    /// Serve plaintext gRPC with no authentication at all (trusted test networks only).
    #[arg(long)]
    insecure: bool,
    /// Threads serving requests, watchers and Raft (default: one per core). A member's writes
    /// go through one pipeline (Raft, the log, the state machine) that more threads do not
    /// widen, while every hand-off between two of them costs a wake-up: where members share
    /// a machine and serve a small fleet (`deploy/quickstart.sh`), give each its share of the
    /// cores. A member serving thousands of hosts wants the default (decision 0010).
    #[arg(long, env = "WEFT_CONTROLLER_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Colours only on a terminal: journald and log files would keep the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    match start(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weft-controller: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Obtains this member's credential with a controller join token: the key is made here, the
/// member asked is checked against the CA fingerprint, and the certificate names
/// `controller:ID` for the address this member advertises.
async fn join(
    id: u64,
    advertise: &str,
    token: &str,
    fingerprint: &str,
    via: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use weft_api::pb::join_service_client::JoinServiceClient;
    let (csr_pem, key) = weft_pki::certificate_request(weft_pki::Role::Controller, &id.to_string())
        .context("making this member's key and certificate request")?;
    let channel = weft_pki::join::pinned_channel(via, fingerprint, Duration::from_secs(10))
        .await
        .with_context(|| format!("joining through {via}"))?;
    let host = advertise.rsplit_once(':').map_or(advertise, |(host, _)| host).trim_matches(['[', ']']);
    let joined = JoinServiceClient::new(channel)
        .join(weft_api::pb::JoinRequest {
            token: token.to_string(),
            name: id.to_string(),
            csr_pem,
            addresses: vec![host.to_string()],
        })
        .await
        .map_err(|status| anyhow::anyhow!("joining through {via}: {}", status.message()))?
        .into_inner();
    weft_pki::Credentials { ca: joined.ca_pem, cert: joined.certificate_pem, key }
        .save(dir)
        .context("saving the credential")?;
    tracing::info!(dir = %dir.display(), "joined: credential for controller:{id} saved");
    Ok(())
}

fn start(args: Args) -> anyhow::Result<()> {
    let manifest = match &args.manifest {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(Manifest::parse(&text).with_context(|| format!("manifest {}", path.display()))?)
        }
        None => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(usize::from(threads));
    }
    let runtime = runtime.enable_all().build().context("starting the runtime")?;
    if let (Some(dir), Some(token)) = (&args.tls_dir, &args.join_token)
        && !dir.join("cert.pem").exists()
    {
        let (Some(fingerprint), Some(via)) = (&args.ca_fingerprint, &args.join_via) else {
            anyhow::bail!("--join-token needs --ca-fingerprint and --join-via (a member's address)");
        };
        let advertise = args.advertise.clone().unwrap_or_else(|| args.listen.to_string());
        runtime.block_on(join(args.id, &advertise, token, fingerprint, via, dir))?;
    }
    let tls = match (&args.tls_dir, args.insecure) {
        (Some(dir), false) => {
            // This member owns the directory: a renewal a crash cut short is finished or dropped.
            weft_pki::Credentials::recover(dir).map_err(|e| anyhow::anyhow!("--tls-dir: {e}"))?;
            Some(
                weft_pki::Credentials::load(dir)
                    .map_err(|e| anyhow::anyhow!("--tls-dir: {e} (make credentials with `weft pki init`)"))?,
            )
        }
        (None, true) => None,
        (Some(_), true) => anyhow::bail!("--tls-dir and --insecure exclude each other"),
        (None, false) => anyhow::bail!(
            "give --tls-dir DIR (this member's ca.pem, cert.pem, key.pem from `weft pki init`), or --insecure to serve plaintext"
        ),
    };
    let opts = Options {
        tls,
        tls_dir: args.tls_dir.clone(),
        renew_within: Duration::from_secs(args.renew_within_days.saturating_mul(86_400)),
        renew_check: Duration::from_millis(args.renew_check_ms.max(100)),
        id: args.id,
        listen: args.listen,
        advertise: args.advertise,
        data_dir: args.data_dir,
        manifest,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
        watch_retained_revisions: args.watch_retained_revisions,
        watch_buffer: args.watch_buffer,
        node_timeout: Duration::from_millis(args.node_timeout_ms),
        metrics_listen: args.metrics_listen,
        join: args.join,
        snapshot_every: args.snapshot_every,
    };
    runtime.block_on(run(opts, async {
        let _ = tokio::signal::ctrl_c().await;
    }))
}

/// A default duration as the flag's milliseconds.
const fn millis(duration: std::time::Duration) -> u64 {
    duration.as_secs() * 1000 + duration.subsec_millis() as u64
}
