//! The agent: registers its host, follows the registry, keeps the kernel in line with it, and
//! attaches and detaches containers for the local API.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tonic::{Code, Status};
use weft_api::agent;
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_api::pb::watch_service_client::WatchServiceClient;
use weft_dataplane::model::endpoint_alias;
use weft_dataplane::{Dataplane, Desired, Kernel, Observed, plan};
use weft_dns::server::Dns;
use weft_dns::{EndpointRecord, NameTable};

use crate::attachments::{Attachments, Entry, NamespaceId, Presence, Record, Stage, Store, judge};
use crate::controllers::Controllers;
use crate::desired::{
    Failures, Host, blame, desired, encrypted_vxlan, host_veth_name, network_mtu, rules, tunnel_address,
    wireguard_overhead, wireguard_peers,
};
use crate::mirror::{EndpointView, Mirror, NetworkView, endpoint_view, network_view};
use crate::tunnel::Tunnel;

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
}

struct Shared {
    mirror: Mirror,
    attachments: Attachments,
}

/// `D` is the host's kernel: [`Kernel`] in production, a `weft_dataplane::SimulatedHost` in
/// tests of the agent's own logic.
pub struct Agent<D: Dataplane = Kernel> {
    settings: Settings,
    controllers: Controllers,
    kernel: D,
    shared: Mutex<Shared>,
    store: Store,
    /// One reconcile pass at a time: each plans against a fresh dump.
    /// Held during a pass; keeps the rule script last loaded, so rules are reloaded only when
    /// they change (and on every full resync, which repairs hand edits).
    reconciling: tokio::sync::Mutex<Option<String>>,
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

/// What to do with a record nobody is working on.
enum Chore {
    /// The container is gone, or its attach never finished: release its endpoint.
    Release(String),
    /// Its endpoint left the registry some other way (removed by an operator, its network
    /// removed by force): only the record is left to drop.
    Forget,
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
        Ok(Agent {
            settings,
            controllers,
            kernel,
            shared: Mutex::new(Shared { mirror: Mirror::default(), attachments }),
            store,
            reconciling: tokio::sync::Mutex::new(None),
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

    fn registration(&self) -> pb::RegisterNodeRequest {
        let host = &self.settings.host;
        let public_key = self.tunnel.as_ref().and_then(Tunnel::public_key);
        pb::RegisterNodeRequest {
            name: host.name.clone(),
            underlay_address: host.vtep.to_string(),
            underlay_mtu: host.underlay_mtu,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            wireguard_public_key: public_key.map(|k| k.to_base64()).unwrap_or_default(),
            wireguard_port: match (&self.tunnel, public_key) {
                (Some(tunnel), Some(_)) => u32::from(tunnel.port()),
                _ => 0,
            },
            wireguard_backend: self.tunnel.as_ref().map_or_else(|| "off".to_string(), Tunnel::backend_label),
            ..Default::default()
        }
    }

    /// Registers this host, retrying until some controller accepts it.
    pub async fn register(&self) {
        let host = &self.settings.host;
        let request = self.registration();
        let mut delay = Duration::from_millis(100);
        loop {
            let result = self
                .controllers
                .send(&request, |c, r| async move { NodeServiceClient::new(c).register_node(r).await })
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(host = %host.name, vtep = %host.vtep, "registered");
                    return;
                }
                Err(status) => {
                    tracing::warn!(%status, "registering this host failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Heartbeats forever, carrying the revision this host has programmed and the endpoints it
    /// could not program. A host the controllers forgot (removed by an operator) registers
    /// again.
    pub async fn heartbeat(&self) {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.beat_now.notified() => {}
            }
            let problems = self
                .problems()
                .into_iter()
                .map(|(endpoint_id, reason)| pb::EndpointProblem { endpoint_id, reason })
                .collect();
            let request = pb::HeartbeatRequest {
                name: self.settings.host.name.clone(),
                applied_revision: self.applied_revision(),
                problems,
            };
            let result = self
                .controllers
                .send(&request, |c, r| async move { NodeServiceClient::new(c).heartbeat(r).await })
                .await;
            match result {
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => self.register().await,
                Err(status) => tracing::warn!(%status, "heartbeat failed"),
            }
        }
    }

    /// Endpoints this host could not program at its last pass, with why.
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Follows the registry from the last revision seen, moving to the next controller when a
    /// stream breaks.
    pub async fn follow(&self) {
        let mut delay = Duration::from_millis(50);
        loop {
            let (i, address) = self.controllers.preferred();
            let address = address.to_string();
            let from_revision = self.shared().mirror.revision;
            let mut client = WatchServiceClient::new(self.controllers.channel(i))
                .max_decoding_message_size(MAX_SNAPSHOT_BYTES);
            match client.watch(pb::WatchRequest { from_revision }).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(message)) => {
                                delay = Duration::from_millis(50);
                                self.take(message);
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(controller = %address, %status, "watch stream broke");
                                break;
                            }
                        }
                    }
                }
                Err(status) => tracing::warn!(controller = %address, %status, "cannot watch"),
            }
            self.controllers.prefer(i + 1);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn take(&self, message: pb::WatchResponse) {
        use pb::watch_response::Kind;
        let changed = {
            let mut shared = self.shared();
            let before = shared.mirror.revision;
            match message.kind {
                Some(Kind::Snapshot(state)) => {
                    for problem in shared.mirror.reset(&state) {
                        tracing::warn!(%problem, "skipped");
                    }
                    true
                }
                Some(Kind::Events(batch)) => {
                    for (revision, problem) in shared.mirror.apply(&batch.events) {
                        tracing::warn!(%problem, revision, "skipped");
                    }
                    shared.mirror.revision != before
                }
                Some(Kind::Progress(progress)) => {
                    // Nothing changed up to this revision: what is applied is current.
                    shared.mirror.revision = shared.mirror.revision.max(progress.revision);
                    shared.mirror.revision != before
                }
                None => false,
            }
        };
        if changed {
            self.wake.notify_one();
        }
    }

