//! weft-controller: a Raft member holding weft's registry.
//!
//! # Layout
//!
//! Layers that only point down; each module uses those listed before it.
//!
//! - bottom: [`raft_types`] (the openraft type configuration), [`wal`] (the Raft log in
//!   segment files, flushed before acknowledging), [`store`] (that log, and the vote and
//!   snapshots in redb), [`frames`] (watch messages encoded once),
//!   [`error`] (the controller's errors and their one mapping to gRPC statuses),
//!   [`metrics`] (Prometheus metrics, the request layer and client deadlines), [`liveness`]
//!   (hosts' heartbeats), [`signer`] (the CA a member signs joiners' credentials with),
//!   [`manifest`] (the bootstrap manifest);
//! - [`registry`]: weft-core's state machine under openraft, and the watch hub;
//! - [`forward`]: what members hand the leader (wire types) and [`forward::Peers`], the client;
//! - [`raft_network`]: openraft's RPCs to other members, over that client;
//! - [`batcher`]: gathers proposals into Raft entries, locally or on the leader;
//! - [`cluster`]: [`cluster::Controller`], proposing writes and linearizable reads with
//!   deadlines, and the leader's view;
//! - [`renewal`]: the member's own credential, renewed, picked up from its directory or
//!   warned about, and presented on new connections both ways;
//! - the gRPC services over it: [`api`] (the public API), [`join`] (tokens and joining),
//!   [`watch`] (the watch stream), [`raft_server`] (the internal service other members call);
//! - [`server`]: assembles a member and runs it.

#![forbid(unsafe_code)]

pub mod api;
pub mod batcher;
pub mod cluster;
pub mod error;
pub mod forward;
pub mod frames;
pub mod join;
pub mod liveness;
pub mod manifest;
pub mod metrics;
pub mod proposals;
pub mod raft_network;
pub mod raft_server;
pub mod raft_types;
pub mod registry;
pub mod renewal;
pub mod scope;
pub mod server;
pub mod signer;
pub mod store;
pub mod wal;
pub mod watch;

#[cfg(test)]
mod test_member;

/// Largest request a client may send: every public request is a few hundred bytes (names,
/// addresses, labels); anything near this is refused before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Largest Raft message between members. Catch-up AppendEntries carry up to 300 entries, each
/// a batch of proposals (tens of KB under load), and snapshot chunks are 3 MiB: gRPC's
/// default of 4 MiB would stall a lagging member for good.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
