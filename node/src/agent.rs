//! The agent: registers its host, follows the registry, keeps the kernel in line with it, and
//! attaches and detaches containers for the local API.

use std::collections::HashMap;
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
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_api::pb::watch_service_client::WatchServiceClient;
use weft_dataplane::{Desired, Kernel, KernelError, plan};
use weft_dns::server::Dns;
use weft_dns::{EndpointRecord, NameTable};

use crate::controllers::Controllers;
use crate::desired::{
    Host, desired, encrypted_vxlan, host_veth, network_mtu, rules, tunnel_address, wireguard_overhead,
    wireguard_peers,
};
use crate::mirror::{EndpointView, Mirror, NetworkView, endpoint_view};
use crate::sandboxes::{Sandbox, Sandboxes};
use crate::tunnel::Tunnel;

/// Largest watch message the agent accepts: a full snapshot arrives as one message, about
/// 220 bytes per endpoint (100,000 endpoints: ~22 MB). gRPC's default of 4 MiB broke the
/// stream at ~20,000 endpoints.
const MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;

/// How the agent is run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: Host,
    /// Where local sandboxes are kept across restarts.
    pub state_dir: PathBuf,
    pub heartbeat: Duration,
    /// Full resync period: drift is repaired within it.
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
    sandboxes: Sandboxes,
}

pub struct Agent {
    settings: Settings,
    controllers: Controllers,
    kernel: Kernel,
    shared: Mutex<Shared>,
    /// One reconcile pass at a time: each plans against a fresh dump.
    /// Held during a pass; keeps the rule script last loaded, so rules are reloaded only when
    /// they change (and on every full resync, which repairs hand edits).
    reconciling: tokio::sync::Mutex<Option<String>>,
    wake: Notify,
    applied: watch::Sender<u64>,
    /// Sends a heartbeat at once: the controllers learn a new applied revision without
    /// waiting a period (the applied-everywhere barrier waits on it).
    beat_now: Notify,
    dns: Arc<Dns>,
    /// The host's WireGuard interface (none when the operator turned WireGuard off).
    tunnel: Option<Tunnel>,
    /// DNS listeners by address, one per local network's gateway.
    dns_listeners: Mutex<HashMap<SocketAddr, tokio::task::JoinHandle<()>>>,
    /// The registry revision the DNS table was built from.
    dns_revision: AtomicU64,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("host", &self.settings.host).finish_non_exhaustive()
    }
}

fn sandbox_file(state_dir: &Path) -> PathBuf {
    state_dir.join("sandboxes.json")
}

fn internal(what: impl std::fmt::Display) -> Status {
    Status::internal(what.to_string())
}

impl Agent {
    pub fn new(
        settings: Settings,
        controllers: Controllers,
        kernel: Kernel,
        dns: Arc<Dns>,
        tunnel: Option<Tunnel>,
    ) -> anyhow::Result<Agent> {
        std::fs::create_dir_all(&settings.state_dir)
            .map_err(|e| anyhow::anyhow!("creating state directory {}: {e}", settings.state_dir.display()))?;
        let sandboxes = Sandboxes::load(&sandbox_file(&settings.state_dir))?;
        let (applied, _) = watch::channel(0);
        Ok(Agent {
            settings,
            controllers,
            kernel,
            shared: Mutex::new(Shared { mirror: Mirror::default(), sandboxes }),
            reconciling: tokio::sync::Mutex::new(None),
            wake: Notify::new(),
            applied,
            beat_now: Notify::new(),
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
                .call(|c| {
                    let request = request.clone();
                    async move { NodeServiceClient::new(c).register_node(request).await }
                })
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

    /// Heartbeats forever, carrying the revision this host has programmed. A host the
    /// controllers forgot (removed by an operator) registers again.
    pub async fn heartbeat(&self) {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.beat_now.notified() => {}
            }
            let request = pb::HeartbeatRequest {
                name: self.settings.host.name.clone(),
                applied_revision: self.applied_revision(),
            };
            let result = self
                .controllers
                .call(|c| {
                    let request = request.clone();
                    async move { NodeServiceClient::new(c).heartbeat(request).await }
                })
                .await;
            match result {
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => self.register().await,
                Err(status) => tracing::warn!(%status, "heartbeat failed"),
            }
        }
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
        loop {
            let full = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep(self.settings.resync) => true,
            };
            let errors = self.reconcile_pass(full).await;
            for e in errors {
                tracing::warn!(error = %e, "reconcile");
            }
        }
    }

    /// One pass: dump the kernel, plan against the registry, apply. On success the host is
    /// programmed up to the revision it planned from.
    pub async fn reconcile(&self) -> Vec<KernelError> {
        self.reconcile_pass(false).await
    }

