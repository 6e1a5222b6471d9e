//! Which IPv4 request an IPv6 request of Docker's belongs to. Docker asks the IPAM for a
//! network's IPv6 pool, and for a container's IPv6 address, in calls of their own that name
//! neither the network nor the container: each comes right after the IPv4 call for the same
//! thing. dockerd makes one endpoint of a network at a time (libnetwork holds a per-network
//! lock around endpoint creation, IPv4 address then IPv6), so on a network the IPv6 address
//! request is for the endpoint whose IPv4 request came just before. Pure; in memory only (an
//! agent restart between the two calls fails that one container start, which Docker reports).

use std::collections::BTreeMap;

/// Docker's IPv6 pool ids: the weft network's id and this suffix.
const IPV6_POOL_SUFFIX: &str = "/v6";

/// The pool id Docker is given for a weft network's IPv6 subnet.
pub fn ipv6_pool_id(network: &str) -> String {
    format!("{network}{IPV6_POOL_SUFFIX}")
}

/// A pool id Docker sends: the weft network's id, and whether it is the IPv6 pool.
pub fn split_pool_id(pool_id: &str) -> (&str, bool) {
    match pool_id.strip_suffix(IPV6_POOL_SUFFIX) {
        Some(network) => (network, true),
        None => (pool_id, false),
    }
}

/// IPv4 requests still waiting for their IPv6 twin.
#[derive(Debug, Default)]
pub struct AwaitingIpv6 {
    /// The provisional network the last IPv4 pool request made (`docker network create`
    /// without `weft.network`), until its IPv6 pool request or the next IPv4 one.
    pool: Option<String>,
    /// Weft network id → the endpoint its last IPv4 address request made, on networks that
    /// have IPv6.
    endpoints: BTreeMap<String, String>,
}

impl AwaitingIpv6 {
    pub fn pool_made(&mut self, network: &str) {
        self.pool = Some(network.to_string());
    }

    /// The network an IPv6 pool request is for, once.
    pub fn take_pool(&mut self) -> Option<String> {
        self.pool.take()
    }

    pub fn address_made(&mut self, network: &str, endpoint: &str) {
        self.endpoints.insert(network.to_string(), endpoint.to_string());
    }

    /// The endpoint an IPv6 address request on `network` is for, once.
    pub fn take_address(&mut self, network: &str) -> Option<String> {
        self.endpoints.remove(network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ids_carry_the_family() {
        let id = "4f1c".repeat(16);
        assert_eq!(split_pool_id(&ipv6_pool_id(&id)), (id.as_str(), true));
        assert_eq!(split_pool_id(&id), (id.as_str(), false));
    }

    #[test]
    fn each_ipv6_request_pairs_with_the_ipv4_one_before_it_once() {
        let mut awaiting = AwaitingIpv6::default();
        awaiting.address_made("n1", "e1");
        awaiting.address_made("n2", "e2");
        // A later IPv4 request on the same network replaces one whose twin never came.
        awaiting.address_made("n1", "e3");
        assert_eq!(awaiting.take_address("n1").as_deref(), Some("e3"));
        assert_eq!(awaiting.take_address("n1"), None);
        assert_eq!(awaiting.take_address("n2").as_deref(), Some("e2"));
        awaiting.pool_made("p1");
        assert_eq!(awaiting.take_pool().as_deref(), Some("p1"));
        assert_eq!(awaiting.take_pool(), None);
    }
}
