//! What the node agent needs of its host's kernel, as a trait: the real kernel ([`Kernel`],
//! netlink and nft) in production, a [`SimulatedHost`] (the [`crate::simulated`] kernel in
//! memory) where the agent's own logic is tested without root.

use std::future::Future;
use std::sync::Mutex;

use crate::kernel::{Kernel, KernelError};
use crate::model::{ContainerInterface, LinkKind, Observed};
use crate::plan::Op;
use crate::rules::{PublishedRule, Rulesets};

/// A host's kernel as the agent drives it.
pub trait Dataplane: Send + Sync + 'static {
    /// What the kernel holds that weft cares about.
    fn observe(&self) -> impl Future<Output = Result<Observed, KernelError>> + Send;
    /// Carries out `ops` in order, carrying on past failures; the index of each one refused.
    fn apply_each(&self, ops: &[Op]) -> impl Future<Output = Vec<(usize, KernelError)>> + Send;
    /// Whether the port of that name exists on a bridge of the switch namespace and is up.
    fn port_is_up(&self, name: &str) -> impl Future<Output = bool> + Send;
    /// Whether a link of that name exists in the host namespace (a container end waiting for
    /// its runtime).
    fn host_link_exists(&self, name: &str) -> impl Future<Output = bool> + Send;
    /// Turns on forwarding and loads weft's nftables rules (replacing weft's tables) in the
    /// host and switch namespaces.
    fn load_rules(&self, rules: &Rulesets) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// Creates a kernel WireGuard link.
    fn create_wireguard(&self, name: &str) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// Lets the host's 127.0.0.1 reach published ports of containers behind these gateways.
    fn prepare_publishing(&self, gateways: &[String])
    -> impl Future<Output = Result<(), KernelError>> + Send;
    /// Drops the connection-tracking entries of published ports that are gone, so a new
    /// container on the same host port gets new flows instead of the old container's.
    fn forget_flows(&self, gone: &[PublishedRule]) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// The interface `ifname` in the namespace at `netns`, and that namespace's default
    /// gateways.
    fn observe_container(
        &self,
        netns: &std::path::Path,
        ifname: &str,
    ) -> impl Future<Output = Result<ContainerInterface, KernelError>> + Send;
}

/// Runs blocking work (a sysctl write, a process) off the async workers.
async fn off_the_workers(
    doing: &str,
    work: impl FnOnce() -> Result<(), KernelError> + Send + 'static,
) -> Result<(), KernelError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(KernelError { doing: doing.to_string(), reason: e.to_string(), source: None })
    })
}

impl Dataplane for Kernel {
    async fn observe(&self) -> Result<Observed, KernelError> {
        Kernel::observe(self).await
    }

    async fn apply_each(&self, ops: &[Op]) -> Vec<(usize, KernelError)> {
        Kernel::apply_each(self, ops).await
    }

    async fn port_is_up(&self, name: &str) -> bool {
        Kernel::port_is_up(self, name).await
    }

    async fn host_link_exists(&self, name: &str) -> bool {
        Kernel::host_link_exists(self, name).await
    }

    async fn load_rules(&self, rules: &Rulesets) -> Result<(), KernelError> {
        // nft is a process to spawn and wait for: off the async workers, so DNS answers and
        // attaches are not held up behind it.
        let rules = rules.clone();
        let switch = self.switch_path().map(std::path::Path::to_path_buf);
        tokio::task::spawn_blocking(move || {
            crate::rules::enable_forwarding()?;
            // The two namespaces' tables are independent, and a load that replaces a table
            // waits out its hooks' removal (10–20 ms each here): side by side, the first
            // container of a network on a host waits for one of them, not both.
            std::thread::scope(|scope| {
                let switch = switch.map(|switch| {
                    scope.spawn(move || {
                        crate::rules::load(&rules.switch, Some(&switch))?;
                        crate::switch::quiet_bridge_hooks(&switch)
                    })
                });
                let host = crate::rules::load(&rules.host, None);
                let switch = switch.map_or(Ok(()), |job| {
                    job.join().unwrap_or_else(|_| {
                        Err(KernelError {
                            doing: "loading weft's nftables rules in the switch namespace".into(),
                            reason: "the loading thread panicked".into(),
                            source: None,
                        })
                    })
                });
                host.and(switch)
            })
        })
        .await
        .unwrap_or_else(|e| {
            Err(KernelError {
                doing: "loading weft's nftables rules".into(),
                reason: e.to_string(),
                source: None,
            })
        })
    }

