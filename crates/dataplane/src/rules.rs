//! Rules in nftables: an `inet` table named `weft` in the host namespace, and a `bridge` table
//! named `weft` in the switch namespace ([`crate::switch`]), both owned by weft alone; nothing
//! else on the host is read or touched. The rule text is built by a pure function and loaded
//! atomically (`nft -f -` replaces a whole table in one transaction), so packets never see
//! half a ruleset.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

use std::net::IpAddr;

use weft_core::PortProtocol;

use crate::model::IfAddr;

/// The name of weft's tables.
pub const TABLE: &str = "weft";

/// What the rules need to know of one network present on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules {
    /// The network's interface in the host namespace (its gateway): everything entering or
    /// leaving the network passes it.
    pub gateway: String,
    /// The network's subnets (the gateway addresses with their prefix lengths).
    pub subnets: Vec<IfAddr>,
    /// No traffic to or from outside the network.
    pub internal: bool,
    /// Source NAT for traffic leaving the host (ignored for internal networks).
    pub masquerade: bool,
    /// Containers of this network may talk to each other.
    pub icc: bool,
    /// The bridge's ports but the gateway's (the VXLAN device and the containers' veths),
    /// for `icc=false`.
    pub ports: Vec<String>,
    /// Host ports published to this network's containers on this host.
    pub published: Vec<PublishedRule>,
}

/// The two scripts that make weft's tables what they should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rulesets {
    /// For the host namespace: isolation, egress NAT, published ports, DNS untracked, the
    /// encrypted networks' fail-closed rule.
    pub host: String,
    /// For the switch namespace: `icc=false`.
    pub switch: String,
}

/// One host address and port forwarded to a container (one family: a mapping for every
/// address of a dual-stack host is two of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedRule {
    pub protocol: PortProtocol,
    /// `None`: every address of the container address's family.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

