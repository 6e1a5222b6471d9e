//! The replicated registry: weft-core's [`State`] as openraft's state machine, plus the hub
//! that feeds watch streams.
//!
//! The state lives in memory behind one lock; durability comes from the Raft log and from
//! snapshots kept in the [`Store`]. After a restart the latest snapshot is restored and openraft
//! re-applies the committed entries after it.
//!
//! Watchers are fed from the same lock that applies entries, so a watcher that subscribes sees
//! a consistent start (a snapshot or a replay from its revision) and then every later batch
//! exactly once. Recent batches are kept for resuming; older ones are compacted away and a
//! watcher asking for them gets a full snapshot. A watcher that falls behind the bounded
//! broadcast buffer is reset with a fresh snapshot rather than slowing anyone down.

// openraft's traits return its StorageError (224 bytes); the helpers feeding them share it.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use bytes::Bytes;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use prost::Message;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use weft_api::{convert, pb};
use weft_core::State;

use crate::frames;
use crate::raft_types::{
    ApplyResult, Entry, LogId, Outcome, ProposalBatch, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::scope::network_touched;
use crate::store::{KEY_SNAPSHOT, Store};

/// How many recent revisions are kept for watchers resuming from a revision.
pub const DEFAULT_RETAINED_REVISIONS: usize = 8192;
/// Batches buffered per watcher before it is reset with a snapshot.
pub const DEFAULT_WATCH_BUFFER: usize = 4096;

/// What watchers receive from the hub.
#[derive(Debug, Clone)]
pub enum Published {
    /// The changes of one revision, already in wire form.
    Batch(Arc<Batch>),
    /// The state was replaced wholesale (a snapshot was installed): start over.
    Reset,
}

#[derive(Debug)]
pub struct Batch {
    pub revision: u64,
    pub events: Vec<pb::Event>,
    /// The batch as one watch-stream frame, encoded once for every watcher (when the first
    /// one needs it).
    frame: OnceLock<Bytes>,
    /// Each event encoded once, for hosts sent some of them.
    entries: OnceLock<Vec<Bytes>>,
    /// "Nothing for you up to this revision", for hosts sent none of them.
    progress: OnceLock<Bytes>,
}

impl Batch {
    pub fn new(revision: u64, events: Vec<pb::Event>) -> Batch {
        Batch {
            revision,
            events,
            frame: OnceLock::new(),
            entries: OnceLock::new(),
            progress: OnceLock::new(),
        }
    }

    /// The watch-stream frame carrying this batch.
    pub fn frame(&self) -> Bytes {
        self.frame.get_or_init(|| frames::events_frame(&self.events)).clone()
    }

    /// A frame carrying the events at these positions only.
    pub fn frame_of(&self, chosen: &[usize]) -> Bytes {
        let entries = self.entries.get_or_init(|| self.events.iter().map(frames::event_entry).collect());
        frames::events_frame_of(chosen.iter().filter_map(|&i| entries.get(i)))
    }

    /// A progress frame at this batch's revision.
    pub fn progress_frame(&self) -> Bytes {
        self.progress.get_or_init(|| frames::progress_frame(self.revision)).clone()
    }
}

/// One network's endpoints in a snapshot, encoded once.
#[derive(Debug)]
pub struct NetworkPart {
    /// The endpoints as a `FullState` holding only them.
    pub endpoints: Bytes,
    /// How many of them each host has.
    pub hosts: FxHashMap<String, usize>,
}

/// The registry at a revision, encoded once in pieces every watcher starting from it shares:
/// a watcher is sent the common part and the endpoint parts of the networks it sees.
#[derive(Debug)]
pub struct SnapshotParts {
    pub revision: u64,
    /// Which state the parts were cut from: a replaced state (an installed snapshot) reuses
    /// nothing.
    generation: u64,
    /// The revision, config, networks and nodes as a `FullState`.
    pub common: Bytes,
    /// Networks with endpoints, by id.
    pub networks: BTreeMap<String, Arc<NetworkPart>>,
}

impl SnapshotParts {
    /// How many endpoints `node` has on each network it has any on.
    pub fn placement(&self, node: &str) -> BTreeMap<String, usize> {
        self.networks.iter().filter_map(|(id, part)| Some((id.clone(), *part.hosts.get(node)?))).collect()
    }

    /// The pieces of one `WatchResponse` snapshot: everything, or the endpoints of `networks`
    /// only.
    pub fn pieces(&self, networks: Option<impl Fn(&str) -> bool>) -> Vec<Bytes> {
        let parts: Vec<Bytes> = self
            .networks
            .iter()
            .filter(|(id, _)| networks.as_ref().is_none_or(|sees| sees(id)))
            .map(|(_, part)| part.endpoints.clone())
            .collect();
        let body = self.common.len() + parts.iter().map(Bytes::len).sum::<usize>();
        let mut pieces = Vec::with_capacity(parts.len() + 2);
        pieces.push(frames::snapshot_head(body));
        pieces.push(self.common.clone());
        pieces.extend(parts);
        pieces
    }
}

/// How a watch begins.
#[derive(Debug)]
pub enum WatchStart {
    /// The whole registry at a revision at or after `after` (see [`Registry::snapshot_parts`]);
    /// then everything after that.
    Snapshot { after: u64 },
    /// Every batch after the requested revision that happened before subscribing.
    Replay(Vec<Arc<Batch>>),
}

#[derive(Debug)]
struct Inner {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The most recent batches, oldest first.
    recent: VecDeque<Arc<Batch>>,
    /// Size of the latest snapshot kept on disk (built, installed or loaded), 0 before one.
    snapshot_bytes: u64,
    /// The last revision that changed each network's endpoints as watchers see them: the
    /// snapshot parts of networks untouched since the last build are reused.
    touched: FxHashMap<String, u64>,
    /// Bumped whenever the state is replaced wholesale.
    generation: u64,
}

/// The registry and its watch hub, shared by the state machine and the API services.
#[derive(Debug)]
pub struct Registry {
    inner: RwLock<Inner>,
    publish: broadcast::Sender<Published>,
    /// The registry's revision as applied, for those waiting to see a write of theirs.
    applied: tokio::sync::watch::Sender<u64>,
    retained: usize,
    /// Counts snapshots built, to give each a unique id.
    snapshots_built: std::sync::atomic::AtomicU64,
    /// The latest snapshot handed to a watcher; one is built at a time.
    snapshot_parts: tokio::sync::Mutex<Option<Arc<SnapshotParts>>>,
}

/// A snapshot as kept on disk.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

fn sm_error(verb: openraft::ErrorVerb, err: impl std::error::Error + 'static) -> StorageError {
    openraft::StorageIOError::new(openraft::ErrorSubject::StateMachine, verb, openraft::AnyError::new(&err))
        .into()
}

impl Registry {
    /// `retained`: recent revisions kept for resuming watchers; `buffer`: batches a watcher may
    /// fall behind before it is reset.
    pub fn new(retained: usize, buffer: usize) -> Registry {
        Registry {
            inner: RwLock::new(Inner {
                state: State::default(),
                last_applied: None,
                membership: StoredMembership::default(),
                recent: VecDeque::new(),
                snapshot_bytes: 0,
                touched: FxHashMap::default(),
                generation: 0,
            }),
            publish: broadcast::channel(buffer.max(1)).0,
            applied: tokio::sync::watch::Sender::new(0),
            retained: retained.max(1),
            snapshots_built: std::sync::atomic::AtomicU64::new(0),
            snapshot_parts: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs `f` over the registry. Keep `f` short: appliers wait while it runs.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.read_inner().state)
    }

    pub fn revision(&self) -> u64 {
        self.with_state(State::revision)
    }

    /// Waits until the registry has applied `revision` (a write committed through any member),
    /// for at most `timeout`; whether it has.
    pub async fn reached(&self, revision: u64, timeout: std::time::Duration) -> bool {
        let mut applied = self.applied.subscribe();
        matches!(tokio::time::timeout(timeout, applied.wait_for(|now| *now >= revision)).await, Ok(Ok(_)))
    }

    /// Size in bytes of the latest snapshot this member keeps (0 before its first).
    pub fn snapshot_bytes(&self) -> u64 {
        self.read_inner().snapshot_bytes
    }

    fn read_inner(&self) -> RwLockReadGuard<'_, Inner> {
        // A poisoned lock means an apply panicked half-way; serving from that state would spread
        // the damage, so fail loudly instead.
        self.inner.read().unwrap_or_else(|_| panic!("registry lock poisoned"))
    }

    /// Subscribes a watcher that has seen everything up to `from_revision`; for a host's
    /// view, also how many endpoints `node` has on each network at the start.
    pub fn watch(
        &self,
        from_revision: u64,
        node: Option<&str>,
    ) -> (WatchStart, broadcast::Receiver<Published>, BTreeMap<String, usize>) {
        let inner = self.read_inner();
        let mut placement = BTreeMap::new();
        for endpoint in node.into_iter().flat_map(|node| inner.state.node_endpoints(node)) {
            *placement.entry(endpoint.network.to_string()).or_default() += 1;
        }
        let receiver = self.publish.subscribe();
        let current = inner.state.revision();
        let oldest_kept = inner.recent.front().map_or(current + 1, |b| b.revision);
        let start = if from_revision == current && from_revision > 0 {
            WatchStart::Replay(Vec::new())
        } else if from_revision > 0 && from_revision < current && from_revision + 1 >= oldest_kept {
            let replay = inner.recent.iter().filter(|b| b.revision > from_revision).cloned().collect();
            WatchStart::Replay(replay)
        } else {
            WatchStart::Snapshot { after: current }
        };
        (start, receiver, placement)
    }

    /// The registry in shared pieces, at revision `after` or later.
    ///
    /// Watchers arriving together (every agent reconnecting after a controller restart) share
    /// one: it is built once per revision, one build at a time, and the encoding happens off
    /// the async workers. A build re-encodes only the networks whose endpoints changed since
    /// the previous one, so a host joining a network (which is sent a fresh snapshot of its
    /// view) costs the networks that moved, not the registry: at 1,000,000 endpoints the whole
    /// encoding is about 200 MB.
    ///
    /// `None` only when the process is shutting down.
    pub async fn snapshot_parts(self: &Arc<Self>, after: u64) -> Option<Arc<SnapshotParts>> {
        let mut cached = self.snapshot_parts.lock().await;
        let generation = self.read_inner().generation;
        if let Some(parts) = cached.as_ref().filter(|p| p.revision >= after && p.generation == generation) {
            return Some(parts.clone());
        }
        let registry = self.clone();
        let previous = cached.clone();
        let built = tokio::task::spawn_blocking(move || registry.build_parts(previous.as_deref())).await;
        let built = match built {
            Ok(built) => Arc::new(built),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return None,
        };
        *cached = Some(built.clone());
        Some(built)
    }

    fn build_parts(&self, previous: Option<&SnapshotParts>) -> SnapshotParts {
        let mut networks = BTreeMap::new();
        let mut changed = Vec::new();
        let (common, revision, generation) = {
            let inner = self.read_inner();
            let state = &inner.state;
            let reusable = previous.filter(|p| p.generation == inner.generation);
            for network in state.networks() {
                let id = network.id.to_string();
                if let Some(previous) = reusable
                    && inner.touched.get(&id).is_none_or(|at| *at <= previous.revision)
                {
                    if let Some(part) = previous.networks.get(&id) {
                        networks.insert(id, part.clone());
                    }
                    continue;
                }
                let mut hosts = FxHashMap::default();
                let endpoints: Vec<pb::Endpoint> = state
                    .network_endpoints(&network.id)
                    .map(|e| {
                        *hosts.entry(e.node.clone()).or_default() += 1;
                        convert::endpoint(e, network)
                    })
                    .collect();
                if !endpoints.is_empty() {
                    changed.push((id, endpoints, hosts));
                }
            }
            (convert::full_state_without_endpoints(state), state.revision(), inner.generation)
        };
        for (id, endpoints, hosts) in changed {
            let endpoints = Bytes::from(pb::FullState { endpoints, ..Default::default() }.encode_to_vec());
            networks.insert(id, Arc::new(NetworkPart { endpoints, hosts }));
        }
        SnapshotParts { revision, generation, common: Bytes::from(common.encode_to_vec()), networks }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|_| panic!("registry lock poisoned"))
    }
}

