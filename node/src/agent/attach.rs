//! The local attach API: plugging a container into a network (record first, endpoint from
//! the controllers, then the kernel), unplugging it, listing, and the host key rotation.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};
use weft_api::agent;
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_core::PublishedPort;
use weft_core::ports::PortSpec;
use weft_dataplane::Dataplane;

use crate::attachments::{Attachments, Entry, NamespaceId, Record, Stage};
use crate::desired::network_mtu;
use crate::mirror::{EndpointView, Mirror, NetworkView, endpoint_view, network_view};
use crate::tunnel::Tunnel;

use super::reconcile::still_there;
use super::*;

impl<D: Dataplane> Agent<D> {
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
        let specs = crate::publishing::specs(&request)?;
        if !specs.is_empty() && network.internal {
            return Err(Status::failed_precondition(format!(
                "network {:?} is internal: nothing outside it may reach its containers, so it cannot publish ports",
                network.name
            )));
        }
        // Held until the endpoint is in the mirror, where the next attach sees its ports.
        let chosen = self.choose_ports(&specs, &network)?;
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
            ports: chosen.ports.iter().map(weft_api::convert::published_port).collect(),
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
        drop(chosen);
        if let Err(e) = self.store.save(&record) {
            return Err(self.abandon(record, internal(e)).await);
        }

