//! Client request ids: a write retried with the id of its first attempt answers what that
//! attempt did, instead of doing it again (or refusing it as a duplicate of itself).
//!
//! A client whose deadline passes cannot tell whether its write was committed; without ids,
//! the retry of a create that did commit gets AlreadyExists and the client cannot tell its own
//! earlier write from somebody else's. The registry remembers each id's answer for
//! [`RETENTION_MS`] (by the proposals' own clock, so every replica forgets at the same entry),
//! at most [`MAX_REMEMBERED`] of them, and replicates them like everything else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{Command, Response};
use crate::error::{Error, Result};

/// How long an id's answer is kept: far longer than any client's retry loop.
pub const RETENTION_MS: u64 = 10 * 60 * 1000;
/// Most answers kept at once; the oldest go first beyond it.
pub const MAX_REMEMBERED: usize = 100_000;
/// Longest request id (a UUID is 36 characters).
pub const MAX_ID_LEN: usize = 128;

/// The answer to one request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub id: String,
    /// When the first attempt was applied (the proposal's time).
    pub at_ms: u64,
    /// SHA-256 of the command: the same id with another request is refused.
    pub fingerprint: [u8; 32],
    /// The registry revision the first attempt answered with.
    pub revision: u64,
    pub response: Response,
}

/// The remembered answers, by id and by age. Answers are shared so a snapshot can take them
/// all without copying them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLog {
    by_id: BTreeMap<String, Arc<Remembered>>,
    by_age: BTreeSet<(u64, String)>,
}

/// A request id is 1 to [`MAX_ID_LEN`] printable ASCII characters (a UUID, say).
pub fn check_id(id: &str) -> Result<()> {
    if !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    Err(Error::invalid(
        "request id",
        id,
        format_args!("use 1 to {MAX_ID_LEN} printable ASCII characters without spaces, such as a UUID"),
    ))
}

/// What identifies a request's content: the same id may only ever stand for one of them.
pub fn fingerprint(command: &Command) -> [u8; 32] {
    let bytes = postcard::to_allocvec(command).unwrap_or_else(|e| unreachable!("encoding to memory: {e}"));
    Sha256::digest(bytes).into()
}

impl RequestLog {
    /// Forgets answers older than [`RETENTION_MS`] at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(RETENTION_MS);
        while let Some((at, id)) = self.by_age.first().cloned() {
            if at >= cutoff {
                break;
            }
            self.by_age.pop_first();
            self.by_id.remove(&id);
        }
    }

    pub fn recall(&self, id: &str) -> Option<&Remembered> {
        self.by_id.get(id).map(Arc::as_ref)
    }

    /// Keeps an answer; beyond [`MAX_REMEMBERED`] the oldest is forgotten.
    pub fn remember(&mut self, answer: Remembered) {
        if let Some(old) = self.by_id.remove(&answer.id) {
            self.by_age.remove(&(old.at_ms, old.id.clone()));
        }
        self.by_age.insert((answer.at_ms, answer.id.clone()));
        self.by_id.insert(answer.id.clone(), Arc::new(answer));
        while self.by_id.len() > MAX_REMEMBERED {
            let Some((_, id)) = self.by_age.pop_first() else { break };
            self.by_id.remove(&id);
        }
    }

    /// Every answer, oldest first (the snapshot's order).
    pub fn entries(&self) -> impl Iterator<Item = &Arc<Remembered>> {
        self.by_age.iter().filter_map(|(_, id)| self.by_id.get(id))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn answer(id: &str, at_ms: u64) -> Remembered {
        Remembered {
            id: id.into(),
            at_ms,
            fingerprint: [0; 32],
            revision: 1,
            response: Response::Pruned(Vec::new()),
        }
    }

    #[test]
    fn ids_are_short_printable_ascii() {
        check_id("5f0c2a1e-1111-4d4d-8888-0123456789ab").unwrap();
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_expire_by_the_proposals_clock_oldest_first() {
        let mut log = RequestLog::default();
        log.remember(answer("a", 1_000));
        log.remember(answer("b", 2_000));
        log.expire(1_000 + RETENTION_MS);
        assert!(log.recall("a").is_some(), "exactly at the limit is still kept");
        log.expire(1_001 + RETENTION_MS);
        assert!(log.recall("a").is_none());
        assert!(log.recall("b").is_some());
        assert_eq!(log.entries().count(), 1);
    }

    #[test]
    fn the_oldest_answers_go_first_beyond_the_cap() {
        let mut log = RequestLog::default();
        for i in 0..MAX_REMEMBERED + 3 {
            log.remember(answer(&format!("id-{i}"), i as u64));
        }
        assert_eq!(log.len(), MAX_REMEMBERED);
        assert!(log.recall("id-2").is_none());
        assert!(log.recall("id-3").is_some());
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = Command::RemoveNode { name: "h1".into() };
        let b = Command::RemoveNode { name: "h2".into() };
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
