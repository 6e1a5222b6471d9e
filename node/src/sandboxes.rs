//! Where each local endpoint is plumbed: the view of the attachment records
//! ([`crate::attachments`]) that the pure [`crate::desired`] computation reads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub network_id: String,
    pub container_id: String,
    pub netns: PathBuf,
    /// The interface name inside the container.
    pub ifname: String,
    /// The container's default route goes through this network (its first one).
    pub default_route: bool,
    /// The runtime (Docker) moves the container end into the sandbox itself.
    #[serde(default)]
    pub runtime_handover: bool,
}

/// Local endpoints to plumb, by endpoint id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandboxes {
    pub endpoints: BTreeMap<String, Sandbox>,
}
