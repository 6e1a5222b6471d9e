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
        // Plain decimal only: "024" or "+24" read as 24 would be a silent guess at what was meant.
        let decimal = !prefix.is_empty()
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && (prefix == "0" || !prefix.starts_with('0'));
        if !decimal {
            return Err(Error::invalid(
                "CIDR",
                s,
                "the prefix length is a plain decimal number without leading zeros, like /24",
            ));
        }
        let prefix: u8 = prefix.parse().map_err(|_| Error::invalid("CIDR", s, rule))?;
        Cidr::new(addr, prefix)
    }
}

/// Address blocks whose purpose rules them out for an overlay network's addresses, most
/// specific first so a block inside several is named by its own purpose.
const SPECIAL_PURPOSE: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\": the unspecified address and the default route (RFC 1122)"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local (RFC 3927)"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved for future use, with the limited broadcast address (RFC 1112)"),
    ("::/128", "the unspecified address (RFC 4291)"),
    ("::1/128", "loopback (RFC 4291)"),
    ("::ffff:0:0/96", "IPv4-mapped IPv6 addresses (RFC 4291)"),
    ("::/8", "reserved by the IETF, with the IPv4-compatible addresses (RFC 4291)"),
    ("fe80::/10", "link-local (RFC 4291)"),
    ("fec0::/10", "site-local, deprecated (RFC 3879)"),
    ("ff00::/8", "multicast (RFC 4291)"),
];

/// The special-purpose block `cidr` overlaps (the most specific first) and
/// what it is for.
pub fn special_purpose(cidr: &Cidr) -> Option<(Cidr, &'static str)> {
    SPECIAL_PURPOSE.iter().find_map(|(block, purpose)| {
        let block: Cidr = block.parse().ok()?;
        block.overlaps(cidr).then_some((block, *purpose))
    })
}

impl Cidr {
    /// Refuses a block that reaches into a special-purpose range (multicast, loopback,
    /// link-local, reserved, unspecified, IPv4-mapped, ...): such addresses cannot be handed
    /// to containers or routed as an overlay. `what` names the field, e.g. "subnet".
    pub fn check_unicast(&self, what: &str) -> Result<(), Error> {
        match special_purpose(self) {
            None => Ok(()),
            Some((block, purpose)) => {
                let relation = if block.contains_cidr(self) { "lies in" } else { "reaches into" };
                Err(Error::invalid(
                    what,
                    self,
                    format_args!(
                        "it {relation} {block}, {purpose}; use unicast addresses, such as private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fd00::/8)"
                    ),
                ))
            }
        }
    }
}

/// Refuses an address in a special-purpose range; `what` names the field, e.g. "gateway".
pub fn check_unicast_address(what: &str, addr: IpAddr) -> Result<(), Error> {
    let host = Cidr::new(addr, Family::of(addr).bits())?;
    host.check_unicast(what)
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
    fn special_purpose_blocks_are_refused_by_their_purpose() {
        let cases = [
            ("224.0.0.0/24", "multicast"),
            ("127.0.0.0/8", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("240.0.0.0/24", "reserved"),
            ("0.0.0.0/8", "this network"),
            ("0.0.0.0/0", "this network"),
            ("ff00::/64", "multicast"),
            ("fe80::/64", "link-local"),
            ("::ffff:10.78.0.0/120", "IPv4-mapped"),
            ("::/0", "unspecified"),
            ("::1/128", "loopback"),
        ];
        for (text, purpose) in cases {
            let cidr: Cidr = text.parse().unwrap();
            let err = cidr.check_unicast("subnet").unwrap_err();
            assert!(err.message().starts_with(&format!("invalid subnet \"{text}\"")), "{err}");
            assert!(err.message().contains(purpose), "{text}: {err}");
        }
        for ok in
            ["10.0.0.0/8", "172.16.0.0/12", "192.168.1.0/24", "100.64.0.0/10", "fd00::/8", "2001:db8::/32"]
        {
            ok.parse::<Cidr>().unwrap().check_unicast("subnet").unwrap();
        }
        assert!(check_unicast_address("gateway", "224.0.0.1".parse().unwrap()).is_err());
        check_unicast_address("gateway", "10.0.0.1".parse().unwrap()).unwrap();
    }

    #[test]
    fn prefix_lengths_are_plain_decimals() {
        for bad in ["10.78.0.0/024", "10.78.0.0/+24", "10.78.0.0/", "10.78.0.0/ 24", "10.0.0.0/00"] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.message().contains("invalid CIDR"), "{bad}: {err}");
        }
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix(), 0);
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
