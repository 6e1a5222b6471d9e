//! Address management inside one subnet: the gateway, auxiliary addresses, the dynamic range
//! and static requests, with lowest-free reuse of released addresses.
//!
//! Everything runs on [`FreeRanges`], so allocating, allocating a given address and releasing
//! each cost O(log fragments) and never a walk over allocated addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cidr::{Cidr, Family, to_u128};
use crate::error::{Error, Result};
use crate::model::SubnetConfig;
use crate::ranges::FreeRanges;
use crate::validate;

/// What a user asked for one family: every field optional (Docker's `--subnet`, `--ip-range`,
/// `--gateway`, `--aux-address`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRequest {
    /// `None` carves one from the cluster's pools.
    pub subnet: Option<Cidr>,
    pub ip_range: Option<Cidr>,
    pub gateway: Option<IpAddr>,
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

/// The host addresses of a subnet: for IPv4 all but the network and broadcast addresses, for
/// IPv6 all but the subnet-router anycast address (host bits zero).
pub fn usable_range(subnet: &Cidr) -> Result<(u128, u128)> {
    match subnet.family() {
        Family::V4 if subnet.prefix() <= 30 => Ok((subnet.first() + 1, subnet.last() - 1)),
        Family::V6 if subnet.prefix() <= 126 => Ok((subnet.first() + 1, subnet.last())),
        family => Err(Error::invalid(
            "subnet",
            subnet,
            format_args!(
                "an {family} subnet needs room for a gateway and an endpoint: use a prefix length of at most /{}",
                if family == Family::V4 { 30 } else { 126 }
            ),
        )),
    }
}

impl SubnetRequest {
    /// Resolves the request against the subnet chosen for it (the requested one or a carved
    /// one): checks the range, gateway and aux addresses lie inside it and do not collide.
    pub fn resolve(&self, subnet: Cidr) -> Result<SubnetConfig> {
        let family = subnet.family();
        let (lo, hi) = usable_range(&subnet)?;
        let host_address = |what: &str, addr: IpAddr| -> Result<u128> {
            if !subnet.contains(addr) {
                return Err(Error::invalid(
                    what,
                    addr,
                    format_args!("it must lie inside the subnet {subnet}"),
                ));
            }
            let value = to_u128(addr);
            if value < lo || value > hi {
                return Err(Error::invalid(
                    what,
                    addr,
                    format_args!(
                        "it is the {} address of {subnet}, which cannot be assigned",
                        reserved_kind(family, value, &subnet)
                    ),
                ));
            }
            Ok(value)
        };
        if let Some(range) = self.ip_range {
            if !subnet.contains_cidr(&range) {
                return Err(Error::invalid(
                    "ip range",
                    range,
                    format_args!("it must lie inside the subnet {subnet}"),
                ));
            }
            let (rlo, rhi) = (range.first().max(lo), range.last().min(hi));
            if rlo > rhi {
                return Err(Error::invalid("ip range", range, "it holds no assignable address"));
            }
        }
        let gateway = match self.gateway {
            Some(gw) => {
                host_address("gateway", gw)?;
                gw
            }
            None => subnet.addr_at(lo),
        };
        if self.aux_addresses.len() > validate::MAX_MAP_ENTRIES {
            return Err(Error::bad_request(format!(
                "too many auxiliary addresses: {} given, at most {} allowed",
                self.aux_addresses.len(),
                validate::MAX_MAP_ENTRIES
            )));
        }
        let mut seen: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (name, addr) in &self.aux_addresses {
            validate::dns_name("auxiliary address name", name)?;
            host_address(&format!("auxiliary address {name}"), *addr)?;
            if *addr == gateway {
                return Err(Error::invalid(
                    &format!("auxiliary address {name}"),
                    addr,
                    "it is the network's gateway",
                ));
            }
            if let Some(other) = seen.insert(*addr, name) {
                return Err(Error::invalid(
                    &format!("auxiliary address {name}"),
                    addr,
                    format_args!("it is already reserved as {other:?}"),
                ));
            }
        }
        Ok(SubnetConfig {
            subnet,
            ip_range: self.ip_range,
            gateway,
            aux_addresses: self.aux_addresses.clone(),
        })
    }
}

fn reserved_kind(family: Family, value: u128, subnet: &Cidr) -> &'static str {
    match family {
        Family::V4 if value == subnet.last() => "broadcast",
        Family::V4 => "network",
        Family::V6 => "subnet-router anycast",
    }
}

/// Hands out one subnet's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetAllocator {
    subnet: Cidr,
    /// Dynamic addresses come from here: the ip range clipped to the usable addresses.
    dynamic: (u128, u128),
    /// Free usable addresses of the whole subnet (static requests may lie outside the range).
    free: FreeRanges,
    /// How many addresses the dynamic range can hand out in all, for exhaustion messages.
    dynamic_capacity: u128,
    /// Whether an ip range narrows the dynamic addresses (exhaustion messages name it).
    has_ip_range: bool,
}

