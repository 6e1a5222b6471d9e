//! The one error type of the core: every rule that refuses a request says what was wrong and
//! what is allowed, in a message meant for the person who sent it, and — for programs — what
//! the refusal is about: the input field, the record, or the unmet precondition.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How much of a user's value a message quotes. A refusal must stay small whatever was sent:
/// gRPC carries the message in a header, and an echoed 10,000-character name made clients
/// see "metadata size exceeds soft limit" instead of the refusal.
pub const QUOTED_CHARS: usize = 64;

/// A user's value as a message quotes it: in double quotes, cut to [`QUOTED_CHARS`] characters
/// with the full length named when longer.
pub fn quoted(value: impl fmt::Display) -> String {
    let text = value.to_string();
    let chars = text.chars().count();
    if chars <= QUOTED_CHARS {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(QUOTED_CHARS).collect();
    format!("{head:?}… ({chars} characters)")
}

/// The class of an [`Error`]; each maps to one gRPC status code at the API edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is malformed: a bad name, CIDR, option or address (InvalidArgument).
    Invalid,
    /// A unique thing (name, container, address, MAC) is already taken (AlreadyExists).
    AlreadyExists,
    /// The request names a network, endpoint or node that does not exist (NotFound).
    NotFound,
    /// The request is well-formed but conflicts with the registry: a network that still has
    /// endpoints, a subnet that overlaps another network (FailedPrecondition).
    Conflict,
    /// A pool, subnet or VNI range has nothing left (ResourceExhausted).
    Exhausted,
}

/// What a refusal is about, for clients that act on it without parsing the message (the API
/// edge turns it into `google.rpc` error details).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    /// The input that was wrong, by the request field's name (`subnet`, `container_name`).
    Field(String),
    /// The record that exists already or is missing: its type (`network`, `endpoint`, `node`,
    /// `address`, ...) and how the request named it.
    Record { kind: String, name: String },
    /// The registry's state that stands in the way: a kind in capitals (`SUBNET_OVERLAP`,
    /// `NETWORK_IN_USE`) and what it concerns.
    Precondition { kind: String, subject: String },
}

/// Why a command was refused.
///
/// Messages are sentence fragments in lowercase, naming the offending value and the rule, e.g.
/// `invalid subnet "10.0.0.1/24": host bits are set; did you mean 10.0.0.0/24?`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    subject: Option<Subject>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The field name a human description stands for: "container name" → `container_name`.
fn field_name(what: &str) -> String {
    what.trim().to_ascii_lowercase().replace([' ', '-'], "_")
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), subject: None }
    }

    /// `invalid {what} "{value}": {rule}`, about the field `what` names; the value is quoted
    /// with [`quoted`].
    pub fn invalid(what: &str, value: impl fmt::Display, rule: impl fmt::Display) -> Self {
        Error {
            kind: ErrorKind::Invalid,
            message: format!("invalid {what} {}: {rule}", quoted(value)),
            subject: Some(Subject::Field(field_name(what))),
        }
    }

    /// A malformed request the message alone explains.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Invalid, message)
    }

    /// `kind` named `name` is missing.
    pub fn not_found(kind: &str, name: impl fmt::Display, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message).about_record(kind, name)
    }

    /// `kind` named `name` is taken.
    pub fn already_exists(kind: &str, name: impl fmt::Display, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::AlreadyExists, message).about_record(kind, name)
    }

    /// The registry's state (`kind`, in capitals) stands in the way of what `subject` names.
    pub fn conflict(kind: &str, subject: impl fmt::Display, message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Conflict,
            message: message.into(),
            subject: Some(Subject::Precondition { kind: kind.to_string(), subject: subject.to_string() }),
        }
    }

    /// Nothing left of `what` (a pool, a subnet, the VNI range).
    pub fn exhausted(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Exhausted, message)
    }

    /// The same refusal, about the request field `field`.
    pub fn about_field(mut self, field: &str) -> Self {
        self.subject = Some(Subject::Field(field.to_string()));
        self
    }

    /// The same refusal, about the record `kind` named `name`.
    pub fn about_record(mut self, kind: &str, name: impl fmt::Display) -> Self {
        self.subject = Some(Subject::Record { kind: kind.to_string(), name: name.to_string() });
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn subject(&self) -> Option<&Subject> {
        self.subject.as_ref()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_capped_and_say_how_long_the_value_was() {
        assert_eq!(quoted("web"), "\"web\"");
        let long = "x".repeat(10_000);
        let q = quoted(&long);
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("(10000 characters)"), "{q}");
        // Cut on characters, never inside one.
        let wide = "é".repeat(100);
        assert!(quoted(&wide).starts_with(&format!("\"{}\"", "é".repeat(QUOTED_CHARS))));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let err = Error::invalid("container name", "a b", "no spaces");
        assert_eq!(err.message(), "invalid container name \"a b\": no spaces");
        assert_eq!(err.subject(), Some(&Subject::Field("container_name".into())));
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }
}
