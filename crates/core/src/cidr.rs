//! CIDR blocks and address arithmetic. Both families are handled as `u128` offsets so IPAM,
//! overlap detection and pool carving are written once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as an integer in its family's space.
pub fn to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`to_u128`]. For IPv4 only the low 32 bits count.
pub fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from((value & 0xffff_ffff) as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// A canonical CIDR block: host bits are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Builds a block, refusing a prefix longer than the family allows or set host bits (a
    /// common typo whose intent is ambiguous, so it is named rather than silently masked).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, Error> {
        let family = Family::of(addr);
        if prefix > family.bits() {
            return Err(Error::invalid(
                "CIDR",
                format_args!("{addr}/{prefix}"),
                format_args!("an {family} prefix length is 0 to {}", family.bits()),
            ));
        }
        let cidr = Cidr { addr, prefix };
        let masked = from_u128(family, cidr.first());
        if masked != addr {
            return Err(Error::invalid(
                "CIDR",
                format_args!("{addr}/{prefix}"),
                format_args!("host bits are set; did you mean {masked}/{prefix}?"),
            ));
        }
        Ok(cidr)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }

    fn host_mask(&self) -> u128 {
        let host_bits = u32::from(self.family().bits() - self.prefix);
        if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 }
    }

    /// The block's first address (the network address) as an integer.
    pub fn first(&self) -> u128 {
        to_u128(self.addr) & !self.host_mask()
    }

    /// The block's last address (IPv4 broadcast) as an integer.
    pub fn last(&self) -> u128 {
        self.first() | self.host_mask()
    }

    /// Number of addresses in the block, saturating at `u128::MAX` for `::/0`.
    pub fn size(&self) -> u128 {
        self.host_mask().saturating_add(1)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        Family::of(addr) == self.family() && (self.first()..=self.last()).contains(&to_u128(addr))
    }

    /// Whether `other` lies entirely inside this block.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.family() == self.family() && self.first() <= other.first() && other.last() <= self.last()
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        other.family() == self.family() && self.first() <= other.last() && other.first() <= self.last()
    }

    /// The address `offset` integers into this family's space (not relative to the block).
    pub fn addr_at(&self, value: u128) -> IpAddr {
        from_u128(self.family(), value)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Cidr, Error> {
        let rule = "expected an address and a prefix length, like 10.0.1.0/24 or fd00:1::/64";
        let (addr, prefix) = s.split_once('/').ok_or_else(|| Error::invalid("CIDR", s, rule))?;
        let addr: IpAddr = addr.parse().map_err(|_| Error::invalid("CIDR", s, rule))?;
        let prefix: u8 = prefix.parse().map_err(|_| Error::invalid("CIDR", s, rule))?;
        Cidr::new(addr, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonical_blocks() {
        let c: Cidr = "10.1.2.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.2.0/24");
        assert_eq!(c.size(), 256);
        assert_eq!(c.addr_at(c.last()), "10.1.2.255".parse::<IpAddr>().unwrap());
        let v6: Cidr = "fd00:1::/64".parse().unwrap();
        assert_eq!(v6.size(), 1u128 << 64);
        let all: Cidr = "::/0".parse().unwrap();
        assert_eq!(all.size(), u128::MAX);
    }

    #[test]
    fn host_bits_are_refused_with_the_canonical_form_suggested() {
        let err = "10.0.0.1/24".parse::<Cidr>().unwrap_err();
        assert!(err.message().contains("did you mean 10.0.0.0/24?"), "{err}");
    }

    #[test]
    fn malformed_blocks_name_the_rule() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "fd00::/129", "nope/8", "10.0.0.0/x", ""] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.message().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn containment_and_overlap_respect_families() {
        let a: Cidr = "10.0.0.0/16".parse().unwrap();
        let b: Cidr = "10.0.5.0/24".parse().unwrap();
        let c: Cidr = "10.1.0.0/24".parse().unwrap();
        let v6: Cidr = "::/0".parse().unwrap();
        assert!(a.contains_cidr(&b) && a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !a.contains_cidr(&c));
        assert!(!v6.overlaps(&a) && !v6.contains(IpAddr::from([10, 0, 0, 1])));
        assert!(a.contains(IpAddr::from([10, 0, 255, 255])));
    }
}
