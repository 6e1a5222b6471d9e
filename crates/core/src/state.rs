//! The replicated state machine: `apply(proposal) -> outcome`, deterministic and total.
//!
//! # Layout
//! - canonical data: the [`Network`], [`Endpoint`] and [`Node`] records, the
//!   [`ClusterConfig`] and the revision. Snapshots carry exactly these.
//! - derived data, rebuilt on restore: per-network address allocators and name/container/MAC
//!   indexes, the VNI and tunnel-address allocators, the index of subnets in use.
//!
//! Every command is checked completely before anything changes, so a refused command leaves
//! the state untouched, and a successful one bumps the revision once. Hash maps serve lookups
//! only; anything that orders output (listing, snapshots, events) iterates `BTreeMap`s, so two
//! replicas fed the same proposals stay byte-identical.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cidr::{Cidr, Family, to_u128};
use crate::command::{
    Applied, Command, EndpointRef, EndpointRequest, NetworkRequest, NodeRequest, Proposal, PruneFilter,
    Response,
};
use crate::error::{Error, ErrorKind, Result, quoted};
use crate::event::{Event, EventKind};
use crate::ipam::{SubnetAllocator, SubnetRequest, usable_range};
use crate::model::{ClusterConfig, Endpoint, Id, JoinToken, MacAddr, Network, Node, NodeStatus, TokenRole};
use crate::options::NetworkSettings;
use crate::ports::{self, PublishedPort};
use crate::ranges::{FreeRanges, RangeIndex};
use crate::requests::{self, RequestLog};
use crate::validate;

/// Smallest and largest underlay MTU a host may register.
pub const MIN_UNDERLAY_MTU: u32 = 576;
pub const MAX_UNDERLAY_MTU: u32 = 65535;

/// Who holds a part of the address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Network(Id),
    TunnelPool,
}

/// Endpoints are keyed by the revision that created them: ids are a bijection of that revision
/// (see [`State::new_id`]), so the key is recoverable from an id, and keying by creation order
/// makes every insert an append at the right edge of the trees instead of a random write.
type EndpointKey = u64;

/// A network with its allocators and indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NetworkEntry {
    network: Network,
    ipv4: SubnetAllocator,
    ipv6: Option<SubnetAllocator>,
    endpoints: BTreeSet<EndpointKey>,
    /// container id -> endpoint.
    containers: FxHashMap<String, EndpointKey>,
    /// lowercased container name -> endpoint: names resolve in DNS, which ignores case.
    names: FxHashMap<String, EndpointKey>,
    /// MACs given explicitly. Derived MACs (02:42 + IPv4) cannot collide with each other, and
    /// explicit MACs inside this network's derived space are refused, so only these need an index.
    explicit_macs: FxHashMap<MacAddr, EndpointKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeEntry {
    node: Node,
    endpoints: BTreeSet<EndpointKey>,
}

/// The registry. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    revision: u64,
    config: ClusterConfig,
    /// Derived from the cluster id: makes ids differ between clusters.
    id_seed: [u64; 4],
    networks: BTreeMap<Id, NetworkEntry>,
    /// lowercased name -> network.
    network_names: FxHashMap<String, Id>,
    /// Shared with the responses and events that mention them, so those cost no deep copies.
    endpoints: BTreeMap<EndpointKey, Arc<Endpoint>>,
    nodes: BTreeMap<String, NodeEntry>,
    vnis: FreeRanges,
    subnets_v4: RangeIndex<Owner>,
    subnets_v6: RangeIndex<Owner>,
    tunnel_addresses: FreeRanges,
    /// WireGuard public key -> node name.
    wireguard_keys: FxHashMap<String, String>,
    /// underlay address -> node name.
    underlays: FxHashMap<IpAddr, String>,
    /// Node name -> when it was removed (ms): credentials for that name issued before then
    /// are revoked.
    revoked_nodes: BTreeMap<String, u64>,
    /// Join tokens by id. Not part of the watched registry: creating or revoking one moves
    /// no revision and sends no event.
    tokens: BTreeMap<String, JoinToken>,
    /// Answers to client request ids, for retries.
    requests: RequestLog,
}

impl Default for State {
    fn default() -> Self {
        State::new(ClusterConfig::default()).unwrap_or_else(|e| unreachable!("default config is valid: {e}"))
    }
}

/// Snapshot header: refuses to restore bytes that are not a weft snapshot of a known version.
const SNAPSHOT_MAGIC: &[u8; 8] = b"WEFTSNAP";
/// 2: nodes carry their WireGuard backend. 3: removed nodes' revocation times. 4: join tokens.
/// 5: endpoint problems. 6: answers to client request ids, after the version 5 body (so a
/// version 5 snapshot still restores, with none). 7: endpoints' published ports (versions 5
/// and 6 still restore, their endpoints publishing nothing; a version 6 snapshot's remembered
/// answers are dropped, since they hold endpoints in the old shape: a retry of a request
/// answered before the upgrade is carried out again). 8: endpoints' modification revisions
/// (versions 5 to 7 still restore, each endpoint last modified when it was created; a version
/// 7 snapshot's remembered answers are dropped, as version 6's were).
const SNAPSHOT_VERSION: u32 = 8;

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    revision: u64,
    config: ClusterConfig,
    networks: Vec<Network>,
    nodes: Vec<Node>,
    endpoints: Vec<Arc<Endpoint>>,
    revoked_nodes: BTreeMap<String, u64>,
    tokens: BTreeMap<String, JoinToken>,
}

/// The registry as a snapshot holds it, taken by [`State::snapshot_view`] and encoded later.
pub struct SnapshotView {
    body: SnapshotBody,
    answers: Vec<Arc<requests::Remembered>>,
}

impl std::fmt::Debug for SnapshotView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotView")
            .field("revision", &self.body.revision)
            .field("networks", &self.body.networks.len())
            .field("nodes", &self.body.nodes.len())
            .field("endpoints", &self.body.endpoints.len())
            .field("answers", &self.answers.len())
            .finish_non_exhaustive()
    }
}

impl SnapshotView {
    /// The snapshot's bytes, as [`State::snapshot`] gives them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.endpoints.len() * 96);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        postcard::to_io(&self.body, &mut out)
            .unwrap_or_else(|e| unreachable!("encoding to memory cannot fail: {e}"));
        postcard::to_io(&self.answers, &mut out)
            .unwrap_or_else(|e| unreachable!("encoding to memory cannot fail: {e}"));
        out
    }
}

/// An endpoint as snapshot formats 5 and 6 wrote it: before published ports.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct EndpointV6 {
    id: Id,
    network: Id,
    node: String,
    container_id: String,
    container_name: String,
    aliases: Vec<String>,
    mac: MacAddr,
    ipv4: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
    created_ms: u64,
    created_revision: u64,
    problem: Option<String>,
}

/// An endpoint as snapshot format 7 wrote it: before modification revisions. postcard writes
/// a nested struct's fields in line, so these are format 6's fields followed by the ports.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct EndpointV7 {
    before_ports: EndpointV6,
    ports: Vec<PublishedPort>,
}

impl From<EndpointV7> for Endpoint {
    fn from(old: EndpointV7) -> Endpoint {
        let e = old.before_ports;
        Endpoint {
            id: e.id,
            network: e.network,
            node: e.node,
            container_id: e.container_id,
            container_name: e.container_name,
            aliases: e.aliases,
            mac: e.mac,
            ipv4: e.ipv4,
            ipv6: e.ipv6,
            created_ms: e.created_ms,
            created_revision: e.created_revision,
            problem: e.problem,
            ports: old.ports,
            // Nothing older recorded changes: the creation is the latest one known.
            modified_revision: e.created_revision,
        }
    }
}

impl From<EndpointV6> for Endpoint {
    fn from(before_ports: EndpointV6) -> Endpoint {
        EndpointV7 { before_ports, ports: Vec::new() }.into()
    }
}

/// A snapshot body as formats 5 to 7 wrote it, with their endpoints' shape.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct OldSnapshotBody<E> {
    revision: u64,
    config: ClusterConfig,
    networks: Vec<Network>,
    nodes: Vec<Node>,
    endpoints: Vec<E>,
    revoked_nodes: BTreeMap<String, u64>,
    tokens: BTreeMap<String, JoinToken>,
}

