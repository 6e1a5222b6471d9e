//! What a host's kernel should hold for weft ([`Desired`]) and what it was seen to hold
//! ([`Observed`]). Both are plain data: the registry side builds the first, a netlink dump the
//! second, and [`crate::plan`] compares them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An interface address with its prefix length, as `ip addr` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfAddr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl IfAddr {
    /// The subnet the address is on, as a CIDR: "10.0.1.0/24" for "10.0.1.1/24".
    pub fn network(&self) -> String {
        match self.ip {
            IpAddr::V4(v4) => {
                let mask =
                    if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix.min(32))) };
                format!("{}/{}", std::net::Ipv4Addr::from(u32::from(v4) & mask), self.prefix)
            }
            IpAddr::V6(v6) => {
                let mask =
                    if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix.min(128))) };
                format!("{}/{}", std::net::Ipv6Addr::from(u128::from(v6) & mask), self.prefix)
            }
        }
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// Every link weft creates carries an alias starting with this, so that weft removes only
/// what it made (a user-named bridge included) and adopts it again after a restart.
pub const ALIAS_PREFIX: &str = "weft ";

/// Every host-side veth weft creates is named with this prefix (and its container end, while
/// still in the host namespace, too).
pub const VETH_PREFIX: &str = "weftp";

/// The host-side veth of the endpoint created at registry revision `revision`.
pub fn veth_name(revision: u64) -> String {
    format!("{VETH_PREFIX}{revision:x}")
}

/// The alias of both ends of a network's gateway pair.
pub fn gateway_alias(network_id: &str) -> String {
    format!("{GATEWAY_ALIAS_PREFIX}{network_id}")
}

/// How [`gateway_alias`] begins.
pub const GATEWAY_ALIAS_PREFIX: &str = "weft gateway ";

/// The switch end of a network's gateway pair. Named like an endpoint's veth (whose names are
/// hexadecimal, so never this) so that a pair left unlabelled by a crash is known as weft's.
pub fn gateway_port_name(vni: u32) -> String {
    format!("{VETH_PREFIX}g{vni}")
}

/// A network's bridge, in the switch namespace.
pub fn switch_bridge_name(vni: u32) -> String {
    format!("weftb{vni}")
}

/// The alias of a network's bridge and VXLAN device.
pub fn network_alias(network_id: &str) -> String {
    format!("{ALIAS_PREFIX}network {network_id}")
}

/// The alias of an endpoint's host-side veth.
pub fn endpoint_alias(endpoint_id: &str) -> String {
    format!("{ALIAS_PREFIX}endpoint {endpoint_id}")
}

/// Everything weft wants in one host's kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Keyed by bridge name.
    pub networks: BTreeMap<String, NetworkDevices>,
    /// Addresses of the host's own services that containers reach through their gateway (the
    /// DNS address Docker's resolver forwards to), on a link of weft's.
    pub services: Option<ServiceLink>,
}

/// A link holding host-local service addresses, the same on every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLink {
    pub name: String,
    pub addresses: BTreeSet<IfAddr>,
}

/// The alias of the service link.
pub fn service_alias() -> String {
    format!("{ALIAS_PREFIX}services")
}

/// Where a link lives: the host's own network namespace, or the switch namespace weft keeps
/// beside it for the networks' bridges (decision 0004). Frames switched within a network never
/// enter the host namespace, so its firewall, conntrack and br_netfilter never see them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Place {
    #[default]
    Host,
    Switch,
}

/// One overlay network on one host. In the switch namespace: a bridge, the VXLAN device on
/// it, the local containers' veths and the gateway's port. In the host namespace: the other end
/// of that port, carrying the anycast gateway, through which the network reaches everything
/// else. And an entry for every container elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDevices {
    pub network_id: String,
    /// The network's interface in the host namespace: the gateway, named as users know the
    /// network's bridge (`weft4096`, or the name they chose).
    pub gateway: String,
    /// The gateway's other end, a port of the bridge.
    pub gateway_port: String,
    /// The bridge, in the switch namespace.
    pub bridge: String,
    pub vxlan: String,
    pub vni: u32,
    /// UDP port of the VXLAN device.
    pub port: u16,
    /// This host's VTEP (underlay) address.
    pub local_vtep: IpAddr,
    /// MTU of the bridge, the VXLAN device and every veth of the network.
    pub mtu: u32,
    /// The same on every host, so a container's gateway is wherever it lives.
    pub gateway_mac: Mac,
    pub gateway_addresses: BTreeSet<IfAddr>,
    /// Containers on this host, keyed by host-side veth name.
    pub local: BTreeMap<String, LocalEndpoint>,
    /// Containers on other hosts, keyed by MAC.
    pub remote: BTreeMap<Mac, RemoteEndpoint>,
}

