//! The edge to the Linux kernel: dumps what weft cares about into an [`Observed`] and carries
//! out [`Op`]s over rtnetlink. Entry writes (FDB and neighbours, the bulk of the work on a
//! busy host) are pipelined on one netlink socket rather than sent one round trip at a time.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, LinkWireguard,
    RouteMessageBuilder,
};

use crate::model::{
    Handover, IfAddr, Link, LinkKind, LocalEndpoint, Mac, Observed, Place, endpoint_alias, handover_alias,
};
use crate::plan::Op;

/// How many entry writes may be in flight on the netlink socket at once.
const PIPELINE: usize = 256;

/// Something the kernel refused, with what weft was doing.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {reason}")]
pub struct KernelError {
    pub doing: String,
    pub reason: String,
    /// The kernel's (or the OS's) own error, when there is one: kept for `source()` chains.
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

/// Linux's EBUSY.
const EBUSY: i32 = 16;
/// Linux's EEXIST.
const EEXIST: i32 = 17;

/// How often a dump is tried when links change under it (2 ms, 4 ms, … between attempts:
/// about 1.5 s in all).
const DUMP_ATTEMPTS: u32 = 40;

impl KernelError {
    /// The kernel answered a dump with EBUSY: links changed while it was being read (a
    /// runtime moving a dozen interfaces into containers at once does this). A new dump
    /// succeeds.
    fn is_interrupted_dump(&self) -> bool {
        self.is_kernel_error(EBUSY)
    }

    /// The kernel answered with this errno.
    fn is_kernel_error(&self, errno: i32) -> bool {
        self.source
            .as_ref()
            .and_then(|e| e.downcast_ref::<rtnetlink::Error>())
            .is_some_and(|e| matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno))
    }
}

fn failed(doing: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let doing = doing.into();
    move |e| KernelError { doing, reason: e.to_string(), source: Some(std::sync::Arc::new(e)) }
}

/// Longest wait for the kernel's answer to one operation (or one dump). Netlink answers in
/// microseconds, but a socket whose receive buffer overran loses answers for good: under 64
/// concurrent attaches the benchmark saw "ignoring unsolicited message ... Overrun" and then an
/// operation that never completed, holding the agent's reconcile pass (and every attach behind
/// it) forever. Past this, the operation counts as failed and the next pass plans again.
pub const KERNEL_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Receive buffer of the agent's netlink socket. The default (rmem_default, 208 KiB here)
/// overflowed with 64 attaches at once — "netlink socket buffer full", answers lost — while a
/// dump of a few hundred links was read. Root may go past rmem_max (SO_RCVBUFFORCE); where
/// that is refused the default stays and lost answers time out instead.
const NETLINK_RECEIVE_BUFFER: usize = 8 << 20;

fn enlarge_receive_buffer(
    connection: &mut rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
) {
    use rtnetlink::sys::AsyncSocket as _;
    let socket = connection.socket_mut().socket_ref();
    if let Err(e) =
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::RcvBufForce, &NETLINK_RECEIVE_BUFFER)
    {
        tracing::debug!(error = %e, "netlink receive buffer left at its default");
    }
}

/// `work`, or a failure saying the kernel did not answer in time.
async fn answered<T>(
    doing: impl FnOnce() -> String,
    work: impl std::future::Future<Output = Result<T, KernelError>>,
) -> Result<T, KernelError> {
    answered_within(KERNEL_ANSWER_TIMEOUT, doing, work).await
}

async fn answered_within<T>(
    limit: std::time::Duration,
    doing: impl FnOnce() -> String,
    work: impl std::future::Future<Output = Result<T, KernelError>>,
) -> Result<T, KernelError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(KernelError {
            doing: doing(),
            reason: format!("no answer from the kernel within {limit:?} (netlink answer lost?)"),
            source: None,
        })
    })
}

fn io_failed(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
    let doing = doing.into();
    move |e| KernelError { doing, reason: e.to_string(), source: Some(std::sync::Arc::new(e)) }
}

/// A netlink connection into one network namespace.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The namespace this process runs in (or the one [`Kernel::connect_in`] was given).
    handle: Handle,
    /// The switch namespace (see [`crate::switch`]), once [`Kernel::with_switch`] opened it.
    switch: Option<Switch>,
}

#[derive(Clone, Debug)]
struct Switch {
    handle: Handle,
    path: PathBuf,
    /// The namespace itself, held open: it stays reachable (for moving links in, for pinning
    /// it again) even when its pin is removed under the agent.
    held: std::sync::Arc<File>,
}

impl Kernel {
    /// Connects to the namespace this process runs in. Needs a Tokio runtime.
    pub fn connect() -> Result<Kernel, KernelError> {
        let (mut connection, handle, _) =
            rtnetlink::new_connection().map_err(io_failed("opening a netlink socket"))?;
        enlarge_receive_buffer(&mut connection);
        tokio::spawn(connection);
        Ok(Kernel { handle, switch: None })
    }