/// openraft's view of the registry.
#[derive(Debug, Clone)]
pub struct StateMachine {
    registry: Arc<Registry>,
    store: Store,
}

impl StateMachine {
    /// The state machine over `store`, starting from the latest snapshot on disk, if any.
    pub fn open(store: Store, registry: Arc<Registry>) -> Result<StateMachine, StorageError> {
        if let Some(stored) = store.get_meta::<StoredSnapshot>(KEY_SNAPSHOT)? {
            let state = State::restore(&stored.data).map_err(|e| sm_error(openraft::ErrorVerb::Read, e))?;
            let mut inner = registry.write();
            inner.state = state;
            inner.last_applied = stored.meta.last_log_id;
            inner.membership = stored.meta.last_membership.clone();
            inner.snapshot_bytes = stored.data.len() as u64;
            inner.generation += 1;
            registry.applied.send_replace(inner.state.revision());
        }
        Ok(StateMachine { registry, store })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Serializing and storing a large registry takes a while (about 100 MB at 1,000,000
    /// endpoints): it runs off the async workers, and holds the registry's read lock only while
    /// it takes a view of shared records; appliers wait for that, not for the encoding or the
    /// disk. Done on a worker under the write lock, it stalled both of a 2-core member's
    /// workers at once, and the cluster lost its leader.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (registry, store) = (self.registry.clone(), self.store.clone());
        let built = tokio::task::spawn_blocking(move || {
            let (meta, view) = {
                let inner = registry.read_inner();
                let built = registry.snapshots_built.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let last = inner.last_applied;
                let snapshot_id = match last {
                    Some(id) => format!("{}-{}-{built}", id.leader_id.term, id.index),
                    None => format!("0-0-{built}"),
                };
                let meta = SnapshotMeta {
                    last_log_id: last,
                    last_membership: inner.membership.clone(),
                    snapshot_id,
                };
                (meta, inner.state.snapshot_view())
            };
            let stored = StoredSnapshot { meta, data: view.encode() };
            store.put_meta(KEY_SNAPSHOT, &stored)?;
            registry.write().snapshot_bytes = stored.data.len() as u64;
            Ok::<_, StorageError>(stored)
        })
        .await;
        let stored = match built {
            Ok(stored) => stored?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(sm_error(openraft::ErrorVerb::Write, e)),
        };
        Ok(Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.registry.read_inner();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut batches = Vec::new();
        {
            let mut inner = self.registry.write();
            for entry in entries {
                inner.last_applied = Some(entry.log_id);
                let mut outcomes = Vec::new();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Membership(membership) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    }
                    EntryPayload::Normal(ProposalBatch(proposals)) => {
                        for proposal in &proposals {
                            let result = inner.state.apply(proposal).map(|applied| {
                                if !applied.events.is_empty() {
                                    let events = convert::events(&applied.events, &inner.state);
                                    batches.push(Arc::new(Batch::new(applied.revision, events)));
                                }
                                applied.response
                            });
                            outcomes.push(Outcome { revision: inner.state.revision(), result });
                        }
                    }
                }
                results.push(ApplyResult { outcomes });
            }
            for batch in &batches {
                for event in &batch.events {
                    match (network_touched(event), &event.kind) {
                        (Some(network), Some(pb::event::Kind::NetworkRemoved(_))) => {
                            inner.touched.remove(network);
                        }
                        (Some(network), _) => {
                            inner.touched.insert(network.to_string(), batch.revision);
                        }
                        (None, _) => {}
                    }
                }
                inner.recent.push_back(batch.clone());
            }
            while inner.recent.len() > self.registry.retained {
                inner.recent.pop_front();
            }
            // Published under the lock, so a watcher subscribing concurrently sees each batch
            // either in its start or on its receiver, never both or neither.
            for batch in batches {
                // No receivers is fine: nobody is watching.
                let _ = self.registry.publish.send(Published::Batch(batch));
            }
            self.registry.applied.send_replace(inner.state.revision());
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = State::restore(&data).map_err(|e| sm_error(openraft::ErrorVerb::Write, e))?;
        let snapshot_bytes = data.len() as u64;
        self.store.put_meta(KEY_SNAPSHOT, &StoredSnapshot { meta: meta.clone(), data })?;
        let mut inner = self.registry.write();
        inner.snapshot_bytes = snapshot_bytes;
        inner.state = state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.recent.clear();
        inner.touched.clear();
        inner.generation += 1;
        let _ = self.registry.publish.send(Published::Reset);
        self.registry.applied.send_replace(inner.state.revision());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self
            .store
            .get_meta::<StoredSnapshot>(KEY_SNAPSHOT)?
            .map(|stored| Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}
