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

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use bytes::Bytes;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use weft_api::{convert, pb};
use weft_core::State;

use crate::frames;
use crate::raft_types::{
    ApplyResult, Entry, LogId, Outcome, ProposalBatch, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
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
}

impl Batch {
    pub fn new(revision: u64, events: Vec<pb::Event>) -> Batch {
        Batch { revision, events, frame: OnceLock::new() }
    }

    /// The watch-stream frame carrying this batch.
    pub fn frame(&self) -> Bytes {
        self.frame.get_or_init(|| frames::events_frame(&self.events)).clone()
    }
}

/// The whole registry at a revision as one encoded watch-stream frame, shared by every watcher
/// that starts from it.
#[derive(Debug)]
pub struct SnapshotFrame {
    pub revision: u64,
    pub frame: Bytes,
}

/// How a watch begins.
#[derive(Debug)]
pub enum WatchStart {
    /// The whole registry at a revision at or after `after` (see [`Registry::snapshot_frame`]);
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
    /// Counts snapshots built, to give each a unique id.
    snapshots_built: u64,
    /// Size of the latest snapshot kept on disk (built, installed or loaded), 0 before one.
    snapshot_bytes: u64,
}

/// The registry and its watch hub, shared by the state machine and the API services.
#[derive(Debug)]
pub struct Registry {
    inner: RwLock<Inner>,
    publish: broadcast::Sender<Published>,
    /// The registry's revision as applied, for those waiting to see a write of theirs.
    applied: tokio::sync::watch::Sender<u64>,
    retained: usize,
    /// The latest snapshot frame handed to a watcher; one is built at a time.
    snapshot_frame: tokio::sync::Mutex<Option<Arc<SnapshotFrame>>>,
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
                snapshots_built: 0,
                snapshot_bytes: 0,
            }),
            publish: broadcast::channel(buffer.max(1)).0,
            applied: tokio::sync::watch::Sender::new(0),
            retained: retained.max(1),
            snapshot_frame: tokio::sync::Mutex::new(None),
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

    /// Subscribes a watcher that has seen everything up to `from_revision`.
    pub fn watch(&self, from_revision: u64) -> (WatchStart, broadcast::Receiver<Published>) {
        let inner = self.read_inner();
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
        (start, receiver)
    }

    /// The whole registry as a watch-stream frame, at revision `after` or later.
    ///
    /// Watchers arriving together (every agent reconnecting after a controller restart) share
    /// one: it is built once per revision, one build at a time, and the encoding happens off
    /// the registry lock and off the async workers. At 100,000 endpoints a snapshot is about
    /// 10 MB; building one per watcher held the lock, the CPU and a copy in memory per
    /// watcher, enough to stall Raft heartbeats.
    ///
    /// `None` only when the process is shutting down.
    pub async fn snapshot_frame(self: &Arc<Self>, after: u64) -> Option<Arc<SnapshotFrame>> {
        let mut cached = self.snapshot_frame.lock().await;
        if let Some(frame) = cached.as_ref().filter(|f| f.revision >= after) {
            return Some(frame.clone());
        }
        let registry = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let full = registry.with_state(convert::full_state);
            SnapshotFrame { revision: full.revision, frame: frames::snapshot_frame(full) }
        })
        .await;
        let built = match built {
            Ok(built) => Arc::new(built),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return None,
        };
        *cached = Some(built.clone());
        Some(built)
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
            registry.applied.send_replace(inner.state.revision());
        }
        Ok(StateMachine { registry, store })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let mut inner = self.registry.write();
            inner.snapshots_built += 1;
            let last = inner.last_applied;
            let snapshot_id = match last {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, inner.snapshots_built),
                None => format!("0-0-{}", inner.snapshots_built),
            };
            let meta =
                SnapshotMeta { last_log_id: last, last_membership: inner.membership.clone(), snapshot_id };
            (meta, inner.state.snapshot())
        };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.store.put_meta(KEY_SNAPSHOT, &stored)?;
        self.registry.write().snapshot_bytes = stored.data.len() as u64;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
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