    async fn create_wireguard(&self, name: &str) -> Result<(), KernelError> {
        Kernel::create_wireguard(self, name).await
    }

    async fn prepare_publishing(&self, gateways: &[String]) -> Result<(), KernelError> {
        let gateways = gateways.to_vec();
        off_the_workers("preparing gateways for published ports", move || {
            gateways.iter().try_for_each(|g| crate::rules::route_localnet(g))
        })
        .await
    }

    async fn forget_flows(&self, gone: &[PublishedRule]) -> Result<(), KernelError> {
        let gone = gone.to_vec();
        off_the_workers("forgetting flows", move || gone.iter().try_for_each(crate::rules::forget_flows))
            .await
    }

    async fn observe_container(
        &self,
        netns: &std::path::Path,
        ifname: &str,
    ) -> Result<ContainerInterface, KernelError> {
        let inside = Kernel::connect_in(netns).await?;
        let mut observed = inside.observe().await?;
        Ok(ContainerInterface {
            link: observed.links.remove(ifname),
            default_gateways: inside.default_gateways().await?,
        })
    }
}

/// A host whose kernel is [`crate::simulated`]: operations change an [`Observed`] in memory.
/// Names can be made to fail, as a kernel refusing something would.
#[derive(Debug, Default)]
pub struct SimulatedHost {
    state: Mutex<SimulatedState>,
}

#[derive(Debug, Default)]
struct SimulatedState {
    observed: Observed,
    rules: Option<Rulesets>,
    localnet: std::collections::BTreeSet<String>,
    forgotten: Vec<PublishedRule>,
    /// Links whose creation the kernel refuses, with why.
    refuse: Vec<(String, String)>,
}

impl SimulatedHost {
    fn state(&self) -> std::sync::MutexGuard<'_, SimulatedState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the kernel holds now.
    pub fn observed(&self) -> Observed {
        self.state().observed.clone()
    }

    /// The rules last loaded.
    pub fn rules(&self) -> Option<Rulesets> {
        self.state().rules.clone()
    }

    /// Gateways 127.0.0.1 may reach containers through.
    pub fn localnet(&self) -> Vec<String> {
        self.state().localnet.iter().cloned().collect()
    }

    /// Published ports whose flows were forgotten, in order.
    pub fn forgotten(&self) -> Vec<PublishedRule> {
        self.state().forgotten.clone()
    }

    /// From now on, creating a link named `name` fails with `reason`.
    pub fn refuse(&self, name: &str, reason: &str) {
        self.state().refuse.push((name.to_string(), reason.to_string()));
    }

    /// Changes the kernel behind weft's back (an operator, a crash).
    pub fn tamper(&self, change: impl FnOnce(&mut Observed)) {
        change(&mut self.state().observed);
    }
}

fn created_name(op: &Op) -> Option<&str> {
    match op {
        Op::CreateBridge { name, .. } | Op::CreateVxlan { name, .. } | Op::CreateGateway { name, .. } => {
            Some(name)
        }
        Op::Plug { endpoint, .. } => Some(&endpoint.host_veth),
        _ => None,
    }
}

impl Dataplane for SimulatedHost {
    async fn observe(&self) -> Result<Observed, KernelError> {
        Ok(self.observed())
    }

