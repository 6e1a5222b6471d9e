//! The agent as Docker's network and IPAM driver (decision record 0002): what each call of
//! the remote driver protocol does to weft's registry and this host's kernel. The HTTP side
//! is `crate::docker::server`; the messages are `crate::docker::protocol`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use tonic::Status;
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_dataplane::Dataplane;

use crate::attachments::{Entry, NamespaceId, Record, Stage};
use crate::docker::bindings::{DockerBindings, DockerView, Missing, sweep};
use crate::docker::pairing::{AwaitingIpv6, ipv6_pool_id, split_pool_id};
use crate::docker::protocol as docker;
use crate::mirror::{EndpointView, NetworkView, endpoint_view};

use super::*;

/// Where an endpoint made for Docker keeps its container id until Docker says which
/// container it is: `docker-` and the address request's own id.
const RESERVATION_PREFIX: &str = "docker-";

fn with_prefix(address: &Option<weft_dataplane::IfAddr>) -> String {
    address.map(|a| a.to_string()).unwrap_or_default()
}

impl<D: Dataplane> Agent<D> {
    fn bindings(&self) -> std::sync::MutexGuard<'_, DockerBindings> {
        self.docker.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn awaiting_ipv6(&self) -> std::sync::MutexGuard<'_, AwaitingIpv6> {
        self.docker_awaiting_ipv6.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save_bindings(&self, change: impl FnOnce(&mut DockerBindings)) -> Result<(), Status> {
        let mut bindings = self.bindings();
        change(&mut bindings);
        bindings
            .save(&self.settings.state_dir)
            .map_err(|e| internal(format!("saving the Docker plugin's bindings: {e}")))
    }

