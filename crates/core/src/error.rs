//! The one error type of the core: every rule that refuses a request says what was wrong and
//! what is allowed, in a message meant for the person who sent it.

use serde::{Deserialize, Serialize};

/// Why a command was refused. Each variant maps to one gRPC status code at the API edge.
///
/// Messages are complete sentences fragments in lowercase, naming the offending value and the
/// rule, e.g. `invalid subnet "10.0.0.1/24": host bits are set; did you mean 10.0.0.0/24?`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The request is malformed: a bad name, CIDR, option or address (InvalidArgument).
    #[error("{0}")]
    Invalid(String),
    /// A unique thing (name, container, address, MAC) is already taken (AlreadyExists).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request names a network, endpoint or node that does not exist (NotFound).
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but conflicts with the registry: a network that still has
    /// endpoints, a subnet that overlaps another network (FailedPrecondition).
    #[error("{0}")]
    Conflict(String),
    /// A pool, subnet or VNI range has nothing left (ResourceExhausted).
    #[error("{0}")]
    Exhausted(String),
}

/// The class of an [`Error`], for callers that branch on it (gRPC code mapping, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    AlreadyExists,
    NotFound,
    Conflict,
    Exhausted,
}

impl Error {
    /// `invalid {what} {value:?}: {rule}`.
    pub fn invalid(what: &str, value: impl std::fmt::Display, rule: impl std::fmt::Display) -> Self {
        Error::Invalid(format!("invalid {what} \"{value}\": {rule}"))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) => ErrorKind::Invalid,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Exhausted(_) => ErrorKind::Exhausted,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Error::Invalid(m)
            | Error::AlreadyExists(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Exhausted(m) => m,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
