//! Conversions between `pb` messages and `weft-core` types, and the one mapping from core
//! errors to gRPC statuses.
//!
//! Requests are parsed here (strings to CIDRs, addresses, MACs) with errors that name the field;
//! the core then checks their meaning. Responses are built here from core records.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use weft_core::cidr::check_unicast_address;
use weft_core::{
    AddressPool, Cidr, ClusterConfig, Command, Endpoint, EndpointRef, EndpointRequest, Error, ErrorKind,
    Event, EventKind, Family, LabelFilter, MacAddr, Network, NetworkRequest, Node, NodeRequest, NodeStatus,
    PortProtocol, PruneFilter, PublishedPort, State, SubnetConfig, SubnetRequest, error::Subject,
};

use crate::pb;

// === errors ===

/// Longest message a status carries. gRPC sends it in a header (percent-encoded, so up to three
/// bytes a character) and clients refuse headers past 8 KiB; values inside are quoted short
/// already (`weft_core::error::quoted`), this bounds the sentence around them.
pub const MAX_STATUS_MESSAGE_CHARS: usize = 1024;

/// `message` cut to [`MAX_STATUS_MESSAGE_CHARS`] characters.
pub fn bounded_message(message: &str) -> String {
    if message.chars().count() <= MAX_STATUS_MESSAGE_CHARS {
        return message.to_string();
    }
    let head: String = message.chars().take(MAX_STATUS_MESSAGE_CHARS - 1).collect();
    format!("{head}…")
}

/// The `google.rpc` type a record kind is reported as in `ResourceInfo.resource_type`.
fn resource_type(kind: &str) -> String {
    match kind {
        "network" => "weft.v1.Network".into(),
        "endpoint" => "weft.v1.Endpoint".into(),
        "node" => "weft.v1.Node".into(),
        "token" => "weft.v1.Token".into(),
        other => other.to_string(),
    }
}

/// The gRPC status for a refused command: the code says what kind of problem it is, the message
/// is the core's (which names the value and the rule), and `google.rpc` details say what the
/// refusal is about for programs: `BadRequest` naming the field, `ResourceInfo` naming the
/// record that exists or is missing, `PreconditionFailure` naming what stands in the way.
pub fn status(err: &Error) -> Status {
    let code = match err.kind() {
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Conflict => Code::FailedPrecondition,
        ErrorKind::Exhausted => Code::ResourceExhausted,
    };
    let message = bounded_message(err.message());
    let details = match err.subject() {
        Some(Subject::Field(field)) => ErrorDetails::with_bad_request_violation(field, &message),
        Some(Subject::Record { kind, name }) => {
            ErrorDetails::with_resource_info(resource_type(kind), bounded_message(name), "", &message)
        }
        Some(Subject::Precondition { kind, subject }) => {
            ErrorDetails::with_precondition_failure_violation(kind, bounded_message(subject), &message)
        }
        None if code == Code::InvalidArgument => ErrorDetails::with_bad_request_violation("", &message),
        None => return Status::new(code, message),
    };
    Status::with_error_details(code, message, details)
}

// === time ===

pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds since the epoch; times before it are clamped to 0.
pub fn millis(ts: &prost_types::Timestamp) -> u64 {
    let seconds = u64::try_from(ts.seconds).unwrap_or(0);
    let nanos = u64::try_from(ts.nanos).unwrap_or(0);
    seconds.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

// === parsing helpers ===

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, Error> {
    text.parse().map_err(|_| Error::invalid(field, text, "expected an IPv4 or IPv6 address"))
}

fn optional<T>(text: &str, parse: impl FnOnce(&str) -> Result<T, Error>) -> Result<Option<T>, Error> {
    if text.is_empty() { Ok(None) } else { parse(text).map(Some) }
}

// === networks ===

/// A block a request names, refused when it reaches into a special-purpose range. Checked
/// here, before anything is proposed, so the state machine applies logged commands the same
/// way whichever build wrote them.
fn unicast_block(field: &str, what: &str, text: &str) -> Result<Cidr, Error> {
    let block = Cidr::from_str(text).map_err(|e| e.about_field(field))?;
    block.check_unicast(what).map_err(|e| e.about_field(field))?;
    Ok(block)
}

fn unicast_ip(field: &str, what: &str, text: &str) -> Result<IpAddr, Error> {
    let addr = parse_ip(what, text).map_err(|e| e.about_field(field))?;
    check_unicast_address(what, addr).map_err(|e| e.about_field(field))?;
    Ok(addr)
}

fn subnet_request(entry: &pb::IpamConfig, index: usize) -> Result<(Option<Family>, SubnetRequest), Error> {
    let field = |name: &str| format!("ipam_config[{index}].{name}");
    let subnet = optional(&entry.subnet, |t| unicast_block(&field("subnet"), "subnet", t))?;
    let ip_range = optional(&entry.ip_range, |t| unicast_block(&field("ip_range"), "ip range", t))?;
    let gateway = optional(&entry.gateway, |t| unicast_ip(&field("gateway"), "gateway", t))?;
    let aux_addresses = entry
        .auxiliary_addresses
        .iter()
        .map(|(name, addr)| {
            let what = format!("auxiliary address {}", weft_core::error::quoted(name));
            Ok((name.clone(), unicast_ip(&field("auxiliary_addresses"), &what, addr)?))
        })
        .collect::<Result<BTreeMap<_, _>, Error>>()?;
    let family = subnet
        .map(|s| s.family())
        .or_else(|| ip_range.map(|r| r.family()))
        .or_else(|| gateway.map(Family::of))
        .or_else(|| aux_addresses.values().next().copied().map(Family::of));
    Ok((family, SubnetRequest { subnet, ip_range, gateway, aux_addresses }))
}

/// `CreateNetworkRequest` to the core's request: at most one IPAM entry per family; IPv6 only
/// with `enable_ipv6` (an IPv6 entry without it is refused, not taken as a wish).
pub fn network_request(req: &pb::CreateNetworkRequest) -> Result<NetworkRequest, Error> {
    let mut ipv4: Option<SubnetRequest> = None;
    let mut ipv6: Option<SubnetRequest> = None;
    for (index, entry) in req.ipam_config.iter().enumerate() {
        let (family, parsed) = subnet_request(entry, index)?;
        let slot = match family {
            Some(Family::V6) => &mut ipv6,
            // An entry naming nothing asks for a pool subnet, like an absent one.
            Some(Family::V4) | None => &mut ipv4,
        };
        if slot.is_some() {
            return Err(Error::bad_request(format!(
                "network {}: at most one IPv4 and one IPv6 IPAM config are allowed",
                weft_core::error::quoted(&req.name)
            )));
        }
        *slot = Some(parsed);
    }
    if ipv6.is_some() && !req.enable_ipv6 {
        return Err(Error::bad_request(format!(
            "network {}: an IPv6 ipam_config entry needs enable_ipv6 (docker network create --ipv6)",
            weft_core::error::quoted(&req.name)
        ))
        .about_field("enable_ipv6"));
    }
    if req.enable_ipv6 && ipv6.is_none() {
        ipv6 = Some(SubnetRequest::default());
    }
    Ok(NetworkRequest {
        name: req.name.clone(),
        driver: (!req.driver.is_empty()).then(|| req.driver.clone()),
        ipv4: ipv4.unwrap_or_default(),
        ipv6,
        internal: req.internal,
        attachable: req.attachable,
        options: req.options.clone(),
        labels: req.labels.clone(),
    })
}

/// `ReshapeNetworkRequest` to its command; an `ipv6` entry must be an IPv6 one (or name
/// nothing, for a pool subnet).
pub fn network_reshape(req: &pb::ReshapeNetworkRequest) -> Result<Command, Error> {
    let ipv6 = match &req.ipv6 {
        None => None,
        Some(entry) => match subnet_request(entry, 0)? {
            (Some(Family::V6) | None, parsed) => Some(parsed),
            (Some(Family::V4), _) => {
                return Err(Error::invalid("ipv6.subnet", &entry.subnet, "it is not an IPv6 subnet"));
            }
        },
    };
    Ok(Command::ReshapeNetworkWithIpv6 {
        network: req.network.clone(),
        internal: req.internal,
        options: req.options.clone().into_iter().collect(),
        ipv6,
    })
}

fn ipam_config(config: &SubnetConfig) -> pb::IpamConfig {
    pb::IpamConfig {
        subnet: config.subnet.to_string(),
        ip_range: config.ip_range.map(|r| r.to_string()).unwrap_or_default(),
        gateway: config.gateway.to_string(),
        auxiliary_addresses: config.aux_addresses.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
    }
}

pub fn network(net: &Network, endpoint_count: usize) -> pb::Network {
    pb::Network {
        id: net.id.to_string(),
        name: net.name.clone(),
        created: Some(timestamp(net.created_ms)),
        scope: "global".into(),
        driver: Network::DRIVER.into(),
        enable_ipv6: net.ipv6.is_some(),
        ipam_config: std::iter::once(&net.ipv4).chain(net.ipv6.as_ref()).map(ipam_config).collect(),
        ipam_driver: "default".into(),
        internal: net.internal,
        attachable: net.attachable,
        options: net.options.clone(),
        labels: net.labels.clone(),
        vni: net.vni,
        mtu: net.settings.mtu.unwrap_or(0),
        encrypted: net.settings.encrypted,
        endpoint_count: u32::try_from(endpoint_count).unwrap_or(u32::MAX),
        created_revision: net.created_revision,
    }
}

/// `ListNetworksRequest` filters, Docker's semantics: OR within one kind, AND across kinds.
#[derive(Debug, Clone, Default)]
pub struct NetworkFilter {
    names: Vec<String>,
    ids: Vec<String>,
    drivers: Vec<String>,
    labels: Vec<LabelFilter>,
}

impl NetworkFilter {
    pub fn from_pb(req: &pb::ListNetworksRequest) -> Result<NetworkFilter, Error> {
        Ok(NetworkFilter {
            names: req.names.clone(),
            ids: req.ids.iter().map(|i| i.to_ascii_lowercase()).collect(),
            drivers: req.drivers.clone(),
            labels: req.labels.iter().map(|l| l.parse()).collect::<Result<_, _>>()?,
        })
    }

    pub fn matches(&self, net: &Network) -> bool {
        let id = net.id.to_string();
        (self.names.is_empty() || self.names.iter().any(|n| net.name.contains(n.as_str())))
            && (self.ids.is_empty() || self.ids.iter().any(|p| id.starts_with(p.as_str())))
            && (self.drivers.is_empty() || self.drivers.iter().any(|d| d == Network::DRIVER))
            && self.labels.iter().all(|l| l.matches(&net.labels))
    }
}

pub fn prune_filter(req: &pb::PruneNetworksRequest) -> Result<PruneFilter, Error> {
    Ok(PruneFilter {
        labels: req.labels.iter().map(|l| l.parse()).collect::<Result<_, _>>()?,
        created_before_ms: req.created_before.as_ref().map(millis),
    })
}

// === endpoints ===

/// A static address of the family `A` (`--ip`, `--ip6`), refused when malformed, of the other
/// family, or special-purpose.
fn static_address<A: FromStr + Into<IpAddr> + Copy>(
    field: &str,
    what: &str,
    example: &str,
    text: &str,
) -> Result<A, Error> {
    let addr: A = text.parse().map_err(|_| {
        Error::invalid(what, text, format_args!("expected an {what} like {example}")).about_field(field)
    })?;
    check_unicast_address(what, addr.into()).map_err(|e| e.about_field(field))?;
    Ok(addr)
}

pub fn endpoint_request(req: &pb::CreateEndpointRequest) -> Result<EndpointRequest, Error> {
    let ipv4 =
        optional(&req.ipv4_address, |t| static_address("ipv4_address", "IPv4 address", "10.0.1.5", t))?;
    let ipv6 =
        optional(&req.ipv6_address, |t| static_address("ipv6_address", "IPv6 address", "fd00:1::5", t))?;
    Ok(EndpointRequest {
        network: req.network.clone(),
        node: req.node.clone(),
        container_id: req.container_id.clone(),
        container_name: req.container_name.clone(),
        aliases: req.aliases.clone(),
        ipv4,
        ipv6,
        mac: optional(&req.mac_address, MacAddr::from_str)?,
    })
}

/// The ports an endpoint asks to publish, each one checked on its own (clashes between them
/// and with other containers are the state machine's to find).
pub fn published_ports(ports: &[pb::PublishedPort]) -> Result<Vec<PublishedPort>, Error> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = |name: &str| format!("ports[{i}].{name}");
            let port = |name: &str, value: u32| {
                u16::try_from(value).ok().filter(|p| *p != 0).ok_or_else(|| {
                    Error::invalid(&name.replace('_', " "), value, "ports run from 1 to 65535")
                        .about_field(&field(name))
                })
            };
            let host_ip = optional(&p.host_ip, |t| {
                t.parse::<IpAddr>().map_err(|_| {
                    Error::invalid("host address", t, "expected an IP address like 192.0.2.10 or ::1")
                        .about_field(&field("host_ip"))
                })
            })?;
            Ok(PublishedPort {
                protocol: p
                    .protocol
                    .parse::<PortProtocol>()
                    .map_err(|e| e.about_field(&field("protocol")))?,
                host_ip,
                host_port: port("host_port", p.host_port)?,
                container_port: port("container_port", p.container_port)?,
            })
        })
        .collect()
}

