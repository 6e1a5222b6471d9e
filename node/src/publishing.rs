//! Published ports on this host: the attach API's port requests as specs (pure), and the
//! host's own say on them — whether an address is the host's, whether a program holds a port,
//! which ports are ephemeral (the edges, through sockets and /proc).

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use socket2::{Domain, Protocol, Socket, Type};
use tonic::Status;
use weft_api::agent;
use weft_core::ports::{PortSpec, port_range};
use weft_core::{PortProtocol, PublishedPort};

fn invalid(e: weft_core::Error) -> Status {
    Status::invalid_argument(e.to_string())
}

fn range(start: u32, end: u32, what: &str) -> Result<RangeInclusive<u16>, Status> {
    let text = if end == 0 || end == start { start.to_string() } else { format!("{start}-{end}") };
    port_range(&text, what).map_err(invalid)
}

/// `-p` requests, then (with `-P`) every exposed port on a random host port.
pub fn specs(request: &agent::AttachRequest) -> Result<Vec<PortSpec>, Status> {
    let mut specs = Vec::new();
    for (i, p) in request.publish.iter().enumerate() {
        let at = |e: weft_core::Error| Status::invalid_argument(format!("publish[{i}]: {e}"));
        let protocol = p.protocol.parse::<PortProtocol>().map_err(at)?;
        let host_ip = if p.host_ip.is_empty() {
            None
        } else {
            Some(p.host_ip.trim_matches(['[', ']']).parse::<IpAddr>().map_err(|_| {
                Status::invalid_argument(format!(
                    "publish[{i}]: host address {:?} is not an IP address",
                    weft_core::error::quoted(&p.host_ip)
                ))
            })?)
        };
        let host_ports = match p.host_port {
            0 if p.host_port_end == 0 => None,
            _ => Some(range(p.host_port, p.host_port_end, "host port").map_err(|s| prefixed(i, s))?),
        };
        let container_ports =
            range(p.container_port, p.container_port_end, "container port").map_err(|s| prefixed(i, s))?;
        specs.push(PortSpec::new(protocol, host_ip, host_ports, container_ports).map_err(at)?);
    }
    if request.publish_all {
        for (i, exposed) in request.expose.iter().enumerate() {
            let protocol = exposed
                .protocol
                .parse::<PortProtocol>()
                .map_err(|e| Status::invalid_argument(format!("expose[{i}]: {e}")))?;
            let ports = range(exposed.port, exposed.port_end, "exposed port")
                .map_err(|s| Status::invalid_argument(format!("expose[{i}]: {}", s.message())))?;
            // Already published explicitly: -P does not publish it again (as in Docker).
            let explicit = |port: u16| {
                specs.iter().any(|s: &PortSpec| s.protocol == protocol && s.container_ports.contains(&port))
            };
            for port in ports.filter(|p| !explicit(*p)).collect::<Vec<_>>() {
                specs.push(PortSpec {
                    protocol,
                    host_ip: None,
                    host_ports: None,
                    container_ports: port..=port,
                });
            }
        }
    }
    Ok(specs)
}

fn prefixed(i: usize, status: Status) -> Status {
    Status::invalid_argument(format!("publish[{i}]: {}", status.message()))
}

/// The host's ephemeral ports (`net.ipv4.ip_local_port_range`), where random host ports come
/// from, as in Docker.
pub fn ephemeral_range() -> RangeInclusive<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut numbers = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
    match (numbers.next(), numbers.next()) {
        (Some(low), Some(high)) if low <= high && low > 0 => low..=high,
        _ => 32768..=60999,
    }
}

/// Why the host cannot give a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// A program on the host listens on (or has bound) the port.
    InUse,
    /// The host has no such address.
    NotLocal(IpAddr),
}