    /// Reconciles whenever the registry changes, and at least every resync period.
    pub async fn reconcile_forever(&self) {
        let mut reported = BTreeMap::new();
        loop {
            let full = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep(self.settings.resync) => true,
            };
            let failures = self.reconcile_pass(full).await;
            for problem in &failures.host {
                tracing::warn!(error = %problem, "reconcile");
            }
            // Per endpoint, only changes are worth a line: the same failure repeats every pass.
            if failures.endpoints != reported {
                for (endpoint, why) in &failures.endpoints {
                    if reported.get(endpoint) != Some(why) {
                        tracing::warn!(endpoint = %short(endpoint), error = %why, "cannot program endpoint");
                    }
                }
                reported = failures.endpoints;
            }
        }
    }

    /// One pass: dump the kernel, plan against the registry, apply. Afterwards the host is
    /// programmed up to the revision it planned from, except for the endpoints named in the
    /// answer; failures that belong to no endpoint hold the applied revision back.
    ///
    /// Callers that ask while a pass is running share the next one: attaches at once plumb in
    /// one pass rather than one pass each (a pass dumps the whole kernel).
    pub async fn reconcile(&self) -> Failures {
        let ticket = self.pass_requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut loaded_rules = self.reconciling.lock().await;
        if self.pass_covered.load(Ordering::SeqCst) >= ticket {
            return self.last_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        }
        // Everyone who asked so far has their change in place by now: this pass covers them.
        let covers = self.pass_requested.load(Ordering::SeqCst);
        let failures = self.pass(&mut loaded_rules, false).await;
        self.pass_covered.store(covers, Ordering::SeqCst);
        failures
    }

    async fn reconcile_pass(&self, full: bool) -> Failures {
        let mut loaded_rules = self.reconciling.lock().await;
        self.pass(&mut loaded_rules, full).await
    }

    async fn pass(&self, loaded_rules: &mut Option<String>, full: bool) -> Failures {
        let host = &self.settings.host;
        if !self.shared().mirror.synced {
            return Failures::default();
        }
        let observed = match self.kernel.observe().await {
            Ok(observed) => observed,
            Err(e) => return Failures { host: vec![e.to_string()], ..Failures::default() },
        };
        self.check_presence(&observed);
        let (want, script, revision, peers, tunnel_address) = {
            let shared = self.shared();
            let want = desired(&shared.mirror, host, &shared.attachments.plumbing());
            let script = weft_dataplane::rules::ruleset(
                &rules(&shared.mirror, &want),
                &encrypted_vxlan(&shared.mirror, &self.settings.wireguard_interface),
            );
            let peers = wireguard_peers(&shared.mirror, host);
            (want, script, shared.mirror.revision, peers, tunnel_address(&shared.mirror, host))
        };
        let ops = plan(&want, &observed);
        if !ops.is_empty() {
            tracing::debug!(ops = ops.len(), revision, "reconciling");
        }
        let failed = self.kernel.apply_each(&ops).await;
        let mut failures = blame(&want, &self.shared().mirror, &ops, &failed);
        if let Some(tunnel) = &self.tunnel {
            let mtu = host.underlay_mtu.saturating_sub(wireguard_overhead(host.vtep));
            let errors = tunnel.sync(&self.kernel, &observed, tunnel_address, mtu, peers).await;
            failures.host.extend(errors.iter().map(ToString::to_string));
        }
        self.refresh_dns(&want, revision).await;
        if full || loaded_rules.as_deref() != Some(script.as_str()) {
            let loaded = self.kernel.load_rules(&script).await;
            match loaded {
                Ok(()) => *loaded_rules = Some(script),
                Err(e) => {
                    *loaded_rules = None;
                    failures.host.push(e.to_string());
                }
            }
        }
        let mut beat = false;
        {
            let mut problems = self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *problems != failures.endpoints {
                problems.clone_from(&failures.endpoints);
                beat = true;
            }
        }
        if failures.host.is_empty() && self.applied.send_replace(revision) != revision {
            beat = true;
        }
        if beat {
            self.beat_now.notify_one();
        }
        self.last_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone_from(&failures);
        failures
    }