impl<E: Into<Endpoint>> From<OldSnapshotBody<E>> for SnapshotBody {
    fn from(old: OldSnapshotBody<E>) -> SnapshotBody {
        SnapshotBody {
            revision: old.revision,
            config: old.config,
            networks: old.networks,
            nodes: old.nodes,
            endpoints: old.endpoints.into_iter().map(|e| Arc::new(e.into())).collect(),
            revoked_nodes: old.revoked_nodes,
            tokens: old.tokens,
        }
    }
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a weft snapshot (bad header)")]
    BadHeader,
    #[error("snapshot format version {0} is not supported (this build reads version {SNAPSHOT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("snapshot is corrupt: {0}")]
    Decode(String),
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

// === impl State: construction and reads ===

impl State {
    /// An empty registry with the given configuration.
    pub fn new(config: ClusterConfig) -> Result<State> {
        config.validate()?;
        let mut state = State {
            revision: 0,
            id_seed: id_seed(&config.cluster_id),
            vnis: FreeRanges::new(config.vni_min.into(), config.vni_max.into()),
            tunnel_addresses: tunnel_free(&config.tunnel_pool),
            config,
            networks: BTreeMap::new(),
            network_names: FxHashMap::default(),
            endpoints: BTreeMap::new(),
            nodes: BTreeMap::new(),
            subnets_v4: RangeIndex::default(),
            subnets_v6: RangeIndex::default(),
            wireguard_keys: FxHashMap::default(),
            underlays: FxHashMap::default(),
            revoked_nodes: BTreeMap::new(),
            tokens: BTreeMap::new(),
            requests: RequestLog::default(),
        };
        let pool = state.config.tunnel_pool;
        state.subnets_mut(pool.family()).insert(pool.first(), pool.last(), Owner::TunnelPool);
        Ok(state)
    }

    /// The revision of the last change; 0 for an empty registry.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Networks in id order.
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values().map(|e| &e.network)
    }

    pub fn network(&self, id: &Id) -> Option<&Network> {
        self.networks.get(id).map(|e| &e.network)
    }

    /// Finds a network by name, full id or unique id prefix (in that order, like Docker).
    pub fn resolve_network(&self, key: &str) -> Result<&Network> {
        self.resolve_network_id(key).map(|id| &self.networks[&id].network)
    }

    /// Number of endpoints on a network.
    pub fn endpoint_count(&self, network: &Id) -> usize {
        self.networks.get(network).map_or(0, |e| e.endpoints.len())
    }

    /// All endpoints, oldest first.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }

    pub fn endpoint(&self, id: &Id) -> Option<&Arc<Endpoint>> {
        self.endpoint_key(id).and_then(|key| self.endpoints.get(&key))
    }

    /// Endpoints of one network, oldest first.
    pub fn network_endpoints(&self, network: &Id) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.networks.get(network).into_iter().flat_map(|e| e.endpoints.iter().map(|k| &self.endpoints[k]))
    }

    /// Endpoints on one host, oldest first.
    pub fn node_endpoints(&self, node: &str) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.nodes.get(node).into_iter().flat_map(|e| e.endpoints.iter().map(|k| &self.endpoints[k]))
    }

    /// Hosts in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(|e| &e.node)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|e| &e.node)
    }

    fn subnets(&self, family: Family) -> &RangeIndex<Owner> {
        match family {
            Family::V4 => &self.subnets_v4,
            Family::V6 => &self.subnets_v6,
        }
    }

    fn subnets_mut(&mut self, family: Family) -> &mut RangeIndex<Owner> {
        match family {
            Family::V4 => &mut self.subnets_v4,
            Family::V6 => &mut self.subnets_v6,
        }
    }

    fn resolve_network_id(&self, key: &str) -> Result<Id> {
        if key.is_empty() {
            return Err(Error::bad_request("name the network: its name, full id or a unique id prefix")
                .about_field("network"));
        }
        if let Some(id) = self.network_names.get(lowercase(key).as_ref()) {
            return Ok(*id);
        }
        resolve_id_prefix(&self.networks, key, "network")
    }

    /// The key of an endpoint id, if the id is one this cluster could have issued.
    fn endpoint_key(&self, id: &Id) -> Option<EndpointKey> {
        let word = u64::from_be_bytes(id.0[..8].try_into().ok()?);
        let revision = unmix64(word).wrapping_sub(self.id_seed[0]);
        (self.new_id(revision) == *id).then_some(revision)
    }

    /// Every join token, revoked and expired ones included.
    pub fn tokens(&self) -> impl Iterator<Item = &JoinToken> {
        self.tokens.values()
    }

    /// The role a token grants, if `id` and the secret's hash match a token that is neither
    /// revoked nor expired at `now_ms`; otherwise why not (without telling which part failed
    /// to someone guessing).
    pub fn admit(
        &self,
        id: &str,
        secret_sha256: &str,
        now_ms: u64,
    ) -> std::result::Result<TokenRole, String> {
        let refused = || "the join token is unknown, wrong, expired or revoked".to_string();
        let token = self.tokens.get(id).ok_or_else(refused)?;
        if token.revoked || now_ms >= token.expires_ms || token.secret_sha256 != secret_sha256 {
            return Err(refused());
        }
        Ok(token.role)
    }

    /// When node `name` was last removed (ms since the epoch): its credentials issued before
    /// then no longer count.
    pub fn node_revoked_at(&self, name: &str) -> Option<u64> {
        self.revoked_nodes.get(name).copied()
    }

    /// The endpoint `reference` names.
    pub fn find_endpoint(&self, reference: &EndpointRef) -> Result<&Arc<Endpoint>> {
        let key = self.resolve_endpoint(reference)?;
        self.endpoints
            .get(&key)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "the endpoint was just removed"))
    }

    /// Endpoints are named by a full id or a unique prefix of at least 12 digits (what
    /// `weft endpoint ls` prints). From 16 digits on, the first 64-bit word of the id
    /// determines the endpoint, so no search is needed; shorter prefixes cost a scan of every
    /// endpoint, rare enough (an operator removing one by hand) to be worth the convenience.
    /// People name endpoints by network and container instead, as with Docker.
    fn resolve_endpoint(&self, reference: &EndpointRef) -> Result<EndpointKey> {
        match reference {
            EndpointRef::Id(given) => {
                let prefix = given.to_ascii_lowercase();
                if prefix.len() < SHORT_ENDPOINT_PREFIX_DIGITS
                    || prefix.len() > 64
                    || !prefix.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(Error::invalid(
                        "endpoint id",
                        given,
                        format_args!(
                            "give the full id or a unique prefix of at least {SHORT_ENDPOINT_PREFIX_DIGITS} hex digits (or name the network and container)"
                        ),
                    )
                    .about_field("endpoint_id"));
                }
                let missing = || {
                    Error::not_found("endpoint", &prefix, format!("no endpoint with id {}", quoted(&prefix)))
                };
                if prefix.len() < ENDPOINT_PREFIX_DIGITS {
                    let mut found =
                        self.endpoints.iter().filter(|(_, e)| e.id.hex().starts_with(prefix.as_bytes()));
                    return match (found.next(), found.next()) {
                        (Some((key, _)), None) => Ok(*key),
                        (None, _) => Err(missing()),
                        (Some((_, a)), Some((_, b))) => Err(Error::bad_request(format!(
                            "endpoint id prefix {} is ambiguous: it matches {} and {} at least; give more digits",
                            quoted(&prefix),
                            a.id.short(),
                            b.id.short()
                        ))
                        .about_field("endpoint_id")),
                    };
                }
                let word = u64::from_str_radix(&prefix[..16], 16).unwrap_or_default();
                let revision = unmix64(word).wrapping_sub(self.id_seed[0]);
                self.endpoints
                    .get(&revision)
                    .filter(|e| e.id.hex().starts_with(prefix.as_bytes()))
                    .map(|_| revision)
                    .ok_or_else(missing)
            }
            EndpointRef::Container { network, container_id } => {
                let net = self.resolve_network_id(network)?;
                let entry = &self.networks[&net];
                entry.containers.get(container_id).copied().ok_or_else(|| {
                    Error::not_found(
                        "endpoint",
                        format_args!("{}/{container_id}", entry.network.name),
                        format!(
                            "container {} is not attached to network {:?}",
                            quoted(container_id),
                            entry.network.name
                        ),
                    )
                })
            }
        }
    }

    /// The host named `name`, or NotFound naming it.
    pub fn registered_node(&self, name: &str) -> Result<&Node> {
        self.node_entry(name).map(|entry| &entry.node)
    }

    fn node_entry(&self, name: &str) -> Result<&NodeEntry> {
        self.nodes.get(name).ok_or_else(|| {
            Error::not_found("node", name, format!("no node named {} is registered", quoted(name)))
        })
    }

    /// The id of the object created at `revision`: a bijective mix of the revision, so ids of
    /// one cluster never collide, seeded by the cluster id so clusters differ.
    fn new_id(&self, revision: u64) -> Id {
        let mut bytes = [0u8; 32];
        for (chunk, seed) in bytes.chunks_exact_mut(8).zip(self.id_seed) {
            chunk.copy_from_slice(&mix64(revision.wrapping_add(seed)).to_be_bytes());
        }
        Id(bytes)
    }
}

// === impl State: apply ===

