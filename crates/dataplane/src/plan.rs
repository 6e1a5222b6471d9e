//! The difference between what a host should hold and what it holds, as a list of kernel
//! operations. Pure: the executor ([`crate::kernel`]) carries the operations out.
//!
//! Order matters and is part of the contract: links are created (or replaced) before anything
//! is attached to them, entries are written after their device exists, and stale things are
//! removed last, innermost first (entries, veths, VXLAN devices, bridges).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::model::{
    Desired, IfAddr, Link, LinkKind, LocalEndpoint, Mac, NetworkDevices, Observed, Place, ServiceLink,
};

/// One change to the kernel. Each operation works in one namespace ([`Place`]): the host's,
/// or the switch namespace holding the networks' bridges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A bridge in the switch namespace.
    CreateBridge {
        name: String,
        alias: String,
        mtu: u32,
    },
    /// A VXLAN device on `bridge`, made from the host namespace so that its UDP socket and
    /// the underlay it sends through stay there, then moved into the switch namespace.
    CreateVxlan {
        name: String,
        alias: String,
        vni: u32,
        port: u16,
        local: IpAddr,
        mtu: u32,
        bridge: String,
    },
    /// The veth pair joining a network to the host: `name` in the host namespace, with the
    /// gateway's MAC (its addresses come as [`Op::AddAddress`]), and `port` on `bridge`.
    CreateGateway {
        name: String,
        port: String,
        bridge: String,
        alias: String,
        mac: Mac,
        mtu: u32,
    },
    /// A bridge with no ports, up, for addresses of the host's own services. (A bridge, not
    /// a dummy link: every host weft runs on has bridges; not every kernel has `dummy`.)
    CreateServiceLink {
        name: String,
        alias: String,
    },
    /// Repairs a link weft owns: MTU, bridge membership, and brings it up.
    SetLink {
        name: String,
        place: Place,
        mtu: u32,
        master: Option<String>,
    },
    /// On a link in the host namespace (weft's only addresses are there).
    AddAddress {
        link: String,
        address: IfAddr,
    },
    DeleteAddress {
        link: String,
        place: Place,
        address: IfAddr,
    },
    /// Creates a veth pair, puts the host side on `bridge` in the switch namespace and the
    /// other end into the container's namespace with its name, addresses and routes (or
    /// leaves it in the host namespace for the runtime, [`crate::model::Handover::Runtime`]).
    Plug {
        bridge: String,
        endpoint: LocalEndpoint,
    },
    DeleteLink {
        name: String,
        place: Place,
    },
    /// Sets (or replaces) the FDB entry `mac → vtep` on a VXLAN device.
    SetFdb {
        vxlan: String,
        mac: Mac,
        vtep: IpAddr,
    },
    DeleteFdb {
        vxlan: String,
        mac: Mac,
        vtep: IpAddr,
    },
    /// Sets (or replaces) the permanent neighbour entry `ip → mac` on a VXLAN device, which
    /// answers ARP/ND for it locally.
    SetNeighbour {
        vxlan: String,
        ip: IpAddr,
        mac: Mac,
    },
    DeleteNeighbour {
        vxlan: String,
        ip: IpAddr,
    },
    /// A link weft needs has a name already taken by something weft did not make; weft leaves
    /// it alone and reports this instead.
    Conflict {
        name: String,
        reason: String,
    },
}

impl Op {
    /// Removes `link` from wherever it is.
    fn delete(link: &Link) -> Op {
        Op::DeleteLink { name: link.name.clone(), place: link.place }
    }
}

