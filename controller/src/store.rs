//! The Raft log, vote and latest snapshot, durable on local disk: the log in segment files of
//! its own ([`crate::wal`]), the rest in one redb file.
//!
//! Every append is written and flushed with `fdatasync` before openraft is told the entries
//! are flushed, so an acknowledged write survives a crash. openraft hands over every entry
//! that queued while the previous append was in flight, so under load many client writes
//! share one flush.

// openraft's traits return its StorageError (224 bytes); the helpers feeding them share it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::raft_types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use crate::wal::Wal;

/// index -> postcard-encoded entry: where versions before the segment files kept the log. A
/// store opened with entries here moves them to the segment files once.
const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("logs");
/// Small records (vote, committed, last purged, snapshot, cluster identity) by name.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_SNAPSHOT: &str = "snapshot";

/// The on-disk store: the log's segment files, and a redb database shared by the log store
/// and the state machine.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
    log: Arc<Wal>,
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    err: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&err)).into()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

impl Store {
    /// Opens (or creates) `dir/raft.redb` and the log in `dir/log`.
    pub fn open(dir: &Path) -> Result<Store, redb::Error> {
        std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
        let db = Database::create(dir.join("raft.redb"))?;
        // Tables must exist before a read transaction can open them.
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        let purged: Option<LogId> =
            read_meta(&db, KEY_LAST_PURGED).map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
        move_log_out_of_redb(&db, &dir.join("log"))?;
        let log = Wal::open(&dir.join("log"), purged.map(|p| p.index)).map_err(redb::Error::Io)?;
        Ok(Store { db: Arc::new(db), log: Arc::new(log) })
    }

    /// Reads a META record.
    pub(crate) fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        read_meta(&self.db, key)
    }

    /// Writes a META record durably.
    pub(crate) fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let write = |e: redb::Error| io_error(ErrorSubject::Store, ErrorVerb::Write, e);
        let bytes = encode(value).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let txn = self.db.begin_write().map_err(|e| write(e.into()))?;
        {
            let mut table = txn.open_table(META).map_err(|e| write(e.into()))?;
            table.insert(key, bytes.as_slice()).map_err(|e| write(e.into()))?;
        }
        txn.commit().map_err(|e| write(e.into()))
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let Some(next) = self.log.next_index() else { return Ok(None) };
        Ok(self.read_logs(next - 1..next)?.pop().map(|entry| entry.log_id))
    }

    fn read_logs(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StorageError> {
        let read = |e: std::io::Error| io_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let mut entries = Vec::new();
        for (_, bytes) in self.log.read(range).map_err(read)? {
            entries.push(decode(&bytes).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(entries)
    }
}

/// Reads a META record of `db`.
fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError> {
    let subject = || ErrorSubject::Store;
    let read = |e: redb::Error| io_error(subject(), ErrorVerb::Read, e);
    let txn = db.begin_read().map_err(|e| read(e.into()))?;
    let table = txn.open_table(META).map_err(|e| read(e.into()))?;
    match table.get(key).map_err(|e| read(e.into()))? {
        None => Ok(None),
        Some(bytes) => decode(bytes.value()).map(Some).map_err(|e| io_error(subject(), ErrorVerb::Read, e)),
    }
}

/// Moves the entries a version before the segment files kept in redb into new segment files,
/// which are written and flushed before redb lets go of the entries: a crash in between only
/// means moving them again.
fn move_log_out_of_redb(db: &Database, dir: &Path) -> Result<(), redb::Error> {
    let old: Vec<(u64, Vec<u8>)> = {
        let txn = db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        table
            .iter()?
            .map(|item| item.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()?
    };
    if old.is_empty() {
        return Ok(());
    }
    // Whatever is there is an earlier move cut short.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(redb::Error::Io)?;
    }
    Wal::open(dir, None).and_then(|log| log.append(&old)).map_err(redb::Error::Io)?;
    let txn = db.begin_write()?;
    txn.open_table(LOGS)?.retain(|_, _| false)?;
    txn.commit()?;
    Ok(())
}

// === impl RaftLogReader / RaftLogStorage ===

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_logs(range)
    }
}

impl RaftLogStorage<TypeConfig> for Store {
    type LogReader = Store;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    // The committed index is not persisted (openraft's default): every read is linearizable,
    // so a restarted member serves nothing before a leader exists anyway, and the leader's
    // first commit re-applies the log. Persisting it would cost a second fsync per commit.

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let write = |e: std::io::Error| io_error(ErrorSubject::Logs, ErrorVerb::Write, e);
        let records = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode(&entry).map_err(std::io::Error::other)?)))
            .collect::<Result<Vec<_>, std::io::Error>>()
            .map_err(write)?;
        // Returns once the records are flushed to disk.
        let result = self.log.append(&records);
        let flushed = result.as_ref().map(|_| ()).map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(flushed);
        result.map_err(write)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.log.truncate(log_id.index).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Recorded first: a crash before the segments go leaves them to the next open.
        self.put_meta(KEY_LAST_PURGED, &log_id)?;
        self.log.purge(log_id.index).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::registry::{Registry, StateMachine};

    /// Builds a fresh store in a temporary directory for each case of openraft's suite.
    struct Builder;

    impl StoreBuilder<TypeConfig, Store, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, Store, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
            let store =
                Store::open(dir.path()).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
            let sm = StateMachine::open(store.clone(), Arc::new(Registry::new(16, 16)))?;
            Ok((dir, store, sm))
        }
    }

    /// A store written by a version that kept the log in redb opens with the same log, now in
    /// segment files, even when an earlier attempt at moving it was cut short.
    #[tokio::test]
    async fn a_log_kept_in_redb_moves_to_segment_files() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |index| Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), index),
            payload: openraft::EntryPayload::Blank,
        };
        {
            let db = Database::create(dir.path().join("raft.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut logs = txn.open_table(LOGS).unwrap();
                for index in 5..=9 {
                    logs.insert(index, encode(&entry(index)).unwrap().as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        // A move cut short: segment files already there, redb still holding the log.
        Wal::open(&dir.path().join("log"), None).unwrap().append(&[(5, b"half".to_vec())]).unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let indexes = |entries: Vec<Entry>| entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(indexes(store.try_get_log_entries(0..100).await.unwrap()), vec![5, 6, 7, 8, 9]);
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(entry(9).log_id));
        let txn = store.db.begin_read().unwrap();
        assert!(txn.open_table(LOGS).unwrap().first().unwrap().is_none(), "redb lets go of the log");
        drop(txn);
        drop(store);
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(indexes(store.try_get_log_entries(0..100).await.unwrap()), vec![5, 6, 7, 8, 9]);
    }

    /// openraft's storage conformance suite: log, vote, purge, truncate, snapshots.
    #[test]
    fn conforms_to_openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder)
    }
}