impl State {
    /// Applies one proposal. On error nothing has changed.
    pub fn apply(&mut self, proposal: &Proposal) -> Result<Applied> {
        self.apply_command(&proposal.command, proposal.at_ms)
    }

    fn apply_command(&mut self, command: &Command, at: u64) -> Result<Applied> {
        match command {
            Command::Configure(config) => self.configure(config),
            Command::CreateNetwork(request) => self.create_network(request, at),
            Command::RemoveNetwork { network, force } => self.remove_network(network, *force),
            Command::PruneNetworks(filter) => self.prune_networks(filter),
            Command::CreateEndpoint(request) => self.create_endpoint(request, &[], at),
            Command::CreateEndpointPublishing { request, ports } => self.create_endpoint(request, ports, at),
            Command::RenameNetwork { network, name } => self.rename_network(network, name),
            Command::ReshapeNetwork { network, internal, options } => {
                self.reshape_network(network, *internal, options, None)
            }
            Command::ReshapeNetworkWithIpv6 { network, internal, options, ipv6 } => {
                self.reshape_network(network, *internal, options, ipv6.as_ref())
            }
            Command::PublishPorts { endpoint, ports } => self.publish_ports(endpoint, ports),
            Command::UpdateEndpoint { endpoint, container_id, container_name, aliases } => {
                self.update_endpoint(endpoint, container_id.as_deref(), container_name, aliases)
            }
            Command::RemoveEndpoint(reference) => self.remove_endpoint(reference),
            Command::RegisterNode(request) => self.register_node(request, at),
            Command::SetNodeStatus { name, status } => self.set_node_status(name, *status, at),
            Command::RemoveNode { name } => self.remove_node(name, at),
            Command::CreateToken(token) => self.create_token(token),
            Command::RevokeToken { id } => self.revoke_token(id),
            Command::SetEndpointProblems { node, problems } => self.set_endpoint_problems(node, problems),
            Command::Once { request_id, command } => self.apply_once(request_id, command, at),
        }
    }

    /// Applies `command` unless `request_id` was applied already: then answers what it did.
    fn apply_once(&mut self, request_id: &str, command: &Command, at: u64) -> Result<Applied> {
        requests::check_id(request_id).map_err(|e| e.about_field("request_id"))?;
        if matches!(command, Command::Once { .. }) {
            return Err(Error::bad_request("a request carries one request id, not several"));
        }
        self.requests.expire(at);
        let fingerprint = requests::fingerprint(command);
        if let Some(done) = self.requests.recall(request_id) {
            if done.fingerprint != fingerprint {
                return Err(Error::invalid(
                    "request id",
                    request_id,
                    "it was used for a different request in the last 10 minutes; give each new request a new id",
                )
                .about_field("request_id"));
            }
            return Ok(Applied {
                revision: done.revision,
                response: done.response.clone(),
                events: Vec::new(),
            });
        }
        let applied = self.apply_command(command, at)?;
        self.requests.remember(requests::Remembered {
            id: request_id.to_string(),
            at_ms: at,
            fingerprint,
            revision: applied.revision,
            response: applied.response.clone(),
        });
        Ok(applied)
    }

    fn unchanged(&self, response: Response) -> Result<Applied> {
        Ok(Applied { revision: self.revision, response, events: Vec::new() })
    }

    fn changed(&mut self, response: Response, kinds: Vec<EventKind>) -> Result<Applied> {
        let revision = self.revision;
        let events = kinds.into_iter().map(|kind| Event { revision, kind }).collect();
        Ok(Applied { revision, response, events })
    }

    /// [`State::changed`] for the common case of one event, without the intermediate vector.
    fn changed_once(&mut self, response: Response, kind: EventKind) -> Result<Applied> {
        let revision = self.revision;
        Ok(Applied { revision, response, events: vec![Event { revision, kind }] })
    }

    fn configure(&mut self, config: &ClusterConfig) -> Result<Applied> {
        config.validate()?;
        if *config == self.config {
            return self.unchanged(Response::Configured(config.clone()));
        }
        // Ids are seeded by the cluster id: it may change only while nothing holds an id.
        if config.cluster_id != self.config.cluster_id
            && (!self.networks.is_empty() || !self.nodes.is_empty())
        {
            return Err(Error::conflict(
                "CLUSTER_ID_FIXED",
                &config.cluster_id,
                format!(
                    "the cluster id is {:?} and cannot be changed to {:?} once networks or nodes exist",
                    self.config.cluster_id, config.cluster_id
                ),
            ));
        }
        let (vni_min, vni_max) = (u128::from(config.vni_min), u128::from(config.vni_max));
        if let Some(net) = self.networks().find(|n| !(vni_min..=vni_max).contains(&u128::from(n.vni))) {
            return Err(Error::conflict(
                "VNI_IN_USE",
                &net.name,
                format!(
                    "network {:?} uses VNI {}, outside the new range {}-{}",
                    net.name, net.vni, config.vni_min, config.vni_max
                ),
            ));
        }
        let pool_changes = config.tunnel_pool != self.config.tunnel_pool;
        if pool_changes {
            if let Some(node) = self.nodes.keys().next() {
                return Err(Error::conflict(
                    "TUNNEL_POOL_IN_USE",
                    node,
                    format!(
                        "the tunnel pool cannot change while nodes are registered (node {node:?} holds an address from {})",
                        self.config.tunnel_pool
                    ),
                ));
            }
            let pool = config.tunnel_pool;
            if let Some((_, _, Owner::Network(id))) =
                self.subnets(pool.family()).overlapping(pool.first(), pool.last())
            {
                let net = &self.networks[id].network;
                return Err(Error::conflict(
                    "SUBNET_OVERLAP",
                    &net.name,
                    format!(
                        "tunnel pool {pool} overlaps network {:?} ({})",
                        net.name,
                        net.subnet(pool.family()).map_or(String::new(), |s| s.subnet.to_string())
                    ),
                ));
            }
        }
        // Checked; now change.
        if pool_changes {
            let old = self.config.tunnel_pool;
            self.subnets_mut(old.family()).remove(old.first());
            let new = config.tunnel_pool;
            self.subnets_mut(new.family()).insert(new.first(), new.last(), Owner::TunnelPool);
            self.tunnel_addresses = tunnel_free(&new);
        }
        let mut vnis = FreeRanges::new(vni_min, vni_max);
        for entry in self.networks.values() {
            vnis.take(entry.network.vni.into());
        }
        self.vnis = vnis;
        self.id_seed = id_seed(&config.cluster_id);
        self.config = config.clone();
        self.revision += 1;
        self.changed(Response::Configured(config.clone()), vec![EventKind::Configured(config.clone())])
    }

    fn create_network(&mut self, request: &NetworkRequest, at: u64) -> Result<Applied> {
        validate::dns_name("network name", &request.name)?;
        if let Some(driver) = request.driver.as_deref().filter(|d| *d != Network::DRIVER) {
            return Err(Error::invalid("driver", driver, "weft networks use the \"overlay\" driver"));
        }
        validate::labels("label", &request.labels)?;
        let settings =
            NetworkSettings::parse(&request.options, self.config.encrypt_by_default, request.ipv6.is_some())
                .map_err(|e| e.about_field("options"))?;
        if let Some(id) = self.network_names.get(&request.name.to_ascii_lowercase()) {
            return Err(Error::already_exists(
                "network",
                &request.name,
                format!(
                    "a network named {:?} already exists (id {})",
                    self.networks[id].network.name,
                    id.short()
                ),
            ));
        }
        if let Some(bridge) = &settings.bridge_name
            && let Some(other) = self.networks().find(|n| n.settings.bridge_name.as_ref() == Some(bridge))
        {
            return Err(Error::already_exists(
                "bridge",
                bridge,
                format!("bridge name {bridge:?} is already used by network {:?}", other.name),
            ));
        }
        let ipv4 = self.choose_subnet(&request.name, &request.ipv4, Family::V4)?;
        let ipv6 = match &request.ipv6 {
            Some(req) => Some(self.choose_subnet(&request.name, req, Family::V6)?),
            None => None,
        };
        let vni = self.vnis.take_lowest_in(0, u128::MAX).ok_or_else(|| {
            Error::exhausted(format!(
                "all {} VNIs of the cluster's range {}-{} are in use: remove unused networks or widen the range",
                u64::from(self.config.vni_max) - u64::from(self.config.vni_min) + 1,
                self.config.vni_min,
                self.config.vni_max
            ))
        })?;
        // Checked (the VNI taken above is the last fallible step's only side effect); now change.
        let vni = u32::try_from(vni).unwrap_or_else(|_| unreachable!("VNIs are 24-bit"));
        self.revision += 1;
        let network = Network {
            id: self.new_id(self.revision),
            name: request.name.clone(),
            created_ms: at,
            created_revision: self.revision,
            ipv4,
            ipv6,
            internal: request.internal,
            attachable: request.attachable,
            options: request.options.clone(),
            labels: request.labels.clone(),
            vni,
            settings,
        };
        self.insert_network(network.clone())
            .unwrap_or_else(|e| unreachable!("a checked network inserts: {e}"));
        self.changed(Response::Network(network.clone()), vec![EventKind::NetworkCreated(network)])
    }

