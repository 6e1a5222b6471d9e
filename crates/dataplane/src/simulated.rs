//! A kernel in memory: what each [`Op`] does to an [`Observed`], as Linux does it (links
//! created up, a deleted bridge releasing its ports, a deleted VXLAN device taking its FDB and
//! neighbour entries along). Pure; for tests of the planner and of whatever drives it, without
//! root.

use std::collections::BTreeSet;

use crate::model::{Handover, IfAddr, Link, LinkKind, Observed, Place, endpoint_alias, handover_alias};
use crate::plan::Op;

/// Why the kernel would refuse an operation, in its words where it has them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}: File exists")]
    Exists(String),
    #[error("{0}: No such device")]
    NoSuchDevice(String),
    #[error("{address} is already on {link}")]
    AddressPresent { address: IfAddr, link: String },
    #[error("{address} is not on {link}")]
    AddressAbsent { address: IfAddr, link: String },
    #[error("{0} is not a VXLAN device")]
    NotVxlan(String),
    #[error("no {0}")]
    NoEntry(String),
    /// A refusal a test scripted ([`crate::SimulatedHost::refuse`]).
    #[error("{0}")]
    Scripted(String),
}

/// Carries out one operation, or says why the kernel would refuse it (a name taken, a device
/// missing), leaving `observed` as it was.
pub fn apply(observed: &mut Observed, op: &Op) -> Result<(), Refusal> {
    let link = |name: &str, kind: LinkKind, alias: String, master: Option<String>, mtu: u32| Link {
        index: 0,
        name: name.to_string(),
        place: Place::Switch,
        kind,
        alias: Some(alias),
        master,
        mtu,
        up: true,
        mac: None,
        addresses: BTreeSet::new(),
    };
    match op {
        Op::CreateBridge { name, alias, mtu } => {
            create(observed, link(name, LinkKind::Bridge, alias.clone(), None, *mtu))
        }
        Op::CreateVxlan { name, alias, vni, port, local, mtu, bridge } => {
            existing(observed, bridge, Place::Switch)?;
            let kind =
                LinkKind::Vxlan { vni: *vni, port: *port, local: Some(*local), learning: false, proxy: true };
            create(observed, link(name, kind, alias.clone(), Some(bridge.clone()), *mtu))
        }
        Op::CreateGateway { name, port, bridge, alias, mac, mtu } => {
            existing(observed, bridge, Place::Switch)?;
            if observed.links.contains_key(name) {
                return Err(Refusal::Exists(name.clone()));
            }
            create(observed, link(port, LinkKind::Veth, alias.clone(), Some(bridge.clone()), *mtu))?;
            let host = Link {
                place: Place::Host,
                mac: Some(*mac),
                ..link(name, LinkKind::Veth, alias.clone(), None, *mtu)
            };
            create(observed, host)
        }
        Op::Plug { bridge, endpoint } => {
            existing(observed, bridge, Place::Switch)?;
            let alias = endpoint_alias(&endpoint.endpoint_id);
            create(
                observed,
                link(&endpoint.host_veth, LinkKind::Veth, alias, Some(bridge.clone()), endpoint.mtu),
            )?;
            if endpoint.handover == Handover::Runtime {
                // Left in the host namespace, down, for the runtime to take.
                let end = crate::plan::container_end_name(&endpoint.host_veth);
                let alias = handover_alias(&endpoint.endpoint_id);
                let waiting = Link {
                    place: Place::Host,
                    up: false,
                    mac: Some(endpoint.mac),
                    ..link(&end, LinkKind::Veth, alias, None, endpoint.mtu)
                };
                observed.links.insert(end, waiting);
            }
            Ok(())
        }
        Op::CreateServiceLink { name, alias } => create(
            observed,
            Link { place: Place::Host, ..link(name, LinkKind::Bridge, alias.clone(), None, 1500) },
        ),
        Op::SetLink { name, place, mtu, master } => {
            if let Some(master) = master {
                existing(observed, master, *place)?;
            }
            let link = existing(observed, name, *place)?;
            link.mtu = *mtu;
            link.up = true;
            if master.is_some() {
                link.master.clone_from(master);
            }
            Ok(())
        }
        Op::AddAddress { link, address } => {
            let link = existing(observed, link, Place::Host)?;
            if !link.addresses.insert(*address) {
                return Err(Refusal::AddressPresent { address: *address, link: link.name.clone() });
            }
            Ok(())
        }
        Op::DeleteAddress { link, place, address } => {
            let link = existing(observed, link, *place)?;
            if !link.addresses.remove(address) {
                return Err(Refusal::AddressAbsent { address: *address, link: link.name.clone() });
            }
            Ok(())
        }
        Op::DeleteLink { name, place } => {
            let deleted = existing(observed, name, *place)?.clone();
            match observed.links.get(name) {
                Some(l) if l.place == *place => {
                    observed.links.remove(name);
                }
                _ => {
                    observed.misplaced.retain(|l| !(l.name == *name && l.place == *place));
                    return Ok(());
                }
            }
            if deleted.kind == LinkKind::Veth {
                // A veth pair goes as a whole: the container end still in the host namespace,
                // or the other end of a gateway pair.
                let container_end = crate::plan::container_end_name(name);
                observed.links.retain(|other_name, other| {
                    let partner = *other_name == container_end
                        || deleted.alias.as_deref().is_some_and(|a| {
                            a.starts_with(crate::model::GATEWAY_ALIAS_PREFIX)
                                && other.alias.as_deref() == Some(a)
                        });
                    !(partner && other.kind == LinkKind::Veth)
                });
            }
            observed.fdb.remove(name);
            observed.neighbours.remove(name);
            for port in observed.links.values_mut().filter(|l| l.master.as_deref() == Some(name)) {
                port.master = None;
            }
            Ok(())
        }
        Op::SetFdb { vxlan, mac, vtep } => {
            vxlan_device(observed, vxlan)?;
            observed.fdb.entry(vxlan.clone()).or_default().insert(*mac, *vtep);
            Ok(())
        }
        Op::DeleteFdb { vxlan, mac, vtep } => {
            let entries = observed.fdb.get_mut(vxlan);
            match entries {
                Some(entries) if entries.get(mac) == Some(vtep) => {
                    entries.remove(mac);
                    Ok(())
                }
                _ => Err(Refusal::NoEntry(format!("FDB entry {mac} → {vtep} on {vxlan}"))),
            }
        }
        Op::SetNeighbour { vxlan, ip, mac } => {
            vxlan_device(observed, vxlan)?;
            observed.neighbours.entry(vxlan.clone()).or_default().insert(*ip, *mac);
            Ok(())
        }
        Op::DeleteNeighbour { vxlan, ip } => {
            match observed.neighbours.get_mut(vxlan).and_then(|entries| entries.remove(ip)) {
                Some(_) => Ok(()),
                None => Err(Refusal::NoEntry(format!("neighbour entry for {ip} on {vxlan}"))),
            }
        }
        Op::Conflict { .. } => Ok(()),
    }
}