pub fn published_port(port: &PublishedPort) -> pb::PublishedPort {
    pb::PublishedPort {
        protocol: port.protocol.to_string(),
        host_ip: port.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        host_port: port.host_port.into(),
        container_port: port.container_port.into(),
    }
}

pub fn endpoint_ref(req: &pb::RemoveEndpointRequest) -> Result<EndpointRef, Error> {
    match &req.target {
        Some(pb::remove_endpoint_request::Target::EndpointId(id)) => Ok(EndpointRef::Id(id.clone())),
        Some(pb::remove_endpoint_request::Target::Container(c)) => {
            Ok(EndpointRef::Container { network: c.network.clone(), container_id: c.container_id.clone() })
        }
        None => Err(Error::bad_request(
            "say which endpoint to remove: an endpoint id or a network and container id",
        )),
    }
}

pub fn endpoint_update(req: &pb::UpdateEndpointRequest) -> Result<Command, Error> {
    let endpoint = match &req.target {
        Some(pb::update_endpoint_request::Target::EndpointId(id)) => EndpointRef::Id(id.clone()),
        Some(pb::update_endpoint_request::Target::Container(c)) => {
            EndpointRef::Container { network: c.network.clone(), container_id: c.container_id.clone() }
        }
        None => {
            return Err(Error::bad_request(
                "say which endpoint to update: an endpoint id or a network and container id",
            ));
        }
    };
    Ok(Command::UpdateEndpoint {
        endpoint,
        container_id: (!req.container_id.is_empty()).then(|| req.container_id.clone()),
        container_name: req.container_name.clone(),
        aliases: req.aliases.clone(),
    })
}

