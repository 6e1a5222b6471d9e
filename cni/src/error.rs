//! CNI errors: the spec's codes, weft's message.

use serde::Serialize;

/// A CNI error result (`{"cniVersion","code","msg","details"}` on stdout, exit status 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// 1: the configuration's CNI version is not one weft-cni speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// 2: a field (or command) the plugin does not support.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// 4: a `CNI_*` variable is missing or wrong.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// 5: reading stdin failed.
    pub const IO_FAILURE: u32 = 5;
    /// 6: stdin is not JSON of the expected shape.
    pub const DECODING_FAILURE: u32 = 6;
    /// 7: the configuration asks for something wrong (an unknown weft network, a bad address).
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// 11: weft-node or the controllers do not answer now; the runtime may retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// 50 (STATUS): the plugin cannot add containers now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// 100: weft refused (an address or host port taken, the network full, an interface
    /// that differs from what CHECK expects); the message says which.
    pub const WEFT_REFUSED: u32 = 100;

    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// weft-node's answer as a CNI error: what a runtime can retry is 11, what is wrong in
    /// the configuration 7, anything else weft refused 100; the gRPC code in the details.
    pub fn from_status(status: &tonic::Status) -> CniError {
        use tonic::Code;
        let code = match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => CniError::TRY_AGAIN_LATER,
            Code::InvalidArgument | Code::NotFound => CniError::INVALID_NETWORK_CONFIG,
            _ => CniError::WEFT_REFUSED,
        };
        CniError::new(code, status.message()).with_details(format!("weft-node answered {:?}", status.code()))
    }

    /// The error as the runtime reads it.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("cniVersion".into(), cni_version.into());
        }
        value
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (CNI error {})", self.msg, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_onto_what_a_runtime_can_do() {
        let retry = CniError::from_status(&tonic::Status::unavailable("no controller answers"));
        assert_eq!(retry.code, CniError::TRY_AGAIN_LATER);
        let unknown = CniError::from_status(&tonic::Status::not_found("no network \"nope\""));
        assert_eq!(
            (unknown.code, unknown.msg.as_str()),
            (CniError::INVALID_NETWORK_CONFIG, "no network \"nope\"")
        );
        let taken = CniError::from_status(&tonic::Status::already_exists("host port 8080 is published"));
        assert_eq!(taken.code, CniError::WEFT_REFUSED);
        assert_eq!(
            taken.to_json("1.0.0"),
            serde_json::json!({"cniVersion": "1.0.0", "code": 100, "msg": "host port 8080 is published",
                "details": "weft-node answered AlreadyExists"})
        );
    }
}
