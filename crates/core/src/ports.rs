//! Published ports: what `docker run -p` / `-P` ask for, and what the registry records.
//!
//! A user (or a runtime front-end) asks with [`PortSpec`]s, which may leave the host port
//! open or give ranges; the host's agent turns them into concrete [`PublishedPort`]s with
//! [`resolve`] (it alone can tell which host ports are free on its host), and the state machine
//! records those, refusing any that another container on the same host holds. Pure.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most mappings one endpoint may publish: a range like `-p 1-65535:1-65535` would otherwise
/// put 65,535 records into the registry and as many rules on the host.
pub const MAX_PUBLISHED_PER_ENDPOINT: usize = 4096;

/// A transport protocol a port is published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PortProtocol {
    type Err = Error;

    /// Empty means TCP, as in Docker.
    fn from_str(text: &str) -> Result<PortProtocol> {
        match text.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(PortProtocol::Tcp),
            "udp" => Ok(PortProtocol::Udp),
            "sctp" => Ok(PortProtocol::Sctp),
            _ => Err(Error::invalid("protocol", text, "expected tcp, udp or sctp").about_field("protocol")),
        }
    }
}

/// One published port as the registry records it: traffic for `host_ip`:`host_port` on the
/// container's host goes to the container's `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub protocol: PortProtocol,
    /// `None`: every address of the host, IPv4 and (on dual-stack networks) IPv6. An
    /// unspecified address (0.0.0.0, ::) means every address of that family.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl PublishedPort {
    /// Whether the two would take the same packets: same protocol and port, host addresses
    /// that overlap.
    pub fn clashes_with(&self, other: &PublishedPort) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && host_ips_overlap(self.host_ip, other.host_ip)
    }

    /// Docker's form: `0.0.0.0:8080->80/tcp`, `[::1]:8080->80/tcp`, `*:8080->80/tcp` for
    /// every address of both families.
    pub fn docker_form(&self) -> String {
        format!("{}->{}/{}", self.host_side(), self.container_port, self.protocol)
    }

    /// `0.0.0.0:8080`, `[::1]:8080`, `*:8080`.
    pub fn host_side(&self) -> String {
        match self.host_ip {
            None => format!("*:{}", self.host_port),
            Some(IpAddr::V4(v4)) => format!("{v4}:{}", self.host_port),
            Some(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.host_port),
        }
    }
}

fn host_ips_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => {
            a == b || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
        }
    }
}

/// The checks a set of mappings must pass on its own (the state machine adds the ones that
/// need the registry): ports 1 to 65535, no two of them clashing, not too many.
pub fn check_mappings(ports: &[PublishedPort]) -> Result<()> {
    if ports.len() > MAX_PUBLISHED_PER_ENDPOINT {
        return Err(Error::bad_request(format!(
            "{} published ports asked for; one container may publish at most {MAX_PUBLISHED_PER_ENDPOINT}",
            ports.len()
        ))
        .about_field("ports"));
    }
    for (i, port) in ports.iter().enumerate() {
        if port.host_port == 0 {
            return Err(Error::invalid("host port", 0, "ports run from 1 to 65535")
                .about_field(&format!("ports[{i}].host_port")));
        }
        if port.container_port == 0 {
            return Err(Error::invalid("container port", 0, "ports run from 1 to 65535")
                .about_field(&format!("ports[{i}].container_port")));
        }
        if let Some(earlier) = ports[..i].iter().find(|p| p.clashes_with(port)) {
            return Err(Error::bad_request(format!(
                "host port {}/{} is asked for twice (for container ports {} and {})",
                port.host_side(),
                port.protocol,
                earlier.container_port,
                port.container_port
            ))
            .about_field(&format!("ports[{i}]")));
        }
    }
    Ok(())
}

/// A request to publish, as `docker run -p` takes it: host port(s) optional (a random free
/// one), ranges allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: PortProtocol,
    pub host_ip: Option<IpAddr>,
    /// `None`: a random free port. A range as long as `container_ports` maps port by port; a
    /// range for one container port means "any free port of these".
    pub host_ports: Option<RangeInclusive<u16>>,
    pub container_ports: RangeInclusive<u16>,
}