    /// Checks that every attached container is still in the namespace it was attached in. A
    /// container whose namespace is gone or replaced is taken out of the plan at once (so its
    /// interface is never plumbed into whatever now sits at that path) and handed to the
    /// janitor, which releases its endpoint.
    fn check_presence(&self, observed: &Observed) {
        let mut gone_any = false;
        {
            let mut shared = self.shared();
            let Shared { mirror, attachments } = &mut *shared;
            for entry in attachments.entries.values_mut() {
                if entry.busy || entry.gone.is_some() || entry.record.stage != Stage::Attached {
                    continue;
                }
                let Some(endpoint_id) = entry.record.endpoint_id.clone() else { continue };
                if entry.record.revision == 0 {
                    // Carried over from an earlier version, which kept no revision.
                    match mirror.endpoints.get(&endpoint_id) {
                        Some(endpoint) => entry.record.revision = endpoint.revision,
                        None => continue,
                    }
                }
                let veth = observed.links.get(&host_veth_name(entry.record.revision));
                let interface_present =
                    veth.is_some_and(|l| l.alias.as_deref() == Some(endpoint_alias(&endpoint_id).as_str()));
                let path = entry.record.netns.clone();
                let now = NamespaceId::at(&path);
                match judge(&path, entry.record.namespace, &now, entry.held.is_some(), interface_present) {
                    Presence::Same => {
                        if entry.held.is_none() {
                            entry.held = hold(&path, entry.record.namespace);
                        }
                    }
                    Presence::Gone(why) => {
                        tracing::info!(
                            container = %entry.record.container_id,
                            endpoint = %short(&endpoint_id),
                            %why,
                            "container gone without a detach: unplumbing it and releasing its endpoint"
                        );
                        entry.gone = Some(why);
                        entry.held = None;
                        gone_any = true;
                    }
                    Presence::Unknown(why) => {
                        tracing::debug!(container = %entry.record.container_id, %why, "cannot check the container's namespace now");
                    }
                }
            }
        }
        if gone_any {
            self.janitor.notify_one();
        }
    }

    /// Releases the endpoints of containers that are gone, rolls back attaches that never
    /// finished (left by a crash, or that could not be undone at the time) and drops records
    /// whose endpoint left the registry some other way. Runs for the life of the agent.
    pub async fn janitor_forever(&self) {
        loop {
            tokio::select! {
                _ = self.janitor.notified() => {}
                _ = tokio::time::sleep(self.settings.resync) => {}
            }
            self.tidy().await;
        }
    }

    async fn tidy(&self) {
        let chores: Vec<(Record, Chore)> = {
            let mut shared = self.shared();
            let Shared { mirror, attachments } = &mut *shared;
            if !mirror.synced {
                return;
            }
            let mut chores = Vec::new();
            for entry in attachments.entries.values_mut().filter(|e| !e.busy) {
                let record = &entry.record;
                let chore = if let Some(why) = &entry.gone {
                    Chore::Release(why.clone())
                } else if record.stage == Stage::Attaching {
                    Chore::Release("its attach did not finish".into())
                } else if mirror.revision >= record.revision
                    && record.endpoint_id.as_ref().is_none_or(|id| !mirror.endpoints.contains_key(id))
                {
                    Chore::Forget
                } else {
                    continue;
                };
                entry.busy = true;
                chores.push((record.clone(), chore));
            }
            chores
        };
        if chores.is_empty() {
            return;
        }
        for (record, chore) in chores {
            let done = match &chore {
                Chore::Release(_) => self.release(&record).await,
                Chore::Forget => Ok(()),
            };
            match done {
                Ok(()) => {
                    match &chore {
                        Chore::Release(why) => tracing::info!(
                            container = %record.container_id, network = %short(&record.network_id), %why,
                            "released"
                        ),
                        Chore::Forget => tracing::info!(
                            container = %record.container_id, network = %short(&record.network_id),
                            "its endpoint was removed from the registry; forgetting it here"
                        ),
                    }
                    self.drop_record(&record);
                }
                Err(status) => {
                    tracing::warn!(container = %record.container_id, %status, "cannot release yet; retrying");
                    self.unbusy(&record.key());
                }
            }
        }
        self.wake.notify_one();
    }