/// Link-local IPv6 addresses appear on every interface by themselves; they are never drift.
fn is_automatic(address: &IfAddr) -> bool {
    matches!(address.ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The operations that turn `observed` into `desired`.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut late = Vec::new();
    // Devices that will be (re)created: whatever the dump says is inside them is gone.
    let mut fresh: BTreeSet<&str> = BTreeSet::new();

    // Left by an agent that predates the switch namespace; their names are taken again there.
    ops.extend(observed.misplaced.iter().map(Op::delete));

    for net in desired.networks.values() {
        let foreign = net
            .devices()
            .into_iter()
            .filter_map(|name| observed.links.get(name))
            .find(|link| !link.is_weft());
        if let Some(foreign) = foreign {
            ops.push(Op::Conflict {
                name: foreign.name.clone(),
                reason: format!("network {} needs this name for its devices", net.network_id),
            });
            continue;
        }
        plan_bridge(net, observed, &mut ops, &mut fresh);
        plan_gateway(net, observed, &mut ops, &fresh);
        plan_vxlan(net, observed, &mut ops, &mut fresh);
        plan_local(net, observed, &mut ops, &fresh);
        plan_remote(net, observed, &fresh, &mut ops, &mut late);
    }
    ops.extend(late);
    if let Some(services) = &desired.services {
        plan_services(services, observed, &mut ops);
    }

    // Whatever weft made and nobody wants any more: veths first, then VXLAN devices, then
    // bridges, so nothing is removed while something still hangs on it.
    let handed_over: Vec<String> = desired
        .networks
        .values()
        .flat_map(|n| n.local.values())
        .filter(|e| e.handover == crate::model::Handover::Runtime)
        .map(|e| container_end_name(&e.host_veth))
        .collect();
    // Container ends waiting for their runtime are wanted too, until it takes them.
    let wanted: BTreeSet<&str> = desired
        .networks
        .values()
        .flat_map(|n| n.devices().into_iter().map(String::as_str).chain(n.local.keys().map(String::as_str)))
        .chain(handed_over.iter().map(String::as_str))
        .chain(desired.services.iter().map(|s| s.name.as_str()))
        .collect();
    let rank = |kind: &LinkKind| match kind {
        LinkKind::Bridge => 2,
        LinkKind::Vxlan { .. } => 1,
        _ => 0,
    };
    let mut stale: Vec<_> = observed
        .links
        .values()
        .filter(|l| l.is_weft() && !wanted.contains(l.name.as_str()))
        .filter(|l| !container_end_in_host(l, observed) && !gateway_port_of_stale_gateway(l, observed))
        .map(|l| (rank(&l.kind), &l.name, l))
        .collect();
    stale.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    ops.extend(stale.into_iter().map(|(_, _, link)| Op::delete(link)));
    ops
}

/// The switch end of a gateway pair whose host end is there too: it goes with it.
fn gateway_port_of_stale_gateway(link: &Link, observed: &Observed) -> bool {
    link.place == Place::Switch
        && link.kind == LinkKind::Veth
        && link.alias.as_deref().is_some_and(|a| a.starts_with(crate::model::GATEWAY_ALIAS_PREFIX))
        && observed
            .links
            .values()
            .any(|host| host.place == Place::Host && host.kind == LinkKind::Veth && host.alias == link.alias)
}

/// The temporary name of a veth's container end while it is still in the host namespace.
pub fn container_end_name(host_veth: &str) -> String {
    format!("{}c", &host_veth[..host_veth.len().min(14)])
}

/// A host veth whose plugging did not finish (the agent was killed in between): never
/// labelled, or its container end still in the host namespace.
fn half_made(veth: &crate::model::Link, observed: &Observed) -> bool {
    veth.is_unlabelled_weft_veth()
        || observed
            .links
            .get(&container_end_name(&veth.name))
            .is_some_and(crate::model::Link::is_unlabelled_weft_veth)
}

/// The container end of a pair still in the host namespace (half made, or waiting for its
/// runtime): it goes with its host end (deleting either end of a pair deletes both), so it is
/// never removed on its own.
fn container_end_in_host(link: &crate::model::Link, observed: &Observed) -> bool {
    let waiting = link.alias.as_deref().is_some_and(|a| a.starts_with(crate::model::HANDOVER_ALIAS_PREFIX));
    link.kind == LinkKind::Veth
        && (link.is_unlabelled_weft_veth() || waiting)
        && observed.links.keys().any(|host| host != &link.name && container_end_name(host) == link.name)
}

fn plan_bridge<'a>(
    net: &'a NetworkDevices,
    observed: &Observed,
    ops: &mut Vec<Op>,
    fresh: &mut BTreeSet<&'a str>,
) {
    let existing = observed.links.get(&net.bridge);
    let usable = existing.filter(|l| l.kind == LinkKind::Bridge && l.place == Place::Switch);
    let Some(bridge) = usable else {
        if let Some(existing) = existing {
            ops.push(Op::delete(existing));
        }
        fresh.insert(&net.bridge);
        let alias = crate::model::network_alias(&net.network_id);
        ops.push(Op::CreateBridge { name: net.bridge.clone(), alias, mtu: net.mtu });
        return;
    };
    if bridge.mtu != net.mtu || !bridge.up {
        ops.push(Op::SetLink { name: net.bridge.clone(), place: Place::Switch, mtu: net.mtu, master: None });
    }
    // The switch only switches: an address would make it a host on the network.
    for address in bridge.addresses.iter().filter(|a| !is_automatic(a)) {
        ops.push(Op::DeleteAddress { link: net.bridge.clone(), place: Place::Switch, address: *address });
    }
}

