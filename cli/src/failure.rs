//! What a failed command tells its user: one line, with the gRPC details under --debug.

use tonic::{Code, Status};

/// A failure to show the user: one line, with the gRPC details only under --debug.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) detail: Option<String>,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), detail: None }
    }
}

impl Failure {
    /// Several lookups that found nothing: their messages on one line.
    pub(crate) fn missing(statuses: &[Status]) -> Failure {
        Failure {
            message: statuses.iter().map(|s| s.message()).collect::<Vec<_>>().join("; "),
            detail: Some(statuses.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join("\n")),
        }
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        let message = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Internal
                if status.message().is_empty() =>
            {
                format!("{:?}", status.code())
            }
            _ => status.message().to_string(),
        };
        Failure { message, detail: Some(format!("{status:?}")) }
    }
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;

pub(crate) fn key_value(what: &str, text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(Failure::new(format!("{what} {text:?}: expected KEY=VALUE"))),
    }
}
