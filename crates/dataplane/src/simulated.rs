//! A kernel in memory: what each [`Op`] does to an [`Observed`], as Linux does it (links
//! created up, a deleted bridge releasing its ports, a deleted VXLAN device taking its FDB and
//! neighbour entries along). Pure; for tests of the planner and of whatever drives it, without
//! root.

use std::collections::BTreeSet;

use crate::model::{Handover, IfAddr, Link, LinkKind, Observed, endpoint_alias, handover_alias};
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
        kind,
        alias: Some(alias),
        master,
        mtu,
        up: true,
        mac: None,
        addresses: BTreeSet::new(),
    };
    match op {
        Op::CreateBridge { name, alias, mac, mtu } => create(
            observed,
            Link { mac: Some(*mac), ..link(name, LinkKind::Bridge, alias.clone(), None, *mtu) },
        ),
        Op::CreateVxlan { name, alias, vni, port, local, mtu, bridge } => {
            existing(observed, bridge)?;
            let kind =
                LinkKind::Vxlan { vni: *vni, port: *port, local: Some(*local), learning: false, proxy: true };
            create(observed, link(name, kind, alias.clone(), Some(bridge.clone()), *mtu))
        }
        Op::Plug { bridge, endpoint } => {
            existing(observed, bridge)?;
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
                    up: false,
                    mac: Some(endpoint.mac),
                    ..link(&end, LinkKind::Veth, alias, None, endpoint.mtu)
                };
                observed.links.insert(end, waiting);
            }
            Ok(())
        }
        Op::CreateServiceLink { name, alias } => {
            create(observed, link(name, LinkKind::Bridge, alias.clone(), None, 1500))
        }
        Op::SetLink { name, mtu, master } => {
            if let Some(master) = master {
                existing(observed, master)?;
            }
            let link = existing(observed, name)?;
            link.mtu = *mtu;
            link.up = true;
            if master.is_some() {
                link.master.clone_from(master);
            }
            Ok(())
        }
        Op::AddAddress { link, address } => {
            let link = existing(observed, link)?;
            if !link.addresses.insert(*address) {
                return Err(Refusal::AddressPresent { address: *address, link: link.name.clone() });
            }
            Ok(())
        }
        Op::DeleteAddress { link, address } => {
            let link = existing(observed, link)?;
            if !link.addresses.remove(address) {
                return Err(Refusal::AddressAbsent { address: *address, link: link.name.clone() });
            }
            Ok(())
        }
        Op::DeleteLink { name } => {
            let deleted = existing(observed, name)?.clone();
            observed.links.remove(name);
            // A veth pair goes as a whole: the container end still in the host namespace too.
            let container_end = crate::plan::container_end_name(name);
            if deleted.kind == LinkKind::Veth
                && observed.links.get(&container_end).is_some_and(|end| end.kind == LinkKind::Veth)
            {
                observed.links.remove(&container_end);
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

fn existing<'a>(observed: &'a mut Observed, name: &str) -> Result<&'a mut Link, Refusal> {
    observed.links.get_mut(name).ok_or_else(|| Refusal::NoSuchDevice(name.to_string()))
}

fn vxlan_device(observed: &mut Observed, name: &str) -> Result<(), Refusal> {
    match existing(observed, name)?.kind {
        LinkKind::Vxlan { .. } => Ok(()),
        _ => Err(Refusal::NotVxlan(name.to_string())),
    }
}
