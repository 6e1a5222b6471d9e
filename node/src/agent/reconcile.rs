//! Keeping the kernel in line with the registry: each pass dumps the kernel, plans the
//! difference from what the mirror wants here and carries it out, loads the nftables rules,
//! syncs WireGuard, refreshes the DNS names, and notices containers that went away.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use weft_dataplane::model::endpoint_alias;
use weft_dataplane::{Dataplane, Desired, Observed, plan};
use weft_dns::{EndpointRecord, NameTable};

use crate::attachments::{Entry, NamespaceId, Presence, Stage, judge};
use crate::desired::{
    Failures, blame, desired, encrypted_vxlan, host_veth_name, rules, tunnel_address, wireguard_overhead,
    wireguard_peers,
};

use super::*;

impl<D: Dataplane> Agent<D> {
    /// Reconciles whenever the registry changes, and at least every resync period.
    pub async fn reconcile_forever(&self) {
        let mut reported = BTreeMap::new();
        loop {
            let full = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep(self.settings.resync) => true,
            };
            let failures = self.reconcile_pass(full).await;
            for problem in &failures.host {
                tracing::warn!(error = %problem, "reconcile");
            }
            // Per endpoint, only changes are worth a line: the same failure repeats every pass.
            if failures.endpoints != reported {
                for (endpoint, why) in &failures.endpoints {
                    if reported.get(endpoint) != Some(why) {
                        tracing::warn!(endpoint = %short(endpoint), error = %why, "cannot program endpoint");
                    }
                }
                reported = failures.endpoints;
            }
        }
    }

    /// One pass: dump the kernel, plan against the registry, apply. Afterwards the host is
    /// programmed up to the revision it planned from, except for the endpoints named in the
    /// answer; failures that belong to no endpoint hold the applied revision back.
    ///
    /// Callers that ask while a pass is running share the next one: attaches at once plumb in
    /// one pass rather than one pass each (a pass dumps the whole kernel).
    pub async fn reconcile(&self) -> Failures {
        let ticket = self.pass_requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut loaded = self.reconciling.lock().await;
        if self.pass_covered.load(Ordering::SeqCst) >= ticket {
            return self.last_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        }
        // Everyone who asked so far has their change in place by now: this pass covers them.
        let covers = self.pass_requested.load(Ordering::SeqCst);
        let failures = self.pass(&mut loaded, false).await;
        self.pass_covered.store(covers, Ordering::SeqCst);
        failures
    }

    pub(super) async fn reconcile_pass(&self, full: bool) -> Failures {
        let mut loaded = self.reconciling.lock().await;
        self.pass(&mut loaded, full).await
    }

    pub(super) async fn pass(&self, loaded: &mut LoadedRules, full: bool) -> Failures {
        let host = &self.settings.host;
        if !self.shared().mirror.synced {
            return Failures::default();
        }
        let observed = match self.kernel.observe().await {
            Ok(observed) => observed,
            Err(e) => return Failures { host: vec![e.to_string()], ..Failures::default() },
        };
        self.check_presence(&observed);
        let (want, network_rules, script, revision, peers, tunnel_address) = {
            let shared = self.shared();
            let mut want = desired(&shared.mirror, host, &shared.attachments.plumbing());
            want.services = self.settings.service_dns.map(service_link);
            let network_rules = rules(&shared.mirror, &want);
            let script = weft_dataplane::rules::ruleset(
                &network_rules,
                &encrypted_vxlan(&shared.mirror, &self.settings.wireguard_interface),
            );
            let peers = wireguard_peers(&shared.mirror, host);
            (want, network_rules, script, shared.mirror.revision, peers, tunnel_address(&shared.mirror, host))
        };
        let ops = plan(&want, &observed);
        if !ops.is_empty() {
            tracing::debug!(ops = ops.len(), revision, "reconciling");
        }
        // The rules name interfaces, never need them to exist: they load while the links are
        // made (each side waits out RCU grace periods in the kernel; a new network's first
        // container waited for both, one after the other).
        let load = full || loaded.script.as_ref() != Some(&script);
        let (failed, rules_loaded) = tokio::join!(self.kernel.apply_each(&ops), async {
            if load { Some(self.kernel.load_rules(&script).await) } else { None }
        });
        let mut failures = blame(&want, &self.shared().mirror, &ops, &failed);
        if let Some(tunnel) = &self.tunnel {
            let mtu = host.underlay_mtu.saturating_sub(wireguard_overhead(host.vtep));
            let errors = tunnel.sync(&self.kernel, &observed, tunnel_address, mtu, peers).await;
            failures.host.extend(errors.iter().map(ToString::to_string));
        }
        self.refresh_dns(&want, revision).await;
        if let Some(result) = rules_loaded {
            match result {
                Ok(()) => loaded.script = Some(script),
                Err(e) => {
                    loaded.script = None;
                    failures.host.push(e.to_string());
                }
            }
            // After the links: it configures the gateways this pass may have made.
            self.published_ports_loaded(loaded, &network_rules, &mut failures).await;
        }
        let mut beat = false;
        {
            let mut problems = self.problems.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *problems != failures.endpoints {
                problems.clone_from(&failures.endpoints);
                beat = true;
            }
        }
        if failures.host.is_empty() && self.applied.send_replace(revision) != revision {
            beat = true;
        }
        if beat {
            self.beat_now.notify_one();
        }
        self.last_failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone_from(&failures);
        failures
    }

    /// After the rules load: 127.0.0.1 may reach the networks that publish ports through their
    /// gateways, and the flows of published ports that went are forgotten.
    async fn published_ports_loaded(
        &self,
        loaded: &mut LoadedRules,
        network_rules: &[weft_dataplane::rules::NetworkRules],
        failures: &mut Failures,
    ) {
        let publishing: Vec<String> =
            network_rules.iter().filter(|n| !n.published.is_empty()).map(|n| n.gateway.clone()).collect();
        if !publishing.is_empty()
            && let Err(e) = self.kernel.prepare_publishing(&publishing).await
        {
            failures.host.push(e.to_string());
        }
        if loaded.script.is_none() {
            return;
        }
        let now: std::collections::BTreeSet<_> =
            network_rules.iter().flat_map(|n| n.published.iter().copied()).collect();
        let gone: Vec<_> = loaded.published.difference(&now).copied().collect();
        if !gone.is_empty() {
            // Best effort: a flow left behind ends when its client stops sending.
            if let Err(e) = self.kernel.forget_flows(&gone).await {
                tracing::warn!(error = %e, "could not forget the flows of unpublished ports");
            }
        }
        loaded.published = now;
    }

    /// Checks that every attached container is still in the namespace it was attached in. A
    /// container whose namespace is gone or replaced is taken out of the plan at once (so its
    /// interface is never plumbed into whatever now sits at that path) and handed to the
    /// janitor, which releases its endpoint.
    pub(super) fn check_presence(&self, observed: &Observed) {
        let mut gone_any = false;
        {
            let mut shared = self.shared();
            let Shared { mirror, attachments } = &mut *shared;
            for entry in attachments.entries.values_mut() {
                // A runtime that moves interfaces itself also says when a container goes
                // (Docker: Leave, DeleteEndpoint); its sandbox may not exist yet at all.
                if entry.busy
                    || entry.gone.is_some()
                    || entry.record.stage != Stage::Attached
                    || entry.record.runtime_handover
                {
                    continue;
                }
                let Some(endpoint_id) = entry.record.endpoint_id.clone() else { continue };
                if entry.record.revision == 0 {
                    // Carried over from an earlier version, which kept no revision.
                    match mirror.endpoints.get(&endpoint_id) {
                        Some(endpoint) => entry.record.revision = endpoint.revision,
                        None => continue,
                    }
                }
                let veth = observed.links.get(&host_veth_name(entry.record.revision));
                let interface_present =
                    veth.is_some_and(|l| l.alias.as_deref() == Some(endpoint_alias(&endpoint_id).as_str()));
                let path = entry.record.netns.clone();
                let now = NamespaceId::at(&path);
                match judge(&path, entry.record.namespace, &now, entry.held.is_some(), interface_present) {
                    Presence::Same => {
                        if entry.held.is_none() {
                            entry.held = hold(&path, entry.record.namespace);
                        }
                    }
                    Presence::Gone(why) => {
                        tracing::info!(
                            container = %entry.record.container_id,
                            endpoint = %short(&endpoint_id),
                            %why,
                            "container gone without a detach: unplumbing it and releasing its endpoint"
                        );
                        entry.gone = Some(why);
                        entry.held = None;
                        gone_any = true;
                    }
                    Presence::Unknown(why) => {
                        tracing::debug!(container = %entry.record.container_id, %why, "cannot check the container's namespace now");
                    }
                }
            }
        }
        if gone_any {
            self.janitor.notify_one();
        }
    }

    /// Rebuilds the name table when the registry moved, and listens on the gateway of every
    /// network present here (a gateway whose address is not usable yet is retried next pass).
    pub(super) async fn refresh_dns(&self, want: &Desired, revision: u64) {
        if self.dns_revision.swap(revision, Ordering::Relaxed) != revision {
            let table = {
                let shared = self.shared();
                let mirror = &shared.mirror;
                NameTable::build(mirror.endpoints.values().filter_map(|e| {
                    let network = mirror.networks.get(&e.network_id)?;
                    Some(EndpointRecord {
                        network_id: e.network_id.clone(),
                        network_name: network.name.clone(),
                        node: e.node.clone(),
                        container_id: e.container_id.clone(),
                        name: e.container_name.clone(),
                        aliases: e.aliases.clone(),
                        ipv4: e.ipv4.and_then(|a| match a.ip {
                            std::net::IpAddr::V4(v4) => Some(v4),
                            std::net::IpAddr::V6(_) => None,
                        }),
                        ipv6: e.ipv6.and_then(|a| match a.ip {
                            std::net::IpAddr::V6(v6) => Some(v6),
                            std::net::IpAddr::V4(_) => None,
                        }),
                    })
                }))
                .with_networks(mirror.networks.values().map(|n| n.name.as_str()))
            };
            self.dns.set_table(table);
        }
        let wanted: Vec<SocketAddr> = want
            .networks
            .values()
            .flat_map(|n| n.gateway_addresses.iter().map(|g| g.ip))
            .chain(self.settings.service_dns)
            .map(|ip| SocketAddr::new(ip, self.settings.dns_port))
            .collect();
        let missing: Vec<SocketAddr> = {
            let mut listeners = self.dns_listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            listeners.retain(|address, task| {
                let keep = wanted.contains(address);
                if !keep {
                    task.abort();
                }
                keep
            });
            wanted.iter().filter(|a| !listeners.contains_key(a)).copied().collect()
        };
        for address in missing {
            match weft_dns::server::listen(self.dns.clone(), address).await {
                Ok(listening) => {
                    tracing::info!(%address, "DNS listening");
                    self.dns_listeners
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(address, listening.task);
                }
                Err(e) => tracing::debug!(%address, error = %e, "DNS cannot listen yet; retrying next pass"),
            }
        }
    }
}

/// The link of weft's that holds `dns`, the DNS address every container reaches through its
/// gateway.
fn service_link(dns: std::net::IpAddr) -> weft_dataplane::ServiceLink {
    let prefix = if dns.is_ipv4() { 32 } else { 128 };
    weft_dataplane::ServiceLink {
        name: "weft-dns".into(),
        addresses: [weft_dataplane::IfAddr { ip: dns, prefix }].into(),
    }
}

/// Opens the namespace at `path` if it is still the one recorded.
pub(super) fn hold(path: &Path, recorded: NamespaceId) -> Option<Arc<File>> {
    let file = File::open(path).ok()?;
    (NamespaceId::of(&file).ok()? == recorded).then(|| Arc::new(file))
}

/// Whether an attached container's namespace is still at its path (asked when the same
/// container attaches again).
pub(super) fn still_there(entry: &Entry) -> bool {
    let path = &entry.record.netns;
    let now = NamespaceId::at(path);
    !matches!(judge(path, entry.record.namespace, &now, true, true), Presence::Gone(_))
}