impl PublishedRule {
    /// The nft rule, for the `published` chain.
    fn nft(&self) -> String {
        let v4 = self.container_ip.is_ipv4();
        let (family, nfproto) = if v4 { ("ip", "ipv4") } else { ("ip6", "ipv6") };
        let to = if v4 {
            format!("{}:{}", self.container_ip, self.container_port)
        } else {
            format!("[{}]:{}", self.container_ip, self.container_port)
        };
        let matching = match self.host_ip.filter(|ip| !ip.is_unspecified()) {
            Some(ip) => format!("{family} daddr {ip}"),
            None => format!("meta nfproto {nfproto}"),
        };
        format!("{matching} {} dport {} dnat {family} to {to}", self.protocol, self.host_port)
    }
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

fn quoted(names: &mut dyn Iterator<Item = &String>) -> String {
    names.map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// The nft scripts that make weft's tables exactly this: each table is created (so the
/// delete cannot fail), deleted and written anew in one transaction.
pub fn ruleset(networks: &[NetworkRules], encrypted: &EncryptedVxlan) -> Rulesets {
    Rulesets { host: host_ruleset(networks, encrypted), switch: switch_ruleset(networks) }
}

fn host_ruleset(networks: &[NetworkRules], encrypted: &EncryptedVxlan) -> String {
    let mut s = String::new();
    // Before the switch namespace, weft's bridge table lived here.
    let _ = writeln!(s, "table bridge {TABLE}\ndelete table bridge {TABLE}");
    let _ = writeln!(s, "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    if !networks.is_empty() {
        untracked_chains(&mut s, networks, encrypted.port);
    }
    let _ = writeln!(s, "  chain forward {{\n    type filter hook forward priority filter; policy accept;");
    for n in networks.iter().filter(|n| n.internal) {
        let _ = writeln!(s, "    iifname \"{0}\" oifname != \"{0}\" drop", n.gateway);
        let _ = writeln!(s, "    oifname \"{0}\" iifname != \"{0}\" drop", n.gateway);
    }
    let publishing: Vec<&NetworkRules> = networks.iter().filter(|n| !n.published.is_empty()).collect();
    if !publishing.is_empty() {
        // A published port is open to everyone, containers of other networks included (they
        // reach it through a host address, like any client): only weft's own DNAT makes
        // these flows, and internal networks were closed above.
        let _ = writeln!(s, "    ct status dnat accept");
    }
    // Isolation: nothing is routed from one weft network to another.
    for n in networks {
        let others = quoted(&mut networks.iter().map(|o| &o.gateway).filter(|g| **g != n.gateway));
        if !others.is_empty() {
            let _ = writeln!(s, "    iifname \"{}\" oifname {{ {others} }} drop", n.gateway);
        }
    }
    let _ = writeln!(s, "  }}");
    if !publishing.is_empty() {
        published_chains(&mut s, &publishing);
    }
    let _ =
        writeln!(s, "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;");
    for n in networks.iter().filter(|n| !n.internal && n.masquerade) {
        for subnet in &n.subnets {
            let family = if subnet.ip.is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(
                s,
                "    {family} saddr {} oifname != \"{}\" masquerade",
                subnet.network(),
                n.gateway
            );
        }
    }
    for n in &publishing {
        // The host's own 127.0.0.1 as a client: the container must answer the gateway's
        // address, not a loopback address it cannot route back to.
        let _ = writeln!(s, "    ct status dnat ip saddr 127.0.0.0/8 oifname \"{}\" masquerade", n.gateway);
        // Hairpin: a container of the same network reaching a published port (its own
        // included) through a host address. Without the rewrite the answer would go straight
        // across the network, from an address the asker never sent to.
        for subnet in &n.subnets {
            let family = if subnet.ip.is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(
                s,
                "    ct status dnat {family} saddr {} oifname \"{}\" masquerade",
                subnet.network(),
                n.gateway
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
    s
}

/// The switch namespace's table: `icc=false` says nothing is switched between two ports of
/// the network's bridge, local or remote; the gateway's port stays reachable.
fn switch_ruleset(networks: &[NetworkRules]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table bridge {TABLE}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{");
    let closed: Vec<&NetworkRules> = networks.iter().filter(|n| !n.icc && !n.ports.is_empty()).collect();
    // No chain at all unless a network asks: an empty base chain still costs every frame a
    // call into nftables.
    if !closed.is_empty() {
        let _ =
            writeln!(s, "  chain forward {{\n    type filter hook forward priority filter; policy accept;");
        for n in closed {
            let ports = quoted(&mut n.ports.iter());
            let _ = writeln!(s, "    iifname {{ {ports} }} oifname {{ {ports} }} drop");
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// The containers' DNS queries to their gateway, and the answers, need neither NAT nor
/// connection state: untracked, they skip conntrack (a table entry per query otherwise).
/// Traffic within a network never reaches the host namespace at all (it is switched in the
/// switch namespace); everything else through the gateway stays tracked.
fn untracked_chains(s: &mut String, networks: &[NetworkRules], vxlan_port: u16) {
    let _ =
        writeln!(s, "  chain untracked_in {{\n    type filter hook prerouting priority raw; policy accept;");
    if vxlan_port != 0 {
        let _ = writeln!(s, "    udp dport {vxlan_port} notrack");
    }
    for n in networks {
        for subnet in &n.subnets {
            let family = if subnet.ip.is_ipv4() { "ip" } else { "ip6" };
            let (gateway_link, gateway) = (&n.gateway, subnet.ip);
            let _ =
                writeln!(s, "    iifname \"{gateway_link}\" {family} daddr {gateway} udp dport 53 notrack");
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain untracked_out {{\n    type filter hook output priority raw; policy accept;");
    if vxlan_port != 0 {
        let _ = writeln!(s, "    udp dport {vxlan_port} notrack");
    }
    for n in networks {
        for subnet in &n.subnets {
            let family = if subnet.ip.is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(
                s,
                "    oifname \"{}\" {family} saddr {} udp sport 53 notrack",
                n.gateway, subnet.ip
            );
        }
    }
    let _ = writeln!(s, "  }}");
}

/// Destination NAT for published ports: traffic for a local address (arriving, or sent by the
/// host itself) goes through the `published` chain, one rule per mapping. No userland proxy:
/// the container sees the client's own address.
fn published_chains(s: &mut String, publishing: &[&NetworkRules]) {
    let _ = writeln!(
        s,
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump published\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain output {{\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump published\n  }}"
    );
    let _ = writeln!(s, "  chain published {{");
    for rule in publishing.iter().flat_map(|n| &n.published) {
        let _ = writeln!(s, "    {}", rule.nft());
    }
    let _ = writeln!(s, "  }}");
    // 127.0.0.1 reaches containers only because weft sets route_localnet on these gateways;
    // so that containers cannot use it to reach the host's loopback services, nothing
    // addressed from or to 127.0.0.0/8 may arrive on them.
    let gateways = quoted(&mut publishing.iter().map(|n| &n.gateway));
    let _ = writeln!(
        s,
        "  chain loopback_guard {{\n    type filter hook prerouting priority raw; policy accept;\n    \
         iifname {{ {gateways} }} ip daddr 127.0.0.0/8 drop\n    iifname {{ {gateways} }} ip saddr 127.0.0.0/8 drop\n  }}"
    );
}

/// The script that removes weft's tables from the host namespace (for uninstall, and for
/// hosts an earlier weft left a bridge table in); succeeds when they are absent.
pub fn removal() -> String {
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable bridge {TABLE}\ndelete table bridge {TABLE}\n"
    )
}

/// Loads a script with `nft -f -` in the current network namespace, or in the one at `netns`.
pub fn load(script: &str, netns: Option<&std::path::Path>) -> Result<(), crate::KernelError> {
    let failed = |reason: String| crate::KernelError {
        doing: "loading weft's nftables rules".into(),
        reason,
        source: None,
    };
    let mut command = match netns {
        // nft has no namespace option; nsenter (util-linux, on every host) enters it.
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net={}", netns.display())).arg("nft");
            command
        }
        None => Command::new("nft"),
    };
    let mut child = command
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

/// Sets a kernel switch (a sysctl or sysfs file) to 1, unless it already is.
fn switch_on(path: &str, doing: String) -> Result<(), crate::KernelError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| crate::KernelError {
        doing: format!("{doing} ({path})"),
        reason: e.to_string(),
        source: Some(std::sync::Arc::new(e)),
    })
}

/// Lets packets from the host's 127.0.0.0/8 leave through a network's `gateway` once DNAT
/// has sent them to a container (the kernel drops them as martians otherwise). The
/// `loopback_guard` chain keeps containers from using the same setting to reach the host's
/// loopback services.
pub fn route_localnet(gateway: &str) -> Result<(), crate::KernelError> {
    switch_on(
        &format!("/proc/sys/net/ipv4/conf/{gateway}/route_localnet"),
        format!("letting 127.0.0.1 reach containers through {gateway}"),
    )
}

/// Deletes the connection-tracking entries a published port made (`conntrack -D`): UDP
/// "connections" live as long as packets keep coming, so without this a client would go on
/// reaching the old container, or nothing, after the port moved to a new one.
pub fn forget_flows(rule: &PublishedRule) -> Result<(), crate::KernelError> {
    let doing = format!("forgetting the flows of {} port {}", rule.protocol, rule.host_port);
    let failed = |reason: String| crate::KernelError { doing: doing.clone(), reason, source: None };
    let family = if rule.container_ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let out = Command::new("conntrack")
        .args(["-D", "-f", family, "-p", rule.protocol.as_str()])
        .args(["--orig-port-dst", &rule.host_port.to_string()])
        .args(["--reply-src", &rule.container_ip.to_string()])
        .output()
        .map_err(|e| failed(format!("cannot run conntrack ({e}); install the conntrack package")))?;
    let said = String::from_utf8_lossy(&out.stderr);
    // conntrack exits 1 when there was nothing to delete.
    if out.status.success() || said.contains("flow entries have been deleted") {
        Ok(())
    } else {
        Err(failed(said.trim().to_string()))
    }
}

/// Turns on IPv4 (and IPv6) forwarding in this namespace: containers reach anything beyond
/// their network only through it.
pub fn enable_forwarding() -> Result<(), crate::KernelError> {
    for (path, what) in
        [("/proc/sys/net/ipv4/ip_forward", "IPv4"), ("/proc/sys/net/ipv6/conf/all/forwarding", "IPv6")]
    {
        switch_on(path, format!("enabling {what} forwarding"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(gateway: &str, subnet: &str, internal: bool, icc: bool) -> NetworkRules {
        let (ip, prefix) = subnet.split_once('/').unwrap();
        NetworkRules {
            gateway: gateway.into(),
            subnets: vec![IfAddr { ip: ip.parse().unwrap(), prefix: prefix.parse().unwrap() }],
            internal,
            masquerade: true,
            icc,
            ports: vec![format!("{gateway}x"), format!("{gateway}p")],
            published: vec![],
        }
    }

    #[test]
    fn networks_are_isolated_masqueraded_and_internal_ones_closed() {
        let Rulesets { host, switch } = ruleset(
            &[
                net("weft4096", "10.0.1.1/24", false, true),
                net("weft4097", "10.0.2.1/24", true, false),
                net("mybr", "fd00:1::1/64", false, true),
            ],
            &EncryptedVxlan::default(),
        );
        assert!(host.contains("table inet weft\ndelete table inet weft\n"), "{host}");
        assert!(host.contains("iifname \"weft4096\" oifname { \"weft4097\", \"mybr\" } drop"), "{host}");
        assert!(host.contains("iifname \"mybr\" oifname { \"weft4096\", \"weft4097\" } drop"), "{host}");
        assert!(host.contains("iifname \"weft4097\" oifname != \"weft4097\" drop"), "{host}");
        assert!(host.contains("ip saddr 10.0.1.0/24 oifname != \"weft4096\" masquerade"), "{host}");
        assert!(host.contains("ip6 saddr fd00:1::/64 oifname != \"mybr\" masquerade"), "{host}");
        assert!(!host.contains("saddr 10.0.2.0/24"), "internal networks never masquerade: {host}");
        assert!(!host.contains("table bridge weft {"), "no bridge rules in the host namespace: {host}");
        assert!(switch.starts_with("table bridge weft\ndelete table bridge weft\n"), "{switch}");
        assert!(
            switch.contains(
                "iifname { \"weft4097x\", \"weft4097p\" } oifname { \"weft4097x\", \"weft4097p\" } drop"
            ),
            "{switch}"
        );
        assert_eq!(switch.matches("drop").count(), 1, "icc=false only where asked: {switch}");
    }

    #[test]
    fn dns_to_the_gateway_goes_untracked_and_nothing_else_does() {
        let mut dual = net("weft4096", "10.0.1.1/24", false, true);
        dual.subnets.push(IfAddr { ip: "fd00:1::1".parse().unwrap(), prefix: 64 });
        let host = ruleset(&[dual], &EncryptedVxlan::default()).host;
        for rule in [
            "iifname \"weft4096\" ip daddr 10.0.1.1 udp dport 53 notrack",
            "oifname \"weft4096\" ip saddr 10.0.1.1 udp sport 53 notrack",
            "iifname \"weft4096\" ip6 daddr fd00:1::1 udp dport 53 notrack",
            "oifname \"weft4096\" ip6 saddr fd00:1::1 udp sport 53 notrack",
        ] {
            assert!(host.contains(rule), "{rule} missing from {host}");
        }
        assert!(host.contains("hook prerouting priority raw"), "before conntrack: {host}");
        assert_eq!(host.matches("notrack").count(), 4, "nothing else goes untracked: {host}");
    }

    #[test]
    fn the_overlays_own_packets_go_untracked_on_the_cluster_port() {
        let overlay = EncryptedVxlan { port: 4789, vnis: vec![], tunnel: "weftwg".into() };
        let host = ruleset(&[net("weft4096", "10.0.1.1/24", false, true)], &overlay).host;
        let inbound = &host[host.find("chain untracked_in").unwrap()..];
        let outbound = &host[host.find("chain untracked_out").unwrap()..];
        for chain in [inbound, outbound] {
            let body = &chain[..chain.find('}').unwrap()];
            assert!(body.contains("udp dport 4789 notrack"), "{host}");
        }
    }

    #[test]
    fn no_networks_leave_empty_tables() {
        let Rulesets { host, switch } =
            ruleset(&[], &EncryptedVxlan { port: 4789, vnis: vec![], tunnel: "weftwg".into() });
        for script in [host, switch] {
            assert!(!script.contains("drop"), "{script}");
            assert!(!script.contains("masquerade"), "{script}");
            assert!(!script.contains("notrack"), "{script}");
        }
    }

    #[test]
    fn encrypted_vnis_pass_only_through_the_tunnel() {
        let encrypted = EncryptedVxlan { port: 4789, vnis: vec![4096, 4098], tunnel: "weftwg".into() };
        let host = ruleset(&[], &encrypted).host;
        assert!(
            host.contains("iifname != \"weftwg\" udp dport 4789 @th,96,24 { 4096, 4098 } drop"),
            "{host}"
        );
        assert!(
            host.contains("oifname != \"weftwg\" udp dport 4789 @th,96,24 { 4096, 4098 } drop"),
            "{host}"
        );
    }
}