pub fn endpoint(ep: &Endpoint, network: &Network) -> pb::Endpoint {
    let prefix = |family| network.subnet(family).map_or(0, |s| s.subnet.prefix());
    pb::Endpoint {
        id: ep.id.to_string(),
        network_id: network.id.to_string(),
        network_name: network.name.clone(),
        node: ep.node.clone(),
        container_id: ep.container_id.clone(),
        container_name: ep.container_name.clone(),
        aliases: ep.aliases.clone(),
        mac_address: ep.mac.to_string(),
        ipv4_address: format!("{}/{}", ep.ipv4, prefix(Family::V4)),
        ipv6_address: ep.ipv6.map(|a| format!("{a}/{}", prefix(Family::V6))).unwrap_or_default(),
        created: Some(timestamp(ep.created_ms)),
        created_revision: ep.created_revision,
        problem: ep.problem.clone().unwrap_or_default(),
        ports: ep.ports.iter().map(published_port).collect(),
        modified_revision: ep.modified_revision,
    }
}

// === nodes ===

pub fn node_request(req: &pb::RegisterNodeRequest) -> Result<NodeRequest, Error> {
    let port = u16::try_from(req.wireguard_port)
        .map_err(|_| Error::invalid("WireGuard port", req.wireguard_port, "a UDP port is 1 to 65535"))?;
    Ok(NodeRequest {
        name: req.name.clone(),
        underlay: parse_ip("underlay address", &req.underlay_address)?,
        underlay_mtu: req.underlay_mtu,
        wireguard_public_key: (!req.wireguard_public_key.is_empty())
            .then(|| req.wireguard_public_key.clone()),
        wireguard_port: port,
        labels: req.labels.clone(),
        agent_version: req.agent_version.clone(),
        wireguard_backend: req.wireguard_backend.clone(),
    })
}

