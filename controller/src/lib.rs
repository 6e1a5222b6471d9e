//! weft-controller: a Raft member holding weft's registry.
//!
//! # Layout
//! - [`raft_types`]: the openraft type configuration;
//! - [`store`]: log, vote and snapshots in redb, fsynced before acknowledging;
//! - [`registry`]: weft-core's state machine under openraft, and the watch hub;
//! - [`raft_network`]: Raft RPCs between members over gRPC, and forwarding to the leader;
//! - [`batcher`]: gathers proposals into Raft entries;
//! - [`cluster`]: proposing writes and linearizable reads with deadlines;
//! - [`liveness`]: heartbeats and marking silent hosts down;
//! - [`api`]: the public gRPC services;
//! - [`watch`]: the watch stream, one shared encoding of each snapshot and change for every watcher;
//! - [`manifest`]: the bootstrap manifest;
//! - [`metrics`]: Prometheus metrics and the request-counting layer;
//! - [`server`]: assembles a member and runs it.

#![forbid(unsafe_code)]

pub mod api;
pub mod batcher;
pub mod cluster;
pub mod join;
pub mod liveness;
pub mod manifest;
pub mod metrics;
pub mod raft_network;
pub mod raft_types;
pub mod registry;
pub mod server;
pub mod store;
pub mod watch;
