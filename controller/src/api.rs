//! The public gRPC services of `proto/weft/v1`, served by every controller.
//!
//! Writes become commands committed through Raft ([`Controller::propose`]); reads first make
//! sure this member has applied everything committed before them ([`Controller::linearizable`]).
//! Protobuf is converted at this edge only, with `weft_api::convert`. The watch stream is
//! served by [`crate::watch`].

use std::collections::BTreeMap;
use std::time::Instant;

use tonic::{Request, Response, Status};
use weft_api::convert;
use weft_api::pb;
use weft_api::pb::{
    cluster_service_server::ClusterService, endpoint_service_server::EndpointService,
    network_service_server::NetworkService, node_service_server::NodeService,
};
use weft_core::error::quoted;
use weft_core::{Command, Endpoint, Response as Done, State};
use weft_pki::{Caller, Role};

use crate::cluster::Controller;
use crate::forward::{AwaitApplied, Beat, MemberRole, MemberView, MembershipChange};
use crate::metrics::ClientDeadline;

/// A node's certificate lets it act for its own host only; admins act for any.
impl Controller {
    /// Proposes a write whose answer is an endpoint, and answers it as this member sees it
    /// once it has applied the write.
    async fn endpoint_written(
        &self,
        command: Command,
        until: Option<Instant>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        match self.propose_by(command, until).await? {
            (revision, Done::Endpoint(endpoint)) => self
                .caught_up_to(revision)
                .await?
                .registry
                .with_state(|state| endpoint_pb(state, &endpoint))
                .map(Response::new)
                .ok_or_else(|| Status::aborted("the endpoint's network was removed meanwhile")),
            (_, other) => Err(unexpected(&other)),
        }
    }

    /// Whether the network is one of the Docker plugin's provisional ones.
    fn is_provisional(&self, reference: &str) -> bool {
        self.registry.with_state(|state| {
            state.resolve_network(reference).is_ok_and(|n| provisional(&n.name, &n.labels))
        })
    }
}

/// The label of a network a host's Docker plugin created before Docker told it the name.
pub const PROVISIONAL_LABEL: &str = "weft.docker.provisional";

/// Labelled so, and still under its provisional name (`docker-…`): once renamed to the name
/// Docker gave it, a network is no longer a host's to manage.
fn provisional(name: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
    name.starts_with("docker-") && labels.get(PROVISIONAL_LABEL).is_some_and(|v| v == "true")
}

/// Hosts manage only the provisional networks of their Docker plugin (decision record 0002);
/// every other network is an administrator's.
fn provisional_only<T>(request: &Request<T>, is_provisional: bool, method: &str) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.role == Role::Node && !is_provisional => {
            let message = format!(
                "{caller} may call {method} only for the Docker plugin's provisional networks (named docker-…, label {PROVISIONAL_LABEL}=true)"
            );
            tracing::warn!(%caller, "permission denied: {message}");
            Err(Status::permission_denied(message))
        }
        _ => Ok(()),
    }
}

fn acting_for<T>(request: &Request<T>, host: &str, what: &str) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.role == Role::Node && caller.name != host => {
            let message = format!("{caller} may {what} for its own host only, not for {}", quoted(host));
            tracing::warn!(%caller, host, "permission denied: {message}");
            Err(Status::permission_denied(message))
        }
        _ => Ok(()),
    }
}

/// When the client stops waiting, as its `grpc-timeout` said on arrival.
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    request.extensions().get::<ClientDeadline>().map(|d| d.0)
}

fn invalid(err: weft_core::Error) -> Status {
    convert::status(&err)
}

fn unexpected(response: &Done) -> Status {
    Status::internal(format!("unexpected answer from the state machine: {response:?}"))
}

/// An endpoint in wire form, with its network looked up in `state`.
fn endpoint_pb(state: &State, endpoint: &Endpoint) -> Option<pb::Endpoint> {
    state.network(&endpoint.network).map(|n| convert::endpoint(endpoint, n))
}

// === networks ===