pub fn node_status(status: NodeStatus) -> pb::NodeStatus {
    match status {
        NodeStatus::Up => pb::NodeStatus::Up,
        NodeStatus::Down => pb::NodeStatus::Down,
    }
}

/// `applied_revision` is what the agent last reported; the registry itself does not hold it.
pub fn node(n: &Node, endpoint_count: usize, applied_revision: u64) -> pb::Node {
    pb::Node {
        name: n.name.clone(),
        id: n.id.to_string(),
        underlay_address: n.underlay.to_string(),
        underlay_mtu: n.underlay_mtu,
        wireguard_public_key: n.wireguard_public_key.clone().unwrap_or_default(),
        wireguard_port: u32::from(n.wireguard_port),
        tunnel_address: n.tunnel_address.to_string(),
        status: node_status(n.status).into(),
        labels: n.labels.clone(),
        registered: Some(timestamp(n.registered_ms)),
        status_changed: Some(timestamp(n.status_changed_ms)),
        agent_version: n.agent_version.clone(),
        applied_revision,
        endpoint_count: u32::try_from(endpoint_count).unwrap_or(u32::MAX),
        wireguard_backend: n.wireguard_backend.clone(),
    }
}

// === cluster configuration ===

pub fn cluster_config(c: &ClusterConfig) -> pb::ClusterConfig {
    let pools = |pools: &[AddressPool]| {
        pools.iter().map(|p| pb::AddressPool { base: p.base.to_string(), size: u32::from(p.size) }).collect()
    };
    pb::ClusterConfig {
        cluster_id: c.cluster_id.clone(),
        ipv4_pools: pools(&c.ipv4_pools),
        ipv6_pools: pools(&c.ipv6_pools),
        vni_min: c.vni_min,
        vni_max: c.vni_max,
        vxlan_port: u32::from(c.vxlan_port),
        tunnel_pool: c.tunnel_pool.to_string(),
        encrypt_by_default: c.encrypt_by_default,
    }
}

pub fn cluster_config_from_pb(c: &pb::ClusterConfig) -> Result<ClusterConfig, Error> {
    let pools = |pools: &[pb::AddressPool]| {
        pools
            .iter()
            .map(|p| {
                let size = u8::try_from(p.size).map_err(|_| {
                    Error::invalid("address pool size", p.size, "a prefix length is 0 to 128")
                })?;
                let base: Cidr = p.base.parse()?;
                base.check_unicast("address pool")?;
                AddressPool::new(base, size)
            })
            .collect::<Result<Vec<_>, Error>>()
    };
    let config = ClusterConfig {
        cluster_id: c.cluster_id.clone(),
        ipv4_pools: pools(&c.ipv4_pools)?,
        ipv6_pools: pools(&c.ipv6_pools)?,
        vni_min: c.vni_min,
        vni_max: c.vni_max,
        vxlan_port: u16::try_from(c.vxlan_port)
            .map_err(|_| Error::invalid("VXLAN port", c.vxlan_port, "a UDP port is 1 to 65535"))?,
        tunnel_pool: {
            let pool: Cidr = c.tunnel_pool.parse()?;
            pool.check_unicast("tunnel pool")?;
            pool
        },
        encrypt_by_default: c.encrypt_by_default,
    };
    config.validate()?;
    Ok(config)
}

// === events and full state ===

