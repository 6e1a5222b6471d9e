//! weft's CNI plugin, the pure part: what a runtime hands a plugin (the network
//! configuration on stdin, the `CNI_*` environment) turned into weft's attach request, and
//! weft's attachment turned into the result the runtime reads, in the configuration's CNI
//! version. The binary (`main.rs`) only reads, calls the host's weft-node, and prints.
//!
//! The spec: <https://www.cni.dev/docs/spec/>. What podman 4.3 really passes is recorded in
//! the shared RUNTIMES.md; decision record 0003 has the choices made here.

pub mod conf;
pub mod error;
pub mod result;

pub use conf::{Invocation, NetConf};
pub use error::CniError;

/// The CNI versions weft-cni answers in: the configuration's own.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Where weft-node serves its attach API unless the configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/weft/agent.sock";

/// Whether `version` is at least `floor` (both "major.minor.patch").
pub fn at_least(version: &str, floor: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(version) >= parse(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert!(at_least("1.0.0", "0.4.0"));
        assert!(at_least("0.10.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(at_least("1.1.0", "1.1.0"));
    }
}
