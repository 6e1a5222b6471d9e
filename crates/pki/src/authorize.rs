//! Authorization on the controllers' server: each role may call its methods only, decided
//! from the certificate the peer presented and the gRPC method's path. A refusal is
//! PermissionDenied, logged with who asked for what. The [`Caller`] rides along in the
//! request's extensions for handlers that check more (a node acting for its own host only).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::{Caller, CallerError, Role};

/// What a host's agent calls: its registration, heartbeats, the watch, its own endpoints
/// (created, named, removed) and the applied-everywhere barrier, and two reads the watch already shows it (a network
/// created a moment ago, and whether an endpoint of its own exists after a lost answer).
const NODE_METHODS: &[&str] = &[
    "/weft.v1.NodeService/RegisterNode",
    "/weft.v1.NodeService/Heartbeat",
    "/weft.v1.NodeService/AwaitApplied",
    "/weft.v1.WatchService/Watch",
    "/weft.v1.EndpointService/CreateEndpoint",
    "/weft.v1.EndpointService/RemoveEndpoint",
    "/weft.v1.EndpointService/UpdateEndpoint",
    "/weft.v1.EndpointService/PublishPorts",
    "/weft.v1.EndpointService/ListEndpoints",
    "/weft.v1.NetworkService/ListNetworks",
    // The Docker plugin's provisional networks only; the API checks the label.
    "/weft.v1.NetworkService/CreateNetwork",
    "/weft.v1.NetworkService/RenameNetwork",
    "/weft.v1.NetworkService/ReshapeNetwork",
    "/weft.v1.NetworkService/RemoveNetwork",
    "/weft.v1.JoinService/Renew",
];

/// Served to callers without a certificate.
const JOIN_METHOD: &str = "/weft.v1.JoinService/Join";
/// A member without the CA key renews its credential through one that holds it.
const RENEW_METHOD: &str = "/weft.v1.JoinService/Renew";

/// Health checks and reflection: anyone the cluster CA vouches for.
fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// Whether `role` may call the method at `path`.
pub fn allowed(role: Role, path: &str) -> bool {
    match role {
        Role::Admin => true,
        Role::Controller => path.starts_with("/weft.raft.v1.") || path == RENEW_METHOD || is_probe(path),
        Role::Node => NODE_METHODS.contains(&path) || is_probe(path),
    }
}

/// When a node's credentials were revoked (ms since the epoch), if they were.
pub type Revocations = Arc<dyn Fn(&str) -> Option<u64> + Send + Sync>;

/// The layer. With `insecure` (plaintext, no certificates) every caller is an admin.
/// `revoked` tells when a node name's credentials were revoked (its removal from the
/// cluster): certificates for it issued before then are refused.
#[derive(Clone)]
pub struct Authorize {
    pub insecure: bool,
    pub revoked: Revocations,
}

impl std::fmt::Debug for Authorize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorize").field("insecure", &self.insecure).finish_non_exhaustive()
    }
}

impl<S> tower::Layer<S> for Authorize {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized { inner, insecure: self.insecure, revoked: self.revoked.clone() }
    }
}

#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    insecure: bool,
    revoked: Revocations,
}

impl<S> std::fmt::Debug for Authorized<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorized").field("insecure", &self.insecure).finish_non_exhaustive()
    }
}

/// Who presented the request's client certificate.
fn caller_of<B>(request: &http::Request<B>) -> Result<Caller, CallerError> {
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .ok_or(CallerError::NoCertificate)?;
    let first = certs.first().ok_or(CallerError::NoCertificate)?;
    Caller::from_certificate(first)
}

impl<S, B, RB> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        // Joining is how a machine without credentials gets some: the token decides.
        if path == JOIN_METHOD {
            return Box::pin(self.inner.call(request));
        }
        let caller = if self.insecure {
            Ok(Caller { role: Role::Admin, name: "insecure".into(), issued_ms: 0 })
        } else {
            caller_of(&request)
        };
        let revoked_at = match &caller {
            Ok(c) if c.role == Role::Node => (self.revoked)(&c.name).filter(|at| c.issued_ms <= *at),
            _ => None,
        };
        let denied = match &caller {
            Ok(caller) if revoked_at.is_some() => Some(format!(
                "the credential of {caller} was revoked when the node was removed from the cluster; issue a new one (weft pki issue --node {})",
                caller.name
            )),
            Ok(caller) if allowed(caller.role, &path) => None,
            Ok(caller) => Some(format!("{caller} may not call {path}")),
            Err(why) => Some(format!("{why}: not allowed to call {path}")),
        };
        if let Some(message) = denied {
            tracing::warn!(method = %path, %message, "permission denied");
            let response = tonic::Status::permission_denied(message).into_http::<RB>();
            return Box::pin(async move { Ok(response) });
        }
        if let Ok(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_calls_its_own_methods() {
        assert!(allowed(Role::Admin, "/weft.v1.NetworkService/CreateNetwork"));
        assert!(allowed(Role::Node, "/weft.v1.WatchService/Watch"));
        assert!(allowed(Role::Node, "/weft.v1.EndpointService/CreateEndpoint"));
        assert!(!allowed(Role::Node, "/weft.v1.NetworkService/PruneNetworks"));
        assert!(!allowed(Role::Node, "/weft.v1.NodeService/RemoveNode"));
        assert!(!allowed(Role::Node, "/weft.raft.v1.RaftService/AppendEntries"));
        assert!(allowed(Role::Controller, "/weft.raft.v1.RaftService/AppendEntries"));
        assert!(!allowed(Role::Controller, "/weft.v1.NetworkService/RemoveNetwork"));
        assert!(allowed(Role::Controller, "/weft.v1.JoinService/Renew"));
        assert!(allowed(Role::Node, "/grpc.health.v1.Health/Check"));
    }
}
