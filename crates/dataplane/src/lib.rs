//! weft's Linux data plane. [`model`] says what a host should hold and what it holds, [`plan`]
//! turns the difference into operations (both pure), and [`kernel`] dumps and programs the
//! kernel over rtnetlink; [`simulated`] is the same kernel in memory, for tests without root,
//! and [`host`] is the [`Dataplane`] trait the agent drives either through.

pub mod host;
pub mod kernel;
pub mod model;
pub mod plan;
pub mod rules;
pub mod simulated;
pub mod switch;
pub mod wireguard;

pub use host::{Dataplane, SimulatedHost};
pub use kernel::{Kernel, KernelError};
pub use model::{
    ContainerInterface, Desired, Handover, IfAddr, Link, LinkKind, LocalEndpoint, Mac, NetworkDevices,
    Observed, Place, RemoteEndpoint, ServiceLink,
};
pub use plan::{Op, plan};