/// Converts a batch of events as [`State::apply`] produced them. `state` is the registry
/// *after* the batch: an endpoint removed together with its network (a forced removal) takes
/// its network from the batch itself.
pub fn events(batch: &[Event], state: &State) -> Vec<pb::Event> {
    let removed_here: BTreeMap<_, &Network> = batch
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::NetworkRemoved(n) => Some((n.id, n)),
            _ => None,
        })
        .collect();
    let network_of =
        |ep: &Endpoint| state.network(&ep.network).or_else(|| removed_here.get(&ep.network).copied());
    let node_of = |n: &Node| node(n, state.node_endpoints(&n.name).count(), 0);
    batch
        .iter()
        .filter_map(|event| {
            use pb::event::Kind;
            let kind = match &event.kind {
                EventKind::Configured(c) => Kind::ClusterConfigured(cluster_config(c)),
                EventKind::NetworkCreated(n) => Kind::NetworkCreated(network(n, state.endpoint_count(&n.id))),
                EventKind::NetworkRemoved(n) => Kind::NetworkRemoved(network(n, 0)),
                EventKind::NetworkUpdated(n) => Kind::NetworkUpdated(network(n, state.endpoint_count(&n.id))),
                EventKind::EndpointCreated(e) => Kind::EndpointCreated(endpoint(e, network_of(e)?)),
                EventKind::EndpointRemoved(e) => Kind::EndpointRemoved(endpoint(e, network_of(e)?)),
                EventKind::EndpointUpdated(e) => Kind::EndpointUpdated(endpoint(e, network_of(e)?)),
                EventKind::NodeRegistered(n) => Kind::NodeRegistered(node_of(n)),
                EventKind::NodeStatusChanged(n) => Kind::NodeStatusChanged(node_of(n)),
                EventKind::NodeRemoved(n) => Kind::NodeRemoved(node(n, 0, 0)),
            };
            Some(pb::Event { revision: event.revision, kind: Some(kind) })
        })
        .collect()
}

