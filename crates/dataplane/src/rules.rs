//! Host rules in nftables: one `inet` table and one `bridge` table, both named `weft` and
//! owned by weft alone; nothing else on the host is read or touched. The rule text is built
//! by a pure function and loaded atomically (`nft -f -` replaces a whole table in one
//! transaction), so packets never see half a ruleset.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::model::IfAddr;

/// The name of weft's tables.
pub const TABLE: &str = "weft";

/// What the rules need to know of one network present on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules {
    pub bridge: String,
    /// The network's subnets (the gateway addresses with their prefix lengths).
    pub subnets: Vec<IfAddr>,
    /// No traffic to or from outside the network.
    pub internal: bool,
    /// Source NAT for traffic leaving the host (ignored for internal networks).
    pub masquerade: bool,
    /// Containers of this network may talk to each other.
    pub icc: bool,
    /// The bridge's ports (the VXLAN device and the containers' veths), for `icc=false`.
    pub ports: Vec<String>,
}

/// Encrypted networks' VXLAN may only travel inside WireGuard: their VNIs are dropped on any
/// other interface, in and out, so a mistake (a peer missing, a device with the wrong local
/// address) loses packets instead of sending them in the clear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptedVxlan {
    /// The cluster's VXLAN UDP port.
    pub port: u16,
    /// The VNIs of every encrypted network in the cluster.
    pub vnis: Vec<u32>,
    /// The host's WireGuard interface: the only way in or out for those VNIs.
    pub tunnel: String,
}

fn network_of(address: &IfAddr) -> String {
    match address.ip {
        std::net::IpAddr::V4(v4) => {
            let mask =
                if address.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(address.prefix.min(32))) };
            format!("{}/{}", std::net::Ipv4Addr::from(u32::from(v4) & mask), address.prefix)
        }
        std::net::IpAddr::V6(v6) => {
            let mask =
                if address.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(address.prefix.min(128))) };
            format!("{}/{}", std::net::Ipv6Addr::from(u128::from(v6) & mask), address.prefix)
        }
    }
}

