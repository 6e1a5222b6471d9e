//! weft-node, the host agent: registers the host with the controllers, follows the registry's
//! watch stream into a local [`mirror`], computes what the kernel should hold ([`desired`],
//! pure) and has `weft-dataplane` plan and apply the difference; serves the local attach API
//! ([`service`]) that plugs containers in.

pub mod agent;
pub mod attachments;
pub mod controllers;
pub mod desired;
pub mod docker;
pub mod mirror;
pub mod publishing;
pub mod sandboxes;
pub mod service;
pub mod tunnel;