/// The registry's revision, configuration, networks and nodes: what every watcher gets,
/// whichever endpoints it is sent.
pub fn full_state_without_endpoints(state: &State) -> pb::FullState {
    pb::FullState {
        revision: state.revision(),
        config: Some(cluster_config(state.config())),
        networks: state.networks().map(|n| network(n, state.endpoint_count(&n.id))).collect(),
        endpoints: Vec::new(),
        nodes: state.nodes().map(|n| node(n, state.node_endpoints(&n.name).count(), 0)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use weft_core::{Command, Proposal, Response};

    use super::*;

    fn apply(state: &mut State, command: Command) -> weft_core::Applied {
        state.apply(&Proposal { at_ms: 1_700_000_000_123, command }).unwrap()
    }

    fn create_request(name: &str) -> pb::CreateNetworkRequest {
        pb::CreateNetworkRequest { name: name.into(), ..Default::default() }
    }

    #[test]
    fn errors_map_to_grpc_codes_keeping_the_message() {
        let cases = [
            (Error::bad_request("bad"), Code::InvalidArgument),
            (Error::new(ErrorKind::AlreadyExists, "dup"), Code::AlreadyExists),
            (Error::new(ErrorKind::NotFound, "gone"), Code::NotFound),
            (Error::new(ErrorKind::Conflict, "busy"), Code::FailedPrecondition),
            (Error::exhausted("full"), Code::ResourceExhausted),
        ];
        for (err, code) in cases {
            let s = status(&err);
            assert_eq!(s.code(), code);
            assert_eq!(s.message(), err.message());
        }
    }

    #[test]
    fn refusals_carry_google_rpc_details_and_stay_small() {
        let invalid = status(&Error::invalid("container name", "x".repeat(10_000), "too long"));
        assert!(invalid.message().len() < 200, "{}", invalid.message());
        let details = invalid.get_error_details();
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "container_name");

        let taken =
            status(&Error::already_exists("network", "blue", "a network named \"blue\" already exists"));
        let info = taken.get_error_details().resource_info().cloned().expect("ResourceInfo");
        assert_eq!((info.resource_type.as_str(), info.resource_name.as_str()), ("weft.v1.Network", "blue"));

        let busy = status(&Error::conflict("NETWORK_IN_USE", "blue", "network \"blue\" has endpoints"));
        let failure = busy.get_error_details().precondition_failure().cloned().expect("PreconditionFailure");
        assert_eq!(failure.violations[0].r#type, "NETWORK_IN_USE");
        assert_eq!(failure.violations[0].subject, "blue");

        let long = "y".repeat(5_000);
        assert_eq!(bounded_message(&long).chars().count(), MAX_STATUS_MESSAGE_CHARS);
    }

    #[test]
    fn create_requests_parse_ipam_entries_by_family() {
        let req = pb::CreateNetworkRequest {
            ipam_config: vec![
                pb::IpamConfig { subnet: "fd00:1::/64".into(), ..Default::default() },
                pb::IpamConfig {
                    subnet: "10.1.0.0/16".into(),
                    ip_range: "10.1.5.0/24".into(),
                    gateway: "10.1.0.254".into(),
                    auxiliary_addresses: [("host".to_string(), "10.1.0.2".to_string())].into(),
                },
            ],
            enable_ipv6: true,
            ..create_request("n")
        };
        let parsed = network_request(&req).unwrap();
        assert_eq!(parsed.ipv4.subnet.unwrap().to_string(), "10.1.0.0/16");
        assert_eq!(parsed.ipv4.ip_range.unwrap().to_string(), "10.1.5.0/24");
        assert_eq!(parsed.ipv4.gateway.unwrap().to_string(), "10.1.0.254");
        assert_eq!(parsed.ipv6.unwrap().subnet.unwrap().to_string(), "fd00:1::/64");
        assert!(
            network_request(&pb::CreateNetworkRequest { enable_ipv6: true, ..create_request("n") })
                .unwrap()
                .ipv6
                .is_some()
        );
        // An IPv6 subnet alone is not taken as a wish for IPv6.
        let implicit = pb::CreateNetworkRequest { enable_ipv6: false, ..req };
        let err = network_request(&implicit).unwrap_err();
        assert!(err.message().contains("needs enable_ipv6"), "{err}");
        assert_eq!(err.subject(), Some(&weft_core::error::Subject::Field("enable_ipv6".into())));
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let entry = |subnet: &str, gateway: &str| pb::CreateNetworkRequest {
            ipam_config: vec![pb::IpamConfig {
                subnet: subnet.into(),
                gateway: gateway.into(),
                ..Default::default()
            }],
            ..create_request("n")
        };
        let cases = [
            (entry("10.0.0.0/33", ""), "invalid CIDR \"10.0.0.0/33\""),
            (entry("10.0.0.0/24", "10.0.0"), "invalid gateway \"10.0.0\""),
            (
                pb::CreateNetworkRequest {
                    ipam_config: vec![
                        pb::IpamConfig { subnet: "10.0.0.0/24".into(), ..Default::default() },
                        pb::IpamConfig { subnet: "10.1.0.0/24".into(), ..Default::default() },
                    ],
                    ..create_request("n")
                },
                "at most one IPv4 and one IPv6",
            ),
        ];
        for (req, expect) in cases {
            let err = network_request(&req).unwrap_err();
            assert!(err.message().contains(expect), "{err}");
        }
        let bad_ep = pb::CreateEndpointRequest { mac_address: "zz".into(), ..Default::default() };
        assert!(endpoint_request(&bad_ep).unwrap_err().message().contains("invalid MAC address \"zz\""));
        let bad_ep = pb::CreateEndpointRequest { ipv4_address: "fd00::1".into(), ..Default::default() };
        assert!(endpoint_request(&bad_ep).unwrap_err().message().contains("invalid IPv4 address"));
        let bad_node = pb::RegisterNodeRequest { underlay_address: "host".into(), ..Default::default() };
        assert!(node_request(&bad_node).unwrap_err().message().contains("invalid underlay address \"host\""));
        assert!(endpoint_ref(&pb::RemoveEndpointRequest { target: None, ..Default::default() }).is_err());
    }

    #[test]
    fn records_look_like_docker_inspect() {
        let mut state = State::default();
        apply(
            &mut state,
            Command::RegisterNode(
                node_request(&pb::RegisterNodeRequest {
                    name: "h1".into(),
                    underlay_address: "192.0.2.1".into(),
                    underlay_mtu: 1500,
                    ..Default::default()
                })
                .unwrap(),
            ),
        );
        let req = network_request(&pb::CreateNetworkRequest { enable_ipv6: true, ..create_request("blue") })
            .unwrap();
        let Response::Network(net) = apply(&mut state, Command::CreateNetwork(req)).response else {
            panic!()
        };
        let ep_req = endpoint_request(&pb::CreateEndpointRequest {
            network: "blue".into(),
            node: "h1".into(),
            container_id: "c1".into(),
            container_name: "web".into(),
            ..Default::default()
        })
        .unwrap();
        let Response::Endpoint(ep) = apply(&mut state, Command::CreateEndpoint(ep_req)).response else {
            panic!()
        };

        let pb_net = network(&net, 1);
        assert_eq!(pb_net.scope, "global");
        assert_eq!(pb_net.driver, "overlay");
        assert_eq!(pb_net.ipam_config[0].subnet, "10.0.0.0/24");
        assert_eq!(pb_net.ipam_config[0].gateway, "10.0.0.1");
        assert_eq!(pb_net.ipam_config[1].subnet, "fd77:6566:7400::/64");
        assert_eq!(pb_net.created.unwrap().seconds, 1_700_000_000);
        assert_eq!(pb_net.id.len(), 64);
        let pb_ep = endpoint(&ep, &net);
        assert_eq!(pb_ep.ipv4_address, "10.0.0.2/24");
        assert_eq!(pb_ep.ipv6_address, "fd77:6566:7400::2/64");
        assert_eq!(pb_ep.mac_address, "02:42:0a:00:00:02");
        assert_eq!(pb_ep.network_name, "blue");

        let common = full_state_without_endpoints(&state);
        assert_eq!((common.networks.len(), common.endpoints.len(), common.nodes.len()), (1, 0, 1));
        assert_eq!(common.networks[0].endpoint_count, 1);
        assert_eq!(common.nodes[0].endpoint_count, 1);
        assert_eq!(common.revision, state.revision());
    }

    #[test]
    fn forced_removal_events_keep_their_network_name() {
        let mut state = State::default();
        let reg = pb::RegisterNodeRequest {
            name: "h1".into(),
            underlay_address: "192.0.2.1".into(),
            underlay_mtu: 1500,
            ..Default::default()
        };
        apply(&mut state, Command::RegisterNode(node_request(&reg).unwrap()));
        apply(&mut state, Command::CreateNetwork(network_request(&create_request("blue")).unwrap()));
        let ep = pb::CreateEndpointRequest {
            network: "blue".into(),
            node: "h1".into(),
            container_id: "c1".into(),
            container_name: "c1".into(),
            ..Default::default()
        };
        apply(&mut state, Command::CreateEndpoint(endpoint_request(&ep).unwrap()));
        let removed = apply(&mut state, Command::RemoveNetwork { network: "blue".into(), force: true });
        let converted = events(&removed.events, &state);
        assert_eq!(converted.len(), 2);
        match &converted[0].kind {
            Some(pb::event::Kind::EndpointRemoved(e)) => assert_eq!(e.network_name, "blue"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(converted[1].kind, Some(pb::event::Kind::NetworkRemoved(_))));
    }

    #[test]
    fn cluster_config_round_trips_and_is_validated() {
        let config = ClusterConfig { cluster_id: "c".into(), ..ClusterConfig::default() };
        assert_eq!(cluster_config_from_pb(&cluster_config(&config)).unwrap(), config);
        let mut bad = cluster_config(&config);
        bad.vxlan_port = 70000;
        assert!(cluster_config_from_pb(&bad).unwrap_err().message().contains("VXLAN port"));
        bad = cluster_config(&config);
        bad.ipv4_pools[0].size = 4;
        assert!(cluster_config_from_pb(&bad).is_err());
    }

    #[test]
    fn list_filters_follow_docker() {
        let mut state = State::default();
        let labelled = pb::CreateNetworkRequest {
            labels: [("env".to_string(), "prod".to_string())].into(),
            ..create_request("frontend")
        };
        apply(&mut state, Command::CreateNetwork(network_request(&labelled).unwrap()));
        apply(&mut state, Command::CreateNetwork(network_request(&create_request("backend")).unwrap()));
        let names = |req: pb::ListNetworksRequest| -> Vec<String> {
            let f = NetworkFilter::from_pb(&req).unwrap();
            state.networks().filter(|n| f.matches(n)).map(|n| n.name.clone()).collect()
        };
        let mut all = names(pb::ListNetworksRequest::default());
        all.sort();
        assert_eq!(all, ["backend", "frontend"]);
        assert_eq!(
            names(pb::ListNetworksRequest { names: vec!["front".into()], ..Default::default() }),
            ["frontend"]
        );
        assert_eq!(
            names(pb::ListNetworksRequest { labels: vec!["env=prod".into()], ..Default::default() }),
            ["frontend"]
        );
        assert!(
            names(pb::ListNetworksRequest { drivers: vec!["bridge".into()], ..Default::default() })
                .is_empty()
        );
        let id = state.resolve_network("backend").unwrap().id.to_string();
        assert_eq!(
            names(pb::ListNetworksRequest { ids: vec![id[..6].to_uppercase()], ..Default::default() }),
            ["backend"]
        );
    }
}
