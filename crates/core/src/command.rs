//! What the state machine is asked to do ([`Command`]) and what it answers ([`Response`]).
//!
//! Commands carry parsed values (CIDRs, addresses, MACs) but are validated again by
//! [`crate::State::apply`]: the log is the authority, so nothing reaches the registry unchecked.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::ipam::SubnetRequest;
use crate::model::{ClusterConfig, Endpoint, JoinToken, MacAddr, Network, Node, NodeStatus};
use crate::ports::PublishedPort;

/// One log entry's payload: a command and the time the leader proposed it. Time enters the
/// state machine only here, so every replica records the same timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Milliseconds since the Unix epoch, from the proposing leader's clock.
    pub at_ms: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster configuration (bootstrap, or a later change within limits).
    Configure(ClusterConfig),
    CreateNetwork(NetworkRequest),
    /// Removes a network by name, id or unique id prefix.
    RemoveNetwork {
        network: String,
        force: bool,
    },
    PruneNetworks(PruneFilter),
    CreateEndpoint(EndpointRequest),
    RemoveEndpoint(EndpointRef),
    RegisterNode(NodeRequest),
    /// Proposed by the leader's liveness tracker on transitions only.
    SetNodeStatus {
        name: String,
        status: NodeStatus,
    },
    /// Removes a host and releases every endpoint on it.
    RemoveNode {
        name: String,
    },
    /// Records a join token (its secret only as a SHA-256 hash).
    CreateToken(JoinToken),
    /// Makes a token unusable before it expires.
    RevokeToken {
        id: String,
    },
    /// What a host reports about programming its own endpoints: a reason for each endpoint it
    /// cannot program, `None` for one it now has. Proposed by the leader when a heartbeat
    /// differs from the registry. Endpoints that are gone or on another host are skipped.
    SetEndpointProblems {
        node: String,
        problems: Vec<(String, Option<String>)>,
    },
    /// A client's write with its request id: applied once; a retry with the same id (and the
    /// same command) answers what the first attempt did. See [`crate::requests`].
    Once {
        request_id: String,
        command: Box<Command>,
    },
    /// An attach that publishes ports (`-p`). Its own variant, after the others, so logs
    /// written before published ports existed still read: [`Command::create_endpoint`] picks.
    CreateEndpointPublishing {
        request: EndpointRequest,
        ports: Vec<PublishedPort>,
    },
    /// Gives a network another name: a runtime that learns a network's name only after asking
    /// for its addresses (Docker) creates it under a provisional one. Only while no endpoint is
    /// on it, since containers resolve names under the network's name.
    RenameNetwork {
        network: String,
        name: String,
    },
    /// Sets an endpoint's container, DNS name and aliases, for runtimes that tell them only
    /// after the address is allocated (Docker). `container_id: None` keeps the container.
    UpdateEndpoint {
        endpoint: EndpointRef,
        container_id: Option<String>,
        container_name: String,
        aliases: Vec<String>,
    },
    /// Gives an empty network other options and another `internal`: a runtime that tells a
    /// network's options only after asking for its addresses (Docker's `-o encrypted`,
    /// `--internal`) creates it with none first. Subnets, VNI, name and labels stay.
    ReshapeNetwork {
        network: String,
        internal: bool,
        options: BTreeMap<String, String>,
    },
    /// Sets the host ports an endpoint publishes (all of them; none unpublishes): a runtime
    /// that tells them only after the container's address is made (Docker's
    /// `ProgramExternalConnectivity`).
    PublishPorts {
        endpoint: EndpointRef,
        ports: Vec<PublishedPort>,
    },
    /// [`Command::ReshapeNetwork`] that may also give an IPv4-only network IPv6 (`ipv6`: the
    /// subnet asked for, or a pool subnet): Docker asks for a network's IPv6 pool after its
    /// IPv4 one. A network with IPv6 keeps it. Controllers propose this one; the older
    /// variant stays for logs that hold it (commands are appended, never changed, so every
    /// log entry decodes).
    ReshapeNetworkWithIpv6 {
        network: String,
        internal: bool,
        options: BTreeMap<String, String>,
        ipv6: Option<SubnetRequest>,
    },
}

impl Command {
    /// An attach, publishing `ports` (the host ports already chosen).
    pub fn create_endpoint(request: EndpointRequest, ports: Vec<PublishedPort>) -> Command {
        if ports.is_empty() {
            Command::CreateEndpoint(request)
        } else {
            Command::CreateEndpointPublishing { request, ports }
        }
    }

    /// `command` under `request_id`, or as it is when the client gave none.
    pub fn once(request_id: &str, command: Command) -> Command {
        if request_id.is_empty() {
            command
        } else {
            Command::Once { request_id: request_id.to_string(), command: Box::new(command) }
        }
    }
}