/// The gateway pair: its host end with the gateway's MAC and addresses, its port on the
/// bridge. A pair with either end missing or wrong is made again whole.
fn plan_gateway(net: &NetworkDevices, observed: &Observed, ops: &mut Vec<Op>, fresh: &BTreeSet<&str>) {
    let alias = crate::model::gateway_alias(&net.network_id);
    let labelled = |l: &&Link| l.kind == LinkKind::Veth && l.alias.as_deref() == Some(alias.as_str());
    let host = observed.links.get(&net.gateway);
    let port = observed.links.get(&net.gateway_port);
    let host_ok = host.filter(labelled).filter(|l| l.place == Place::Host && l.mac == Some(net.gateway_mac));
    let port_ok = port.filter(labelled).filter(|l| l.place == Place::Switch);
    let (Some(host), Some(port)) = (host_ok, port_ok) else {
        if let Some(host) = host {
            ops.push(Op::delete(host));
        }
        // Deleting either end of a pair deletes both.
        if let Some(port) = port.filter(|p| !host.is_some_and(|h| labelled(&h) && labelled(p))) {
            ops.push(Op::delete(port));
        }
        ops.push(Op::CreateGateway {
            name: net.gateway.clone(),
            port: net.gateway_port.clone(),
            bridge: net.bridge.clone(),
            alias,
            mac: net.gateway_mac,
            mtu: net.mtu,
        });
        ops.extend(
            net.gateway_addresses.iter().map(|a| Op::AddAddress { link: net.gateway.clone(), address: *a }),
        );
        return;
    };
    if host.mtu != net.mtu || !host.up {
        ops.push(Op::SetLink { name: net.gateway.clone(), place: Place::Host, mtu: net.mtu, master: None });
    }
    ops.extend(keep_on_bridge(port, net, net.mtu, fresh));
    for address in net.gateway_addresses.difference(&host.addresses) {
        ops.push(Op::AddAddress { link: net.gateway.clone(), address: *address });
    }
    for address in host.addresses.difference(&net.gateway_addresses).filter(|a| !is_automatic(a)) {
        ops.push(Op::DeleteAddress { link: net.gateway.clone(), place: Place::Host, address: *address });
    }
}

fn plan_services(services: &ServiceLink, observed: &Observed, ops: &mut Vec<Op>) {
    let existing = observed.links.get(&services.name);
    match existing {
        Some(foreign) if !foreign.is_weft() => ops.push(Op::Conflict {
            name: foreign.name.clone(),
            reason: "weft needs this name for the link of its DNS address".into(),
        }),
        Some(link) if link.kind == LinkKind::Bridge => {
            if !link.up {
                ops.push(Op::SetLink {
                    name: link.name.clone(),
                    place: Place::Host,
                    mtu: link.mtu,
                    master: None,
                });
            }
            for address in services.addresses.difference(&link.addresses) {
                ops.push(Op::AddAddress { link: link.name.clone(), address: *address });
            }
            for address in link.addresses.difference(&services.addresses).filter(|a| !is_automatic(a)) {
                ops.push(Op::DeleteAddress {
                    link: link.name.clone(),
                    place: Place::Host,
                    address: *address,
                });
            }
        }
        _ => {
            if let Some(existing) = existing {
                ops.push(Op::delete(existing));
            }
            ops.push(Op::CreateServiceLink {
                name: services.name.clone(),
                alias: crate::model::service_alias(),
            });
            ops.extend(
                services
                    .addresses
                    .iter()
                    .map(|a| Op::AddAddress { link: services.name.clone(), address: *a }),
            );
        }
    }
}