    /// This kernel with the switch namespace pinned at `path` opened too: networks' devices
    /// are observed and programmed there.
    pub async fn with_switch(self, path: &Path) -> Result<Kernel, KernelError> {
        let held = File::open(path)
            .map_err(io_failed(format!("opening the switch namespace {}", path.display())))?;
        let inside = Kernel::connect_in(path).await?;
        let switch =
            Switch { handle: inside.handle, path: path.to_path_buf(), held: std::sync::Arc::new(held) };
        Ok(Kernel { switch: Some(switch), ..self })
    }

    /// Pins the switch namespace again if its pin was removed (see
    /// [`crate::switch::keep_pinned`]); true when it had to.
    pub fn keep_switch_pinned(&self) -> Result<bool, KernelError> {
        match &self.switch {
            Some(switch) => crate::switch::keep_pinned(&switch.path, &switch.held),
            None => Ok(false),
        }
    }

    /// Where the switch namespace is pinned, if this kernel has one.
    pub fn switch_path(&self) -> Option<&Path> {
        self.switch.as_ref().map(|s| s.path.as_path())
    }

    fn switch(&self) -> Result<&Switch, KernelError> {
        self.switch.as_ref().ok_or_else(|| KernelError {
            doing: "programming a network's devices".into(),
            reason: "this agent has no switch namespace".into(),
            source: None,
        })
    }

    fn handle_in(&self, place: Place) -> Result<&Handle, KernelError> {
        match place {
            Place::Host => Ok(&self.handle),
            Place::Switch => Ok(&self.switch()?.handle),
        }
    }

    /// An open descriptor of the switch namespace, for moving links into it.
    fn switch_fd(&self) -> Result<File, KernelError> {
        let switch = self.switch()?;
        switch
            .held
            .try_clone()
            .map_err(io_failed(format!("opening the switch namespace {}", switch.path.display())))
    }

