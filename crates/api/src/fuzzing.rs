//! Entry points for fuzzing what a controller does with a client's bytes: decode a request,
//! convert it, and apply it to a registry holding a host and a network. Shared by the
//! cargo-fuzz targets in `fuzz/` and the stable property tests, so both exercise one path.
//! Whatever the input, this must return: a panic here is a crashed controller.

use prost::Message as _;
use weft_core::{ClusterConfig, Command, Proposal, State};

use crate::{convert, pb};

/// A registry with host `h1` and network `blue` (10.9.0.0/24), as requests find it.
pub fn registry() -> State {
    let mut state = State::new(ClusterConfig { cluster_id: "fuzz".into(), ..ClusterConfig::default() })
        .unwrap_or_else(|e| unreachable!("the default configuration is valid: {e}"));
    let setup = [
        pb::RegisterNodeRequest {
            name: "h1".into(),
            underlay_address: "192.0.2.1".into(),
            underlay_mtu: 1500,
            ..Default::default()
        }
        .encode_to_vec(),
        pb::CreateNetworkRequest {
            name: "blue".into(),
            ipam_config: vec![pb::IpamConfig { subnet: "10.9.0.0/24".into(), ..Default::default() }],
            ..Default::default()
        }
        .encode_to_vec(),
    ];
    apply(&mut state, 0, &setup[0]);
    apply(&mut state, 1, &setup[1]);
    state
}

/// Decodes `bytes` as the request `kind` selects (mod 5) and applies what converts.
pub fn apply(state: &mut State, kind: u8, bytes: &[u8]) {
    let command = match kind % 5 {
        0 => pb::RegisterNodeRequest::decode(bytes)
            .ok()
            .and_then(|r| convert::node_request(&r).ok())
            .map(Command::RegisterNode),
        1 => pb::CreateNetworkRequest::decode(bytes)
            .ok()
            .and_then(|r| convert::network_request(&r).ok())
            .map(Command::CreateNetwork),
        2 => pb::CreateEndpointRequest::decode(bytes).ok().and_then(|r| {
            let ports = convert::published_ports(&r.ports).ok()?;
            Some(Command::create_endpoint(convert::endpoint_request(&r).ok()?, ports))
        }),
        3 => pb::RemoveEndpointRequest::decode(bytes)
            .ok()
            .and_then(|r| convert::endpoint_ref(&r).ok())
            .map(Command::RemoveEndpoint),
        _ => pb::PruneNetworksRequest::decode(bytes)
            .ok()
            .and_then(|r| convert::prune_filter(&r).ok())
            .map(Command::PruneNetworks),
    };
    if let Some(command) = command {
        let _ = state.apply(&Proposal { at_ms: 1, command });
    }
}

/// One fuzz input: a selector byte, then the request.
pub fn one(data: &[u8]) {
    if let Some((kind, bytes)) = data.split_first() {
        apply(&mut registry(), *kind, bytes);
    }
}