fn port_number(text: &str, what: &str) -> Result<u16> {
    let bad = || Error::invalid(what, text, "expected a port number from 1 to 65535");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(n) => Ok(n),
    }
}

/// `80` or `8000-8010`.
pub fn port_range(text: &str, what: &str) -> Result<RangeInclusive<u16>> {
    let (start, end) = match text.split_once('-') {
        Some((start, end)) => (port_number(start, what)?, port_number(end, what)?),
        None => {
            let port = port_number(text, what)?;
            (port, port)
        }
    };
    if end < start {
        return Err(Error::invalid(what, text, "a range runs from the lower port to the higher"));
    }
    Ok(start..=end)
}

impl PortSpec {
    /// Checks that the parts fit together (what [`FromStr`] also checks), for specs that
    /// arrive as separate fields.
    pub fn new(
        protocol: PortProtocol,
        host_ip: Option<IpAddr>,
        host_ports: Option<RangeInclusive<u16>>,
        container_ports: RangeInclusive<u16>,
    ) -> Result<PortSpec> {
        let spec = PortSpec { protocol, host_ip, host_ports, container_ports };
        if let Some(host) = &spec.host_ports {
            let (host_len, container_len) = (range_len(host), range_len(&spec.container_ports));
            if container_len > 1 && host_len != container_len {
                return Err(Error::bad_request(format!(
                    "host ports {} and container ports {} are ranges of different lengths ({host_len} and {container_len}); give one host port per container port",
                    show_range(host),
                    show_range(&spec.container_ports)
                ))
                .about_field("publish"));
            }
        }
        Ok(spec)
    }
}

fn range_len(range: &RangeInclusive<u16>) -> usize {
    usize::from(*range.end() - *range.start()) + 1
}

fn show_range(range: &RangeInclusive<u16>) -> String {
    if range.start() == range.end() {
        range.start().to_string()
    } else {
        format!("{}-{}", range.start(), range.end())
    }
}

impl FromStr for PortSpec {
    type Err = Error;

    /// `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/PROTOCOL]`, with an IPv6 host
    /// address in brackets: `8080:80`, `127.0.0.1::80/udp`, `[::1]:8080:80`, `8000-8001:80-81`.
    fn from_str(text: &str) -> Result<PortSpec> {
        let whole = text;
        let wrong = |why: &str| {
            Error::invalid("port publication", whole, format!("{why}; expected [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp|sctp], like 8080:80 or 127.0.0.1:8080:80/udp"))
                .about_field("publish")
        };
        let (rest, protocol) = match text.rsplit_once('/') {
            Some((rest, protocol)) => {
                let unknown = || wrong(&format!("protocol {protocol:?} is not tcp, udp or sctp"));
                (rest, protocol.parse::<PortProtocol>().map_err(|_| unknown())?)
            }
            None => (text, PortProtocol::Tcp),
        };
        // An IPv6 host address comes in brackets, so its colons are not separators.
        let (host_ip, rest) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (ip, after) =
                bracketed.split_once(']').ok_or_else(|| wrong("an IPv6 address lacks its ']'"))?;
            let ip: IpAddr = ip.parse().map_err(|_| wrong("the host address is not an IP address"))?;
            let after =
                after.strip_prefix(':').ok_or_else(|| wrong("the host address needs ':' after it"))?;
            (Some(ip), after)
        } else {
            (None, rest)
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (host_ip, host_ports, container) = match (host_ip, parts.as_slice()) {
            (None, [container]) => (None, None, *container),
            (None, [host, container]) => (None, Some(*host), *container),
            (None, [ip, host, container]) => {
                let ip: IpAddr = ip.parse().map_err(|_| wrong("the host address is not an IP address"))?;
                (Some(ip), Some(*host), *container)
            }
            (Some(ip), [host, container]) => (Some(ip), Some(*host), *container),
            _ => return Err(wrong("too many ':'")),
        };
        let container_ports =
            port_range(container, "container port").map_err(|e| e.about_field("publish"))?;
        let host_ports = match host_ports {
            None | Some("") => None,
            Some(host) => Some(port_range(host, "host port").map_err(|e| e.about_field("publish"))?),
        };
        PortSpec::new(protocol, host_ip, host_ports, container_ports)
    }
}

