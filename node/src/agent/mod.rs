//! The agent: registers its host, follows the registry, keeps the kernel in line with it, and
//! attaches and detaches containers for the local API.
//!
//! # Layout
//! - this module: [`Agent`], its settings and the state its jobs share;
//! - `follow`: registration, heartbeats and the watch stream into the mirror;
//! - `reconcile`: passes that bring the kernel (through [`Dataplane`]) in line with the mirror;
//! - `attach`: the local API's attach, detach, list and key rotation (published ports chosen
//!   with [`crate::publishing`]);
//! - `janitor`: releasing what vanished containers and unfinished attaches left.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tonic::Status;
use weft_dataplane::{Dataplane, Kernel};
use weft_dns::server::Dns;

use crate::attachments::{Attachments, Store};
use crate::controllers::Controllers;
use crate::desired::{Failures, Host};
use crate::mirror::Mirror;
use crate::tunnel::Tunnel;

mod attach;
mod docker;
mod follow;
mod janitor;
mod reconcile;

use attach::remove_orphaned_resolv_confs;

/// Largest watch message the agent accepts: a full snapshot arrives as one message, about
/// 220 bytes per endpoint (100,000 endpoints: ~22 MB). gRPC's default of 4 MiB broke the
/// stream at ~20,000 endpoints.
const MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;

/// How the agent is run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: Host,
    /// Where local attachment records are kept across restarts.
    pub state_dir: PathBuf,
    pub heartbeat: Duration,
    /// Full resync period: drift is repaired, and containers gone without a detach are
    /// released, within it.
    pub resync: Duration,
    pub request_timeout: Duration,
    /// Port of the DNS server on each local network's gateway.
    pub dns_port: u16,
    /// The WireGuard interface's name, even when WireGuard is off: encrypted networks'
    /// VXLAN may leave and enter only through it.
    pub wireguard_interface: String,
    /// dockerd's API socket, where the Docker plugin learns names Docker never sends it.
    pub docker_api: Option<PathBuf>,
    /// An address of the host's own where weft's DNS answers too (on the service link):
    /// containers reach it through their gateway, with their own address as the source.
    pub service_dns: Option<std::net::IpAddr>,
}

struct Shared {
    mirror: Mirror,
    attachments: Attachments,
}

/// What the last pass put into the host's nftables rules.
#[derive(Debug, Default)]
struct LoadedRules {
    /// The scripts, so rules are reloaded only when they change (and on every full resync,
    /// which repairs hand edits). `None` after a failed load.
    script: Option<weft_dataplane::rules::Rulesets>,
    /// The published ports in it: the flows of those that go are forgotten.
    published: std::collections::BTreeSet<weft_dataplane::rules::PublishedRule>,
}

/// `D` is the host's kernel: [`Kernel`] in production, a `weft_dataplane::SimulatedHost` in
/// tests of the agent's own logic.
pub struct Agent<D: Dataplane = Kernel> {
    settings: Settings,
    controllers: Controllers,
    kernel: D,
    shared: Mutex<Shared>,
    store: Store,
    /// One reconcile pass at a time: each plans against a fresh dump. Held during a pass;
    /// keeps what the pass loaded into the host's rules.
    reconciling: tokio::sync::Mutex<LoadedRules>,
    /// Docker's ids for weft's networks and endpoints on this host (the Docker plugin).
    docker: Mutex<crate::docker::bindings::DockerBindings>,
    /// Docker's IPv4 requests whose IPv6 twin has not come yet.
    docker_awaiting_ipv6: Mutex<crate::docker::pairing::AwaitingIpv6>,
    /// Host ports attaches in flight have chosen but the mirror does not show yet: two
    /// attaches at once never pick the same random port.
    choosing_ports: Arc<Mutex<Vec<weft_core::PublishedPort>>>,
    wake: Notify,
    applied: watch::Sender<u64>,
    /// Sends a heartbeat at once: the controllers learn a new applied revision without
    /// waiting a period (the applied-everywhere barrier waits on it).
    beat_now: Notify,
    /// Endpoints the last pass could not program, reported with every heartbeat.
    problems: Mutex<BTreeMap<String, String>>,
    /// What the last pass could not do, for callers whose request it covered.
    last_failures: Mutex<Failures>,
    /// Passes asked for by callers, and how many of those asks a finished pass covered.
    pass_requested: AtomicU64,
    pass_covered: AtomicU64,
    /// Wakes the janitor: a container is gone, or an attach needs rolling back.
    janitor: Notify,
    dns: Arc<Dns>,
    /// The host's WireGuard interface (none when the operator turned WireGuard off).
    tunnel: Option<Tunnel>,
    /// DNS listeners by address, one per local network's gateway.
    dns_listeners: Mutex<HashMap<SocketAddr, tokio::task::JoinHandle<()>>>,
    /// The registry revision the DNS table was built from.
    dns_revision: AtomicU64,
}

impl<D: Dataplane> std::fmt::Debug for Agent<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("host", &self.settings.host).finish_non_exhaustive()
    }
}

fn internal(what: impl std::fmt::Display) -> Status {
    Status::internal(what.to_string())
}

impl<D: Dataplane> Agent<D> {
    pub fn new(
        settings: Settings,
        controllers: Controllers,
        kernel: D,
        dns: Arc<Dns>,
        tunnel: Option<Tunnel>,
    ) -> anyhow::Result<Agent<D>> {
        std::fs::create_dir_all(&settings.state_dir)
            .map_err(|e| anyhow::anyhow!("creating state directory {}: {e}", settings.state_dir.display()))?;
        let store = Store::open(&settings.state_dir)?;
        let attachments = Attachments::from_records(store.load()?);
        if !attachments.entries.is_empty() {
            tracing::info!(records = attachments.entries.len(), "attachment records loaded");
        }
        remove_orphaned_resolv_confs(&settings.state_dir, &attachments);
        let (applied, _) = watch::channel(0);
        // Started without them, the plugin would forget every Docker network on this host.
        let docker = crate::docker::bindings::DockerBindings::load(&settings.state_dir)?;
        Ok(Agent {
            settings,
            controllers,
            kernel,
            shared: Mutex::new(Shared { mirror: Mirror::default(), attachments }),
            store,
            reconciling: tokio::sync::Mutex::new(LoadedRules::default()),
            choosing_ports: Arc::new(Mutex::new(Vec::new())),
            docker: Mutex::new(docker),
            docker_awaiting_ipv6: Mutex::default(),
            wake: Notify::new(),
            applied,
            beat_now: Notify::new(),
            problems: Mutex::new(BTreeMap::new()),
            last_failures: Mutex::new(Failures::default()),
            pass_requested: AtomicU64::new(0),
            pass_covered: AtomicU64::new(0),
            janitor: Notify::new(),
            dns,
            tunnel,
            dns_listeners: Mutex::new(HashMap::new()),
            dns_revision: AtomicU64::new(u64::MAX),
        })
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn applied_revision(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Endpoints this host could not program at its last pass, with why.
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The first 12 hex digits of an id, as `weft endpoint ls` prints it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The request id of one write and its retries: what it does, and to what.
fn request_id(action: &str, subject: &str) -> String {
    let subject: String = subject.chars().take(64).collect();
    weft_api::request_id(&format!("weft-node/{action}/{subject}"))
}
