//! The Raft log, vote, committed index and latest snapshot, durable in one redb file.
//!
//! Every append is one redb transaction committed with fsync before openraft is told the
//! entries are flushed, so an acknowledged write survives a crash. openraft hands over every
//! entry that queued while the previous append was in flight, so under load many client writes
//! share one commit.

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

/// index -> postcard-encoded entry.
const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("logs");
/// Small records (vote, committed, last purged, snapshot, cluster identity) by name.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_SNAPSHOT: &str = "snapshot";

/// The on-disk store: a redb database shared by the log store and the state machine.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
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
    /// Opens (or creates) `dir/raft.redb`.
    pub fn open(dir: &Path) -> Result<Store, redb::Error> {
        std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
        let db = Database::create(dir.join("raft.redb"))?;
        // Tables must exist before a read transaction can open them.
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Reads a META record.
    pub(crate) fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let subject = || ErrorSubject::Store;
        let read = |e: redb::Error| io_error(subject(), ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| read(e.into()))?;
        let table = txn.open_table(META).map_err(|e| read(e.into()))?;
        match table.get(key).map_err(|e| read(e.into()))? {
            None => Ok(None),
            Some(bytes) => {
                decode(bytes.value()).map(Some).map_err(|e| io_error(subject(), ErrorVerb::Read, e))
            }
        }
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
        let read = |e: redb::Error| io_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| read(e.into()))?;
        let table = txn.open_table(LOGS).map_err(|e| read(e.into()))?;
        let Some((_, bytes)) = table.last().map_err(|e| read(e.into()))? else {
            return Ok(None);
        };
        let entry: Entry =
            decode(bytes.value()).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(Some(entry.log_id))
    }

    /// Deletes log entries in `range` (and records `last_purged` when purging).
    fn delete_logs(
        &self,
        range: impl RangeBounds<u64>,
        last_purged: Option<&LogId>,
    ) -> Result<(), StorageError> {
        let write = |e: redb::Error| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let txn = self.db.begin_write().map_err(|e| write(e.into()))?;
        {
            let mut table = txn.open_table(LOGS).map_err(|e| write(e.into()))?;
            table.retain_in(range, |_, _| false).map_err(|e| write(e.into()))?;
            if let Some(purged) = last_purged {
                let bytes = encode(purged).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
                let mut meta = txn.open_table(META).map_err(|e| write(e.into()))?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice()).map_err(|e| write(e.into()))?;
            }
        }
        txn.commit().map_err(|e| write(e.into()))
    }
}

// === impl RaftLogReader / RaftLogStorage ===

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let read = |e: redb::Error| io_error(ErrorSubject::Logs, ErrorVerb::Read, e);
        let txn = self.db.begin_read().map_err(|e| read(e.into()))?;
        let table = txn.open_table(LOGS).map_err(|e| read(e.into()))?;
        let mut entries = Vec::new();
        for item in table.range(range).map_err(|e| read(e.into()))? {
            let (_, bytes) = item.map_err(|e| read(e.into()))?;
            entries
                .push(decode(bytes.value()).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(entries)
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
        let write = |e: redb::Error| io_error(ErrorSubject::Logs, ErrorVerb::Write, e);
        let txn = self.db.begin_write().map_err(|e| write(e.into()))?;
        {
            let mut table = txn.open_table(LOGS).map_err(|e| write(e.into()))?;
            for entry in entries {
                let bytes = encode(&entry).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
                table.insert(entry.log_id.index, bytes.as_slice()).map_err(|e| write(e.into()))?;
            }
        }
        // Durability::Immediate (redb's default): the commit returns after fsync.
        let result = txn.commit();
        let flushed = result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(flushed);
        result.map_err(|e| write(e.into()))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.delete_logs(log_id.index.., None)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.delete_logs(..=log_id.index, Some(&log_id))
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

    /// openraft's storage conformance suite: log, vote, purge, truncate, snapshots.
    #[test]
    fn conforms_to_openraft_storage_suite() -> Result<(), StorageError> {
        Suite::test_all(Builder)
    }
}