    async fn reconcile_pass(&self, full: bool) -> Vec<KernelError> {
        let mut loaded_rules = self.reconciling.lock().await;
        let host = &self.settings.host;
        let (want, script, revision, peers, tunnel_address) = {
            let shared = self.shared();
            if !shared.mirror.synced {
                return Vec::new();
            }
            let want = desired(&shared.mirror, host, &shared.sandboxes);
            let script = weft_dataplane::rules::ruleset(
                &rules(&shared.mirror, &want),
                &encrypted_vxlan(&shared.mirror, &self.settings.wireguard_interface),
            );
            let peers = wireguard_peers(&shared.mirror, host);
            (want, script, shared.mirror.revision, peers, tunnel_address(&shared.mirror, host))
        };
        let observed = match self.kernel.observe().await {
            Ok(observed) => observed,
            Err(e) => return vec![e],
        };
        let ops = plan(&want, &observed);
        if !ops.is_empty() {
            tracing::debug!(ops = ops.len(), revision, "reconciling");
        }
        let mut errors = self.kernel.apply(&ops).await;
        if let Some(tunnel) = &self.tunnel {
            let mtu = host.underlay_mtu.saturating_sub(wireguard_overhead(host.vtep));
            errors.extend(tunnel.sync(&self.kernel, &observed, tunnel_address, mtu, peers).await);
        }
        self.refresh_dns(&want, revision).await;
        if full || loaded_rules.as_deref() != Some(script.as_str()) {
            let loaded = weft_dataplane::rules::enable_forwarding()
                .and_then(|()| weft_dataplane::rules::load(&script));
            match loaded {
                Ok(()) => *loaded_rules = Some(script),
                Err(e) => {
                    *loaded_rules = None;
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() && self.applied.send_replace(revision) != revision {
            self.beat_now.notify_one();
        }
        errors
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

    fn save_sandboxes(&self, sandboxes: &Sandboxes) -> Result<(), Status> {
        sandboxes.save(&sandbox_file(&self.settings.state_dir)).map_err(internal)
    }

    /// Attaches a container: allocates through the controllers, records the sandbox, plumbs
    /// it, and returns once the interface is up. Anything that fails half-way is undone.
    pub async fn attach(&self, request: agent::AttachRequest) -> Result<agent::Attachment, Status> {
        let netns = PathBuf::from(&request.netns);
        if request.netns.is_empty() {
            return Err(Status::invalid_argument(
                "netns: give the path of the container's network namespace",
            ));
        }
        if let Err(e) = std::fs::File::open(&netns) {
            return Err(Status::invalid_argument(format!(
                "netns {:?} cannot be opened ({e}); give a path such as /run/netns/NAME or /proc/PID/ns/net",
                request.netns
            )));
        }
        if request.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id: must not be empty"));
        }
        let duplicate = {
            let shared = self.shared();
            shared.mirror.find_network(&request.network).and_then(|network| {
                let (_, sandbox) = shared.sandboxes.find(&network.id, &request.container_id)?;
                Some(format!(
                    "container {} is already attached to network {} (interface {})",
                    request.container_id, network.name, sandbox.ifname
                ))
            })
        };
        if let Some(message) = duplicate {
            return Err(Status::already_exists(message));
        }
        let create = pb::CreateEndpointRequest {
            network: request.network.clone(),
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
        };
        let created = self
            .controllers
            .call(|c| {
                let create = create.clone();
                async move { EndpointServiceClient::new(c).create_endpoint(create).await }
            })
            .await?
            .into_inner();
        let endpoint = endpoint_view(&created).map_err(internal)?;
        match self.plumb(&endpoint, &netns, request.write_resolv_conf).await {
            Ok(attachment) if request.wait_everywhere => self.await_everywhere(attachment).await,
            Ok(attachment) => Ok(attachment),
            Err(status) => {
                self.forget(&endpoint.id);
                let _ = self.release(&created.network_id, &created.container_id).await;
                let _ = self.reconcile().await;
                Err(status)
            }
        }
    }

    /// Waits until every other host with a container on the network has programmed the new
    /// endpoint. When they do not in time, the container stays attached here and the error
    /// says so.
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
        };
        let waited = self
            .controllers
            .call(|c| {
                let request = request.clone();
                async move { NodeServiceClient::new(c).await_applied(request).await }
            })
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

    async fn plumb(
        &self,
        endpoint: &EndpointView,
        netns: &Path,
        resolv_conf: bool,
    ) -> Result<agent::Attachment, Status> {
        let network = self.wait_for_network(&endpoint.network_id).await?;
        let (sandbox, sandboxes) = {
            let mut shared = self.shared();
            shared.mirror.insert_endpoint(endpoint.clone());
            let (ifname, first) = shared.sandboxes.next_interface(
                &endpoint.container_id,
                netns,
                &network.settings.iface_prefix,
            );
            let sandbox = Sandbox {
                network_id: endpoint.network_id.clone(),
                container_id: endpoint.container_id.clone(),
                netns: netns.to_path_buf(),
                ifname,
                default_route: first,
            };
            shared.sandboxes.endpoints.insert(endpoint.id.clone(), sandbox.clone());
            (sandbox, shared.sandboxes.clone())
        };
        self.save_sandboxes(&sandboxes)?;
        let errors = self.reconcile().await;
        let attachment = self.attachment(endpoint, &sandbox, &network);
        if resolv_conf && sandbox.default_route {
            write_resolv_conf(netns, &attachment)?;
        }
        if !self.kernel.link_is_up(&host_veth(endpoint)).await {
            let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(Status::failed_precondition(format!(
                "could not plumb container {} into {}: {}",
                endpoint.container_id,
                netns.display(),
                if why.is_empty() { "the interface did not come up".to_string() } else { why.join("; ") }
            )));
        }
        Ok(attachment)
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

    fn forget(&self, endpoint_id: &str) {
        let sandboxes = {
            let mut shared = self.shared();
            shared.mirror.endpoints.remove(endpoint_id);
            shared.sandboxes.endpoints.remove(endpoint_id).map(|_| shared.sandboxes.clone())
        };
        if let Some(sandboxes) = sandboxes {
            if let Err(e) = self.save_sandboxes(&sandboxes) {
                tracing::error!(error = %e, "saving sandboxes");
            }
        }
    }

    async fn release(&self, network: &str, container_id: &str) -> Result<(), Status> {
        let request = pb::RemoveEndpointRequest {
            target: Some(pb::remove_endpoint_request::Target::Container(pb::ContainerOnNetwork {
                network: network.to_string(),
                container_id: container_id.to_string(),
            })),
        };
        let result = self
            .controllers
            .call(|c| {
                let request = request.clone();
                async move { EndpointServiceClient::new(c).remove_endpoint(request).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(status),
        }
    }

    /// Detaches a container from a network: releases the endpoint and removes its interface.
    pub async fn detach(&self, request: agent::DetachRequest) -> Result<agent::Attachment, Status> {
        let found = {
            let shared = self.shared();
            shared.mirror.find_network(&request.network).cloned().and_then(|network| {
                let (id, sandbox) = shared.sandboxes.find(&network.id, &request.container_id)?;
                let endpoint = shared.mirror.endpoints.get(id)?.clone();
                Some((network, sandbox.clone(), endpoint))
            })
        };
        let Some((network, sandbox, endpoint)) = found else {
            return Err(Status::not_found(format!(
                "container {:?} is not attached to network {:?} on this host",
                request.container_id, request.network
            )));
        };
        self.release(&network.id, &endpoint.container_id).await?;
        self.forget(&endpoint.id);
        let still_attached =
            self.shared().sandboxes.endpoints.values().any(|s| s.container_id == endpoint.container_id);
        if !still_attached {
            remove_resolv_conf(&sandbox.netns);
        }
        let errors = self.reconcile().await;
        if let Some(e) = errors.first() {
            tracing::warn!(error = %e, "detach left something behind; the next resync retries");
        }
        Ok(self.attachment(&endpoint, &sandbox, &network))
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
        for e in self.reconcile().await {
            tracing::warn!(error = %e, "after key rotation");
        }
        let request = self.registration();
        self.controllers
            .call(|c| {
                let request = request.clone();
                async move { NodeServiceClient::new(c).register_node(request).await }
            })
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

    pub fn list(&self) -> agent::ListResponse {
        let shared = self.shared();
        let attachments = shared
            .sandboxes
            .endpoints
            .iter()
            .filter_map(|(id, sandbox)| {
                let endpoint = shared.mirror.endpoints.get(id)?;
                let network = shared.mirror.networks.get(&endpoint.network_id)?;
                Some(self.attachment(endpoint, sandbox, network))
            })
            .collect();
        agent::ListResponse { attachments, applied_revision: self.applied_revision() }
    }

    fn attachment(
        &self,
        endpoint: &EndpointView,
        sandbox: &Sandbox,
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
            interface: sandbox.ifname.clone(),
            netns: sandbox.netns.display().to_string(),
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

/// `/etc/netns/NAME/resolv.conf` for a namespace at `/run/netns/NAME`, which `ip netns exec`
/// shows the container as its resolv.conf.
fn write_resolv_conf(netns: &Path, attachment: &agent::Attachment) -> Result<(), Status> {
    let name = netns
        .strip_prefix("/run/netns")
        .ok()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "write_resolv_conf needs a namespace made with `ip netns add` (/run/netns/NAME), not {}",
                netns.display()
            ))
        })?;
    let dir = Path::new("/etc/netns").join(name);
    let mut text = String::from(RESOLV_CONF_MARK);
    for server in &attachment.dns_servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text.push_str(&format!("search {}\noptions ndots:0\n", attachment.dns_search.join(" ")));
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("resolv.conf"), text))
        .map_err(|e| internal(format!("writing {}/resolv.conf: {e}", dir.display())))
}

/// First line of every resolv.conf weft writes: only those are ever removed.
const RESOLV_CONF_MARK: &str = "# written by weft-node\n";

/// Removes the resolv.conf weft wrote for an `ip netns` namespace once the container has left
/// its last network (and the directory, when nothing else is in it).
fn remove_resolv_conf(netns: &Path) {
    let Some(name) =
        netns.strip_prefix("/run/netns").ok().and_then(|n| n.to_str()).filter(|n| !n.contains('/'))
    else {
        return;
    };
    let dir = Path::new("/etc/netns").join(name);
    let file = dir.join("resolv.conf");
    if std::fs::read_to_string(&file).is_ok_and(|t| t.starts_with(RESOLV_CONF_MARK)) {
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir(&dir);
    }
}