/// Carries out every operation in order; the index and reason of each one refused.
pub fn apply_all(observed: &mut Observed, ops: &[Op]) -> Vec<(usize, Refusal)> {
    ops.iter().enumerate().filter_map(|(i, op)| apply(observed, op).err().map(|e| (i, e))).collect()
}

fn create(observed: &mut Observed, link: Link) -> Result<(), Refusal> {
    if observed.links.contains_key(&link.name) {
        return Err(Refusal::Exists(link.name));
    }
    observed.links.insert(link.name.clone(), link);
    Ok(())
}

/// The link named `name` in the namespace at `place`.
fn existing<'a>(observed: &'a mut Observed, name: &str, place: Place) -> Result<&'a mut Link, Refusal> {
    let Observed { links, misplaced, .. } = observed;
    match links.get_mut(name) {
        Some(link) if link.place == place => Ok(link),
        _ => misplaced
            .iter_mut()
            .find(|l| l.name == name && l.place == place)
            .ok_or_else(|| Refusal::NoSuchDevice(name.to_string())),
    }
}

fn vxlan_device(observed: &mut Observed, name: &str) -> Result<(), Refusal> {
    match existing(observed, name, Place::Switch)?.kind {
        LinkKind::Vxlan { .. } => Ok(()),
        _ => Err(Refusal::NotVxlan(name.to_string())),
    }
}