    /// Picks (or checks) the subnet of one family and resolves the rest of the request on it.
    fn choose_subnet(
        &self,
        network: &str,
        request: &SubnetRequest,
        family: Family,
    ) -> Result<crate::model::SubnetConfig> {
        let subnet = match request.subnet {
            Some(subnet) => {
                if subnet.family() != family {
                    return Err(Error::invalid(
                        &format!("{family} subnet"),
                        subnet,
                        format_args!("it is not an {family} subnet"),
                    ));
                }
                usable_range(&subnet)?;
                self.check_free_subnet(&subnet)?;
                subnet
            }
            None => {
                if request.ip_range.is_some()
                    || request.gateway.is_some()
                    || !request.aux_addresses.is_empty()
                {
                    return Err(Error::bad_request(format!(
                        "network {network:?}: an {family} ip range, gateway or auxiliary address needs an explicit {family} subnet"
                    )));
                }
                self.carve_subnet(family)?
            }
        };
        request.resolve(subnet)
    }

    fn check_free_subnet(&self, subnet: &Cidr) -> Result<()> {
        match self.subnets(subnet.family()).overlapping(subnet.first(), subnet.last()) {
            None => Ok(()),
            Some((_, _, Owner::TunnelPool)) => Err(Error::conflict(
                "SUBNET_OVERLAP",
                "tunnel pool",
                format!("subnet {subnet} overlaps the cluster's tunnel pool {}", self.config.tunnel_pool),
            )),
            Some((_, _, Owner::Network(id))) => {
                let other = &self.networks[id].network;
                let theirs = other.subnet(subnet.family()).map(|s| s.subnet);
                Err(Error::conflict(
                    "SUBNET_OVERLAP",
                    &other.name,
                    format!(
                        "subnet {subnet} overlaps {} of network {:?}",
                        theirs.map_or_else(String::new, |s| s.to_string()),
                        other.name
                    ),
                ))
            }
        }
    }

    fn carve_subnet(&self, family: Family) -> Result<Cidr> {
        let pools = match family {
            Family::V4 => &self.config.ipv4_pools,
            Family::V6 => &self.config.ipv6_pools,
        };
        for pool in pools {
            let block_bits = u32::from(family.bits() - pool.size);
            let found =
                self.subnets(family).lowest_free_block(pool.base.first(), pool.base.last(), block_bits);
            if let Some(start) = found {
                return Cidr::new(pool.base.addr_at(start), pool.size);
            }
        }
        let names: Vec<String> = pools.iter().map(ToString::to_string).collect();
        Err(Error::exhausted(format!(
            "no free {family} subnet is left in the address pools [{}]: give a subnet explicitly or add a pool",
            names.join(", ")
        )))
    }

    /// Adds a network and its derived data. Fails (changing nothing) only when the network
    /// conflicts with what is there, which `create_network` has ruled out; `restore` relies on
    /// the check.
    fn insert_network(&mut self, network: Network) -> Result<()> {
        let lower = network.name.to_ascii_lowercase();
        if self.network_names.contains_key(&lower) || self.networks.contains_key(&network.id) {
            return Err(Error::new(ErrorKind::AlreadyExists, format!("network {:?} twice", network.name)));
        }
        let subnets: Vec<Cidr> =
            std::iter::once(network.ipv4.subnet).chain(network.ipv6.as_ref().map(|s| s.subnet)).collect();
        for subnet in &subnets {
            self.check_free_subnet(subnet)?;
        }
        let ipv4 = SubnetAllocator::new(&network.ipv4)?;
        let ipv6 = network.ipv6.as_ref().map(SubnetAllocator::new).transpose()?;
        // The VNI: create_network took it already; restore takes it here.
        if self.vnis.is_free(network.vni.into()) {
            self.vnis.take(network.vni.into());
        }
        for subnet in subnets {
            let owner = Owner::Network(network.id);
            let inserted = self.subnets_mut(subnet.family()).insert(subnet.first(), subnet.last(), owner);
            debug_assert!(inserted, "checked free above");
        }
        self.network_names.insert(lower, network.id);
        self.networks.insert(
            network.id,
            NetworkEntry {
                network,
                ipv4,
                ipv6,
                endpoints: BTreeSet::new(),
                containers: FxHashMap::default(),
                names: FxHashMap::default(),
                explicit_macs: FxHashMap::default(),
            },
        );
        Ok(())
    }

    fn remove_network(&mut self, key: &str, force: bool) -> Result<Applied> {
        let id = self.resolve_network_id(key)?;
        let entry = &self.networks[&id];
        if !entry.endpoints.is_empty() && !force {
            let hosts: BTreeSet<&str> =
                entry.endpoints.iter().map(|e| self.endpoints[e].node.as_str()).collect();
            let hosts: Vec<&str> = hosts.into_iter().collect();
            return Err(Error::conflict(
                "NETWORK_IN_USE",
                &entry.network.name,
                format!(
                    "network {:?} has {} endpoint(s) attached (on {}): disconnect them first, or remove with force",
                    entry.network.name,
                    entry.endpoints.len(),
                    hosts.join(", ")
                ),
            ));
        }
        self.revision += 1;
        let endpoint_keys: Vec<EndpointKey> = entry.endpoints.iter().copied().collect();
        let mut kinds = Vec::with_capacity(endpoint_keys.len() + 1);
        let mut removed = Vec::with_capacity(endpoint_keys.len());
        for endpoint in endpoint_keys {
            let ep = self.take_endpoint(&endpoint);
            kinds.push(EventKind::EndpointRemoved(ep.clone()));
            removed.push(ep);
        }
        let network = self.take_network(&id);
        kinds.push(EventKind::NetworkRemoved(network.clone()));
        self.changed(Response::NetworkRemoved { network, endpoints: removed }, kinds)
    }