impl SubnetAllocator {
    /// An allocator with the gateway and aux addresses already taken. `config` comes from
    /// [`SubnetRequest::resolve`].
    pub fn new(config: &SubnetConfig) -> Result<SubnetAllocator> {
        let (lo, hi) = usable_range(&config.subnet)?;
        let dynamic = match config.ip_range {
            Some(range) => (range.first().max(lo), range.last().min(hi)),
            None => (lo, hi),
        };
        let mut free = FreeRanges::new(lo, hi);
        for reserved in std::iter::once(&config.gateway).chain(config.aux_addresses.values()) {
            free.take(to_u128(*reserved));
        }
        let dynamic_capacity = free.free_within(dynamic.0, dynamic.1);
        Ok(SubnetAllocator {
            subnet: config.subnet,
            dynamic,
            free,
            dynamic_capacity,
            has_ip_range: config.ip_range.is_some(),
        })
    }

    /// The lowest free address of the dynamic range.
    pub fn allocate(&mut self, network: &str) -> Result<IpAddr> {
        match self.free.take_lowest_in(self.dynamic.0, self.dynamic.1) {
            Some(value) => Ok(self.subnet.addr_at(value)),
            None => Err(Error::exhausted(format!(
                "network {network:?} has no free {} address: {}{} holds {} assignable addresses and all are in use",
                self.subnet.family(),
                self.subnet,
                if self.has_ip_range {
                    format!(
                        " (ip range {}-{})",
                        self.subnet.addr_at(self.dynamic.0),
                        self.subnet.addr_at(self.dynamic.1)
                    )
                } else {
                    String::new()
                },
                self.dynamic_capacity
            ))),
        }
    }

    /// Takes a specific address (`--ip`). It may lie outside the ip range but must be a free
    /// host address of the subnet.
    pub fn allocate_static(&mut self, network: &str, addr: IpAddr, config: &SubnetConfig) -> Result<()> {
        if !self.subnet.contains(addr) {
            return Err(Error::invalid(
                "address",
                addr,
                format_args!("it is not in network {network:?}'s subnet {}", self.subnet),
            ));
        }
        let value = to_u128(addr);
        let (lo, hi) = usable_range(&self.subnet)?;
        if value < lo || value > hi {
            return Err(Error::invalid(
                "address",
                addr,
                format_args!(
                    "it is the {} address of {}, which cannot be assigned",
                    reserved_kind(self.subnet.family(), value, &self.subnet),
                    self.subnet
                ),
            ));
        }
        if self.free.take(value) {
            return Ok(());
        }
        if addr == config.gateway {
            return Err(Error::already_exists(
                "address",
                addr,
                format!("address {addr} is the gateway of network {network:?}"),
            ));
        }
        if let Some((name, _)) = config.aux_addresses.iter().find(|(_, a)| **a == addr) {
            return Err(Error::already_exists(
                "address",
                addr,
                format!("address {addr} is reserved as auxiliary address {name:?} on network {network:?}"),
            ));
        }
        Err(Error::already_exists(
            "address",
            addr,
            format!("address {addr} is already in use on network {network:?}"),
        ))
    }

    /// Gives an address back; false when it was not allocated.
    pub fn release(&mut self, addr: IpAddr) -> bool {
        self.subnet.contains(addr) && self.free.release(to_u128(addr))
    }

    pub fn is_free(&self, addr: IpAddr) -> bool {
        self.subnet.contains(addr) && self.free.is_free(to_u128(addr))
    }

    /// Free addresses left in the dynamic range.
    pub fn dynamic_free(&self) -> u128 {
        self.free.free_within(self.dynamic.0, self.dynamic.1)
    }

    /// Free host addresses in the whole subnet.
    pub fn free_count(&self) -> u128 {
        self.free.free_count()
    }

