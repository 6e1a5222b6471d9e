//! Whatever a client sends, the controller's request path (decode, convert, validate, apply)
//! answers and never panics. The same entry point runs under cargo-fuzz (`fuzz/`); this runs
//! on stable in every test run.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use prost::Message as _;
use weft_api::{fuzzing, pb};

/// Strings that look like what the fields hold, and strings that do not.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9./:a-f]{0,24}",
        "(10|172|192|fd00:)[0-9.:/]{0,20}",
        "[a-z][a-z0-9-]{0,70}",
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(kind in any::<u8>(), bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::apply(&mut fuzzing::registry(), kind, &bytes);
    }

    #[test]
    fn well_formed_requests_with_hostile_fields_never_panic(
        name in field(), subnet in field(), gateway in field(), range in field(), aux in field(),
        key in field(), value in field(), ip in field(), mac in field(), v6 in any::<bool>(),
        port in prop_oneof![Just(0u32), Just(65_535), Just(65_536), any::<u32>(), 1u32..1024],
    ) {
        let (gateway_copy, protocol) = (gateway.clone(), key.clone());
        let mut state = fuzzing::registry();
        let network = pb::CreateNetworkRequest {
            name: name.clone(),
            driver: key.clone(),
            ipam_config: vec![pb::IpamConfig {
                subnet,
                ip_range: range,
                gateway,
                auxiliary_addresses: [(key.clone(), aux)].into(),
            }],
            enable_ipv6: v6,
            options: [(key.clone(), value.clone())].into(),
            labels: [(key, value)].into(),
            ..Default::default()
        };
        fuzzing::apply(&mut state, 1, &network.encode_to_vec());
        let endpoint = pb::CreateEndpointRequest {
            network: "blue".into(),
            node: "h1".into(),
            container_id: name.clone(),
            container_name: name.clone(),
            aliases: vec![name.clone()],
            ipv4_address: ip.clone(),
            ipv6_address: ip,
            mac_address: mac,
            request_id: String::new(),
            ports: vec![
                pb::PublishedPort { protocol, host_ip: gateway_copy, host_port: port, container_port: port },
                pb::PublishedPort { protocol: "udp".into(), host_ip: String::new(), host_port: port, container_port: 1 },
            ],
        };
        fuzzing::apply(&mut state, 2, &endpoint.encode_to_vec());
        let node = pb::RegisterNodeRequest { name, underlay_address: endpoint.ipv4_address, underlay_mtu: 1500, ..Default::default() };
        fuzzing::apply(&mut state, 0, &node.encode_to_vec());
    }
}