    /// Connects to the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`). The socket
    /// is created on a thread that enters the namespace and leaves it again at once; netlink
    /// sockets belong to the namespace they were born in.
    pub async fn connect_in(path: &Path) -> Result<Kernel, KernelError> {
        let path = path.to_path_buf();
        let doing = format!("opening a netlink socket in {}", path.display());
        let (mut connection, handle, _) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            use nix::sched::{CloneFlags, setns};
            let home = File::open("/proc/thread-self/ns/net")?;
            let target = File::open(&path)?;
            setns(&target, CloneFlags::CLONE_NEWNET)?;
            let connection = rtnetlink::new_connection();
            // Pool threads are reused: always go home, even when the socket failed.
            setns(&home, CloneFlags::CLONE_NEWNET)?;
            connection
        })
        .await
        .map_err(|e| KernelError { doing: doing.clone(), reason: e.to_string(), source: None })?
        .map_err(io_failed(doing))?;
        // The switch namespace's socket carries as much as the host's (a dump of every
        // container's veth, many plugs at once): it overran with the default buffer.
        enlarge_receive_buffer(&mut connection);
        tokio::spawn(connection);
        Ok(Kernel { handle, switch: None })
    }

    /// Dumps links, addresses, and the FDB and neighbour entries of weft's VXLAN devices.
    pub async fn observe(&self) -> Result<Observed, KernelError> {
        if self.keep_switch_pinned()? {
            tracing::warn!(
                path = %self.switch_path().map(Path::display).map(|p| p.to_string()).unwrap_or_default(),
                "the switch namespace's pin was removed under the agent: pinned it again"
            );
        }
        answered(|| "dumping links, addresses and entries".into(), self.dump()).await
    }

    /// Each namespace's dump is retried on its own when links change under it, so that churn
    /// in one (containers' interfaces being made and moved, many at once) does not throw away
    /// a good dump of the other.
    async fn dump(&self) -> Result<Observed, KernelError> {
        let mut observed = Observed::default();
        let host = retrying(|| dump_links(&self.handle, Place::Host)).await?;
        let Some(switch) = &self.switch else {
            observed.links = host;
            return Ok(observed);
        };
        observed.links = retrying(|| dump_links(&switch.handle, Place::Switch)).await?;
        for (name, link) in host {
            match observed.links.entry(name) {
                std::collections::btree_map::Entry::Vacant(free) => {
                    free.insert(link);
                }
                std::collections::btree_map::Entry::Occupied(_) if link.is_weft() => {
                    observed.misplaced.push(link)
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        }
        let vxlans: HashMap<u32, String> = observed
            .links
            .values()
            .filter(|l| l.place == Place::Switch && l.is_weft() && matches!(l.kind, LinkKind::Vxlan { .. }))
            .map(|l| (l.index, l.name.clone()))
            .collect();
        (observed.fdb, observed.neighbours) = retrying(|| dump_entries(&switch.handle, &vxlans)).await?;
        Ok(observed)
    }

    /// The underlay this host sends VXLAN from: the interface holding `explicit` when given,
    /// else the interface of the IPv4 default route and its first IPv4 address. Returns the
    /// address, the interface name and its MTU.
    pub async fn underlay(&self, explicit: Option<IpAddr>) -> Result<(IpAddr, String, u32), KernelError> {
        let observed = self.observe().await?;
        let holder = |ip: IpAddr| observed.links.values().find(|l| l.addresses.iter().any(|a| a.ip == ip));
        if let Some(ip) = explicit {
            let link = holder(ip).ok_or_else(|| KernelError {
                doing: format!("finding the underlay address {ip}"),
                reason: "no interface on this host has it".into(),
                source: None,
            })?;
            return Ok((ip, link.name.clone(), link.mtu));
        }
        let not_found = || KernelError {
            doing: "finding the underlay from the default route".into(),
            reason: "no IPv4 default route with an addressed interface; pass the underlay address explicitly"
                .into(),
            source: None,
        };
        let oif = self
            .default_routes(false)
            .await?
            .iter()
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    rtnetlink::packet_route::route::RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                })
            })
            .ok_or_else(not_found)?;
        let link = observed.links.values().find(|l| l.index == oif).ok_or_else(not_found)?;
        let ip = link.addresses.iter().map(|a| a.ip).find(IpAddr::is_ipv4).ok_or_else(not_found)?;
        Ok((ip, link.name.clone(), link.mtu))
    }

    /// This namespace's default routes of one family.
    async fn default_routes(
        &self,
        v6: bool,
    ) -> Result<Vec<rtnetlink::packet_route::route::RouteMessage>, KernelError> {
        let request = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let routes: Vec<_> = self
            .handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(failed(format!("listing IPv{} routes", if v6 { 6 } else { 4 })))?;
        Ok(routes.into_iter().filter(|r| r.header.destination_prefix_length == 0).collect())
    }

    /// The gateways of this namespace's IPv4 and IPv6 default routes.
    pub async fn default_gateways(&self) -> Result<Vec<IpAddr>, KernelError> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
        let mut routes = self.default_routes(false).await?;
        routes.extend(self.default_routes(true).await?);
        Ok(routes
            .iter()
            .flat_map(|r| r.attributes.iter())
            .filter_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
                RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
                _ => None,
            })
            .collect())
    }

    /// Creates a kernel WireGuard link (down; the caller configures it first). Fails where
    /// the kernel has no WireGuard module, which is how the agent finds out.
    pub async fn create_wireguard(&self, name: &str) -> Result<(), KernelError> {
        self.handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(failed(format!("creating WireGuard link {name}")))
    }

    /// Deletes a link by name, if it exists (for links weft made outside its plan).
    pub async fn delete_link(&self, name: &str) -> Result<(), KernelError> {
        let Ok(index) = link_index(&self.handle, name).await else { return Ok(()) };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            // Gone meanwhile (wireguard-go removes its link as it exits): what was wanted.
            Err(_) if link_index(&self.handle, name).await.is_err() => Ok(()),
            Err(e) => Err(failed(format!("deleting link {name}"))(e)),
        }
    }

    /// Whether a link of that name exists in the host namespace.
    pub async fn host_link_exists(&self, name: &str) -> bool {
        named_link(&self.handle, name).await.is_some()
    }

    /// Whether a link of that name exists in the switch namespace and is up.
    pub async fn port_is_up(&self, name: &str) -> bool {
        let Some(switch) = &self.switch else { return false };
        named_link(&switch.handle, name).await.is_some_and(|m| m.header.flags.contains(LinkFlags::Up))
    }

    /// Carries out `ops` in order, going on past failures; returns what failed. Consecutive
    /// entry writes are pipelined.
    pub async fn apply(&self, ops: &[Op]) -> Vec<KernelError> {
        self.apply_each(ops).await.into_iter().map(|(_, e)| e).collect()
    }

    /// [`Kernel::apply`], naming the index in `ops` of each operation that failed, so the
    /// caller can tell whose it was.
    pub async fn apply_each(&self, ops: &[Op]) -> Vec<(usize, KernelError)> {
        let mut errors = Vec::new();
        let mut index: IndexCache = HashMap::new();
        let mut i = 0;
        while i < ops.len() {
            let run = ops[i..].iter().take_while(|op| is_entry(op)).count();
            if run > 0 {
                let entries = &ops[i..i + run];
                let mut devices = HashMap::new();
                let mut unknown = Vec::new();
                for op in entries {
                    let device = entry_device(op);
                    if !devices.contains_key(device) && !unknown.contains(&device) {
                        match self.index_of(Place::Switch, device, &mut index).await {
                            Ok(idx) => {
                                devices.insert(device.to_string(), idx);
                            }
                            Err(_) => unknown.push(device),
                        }
                    }
                }
                let mut writes = Vec::with_capacity(entries.len());
                for (k, op) in entries.iter().enumerate() {
                    match devices.get(entry_device(op)) {
                        Some(device) => {
                            let write = answered(move || format!("{op:?}"), self.entry(op, *device));
                            writes.push(async move { write.await.map_err(|e| (i + k, e)) });
                        }
                        // Every entry on a missing device fails, each with its own op.
                        None => errors.push((
                            i + k,
                            KernelError {
                                doing: format!("writing an entry on {}", entry_device(op)),
                                reason: "the device does not exist".into(),
                                source: None,
                            },
                        )),
                    }
                }
                let results: Vec<Result<(), (usize, KernelError)>> =
                    futures::stream::iter(writes).buffer_unordered(PIPELINE).collect().await;
                errors.extend(results.into_iter().filter_map(Result::err));
                i += run;
                continue;
            }
            let deletions = deletions_in_one_place(&ops[i..]);
            if deletions > 1 {
                errors.extend(self.delete_together(&ops[i..i + deletions], i, &mut index).await);
                i += deletions;
                continue;
            }
            let op = &ops[i];
            if let Err(e) = answered(|| format!("{op:?}"), self.one(op, &mut index)).await {
                errors.push((i, e));
            }
            i += 1;
        }
        errors.sort_by_key(|(i, _)| *i);
        errors
    }

    /// Deletes consecutive links of one namespace (`ops`, all [`Op::DeleteLink`], the first
    /// at `first` in the caller's list) in one request. Removing a link waits for RCU grace
    /// periods, 16–28 ms each here, which a batch waits for once: every link gets a group
    /// number of this batch's own and the kernel deletes the group. Should that request fail,
    /// each link is deleted on its own, so every failure is still its own op's.
    async fn delete_together(
        &self,
        ops: &[Op],
        first: usize,
        cache: &mut IndexCache,
    ) -> Vec<(usize, KernelError)> {
        let mut errors = Vec::new();
        let mut grouped = Vec::new();
        let group = batch_group();
        for (k, op) in ops.iter().enumerate() {
            let Op::DeleteLink { name, place } = op else { unreachable!("only deletions are batched") };
            let grouping = async {
                let index = self.index_of(*place, name, cache).await?;
                self.handle_in(*place)?
                    .link()
                    .set(LinkUnspec::new_with_index(index).link_group(group).build())
                    .execute()
                    .await
                    .map_err(failed(format!("marking link {name} for deletion")))
            };
            match answered(|| format!("{op:?}"), grouping).await {
                Ok(()) => grouped.push((first + k, op, name, *place)),
                Err(e) => errors.push((first + k, e)),
            }
        }
        let Some(&(_, _, _, place)) = grouped.first() else { return errors };
        let deleted = answered(|| format!("deleting {} links together", grouped.len()), async {
            let mut request = self.handle_in(place)?.link().del(0);
            request.message_mut().attributes.push(LinkAttribute::Group(group));
            request.execute().await.map_err(failed("deleting links together"))
        })
        .await;
        for (i, op, name, place) in grouped {
            cache.remove(&(place, name.clone()));
            if deleted.is_err()
                && let Err(e) = answered(|| format!("{op:?}"), self.one(op, cache)).await
            {
                errors.push((i, e));
            }
        }
        errors
    }

    async fn index_of(&self, place: Place, name: &str, cache: &mut IndexCache) -> Result<u32, KernelError> {
        if let Some(index) = cache.get(&(place, name.to_string())) {
            return Ok(*index);
        }
        let index = link_index(self.handle_in(place)?, name).await?;
        cache.insert((place, name.to_string()), index);
        Ok(index)
    }

    async fn one(&self, op: &Op, cache: &mut IndexCache) -> Result<(), KernelError> {
        match op {
            Op::CreateBridge { name, alias, mtu } => {
                let switch = &self.switch()?.handle;
                let message = LinkBridge::new(name).mtu(*mtu).up().build();
                switch
                    .link()
                    .add(message)
                    .execute()
                    .await
                    .map_err(failed(format!("creating bridge {name}")))?;
                label(switch, name, alias).await
            }
            Op::CreateVxlan { name, alias, vni, port, local, mtu, bridge } => {
                let master = self.index_of(Place::Switch, bridge, cache).await?;
                let switch = self.switch_fd()?;
                let builder = LinkVxlan::new(name, *vni).port(*port).learning(false).proxy(true);
                let builder = match local {
                    IpAddr::V4(v4) => builder.local(*v4),
                    IpAddr::V6(v6) => builder.local6(*v6),
                };
                // Asked of the host namespace, made in the switch: the device's socket and
                // underlay stay in the host's.
                let message = builder.mtu(*mtu).setns_by_fd(switch.as_raw_fd()).build();
                self.handle
                    .link()
                    .add(message)
                    .execute()
                    .await
                    .map_err(failed(format!("creating VXLAN device {name} (VNI {vni})")))?;
                let handle = &self.switch()?.handle;
                label(handle, name, alias).await?;
                let index = self.index_of(Place::Switch, name, cache).await?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).controller(master).up().build())
                    .execute()
                    .await
                    .map_err(failed(format!("putting {name} on {bridge}")))
            }
            Op::CreateGateway { name, port, bridge, alias, mac, mtu } => {
                let master = self.index_of(Place::Switch, bridge, cache).await?;
                self.create_gateway(name, port, master, alias, *mac, *mtu).await
            }
            Op::CreateServiceLink { name, alias } => {
                let message = LinkBridge::new(name).up().build();
                self.handle
                    .link()
                    .add(message)
                    .execute()
                    .await
                    .map_err(failed(format!("creating service link {name}")))?;
                label(&self.handle, name, alias).await
            }
            Op::SetLink { name, place, mtu, master } => {
                let index = self.index_of(*place, name, cache).await?;
                let mut builder = LinkUnspec::new_with_index(index).mtu(*mtu).up();
                if let Some(master) = master {
                    builder = builder.controller(self.index_of(*place, master, cache).await?);
                }
                self.handle_in(*place)?
                    .link()
                    .set(builder.build())
                    .execute()
                    .await
                    .map_err(failed(format!("setting up link {name}")))
            }
            Op::AddAddress { link, address } => {
                let index = self.index_of(Place::Host, link, cache).await?;
                self.handle
                    .address()
                    .add(index, address.ip, address.prefix)
                    .replace()
                    .execute()
                    .await
                    .map_err(failed(format!("adding {address} to {link}")))
            }
            Op::DeleteAddress { link, place, address } => {
                let index = self.index_of(*place, link, cache).await?;
                let handle = self.handle_in(*place)?;
                let mut found = handle.address().get().set_link_index_filter(index).execute();
                while let Some(message) =
                    found.try_next().await.map_err(failed(format!("listing addresses of {link}")))?
                {
                    let matches = message.header.prefix_len == address.prefix
                        && message
                            .attributes
                            .iter()
                            .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == address.ip));
                    if matches {
                        handle
                            .address()
                            .del(message)
                            .execute()
                            .await
                            .map_err(failed(format!("removing {address} from {link}")))?;
                    }
                }
                Ok(())
            }
            Op::DeleteLink { name, place } => {
                let index = self.index_of(*place, name, cache).await?;
                cache.remove(&(*place, name.clone()));
                self.handle_in(*place)?
                    .link()
                    .del(index)
                    .execute()
                    .await
                    .map_err(failed(format!("deleting link {name}")))
            }
            Op::Plug { bridge, endpoint } => {
                let master = self.index_of(Place::Switch, bridge, cache).await?;
                self.plug(master, endpoint).await
            }
            Op::Conflict { name, reason } => Err(KernelError {
                doing: format!("leaving link {name} alone"),
                reason: reason.clone(),
                source: None,
            }),
            Op::SetFdb { .. }
            | Op::DeleteFdb { .. }
            | Op::SetNeighbour { .. }
            | Op::DeleteNeighbour { .. } => {
                let index = self.index_of(Place::Switch, entry_device(op), cache).await?;
                self.entry(op, index).await
            }
        }
    }

    /// Makes a network's gateway pair: the port on the bridge in the switch namespace, the
    /// gateway in the host's. The host end is made under a name of weft's and only renamed to
    /// the network's once labelled, so that no crash leaves an unlabelled link with a name a
    /// user chose (which weft would then take for somebody else's). On failure both go again.
    async fn create_gateway(
        &self,
        name: &str,
        port: &str,
        master: u32,
        alias: &str,
        mac: Mac,
        mtu: u32,
    ) -> Result<(), KernelError> {
        let switch = &self.switch()?.handle;
        let making = crate::plan::container_end_name(port);
        // Open until the pair is made: the request carries only its number.
        let switch_fd = self.switch_fd()?;
        let pair = LinkVeth::new(port, &making).mtu(mtu).setns_by_fd(switch_fd.as_raw_fd()).build();
        self.handle
            .link()
            .add(pair)
            .execute()
            .await
            .map_err(failed(format!("creating gateway pair {name}")))?;
        let result = async {
            label(switch, port, alias).await?;
            label(&self.handle, &making, alias).await?;
            let making_index = link_index(&self.handle, &making).await?;
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(making_index)
                        .name(name.to_string())
                        .address(mac.0.to_vec())
                        .mtu(mtu)
                        .build(),
                )
                .execute()
                .await
                .map_err(failed(format!("naming gateway {name}")))?;
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(making_index).up().build())
                .execute()
                .await
                .map_err(failed(format!("bringing up gateway {name}")))?;
            let port_index = link_index(switch, port).await?;
            switch
                .link()
                .set(LinkUnspec::new_with_index(port_index).controller(master).up().build())
                .execute()
                .await
                .map_err(failed(format!("putting gateway port {port} on its bridge")))
        }
        .await;
        if result.is_err()
            && let Ok(index) = link_index(switch, port).await
        {
            let _ = switch.link().del(index).execute().await;
        }
        result
    }

    /// Creates the veth pair of a container interface, hands one end to the container with
    /// its name, MAC, MTU, addresses and routes, and puts the other on the bridge in the
    /// switch namespace. On failure the pair is removed again, so a retry starts clean.
    async fn plug(&self, master: u32, endpoint: &LocalEndpoint) -> Result<(), KernelError> {
        let host = &endpoint.host_veth;
        let switch = &self.switch()?.handle;
        // Open until the pair is made: the request carries only their numbers.
        let switch_fd = self.switch_fd()?;
        // Weft's container end is made in the container's namespace under its final name:
        // moving a link between namespaces waits for RCU grace periods, 10–20 ms of every
        // attach when it was made in the host namespace and moved in. A runtime's is left in
        // the host namespace under a temporary name, for the runtime to move.
        let namespace = match endpoint.handover {
            Handover::Weft => Some(File::open(&endpoint.netns).map_err(io_failed(format!(
                "opening the container namespace {}",
                endpoint.netns.display()
            )))?),
            Handover::Runtime => None,
        };
        let container_end = LinkMessageBuilder::<LinkUnspec>::new()
            // Remote hosts already point their FDB entries at this MAC.
            .address(endpoint.mac.0.to_vec())
            .mtu(endpoint.mtu);
        let container_end = match &namespace {
            Some(namespace) => container_end.name(endpoint.ifname.clone()).setns_by_fd(namespace.as_raw_fd()),
            None => container_end.name(crate::plan::container_end_name(host)),
        };
        let pair = LinkVeth::new(host, "")
            .set_info_data(InfoData::Veth(InfoVeth::Peer(container_end.build())))
            .mtu(endpoint.mtu)
            .setns_by_fd(switch_fd.as_raw_fd())
            .build();
        let making = match &namespace {
            Some(_) => format!("creating {} in {}", endpoint.ifname, endpoint.netns.display()),
            None => format!("creating veth pair {host}"),
        };
        self.handle.link().add(pair).execute().await.map_err(|e| {
            let mut error = failed(making)(e);
            if namespace.is_some() && error.is_kernel_error(EEXIST) {
                error.reason = format!(
                    "the container already has an interface named {}; ask for another name (interface)",
                    endpoint.ifname
                );
            }
            error
        })?;
        drop(namespace);
        let result = match label(switch, host, &endpoint_alias(&endpoint.endpoint_id)).await {
            Ok(()) => match endpoint.handover {
                Handover::Weft => self.configure_inside(endpoint).await,
                // Labelled so that no pass takes it for a half-made pair.
                Handover::Runtime => {
                    let waiting = crate::plan::container_end_name(host);
                    label(&self.handle, &waiting, &handover_alias(&endpoint.endpoint_id)).await
                }
            },
            Err(e) => Err(e),
        };
        let result = match result {
            Ok(()) => switch
                .link()
                .set(LinkUnspec::new_with_name(host).controller(master).up().build())
                .execute()
                .await
                .map_err(failed(format!("putting {host} on its bridge"))),
            Err(e) => Err(e),
        };
        if result.is_err()
            && let Ok(index) = link_index(switch, host).await
        {
            let _ = switch.link().del(index).execute().await;
        }
        result
    }

    /// Addresses, brings up and routes the container end, already in the container's namespace.
    async fn configure_inside(&self, endpoint: &LocalEndpoint) -> Result<(), KernelError> {
        let ifname = &endpoint.ifname;
        let netns = endpoint.netns.display();
        let inside = Kernel::connect_in(&endpoint.netns).await?;
        let index = link_index(&inside.handle, ifname).await?;
        for address in &endpoint.addresses {
            inside
                .handle
                .address()
                .add(index, address.ip, address.prefix)
                .execute()
                .await
                .map_err(failed(format!("adding {address} to {ifname} in {netns}")))?;
        }
        inside
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed(format!("bringing up {ifname} in {netns}")))?;
        if let Ok(lo) = link_index(&inside.handle, "lo").await {
            let _ = inside.handle.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await;
        }
        for gateway in &endpoint.default_routes {
            let route = match gateway {
                IpAddr::V4(v4) => {
                    RouteMessageBuilder::<Ipv4Addr>::new().gateway(*v4).output_interface(index).build()
                }
                IpAddr::V6(v6) => {
                    RouteMessageBuilder::<Ipv6Addr>::new().gateway(*v6).output_interface(index).build()
                }
            };
            inside
                .handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(failed(format!("adding a default route via {gateway} in {netns}")))?;
        }
        Ok(())
    }

    /// Writes an FDB or neighbour entry on a VXLAN device of the switch namespace.
    async fn entry(&self, op: &Op, device: u32) -> Result<(), KernelError> {
        let neighbours = self.switch()?.handle.neighbours();
        match op {
            Op::SetFdb { vxlan, mac, vtep } => neighbours
                .add_bridge(device, &mac.0)
                .destination(*vtep)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(failed(format!("setting FDB entry {mac} -> {vtep} on {vxlan}"))),
            Op::DeleteFdb { vxlan, mac, vtep } => {
                let mut message = NeighbourMessage::default();
                message.header.family = AddressFamily::Bridge;
                message.header.ifindex = device;
                message.header.flags = NeighbourFlags::Own;
                message.header.kind = RouteType::Unspec;
                message.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                message.attributes.push(NeighbourAttribute::Destination(inet(*vtep)));
                neighbours
                    .del(message)
                    .execute()
                    .await
                    .map_err(failed(format!("deleting FDB entry {mac} -> {vtep} on {vxlan}")))
            }
            Op::SetNeighbour { vxlan, ip, mac } => neighbours
                .add(device, *ip)
                .link_layer_address(&mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(failed(format!("setting neighbour {ip} -> {mac} on {vxlan}"))),
            Op::DeleteNeighbour { vxlan, ip } => {
                let mut message = NeighbourMessage::default();
                message.header.family = match ip {
                    IpAddr::V4(_) => AddressFamily::Inet,
                    IpAddr::V6(_) => AddressFamily::Inet6,
                };
                message.header.ifindex = device;
                message.attributes.push(NeighbourAttribute::Destination(inet(*ip)));
                neighbours
                    .del(message)
                    .execute()
                    .await
                    .map_err(failed(format!("deleting neighbour {ip} on {vxlan}")))
            }
            other => Err(KernelError {
                doing: format!("{other:?}"),
                reason: "not an entry operation".into(),
                source: None,
            }),
        }
    }
}

