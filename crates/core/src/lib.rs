//! weft's pure domain core: validation, IPAM, VNI allocation and the replicated state machine.
//!
//! Nothing here does I/O, reads a clock or spawns a task: time arrives inside
//! [`Proposal`]s, and everything is deterministic, so the controller can replicate [`State`]
//! through Raft and every replica computes the same allocations.
//!
//! # Layout
//! - [`cidr`]: CIDR blocks, both families as `u128` offsets;
//! - [`ranges`]: interval sets, the structure under every allocator (O(log n) operations);
//! - [`ipam`]: one subnet's gateway, aux addresses, ip range and static requests;
//! - [`validate`] and [`options`]: names, labels and driver options users send;
//! - [`model`]: networks, endpoints, nodes and the cluster configuration;
//! - [`ports`]: published ports, from `-p` specs to the mappings the registry records;
//! - [`command`] and [`event`]: what the state machine is asked and what changed;
//! - [`requests`]: client request ids, so a retried write answers what its first attempt did;
//! - [`state`]: the state machine itself, snapshots and invariant checks.

//! # Panics
//!
//! None on input: every request is checked and refused with an [`Error`]. A few
//! `unreachable!` in [`state`] mark invariants established a few lines before them (an id
//! resolved, then looked up); reaching one means a bug in weft, and a replica must stop rather
//! than apply the rest of a command to a registry it no longer understands and diverge from
//! the others (fail-stop). The workspace denies `unwrap` and `expect`, so each such place says
//! which invariant it relies on.

#![forbid(unsafe_code)]

pub mod calendar;
pub mod cidr;
pub mod command;
pub mod error;
pub mod event;
pub mod ipam;
pub mod model;
pub mod options;
pub mod ports;
pub mod ranges;
pub mod requests;
pub mod state;
pub mod validate;

pub use cidr::{Cidr, Family};
pub use command::{
    Applied, Command, EndpointRef, EndpointRequest, LabelFilter, NetworkRequest, NodeRequest, Proposal,
    PruneFilter, Response,
};
pub use error::{Error, ErrorKind, Result};
pub use event::{Event, EventKind};
pub use ipam::SubnetRequest;
pub use model::{
    AddressPool, ClusterConfig, Endpoint, Id, JoinToken, MacAddr, Network, Node, NodeStatus, SubnetConfig,
    TokenRole,
};
pub use options::NetworkSettings;
pub use ports::{PortProtocol, PortSpec, PublishedPort};
pub use state::{SnapshotError, SnapshotView, State};