impl NetworkDevices {
    /// The names of the network's own links: gateway, gateway port, bridge, VXLAN device.
    pub fn devices(&self) -> [&String; 4] {
        [&self.gateway, &self.gateway_port, &self.bridge, &self.vxlan]
    }
}

/// Who puts the container end of an endpoint's veth pair into the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Handover {
    /// weft moves it into `netns`, names it, gives it its MAC, addresses and routes.
    #[default]
    Weft,
    /// The container runtime (Docker's remote driver protocol): weft leaves the end in the
    /// host namespace, labelled ([`handover_alias`]) and named by
    /// [`crate::plan::container_end_name`], for the runtime to move, rename and address. Once
    /// it has, weft sees only the host end, which is all it keeps in line.
    Runtime,
}

/// The alias of a container end waiting in the host namespace for its runtime.
pub fn handover_alias(endpoint_id: &str) -> String {
    format!("{HANDOVER_ALIAS_PREFIX}{endpoint_id}")
}

/// How [`handover_alias`] begins.
pub const HANDOVER_ALIAS_PREFIX: &str = "weft handover ";

/// A container interface on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub endpoint_id: String,
    /// Host side of the veth pair, on the bridge.
    pub host_veth: String,
    /// The container's network namespace (a path such as `/run/netns/NAME` or
    /// `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// Name inside the container (`eth0`, …).
    pub ifname: String,
    pub mac: Mac,
    pub addresses: Vec<IfAddr>,
    /// Default routes to add inside the container (empty unless this is the container's
    /// first network).
    pub default_routes: Vec<IpAddr>,
    pub mtu: u32,
    /// Who hands the container end over; with [`Handover::Runtime`], `netns`, `ifname`,
    /// `addresses` and `default_routes` are the runtime's to apply.
    pub handover: Handover,
}

/// A container on another host, reached through that host's VTEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub mac: Mac,
    pub ips: Vec<IpAddr>,
    pub vtep: IpAddr,
}

/// What a link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Vxlan { vni: u32, port: u16, local: Option<IpAddr>, learning: bool, proxy: bool },
    Veth,
    Other(String),
}

/// A link as a dump shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub place: Place,
    pub kind: LinkKind,
    pub alias: Option<String>,
    pub master: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub mac: Option<Mac>,
    pub addresses: BTreeSet<IfAddr>,
}

impl Link {
    /// Made by weft: carries weft's alias, or is a veth with weft's name that never got it.
    /// The kernel takes no alias at creation, so an agent killed between creating a veth pair
    /// and labelling it leaves an unlabelled pair named like weft's (seen in the lifecycle
    /// tests); without this it would stay forever, taken for somebody else's.
    pub fn is_weft(&self) -> bool {
        self.alias.as_deref().is_some_and(|a| a.starts_with(ALIAS_PREFIX)) || self.is_unlabelled_weft_veth()
    }

    /// A veth named like weft's that was never labelled: half made, to be replaced.
    pub fn is_unlabelled_weft_veth(&self) -> bool {
        self.kind == LinkKind::Veth && self.alias.is_none() && self.name.starts_with(VETH_PREFIX)
    }
}

/// A container's interface as its namespace holds it, for checking an attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInterface {
    /// `None`: the namespace has no link of that name.
    pub link: Option<Link>,
    /// The gateways of the namespace's default routes (IPv4 and IPv6).
    pub default_gateways: Vec<IpAddr>,
}

/// What a host's kernel holds, as far as weft cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Keyed by name, from both namespaces (weft never gives two of its links one name).
    pub links: BTreeMap<String, Link>,
    /// weft's links in the host namespace that share a name with one in the switch namespace:
    /// left by an agent that predates the switch, to be removed.
    pub misplaced: Vec<Link>,
    /// Per VXLAN device: unicast FDB entries MAC → remote VTEP.
    pub fdb: BTreeMap<String, BTreeMap<Mac, IpAddr>>,
    /// Per VXLAN device: permanent neighbour entries IP → MAC.
    pub neighbours: BTreeMap<String, BTreeMap<IpAddr, Mac>>,
}
