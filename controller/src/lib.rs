//! weft-controller: a Raft member holding weft's registry.
//!
//! # Layout
//! - [`raft_types`]: the openraft type configuration;
//! - [`store`]: log, vote and snapshots in redb, fsynced before acknowledging;
//! - [`registry`]: weft-core's state machine under openraft, and the watch hub.

#![forbid(unsafe_code)]

pub mod raft_types;
pub mod registry;
pub mod store;
