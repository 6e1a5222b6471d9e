//! The openraft type configuration: what a log entry carries and what applying it answers.
//! Every openraft-facing type lives in this module and in `store`, `registry` and
//! `raft_network`, so a move to another openraft release stays contained.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use weft_core::{Error, Proposal, Response};

/// Members are numbered by the operator (bootstrap manifest, `cluster add`).
pub type NodeId = u64;

/// The payload of one log entry: client proposals gathered while the previous batch was being
/// committed, so that under load many writes share one Raft round and one fsync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalBatch(pub Vec<Proposal>);

/// What applying one proposal produced. Refusals are results too: they are decided by the
/// state machine, identically on every replica, and travel back to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The registry revision after the proposal.
    pub revision: u64,
    pub result: Result<Response, Error>,
}

/// What applying one log entry produced: an outcome per proposal of its batch (none for
/// entries without proposals: leader blanks, membership changes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub outcomes: Vec<Outcome>,
}

openraft::declare_raft_types!(
    /// weft's Raft: proposals in, apply results out, snapshots as bytes in memory.
    pub TypeConfig:
        D = ProposalBatch,
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
