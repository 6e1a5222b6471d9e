//! weft's embedded DNS, as Docker's on user-defined networks but across hosts: container
//! names, aliases and `name.network` resolve for containers that share a network with the
//! target; everything else goes to the host's upstream resolvers.
//!
//! [`table`] (who may see which name) and [`answer`] (one packet in, one decision out) are
//! pure; [`server`] holds the sockets and the forwarder. Wire format from hickory-proto; the
//! server loop is weft's own, because answers depend on who asks (the source address picks
//! the networks in scope), which a zone catalog does not model.

pub mod answer;
#[doc(hidden)]
pub mod fuzzing;
pub mod server;
pub mod table;

pub use table::{EndpointRecord, Lookup, NameTable};
