//! The names a host answers, per network, and who may see them. Pure: built from the registry
//! and swapped whole when it changes, so a query never sees half an update.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// One endpoint, as DNS needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    pub network_id: String,
    pub network_name: String,
    /// Host and container together identify a sandbox: every network it is on is in scope
    /// for queries from any of its addresses.
    pub node: String,
    pub container_id: String,
    pub name: String,
    pub aliases: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Default)]
struct NetworkNames {
    /// Lowercase name without the trailing dot → addresses.
    names: HashMap<String, Vec<IpAddr>>,
    /// Address → `name.network`.
    reverse: HashMap<IpAddr, String>,
}

/// A sandbox's addresses and the networks they are on.
type Sandbox = (Vec<IpAddr>, Vec<Arc<str>>);

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is a container's (or alias) the asker may see: these addresses of the asked
    /// family (possibly none).
    Found(Vec<IpAddr>),
    /// A reverse name of a container the asker may see.
    Pointer(String),
    /// A name weft owns (single label, or under a network's name) that does not exist for
    /// this asker: answered NXDOMAIN here, never sent upstream.
    NoSuchName,
    /// Not weft's: ask the upstream resolvers.
    Upstream,
}

/// Every name on every network, and each sandbox address's networks.
#[derive(Debug, Default)]
pub struct NameTable {
    networks: HashMap<Arc<str>, NetworkNames>,
    /// Address of a container → the networks its sandbox is on.
    scopes: HashMap<IpAddr, Vec<Arc<str>>>,
    /// Lowercase network names: `x.<network>` is weft's to answer.
    network_names: HashSet<String>,
}