        let failures = self.reconcile().await;
        let problem =
            failures.endpoints.get(&endpoint.id).cloned().or_else(|| failures.host.first().cloned());
        if !self.kernel.port_is_up(&crate::desired::host_veth(&endpoint)).await {
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
    /// deleted or replaced), or by an attach that failed, is released first; a live one means
    /// the container is attached.
    pub(super) async fn claim(
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
                    // Aborted, not AlreadyExists: the attach or detach in flight (or the
                    // undoing of one that failed) may yet end with the container not attached.
                    Some(entry) if entry.busy => {
                        return Err(Status::aborted(format!(
                            "container {} is being attached to or detached from network {} right now; retry",
                            request.container_id, network.name
                        )));
                    }
                    // An attach that failed and could not be undone then (no controller
                    // reached): the container is not attached; undone below, then afresh.
                    Some(entry) if entry.record.stage == Stage::Attaching => {}
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
                        let Some((ifname, first)) = attachments.next_interface(
                            &request.container_id,
                            &netns,
                            &network.settings.iface_prefix,
                            &request.interface,
                        ) else {
                            return Err(Status::already_exists(format!(
                                "container {} has weft interface {} already (on another network)",
                                request.container_id, request.interface
                            )));
                        };
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
                            runtime_handover: false,
                            front_end: request.front_end.clone(),
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
    pub(super) fn update(&self, record: &Record) {
        if let Some(entry) = self.shared().attachments.entries.get_mut(&record.key()) {
            entry.record = record.clone();
        }
    }

    /// Undoes an attach that failed: releases whatever the controllers made and forgets the
    /// record. When the release cannot be done now, the record stays (as an unfinished
    /// attach) and the janitor finishes the job. Returns the attach's error.
    pub(super) async fn abandon(&self, record: Record, status: Status) -> Status {
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
    pub(super) async fn create_endpoint(
        &self,
        create: &pb::CreateEndpointRequest,
    ) -> Result<pb::Endpoint, Status> {
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
    pub(super) async fn resolve_network(&self, reference: &str) -> Result<NetworkView, Status> {
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
    pub(super) async fn await_everywhere(
        &self,
        attachment: agent::Attachment,
    ) -> Result<agent::Attachment, Status> {
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
    pub(super) async fn wait_for_network(&self, id: &str) -> Result<NetworkView, Status> {
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

    /// Checks a container's attachment against its namespace (`AgentService.Check`).
    pub async fn check(&self, request: agent::CheckRequest) -> Result<agent::Attachment, Status> {
        let network = self.resolve_network(&request.network).await?;
        let key = crate::attachments::key(&network.id, &request.container_id);
        let (record, endpoint) = {
            let shared = self.shared();
            let record = shared
                .attachments
                .entries
                .get(&key)
                .filter(|e| e.gone.is_none() && e.record.stage == Stage::Attached)
                .map(|e| e.record.clone());
            let endpoint = record
                .as_ref()
                .and_then(|r| r.endpoint_id.as_ref())
                .and_then(|id| shared.mirror.endpoints.get(id));
            (record.clone(), endpoint.cloned())
        };
        let (Some(record), Some(endpoint)) = (record, endpoint) else {
            return Err(Status::not_found(format!(
                "container {} is not attached to network {} on this host",
                request.container_id, network.name
            )));
        };
        let differs = |what: String| {
            Status::failed_precondition(format!(
                "container {} on network {}: {what}",
                request.container_id, network.name
            ))
        };
        if !request.netns.is_empty() && Path::new(&request.netns) != record.netns {
            return Err(differs(format!(
                "attached in namespace {}, not {}",
                record.netns.display(),
                request.netns
            )));
        }
        if !request.interface.is_empty() && request.interface != record.ifname {
            return Err(differs(format!("its interface is {}, not {}", record.ifname, request.interface)));
        }
        let seen = self
            .kernel
            .observe_container(&record.netns, &record.ifname)
            .await
            .map_err(|e| differs(format!("cannot look into its namespace: {e}")))?;
        let link = seen.link.ok_or_else(|| {
            differs(format!("no interface {} in {}", record.ifname, record.netns.display()))
        })?;
        if !link.up {
            return Err(differs(format!("interface {} is down", record.ifname)));
        }
        if link.mac != Some(endpoint.mac) {
            return Err(differs(format!(
                "interface {} has MAC {}, not {}",
                record.ifname,
                link.mac.map(|m| m.to_string()).unwrap_or_default(),
                endpoint.mac
            )));
        }
        for address in endpoint.ipv4.iter().chain(endpoint.ipv6.iter()) {
            if !link.addresses.contains(address) {
                return Err(differs(format!("interface {} lacks its address {address}", record.ifname)));
            }
        }
        if record.default_route {
            let families = [endpoint.ipv4.is_some(), endpoint.ipv6.is_some()];
            for (v6, gateway) in [false, true].into_iter().filter_map(|v6| Some((v6, network.gateway(v6)?))) {
                if families[usize::from(v6)] && !seen.default_gateways.contains(&gateway.ip) {
                    return Err(differs(format!("no default route through {}", gateway.ip)));
                }
            }
        }
        Ok(self.attachment(&endpoint, &record, &network))
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
                return Err(Status::aborted(format!(
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

    pub(super) fn attachment(
        &self,
        endpoint: &EndpointView,
        record: &Record,
        network: &NetworkView,
    ) -> agent::Attachment {
        let gateway = |v6: bool| network.gateway(v6).map(|g| g.ip.to_string()).unwrap_or_default();
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
            ports: endpoint
                .ports
                .iter()
                .map(|p| agent::PublishedPort {
                    protocol: p.protocol.to_string(),
                    host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    host_port: p.host_port.into(),
                    container_port: p.container_port.into(),
                })
                .collect(),
            default_route: record.default_route,
            front_end: record.front_end.clone(),
        }
    }

    /// Turns port specs into host ports this host can give: random ones from its ephemeral
    /// range that neither the registry, another attach in flight, nor a program holds; given
    /// ones checked against programs and the host's addresses. (Whether another container
    /// publishes a given one is the controllers' to say: they name it.)
    pub(super) fn choose_ports(
        &self,
        specs: &[PortSpec],
        network: &NetworkView,
    ) -> Result<ChosenPorts, Status> {
        if specs.is_empty() {
            return Ok(ChosenPorts { ports: Vec::new(), choosing: self.choosing_ports.clone() });
        }
        let host = self.settings.host.name.clone();
        let ipv6 = network.gateways.iter().any(|g| g.ip.is_ipv6());
        let registered: Vec<PublishedPort> = self
            .shared()
            .mirror
            .endpoints
            .values()
            .filter(|e| e.node == host)
            .flat_map(|e| e.ports.iter().copied())
            .collect();
        if !ipv6 && let Some(v6) = specs.iter().find_map(|s| s.host_ip.filter(|ip| ip.is_ipv6())) {
            return Err(Status::invalid_argument(format!(
                "host address {v6} is IPv6, but network {:?} has no IPv6 subnet to forward it to",
                network.name
            )));
        }
        let mut choosing = self.choosing_ports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let default_host_ip = network.settings.host_binding_ipv4.map(std::net::IpAddr::V4);
        let ports = weft_core::ports::resolve(
            specs,
            default_host_ip,
            crate::publishing::ephemeral_range(),
            |protocol, host_ip, host_port| {
                let candidate = PublishedPort { protocol, host_ip, host_port, container_port: 1 };
                !registered.iter().chain(choosing.iter()).any(|p| p.clashes_with(&candidate))
                    && crate::publishing::check(protocol, host_ip, host_port, ipv6).is_ok()
            },
        )
        .map_err(|e| weft_api::convert::status(&e))?;
        for port in &ports {
            if let Some(other) = choosing.iter().find(|p| p.clashes_with(port)) {
                return Err(Status::already_exists(format!(
                    "host port {}/{} on host {host:?} is being published by another attach (as {})",
                    port.host_side(),
                    port.protocol,
                    other.docker_form()
                )));
            }
            crate::publishing::check(port.protocol, port.host_ip, port.host_port, ipv6)
                .map_err(|why| crate::publishing::refusal(port, &why, &host))?;
        }
        choosing.extend(ports.iter().copied());
        Ok(ChosenPorts { ports, choosing: self.choosing_ports.clone() })
    }
}

/// Host ports an attach has chosen, held against other attaches until dropped.
pub(super) struct ChosenPorts {
    pub(super) ports: Vec<PublishedPort>,
    choosing: Arc<std::sync::Mutex<Vec<PublishedPort>>>,
}

impl Drop for ChosenPorts {
    fn drop(&mut self) {
        if self.ports.is_empty() {
            return;
        }
        let mut choosing = self.choosing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for port in &self.ports {
            if let Some(at) = choosing.iter().position(|p| p == port) {
                choosing.swap_remove(at);
            }
        }
    }
}

/// NAME of a namespace at `/run/netns/NAME` (made with `ip netns add`).
pub(super) fn netns_name(netns: &Path) -> Result<&str, Status> {
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
pub(super) fn resolv_conf_mark(agent: &Path) -> String {
    format!("# written by weft-node (state {})\n", agent.display())
}

/// `/etc/netns/NAME/resolv.conf` for a namespace at `/run/netns/NAME`, which `ip netns exec`
/// shows the container as its resolv.conf.
pub(super) fn write_resolv_conf(
    netns: &Path,
    attachment: &agent::Attachment,
    agent: &Path,
) -> Result<(), Status> {
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
pub(super) fn remove_resolv_conf(netns: &Path, agent: &Path) {
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
pub(super) fn remove_orphaned_resolv_confs(agent: &Path, attachments: &Attachments) {
    let Ok(listing) = std::fs::read_dir("/etc/netns") else { return };
    for item in listing.flatten() {
        let netns = Path::new("/run/netns").join(item.file_name());
        let known = attachments.entries.values().any(|e| e.record.netns == netns && e.record.resolv_conf);
        if !known {
            remove_resolv_conf(&netns, agent);
        }
    }
}