    fn unbusy(&self, key: &str) {
        if let Some(entry) = self.shared().attachments.entries.get_mut(key) {
            entry.busy = false;
        }
    }

    /// Forgets a record whose endpoint is released: on disk, in memory, in the mirror (the
    /// watch confirms it a moment later), and its resolv.conf once the container has no other
    /// network here. Dropping the entry closes the namespace it held.
    fn drop_record(&self, record: &Record) {
        let key = record.key();
        if let Err(e) = self.store.remove(&key) {
            tracing::error!(error = %e, "removing an attachment record");
        }
        let last_network = {
            let mut shared = self.shared();
            shared.attachments.entries.remove(&key);
            if let Some(id) = &record.endpoint_id {
                shared.mirror.endpoints.remove(id);
            }
            !shared.attachments.elsewhere(&record.container_id, &record.network_id)
        };
        if record.resolv_conf && last_network {
            remove_resolv_conf(&record.netns, &self.settings.state_dir);
        }
    }

    /// Releases a record's endpoint through the controllers. Without an endpoint id (the agent
    /// stopped before the controllers answered) the registry is asked whether one was made for
    /// the container on this host.
    async fn release(&self, record: &Record) -> Result<(), Status> {
        let endpoint_id = match &record.endpoint_id {
            Some(id) => id.clone(),
            None => match self.find_registered(&record.network_id, &record.container_id).await? {
                Some(endpoint) => endpoint.id,
                None => return Ok(()),
            },
        };
        let request = pb::RemoveEndpointRequest {
            request_id: request_id("detach", &endpoint_id),
            target: Some(pb::remove_endpoint_request::Target::EndpointId(endpoint_id)),
        };
        let result = self
            .controllers
            .send(&request, |c, r| async move { EndpointServiceClient::new(c).remove_endpoint(r).await })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(status),
        }
    }

    /// The registry's endpoint for a container on a network on this host, if it has one.
    async fn find_registered(
        &self,
        network_id: &str,
        container_id: &str,
    ) -> Result<Option<pb::Endpoint>, Status> {
        let request = pb::ListEndpointsRequest {
            network: network_id.to_string(),
            node: self.settings.host.name.clone(),
        };
        let listed = self
            .controllers
            .send(&request, |c, r| async move { EndpointServiceClient::new(c).list_endpoints(r).await })
            .await;
        match listed {
            Ok(list) => Ok(list.endpoints.into_iter().find(|e| e.container_id == container_id)),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Rebuilds the name table when the registry moved, and listens on the gateway of every
    /// network present here (a gateway whose address is not usable yet is retried next pass).
    async fn refresh_dns(&self, want: &Desired, revision: u64) {
        if self.dns_revision.swap(revision, Ordering::Relaxed) != revision {
            let table = {
                let shared = self.shared();
                let mirror = &shared.mirror;
                NameTable::build(mirror.endpoints.values().filter_map(|e| {
                    let network = mirror.networks.get(&e.network_id)?;
                    Some(EndpointRecord {
                        network_id: e.network_id.clone(),
                        network_name: network.name.clone(),
                        node: e.node.clone(),
                        container_id: e.container_id.clone(),
                        name: e.container_name.clone(),
                        aliases: e.aliases.clone(),
                        ipv4: e.ipv4.and_then(|a| match a.ip {
                            std::net::IpAddr::V4(v4) => Some(v4),
                            std::net::IpAddr::V6(_) => None,
                        }),
                        ipv6: e.ipv6.and_then(|a| match a.ip {
                            std::net::IpAddr::V6(v6) => Some(v6),
                            std::net::IpAddr::V4(_) => None,
                        }),
                    })
                }))
            };
            self.dns.set_table(table);
        }
        let wanted: Vec<SocketAddr> = want
            .networks
            .values()
            .flat_map(|n| n.gateway_addresses.iter().map(|g| SocketAddr::new(g.ip, self.settings.dns_port)))
            .collect();
        let missing: Vec<SocketAddr> = {
            let mut listeners = self.dns_listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            listeners.retain(|address, task| {
                let keep = wanted.contains(address);
                if !keep {
                    task.abort();
                }
                keep
            });
            wanted.iter().filter(|a| !listeners.contains_key(a)).copied().collect()
        };
        for address in missing {
            match weft_dns::server::listen(self.dns.clone(), address).await {
                Ok(task) => {
                    tracing::info!(%address, "DNS listening");
                    self.dns_listeners
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(address, task);
                }
                Err(e) => tracing::debug!(%address, error = %e, "DNS cannot listen yet; retrying next pass"),
            }
        }
    }

    /// Attaches a container: writes down the intent, allocates through the controllers,
    /// plumbs it, and returns once the interface is up. Anything that fails half-way is
    /// undone; a crash half-way is undone when the agent starts again.
    pub async fn attach(&self, request: agent::AttachRequest) -> Result<agent::Attachment, Status> {
        if request.netns.is_empty() {
            return Err(Status::invalid_argument(
                "netns: give the path of the container's network namespace",
            ));
        }
        if request.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id: must not be empty"));
        }
        let netns = PathBuf::from(&request.netns);
        let namespace_file = File::open(&netns).map_err(|e| {
            Status::invalid_argument(format!(
                "netns {:?} cannot be opened ({e}); give a path such as /run/netns/NAME or /proc/PID/ns/net",
                request.netns
            ))
        })?;
        let namespace = NamespaceId::of(&namespace_file)
            .map_err(|e| internal(format!("reading the identity of {}: {e}", netns.display())))?;
        if request.write_resolv_conf {
            netns_name(&netns)?;
        }
        let network = self.resolve_network(&request.network).await?;
        let mut record = self.claim(&request, &network, netns, namespace).await?;
        let key = record.key();
        if let Err(e) = self.store.save(&record) {
            self.shared().attachments.entries.remove(&key);
            return Err(internal(e));
        }

        let create = pb::CreateEndpointRequest {
            network: network.id.clone(),
            node: self.settings.host.name.clone(),
            container_id: request.container_id.clone(),
            container_name: if request.container_name.is_empty() {
                request.container_id.clone()
            } else {
                request.container_name.clone()
            },
            aliases: request.aliases.clone(),
            ipv4_address: request.ipv4_address.clone(),
            ipv6_address: request.ipv6_address.clone(),
            mac_address: request.mac_address.clone(),
            // Every retry of this create (another controller, after a timeout) carries it, so
            // one that committed before its answer was lost answers with that endpoint.
            request_id: request_id("attach", &key),
        };
        let created = match self.create_endpoint(&create).await {
            Ok(created) => created,
            Err(status) => return Err(self.abandon(record, status).await),
        };
        let endpoint = match endpoint_view(&created) {
            Ok(endpoint) => endpoint,
            Err(e) => return Err(self.abandon(record, internal(e)).await),
        };
        record.endpoint_id = Some(endpoint.id.clone());
        record.revision = endpoint.revision;
        self.update(&record);
        self.shared().mirror.insert_endpoint(endpoint.clone());
        if let Err(e) = self.store.save(&record) {
            return Err(self.abandon(record, internal(e)).await);
        }

        let failures = self.reconcile().await;
        let problem =
            failures.endpoints.get(&endpoint.id).cloned().or_else(|| failures.host.first().cloned());
        if !self.kernel.link_is_up(&crate::desired::host_veth(&endpoint)).await {
            let status = Status::failed_precondition(format!(
                "could not plumb container {} into {}: {}",
                request.container_id,
                record.netns.display(),
                problem.unwrap_or_else(|| "the interface did not come up".to_string())
            ));
            return Err(self.abandon(record, status).await);
        }
        let attachment = self.attachment(&endpoint, &record, &network);
        if request.write_resolv_conf && record.default_route {
            if let Err(status) = write_resolv_conf(&record.netns, &attachment, &self.settings.state_dir) {
                return Err(self.abandon(record, status).await);
            }
            record.resolv_conf = true;
        }
        record.stage = Stage::Attached;
        if let Err(e) = self.store.save(&record) {
            return Err(self.abandon(record, internal(e)).await);
        }
        {
            let mut shared = self.shared();
            if let Some(entry) = shared.attachments.entries.get_mut(&key) {
                entry.record = record;
                entry.held = Some(Arc::new(namespace_file));
                entry.busy = false;
            }
        }
        if request.wait_everywhere {
            return self.await_everywhere(attachment).await;
        }
        Ok(attachment)
    }

    /// Takes the container's place on the network for this attach: a new record, in memory
    /// and owned by the caller. A record left by a container that is gone (its namespace
    /// deleted or replaced) is released first; a live one means the container is attached.
    async fn claim(
        &self,
        request: &agent::AttachRequest,
        network: &NetworkView,
        netns: PathBuf,
        namespace: NamespaceId,
    ) -> Result<Record, Status> {
        let key = crate::attachments::key(&network.id, &request.container_id);
        for _ in 0..2 {
            {
                let mut shared = self.shared();
                let attachments = &mut shared.attachments;
                match attachments.entries.get_mut(&key) {
                    Some(entry) if entry.busy => {
                        return Err(Status::already_exists(format!(
                            "container {} is being attached to or detached from network {} right now",
                            request.container_id, network.name
                        )));
                    }
                    Some(entry) if entry.gone.is_none() && still_there(entry) => {
                        return Err(Status::already_exists(format!(
                            "container {} is already attached to network {} (interface {} in {})",
                            request.container_id,
                            network.name,
                            entry.record.ifname,
                            entry.record.netns.display()
                        )));
                    }
                    Some(entry) => {
                        entry.gone.get_or_insert_with(|| "its namespace was replaced".to_string());
                    }
                    None => {
                        let (ifname, first) = attachments.next_interface(
                            &request.container_id,
                            &netns,
                            &network.settings.iface_prefix,
                        );
                        let record = Record {
                            network_id: network.id.clone(),
                            container_id: request.container_id.clone(),
                            netns: netns.clone(),
                            namespace,
                            ifname,
                            default_route: first,
                            endpoint_id: None,
                            revision: 0,
                            stage: Stage::Attaching,
                            resolv_conf: false,
                        };
                        attachments.entries.insert(
                            key,
                            Entry { record: record.clone(), held: None, busy: true, gone: None },
                        );
                        return Ok(record);
                    }
                }
            }
            // The earlier container's endpoint goes first: the registry holds one per
            // container and network.
            self.tidy().await;
        }
        Err(Status::unavailable(format!(
            "container {}'s earlier attachment to network {} could not be released yet; retry",
            request.container_id, network.name
        )))
    }

    /// Replaces the record of an attach in flight.
    fn update(&self, record: &Record) {
        if let Some(entry) = self.shared().attachments.entries.get_mut(&record.key()) {
            entry.record = record.clone();
        }
    }

    /// Undoes an attach that failed: releases whatever the controllers made and forgets the
    /// record. When the release cannot be done now, the record stays (as an unfinished
    /// attach) and the janitor finishes the job. Returns the attach's error.
    async fn abandon(&self, record: Record, status: Status) -> Status {
        match self.release(&record).await {
            Ok(()) => {
                self.drop_record(&record);
                let _ = self.reconcile().await;
            }
            Err(release) => {
                tracing::warn!(container = %record.container_id, status = %release, "cannot undo the attach yet; retrying");
                self.unbusy(&record.key());
                self.janitor.notify_one();
            }
        }
        status
    }

    /// Creates the endpoint. A retry after a lost answer (a controller failed over
    /// mid-request) may find the endpoint the first try made: the container has no record
    /// here but this one, so an endpoint for it on this host can only be that one, and is
    /// taken as the answer.
    /// Creates the endpoint; an AlreadyExists for this container on this host (a controller
    /// that does not know request ids, or a try from before a restart) adopts the endpoint.
    async fn create_endpoint(&self, create: &pb::CreateEndpointRequest) -> Result<pb::Endpoint, Status> {
        let created = self
            .controllers
            .send(create, |c, r| async move { EndpointServiceClient::new(c).create_endpoint(r).await })
            .await;
        match created {
            Err(status) if status.code() == Code::AlreadyExists => {
                match self.find_registered(&create.network, &create.container_id).await {
                    Ok(Some(endpoint)) => Ok(endpoint),
                    _ => Err(status),
                }
            }
            other => other,
        }
    }

    /// A network by name, id or unique id prefix: from the mirror, or, for one created a
    /// moment ago that the watch has not brought yet, from the controllers.
    async fn resolve_network(&self, reference: &str) -> Result<NetworkView, Status> {
        if let Some(network) = self.shared().mirror.find_network(reference).cloned() {
            return Ok(network);
        }
        // The list is networks only (no endpoints), resolved here as the mirror would.
        let listed = self
            .controllers
            .send(&pb::ListNetworksRequest::default(), |c, r| async move {
                NetworkServiceClient::new(c).list_networks(r).await
            })
            .await?;
        let mut fresh = Mirror::default();
        for network in &listed.networks {
            if let Ok(view) = network_view(network) {
                fresh.networks.insert(view.id.clone(), view);
            }
        }
        let view = fresh
            .find_network(reference)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no network named {reference:?} (nor with that id)")))?;
        self.wait_for_network(&view.id).await
    }

    /// Waits until every other host with a container on the network has programmed the new
    /// endpoint. When they do not in time, the container stays attached here and the error
    /// says so, naming the hosts (and what they reported) that hold it up.
    async fn await_everywhere(&self, attachment: agent::Attachment) -> Result<agent::Attachment, Status> {
        let request = pb::AwaitAppliedRequest {
            network: attachment.network_id.clone(),
            revision: attachment.revision,
            except_node: self.settings.host.name.clone(),
            // Inside this agent's own deadline towards the controllers, so the answer arrives.
            timeout_ms: u32::try_from(
                self.settings.request_timeout.saturating_sub(Duration::from_millis(500)).as_millis(),
            )
            .unwrap_or(u32::MAX),
            endpoint_id: attachment.endpoint_id.clone(),
        };
        let waited = self
            .controllers
            .send(&request, |c, r| async move { NodeServiceClient::new(c).await_applied(r).await })
            .await;
        match waited {
            Ok(_) => Ok(attachment),
            Err(status) => Err(Status::new(
                status.code(),
                format!(
                    "container {} is attached here as {}, but not confirmed on every host: {}",
                    attachment.container_id,
                    attachment.interface,
                    status.message()
                ),
            )),
        }
    }

    /// The mirror learns of a network a moment after it is created; an endpoint can name one
    /// the watch has not brought yet.
    async fn wait_for_network(&self, id: &str) -> Result<NetworkView, Status> {
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        loop {
            if let Some(network) = self.shared().mirror.networks.get(id).cloned() {
                return Ok(network);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "network {id} has not reached this host from the controllers yet; retry"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Detaches a container from a network: releases the endpoint and removes its interface.
    pub async fn detach(&self, request: agent::DetachRequest) -> Result<agent::Attachment, Status> {
        let not_attached = || {
            Status::not_found(format!(
                "container {:?} is not attached to network {:?} on this host",
                request.container_id, request.network
            ))
        };
        let network =
            self.shared().mirror.find_network(&request.network).cloned().ok_or_else(not_attached)?;
        let (record, endpoint) = {
            let mut shared = self.shared();
            let Shared { mirror, attachments } = &mut *shared;
            let key = crate::attachments::key(&network.id, &request.container_id);
            let entry = attachments.entries.get_mut(&key).ok_or_else(not_attached)?;
            if entry.busy {
                return Err(Status::failed_precondition(format!(
                    "container {} is being attached to or detached from network {} right now; retry",
                    request.container_id, network.name
                )));
            }
            if entry.record.stage != Stage::Attached {
                return Err(not_attached());
            }
            let endpoint = entry.record.endpoint_id.as_ref().and_then(|id| mirror.endpoints.get(id)).cloned();
            entry.busy = true;
            (entry.record.clone(), endpoint)
        };
        if let Err(status) = self.release(&record).await {
            self.unbusy(&record.key());
            return Err(status);
        }
        self.drop_record(&record);
        let failures = self.reconcile().await;
        if let Some(e) = failures.host.first() {
            tracing::warn!(error = %e, "detach left something behind; the next resync retries");
        }
        Ok(match endpoint {
            Some(endpoint) => self.attachment(&endpoint, &record, &network),
            None => agent::Attachment {
                endpoint_id: record.endpoint_id.clone().unwrap_or_default(),
                network_id: network.id.clone(),
                network_name: network.name.clone(),
                container_id: record.container_id.clone(),
                interface: record.ifname.clone(),
                netns: record.netns.display().to_string(),
                ..Default::default()
            },
        })
    }

    /// Replaces the host's WireGuard key, puts it on the device and registers it. Peers lose
    /// this host only until they see the new key: one watch event and one handshake.
    pub async fn rotate_key(&self) -> Result<agent::RotateKeyResponse, Status> {
        let Some(tunnel) = self.tunnel.as_ref().filter(|t| t.public_key().is_some()) else {
            return Err(Status::failed_precondition(format!(
                "this host has no working WireGuard to rotate a key for ({})",
                self.tunnel.as_ref().map_or_else(|| "off".to_string(), Tunnel::backend_label)
            )));
        };
        let key = tunnel.rotate().map_err(|e| internal(format!("writing the new WireGuard key: {e}")))?;
        for e in self.reconcile().await.host {
            tracing::warn!(error = %e, "after key rotation");
        }
        let request = self.registration();
        self.controllers
            .send(&request, |c, r| async move { NodeServiceClient::new(c).register_node(r).await })
            .await
            .map_err(|status| {
                Status::new(
                    status.code(),
                    format!(
                        "the new key is in place here but not registered ({}); the agent registers it again when it restarts",
                        status.message()
                    ),
                )
            })?;
        Ok(agent::RotateKeyResponse { public_key: key.public().to_base64() })
    }

    /// The containers attached here (attaches in flight and containers found gone are left
    /// out).
    pub fn list(&self) -> agent::ListResponse {
        let shared = self.shared();
        let attachments = shared
            .attachments
            .entries
            .values()
            .filter(|e| e.record.stage == Stage::Attached && e.gone.is_none())
            .filter_map(|e| {
                let endpoint = shared.mirror.endpoints.get(e.record.endpoint_id.as_ref()?)?;
                let network = shared.mirror.networks.get(&endpoint.network_id)?;
                Some(self.attachment(endpoint, &e.record, network))
            })
            .collect();
        agent::ListResponse { attachments, applied_revision: self.applied_revision() }
    }

    fn attachment(
        &self,
        endpoint: &EndpointView,
        record: &Record,
        network: &NetworkView,
    ) -> agent::Attachment {
        let gateway = |v6: bool| {
            network
                .gateways
                .iter()
                .find(|g| g.ip.is_ipv6() == v6)
                .map(|g| g.ip.to_string())
                .unwrap_or_default()
        };
        let mtu = network_mtu(network, &self.settings.host);
        agent::Attachment {
            endpoint_id: endpoint.id.clone(),
            network_id: network.id.clone(),
            network_name: network.name.clone(),
            container_id: endpoint.container_id.clone(),
            container_name: endpoint.container_name.clone(),
            aliases: endpoint.aliases.clone(),
            interface: record.ifname.clone(),
            netns: record.netns.display().to_string(),
            mac_address: endpoint.mac.to_string(),
            ipv4_address: endpoint.ipv4.map(|a| a.to_string()).unwrap_or_default(),
            ipv6_address: endpoint.ipv6.map(|a| a.to_string()).unwrap_or_default(),
            ipv4_gateway: gateway(false),
            ipv6_gateway: gateway(true),
            mtu,
            revision: endpoint.revision,
            dns_servers: network
                .gateways
                .iter()
                .filter(|g| g.ip.is_ipv4())
                .map(|g| g.ip.to_string())
                .collect(),
            dns_search: vec![network.name.clone()],
        }
    }
}

/// The first 12 hex digits of an id, as `weft endpoint ls` prints it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Opens the namespace at `path` if it is still the one recorded.
fn hold(path: &Path, recorded: NamespaceId) -> Option<Arc<File>> {
    let file = File::open(path).ok()?;
    (NamespaceId::of(&file).ok()? == recorded).then(|| Arc::new(file))
}

/// Whether an attached container's namespace is still at its path (asked when the same
/// container attaches again).
fn still_there(entry: &Entry) -> bool {
    let path = &entry.record.netns;
    let now = NamespaceId::at(path);
    !matches!(judge(path, entry.record.namespace, &now, true, true), Presence::Gone(_))
}

/// NAME of a namespace at `/run/netns/NAME` (made with `ip netns add`).
fn netns_name(netns: &Path) -> Result<&str, Status> {
    netns
        .strip_prefix("/run/netns")
        .ok()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "write_resolv_conf needs a namespace made with `ip netns add` (/run/netns/NAME), not {}",
                netns.display()
            ))
        })
}