fn inet(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// How many ops at the start of `ops` delete links in the same namespace.
fn deletions_in_one_place(ops: &[Op]) -> usize {
    let Some(Op::DeleteLink { place: first, .. }) = ops.first() else { return 0 };
    ops.iter().take_while(|op| matches!(op, Op::DeleteLink { place, .. } if place == first)).count()
}

/// A link group number for one batch of deletions: never 0 (the default group, which the
/// kernel refuses to delete), and fresh per batch, so a link left in an older batch's group by
/// an agent killed in between is not deleted with this one.
fn batch_group() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    u32::try_from(hasher.finish() >> 32).unwrap_or(1).max(1)
}

fn is_entry(op: &Op) -> bool {
    matches!(
        op,
        Op::SetFdb { .. } | Op::DeleteFdb { .. } | Op::SetNeighbour { .. } | Op::DeleteNeighbour { .. }
    )
}

fn entry_device(op: &Op) -> &str {
    match op {
        Op::SetFdb { vxlan, .. }
        | Op::DeleteFdb { vxlan, .. }
        | Op::SetNeighbour { vxlan, .. }
        | Op::DeleteNeighbour { vxlan, .. } => vxlan,
        _ => "",
    }
}

/// Runs a dump again while the kernel says links changed under it (EBUSY, as a runtime
/// moving a dozen interfaces into containers at once causes), pausing a little longer each
/// time.
async fn retrying<T, F, Fut>(dump: F) -> Result<T, KernelError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, KernelError>>,
{
    let mut attempt = 1;
    loop {
        match dump().await {
            Err(e) if e.is_interrupted_dump() && attempt < DUMP_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(2 * u64::from(attempt))).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Per VXLAN device of `vxlans` (by index): its unicast FDB entries and permanent neighbours.
type Entries = (BTreeMap<String, BTreeMap<Mac, IpAddr>>, BTreeMap<String, BTreeMap<IpAddr, Mac>>);

async fn dump_entries(handle: &Handle, vxlans: &HashMap<u32, String>) -> Result<Entries, KernelError> {
    let (mut fdb_of, mut neighbours_of) = (BTreeMap::new(), BTreeMap::new());
    let mut fdb = handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
    while let Some(message) = fdb.try_next().await.map_err(failed("listing FDB entries"))? {
        let Some(vxlan) = vxlans.get(&message.header.ifindex) else { continue };
        if let (Some(mac), Some(dst)) = (neighbour_mac(&message), neighbour_destination(&message)) {
            fdb_of.entry(vxlan.clone()).or_insert_with(BTreeMap::new).insert(mac, dst);
        }
    }
    let mut neighbours = handle.neighbours().get().execute();
    while let Some(message) = neighbours.try_next().await.map_err(failed("listing neighbours"))? {
        let Some(vxlan) = vxlans.get(&message.header.ifindex) else { continue };
        if message.header.state != NeighbourState::Permanent {
            continue;
        }
        if let (Some(mac), Some(ip)) = (neighbour_mac(&message), neighbour_destination(&message)) {
            neighbours_of.entry(vxlan.clone()).or_insert_with(BTreeMap::new).insert(ip, mac);
        }
    }
    Ok((fdb_of, neighbours_of))
}

/// Link indexes by namespace and name, as looked up during one `apply`.
type IndexCache = HashMap<(Place, String), u32>;

/// Marks a link as weft's. (The kernel ignores an alias given when a link is created, so it is
/// set right after.)
async fn label(handle: &Handle, name: &str, alias: &str) -> Result<(), KernelError> {
    handle
        .link()
        .set(LinkUnspec::new_with_name(name).alias(alias).build())
        .execute()
        .await
        .map_err(failed(format!("labelling link {name} as weft's")))
}

/// The links of one namespace with their addresses.
async fn dump_links(handle: &Handle, place: Place) -> Result<BTreeMap<String, Link>, KernelError> {
    let messages: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.map_err(failed("listing links"))?;
    let names: HashMap<u32, String> =
        messages.iter().filter_map(|m| link_name(m).map(|n| (m.header.index, n.to_string()))).collect();
    let mut links: BTreeMap<String, Link> = BTreeMap::new();
    for message in &messages {
        if let Some(link) = parse_link(message, &names, place) {
            links.insert(link.name.clone(), link);
        }
    }
    let by_index: HashMap<u32, String> = links.values().map(|l| (l.index, l.name.clone())).collect();
    let mut addresses = handle.address().get().execute();
    while let Some(message) = addresses.try_next().await.map_err(failed("listing addresses"))? {
        let ip = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        let name = by_index.get(&message.header.index);
        if let (Some(ip), Some(link)) = (ip, name.and_then(|n| links.get_mut(n))) {
            link.addresses.insert(IfAddr { ip, prefix: message.header.prefix_len });
        }
    }
    Ok(links)
}

/// The link named `name`, if the kernel answers in time that there is one.
async fn named_link(handle: &Handle, name: &str) -> Option<LinkMessage> {
    let mut found = handle.link().get().match_name(name.to_string()).execute();
    match tokio::time::timeout(KERNEL_ANSWER_TIMEOUT, found.try_next()).await {
        Ok(Ok(link)) => link,
        _ => None,
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, KernelError> {
    let mut found = handle.link().get().match_name(name.to_string()).execute();
    match found.try_next().await {
        Ok(Some(message)) => Ok(message.header.index),
        Ok(None) => Err(KernelError {
            doing: format!("looking up link {name}"),
            reason: "no such link".into(),
            source: None,
        }),
        Err(e) => Err(failed(format!("looking up link {name}"))(e)),
    }
}

fn link_name(message: &LinkMessage) -> Option<&str> {
    message.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn parse_link(message: &LinkMessage, names: &HashMap<u32, String>, place: Place) -> Option<Link> {
    let mut link = Link {
        index: message.header.index,
        name: link_name(message)?.to_string(),
        place,
        kind: LinkKind::Other(String::new()),
        alias: None,
        master: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        mac: None,
        addresses: Default::default(),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias.clone()),
            LinkAttribute::Controller(index) => link.master = names.get(index).cloned(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac),
            LinkAttribute::LinkInfo(infos) => link.kind = parse_kind(infos),
            _ => {}
        }
    }
    Some(link)
}

fn parse_kind(infos: &[LinkInfo]) -> LinkKind {
    let kind = infos.iter().find_map(|i| match i {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    });
    match kind {
        Some(InfoKind::Bridge) => LinkKind::Bridge,
        Some(InfoKind::Veth) => LinkKind::Veth,
        Some(InfoKind::Vxlan) => {
            let (mut vni, mut port, mut local, mut learning, mut proxy) = (0, 0, None, true, false);
            for info in infos {
                if let LinkInfo::Data(InfoData::Vxlan(settings)) = info {
                    for setting in settings {
                        match setting {
                            InfoVxlan::Id(id) => vni = *id,
                            InfoVxlan::Port(p) => port = *p,
                            InfoVxlan::Local(v4) => local = Some(IpAddr::V4(*v4)),
                            InfoVxlan::Local6(v6) => local = Some(IpAddr::V6(*v6)),
                            InfoVxlan::Learning(on) => learning = *on,
                            InfoVxlan::Proxy(on) => proxy = *on,
                            _ => {}
                        }
                    }
                }
            }
            LinkKind::Vxlan { vni, port, local, learning, proxy }
        }
        Some(other) => LinkKind::Other(format!("{other:?}")),
        None => LinkKind::Other(String::new()),
    }
}

fn neighbour_mac(message: &NeighbourMessage) -> Option<Mac> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac),
        _ => None,
    })
}