    /// The weft network behind a Docker network id.
    fn docker_network(&self, docker_network: &str) -> Result<NetworkView, Status> {
        let id = self.bindings().networks.get(docker_network).cloned().ok_or_else(|| {
            Status::not_found(format!("Docker network {} is not a weft network here", short(docker_network)))
        })?;
        self.shared()
            .mirror
            .networks
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("weft network {} is gone", short(&id))))
    }

    /// `IpamDriver.RequestPool`: the network named by `--ipam-opt weft.network=` (how agents
    /// create a network that exists already on every host), or a new one under a provisional
    /// name, so its subnet is the cluster's at once.
    pub async fn docker_request_pool(
        &self,
        request: docker::RequestPool,
    ) -> Result<docker::PoolAnswer, Status> {
        if request.pool.is_empty() && !request.sub_pool.is_empty() {
            return Err(Status::invalid_argument("--ip-range needs --subnet"));
        }
        if request.v6 {
            return self.docker_request_ipv6_pool(request).await;
        }
        let network = match request.options.get("weft.network") {
            Some(reference) => self.docker_named_network(reference, &request).await?,
            None => {
                let provisional = format!("{RESERVATION_PREFIX}{}", fresh_id(12));
                let create = pb::CreateNetworkRequest {
                    name: provisional.clone(),
                    ipam_config: vec![pb::IpamConfig {
                        subnet: request.pool.clone(),
                        ip_range: request.sub_pool.clone(),
                        ..Default::default()
                    }]
                    .into_iter()
                    .filter(|c| !c.subnet.is_empty())
                    .collect(),
                    labels: BTreeMap::from([("weft.docker.provisional".to_string(), "true".to_string())]),
                    request_id: request_id("pool", &provisional),
                    ..Default::default()
                };
                let created = self
                    .controllers
                    .send(&create, |c, r| async move { NetworkServiceClient::new(c).create_network(r).await })
                    .await?;
                self.awaiting_ipv6().pool_made(&created.id);
                self.wait_for_network(&created.id).await?
            }
        };
        let pool = network
            .gateway(false)
            .map(|g| g.network())
            .ok_or_else(|| internal(format!("network {} has no IPv4 subnet", network.name)))?;
        Ok(docker::PoolAnswer { pool_id: network.id, pool, data: BTreeMap::new() })
    }

    /// The network `--ipam-opt weft.network=` names. Docker checks a pool it did not name
    /// (no `--subnet`) against this host's routes and, finding one, asks again without end:
    /// a network with containers here has its bridge route, so its subnet must be named.
    async fn docker_named_network(
        &self,
        reference: &str,
        request: &docker::RequestPool,
    ) -> Result<NetworkView, Status> {
        let network = self.resolve_network(reference).await?;
        let host = &self.settings.host.name;
        let in_use_here =
            self.shared().mirror.endpoints.values().any(|e| e.network_id == network.id && &e.node == host);
        if request.pool.is_empty() && in_use_here {
            let subnets: Vec<String> =
                network.gateways.iter().map(|g| format!("--subnet {}", g.network())).collect();
            return Err(Status::failed_precondition(format!(
                "weft network {:?} has containers on this host, where Docker would take its bridge for a clash with the subnet: name the subnets too ({})",
                network.name,
                subnets.join(" ")
            )));
        }
        Ok(network)
    }

    /// `RequestPool` for IPv6 (`--ipv6`), which Docker sends right after the IPv4 one: the
    /// named network's IPv6 subnet, or the provisional network just made given one.
    async fn docker_request_ipv6_pool(
        &self,
        request: docker::RequestPool,
    ) -> Result<docker::PoolAnswer, Status> {
        let network = match request.options.get("weft.network") {
            Some(reference) => self.docker_named_network(reference, &request).await?,
            None => {
                let provisional = self.awaiting_ipv6().take_pool().ok_or_else(|| {
                    Status::failed_precondition(
                        "Docker asked for an IPv6 pool without the IPv4 pool that comes before it",
                    )
                })?;
                let network = self.wait_for_network(&provisional).await?;
                let ipv6 = pb::IpamConfig {
                    subnet: request.pool.clone(),
                    ip_range: request.sub_pool.clone(),
                    ..Default::default()
                };
                self.docker_reshape(&network, network.internal, BTreeMap::new(), Some(ipv6)).await?
            }
        };
        let pool = network.gateway(true).map(|g| g.network()).ok_or_else(|| {
            Status::failed_precondition(format!(
                "weft network {:?} has no IPv6: create its Docker network without --ipv6",
                network.name
            ))
        })?;
        if !request.pool.is_empty() && request.pool != pool {
            return Err(Status::failed_precondition(format!(
                "weft network {:?} has IPv6 subnet {pool}, not {}",
                network.name, request.pool
            )));
        }
        Ok(docker::PoolAnswer { pool_id: ipv6_pool_id(&network.id), pool, data: BTreeMap::new() })
    }

    /// `IpamDriver.RequestAddress`: the gateway is weft's; a container's address is a weft
    /// endpoint made now (a static `--ip` is refused when any host holds it), named by the
    /// request until Docker says whose it is.
    pub async fn docker_request_address(
        &self,
        request: docker::RequestAddress,
    ) -> Result<docker::AddressAnswer, Status> {
        let (network, v6) = split_pool_id(&request.pool_id);
        let network = self.wait_for_network(network).await?;
        if request.is_gateway() {
            return match network.gateway(v6) {
                Some(g) if request.address.is_empty() || request.address == g.ip.to_string() => {
                    Ok(docker::AddressAnswer { address: g.to_string(), data: BTreeMap::new() })
                }
                Some(g) => Err(Status::invalid_argument(format!(
                    "network {:?} has gateway {}; --gateway {} cannot change it",
                    network.name, g.ip, request.address
                ))),
                None => Err(internal(format!("network {} has no gateway of that family", network.name))),
            };
        }
        if v6 {
            return self.docker_pair_ipv6(&network, &request.address).await;
        }
        let reservation = format!("{RESERVATION_PREFIX}{}", fresh_id(20));
        let create = pb::CreateEndpointRequest {
            network: network.id.clone(),
            node: self.settings.host.name.clone(),
            container_id: reservation.clone(),
            container_name: reservation.clone(),
            ipv4_address: request.address.clone(),
            mac_address: request.options.get(docker::MAC_OPTION).cloned().unwrap_or_default(),
            request_id: request_id("address", &reservation),
            ..Default::default()
        };
        let endpoint = self.docker_reserve(&create).await?;
        if endpoint.ipv6.is_some() {
            self.awaiting_ipv6().address_made(&network.id, &endpoint.id);
        }
        Ok(docker::AddressAnswer { address: with_prefix(&endpoint.ipv4), data: BTreeMap::new() })
    }

    /// An IPv6 `RequestAddress`: the IPv6 address of the endpoint the IPv4 request just
    /// before it made; a static `--ip6` makes that endpoint again with it.
    async fn docker_pair_ipv6(
        &self,
        network: &NetworkView,
        address: &str,
    ) -> Result<docker::AddressAnswer, Status> {
        let unpaired = || {
            Status::failed_precondition(format!(
                "Docker asked for an IPv6 address on network {:?} without the IPv4 request that comes before it",
                network.name
            ))
        };
        let id = self.awaiting_ipv6().take_address(&network.id).ok_or_else(unpaired)?;
        let mut endpoint = self.shared().mirror.endpoints.get(&id).cloned().ok_or_else(unpaired)?;
        let has = endpoint.ipv6.map(|a| a.ip.to_string()).unwrap_or_default();
        if !address.is_empty() && address != has {
            endpoint = self.docker_remake(network, &endpoint, &endpoint.mac.to_string(), address).await?;
        }
        Ok(docker::AddressAnswer { address: with_prefix(&endpoint.ipv6), data: BTreeMap::new() })
    }

    /// Creates an endpoint for Docker, remembered as the plugin's until released.
    async fn docker_reserve(&self, create: &pb::CreateEndpointRequest) -> Result<EndpointView, Status> {
        let created = self.create_endpoint(create).await?;
        self.save_bindings(|b| {
            b.made.insert(created.id.clone());
        })?;
        let endpoint = endpoint_view(&created).map_err(internal)?;
        self.shared().mirror.insert_endpoint(endpoint.clone());
        Ok(endpoint)
    }

    /// This host's endpoint on `network` with the address `address` ("10.1.0.5" or
    /// "fd00::5", with or without its prefix length).
    fn endpoint_at(&self, network: &str, address: &str) -> Option<EndpointView> {
        let ip = address.split('/').next().unwrap_or_default();
        let host = &self.settings.host.name;
        let at = |a: &Option<weft_dataplane::IfAddr>| a.is_some_and(|a| a.ip.to_string() == ip);
        self.shared()
            .mirror
            .endpoints
            .values()
            .find(|e| e.network_id == network && &e.node == host && (at(&e.ipv4) || at(&e.ipv6)))
            .cloned()
    }

    /// `IpamDriver.ReleaseAddress`: the endpoint goes (the gateway is the network's own).
    /// Docker releases IPv4 then IPv6: the second finds the endpoint gone already.
    pub async fn docker_release_address(&self, request: docker::ReleaseAddress) -> Result<(), Status> {
        let (network, _) = split_pool_id(&request.pool_id);
        let Some(endpoint) = self.endpoint_at(network, &request.address) else { return Ok(()) };
        self.docker_forget_endpoint(&endpoint.id).await
    }

    /// `IpamDriver.ReleasePool`: a provisional network Docker gave up on (its create failed
    /// half-way) is removed; any other stays, for the other hosts using it.
    /// The IPv6 pool goes with the network's IPv4 one.
    pub async fn docker_release_pool(&self, request: docker::ReleasePool) -> Result<(), Status> {
        if split_pool_id(&request.pool_id).1 {
            return Ok(());
        }
        let provisional = self
            .shared()
            .mirror
            .networks
            .get(&request.pool_id)
            .is_some_and(|n| n.name.starts_with(RESERVATION_PREFIX));
        if provisional {
            let remove = pb::RemoveNetworkRequest {
                network: request.pool_id.clone(),
                force: false,
                request_id: request_id("release-pool", &request.pool_id),
            };
            let removed = self
                .controllers
                .send(&remove, |c, r| async move { NetworkServiceClient::new(c).remove_network(r).await })
                .await;
            if let Err(status) = removed
                && status.code() != tonic::Code::NotFound
            {
                return Err(status);
            }
        }
        Ok(())
    }

    /// `NetworkDriver.CreateNetwork`: binds Docker's network id to the weft network whose
    /// subnet Docker's IPAM data names. Docker sends the options (`-o`, `--internal`) only
    /// now: a provisional network takes them; a network that exists already must have them.
    pub async fn docker_create_network(&self, request: docker::CreateNetwork) -> Result<(), Status> {
        let pool = request.ipv4_data.first().map(|d| d.pool.clone()).unwrap_or_default();
        let network = self
            .shared()
            .mirror
            .networks
            .values()
            .find(|n| n.gateways.iter().any(|g| g.network() == pool))
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "no weft network has subnet {pool}: create Docker networks on weft with --ipam-driver weft"
                ))
            })?;
        let ipv6_pool = request.ipv6_data.first().map(|d| d.pool.clone());
        let has_ipv6 = network.gateway(true).map(|g| g.network());
        if ipv6_pool != has_ipv6 {
            return Err(Status::failed_precondition(match (has_ipv6, ipv6_pool) {
                (Some(has), None) => format!(
                    "weft network {:?} has IPv6 subnet {has}: create its Docker network with --ipv6",
                    network.name
                ),
                (has, asked) => format!(
                    "weft network {:?} has IPv6 subnet {}, this Docker network {}",
                    network.name,
                    has.as_deref().unwrap_or("none"),
                    asked.unwrap_or_default()
                ),
            }));
        }
        let (internal, options) = (request.internal(), request.driver_options());
        if network.name.starts_with(RESERVATION_PREFIX) {
            if internal != network.internal || !options.is_empty() {
                self.docker_reshape(&network, internal, options, None).await?;
            }
        } else if internal != network.internal || (options.contains_key("encrypted") && !network.encrypted) {
            let shape = |internal: bool, encrypted: bool| {
                format!(
                    "{}{}",
                    if internal { "internal" } else { "not internal" },
                    if encrypted { ", encrypted" } else { "" }
                )
            };
            return Err(Status::failed_precondition(format!(
                "weft network {:?} is {}; this Docker network asks for {}: create it with the same --internal and -o encrypted as the network has",
                network.name,
                shape(network.internal, network.encrypted),
                shape(internal, options.contains_key("encrypted") || network.encrypted),
            )));
        }
        self.save_bindings(|b| {
            b.networks.insert(request.network_id.clone(), network.id.clone());
            b.withdrawn.remove(&network.id);
        })
    }

    /// Gives a provisional network the options Docker asked for, and IPv6 with `ipv6`.
    async fn docker_reshape(
        &self,
        network: &NetworkView,
        internal: bool,
        options: BTreeMap<String, String>,
        ipv6: Option<pb::IpamConfig>,
    ) -> Result<NetworkView, Status> {
        let reshape = pb::ReshapeNetworkRequest {
            network: network.id.clone(),
            internal,
            options: options.into_iter().collect(),
            request_id: request_id("reshape", &format!("{}-{}", network.id, fresh_id(8))),
            ipv6,
        };
        let reshaped = self
            .controllers
            .send(&reshape, |c, r| async move { NetworkServiceClient::new(c).reshape_network(r).await })
            .await?;
        // Join soon needs the network as it is now (an encrypted one's devices differ).
        let deadline = tokio::time::Instant::now() + DOCKER_PATIENCE;
        let arrived = |n: &NetworkView| {
            n.internal == reshaped.internal
                && n.encrypted == reshaped.encrypted
                && n.gateway(true).is_some() == reshaped.enable_ipv6
        };
        loop {
            if let Some(network) = self.shared().mirror.networks.get(&network.id).filter(|n| arrived(n)) {
                tracing::info!(
                    network = %short(&network.id), internal, encrypted = reshaped.encrypted,
                    ipv6 = reshaped.enable_ipv6, "took Docker's options"
                );
                return Ok(network.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(format!(
                    "network {:?} took Docker's options but they have not reached this host yet; retry",
                    network.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `NetworkDriver.DeleteNetwork`: only this host's Docker object goes; the weft network
    /// stays for the other hosts (`weft network rm` removes it).
    pub async fn docker_delete_network(&self, request: docker::NetworkRef) -> Result<(), Status> {
        self.save_bindings(|b| {
            if let Some(weft) = b.networks.remove(&request.network_id) {
                b.withdrawn.insert(weft);
            }
        })
    }

    /// `NetworkDriver.CreateEndpoint`: Docker's endpoint id for the weft endpoint its address
    /// request made. The MAC is weft's unless the user gave one (`--mac-address`), which
    /// Docker sends only now: the endpoint is then made again with it, on the same address.
    pub async fn docker_create_endpoint(
        &self,
        request: docker::CreateEndpoint,
    ) -> Result<docker::CreateEndpointAnswer, Status> {
        let network = self.docker_network(&request.network_id)?;
        let interface = request.interface.clone().unwrap_or_default();
        let mut endpoint = self.endpoint_at(&network.id, &interface.address).ok_or_else(|| {
            Status::failed_precondition(format!(
                "no address {:?} was handed out on network {:?} here; use weft as the network's IPAM driver too (--ipam-driver weft)",
                interface.address, network.name
            ))
        })?;
        let ipv6 = with_prefix(&endpoint.ipv6);
        if interface.address_ipv6 != ipv6 {
            return Err(Status::failed_precondition(format!(
                "address {} on network {:?} is paired with IPv6 {:?} here, not {:?}: use weft as the network's IPAM driver too (--ipam-driver weft)",
                interface.address, network.name, ipv6, interface.address_ipv6
            )));
        }
        let wanted_mac = interface.mac_address.to_ascii_lowercase();
        if !wanted_mac.is_empty() && wanted_mac != endpoint.mac.to_string() {
            let ipv6 = endpoint.ipv6.map(|a| a.ip.to_string()).unwrap_or_default();
            endpoint = self.docker_remake(&network, &endpoint, &wanted_mac, &ipv6).await?;
        }
        self.save_bindings(|b| {
            b.endpoints.insert(request.endpoint_id.clone(), endpoint.id.clone());
        })?;
        let interface = wanted_mac.is_empty().then(|| docker::Interface {
            mac_address: endpoint.mac.to_string(),
            ..docker::Interface::default()
        });
        Ok(docker::CreateEndpointAnswer { interface })
    }

    /// The endpoint made again on the same IPv4 address with the MAC `mac` and the IPv6
    /// address `ipv6` (either what the user gave Docker; before any container uses it).
    /// Another host asking for one of these very addresses in between gets it instead, and
    /// this container a clear refusal.
    async fn docker_remake(
        &self,
        network: &NetworkView,
        endpoint: &EndpointView,
        mac: &str,
        ipv6: &str,
    ) -> Result<EndpointView, Status> {
        self.docker_forget_endpoint(&endpoint.id).await?;
        let create = pb::CreateEndpointRequest {
            network: network.id.clone(),
            node: self.settings.host.name.clone(),
            container_id: endpoint.container_id.clone(),
            container_name: endpoint.container_id.clone(),
            ipv4_address: endpoint.ipv4.map(|a| a.ip.to_string()).unwrap_or_default(),
            ipv6_address: ipv6.to_string(),
            mac_address: mac.to_string(),
            request_id: request_id("remake", &endpoint.id),
            ..Default::default()
        };
        self.docker_reserve(&create).await
    }

    /// `NetworkDriver.DeleteEndpoint`: the address goes with `ReleaseAddress`, which follows.
    pub async fn docker_delete_endpoint(&self, request: docker::EndpointRef) -> Result<(), Status> {
        self.save_bindings(|b| {
            b.endpoints.remove(&request.endpoint_id);
        })
    }

    fn docker_endpoint(&self, docker_endpoint: &str) -> Result<EndpointView, Status> {
        let id = self.bindings().endpoints.get(docker_endpoint).cloned().ok_or_else(|| {
            Status::not_found(format!("Docker endpoint {} is not weft's here", short(docker_endpoint)))
        })?;
        self.shared()
            .mirror
            .endpoints
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("weft endpoint {} is gone", short(&id))))
    }

    /// `NetworkDriver.Join`: the veth pair, its host end on the network's bridge and the
    /// container end left in this namespace for Docker to move into the sandbox.
    /// The sandbox (`SandboxKey`) need not exist yet: dockerd makes it when the container
    /// starts, after Join, and moves the interface in then. Whether the container is still
    /// there is Docker's to say (Leave, DeleteEndpoint), not a namespace this agent holds.
    pub async fn docker_join(&self, request: docker::Join) -> Result<docker::JoinAnswer, Status> {
        let network = self.docker_network(&request.network_id)?;
        let endpoint = self.docker_endpoint(&request.endpoint_id)?;
        let netns = PathBuf::from(&request.sandbox_key);
        let namespace = NamespaceId { dev: 0, ino: 0 };
        let record = Record {
            network_id: network.id.clone(),
            container_id: endpoint.container_id.clone(),
            netns,
            namespace,
            ifname: String::new(),
            default_route: false,
            endpoint_id: Some(endpoint.id.clone()),
            revision: endpoint.revision,
            stage: Stage::Attached,
            resolv_conf: false,
            runtime_handover: true,
            front_end: "docker".into(),
        };
        self.store.save(&record).map_err(internal)?;
        self.shared()
            .attachments
            .entries
            .insert(record.key(), Entry { record: record.clone(), held: None, busy: false, gone: None });
        let failures = self.reconcile().await;
        let host_veth = crate::desired::host_veth(&endpoint);
        let waiting = weft_dataplane::plan::container_end_name(&host_veth);
        // One link asked for by name: a whole dump can be interrupted by the other joins'
        // links coming and going, and this must not fail for that.
        let made = self.kernel.host_link_exists(&waiting).await;
        if !made {
            let problem = failures.endpoints.get(&endpoint.id).or(failures.host.first()).cloned();
            // Docker undoes the endpoint (DeleteEndpoint, ReleaseAddress) but calls no Leave.
            self.drop_record(&record);
            self.shared().mirror.insert_endpoint(endpoint.clone());
            return Err(Status::failed_precondition(format!(
                "could not make the interface for Docker: {}",
                problem.unwrap_or_else(|| "it did not appear".into())
            )));
        }
        let gateway = |v6: bool| network.gateway(v6).map(|g| g.ip.to_string()).unwrap_or_default();
        // Docker's 127.0.0.11 forwards names it does not know to weft's DNS address from
        // inside the container, which on an internal network has no default route to it.
        let static_routes = match self.settings.service_dns {
            Some(dns) if network.internal => {
                let next_hop = gateway(dns.is_ipv6());
                let host_prefix = if dns.is_ipv6() { 128 } else { 32 };
                vec![docker::StaticRoute {
                    destination: format!("{dns}/{host_prefix}"),
                    route_type: 0,
                    next_hop,
                }]
            }
            _ => Vec::new(),
        };
        Ok(docker::JoinAnswer {
            interface_name: docker::InterfaceName { src_name: waiting, dst_prefix: "eth".into() },
            gateway: gateway(false),
            gateway_ipv6: gateway(true),
            static_routes,
        })
    }

    /// `NetworkDriver.Leave`: the interface goes (Docker has moved it back out of the sandbox,
    /// or the sandbox is gone with it).
    pub async fn docker_leave(&self, request: docker::EndpointRef) -> Result<(), Status> {
        let endpoint = self.docker_endpoint(&request.endpoint_id)?;
        // By endpoint: the record keeps the container id of the address request, the
        // registry the container's own once Docker told it.
        let record = self
            .shared()
            .attachments
            .entries
            .values()
            .find(|e| e.record.endpoint_id.as_ref() == Some(&endpoint.id))
            .map(|e| e.record.clone());
        if let Some(record) = record {
            self.drop_record(&record);
            // `drop_record` forgets the endpoint in the mirror too; it is still registered.
            self.shared().mirror.insert_endpoint(endpoint);
            let _ = self.reconcile().await;
        }
        Ok(())
    }

    /// `NetworkDriver.ProgramExternalConnectivity`: the container's `-p`/`-P` ports, published
    /// by weft as for `weft network connect -p` (random ones from this host's ephemeral range;
    /// a host port another container or a program holds is refused).
    pub async fn docker_program_external(&self, request: docker::ExternalConnectivity) -> Result<(), Status> {
        let bindings = request
            .port_bindings()
            .map_err(|e| Status::invalid_argument(format!("com.docker.network.portmap: {e}")))?;
        let specs = bindings
            .iter()
            .map(docker::PortBinding::spec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("published port: {e}")))?;
        let endpoint = self.docker_endpoint(&request.endpoint_id)?;
        if specs.is_empty() && endpoint.ports.is_empty() {
            return Ok(());
        }
        let network = self.docker_network(&request.network_id)?;
        if !specs.is_empty() && network.internal {
            return Err(Status::failed_precondition(format!(
                "network {:?} is internal: nothing outside it may reach its containers, so it cannot publish ports",
                network.name
            )));
        }
        // Held until the endpoint is in the mirror with them, where the next choice sees them.
        let chosen = self.choose_ports(&specs, &network)?;
        self.docker_publish(&endpoint, &chosen.ports).await
    }

    /// `NetworkDriver.RevokeExternalConnectivity`: the ports go (the container stops, or its
    /// default route moves to another network).
    pub async fn docker_revoke_external(&self, request: docker::EndpointRef) -> Result<(), Status> {
        let Ok(endpoint) = self.docker_endpoint(&request.endpoint_id) else { return Ok(()) };
        if endpoint.ports.is_empty() {
            return Ok(());
        }
        self.docker_publish(&endpoint, &[]).await
    }

    /// Sets the endpoint's published ports in the registry and this host's rules.
    async fn docker_publish(
        &self,
        endpoint: &EndpointView,
        ports: &[weft_core::ports::PublishedPort],
    ) -> Result<(), Status> {
        let publish = pb::PublishPortsRequest {
            endpoint_id: endpoint.id.clone(),
            ports: ports.iter().map(weft_api::convert::published_port).collect(),
            request_id: request_id("publish", &format!("{}-{}", endpoint.id, fresh_id(8))),
        };
        let updated = self
            .controllers
            .send(&publish, |c, r| async move { EndpointServiceClient::new(c).publish_ports(r).await })
            .await?;
        self.shared().mirror.insert_endpoint(endpoint_view(&updated).map_err(internal)?);
        let failures = self.reconcile().await;
        match failures.host.first() {
            Some(problem) => Err(Status::unavailable(format!("programming the published ports: {problem}"))),
            None => Ok(()),
        }
    }

    /// `NetworkDriver.EndpointOperInfo`: the ports weft published for the endpoint, in
    /// Docker's own shape.
    pub fn docker_endpoint_info(&self, request: &docker::EndpointRef) -> serde_json::Value {
        let ports: Vec<docker::PortBinding> = self
            .docker_endpoint(&request.endpoint_id)
            .map(|e| e.ports.iter().map(docker::PortBinding::of).collect())
            .unwrap_or_default();
        serde_json::json!({ "Value": { "com.docker.network.portmap": ports } })
    }
}

impl<D: Dataplane> Agent<D> {
    fn docker_api(&self) -> Option<crate::docker::api::DockerApi> {
        self.settings.docker_api.clone().map(crate::docker::api::DockerApi::new)
    }

    /// Asks dockerd until `ready` finds what it needs in the network (it shows a network only
    /// once `CreateNetwork` returned, a container once its endpoint joined).
    async fn docker_network_info<T>(
        &self,
        docker_network: &str,
        ready: impl Fn(&crate::docker::api::NetworkInfo) -> Option<T>,
    ) -> Option<T> {
        let api = self.docker_api()?;
        let deadline = tokio::time::Instant::now() + DOCKER_PATIENCE;
        loop {
            match api.network(docker_network).await {
                Ok(info) => {
                    if let Some(found) = ready(&info) {
                        return Some(found);
                    }
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(error = %e, network = %short(docker_network), "cannot learn names from dockerd");
                    return None;
                }
                Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every weft network appears in this host's dockerd under its name, so a network created on one host (through Docker or weft) is usable by
    /// `docker run` on all; one removed from weft (`weft network rm`) goes from dockerd too.
    /// Networks still under a provisional name wait for it; a Docker network of that name
    /// already there is left alone, and so is a network the user removed from this host's
    /// dockerd. Runs for the life of the agent when the plugin is on.
    pub async fn docker_offer_networks_forever(&self) {
        let Some(api) = self.docker_api() else { return };
        loop {
            let (networks, orphans): (Vec<NetworkView>, Vec<String>) = {
                let shared = self.shared();
                if !shared.mirror.synced {
                    (Vec::new(), Vec::new())
                } else {
                    let bindings = self.bindings();
                    let offered = shared
                        .mirror
                        .networks
                        .values()
                        .filter(|n| !n.name.starts_with(RESERVATION_PREFIX))
                        .filter(|n| !bindings.networks.values().any(|bound| *bound == n.id))
                        .filter(|n| !bindings.withdrawn.contains(&n.id))
                        .cloned()
                        .collect();
                    let orphans = bindings
                        .networks
                        .iter()
                        .filter(|(_, weft)| !shared.mirror.networks.contains_key(*weft))
                        .map(|(docker, _)| docker.clone())
                        .collect();
                    (offered, orphans)
                }
            };
            for docker_network in orphans {
                // Docker calls DeleteNetwork, which drops the binding.
                match api.remove_network(&docker_network).await {
                    Ok(()) => {
                        tracing::info!(network = %short(&docker_network), "removed from Docker: gone from weft")
                    }
                    Err(e) => tracing::warn!(
                        network = %short(&docker_network), error = %e,
                        "the weft network is gone but Docker keeps its network"
                    ),
                }
            }
            for network in networks {
                match api.has_network(&network.name).await {
                    Ok(true) => {}
                    Ok(false) => match api.create_weft_network(&network).await {
                        Ok(()) => tracing::info!(network = %network.name, "created in Docker"),
                        Err(e) => {
                            tracing::warn!(network = %network.name, error = %e, "cannot create it in Docker")
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "dockerd does not answer yet");
                        break;
                    }
                }
            }
            tokio::time::sleep(self.settings.resync).await;
        }
    }

    /// After `CreateNetwork`: a provisional weft network takes the name the user gave Docker,
    /// while it is still empty.
    pub async fn docker_learn_network_name(&self, docker_network: String) {
        let Some(name) = self.docker_network_info(&docker_network, |info| Some(info.name.clone())).await
        else {
            return;
        };
        let Ok(network) = self.docker_network(&docker_network) else { return };
        if !network.name.starts_with(RESERVATION_PREFIX) || name.is_empty() {
            return;
        }
        let rename = pb::RenameNetworkRequest {
            network: network.id.clone(),
            name: name.clone(),
            request_id: request_id("rename", &network.id),
        };
        let renamed = self
            .controllers
            .send(&rename, |c, r| async move { NetworkServiceClient::new(c).rename_network(r).await })
            .await;
        match renamed {
            Ok(_) => tracing::info!(network = %short(&network.id), %name, "named as in Docker"),
            Err(status) => tracing::warn!(
                network = %short(&network.id), %name, %status,
                "the weft network keeps its provisional name"
            ),
        }
    }

    /// After `Join`: the container's id, name and aliases, which Docker never sends a plugin,
    /// so that weft's DNS answers them on every host.
    pub async fn docker_learn_container(&self, docker_network: String, docker_endpoint: String) {
        let found = self
            .docker_network_info(&docker_network, |info| {
                // Until the sandbox is bound to its container, Docker lists the endpoint under
                // "ep-<endpoint id>": the container id comes a moment later.
                info.containers
                    .iter()
                    .find(|(id, c)| c.endpoint_id == docker_endpoint && !id.starts_with("ep-"))
                    .map(|(id, c)| (id.clone(), c.name.trim_start_matches('/').to_string()))
            })
            .await;
        let Some((container_id, name)) = found else { return };
        let aliases = match self.docker_api() {
            Some(api) => api.aliases(&container_id, &docker_endpoint).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let mut aliases: Vec<String> = aliases
            .into_iter()
            .filter(|a| *a != name && weft_core::validate::dns_name("alias", a).is_ok())
            .collect();
        aliases.dedup();
        let Ok(endpoint) = self.docker_endpoint(&docker_endpoint) else { return };
        let update = pb::UpdateEndpointRequest {
            target: Some(pb::update_endpoint_request::Target::EndpointId(endpoint.id.clone())),
            container_id,
            container_name: name.clone(),
            aliases,
            request_id: request_id("name", &endpoint.id),
        };
        let updated = self
            .controllers
            .send(&update, |c, r| async move { EndpointServiceClient::new(c).update_endpoint(r).await })
            .await;
        match updated.map_err(|s| s.to_string()).and_then(|e| endpoint_view(&e).map_err(|e| e.to_string())) {
            Ok(view) => self.shared().mirror.insert_endpoint(view),
            Err(e) => {
                tracing::warn!(endpoint = %short(&endpoint.id), %name, error = %e, "cannot name the endpoint")
            }
        }
    }
}

impl<D: Dataplane> Agent<D> {
    /// Settles, every resync, what Docker dropped without telling the plugin (a container
    /// removed while the agent was down, an address handed out to a dockerd that died before
    /// using it): Docker's own view of each bound network is the truth, and what has been
    /// missing from it for [`DOCKER_SWEEP_GRACE`] is released. Runs for the life of the agent
    /// when the plugin is on; while dockerd does not answer, nothing is judged.
    pub async fn docker_sweep_forever(&self) {
        let Some(api) = self.docker_api() else { return };
        let grace = DOCKER_SWEEP_GRACE.max(self.settings.resync * 2);
        let mut missing = Missing::default();
        loop {
            tokio::time::sleep(self.settings.resync).await;
            if !self.shared().mirror.synced {
                continue;
            }
            let networks: Vec<String> = self.bindings().networks.keys().cloned().collect();
            let mut view = DockerView::default();
            let mut answered = true;
            for network in networks {
                match api.network(&network).await {
                    Ok(info) => {
                        view.endpoints.extend(info.containers.into_values().map(|c| c.endpoint_id));
                        view.networks.insert(network);
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "dockerd does not answer; nothing swept");
                        answered = false;
                        break;
                    }
                }
            }
            if !answered {
                continue;
            }
            let forgotten = sweep(&self.bindings(), &view, &mut missing, Instant::now(), grace);
            for endpoint in forgotten.endpoints {
                match self.docker_forget_endpoint(&endpoint).await {
                    Ok(()) => {
                        tracing::info!(endpoint = %short(&endpoint), "released: Docker no longer has it")
                    }
                    Err(status) => {
                        tracing::warn!(endpoint = %short(&endpoint), %status, "cannot release it yet")
                    }
                }
            }
            if !forgotten.networks.is_empty() {
                let saved = self.save_bindings(|b| b.networks.retain(|d, _| !forgotten.networks.contains(d)));
                if let Err(status) = saved {
                    tracing::warn!(%status, "cannot forget Docker networks dockerd no longer has");
                }
            }
        }
    }

    /// Takes down the interface of a weft endpoint made for Docker (if Docker has not had it
    /// taken down with a Leave) and releases it.
    async fn docker_forget_endpoint(&self, endpoint: &str) -> Result<(), Status> {
        let record = self
            .shared()
            .attachments
            .entries
            .values()
            .find(|e| e.record.endpoint_id.as_deref() == Some(endpoint))
            .map(|e| e.record.clone());
        if let Some(record) = &record {
            self.drop_record(record);
        }
        self.release_endpoint(endpoint.to_string()).await?;
        self.shared().mirror.remove_endpoint(endpoint);
        self.save_bindings(|b| {
            b.endpoints.retain(|_, weft| weft != endpoint);
            b.made.remove(endpoint);
        })?;
        if record.is_some() {
            let _ = self.reconcile().await;
        }
        Ok(())
    }
}

/// How long something must have been missing from Docker's view before the plugin takes it
/// for dropped: longer than Docker takes from handing out an address to listing the
/// container that joined with it, including its 15 s of retries of a slow plugin.
const DOCKER_SWEEP_GRACE: Duration = Duration::from_secs(20);

/// How long the agent waits for dockerd to show what it just told the plugin about.
const DOCKER_PATIENCE: Duration = Duration::from_secs(10);

/// `digits` hex digits no two calls share, for things Docker asks for without naming them.
fn fresh_id(digits: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seed =
        format!("{}-{}-{}", std::process::id(), now.as_nanos(), COUNTER.fetch_add(1, Ordering::Relaxed));
    weft_pki::sha256_hex(seed.as_bytes())[..digits].to_string()
}