    pub fn dynamic_capacity(&self) -> u128 {
        self.dynamic_capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn alloc(req: &SubnetRequest, subnet: &str) -> (SubnetConfig, SubnetAllocator) {
        let config = req.resolve(cidr(subnet)).unwrap();
        let allocator = SubnetAllocator::new(&config).unwrap();
        (config, allocator)
    }

    #[test]
    fn gateway_is_the_first_usable_address_and_never_handed_out() {
        let (config, mut a) = alloc(&SubnetRequest::default(), "10.0.0.0/24");
        assert_eq!(config.gateway, ip("10.0.0.1"));
        assert_eq!(a.allocate("n").unwrap(), ip("10.0.0.2"));
        assert_eq!(a.dynamic_capacity(), 253);
    }

    #[test]
    fn explicit_gateway_and_aux_addresses_are_reserved() {
        let req = SubnetRequest {
            gateway: Some(ip("10.0.0.254")),
            aux_addresses: [("router".to_string(), ip("10.0.0.1")), ("dns".to_string(), ip("10.0.0.3"))]
                .into(),
            ..SubnetRequest::default()
        };
        let (config, mut a) = alloc(&req, "10.0.0.0/24");
        assert_eq!(a.allocate("n").unwrap(), ip("10.0.0.2"));
        assert_eq!(a.allocate("n").unwrap(), ip("10.0.0.4"));
        let err = a.allocate_static("n", ip("10.0.0.3"), &config).unwrap_err();
        assert!(err.message().contains("auxiliary address \"dns\""), "{err}");
        let err = a.allocate_static("n", ip("10.0.0.254"), &config).unwrap_err();
        assert!(err.message().contains("gateway"), "{err}");
    }

    #[test]
    fn ip_range_bounds_dynamic_addresses_but_not_static_ones() {
        let req = SubnetRequest { ip_range: Some(cidr("10.0.0.128/30")), ..SubnetRequest::default() };
        let (config, mut a) = alloc(&req, "10.0.0.0/24");
        assert_eq!(a.dynamic_capacity(), 4);
        for expect in ["10.0.0.128", "10.0.0.129", "10.0.0.130", "10.0.0.131"] {
            assert_eq!(a.allocate("blue").unwrap(), ip(expect));
        }
        let err = a.allocate("blue").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Exhausted);
        assert!(err.message().contains("\"blue\""), "{err}");
        assert!(err.message().contains("ip range 10.0.0.128-10.0.0.131"), "{err}");
        assert!(err.message().contains("4 assignable"), "{err}");
        a.allocate_static("blue", ip("10.0.0.7"), &config).unwrap();
        assert!(!a.is_free(ip("10.0.0.7")));
    }

    #[test]
    fn released_addresses_are_reused_lowest_first() {
        let (_, mut a) = alloc(&SubnetRequest::default(), "10.0.0.0/29");
        let got: Vec<IpAddr> = (0..5).map(|_| a.allocate("n").unwrap()).collect();
        assert_eq!(got.last(), Some(&ip("10.0.0.6")));
        assert!(a.allocate("n").is_err());
        assert!(a.release(ip("10.0.0.4")));
        assert!(a.release(ip("10.0.0.3")));
        assert!(!a.release(ip("10.0.0.3")));
        assert_eq!(a.allocate("n").unwrap(), ip("10.0.0.3"));
        assert_eq!(a.allocate("n").unwrap(), ip("10.0.0.4"));
    }

    #[test]
    fn static_requests_outside_or_reserved_are_refused() {
        let (config, mut a) = alloc(&SubnetRequest::default(), "10.0.0.0/24");
        let cases = [
            ("10.0.1.5", "not in network"),
            ("10.0.0.0", "network address"),
            ("10.0.0.255", "broadcast address"),
            ("fd00::5", "not in network"),
        ];
        for (addr, expect) in cases {
            let err = a.allocate_static("n", ip(addr), &config).unwrap_err();
            assert!(err.message().contains(expect), "{addr}: {err}");
        }
        a.allocate_static("n", ip("10.0.0.9"), &config).unwrap();
        let err = a.allocate_static("n", ip("10.0.0.9"), &config).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::AlreadyExists);
    }

    #[test]
    fn requests_are_checked_against_the_subnet() {
        let subnet = cidr("10.0.0.0/24");
        let bad = [
            (SubnetRequest { gateway: Some(ip("10.0.1.1")), ..Default::default() }, "inside the subnet"),
            (SubnetRequest { gateway: Some(ip("10.0.0.255")), ..Default::default() }, "broadcast"),
            (
                SubnetRequest { ip_range: Some(cidr("10.0.0.0/23")), ..Default::default() },
                "inside the subnet",
            ),
            (
                SubnetRequest { aux_addresses: [("gw".into(), ip("10.0.0.1"))].into(), ..Default::default() },
                "gateway",
            ),
            (
                SubnetRequest {
                    aux_addresses: [("a".into(), ip("10.0.0.9")), ("b".into(), ip("10.0.0.9"))].into(),
                    ..Default::default()
                },
                "already reserved as \"a\"",
            ),
            (
                SubnetRequest {
                    aux_addresses: [("bad name".into(), ip("10.0.0.9"))].into(),
                    ..Default::default()
                },
                "auxiliary address name",
            ),
        ];
        for (req, expect) in bad {
            let err = req.resolve(subnet).unwrap_err();
            assert!(err.message().contains(expect), "{req:?}: {err}");
        }
        assert!(SubnetRequest::default().resolve(cidr("10.0.0.0/31")).unwrap_err().message().contains("/30"));
    }

    #[test]
    fn ipv6_subnets_skip_only_the_anycast_address() {
        let (config, mut a) = alloc(&SubnetRequest::default(), "fd00:1::/64");
        assert_eq!(config.gateway, ip("fd00:1::1"));
        assert_eq!(a.allocate("n").unwrap(), ip("fd00:1::2"));
        a.allocate_static("n", ip("fd00:1::ffff:ffff:ffff:ffff"), &config).unwrap();
        assert_eq!(a.dynamic_capacity(), (1u128 << 64) - 2);
    }
}
