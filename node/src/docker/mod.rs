//! weft as a Docker network and IPAM driver (decision record 0002): dockerd on every host, no
//! swarm, containers on weft networks.
//!
//! # Layout
//! - [`protocol`]: the remote driver and IPAM messages (pure, serde);
//! - [`server`]: the plugin socket dockerd calls;
//! - [`api`]: what the agent asks dockerd's own API (names it never sends a plugin);
//! - [`bindings`]: Docker's ids against weft's, on disk, and the sweep that settles what
//!   Docker dropped without a call (pure);
//! - [`pairing`]: which IPv4 request an IPv6 request of Docker's belongs to (pure);
//! - what each call does lives with the agent (`crate::agent`'s Docker part).

pub mod api;
pub mod bindings;
pub mod pairing;
pub mod protocol;
pub mod server;