/// First line of every resolv.conf weft writes, naming the agent that wrote it by its state
/// directory: only those are ever removed, and only by that agent (several agents may share
/// /etc/netns on one machine, as in tests).
fn resolv_conf_mark(agent: &Path) -> String {
    format!("# written by weft-node (state {})\n", agent.display())
}

/// `/etc/netns/NAME/resolv.conf` for a namespace at `/run/netns/NAME`, which `ip netns exec`
/// shows the container as its resolv.conf.
fn write_resolv_conf(netns: &Path, attachment: &agent::Attachment, agent: &Path) -> Result<(), Status> {
    let dir = Path::new("/etc/netns").join(netns_name(netns)?);
    let mut text = resolv_conf_mark(agent);
    for server in &attachment.dns_servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text.push_str(&format!("search {}\noptions ndots:0\n", attachment.dns_search.join(" ")));
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("resolv.conf"), text))
        .map_err(|e| internal(format!("writing {}/resolv.conf: {e}", dir.display())))
}

/// Removes the resolv.conf weft wrote for an `ip netns` namespace once the container has left
/// its last network (and the directory, when nothing else is in it).
fn remove_resolv_conf(netns: &Path, agent: &Path) {
    let Ok(name) = netns_name(netns) else { return };
    let dir = Path::new("/etc/netns").join(name);
    let file = dir.join("resolv.conf");
    if std::fs::read_to_string(&file).is_ok_and(|t| t.starts_with(&resolv_conf_mark(agent))) {
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir(&dir);
    }
}

/// At start, removes the resolv.conf files this host's agent wrote for containers it has no
/// record of any more (left by a crash between dropping a record and removing its file).
fn remove_orphaned_resolv_confs(agent: &Path, attachments: &Attachments) {
    let Ok(listing) = std::fs::read_dir("/etc/netns") else { return };
    for item in listing.flatten() {
        let netns = Path::new("/run/netns").join(item.file_name());
        let known = attachments.entries.values().any(|e| e.record.netns == netns && e.record.resolv_conf);
        if !known {
            remove_resolv_conf(&netns, agent);
        }
    }
}

/// A request id for one write and its retries: what it does, to what, and when it started
/// (with a counter so two in the same instant differ). At most 128 characters.
fn request_id(action: &str, subject: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let subject: String = subject.chars().take(64).collect();
    format!("weft-node/{action}/{subject}/{nanos:x}.{count:x}")
}