    fn rename_network(&mut self, key: &str, name: &str) -> Result<Applied> {
        validate::dns_name("network name", name)?;
        let id = self.resolve_network_id(key)?;
        let entry = &self.networks[&id];
        if entry.network.name == name {
            return self.unchanged(Response::Network(entry.network.clone()));
        }
        if !entry.endpoints.is_empty() {
            return Err(Error::conflict(
                "NETWORK_IN_USE",
                &entry.network.name,
                format!(
                    "network {:?} has {} endpoint(s): its containers resolve names under it, so it can be renamed only while empty",
                    entry.network.name,
                    entry.endpoints.len()
                ),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if let Some(other) = self.network_names.get(&lower).filter(|other| **other != id) {
            return Err(Error::already_exists(
                "network",
                name,
                format!(
                    "a network named {:?} already exists (id {})",
                    self.networks[other].network.name,
                    other.short()
                ),
            ));
        }
        self.revision += 1;
        let entry = self.networks.get_mut(&id).unwrap_or_else(|| unreachable!("resolved network"));
        let old = std::mem::replace(&mut entry.network.name, name.to_string());
        let network = entry.network.clone();
        self.network_names.remove(&old.to_ascii_lowercase());
        self.network_names.insert(lower, id);
        self.changed_once(Response::Network(network.clone()), EventKind::NetworkUpdated(network))
    }

    fn reshape_network(
        &mut self,
        key: &str,
        internal: bool,
        options: &BTreeMap<String, String>,
        ipv6: Option<&SubnetRequest>,
    ) -> Result<Applied> {
        let id = self.resolve_network_id(key)?;
        let entry = &self.networks[&id];
        let network = &entry.network;
        // IPv6 is added, never taken away; one asked for again must be the one it has.
        let add_ipv6 = match (ipv6, &network.ipv6) {
            (None, _) => None,
            (Some(request), None) => Some(request),
            (Some(request), Some(has)) => {
                if request.subnet.is_some_and(|asked| asked != has.subnet) {
                    return Err(Error::conflict(
                        "IPV6_SUBNET",
                        &network.name,
                        format!(
                            "network {:?} has IPv6 subnet {} already; it cannot change",
                            network.name, has.subnet
                        ),
                    ));
                }
                None
            }
        };
        if network.internal == internal && network.options == *options && add_ipv6.is_none() {
            return self.unchanged(Response::Network(network.clone()));
        }
        let has_ipv6 = network.ipv6.is_some() || add_ipv6.is_some();
        let settings = NetworkSettings::parse(options, self.config.encrypt_by_default, has_ipv6)
            .map_err(|e| e.about_field("options"))?;
        if !entry.endpoints.is_empty() {
            return Err(Error::conflict(
                "NETWORK_IN_USE",
                &network.name,
                format!(
                    "network {:?} has {} endpoint(s): its options can change only while empty",
                    network.name,
                    entry.endpoints.len()
                ),
            ));
        }
        if let Some(bridge) = &settings.bridge_name
            && let Some(other) =
                self.networks().find(|n| n.id != id && n.settings.bridge_name.as_ref() == Some(bridge))
        {
            return Err(Error::already_exists(
                "bridge",
                bridge,
                format!("bridge name {bridge:?} is already used by network {:?}", other.name),
            ));
        }
        let ipv6 = match add_ipv6 {
            Some(request) => {
                let subnet = self.choose_subnet(&network.name, request, Family::V6)?;
                Some((SubnetAllocator::new(&subnet)?, subnet))
            }
            None => None,
        };
        // Checked; now change.
        self.revision += 1;
        if let Some((_, subnet)) = &ipv6 {
            let inserted = self.subnets_mut(Family::V6).insert(
                subnet.subnet.first(),
                subnet.subnet.last(),
                Owner::Network(id),
            );
            debug_assert!(inserted, "choose_subnet checked it free");
        }
        let entry = self.networks.get_mut(&id).unwrap_or_else(|| unreachable!("resolved network"));
        if let Some((allocator, subnet)) = ipv6 {
            entry.ipv6 = Some(allocator);
            entry.network.ipv6 = Some(subnet);
        }
        entry.network.internal = internal;
        entry.network.options = options.clone();
        entry.network.settings = settings;
        let network = entry.network.clone();
        self.changed_once(Response::Network(network.clone()), EventKind::NetworkUpdated(network))
    }

    /// Removes an endpoint-free network and releases its subnets and VNI.
    fn take_network(&mut self, id: &Id) -> Network {
        let entry = self.networks.remove(id).unwrap_or_else(|| unreachable!("take_network of a resolved id"));
        debug_assert!(entry.endpoints.is_empty());
        let network = entry.network;
        for subnet in std::iter::once(&network.ipv4).chain(network.ipv6.as_ref()) {
            self.subnets_mut(subnet.subnet.family()).remove(subnet.subnet.first());
        }
        self.vnis.release(network.vni.into());
        self.network_names.remove(&network.name.to_ascii_lowercase());
        network
    }

    fn prune_networks(&mut self, filter: &PruneFilter) -> Result<Applied> {
        let doomed: Vec<Id> = self
            .networks
            .values()
            .filter(|e| e.endpoints.is_empty() && filter.matches(&e.network))
            .map(|e| e.network.id)
            .collect();
        if doomed.is_empty() {
            return self.unchanged(Response::Pruned(Vec::new()));
        }
        self.revision += 1;
        let removed: Vec<Network> = doomed.iter().map(|id| self.take_network(id)).collect();
        let kinds = removed.iter().cloned().map(EventKind::NetworkRemoved).collect();
        self.changed(Response::Pruned(removed), kinds)
    }

    fn create_endpoint(
        &mut self,
        request: &EndpointRequest,
        ports: &[PublishedPort],
        at: u64,
    ) -> Result<Applied> {
        validate::container_id(&request.container_id)?;
        validate::dns_name("container name", &request.container_name)?;
        validate::aliases(&request.aliases)?;
        let network_id = self.resolve_network_id(&request.network)?;
        self.node_entry(&request.node)?;
        let entry = &self.networks[&network_id];
        let net_name = &entry.network.name;
        if let Some(existing) = entry.containers.get(&request.container_id) {
            return Err(Error::already_exists(
                "endpoint",
                format_args!("{net_name}/{}", request.container_id),
                format!(
                    "container {} is already attached to network {net_name:?} (endpoint {})",
                    quoted(&request.container_id),
                    self.endpoints[existing].id.short()
                ),
            ));
        }
        let lower_name = request.container_name.to_ascii_lowercase();
        if let Some(existing) = entry.names.get(&lower_name) {
            let other = &self.endpoints[existing];
            return Err(Error::already_exists(
                "container_name",
                &request.container_name,
                format!(
                    "container name {} is already used on network {net_name:?} by container {:?} on node {:?}",
                    quoted(&request.container_name),
                    other.container_id,
                    other.node
                ),
            ));
        }
        if request.ipv6.is_some() && entry.ipv6.is_none() {
            return Err(Error::bad_request(format!(
                "network {net_name:?} has no IPv6 subnet, so no IPv6 address can be requested"
            )));
        }
        self.check_published(entry, &request.node, ports, None)?;
        if let Some(mac) = request.mac
            && let Some(existing) = entry.explicit_macs.get(&mac)
        {
            return Err(Error::already_exists(
                "mac_address",
                mac,
                format!(
                    "MAC address {mac} is already used on network {net_name:?} by container {:?}",
                    self.endpoints[existing].container_id
                ),
            ));
        }

        // Addresses: the only fallible steps with side effects; undone if a later check fails.
        let entry = self.networks.get_mut(&network_id).unwrap_or_else(|| unreachable!("resolved network"));
        let net_name = entry.network.name.clone();
        let ipv4 = match request.ipv4 {
            Some(addr) => {
                entry.ipv4.allocate_static(&net_name, addr.into(), &entry.network.ipv4).map(|()| addr)
            }
            None => entry.ipv4.allocate(&net_name).map(|a| match a {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("IPv4 allocator"),
            }),
        }?;
        let ipv6 = match (&mut entry.ipv6, &entry.network.ipv6) {
            (Some(alloc), Some(config)) => {
                let got = match request.ipv6 {
                    Some(addr) => alloc.allocate_static(&net_name, addr.into(), config).map(|()| addr),
                    None => alloc.allocate(&net_name).map(|a| match a {
                        IpAddr::V6(a) => a,
                        IpAddr::V4(_) => unreachable!("IPv6 allocator"),
                    }),
                };
                match got {
                    Ok(a) => Some(a),
                    Err(e) => {
                        entry.ipv4.release(ipv4.into());
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let mac = match request.mac {
            None => MacAddr::from_ipv4(ipv4),
            Some(mac) => {
                let clash = mac.derived_ipv4().filter(|derived| {
                    *derived != ipv4 && entry.network.ipv4.subnet.contains((*derived).into())
                });
                if let Some(derived) = clash {
                    entry.ipv4.release(ipv4.into());
                    if let (Some(alloc), Some(v6)) = (&mut entry.ipv6, ipv6) {
                        alloc.release(v6.into());
                    }
                    return Err(Error::invalid(
                        "MAC address",
                        mac,
                        format_args!(
                            "it is the MAC weft derives for {derived} on network {net_name:?}; choose a MAC outside 02:42:xx or the one derived from this endpoint's own address"
                        ),
                    ));
                }
                mac
            }
        };

        self.revision += 1;
        let endpoint = Endpoint {
            id: self.new_id(self.revision),
            network: network_id,
            node: request.node.clone(),
            container_id: request.container_id.clone(),
            container_name: request.container_name.clone(),
            aliases: request.aliases.clone(),
            mac,
            ipv4,
            ipv6,
            created_ms: at,
            created_revision: self.revision,
            problem: None,
            ports: ports.to_vec(),
            modified_revision: self.revision,
        };
        let endpoint = Arc::new(endpoint);
        self.index_endpoint(&endpoint, lower_name, mac != MacAddr::from_ipv4(ipv4));
        self.endpoints.insert(endpoint.created_revision, endpoint.clone());
        self.changed_once(Response::Endpoint(endpoint.clone()), EventKind::EndpointCreated(endpoint))
    }

    /// Published ports: not on internal networks, IPv6 host addresses only on dual-stack
    /// networks, and no host port that another container on the same host holds.
    /// `publisher` is the endpoint itself when it exists already (its own ports are no clash).
    fn check_published(
        &self,
        network: &NetworkEntry,
        node: &str,
        ports: &[PublishedPort],
        publisher: Option<EndpointKey>,
    ) -> Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        ports::check_mappings(ports)?;
        let net_name = &network.network.name;
        if network.network.internal {
            return Err(Error::conflict(
                "NETWORK_INTERNAL",
                net_name,
                format!(
                    "network {net_name:?} is internal: nothing outside it may reach its containers, so it cannot publish ports"
                ),
            ));
        }
        if network.ipv6.is_none()
            && let Some(v6) = ports.iter().find(|p| p.host_ip.is_some_and(|ip| ip.is_ipv6()))
        {
            return Err(Error::bad_request(format!(
                "host address {} is IPv6, but network {net_name:?} has no IPv6 subnet to forward it to",
                v6.host_side()
            ))
            .about_field("ports"));
        }
        let Some(host) = self.nodes.get(node) else { return Ok(()) };
        for key in host.endpoints.iter().filter(|key| Some(**key) != publisher) {
            let other = &self.endpoints[key];
            for mine in ports {
                if let Some(theirs) = other.ports.iter().find(|theirs| theirs.clashes_with(mine)) {
                    let holder_network =
                        self.networks.get(&other.network).map_or("?", |n| n.network.name.as_str());
                    return Err(Error::already_exists(
                        "published port",
                        format_args!("{node}/{}/{}", mine.host_side(), mine.protocol),
                        format!(
                            "host port {}/{} on host {node:?} is already published by container {:?} (network {holder_network:?}, endpoint {}, as {})",
                            mine.host_side(),
                            mine.protocol,
                            other.container_name,
                            other.id.short(),
                            theirs.docker_form()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Records an endpoint whose addresses are already allocated in the indexes.
    fn index_endpoint(&mut self, endpoint: &Endpoint, lower_name: String, explicit_mac: bool) {
        let entry = self
            .networks
            .get_mut(&endpoint.network)
            .unwrap_or_else(|| unreachable!("endpoint of a known network"));
        let key = endpoint.created_revision;
        entry.endpoints.insert(key);
        entry.containers.insert(endpoint.container_id.clone(), key);
        entry.names.insert(lower_name, key);
        if explicit_mac {
            entry.explicit_macs.insert(endpoint.mac, key);
        }
        if let Some(node) = self.nodes.get_mut(&endpoint.node) {
            node.endpoints.insert(key);
        }
    }

    fn update_endpoint(
        &mut self,
        reference: &EndpointRef,
        container_id: Option<&str>,
        name: &str,
        aliases: &[String],
    ) -> Result<Applied> {
        validate::dns_name("container name", name)?;
        validate::aliases(aliases)?;
        if let Some(id) = container_id {
            validate::container_id(id)?;
        }
        let key = self.resolve_endpoint(reference)?;
        let endpoint = self.endpoints[&key].clone();
        let container_id = container_id.unwrap_or(&endpoint.container_id);
        if endpoint.container_id == container_id
            && endpoint.container_name == name
            && endpoint.aliases == aliases
        {
            return self.unchanged(Response::Endpoint(endpoint));
        }
        let entry =
            self.networks.get_mut(&endpoint.network).unwrap_or_else(|| unreachable!("endpoint's network"));
        if let Some(other) = entry.containers.get(container_id).filter(|other| **other != key) {
            return Err(Error::already_exists(
                "endpoint",
                format_args!("{}/{container_id}", entry.network.name),
                format!(
                    "container {} is already attached to network {:?} (endpoint {})",
                    quoted(container_id),
                    entry.network.name,
                    self.endpoints[other].id.short()
                ),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if let Some(other) = entry.names.get(&lower).filter(|other| **other != key) {
            let other = &self.endpoints[other];
            return Err(Error::already_exists(
                "container_name",
                name,
                format!(
                    "container name {} is already used on network {:?} by container {:?} on node {:?}",
                    quoted(name),
                    entry.network.name,
                    other.container_id,
                    other.node
                ),
            ));
        }
        self.revision += 1;
        entry.names.remove(&endpoint.container_name.to_ascii_lowercase());
        entry.names.insert(lower, key);
        entry.containers.remove(&endpoint.container_id);
        entry.containers.insert(container_id.to_string(), key);
        let updated = Arc::new(Endpoint {
            container_id: container_id.to_string(),
            container_name: name.to_string(),
            aliases: aliases.to_vec(),
            modified_revision: self.revision,
            ..(*endpoint).clone()
        });
        self.endpoints.insert(key, updated.clone());
        self.changed_once(Response::Endpoint(updated.clone()), EventKind::EndpointUpdated(updated))
    }

    fn publish_ports(&mut self, reference: &EndpointRef, ports: &[PublishedPort]) -> Result<Applied> {
        let key = self.resolve_endpoint(reference)?;
        let endpoint = self.endpoints[&key].clone();
        if endpoint.ports == ports {
            return self.unchanged(Response::Endpoint(endpoint));
        }
        let network = &self.networks[&endpoint.network];
        self.check_published(network, &endpoint.node, ports, Some(key))?;
        self.revision += 1;
        let updated = Arc::new(Endpoint {
            ports: ports.to_vec(),
            modified_revision: self.revision,
            ..(*endpoint).clone()
        });
        self.endpoints.insert(key, updated.clone());
        self.changed_once(Response::Endpoint(updated.clone()), EventKind::EndpointUpdated(updated))
    }

    fn remove_endpoint(&mut self, reference: &EndpointRef) -> Result<Applied> {
        let id = self.resolve_endpoint(reference)?;
        self.revision += 1;
        let endpoint = self.take_endpoint(&id);
        self.changed_once(Response::EndpointRemoved(endpoint.clone()), EventKind::EndpointRemoved(endpoint))
    }

    /// Removes an endpoint and releases its addresses.
    fn take_endpoint(&mut self, key: &EndpointKey) -> Arc<Endpoint> {
        let endpoint =
            self.endpoints.remove(key).unwrap_or_else(|| unreachable!("take_endpoint of a resolved key"));
        if let Some(entry) = self.networks.get_mut(&endpoint.network) {
            entry.endpoints.remove(key);
            entry.containers.remove(&endpoint.container_id);
            entry.names.remove(&endpoint.container_name.to_ascii_lowercase());
            entry.explicit_macs.remove(&endpoint.mac);
            entry.ipv4.release(endpoint.ipv4.into());
            if let (Some(alloc), Some(v6)) = (&mut entry.ipv6, endpoint.ipv6) {
                alloc.release(v6.into());
            }
        }
        if let Some(node) = self.nodes.get_mut(&endpoint.node) {
            node.endpoints.remove(key);
        }
        endpoint
    }

    fn register_node(&mut self, request: &NodeRequest, at: u64) -> Result<Applied> {
        validate::dns_name("node name", &request.name)?;
        validate::labels("node label", &request.labels)?;
        let underlay = request.underlay;
        if underlay.is_unspecified() || underlay.is_multicast() {
            return Err(Error::invalid(
                "underlay address",
                underlay,
                "it must be a unicast address other hosts can reach",
            ));
        }
        if !(MIN_UNDERLAY_MTU..=MAX_UNDERLAY_MTU).contains(&request.underlay_mtu) {
            return Err(Error::invalid(
                "underlay MTU",
                request.underlay_mtu,
                format_args!("an underlay MTU is {MIN_UNDERLAY_MTU} to {MAX_UNDERLAY_MTU}"),
            ));
        }
        for (what, text, limit) in [
            ("agent version", &request.agent_version, 64),
            ("WireGuard backend", &request.wireguard_backend, 256),
        ] {
            if text.len() > limit || text.chars().any(char::is_control) {
                return Err(Error::invalid(what, text, format_args!("at most {limit} printable characters")));
            }
        }
        if let Some(key) = &request.wireguard_public_key {
            let ok = key.len() == 44
                && key.ends_with('=')
                && key[..43].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
            if !ok {
                return Err(Error::invalid(
                    "WireGuard public key",
                    key,
                    "expected 44 characters of base64 (32 bytes), as `wg pubkey` prints",
                ));
            }
            if request.wireguard_port == 0 {
                return Err(Error::invalid(
                    "WireGuard port",
                    0,
                    "a host with a WireGuard key needs a UDP port 1 to 65535",
                ));
            }
            if let Some(owner) = self.wireguard_keys.get(key).filter(|owner| **owner != request.name) {
                return Err(Error::already_exists(
                    "wireguard_public_key",
                    key,
                    format!("WireGuard public key {key} is already registered by node {owner:?}"),
                ));
            }
        }
        if let Some(owner) = self.underlays.get(&underlay).filter(|owner| **owner != request.name) {
            return Err(Error::already_exists(
                "underlay_address",
                underlay,
                format!("underlay address {underlay} is already registered by node {owner:?}"),
            ));
        }

        if let Some(existing) = self.nodes.get(&request.name) {
            let old = &existing.node;
            let mut node = old.clone();
            node.underlay = underlay;
            node.underlay_mtu = request.underlay_mtu;
            node.wireguard_public_key = request.wireguard_public_key.clone();
            node.wireguard_port = request.wireguard_port;
            node.labels = request.labels.clone();
            node.agent_version = request.agent_version.clone();
            node.wireguard_backend = request.wireguard_backend.clone();
            let came_up = node.status == NodeStatus::Down;
            if came_up {
                node.status = NodeStatus::Up;
                node.status_changed_ms = at;
            }
            if node == *old {
                return self.unchanged(Response::Node(node));
            }
            self.revision += 1;
            if let Some(key) = &old.wireguard_public_key {
                self.wireguard_keys.remove(key);
            }
            self.underlays.remove(&old.underlay);
            self.index_node_keys(&node);
            let mut kinds = vec![EventKind::NodeRegistered(node.clone())];
            if came_up {
                kinds.push(EventKind::NodeStatusChanged(node.clone()));
            }
            if let Some(entry) = self.nodes.get_mut(&request.name) {
                entry.node = node.clone();
            }
            return self.changed(Response::Node(node), kinds);
        }

        let tunnel = self.tunnel_addresses.take_lowest_in(0, u128::MAX).ok_or_else(|| {
            Error::exhausted(format!(
                "the tunnel pool {} has no free address for another node ({} nodes registered)",
                self.config.tunnel_pool,
                self.nodes.len()
            ))
        })?;
        self.revision += 1;
        let node = Node {
            id: self.new_id(self.revision),
            name: request.name.clone(),
            underlay,
            underlay_mtu: request.underlay_mtu,
            wireguard_public_key: request.wireguard_public_key.clone(),
            wireguard_port: request.wireguard_port,
            tunnel_address: self.config.tunnel_pool.addr_at(tunnel),
            status: NodeStatus::Up,
            labels: request.labels.clone(),
            agent_version: request.agent_version.clone(),
            wireguard_backend: request.wireguard_backend.clone(),
            registered_ms: at,
            status_changed_ms: at,
        };
        self.index_node_keys(&node);
        self.nodes.insert(node.name.clone(), NodeEntry { node: node.clone(), endpoints: BTreeSet::new() });
        self.changed(Response::Node(node.clone()), vec![EventKind::NodeRegistered(node)])
    }

    fn index_node_keys(&mut self, node: &Node) {
        if let Some(key) = &node.wireguard_public_key {
            self.wireguard_keys.insert(key.clone(), node.name.clone());
        }
        self.underlays.insert(node.underlay, node.name.clone());
    }

    fn set_node_status(&mut self, name: &str, status: NodeStatus, at: u64) -> Result<Applied> {
        let current = self.node_entry(name)?.node.clone();
        if current.status == status {
            return self.unchanged(Response::Node(current));
        }
        self.revision += 1;
        let entry = self.nodes.get_mut(name).unwrap_or_else(|| unreachable!("checked node"));
        entry.node.status = status;
        entry.node.status_changed_ms = at;
        let node = entry.node.clone();
        self.changed(Response::Node(node.clone()), vec![EventKind::NodeStatusChanged(node)])
    }

    fn set_endpoint_problems(
        &mut self,
        node: &str,
        problems: &[(String, Option<String>)],
    ) -> Result<Applied> {
        self.node_entry(node)?;
        let mut changed = Vec::new();
        for (id, problem) in problems {
            // A reason is a host's one line about its kernel; a long one is cut, not refused.
            let problem = problem.as_deref().map(kept_problem);
            let Ok(key) = self.resolve_endpoint(&EndpointRef::Id(id.clone())) else { continue };
            let Some(current) = self.endpoints.get(&key) else { continue };
            if current.node != node || current.problem == problem || current.id.hex() != id.as_bytes() {
                continue;
            }
            changed.push((key, problem));
        }
        if changed.is_empty() {
            return self.unchanged(Response::EndpointsUpdated(Vec::new()));
        }
        self.revision += 1;
        let revision = self.revision;
        let mut updated = Vec::with_capacity(changed.len());
        for (key, problem) in changed {
            if let Some(endpoint) = self.endpoints.get_mut(&key) {
                let record = Arc::make_mut(endpoint);
                record.problem = problem;
                record.modified_revision = revision;
                updated.push(endpoint.clone());
            }
        }
        let kinds = updated.iter().cloned().map(EventKind::EndpointUpdated).collect();
        self.changed(Response::EndpointsUpdated(updated), kinds)
    }

    fn create_token(&mut self, token: &JoinToken) -> Result<Applied> {
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(&token.id, 16) {
            return Err(Error::invalid("token id", &token.id, "16 lowercase hex digits"));
        }
        if !hex(&token.secret_sha256, 64) {
            return Err(Error::invalid("token secret hash", "(hidden)", "64 lowercase hex digits (SHA-256)"));
        }
        if token.expires_ms <= token.created_ms || token.revoked {
            return Err(Error::invalid(
                "token lifetime",
                token.expires_ms,
                "a new token expires after it is made",
            ));
        }
        if self.tokens.contains_key(&token.id) {
            return Err(Error::already_exists(
                "token",
                &token.id,
                format!("a token with id {} exists", token.id),
            ));
        }
        self.tokens.insert(token.id.clone(), token.clone());
        self.unchanged(Response::Token(token.clone()))
    }

    fn revoke_token(&mut self, id: &str) -> Result<Applied> {
        let token = self
            .tokens
            .get_mut(id)
            .ok_or_else(|| Error::not_found("token", id, format!("no join token with id {}", quoted(id))))?;
        token.revoked = true;
        let token = token.clone();
        self.unchanged(Response::Token(token))
    }

    fn remove_node(&mut self, name: &str, at: u64) -> Result<Applied> {
        let entry = self.node_entry(name)?;
        let endpoint_keys: Vec<EndpointKey> = entry.endpoints.iter().copied().collect();
        self.revision += 1;
        let mut kinds = Vec::with_capacity(endpoint_keys.len() + 1);
        let mut removed = Vec::with_capacity(endpoint_keys.len());
        for id in endpoint_keys {
            let endpoint = self.take_endpoint(&id);
            kinds.push(EventKind::EndpointRemoved(endpoint.clone()));
            removed.push(endpoint);
        }
        let entry = self.nodes.remove(name).unwrap_or_else(|| unreachable!("checked node"));
        let node = entry.node;
        self.tunnel_addresses.release(to_u128(node.tunnel_address));
        if let Some(key) = &node.wireguard_public_key {
            self.wireguard_keys.remove(key);
        }
        self.underlays.remove(&node.underlay);
        self.revoked_nodes.insert(node.name.clone(), at);
        kinds.push(EventKind::NodeRemoved(node.clone()));
        self.changed(Response::NodeRemoved { node, endpoints: removed }, kinds)
    }
}

// === impl State: snapshots ===

impl State {
    /// The canonical data as bytes: a header, a format version, then postcard. Two replicas with
    /// the same history produce identical bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_view().encode()
    }

    /// What [`State::snapshot`] encodes, taken without encoding it: records are shared, not
    /// copied, so a caller holding a lock over the registry can take the view, release the lock,
    /// and encode while writes go on.
    pub fn snapshot_view(&self) -> SnapshotView {
        SnapshotView {
            body: SnapshotBody {
                revision: self.revision,
                config: self.config.clone(),
                networks: self.networks().cloned().collect(),
                nodes: self.nodes().cloned().collect(),
                endpoints: self.endpoints.values().cloned().collect(),
                revoked_nodes: self.revoked_nodes.clone(),
                tokens: self.tokens.clone(),
            },
            answers: self.requests.entries().cloned().collect(),
        }
    }

    /// SHA-256 of the snapshot, in hex: a cheap way to compare replicas.
    pub fn digest(&self) -> String {
        Sha256::digest(self.snapshot()).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Rebuilds a registry from [`State::snapshot`] bytes, checking every record as it goes.
    pub fn restore(bytes: &[u8]) -> Result<State, SnapshotError> {
        let rest = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()).ok_or(SnapshotError::BadHeader)?;
        let (version, body) = rest.split_first_chunk::<4>().ok_or(SnapshotError::BadHeader)?;
        let version = u32::from_le_bytes(*version);
        if !(5..=SNAPSHOT_VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let decode_error = |e: postcard::Error| SnapshotError::Decode(e.to_string());
        let (snap, rest): (SnapshotBody, &[u8]) = match version {
            8.. => postcard::take_from_bytes(body).map_err(decode_error)?,
            7 => {
                let (old, rest): (OldSnapshotBody<EndpointV7>, &[u8]) =
                    postcard::take_from_bytes(body).map_err(decode_error)?;
                (old.into(), rest)
            }
            _ => {
                let (old, rest): (OldSnapshotBody<EndpointV6>, &[u8]) =
                    postcard::take_from_bytes(body).map_err(decode_error)?;
                (old.into(), rest)
            }
        };
        let answers: Vec<requests::Remembered> = if version >= 8 {
            postcard::from_bytes(rest).map_err(|e| SnapshotError::Decode(format!("request ids: {e}")))?
        } else {
            Vec::new()
        };
        let bad = |what: String| SnapshotError::Inconsistent(what);
        let mut state = State::new(snap.config).map_err(|e| bad(e.to_string()))?;
        state.revision = snap.revision;
        for network in snap.networks {
            if !state.vnis.is_free(network.vni.into()) {
                return Err(bad(format!("VNI {} held twice or outside the range", network.vni)));
            }
            let name = network.name.clone();
            state.insert_network(network).map_err(|e| bad(format!("network {name:?}: {e}")))?;
        }
        for node in snap.nodes {
            if !state.tunnel_addresses.take(to_u128(node.tunnel_address)) {
                return Err(bad(format!(
                    "node {:?}: tunnel address {} held twice or outside the pool",
                    node.name, node.tunnel_address
                )));
            }
            if state.underlays.contains_key(&node.underlay) || state.nodes.contains_key(&node.name) {
                return Err(bad(format!("node {:?} or its underlay address appears twice", node.name)));
            }
            state.index_node_keys(&node);
            state.nodes.insert(node.name.clone(), NodeEntry { node, endpoints: BTreeSet::new() });
        }
        for endpoint in snap.endpoints {
            state.restore_endpoint(&endpoint).map_err(|e| bad(format!("endpoint {}: {e}", endpoint.id)))?;
            state.endpoints.insert(endpoint.created_revision, endpoint);
        }
        state.revoked_nodes = snap.revoked_nodes;
        state.tokens = snap.tokens;
        for answer in answers {
            state.requests.remember(answer);
        }
        Ok(state)
    }

    fn restore_endpoint(&mut self, endpoint: &Endpoint) -> Result<()> {
        if self.endpoints.contains_key(&endpoint.created_revision) {
            return Err(Error::new(ErrorKind::AlreadyExists, "id appears twice"));
        }
        if endpoint.created_revision > self.revision || self.new_id(endpoint.created_revision) != endpoint.id
        {
            return Err(Error::bad_request("its id does not match its creation revision"));
        }
        if !(endpoint.created_revision..=self.revision).contains(&endpoint.modified_revision) {
            return Err(Error::bad_request(format!(
                "modified at revision {}, before its creation ({}) or after the registry's ({})",
                endpoint.modified_revision, endpoint.created_revision, self.revision
            )));
        }
        self.node_entry(&endpoint.node)?;
        let entry = self
            .networks
            .get_mut(&endpoint.network)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "its network is missing"))?;
        let name = entry.network.name.clone();
        if entry.containers.contains_key(&endpoint.container_id)
            || entry.names.contains_key(&endpoint.container_name.to_ascii_lowercase())
        {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("container appears twice on network {name:?}"),
            ));
        }
        entry.ipv4.allocate_static(&name, endpoint.ipv4.into(), &entry.network.ipv4)?;
        match (&mut entry.ipv6, &entry.network.ipv6, endpoint.ipv6) {
            (Some(alloc), Some(config), Some(v6)) => alloc.allocate_static(&name, v6.into(), config)?,
            (None, None, None) => {}
            _ => return Err(Error::bad_request("IPv6 address does not match its network")),
        }
        let explicit = endpoint.mac != MacAddr::from_ipv4(endpoint.ipv4);
        if explicit && entry.explicit_macs.contains_key(&endpoint.mac) {
            return Err(Error::new(ErrorKind::AlreadyExists, format!("MAC {} appears twice", endpoint.mac)));
        }
        self.index_endpoint(endpoint, endpoint.container_name.to_ascii_lowercase(), explicit);
        Ok(())
    }
}

// === impl State: invariants ===

/// What [`State::check_invariants`] found out of step: a bug in weft, described for the test
/// that caught it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broken invariant: {0}")]
pub struct BrokenInvariant(pub String);

impl State {
    /// Recomputes every derived structure from the canonical records and compares: the
    /// allocators, indexes and counts must agree with the networks, endpoints and nodes. Tests
    /// call this after every step; it is linear in the size of the registry.
    pub fn check_invariants(&self) -> std::result::Result<(), BrokenInvariant> {
        let broken = |what: String| BrokenInvariant(what);
        let mut rebuilt = State::new(self.config.clone()).map_err(|e| broken(e.to_string()))?;
        rebuilt.revision = self.revision;
        rebuilt.id_seed = self.id_seed;
        let mut seen_vnis = BTreeSet::new();
        let mut seen_bridges = BTreeSet::new();
        for entry in self.networks.values() {
            if !seen_vnis.insert(entry.network.vni) {
                return Err(broken(format!("VNI {} held twice", entry.network.vni)));
            }
            if !seen_bridges.insert(entry.network.bridge_name()) {
                return Err(broken(format!("bridge name {} held twice", entry.network.bridge_name())));
            }
            rebuilt.insert_network(entry.network.clone()).map_err(|e| broken(e.to_string()))?;
        }
        for entry in self.nodes.values() {
            let node = &entry.node;
            if !rebuilt.tunnel_addresses.take(to_u128(node.tunnel_address)) {
                return Err(broken(format!("tunnel address {} held twice", node.tunnel_address)));
            }
            rebuilt.index_node_keys(node);
            rebuilt
                .nodes
                .insert(node.name.clone(), NodeEntry { node: node.clone(), endpoints: BTreeSet::new() });
        }
        for endpoint in self.endpoints.values() {
            rebuilt
                .restore_endpoint(endpoint)
                .map_err(|e| broken(format!("endpoint {} ({}): {e}", endpoint.id.short(), endpoint.ipv4)))?;
            rebuilt.endpoints.insert(endpoint.created_revision, endpoint.clone());
        }
        for node in self.nodes.values() {
            let mut held: Vec<(&PublishedPort, &Endpoint)> = Vec::new();
            for endpoint in node.endpoints.iter().map(|key| &self.endpoints[key]) {
                for port in &endpoint.ports {
                    if let Some((_, holder)) = held.iter().find(|(other, _)| other.clashes_with(port)) {
                        return Err(broken(format!(
                            "host port {} on node {:?} published by endpoints {} and {}",
                            port.docker_form(),
                            node.node.name,
                            holder.id.short(),
                            endpoint.id.short()
                        )));
                    }
                    held.push((port, endpoint));
                }
            }
        }
        // Canonical, not derived: carried over as they are.
        rebuilt.revoked_nodes = self.revoked_nodes.clone();
        rebuilt.tokens = self.tokens.clone();
        if rebuilt != *self {
            return Err(broken("derived state differs from a rebuild of the canonical records".into()));
        }
        Ok(())
    }
}

// === helpers ===

fn tunnel_free(pool: &Cidr) -> FreeRanges {
    match usable_range(pool) {
        Ok((lo, hi)) => FreeRanges::new(lo, hi),
        Err(_) => FreeRanges::new(1, 0),
    }
}

fn id_seed(cluster_id: &str) -> [u64; 4] {
    let digest = Sha256::digest(cluster_id.as_bytes());
    let mut seed = [0u64; 4];
    for (word, chunk) in seed.iter_mut().zip(digest.chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        *word = u64::from_be_bytes(bytes);
    }
    seed
}

/// The fewest leading hex digits that name an endpoint: the first 64-bit word of its id.
pub const ENDPOINT_PREFIX_DIGITS: usize = 16;
/// The shortest endpoint id prefix the API accepts: what `weft endpoint ls` prints.
pub const SHORT_ENDPOINT_PREFIX_DIGITS: usize = 12;

/// The longest problem a host's report keeps, in characters.
pub const MAX_PROBLEM_CHARS: usize = 512;

/// A host's problem report as the registry keeps it: cut to [`MAX_PROBLEM_CHARS`].
pub fn kept_problem(text: &str) -> String {
    match text.char_indices().nth(MAX_PROBLEM_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// `key` lowercased, allocating only when it has capitals.
fn lowercase(key: &str) -> Cow<'_, str> {
    if key.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(key.to_ascii_lowercase())
    } else {
        Cow::Borrowed(key)
    }
}

/// SplitMix64's finaliser: a bijection on u64 with good diffusion.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The inverse of [`mix64`].
fn unmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 31) ^ (z >> 62)).wrapping_mul(0x3196_42b2_d24d_8ec3);
    z = (z ^ (z >> 27) ^ (z >> 54)).wrapping_mul(0x96de_1b17_3f11_9089);
    z ^ (z >> 30) ^ (z >> 60)
}

/// Finds the one key of `map` whose hex form starts with `prefix`.
fn resolve_id_prefix<V>(map: &BTreeMap<Id, V>, prefix: &str, kind: &str) -> Result<Id> {
    if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::not_found(kind, prefix, format!("no {kind} named or with id {}", quoted(prefix))));
    }
    let prefix = prefix.to_ascii_lowercase();
    // The smallest id with this prefix: the prefix padded with zeros.
    let mut low = [0u8; 32];
    let padded = format!("{prefix:0<64}");
    for (i, byte) in low.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&padded[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    let mut matches =
        map.range(Id(low)..).map(|(id, _)| *id).take_while(|id| id.hex().starts_with(prefix.as_bytes()));
    match (matches.next(), matches.next()) {
        (Some(id), None) => Ok(id),
        (None, _) => {
            Err(Error::not_found(kind, &prefix, format!("no {kind} named or with id {}", quoted(&prefix))))
        }
        (Some(a), Some(b)) => Err(Error::bad_request(format!(
            "{kind} id prefix {} is ambiguous: it matches {} and {} at least; give more digits",
            quoted(&prefix),
            a.short(),
            b.short()
        ))),
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