/// `--expose PORT[-END][/PROTOCOL]`: ports `-P` publishes on random host ports.
pub fn parse_exposed(text: &str) -> Result<(PortProtocol, RangeInclusive<u16>)> {
    let (ports, protocol) = text.rsplit_once('/').unwrap_or((text, ""));
    let protocol = protocol.parse::<PortProtocol>().map_err(|e| e.about_field("expose"))?;
    Ok((protocol, port_range(ports, "exposed port").map_err(|e| e.about_field("expose"))?))
}

/// Turns specs into concrete mappings. `default_host_ip` stands in where a spec names no host
/// address (a network's `host_binding_ipv4`). `free(protocol, host_ip, port)` says whether a
/// host port can be taken (the agent asks the registry and the host); random ports come from
/// `ephemeral`, in order, skipping those not free and those this call already took.
pub fn resolve(
    specs: &[PortSpec],
    default_host_ip: Option<IpAddr>,
    ephemeral: RangeInclusive<u16>,
    mut free: impl FnMut(PortProtocol, Option<IpAddr>, u16) -> bool,
) -> Result<Vec<PublishedPort>> {
    let mut taken: Vec<PublishedPort> = Vec::new();
    let mut pick =
        |protocol, host_ip, candidates: RangeInclusive<u16>, container_port, taken: &[PublishedPort]| {
            candidates.into_iter().find(|&host_port| {
                let mapping = PublishedPort { protocol, host_ip, host_port, container_port };
                !taken.iter().any(|t| t.clashes_with(&mapping)) && free(protocol, host_ip, host_port)
            })
        };
    for spec in specs {
        let host_ip = spec.host_ip.or(default_host_ip);
        let count = range_len(&spec.container_ports);
        if count + taken.len() > MAX_PUBLISHED_PER_ENDPOINT {
            return Err(Error::bad_request(format!(
                "more than {MAX_PUBLISHED_PER_ENDPOINT} published ports asked for; one container may publish at most that many"
            ))
            .about_field("publish"));
        }
        for container_port in spec.container_ports.clone() {
            let offset = container_port - *spec.container_ports.start();
            let host_port =
                match &spec.host_ports {
                    // Port by port: the host port is given; whether it is free is for the caller
                    // to say with a clear reason, so it is taken as it is.
                    Some(host) if range_len(host) == count => *host.start() + offset,
                    Some(host) => pick(spec.protocol, host_ip, host.clone(), container_port, &taken)
                        .ok_or_else(|| {
                            Error::exhausted(format!(
                                "no free host port in {} for {container_port}/{}",
                                show_range(host),
                                spec.protocol
                            ))
                        })?,
                    None => pick(spec.protocol, host_ip, ephemeral.clone(), container_port, &taken)
                        .ok_or_else(|| {
                            Error::exhausted(format!(
                                "no free host port left in the ephemeral range {} for {container_port}/{}",
                                show_range(&ephemeral),
                                spec.protocol
                            ))
                        })?,
                };
            taken.push(PublishedPort { protocol: spec.protocol, host_ip, host_port, container_port });
        }
    }
    check_mappings(&taken)?;
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> PortSpec {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn docker_syntax_parses() {
        let s = spec("8080:80");
        assert_eq!(
            (s.protocol, s.host_ip, s.host_ports, s.container_ports),
            (PortProtocol::Tcp, None, Some(8080..=8080), 80..=80)
        );
        let s = spec("127.0.0.1::53/udp");
        assert_eq!(
            (s.protocol, s.host_ip, s.host_ports),
            (PortProtocol::Udp, Some("127.0.0.1".parse().unwrap()), None)
        );
        let s = spec("[::1]:8080:80/SCTP");
        assert_eq!((s.protocol, s.host_ip), (PortProtocol::Sctp, Some("::1".parse().unwrap())));
        let s = spec("8000-8001:80-81");
        assert_eq!((s.host_ports, s.container_ports), (Some(8000..=8001), 80..=81));
        let s = spec("80");
        assert_eq!((s.host_ports, s.container_ports), (None, 80..=80));
        let s = spec("8000-8010:80");
        assert_eq!(s.host_ports, Some(8000..=8010));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (text, expect) in [
            ("0:80", "1 to 65535"),
            ("8080:65536", "1 to 65535"),
            ("8080:80/icmp", "\"icmp\" is not tcp, udp or sctp"),
            ("8000-8002:80-81", "different lengths"),
            ("1.2.3:8080:80", "not an IP address"),
            ("a:b:c:d", "too many"),
            ("[::1:8080:80", "']'"),
            ("81-80", "lower port"),
            ("+80", "port number"),
            ("", "port number"),
        ] {
            let err = text.parse::<PortSpec>().unwrap_err().to_string();
            assert!(err.contains(expect), "{text}: {err}");
        }
        assert!(parse_exposed("80/icmp").unwrap_err().to_string().contains("tcp, udp or sctp"));
        assert_eq!(parse_exposed("80-81/udp").unwrap(), (PortProtocol::Udp, 80..=81));
    }

    #[test]
    fn resolve_maps_ranges_picks_free_ports_and_never_twice() {
        let busy = [49153u16, 49155];
        let ports = resolve(
            &[spec("8080-8081:80-81"), spec("90"), spec("91/udp"), spec("92"), spec("7000-7005:93")],
            None,
            49153..=49160,
            |_, _, port| !busy.contains(&port) && port != 7000,
        )
        .unwrap();
        let pairs: Vec<(u16, u16)> = ports.iter().map(|p| (p.host_port, p.container_port)).collect();
        // 49154 is free for TCP and for UDP alike: different protocols do not clash.
        assert_eq!(pairs, [(8080, 80), (8081, 81), (49154, 90), (49154, 91), (49156, 92), (7001, 93)]);
        let exhausted = resolve(&[spec("80"), spec("81")], None, 49153..=49153, |_, _, _| true).unwrap_err();
        assert!(exhausted.to_string().contains("ephemeral range 49153"), "{exhausted}");
        let twice =
            resolve(&[spec("8080:80"), spec("8080:81")], None, 49153..=49160, |_, _, _| true).unwrap_err();
        assert!(twice.to_string().contains("asked for twice"), "{twice}");
        // Different host addresses may share a port; the default address applies when none is given.
        let default = Some("192.0.2.1".parse().unwrap());
        let ports =
            resolve(&[spec("8080:80"), spec("10.0.0.1:8080:81")], default, 1..=1, |_, _, _| true).unwrap();
        assert_eq!(ports[0].host_ip, default);
    }

    #[test]
    fn host_addresses_overlap_like_the_kernel_binds_them() {
        let at = |ip: Option<&str>| PublishedPort {
            protocol: PortProtocol::Tcp,
            host_ip: ip.map(|ip| ip.parse().unwrap()),
            host_port: 80,
            container_port: 80,
        };
        assert!(at(None).clashes_with(&at(Some("10.0.0.1"))));
        assert!(at(Some("0.0.0.0")).clashes_with(&at(Some("10.0.0.1"))));
        assert!(!at(Some("0.0.0.0")).clashes_with(&at(Some("::1"))));
        assert!(!at(Some("10.0.0.1")).clashes_with(&at(Some("10.0.0.2"))));
        assert!(at(Some("::")).clashes_with(&at(Some("fd00::1"))));
        assert_eq!(at(None).docker_form(), "*:80->80/tcp");
        assert_eq!(at(Some("::1")).docker_form(), "[::1]:80->80/tcp");
    }
}
