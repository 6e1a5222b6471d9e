//! Changes to the registry, as watchers receive them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{ClusterConfig, Endpoint, Network, Node};

/// One change, stamped with the revision of the command that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Configured(ClusterConfig),
    NetworkCreated(Network),
    NetworkRemoved(Network),
    /// Shared with the registry: events cost no copies of the records they carry.
    EndpointCreated(Arc<Endpoint>),
    EndpointRemoved(Arc<Endpoint>),
    /// Its host reported a problem programming it, or that one is solved.
    EndpointUpdated(Arc<Endpoint>),
    /// First registration or a changed one.
    NodeRegistered(Node),
    NodeStatusChanged(Node),
    NodeRemoved(Node),
    /// Renamed (the only change a network takes).
    NetworkUpdated(Network),
}