    async fn apply_each(&self, ops: &[Op]) -> Vec<(usize, KernelError)> {
        let mut state = self.state();
        let mut failed = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let refused =
                created_name(op).and_then(|name| state.refuse.iter().find(|(n, _)| n == name)).cloned();
            let result = match refused {
                Some((_, reason)) => Err(crate::simulated::Refusal::Scripted(reason)),
                None => crate::simulated::apply(&mut state.observed, op),
            };
            if let Err(refusal) = result {
                let reason = refusal.to_string();
                let source = Some(std::sync::Arc::new(refusal) as _);
                failed.push((i, KernelError { doing: format!("{op:?}"), reason, source }));
            }
        }
        failed
    }

    async fn port_is_up(&self, name: &str) -> bool {
        self.state().observed.links.get(name).is_some_and(|l| l.up && l.place == crate::model::Place::Switch)
    }

    async fn host_link_exists(&self, name: &str) -> bool {
        self.state().observed.links.get(name).is_some_and(|l| l.place == crate::model::Place::Host)
    }

    async fn load_rules(&self, rules: &Rulesets) -> Result<(), KernelError> {
        self.state().rules = Some(rules.clone());
        Ok(())
    }

    async fn create_wireguard(&self, name: &str) -> Result<(), KernelError> {
        let mut state = self.state();
        let link = crate::model::Link {
            index: 0,
            name: name.to_string(),
            place: crate::model::Place::Host,
            kind: LinkKind::Other("wireguard".into()),
            alias: None,
            master: None,
            mtu: 1420,
            up: false,
            mac: None,
            addresses: Default::default(),
        };
        if state.observed.links.insert(name.to_string(), link).is_some() {
            return Err(KernelError {
                doing: format!("creating {name}"),
                reason: "File exists".into(),
                source: None,
            });
        }
        Ok(())
    }

    async fn prepare_publishing(&self, gateways: &[String]) -> Result<(), KernelError> {
        self.state().localnet.extend(gateways.iter().cloned());
        Ok(())
    }

    async fn forget_flows(&self, gone: &[PublishedRule]) -> Result<(), KernelError> {
        self.state().forgotten.extend_from_slice(gone);
        Ok(())
    }

    async fn observe_container(
        &self,
        netns: &std::path::Path,
        _: &str,
    ) -> Result<ContainerInterface, KernelError> {
        Err(KernelError {
            doing: format!("looking into {}", netns.display()),
            reason: "the simulated kernel has no container namespaces".into(),
            source: None,
        })
    }
}

/// A shared host: tests keep a handle on the [`SimulatedHost`] they give an agent.
impl<T: Dataplane> Dataplane for std::sync::Arc<T> {
    async fn observe(&self) -> Result<Observed, KernelError> {
        T::observe(self).await
    }

    async fn apply_each(&self, ops: &[Op]) -> Vec<(usize, KernelError)> {
        T::apply_each(self, ops).await
    }

    async fn port_is_up(&self, name: &str) -> bool {
        T::port_is_up(self, name).await
    }

    async fn host_link_exists(&self, name: &str) -> bool {
        T::host_link_exists(self, name).await
    }

    async fn load_rules(&self, rules: &Rulesets) -> Result<(), KernelError> {
        T::load_rules(self, rules).await
    }

    async fn create_wireguard(&self, name: &str) -> Result<(), KernelError> {
        T::create_wireguard(self, name).await
    }

    async fn prepare_publishing(&self, gateways: &[String]) -> Result<(), KernelError> {
        T::prepare_publishing(self, gateways).await
    }

    async fn forget_flows(&self, gone: &[PublishedRule]) -> Result<(), KernelError> {
        T::forget_flows(self, gone).await
    }

    async fn observe_container(
        &self,
        netns: &std::path::Path,
        ifname: &str,
    ) -> Result<ContainerInterface, KernelError> {
        T::observe_container(self, netns, ifname).await
    }
}