/// `docker network create`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    pub name: String,
    /// Only "overlay"; `None` means the default.
    pub driver: Option<String>,
    pub ipv4: SubnetRequest,
    /// `Some` enables IPv6 (with a pool subnet when the request names none).
    pub ipv6: Option<SubnetRequest>,
    pub internal: bool,
    pub attachable: bool,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// An attach, as the host's agent asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRequest {
    /// Name, id or unique id prefix.
    pub network: String,
    pub node: String,
    pub container_id: String,
    pub container_name: String,
    pub aliases: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<MacAddr>,
}

/// Which endpoint to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointRef {
    /// Full id or unique prefix.
    Id(String),
    Container {
        network: String,
        container_id: String,
    },
}

/// A host's registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRequest {
    pub name: String,
    pub underlay: IpAddr,
    pub underlay_mtu: u32,
    pub wireguard_public_key: Option<String>,
    pub wireguard_port: u16,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    /// How the host runs WireGuard, as its agent reports it (free text, for people).
    pub wireguard_backend: String,
}

/// `docker network prune --filter ...`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneFilter {
    /// All must match.
    pub labels: Vec<LabelFilter>,
    /// Only networks created strictly before this time.
    pub created_before_ms: Option<u64>,
}

impl PruneFilter {
    pub fn matches(&self, network: &Network) -> bool {
        self.created_before_ms.is_none_or(|t| network.created_ms < t)
            && self.labels.iter().all(|f| f.matches(&network.labels))
    }
}

/// One label condition, in Docker's filter syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelFilter {
    /// `key`: the label is present.
    Has(String),
    /// `key=value`.
    Equals(String, String),
    /// `!key`: the label is absent.
    Lacks(String),
    /// `key!=value`: absent or different.
    NotEquals(String, String),
}

impl LabelFilter {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelFilter::Has(k) => labels.contains_key(k),
            LabelFilter::Equals(k, v) => labels.get(k) == Some(v),
            LabelFilter::Lacks(k) => !labels.contains_key(k),
            LabelFilter::NotEquals(k, v) => labels.get(k) != Some(v),
        }
    }
}

impl FromStr for LabelFilter {
    type Err = Error;

    fn from_str(s: &str) -> Result<LabelFilter> {
        let filter = if let Some(key) = s.strip_prefix('!') {
            LabelFilter::Lacks(key.to_string())
        } else if let Some((k, v)) = s.split_once("!=") {
            LabelFilter::NotEquals(k.to_string(), v.to_string())
        } else if let Some((k, v)) = s.split_once('=') {
            LabelFilter::Equals(k.to_string(), v.to_string())
        } else {
            LabelFilter::Has(s.to_string())
        };
        let key = match &filter {
            LabelFilter::Has(k)
            | LabelFilter::Lacks(k)
            | LabelFilter::Equals(k, _)
            | LabelFilter::NotEquals(k, _) => k,
        };
        if key.is_empty() || key.contains('=') {
            return Err(Error::invalid("label filter", s, "expected key, key=value, key!=value or !key"));
        }
        Ok(filter)
    }
}

/// What a successful command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Configured(ClusterConfig),
    Network(Network),
    NetworkRemoved {
        network: Network,
        endpoints: Vec<Arc<Endpoint>>,
    },
    Pruned(Vec<Network>),
    Endpoint(Arc<Endpoint>),
    EndpointRemoved(Arc<Endpoint>),
    Node(Node),
    NodeRemoved {
        node: Node,
        endpoints: Vec<Arc<Endpoint>>,
    },
    Token(JoinToken),
    /// The endpoints whose problem changed.
    EndpointsUpdated(Vec<Arc<Endpoint>>),
}

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The registry revision after the command: unchanged when it changed nothing (an identical
    /// re-registration, a status that was already so, a prune that found nothing).
    pub revision: u64,
    pub response: Response,
    /// The changes, in order, all stamped with `revision`.
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_parse_docker_syntax() {
        let labels: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
        let cases = [
            ("env", true),
            ("env=prod", true),
            ("env=dev", false),
            ("env!=dev", true),
            ("env!=prod", false),
            ("!env", false),
            ("!team", true),
            ("team", false),
        ];
        for (text, expect) in cases {
            let f: LabelFilter = text.parse().unwrap();
            assert_eq!(f.matches(&labels), expect, "{text}");
        }
        for bad in ["", "!", "=x", "!=x"] {
            assert!(bad.parse::<LabelFilter>().is_err(), "{bad:?}");
        }
    }
}
