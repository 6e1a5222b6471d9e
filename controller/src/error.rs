//! Why a controller could not do what it was asked, and the one place that becomes a gRPC
//! status for clients.

use std::time::Duration;

use tonic::Status;

/// What went wrong inside a controller, before it reaches a client.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The registry's rules refused the request (a bad name, a taken address, ...).
    #[error("{0}")]
    Refused(weft_core::Error),
    /// No leader with a quorum answered in time. `write`: the request may still take effect.
    #[error(
        "{what} could not complete within {:.1}s: the controllers have no leader with a quorum ({detail}){}; \
         check that a majority of members is running and reachable",
        timeout.as_secs_f64(),
        if *write { "; it was not confirmed and may still take effect once a majority is back" } else { "" }
    )]
    NoQuorum { what: String, timeout: Duration, detail: String, write: bool },
    /// A new cluster has not committed its configuration yet; nothing can be written.
    #[error("the cluster is still starting: its configuration is not committed yet; retry shortly")]
    Starting,
    /// The client's deadline passed before the request was proposed.
    #[error(
        "the request's deadline passed before it was proposed; nothing was written (retry with a longer deadline)"
    )]
    Expired,
    /// This member cannot serve the request now (shutting down, its Raft stopped).
    #[error("{0}")]
    Unavailable(String),
}

impl ControllerError {
    pub(crate) fn no_quorum(what: &str, timeout: Duration, detail: &str) -> ControllerError {
        ControllerError::NoQuorum {
            what: what.to_string(),
            timeout,
            detail: detail.to_string(),
            write: what == "the write",
        }
    }
}

impl From<ControllerError> for Status {
    fn from(err: ControllerError) -> Status {
        match err {
            ControllerError::Refused(refusal) => weft_api::convert::status(&refusal),
            ControllerError::Expired => Status::deadline_exceeded(err.to_string()),
            ControllerError::NoQuorum { .. }
            | ControllerError::Starting
            | ControllerError::Unavailable(_) => Status::unavailable(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_one_code() {
        let cases = [
            (ControllerError::Refused(weft_core::Error::bad_request("no")), tonic::Code::InvalidArgument),
            (ControllerError::no_quorum("the write", Duration::from_secs(5), "x"), tonic::Code::Unavailable),
            (ControllerError::Starting, tonic::Code::Unavailable),
            (ControllerError::Expired, tonic::Code::DeadlineExceeded),
            (ControllerError::Unavailable("down".into()), tonic::Code::Unavailable),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
        let write = Status::from(ControllerError::no_quorum("the write", Duration::from_secs(5), "x"));
        assert!(write.message().contains("may still take effect"), "{}", write.message());
        let read = Status::from(ControllerError::no_quorum("the read", Duration::from_secs(5), "x"));
        assert!(!read.message().contains("may still take effect"), "{}", read.message());
    }
}
