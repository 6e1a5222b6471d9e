//! weft's public gRPC contract.
//!
//! # Layout
//! - [`pb`]: the code generated from `proto/weft/v1` (messages, clients, servers);
//! - [`convert`]: conversions between `pb` messages and `weft-core` types. Protobuf stays at this
//!   edge: the controller feeds core commands built here and answers with messages built here.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection;
//! - [`agent`] and [`agent_client`]: the node agent's local API and a client for its socket.

#![forbid(unsafe_code)]

pub mod agent_client;
pub mod convert;

/// A request id (see `proto/weft/v1`: a write and its retries share one) no other write
/// shares: `origin` (who writes, and about what), this instant and a counter, so two made in
/// the same instant differ. Callers keep `origin` short: the id has at most 128 characters.
pub fn request_id(origin: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{origin}/{nanos:x}.{count:x}")
}
#[doc(hidden)]
pub mod fuzzing;

/// Generated protobuf messages and gRPC services of the `weft.v1` package.
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("weft.v1");
}

/// Every `weft.v1` descriptor, encoded: hand it to a reflection service so `grpcurl` can list
/// and call weft's services without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("weft_v1_descriptor");

/// The node agent's local API (`weft.agent.v1`), served on a unix socket on every host.
#[allow(missing_debug_implementations, clippy::all)]
pub mod agent {
    tonic::include_proto!("weft.agent.v1");
}