/// Whether a program could bind `host_ip`:`port` now, which is what a published port needs
/// free: traffic for it would go to the container, not to the program. Checked by binding and
/// letting go at once; TCP with SO_REUSEADDR, as servers bind, so connections lingering in
/// TIME_WAIT do not count. A protocol the kernel lacks (SCTP without its module) cannot be
/// checked and counts as free.
pub fn check(
    protocol: PortProtocol,
    host_ip: Option<IpAddr>,
    port: u16,
    ipv6: bool,
) -> Result<(), Unavailable> {
    let addresses: Vec<IpAddr> = match host_ip {
        Some(ip) => vec![ip],
        None if ipv6 => vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
        None => vec![Ipv4Addr::UNSPECIFIED.into()],
    };
    for ip in addresses {
        let address = SocketAddr::new(ip, port);
        let (kind, proto) = match protocol {
            PortProtocol::Tcp => (Type::STREAM, Protocol::TCP),
            PortProtocol::Udp => (Type::DGRAM, Protocol::UDP),
            PortProtocol::Sctp => (Type::STREAM, Protocol::from(132)),
        };
        let Ok(socket) = Socket::new(Domain::for_address(address), kind, Some(proto)) else { continue };
        if ip.is_ipv6() {
            let _ = socket.set_only_v6(true);
        }
        if protocol != PortProtocol::Udp {
            let _ = socket.set_reuse_address(true);
        }
        match socket.bind(&address.into()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AddrInUse => return Err(Unavailable::InUse),
            Err(e) if e.kind() == ErrorKind::AddrNotAvailable => return Err(Unavailable::NotLocal(ip)),
            // No IPv6 on this host, and the like: nothing to take the port from.
            Err(_) => {}
        }
    }
    Ok(())
}

/// The message for a port the host cannot give.
pub fn refusal(port: &PublishedPort, why: &Unavailable, host: &str) -> Status {
    match why {
        Unavailable::InUse => Status::already_exists(format!(
            "host port {}/{} is in use on host {host:?} by a program outside weft; choose another port or stop that program",
            port.host_side(),
            port.protocol
        )),
        Unavailable::NotLocal(ip) => Status::invalid_argument(format!(
            "host address {ip} is not an address of host {host:?}; give one of its addresses, or none for all of them"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        publish: Vec<agent::PortRequest>,
        publish_all: bool,
        expose: Vec<agent::ExposedPort>,
    ) -> agent::AttachRequest {
        agent::AttachRequest { publish, publish_all, expose, ..Default::default() }
    }

    fn port(host: u32, host_end: u32, container: u32, container_end: u32) -> agent::PortRequest {
        agent::PortRequest {
            host_port: host,
            host_port_end: host_end,
            container_port: container,
            container_port_end: container_end,
            ..Default::default()
        }
    }

    #[test]
    fn port_requests_become_specs_and_publish_all_adds_the_exposed_ones() {
        let exposed = vec![
            agent::ExposedPort { protocol: "tcp".into(), port: 80, port_end: 81 },
            agent::ExposedPort { protocol: "udp".into(), port: 53, port_end: 0 },
        ];
        let specs = specs(&request(vec![port(8080, 0, 80, 0)], true, exposed.clone())).unwrap();
        let shown: Vec<(Option<RangeInclusive<u16>>, RangeInclusive<u16>, PortProtocol)> =
            specs.iter().map(|s| (s.host_ports.clone(), s.container_ports.clone(), s.protocol)).collect();
        assert_eq!(
            shown,
            [
                (Some(8080..=8080), 80..=80, PortProtocol::Tcp),
                (None, 81..=81, PortProtocol::Tcp),
                (None, 53..=53, PortProtocol::Udp)
            ]
        );
        // Without -P, exposing publishes nothing.
        assert!(super::specs(&request(vec![], false, exposed)).unwrap().is_empty());
    }

    #[test]
    fn bad_port_requests_name_the_request_and_the_rule() {
        for (p, expect) in [
            (port(0, 0, 0, 0), "publish[0]: invalid container port"),
            (port(70000, 0, 80, 0), "1 to 65535"),
            (port(8000, 8002, 80, 81), "different lengths"),
            (port(8002, 8000, 80, 0), "lower port"),
            (agent::PortRequest { protocol: "icmp".into(), ..port(1, 0, 1, 0) }, "tcp, udp or sctp"),
            (agent::PortRequest { host_ip: "nowhere".into(), ..port(1, 0, 1, 0) }, "not an IP address"),
        ] {
            let err = specs(&request(vec![p], false, vec![])).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().contains(expect), "{expect}: {}", err.message());
        }
    }

    #[test]
    fn a_bound_port_is_in_use_and_a_foreign_address_is_not_local() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let localhost = Some(IpAddr::from([127, 0, 0, 1]));
        assert_eq!(check(PortProtocol::Tcp, localhost, port, false), Err(Unavailable::InUse));
        // Publishing on every address would take 127.0.0.1's traffic too.
        assert_eq!(check(PortProtocol::Tcp, None, port, false), Err(Unavailable::InUse));
        // UDP on the same number is another port.
        assert_eq!(check(PortProtocol::Udp, localhost, port, false), Ok(()));
        let foreign = IpAddr::from([192, 0, 2, 77]);
        assert_eq!(check(PortProtocol::Tcp, Some(foreign), 8080, false), Err(Unavailable::NotLocal(foreign)));
        assert!(ephemeral_range().start() > &1023);
    }
}
