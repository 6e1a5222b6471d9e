//! The openraft type configuration: what a log entry carries and what applying it answers.
//! Every openraft-facing type lives in this module and in `store`, `registry` and
//! `raft_network`, so a move to another openraft release stays contained.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use weft_core::{Error, Proposal, Response};

/// Members are numbered by the operator (bootstrap manifest, `cluster add`).
pub type NodeId = u64;

/// What applying one log entry produced. Refusals are results too: they are decided by the
/// state machine, identically on every replica, and travel back to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// The registry revision after the entry.
    pub revision: u64,
    /// `None` for entries that carry no command (leader blanks, membership changes).
    pub outcome: Option<Result<Response, Error>>,
}

openraft::declare_raft_types!(
    /// weft's Raft: proposals in, apply results out, snapshots as bytes in memory.
    pub TypeConfig:
        D = Proposal,
        R = ApplyResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