/// The IP of a neighbour entry, or the remote VTEP of an FDB entry (which dumps carry as raw
/// bytes).
fn neighbour_destination(message: &NeighbourMessage) -> Option<IpAddr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            16 => <[u8; 16]>::try_from(bytes.as_slice()).ok().map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a run of deletions in one namespace is batched: a deletion elsewhere or any other
    /// op ends it.
    #[test]
    fn deletions_are_batched_per_namespace_and_run() {
        let delete = |name: &str, place| Op::DeleteLink { name: name.into(), place };
        let conflict = Op::Conflict { name: "x".into(), reason: "y".into() };
        let ops = [
            delete("weftp1", Place::Switch),
            delete("weftp2", Place::Switch),
            delete("weftg1", Place::Host),
            delete("weftb1", Place::Switch),
            conflict.clone(),
        ];
        assert_eq!(deletions_in_one_place(&ops), 2);
        assert_eq!(deletions_in_one_place(&ops[2..]), 1);
        assert_eq!(deletions_in_one_place(&ops[4..]), 0);
        assert_eq!(deletions_in_one_place(&[]), 0);
        assert_eq!(
            deletions_in_one_place(&[delete("a", Place::Host), delete("b", Place::Host), conflict]),
            2
        );
    }

    /// Group 0 is every link's default, which the kernel refuses to delete; batches differ.
    #[test]
    fn batch_groups_are_never_the_default_and_differ() {
        let groups: std::collections::BTreeSet<u32> = (0..1000).map(|_| batch_group()).collect();
        assert!(!groups.contains(&0));
        assert!(groups.len() > 990, "{} distinct of 1000", groups.len());
    }

    #[test]
    fn the_kernels_own_error_stays_the_source() {
        let err =
            io_failed("opening a netlink socket")(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        let source = std::error::Error::source(&err).expect("a source");
        assert_eq!(
            source.to_string(),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied).to_string()
        );
        assert!(err.to_string().starts_with("opening a netlink socket: "), "{err}");
    }

    #[tokio::test]
    async fn an_operation_the_kernel_never_answers_fails_instead_of_hanging() {
        let never = std::future::pending::<Result<(), KernelError>>();
        let err = answered_within(
            std::time::Duration::from_millis(20),
            || "creating veth pair weftp1".into(),
            never,
        )
        .await
        .unwrap_err();
        assert_eq!(err.doing, "creating veth pair weftp1");
        assert!(err.reason.contains("no answer from the kernel"), "{err}");
    }
}