#[tonic::async_trait]
impl NetworkService for Controller {
    async fn create_network(
        &self,
        request: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let req = convert::network_request(request.get_ref()).map_err(invalid)?;
        provisional_only(&request, provisional(&req.name, &req.labels), "CreateNetwork")?;
        let command = Command::once(&request.get_ref().request_id, Command::CreateNetwork(req));
        match self.propose_by(command, deadline(&request)).await? {
            (_, Done::Network(network)) => Ok(Response::new(convert::network(&network, 0))),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn list_networks(
        &self,
        request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let filter = convert::NetworkFilter::from_pb(request.get_ref()).map_err(invalid)?;
        self.linearizable().await?;
        Ok(Response::new(self.registry.with_state(|state| {
            pb::ListNetworksResponse {
                networks: state
                    .networks()
                    .filter(|n| filter.matches(n))
                    .map(|n| convert::network(n, state.endpoint_count(&n.id)))
                    .collect(),
                revision: state.revision(),
            }
        })))
    }

    async fn inspect_network(
        &self,
        request: Request<pb::InspectNetworkRequest>,
    ) -> Result<Response<pb::InspectNetworkResponse>, Status> {
        self.linearizable().await?;
        let key = &request.get_ref().network;
        self.registry
            .with_state(|state| {
                let network = state.resolve_network(key)?;
                Ok(pb::InspectNetworkResponse {
                    network: Some(convert::network(network, state.endpoint_count(&network.id))),
                    endpoints: state
                        .network_endpoints(&network.id)
                        .map(|e| convert::endpoint(e, network))
                        .collect(),
                    revision: state.revision(),
                })
            })
            .map(Response::new)
            .map_err(invalid)
    }

    async fn remove_network(
        &self,
        request: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        let provisional = self.is_provisional(&request.get_ref().network) && !request.get_ref().force;
        provisional_only(&request, provisional, "RemoveNetwork")?;
        let until = deadline(&request);
        let req = request.into_inner();
        let command =
            Command::once(&req.request_id, Command::RemoveNetwork { network: req.network, force: req.force });
        match self.propose_by(command, until).await? {
            (revision, Done::NetworkRemoved { network, endpoints }) => {
                Ok(Response::new(pb::RemoveNetworkResponse {
                    removed_endpoints: endpoints.iter().map(|e| convert::endpoint(e, &network)).collect(),
                    network: Some(convert::network(&network, 0)),
                    revision,
                }))
            }
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn rename_network(
        &self,
        request: Request<pb::RenameNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        provisional_only(&request, self.is_provisional(&request.get_ref().network), "RenameNetwork")?;
        let until = deadline(&request);
        let req = request.into_inner();
        let command =
            Command::once(&req.request_id, Command::RenameNetwork { network: req.network, name: req.name });
        self.answer_network(command, until).await
    }

    async fn reshape_network(
        &self,
        request: Request<pb::ReshapeNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        provisional_only(&request, self.is_provisional(&request.get_ref().network), "ReshapeNetwork")?;
        let until = deadline(&request);
        let command = convert::network_reshape(request.get_ref()).map_err(invalid)?;
        self.answer_network(Command::once(&request.get_ref().request_id, command), until).await
    }

    async fn prune_networks(
        &self,
        request: Request<pb::PruneNetworksRequest>,
    ) -> Result<Response<pb::PruneNetworksResponse>, Status> {
        let filter = convert::prune_filter(request.get_ref()).map_err(invalid)?;
        let command = Command::once(&request.get_ref().request_id, Command::PruneNetworks(filter));
        match self.propose_by(command, deadline(&request)).await? {
            (revision, Done::Pruned(removed)) => Ok(Response::new(pb::PruneNetworksResponse {
                removed: removed.iter().map(|n| convert::network(n, 0)).collect(),
                revision,
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }
}

// === endpoints ===

#[tonic::async_trait]
impl EndpointService for Controller {
    async fn create_endpoint(
        &self,
        request: Request<pb::CreateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let req = convert::endpoint_request(request.get_ref()).map_err(invalid)?;
        let ports = convert::published_ports(&request.get_ref().ports).map_err(invalid)?;
        acting_for(&request, &req.node, "create endpoints")?;
        let command = Command::once(&request.get_ref().request_id, Command::create_endpoint(req, ports));
        self.endpoint_written(command, deadline(&request)).await
    }

    async fn remove_endpoint(
        &self,
        request: Request<pb::RemoveEndpointRequest>,
    ) -> Result<Response<pb::RemoveEndpointResponse>, Status> {
        let reference = convert::endpoint_ref(request.get_ref()).map_err(invalid)?;
        match self.acting_for_endpoint(&request, &reference, "remove endpoints") {
            // Gone already: a retry whose first attempt removed it gets that attempt's answer
            // from the request id; anything else gets NotFound from the registry.
            Err(status) if status.code() == tonic::Code::NotFound => {}
            checked => checked?,
        }
        let command = Command::once(&request.get_ref().request_id, Command::RemoveEndpoint(reference));
        match self.propose_by(command, deadline(&request)).await? {
            (revision, Done::EndpointRemoved(endpoint)) => Ok(Response::new(pb::RemoveEndpointResponse {
                endpoint: self
                    .caught_up_to(revision)
                    .await?
                    .registry
                    .with_state(|state| endpoint_pb(state, &endpoint)),
                revision,
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn publish_ports(
        &self,
        request: Request<pb::PublishPortsRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let req = request.get_ref();
        let endpoint = weft_core::EndpointRef::Id(req.endpoint_id.clone());
        let ports = convert::published_ports(&req.ports).map_err(invalid)?;
        self.acting_for_endpoint(&request, &endpoint, "publish ports")?;
        let command = Command::once(&req.request_id, Command::PublishPorts { endpoint, ports });
        self.endpoint_written(command, deadline(&request)).await
    }

    async fn update_endpoint(
        &self,
        request: Request<pb::UpdateEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let command = convert::endpoint_update(request.get_ref()).map_err(invalid)?;
        if let Command::UpdateEndpoint { endpoint, .. } = &command {
            self.acting_for_endpoint(&request, endpoint, "update endpoints")?;
        }
        let command = Command::once(&request.get_ref().request_id, command);
        self.endpoint_written(command, deadline(&request)).await
    }

    async fn list_endpoints(
        &self,
        request: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        self.linearizable().await?;
        let req = request.get_ref();
        self.registry
            .with_state(|state| {
                let network = match req.network.as_str() {
                    "" => None,
                    key => Some(state.resolve_network(key)?.id),
                };
                let node = (!req.node.is_empty()).then_some(req.node.as_str());
                if let Some(name) = node {
                    state.registered_node(name)?;
                }
                let endpoints = match (network, node) {
                    (Some(id), _) => {
                        state.network_endpoints(&id).filter(|e| node.is_none_or(|n| e.node == n)).collect()
                    }
                    (None, Some(node)) => state.node_endpoints(node).collect(),
                    (None, None) => state.endpoints().collect::<Vec<_>>(),
                };
                Ok(pb::ListEndpointsResponse {
                    endpoints: endpoints.into_iter().filter_map(|e| endpoint_pb(state, e)).collect(),
                    revision: state.revision(),
                })
            })
            .map(Response::new)
            .map_err(invalid)
    }
}

// === nodes ===

#[tonic::async_trait]
impl NodeService for Controller {
    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = convert::node_request(request.get_ref()).map_err(invalid)?;
        acting_for(&request, &req.name, "register")?;
        match self.propose(Command::RegisterNode(req)).await? {
            (_, Done::Node(node)) => {
                let count = self.registry.with_state(|s| s.node_endpoints(&node.name).count());
                Ok(Response::new(convert::node(&node, count, 0)))
            }
            (_, other) => Err(unexpected(&other)),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        acting_for(&request, &request.get_ref().name, "heartbeat")?;
        let req = request.into_inner();
        let beat = Beat {
            name: req.name,
            applied_revision: req.applied_revision,
            problems: req.problems.into_iter().map(|p| (p.endpoint_id, p.reason)).collect(),
        };
        let answer = Controller::heartbeat(self, beat).await?;
        Ok(Response::new(pb::HeartbeatResponse {
            status: convert::node_status(answer.status).into(),
            revision: answer.revision,
            liveness_timeout_seconds: {
                // Whole seconds, rounded up so an agent never waits past the real timeout.
                let timeout = self.liveness.timeout();
                let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
                u32::try_from(seconds).unwrap_or(u32::MAX)
            },
        }))
    }

    async fn await_applied(
        &self,
        request: Request<pb::AwaitAppliedRequest>,
    ) -> Result<Response<pb::AwaitAppliedResponse>, Status> {
        let req = request.into_inner();
        let wait = AwaitApplied {
            network: req.network,
            revision: req.revision,
            except_node: req.except_node,
            timeout_ms: u64::from(req.timeout_ms),
            endpoint_id: req.endpoint_id.clone(),
        };
        let answer = Controller::await_applied(self, wait).await?;
        let endpoint = if req.endpoint_id.is_empty() {
            String::new()
        } else {
            format!(" (endpoint {})", &req.endpoint_id[..req.endpoint_id.len().min(12)])
        };
        if !answer.blocked.is_empty() {
            let reports: Vec<String> = answer
                .blocked
                .iter()
                .map(|(host, why)| format!("host {host} cannot program it: {why}"))
                .collect();
            return Err(Status::failed_precondition(format!(
                "revision {}{endpoint} is not programmed everywhere: {}",
                req.revision,
                reports.join("; ")
            )));
        }
        if !answer.behind.is_empty() {
            return Err(Status::deadline_exceeded(format!(
                "hosts {} have not programmed revision {}{endpoint} yet (heartbeats report what each host applied)",
                answer.behind.join(", "),
                req.revision
            )));
        }
        Ok(Response::new(pb::AwaitAppliedResponse { nodes: answer.waited_for }))
    }

    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.linearizable().await?;
        let applied = self.applied_revisions().await;
        Ok(Response::new(self.registry.with_state(|state| {
            pb::ListNodesResponse {
                nodes: state
                    .nodes()
                    .map(|n| {
                        let applied = applied.get(&n.name).copied().unwrap_or(0);
                        convert::node(n, state.node_endpoints(&n.name).count(), applied)
                    })
                    .collect(),
                revision: state.revision(),
            }
        })))
    }

    async fn inspect_node(
        &self,
        request: Request<pb::InspectNodeRequest>,
    ) -> Result<Response<pb::InspectNodeResponse>, Status> {
        self.linearizable().await?;
        let name = &request.get_ref().name;
        let applied = self.applied_revisions().await.get(name).copied().unwrap_or(0);
        self.registry
            .with_state(|state| {
                let node = state.registered_node(name)?;
                let endpoints: Vec<pb::Endpoint> =
                    state.node_endpoints(name).filter_map(|e| endpoint_pb(state, e)).collect();
                Ok(pb::InspectNodeResponse {
                    node: Some(convert::node(node, endpoints.len(), applied)),
                    endpoints,
                    revision: state.revision(),
                })
            })
            .map(Response::new)
            .map_err(invalid)
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let until = deadline(&request);
        let req = request.into_inner();
        let command = Command::once(&req.request_id, Command::RemoveNode { name: req.name });
        match self.propose_by(command, until).await? {
            (revision, Done::NodeRemoved { node, endpoints }) => Ok(Response::new(pb::RemoveNodeResponse {
                node: Some(convert::node(&node, 0, 0)),
                removed_endpoints: self
                    .caught_up_to(revision)
                    .await?
                    .registry
                    .with_state(|state| endpoints.iter().filter_map(|e| endpoint_pb(state, e)).collect()),
                revision,
            })),
            (_, other) => Err(unexpected(&other)),
        }
    }
}

// === cluster ===

fn member_pb(member: &MemberView) -> pb::Member {
    let role = match member.role {
        MemberRole::Leader => pb::MemberRole::Leader,
        MemberRole::Follower => pb::MemberRole::Follower,
        MemberRole::Candidate => pb::MemberRole::Candidate,
        MemberRole::Learner => pb::MemberRole::Learner,
    };
    pb::Member {
        id: member.id,
        address: member.address.clone(),
        role: role.into(),
        voter: member.voter,
        reachable: member.reachable,
        matched_index: member.matched_index,
    }
}

impl Controller {
    /// For a host's agent: the endpoint must be on its own host (NotFound when there is no
    /// such endpoint). Other callers may act on any.
    fn acting_for_endpoint<T>(
        &self,
        request: &Request<T>,
        endpoint: &weft_core::EndpointRef,
        what: &str,
    ) -> Result<(), Status> {
        if !request.extensions().get::<Caller>().is_some_and(|c| c.role == Role::Node) {
            return Ok(());
        }
        let host = self.registry.with_state(|state| state.find_endpoint(endpoint).map(|e| e.node.clone()));
        acting_for(request, &host.map_err(invalid)?, what)
    }

    /// Proposes a command whose answer is a network, and answers it as this member shows it
    /// once it has applied the command.
    async fn answer_network(
        &self,
        command: Command,
        until: Option<std::time::Instant>,
    ) -> Result<Response<pb::Network>, Status> {
        match self.propose_by(command, until).await? {
            (revision, Done::Network(network)) => Ok(Response::new(
                self.caught_up_to(revision)
                    .await?
                    .registry
                    .with_state(|state| convert::network(&network, state.endpoint_count(&network.id))),
            )),
            (_, other) => Err(unexpected(&other)),
        }
    }

    /// This member, once its registry has applied `revision`. A write forwarded to the leader
    /// is answered before this member (a follower) may have applied it, and answers that
    /// look up the endpoint's network here need it: a create answered Aborted ("network
    /// removed") when the network's own creation had not reached this member yet.
    async fn caught_up_to(&self, revision: u64) -> Result<&Controller, Status> {
        // The write is committed: this member applies it as soon as it learns so, which the
        // leader tells every member at once. (A read-index round through the leader, as for a
        // linearizable read, cost every write forwarded from a follower two more round trips.)
        if self.registry.revision() < revision && !self.registry.reached(revision, self.request_timeout).await
        {
            return Err(Status::unavailable(format!(
                "revision {revision} is committed but this controller has not applied it within {:?}; \
                 it may be cut off from the leader: read it through another member",
                self.request_timeout
            )));
        }
        Ok(self)
    }

    /// What each host last reported applying, as the leader knows it (heartbeats go to the
    /// leader); empty when no leader answers, so every host shows 0, unknown.
    async fn applied_revisions(&self) -> BTreeMap<String, u64> {
        self.leader_view().await.map(|view| view.applied).unwrap_or_default()
    }

    /// The members as the leader sees them, and whose view that is (0: nobody's but this
    /// member's, with nothing known about the others' reachability).
    async fn members_view(&self) -> (Vec<pb::Member>, u64) {
        match self.leader_view().await {
            Some(view) => (view.members.iter().map(member_pb).collect(), view.leader),
            None => {
                let own = self.local_members().into_iter().map(|mut m| {
                    if m.id != self.id {
                        m.reachable = false;
                        m.matched_index = 0;
                    }
                    member_pb(&m)
                });
                (own.collect(), 0)
            }
        }
    }
}

#[tonic::async_trait]
impl ClusterService for Controller {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let leader_address = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let (revision, config) =
            self.registry.with_state(|s| (s.revision(), convert::cluster_config(s.config())));
        let (members, members_reported_by) = self.members_view().await;
        Ok(Response::new(pb::StatusResponse {
            cluster_id: config.cluster_id.clone(),
            member_id: self.id,
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_address,
            term: metrics.current_term,
            revision,
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            members,
            config: Some(config),
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
            members_reported_by,
            credential_expires: self.credential_expires_ms().map(convert::timestamp),
        }))
    }

    async fn list_members(
        &self,
        _request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let (members, members_reported_by) = self.members_view().await;
        Ok(Response::new(pb::ListMembersResponse { members, members_reported_by }))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let req = request.into_inner();
        if req.id == 0 || req.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "invalid member {} at {:?}: ids start at 1 and the address is ip:port, like 127.0.0.1:7001",
                req.id, req.address
            )));
        }
        self.change_membership(MembershipChange::Add { id: req.id, address: req.address }).await?;
        let (members, members_reported_by) = self.members_view().await;
        Ok(Response::new(pb::ListMembersResponse { members, members_reported_by }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let id = request.into_inner().id;
        self.change_membership(MembershipChange::Remove { id }).await?;
        let (members, members_reported_by) = self.members_view().await;
        Ok(Response::new(pb::ListMembersResponse { members, members_reported_by }))
    }
}
