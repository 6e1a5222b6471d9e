//! The records of the registry: networks, endpoints, nodes and the cluster configuration.
//! These are the canonical data a snapshot carries; allocators and indexes are derived from
//! them (see [`crate::state`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cidr::{Cidr, Family};
use crate::error::{Error, Result};
use crate::options::{DERIVED_BRIDGE_PREFIX, NetworkSettings};
use crate::ports::PublishedPort;

/// A 256-bit identifier, printed as 64 lowercase hex digits like Docker's ids. Any unique prefix
/// names the object in requests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The 12-digit form `docker network ls` shows.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }

    /// The 64 lowercase hex digits, without going through the formatter (ids are printed and
    /// prefix-matched on hot paths).
    pub fn hex(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        out
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl FromStr for Id {
    type Err = Error;

    fn from_str(s: &str) -> Result<Id> {
        let rule = "an id is 64 hexadecimal digits";
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid("id", s, rule));
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| Error::invalid("id", s, rule))?;
        }
        Ok(Id(id))
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Docker's container MAC: `02:42` followed by the IPv4 address, so a container keeps its
    /// MAC across hosts and ARP caches stay valid when it moves.
    pub fn from_ipv4(ip: Ipv4Addr) -> MacAddr {
        let [a, b, c, d] = ip.octets();
        MacAddr([0x02, 0x42, a, b, c, d])
    }

    /// The IPv4 address this MAC was derived from, if it has the `02:42` prefix.
    pub fn derived_ipv4(&self) -> Option<Ipv4Addr> {
        let [p, q, a, b, c, d] = self.0;
        (p == 0x02 && q == 0x42).then(|| Ipv4Addr::new(a, b, c, d))
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    /// Six hex octets separated by ':' or '-'; must be a unicast address other than all zeros.
    fn from_str(s: &str) -> Result<MacAddr> {
        let rule = "expected six hex octets like 02:42:0a:00:00:02, unicast (lowest bit of the first octet clear) and not all zeros";
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(Error::invalid("MAC address", s, rule));
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(Error::invalid("MAC address", s, rule));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| Error::invalid("MAC address", s, rule))?;
        }
        let mac = MacAddr(mac);
        if !mac.is_unicast() || mac.0 == [0; 6] {
            return Err(Error::invalid("MAC address", s, rule));
        }
        Ok(mac)
    }
}

/// One address family's IPAM of a network: Docker's `IPAM.Config` entry, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetConfig {
    pub subnet: Cidr,
    /// Where dynamic addresses come from; `None` is the whole subnet.
    pub ip_range: Option<Cidr>,
    pub gateway: IpAddr,
    /// Reserved addresses by name; never handed out.
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

/// A network, as created. Nothing about it changes after creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: Id,
    pub name: String,
    pub created_ms: u64,
    pub created_revision: u64,
    pub ipv4: SubnetConfig,
    pub ipv6: Option<SubnetConfig>,
    pub internal: bool,
    pub attachable: bool,
    /// Options as the user gave them; [`Network::settings`] is their meaning.
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub vni: u32,
    pub settings: NetworkSettings,
}

impl Network {
    /// Always "overlay": the only driver weft has.
    pub const DRIVER: &'static str = "overlay";

    /// The bridge interface name used on every host.
    pub fn bridge_name(&self) -> String {
        self.settings.bridge_name.clone().unwrap_or_else(|| format!("{DERIVED_BRIDGE_PREFIX}{}", self.vni))
    }

    /// The subnet config of one family.
    pub fn subnet(&self, family: Family) -> Option<&SubnetConfig> {
        match family {
            Family::V4 => Some(&self.ipv4),
            Family::V6 => self.ipv6.as_ref(),
        }
    }
}

/// One container's interface on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: Id,
    pub network: Id,
    /// Name of the host the container lives on.
    pub node: String,
    pub container_id: String,
    pub container_name: String,
    pub aliases: Vec<String>,
    pub mac: MacAddr,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub created_ms: u64,
    pub created_revision: u64,
    /// What its host reported it could not program (`None`: programmed, or not yet reported).
    pub problem: Option<String>,
    /// Host ports published to this container (`-p`), on its host.
    pub ports: Vec<PublishedPort>,
    /// The revision of its latest change: its creation's until it is renamed, publishes
    /// ports or its host reports a problem. Whoever saw the endpoint at this revision or later
    /// has seen it as it is.
    pub modified_revision: u64,
}

/// Whether a host is heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    Up,
    /// Missed its heartbeats; its endpoints are kept.
    Down,
}

/// A host running weft-node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: Id,
    pub name: String,
    pub underlay: IpAddr,
    pub underlay_mtu: u32,
    /// Base64 WireGuard public key, when the host has WireGuard.
    pub wireguard_public_key: Option<String>,
    pub wireguard_port: u16,
    /// The host's address in the WireGuard mesh, from the cluster tunnel pool.
    pub tunnel_address: IpAddr,
    pub status: NodeStatus,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    /// How the host runs WireGuard ("kernel", "userspace (wireguard-go)", "off", or why it
    /// cannot), as its agent reported it.
    pub wireguard_backend: String,
    pub registered_ms: u64,
    pub status_changed_ms: u64,
}

/// Who a join token lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenRole {
    /// A host's agent, which gets a `node:NAME` certificate.
    Node,
    /// A new controller member, which gets a `controller:ID` certificate.
    Controller,
}

/// A join token: presented with a certificate request by a host or controller joining the
/// cluster. Only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// 16 lowercase hex digits, the public half of the token (`weft1.<id>.<secret>`).
    pub id: String,
    /// SHA-256 of the secret, 64 lowercase hex digits.
    pub secret_sha256: String,
    pub role: TokenRole,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub revoked: bool,
}