fn plan_vxlan<'a>(
    net: &'a NetworkDevices,
    observed: &Observed,
    ops: &mut Vec<Op>,
    fresh: &mut BTreeSet<&'a str>,
) {
    let wanted = LinkKind::Vxlan {
        vni: net.vni,
        port: net.port,
        local: Some(net.local_vtep),
        learning: false,
        proxy: true,
    };
    let existing = observed.links.get(&net.vxlan);
    match existing.filter(|l| l.kind == wanted && l.place == Place::Switch) {
        Some(vxlan) => ops.extend(keep_on_bridge(vxlan, net, net.mtu, fresh)),
        None => {
            if let Some(existing) = existing {
                ops.push(Op::delete(existing));
            }
            fresh.insert(&net.vxlan);
            ops.push(Op::CreateVxlan {
                name: net.vxlan.clone(),
                alias: crate::model::network_alias(&net.network_id),
                vni: net.vni,
                port: net.port,
                local: net.local_vtep,
                mtu: net.mtu,
                bridge: net.bridge.clone(),
            });
        }
    }
}

/// A port of the network's bridge (its VXLAN device, the gateway's port, a container's veth)
/// kept on the bridge with `mtu` and up, and put back on it when the bridge is made again.
fn keep_on_bridge(port: &Link, net: &NetworkDevices, mtu: u32, fresh: &BTreeSet<&str>) -> Option<Op> {
    let in_line = !fresh.contains(net.bridge.as_str())
        && port.master.as_deref() == Some(net.bridge.as_str())
        && port.mtu == mtu
        && port.up;
    (!in_line).then(|| Op::SetLink {
        name: port.name.clone(),
        place: Place::Switch,
        mtu,
        master: Some(net.bridge.clone()),
    })
}

fn plan_local(net: &NetworkDevices, observed: &Observed, ops: &mut Vec<Op>, fresh: &BTreeSet<&str>) {
    for endpoint in net.local.values() {
        match observed.links.get(&endpoint.host_veth) {
            Some(veth)
                if veth.kind == LinkKind::Veth
                    && veth.place == Place::Switch
                    && veth.is_weft()
                    && !half_made(veth, observed) =>
            {
                ops.extend(keep_on_bridge(veth, net, endpoint.mtu, fresh));
            }
            Some(foreign) if !foreign.is_weft() => ops.push(Op::Conflict {
                name: foreign.name.clone(),
                reason: format!("endpoint {} needs this name for its veth", endpoint.endpoint_id),
            }),
            existing => {
                if let Some(existing) = existing {
                    ops.push(Op::delete(existing));
                }
                ops.push(Op::Plug { bridge: net.bridge.clone(), endpoint: endpoint.clone() });
            }
        }
    }
}

fn plan_remote(
    net: &NetworkDevices,
    observed: &Observed,
    fresh: &BTreeSet<&str>,
    ops: &mut Vec<Op>,
    late: &mut Vec<Op>,
) {
    let empty_fdb = Default::default();
    let empty_neighbours = Default::default();
    let recreated = fresh.contains(net.vxlan.as_str());
    let fdb = if recreated { &empty_fdb } else { observed.fdb.get(&net.vxlan).unwrap_or(&empty_fdb) };
    let neighbours = if recreated {
        &empty_neighbours
    } else {
        observed.neighbours.get(&net.vxlan).unwrap_or(&empty_neighbours)
    };

    for remote in net.remote.values() {
        if fdb.get(&remote.mac) != Some(&remote.vtep) {
            ops.push(Op::SetFdb { vxlan: net.vxlan.clone(), mac: remote.mac, vtep: remote.vtep });
        }
        for ip in &remote.ips {
            if neighbours.get(ip) != Some(&remote.mac) {
                ops.push(Op::SetNeighbour { vxlan: net.vxlan.clone(), ip: *ip, mac: remote.mac });
            }
        }
    }
    for (mac, vtep) in fdb {
        if !net.remote.contains_key(mac) {
            late.push(Op::DeleteFdb { vxlan: net.vxlan.clone(), mac: *mac, vtep: *vtep });
        }
    }
    let wanted_ips: BTreeSet<&IpAddr> = net.remote.values().flat_map(|r| &r.ips).collect();
    for ip in neighbours.keys() {
        if !wanted_ips.contains(ip) {
            late.push(Op::DeleteNeighbour { vxlan: net.vxlan.clone(), ip: *ip });
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