/// The nft script that makes weft's tables exactly this: each table is created (so the
/// delete cannot fail), deleted and written anew in one transaction.
pub fn ruleset(networks: &[NetworkRules], encrypted: &EncryptedVxlan) -> String {
    let mut s = String::new();
    let quoted = |names: &mut dyn Iterator<Item = &String>| -> String {
        names.map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(s, "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    let _ = writeln!(s, "  chain forward {{\n    type filter hook forward priority filter; policy accept;");
    // Isolation: nothing is routed from one weft network's bridge to another's.
    for n in networks {
        let others = quoted(&mut networks.iter().map(|o| &o.bridge).filter(|b| **b != n.bridge));
        if !others.is_empty() {
            let _ = writeln!(s, "    iifname \"{}\" oifname {{ {others} }} drop", n.bridge);
        }
    }
    for n in networks.iter().filter(|n| n.internal) {
        let _ = writeln!(s, "    iifname \"{0}\" oifname != \"{0}\" drop", n.bridge);
        let _ = writeln!(s, "    oifname \"{0}\" iifname != \"{0}\" drop", n.bridge);
    }
    let _ = writeln!(s, "  }}");
    let _ =
        writeln!(s, "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;");
    for n in networks.iter().filter(|n| !n.internal && n.masquerade) {
        for subnet in &n.subnets {
            let family = if subnet.ip.is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(
                s,
                "    {family} saddr {} oifname != \"{}\" masquerade",
                network_of(subnet),
                n.bridge
            );
        }
    }
    let _ = writeln!(s, "  }}");
    if !encrypted.vnis.is_empty() {
        // The VNI is the 24 bits after the VXLAN flags: bits 96..120 of the UDP header on.
        let vnis = encrypted.vnis.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
        for (chain, hook, direction) in [("input", "input", "iifname"), ("output", "output", "oifname")] {
            let _ = writeln!(
                s,
                "  chain {chain} {{\n    type filter hook {hook} priority filter; policy accept;\n    \
                 {direction} != \"{}\" udp dport {} @th,96,24 {{ {vnis} }} drop\n  }}",
                encrypted.tunnel, encrypted.port
            );
        }
    }
    let _ = writeln!(s, "}}");

    let _ = writeln!(s, "table bridge {TABLE}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{");
    let _ = writeln!(s, "  chain forward {{\n    type filter hook forward priority filter; policy accept;");
    for n in networks.iter().filter(|n| !n.icc && !n.ports.is_empty()) {
        // icc=false: nothing is switched between two ports of the bridge, local or remote;
        // the gateway (the bridge itself) is still reachable, which is not forwarding.
        let ports = quoted(&mut n.ports.iter());
        let _ = writeln!(s, "    iifname {{ {ports} }} oifname {{ {ports} }} drop");
    }
    let _ = writeln!(s, "  }}\n}}");
    s
}

/// The script that removes weft's tables (for uninstall); succeeds when they are absent.
pub fn removal() -> String {
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable bridge {TABLE}\ndelete table bridge {TABLE}\n"
    )
}

/// Loads a script with `nft -f -` in the current network namespace.
pub fn load(script: &str) -> Result<(), crate::KernelError> {
    let failed = |reason: String| crate::KernelError {
        doing: "loading weft's nftables rules".into(),
        reason,
        source: None,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run nft ({e}); install the nftables package")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| failed(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Turns on IPv4 (and IPv6) forwarding in this namespace: containers reach anything beyond
/// their bridge only through it.
pub fn enable_forwarding() -> Result<(), crate::KernelError> {
    for (path, what) in
        [("/proc/sys/net/ipv4/ip_forward", "IPv4"), ("/proc/sys/net/ipv6/conf/all/forwarding", "IPv6")]
    {
        if std::fs::read_to_string(path).map(|v| v.trim() == "1").unwrap_or(false) {
            continue;
        }
        std::fs::write(path, "1").map_err(|e| crate::KernelError {
            doing: format!("enabling {what} forwarding ({path})"),
            reason: e.to_string(),
            source: None,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str, internal: bool, icc: bool) -> NetworkRules {
        let (ip, prefix) = subnet.split_once('/').unwrap();
        NetworkRules {
            bridge: bridge.into(),
            subnets: vec![IfAddr { ip: ip.parse().unwrap(), prefix: prefix.parse().unwrap() }],
            internal,
            masquerade: true,
            icc,
            ports: vec![format!("{bridge}x"), format!("{bridge}p")],
        }
    }

    #[test]
    fn networks_are_isolated_masqueraded_and_internal_ones_closed() {
        let script = ruleset(
            &[
                net("weft4096", "10.0.1.1/24", false, true),
                net("weft4097", "10.0.2.1/24", true, false),
                net("mybr", "fd00:1::1/64", false, true),
            ],
            &EncryptedVxlan::default(),
        );
        assert!(script.starts_with("table inet weft\ndelete table inet weft\n"), "{script}");
        assert!(script.contains("iifname \"weft4096\" oifname { \"weft4097\", \"mybr\" } drop"), "{script}");
        assert!(script.contains("iifname \"mybr\" oifname { \"weft4096\", \"weft4097\" } drop"), "{script}");
        assert!(script.contains("iifname \"weft4097\" oifname != \"weft4097\" drop"), "{script}");
        assert!(script.contains("ip saddr 10.0.1.0/24 oifname != \"weft4096\" masquerade"), "{script}");
        assert!(script.contains("ip6 saddr fd00:1::/64 oifname != \"mybr\" masquerade"), "{script}");
        assert!(!script.contains("10.0.2.0/24"), "internal networks never masquerade: {script}");
        assert!(
            script.contains(
                "iifname { \"weft4097x\", \"weft4097p\" } oifname { \"weft4097x\", \"weft4097p\" } drop"
            ),
            "{script}"
        );
    }

    #[test]
    fn no_networks_leave_empty_tables() {
        let script = ruleset(&[], &EncryptedVxlan { port: 4789, vnis: vec![], tunnel: "weftwg".into() });
        assert!(!script.contains("drop"), "{script}");
        assert!(!script.contains("masquerade"), "{script}");
    }

    #[test]
    fn encrypted_vnis_pass_only_through_the_tunnel() {
        let encrypted = EncryptedVxlan { port: 4789, vnis: vec![4096, 4098], tunnel: "weftwg".into() };
        let script = ruleset(&[], &encrypted);
        assert!(
            script.contains("iifname != \"weftwg\" udp dport 4789 @th,96,24 { 4096, 4098 } drop"),
            "{script}"
        );
        assert!(
            script.contains("oifname != \"weftwg\" udp dport 4789 @th,96,24 { 4096, 4098 } drop"),
            "{script}"
        );
    }
}