fn lower(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl NameTable {
    pub fn build(records: impl IntoIterator<Item = EndpointRecord>) -> NameTable {
        let mut table = NameTable::default();
        let mut ids: HashMap<String, Arc<str>> = HashMap::new();
        // (host, container) → the sandbox's addresses and networks.
        let mut sandboxes: HashMap<(String, String), Sandbox> = HashMap::new();
        for r in records {
            let id =
                ids.entry(r.network_id.clone()).or_insert_with(|| Arc::from(r.network_id.as_str())).clone();
            let network = lower(&r.network_name);
            table.network_names.insert(network.clone());
            let names = table.networks.entry(id.clone()).or_default();
            let addresses: Vec<IpAddr> =
                r.ipv4.map(IpAddr::V4).into_iter().chain(r.ipv6.map(IpAddr::V6)).collect();
            for label in std::iter::once(&r.name).chain(&r.aliases) {
                let label = lower(label);
                if label.is_empty() {
                    continue;
                }
                for key in [format!("{label}.{network}"), label] {
                    let entry = names.names.entry(key).or_default();
                    for a in &addresses {
                        if !entry.contains(a) {
                            entry.push(*a);
                        }
                    }
                }
            }
            for a in &addresses {
                names.reverse.insert(*a, format!("{}.{network}", lower(&r.name)));
            }
            let sandbox = sandboxes.entry((r.node, r.container_id)).or_default();
            sandbox.0.extend(&addresses);
            if !sandbox.1.contains(&id) {
                sandbox.1.push(id);
            }
        }
        for (addresses, networks) in sandboxes.into_values() {
            for a in addresses {
                table.scopes.insert(a, networks.clone());
            }
        }
        table
    }

    /// Adds network names with no endpoints in the table: `x.<network>` is weft's for every
    /// network of the cluster, including those a host has no containers on (and so no
    /// endpoints of, decision record 0005) or that have none at all.
    pub fn with_networks<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> NameTable {
        self.network_names.extend(names.into_iter().map(lower));
        self
    }

    /// Whether `asker` is a container weft knows (queries from elsewhere are only forwarded).
    pub fn knows(&self, asker: IpAddr) -> bool {
        self.scopes.contains_key(&asker)
    }

    /// Looks `name` up for `asker`: addresses of the family of `want_v6`, searched in the
    /// networks the asker's sandbox is on.
    pub fn lookup(&self, asker: IpAddr, name: &str, want_v6: bool) -> Lookup {
        self.lookup_lowered(asker, &lower(name), want_v6)
    }

    /// [`NameTable::lookup`] of a name already in lower case, without its trailing dot.
    pub(crate) fn lookup_lowered(&self, asker: IpAddr, name: &str, want_v6: bool) -> Lookup {
        let Some(scope) = self.scopes.get(&asker) else { return Lookup::Upstream };
        let mut found: Option<Vec<IpAddr>> = None;
        for network in scope {
            if let Some(addresses) = self.networks.get(network).and_then(|n| n.names.get(name)) {
                let wanted = found.get_or_insert_with(Vec::new);
                for a in addresses.iter().filter(|a| a.is_ipv6() == want_v6) {
                    if !wanted.contains(a) {
                        wanted.push(*a);
                    }
                }
            }
        }
        match found {
            Some(addresses) => Lookup::Found(addresses),
            None if self.owns(name) => Lookup::NoSuchName,
            None => Lookup::Upstream,
        }
    }

    /// Reverse lookup of an `in-addr.arpa` / `ip6.arpa` name for `asker`.
    pub fn reverse(&self, asker: IpAddr, name: &str) -> Lookup {
        let Some(scope) = self.scopes.get(&asker) else { return Lookup::Upstream };
        let Some(ip) = parse_reverse(&lower(name)) else { return Lookup::Upstream };
        scope
            .iter()
            .find_map(|network| self.networks.get(network)?.reverse.get(&ip).cloned())
            .map_or(Lookup::Upstream, Lookup::Pointer)
    }

    /// Single labels (container names) and anything under a network's name are weft's.
    fn owns(&self, name: &str) -> bool {
        match name.rsplit_once('.') {
            None => true,
            Some((_, last)) => self.network_names.contains(last),
        }
    }
}

/// `4.3.2.1.in-addr.arpa` → 1.2.3.4; 32 nibbles `.ip6.arpa` → the IPv6 address.
pub fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let octets: Vec<u8> = rest.split('.').map(|o| o.parse().ok()).collect::<Option<_>>()?;
        let [d, c, b, a] = <[u8; 4]>::try_from(octets).ok()?;
        return Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u8> = rest
        .split('.')
        .map(|n| (n.len() == 1).then(|| u8::from_str_radix(n, 16).ok()).flatten())
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let value = nibbles.iter().rev().fold(0u128, |acc, n| (acc << 4) | u128::from(*n));
    Some(IpAddr::V6(Ipv6Addr::from(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        network: &str,
        node: &str,
        container: &str,
        name: &str,
        aliases: &[&str],
        ip: &str,
    ) -> EndpointRecord {
        EndpointRecord {
            network_id: format!("id-{network}"),
            network_name: network.into(),
            node: node.into(),
            container_id: container.into(),
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ipv4: Some(ip.parse().unwrap()),
            ipv6: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table() -> NameTable {
        NameTable::build([
            record("blue", "h1", "c1", "web", &["api"], "10.0.1.2"),
            record("blue", "h2", "c2", "db", &["api"], "10.0.1.3"),
            record("red", "h2", "c3", "cache", &[], "10.0.2.2"),
            // c4 is on both networks (two endpoints of one sandbox).
            record("blue", "h3", "c4", "both", &[], "10.0.1.4"),
            record("red", "h3", "c4", "both", &[], "10.0.2.4"),
        ])
    }

    #[test]
    fn names_aliases_and_name_dot_network_resolve_within_the_askers_networks() {
        let t = table();
        let from_web = ip("10.0.1.2");
        assert_eq!(t.lookup(from_web, "db", false), Lookup::Found(vec![ip("10.0.1.3")]));
        assert_eq!(t.lookup(from_web, "DB.Blue.", false), Lookup::Found(vec![ip("10.0.1.3")]));
        assert_eq!(t.lookup(from_web, "api", false), Lookup::Found(vec![ip("10.0.1.2"), ip("10.0.1.3")]));
        assert_eq!(t.lookup(from_web, "db", true), Lookup::Found(vec![]), "a name without AAAA is NODATA");
        // Scoping: red's cache is not visible from blue, and its name is not sent upstream.
        assert_eq!(t.lookup(from_web, "cache", false), Lookup::NoSuchName);
        assert_eq!(t.lookup(from_web, "cache.red", false), Lookup::NoSuchName);
        assert_eq!(t.lookup(from_web, "example.org", false), Lookup::Upstream);
    }

    #[test]
    fn names_under_networks_without_endpoints_here_are_weft_s() {
        let t = table();
        let from_web = ip("10.0.1.2");
        assert_eq!(t.lookup(from_web, "x.green", false), Lookup::Upstream, "not a network the table knows");
        let t = t.with_networks(["Green"]);
        assert_eq!(t.lookup(from_web, "x.green", false), Lookup::NoSuchName);
        assert_eq!(t.lookup(from_web, "db", false), Lookup::Found(vec![ip("10.0.1.3")]));
    }

    #[test]
    fn a_sandbox_on_two_networks_sees_both_from_either_address() {
        let t = table();
        for asker in ["10.0.1.4", "10.0.2.4"] {
            assert_eq!(t.lookup(ip(asker), "cache", false), Lookup::Found(vec![ip("10.0.2.2")]), "{asker}");
            assert_eq!(t.lookup(ip(asker), "web", false), Lookup::Found(vec![ip("10.0.1.2")]), "{asker}");
        }
    }

    #[test]
    fn reverse_lookups_give_name_dot_network_in_scope_only() {
        let t = table();
        assert_eq!(t.reverse(ip("10.0.1.2"), "3.1.0.10.in-addr.arpa."), Lookup::Pointer("db.blue".into()));
        assert_eq!(t.reverse(ip("10.0.1.2"), "2.2.0.10.in-addr.arpa"), Lookup::Upstream);
        assert_eq!(t.reverse(ip("192.0.2.9"), "3.1.0.10.in-addr.arpa"), Lookup::Upstream, "not a container");
    }

    #[test]
    fn reverse_names_parse_for_both_families() {
        assert_eq!(parse_reverse("4.3.2.1.in-addr.arpa"), Some(ip("1.2.3.4")));
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
        assert_eq!(parse_reverse(v6), Some(ip("2001:db8::1")));
        assert_eq!(parse_reverse("1.2.3.in-addr.arpa"), None);
        assert_eq!(parse_reverse("x.3.2.1.in-addr.arpa"), None);
        assert_eq!(parse_reverse("example.org"), None);
    }

    #[test]
    fn unknown_askers_only_get_upstream() {
        let t = table();
        assert!(!t.knows(ip("192.0.2.1")));
        assert_eq!(t.lookup(ip("192.0.2.1"), "web", false), Lookup::Upstream);
    }
}