/// A range default subnets of one prefix length are carved from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    pub base: Cidr,
    /// Prefix length of each carved subnet.
    pub size: u8,
}

impl AddressPool {
    pub fn new(base: Cidr, size: u8) -> Result<AddressPool> {
        let max = match base.family() {
            Family::V4 => 30,
            Family::V6 => 126,
        };
        if size < base.prefix() || size > max {
            return Err(Error::bad_request(format!(
                "invalid address pool {base} with subnet size /{size}: the size must be from /{} (the pool's own prefix) to /{max}",
                base.prefix()
            )));
        }
        Ok(AddressPool { base, size })
    }
}

impl fmt::Display for AddressPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (subnets of /{})", self.base, self.size)
    }
}

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Cluster-wide settings, set at bootstrap and changeable later within limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Names the cluster; seeds the ids the cluster hands out.
    pub cluster_id: String,
    pub ipv4_pools: Vec<AddressPool>,
    pub ipv6_pools: Vec<AddressPool>,
    pub vni_min: u32,
    pub vni_max: u32,
    pub vxlan_port: u16,
    /// Host tunnel addresses for the WireGuard mesh; reserved from network subnets.
    pub tunnel_pool: Cidr,
    pub encrypt_by_default: bool,
}

impl Default for ClusterConfig {
    /// Swarm's default: /24s out of 10.0.0.0/8, VNIs from 4096, VXLAN on 4789; IPv6 /64s out of
    /// a ULA /40; tunnel addresses from 10.255.0.0/16, which is kept out of network subnets.
    fn default() -> Self {
        let cidr = |s: &str| Cidr::from_str(s).unwrap_or_else(|e| unreachable!("default pool {s}: {e}"));
        ClusterConfig {
            cluster_id: String::new(),
            ipv4_pools: vec![AddressPool { base: cidr("10.0.0.0/8"), size: 24 }],
            ipv6_pools: vec![AddressPool { base: cidr("fd77:6566:7400::/40"), size: 64 }],
            vni_min: 4096,
            vni_max: MAX_VNI,
            vxlan_port: 4789,
            tunnel_pool: cidr("10.255.0.0/16"),
            encrypt_by_default: false,
        }
    }
}

impl ClusterConfig {
    /// Checks the settings on their own (not against existing networks or nodes).
    pub fn validate(&self) -> Result<()> {
        if self.cluster_id.len() > 128 || self.cluster_id.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(
                "cluster id",
                &self.cluster_id,
                "at most 128 characters without control characters",
            ));
        }
        for (family, pools) in [(Family::V4, &self.ipv4_pools), (Family::V6, &self.ipv6_pools)] {
            for pool in pools {
                if pool.base.family() != family {
                    return Err(Error::bad_request(format!("address pool {pool} is not {family}")));
                }
                AddressPool::new(pool.base, pool.size)?;
            }
        }
        if self.vni_min == 0 || self.vni_min > self.vni_max || self.vni_max > MAX_VNI {
            return Err(Error::bad_request(format!(
                "invalid VNI range {}-{}: VNIs are 1 to {MAX_VNI} and the minimum may not exceed the maximum",
                self.vni_min, self.vni_max
            )));
        }
        if self.vxlan_port == 0 {
            return Err(Error::invalid("VXLAN port", 0, "a UDP port is 1 to 65535"));
        }
        let usable = match self.tunnel_pool.family() {
            Family::V4 => self.tunnel_pool.prefix() <= 30,
            Family::V6 => self.tunnel_pool.prefix() <= 126,
        };
        if !usable {
            return Err(Error::invalid(
                "tunnel pool",
                self.tunnel_pool,
                "it must hold at least two host addresses (/30 or wider for IPv4, /126 for IPv6)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_64_hex_digits() {
        let id = Id([0xab; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Id>().unwrap(), id);
        assert_eq!(id.short(), "abababababab");
        assert!("xyz".parse::<Id>().is_err());
        assert!("g".repeat(64).parse::<Id>().is_err());
    }

    #[test]
    fn macs_derive_from_ipv4_like_docker() {
        let mac = MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(mac.to_string(), "02:42:0a:00:01:02");
        assert_eq!(mac.derived_ipv4(), Some(Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!("02-42-0A-00-01-02".parse::<MacAddr>().unwrap(), mac);
    }

    #[test]
    fn bad_macs_are_refused() {
        for bad in [
            "",
            "02:42:0a:00:01",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "02:42:0a:00:01:zz",
            "2:42:a:0:1:2",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.message().contains("unicast"), "{bad}: {err}");
        }
    }

    #[test]
    fn default_config_is_valid() {
        ClusterConfig::default().validate().unwrap();
    }

    #[test]
    fn config_rules() {
        let mut c = ClusterConfig { vni_min: 10, vni_max: 5, ..ClusterConfig::default() };
        assert!(c.validate().unwrap_err().message().contains("VNI range 10-5"));
        c = ClusterConfig { vni_max: MAX_VNI + 1, ..ClusterConfig::default() };
        assert!(c.validate().is_err());
        c = ClusterConfig::default();
        c.ipv4_pools[0].size = 7;
        assert!(c.validate().unwrap_err().message().contains("/8"));
        c = ClusterConfig::default();
        c.ipv4_pools = c.ipv6_pools.clone();
        assert!(c.validate().unwrap_err().message().contains("not IPv4"));
        c = ClusterConfig { tunnel_pool: "10.0.0.0/31".parse().unwrap(), ..ClusterConfig::default() };
        assert!(c.validate().is_err());
    }
}
