//! Join tokens and joining. Admins make tokens (TokenService); a host or a new controller
//! presents one with a certificate request and gets its credential signed by the cluster CA
//! (JoinService, served without a client certificate). Tokens live in the replicated registry
//! as a SHA-256 of their secret, so any member checks them; signing needs the CA key, which a
//! member holds when its `--tls-dir` has `ca-key.pem`.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use weft_api::convert;
use weft_api::pb;
use weft_core::{Command, JoinToken, Response as Done, TokenRole};
use weft_pki::{Authority, Role};

use crate::cluster::{Controller, now_ms};
use crate::signer::Signer;

/// Longest token lifetime.
const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
const DEFAULT_TTL: Duration = Duration::from_secs(86_400);

fn random_hex(bytes: usize) -> Result<String, Status> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buffer))
        .map_err(|e| Status::internal(format!("reading random bytes: {e}")))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

fn sha256_hex(text: &str) -> String {
    weft_pki::sha256_hex(text.as_bytes())
}

fn role_pb(role: TokenRole) -> pb::TokenRole {
    match role {
        TokenRole::Node => pb::TokenRole::Node,
        TokenRole::Controller => pb::TokenRole::Controller,
    }
}

fn token_pb(t: &JoinToken) -> pb::Token {
    pb::Token {
        id: t.id.clone(),
        role: role_pb(t.role).into(),
        created: Some(convert::timestamp(t.created_ms)),
        expires: Some(convert::timestamp(t.expires_ms)),
        revoked: t.revoked,
    }
}

impl Controller {
    fn signer(&self) -> Result<&Arc<Signer>, Status> {
        self.signer.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this cluster runs without TLS (--insecure): there are no credentials to join with",
            )
        })
    }

    /// The CA's key, for signing; only members given `ca-key.pem` hold it.
    fn authority(&self) -> Result<&Authority, Status> {
        self.signer()?.authority.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this controller holds no CA key (ca-key.pem in its --tls-dir); ask another member",
            )
        })
    }
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Controller {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = request.into_inner();
        let role = match pb::TokenRole::try_from(req.role) {
            Ok(pb::TokenRole::Node) => TokenRole::Node,
            Ok(pb::TokenRole::Controller) => TokenRole::Controller,
            _ => return Err(Status::invalid_argument("a token is for a node or a controller")),
        };
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TTL,
            seconds => Duration::from_secs(u64::from(seconds)),
        };
        if ttl > MAX_TTL {
            return Err(Status::invalid_argument(format!(
                "invalid token lifetime {}s: at most {} days",
                ttl.as_secs(),
                MAX_TTL.as_secs() / 86_400
            )));
        }
        let ca_fingerprint =
            weft_pki::fingerprint(&self.signer()?.ca_pem).map_err(|e| Status::internal(e.to_string()))?;
        let (id, secret) = (random_hex(8)?, random_hex(32)?);
        let created_ms = now_ms();
        let expires_ms = created_ms + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let token = JoinToken {
            id: id.clone(),
            secret_sha256: sha256_hex(&secret),
            role,
            created_ms,
            expires_ms,
            revoked: false,
        };
        match self.propose(Command::CreateToken(token)).await? {
            (_, Done::Token(token)) => Ok(Response::new(pb::CreateTokenResponse {
                token: Some(token_pb(&token)),
                secret_token: format!("weft1.{id}.{secret}"),
                ca_fingerprint,
            })),
            (_, other) => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.linearizable().await?;
        let tokens = self.registry.with_state(|s| s.tokens().map(token_pb).collect());
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        match self.propose(Command::RevokeToken { id: request.into_inner().id }).await? {
            (_, Done::Token(token)) => Ok(Response::new(token_pb(&token))),
            (_, other) => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl pb::join_service_server::JoinService for Controller {
    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let req = request.into_inner();
        let (signer, authority) = (self.signer()?, self.authority()?);
        let refused = || Status::permission_denied("the join token is unknown, wrong, expired or revoked");
        let mut parts = req.token.trim().splitn(3, '.');
        let (Some("weft1"), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Status::invalid_argument(
                "a join token looks like weft1.<id>.<secret>, as `weft token create` prints it",
            ));
        };
        // A token made a moment ago through another member must be seen here.
        self.linearizable().await?;
        let role =
            self.registry.with_state(|s| s.admit(id, &sha256_hex(secret), now_ms())).map_err(|why| {
                tracing::warn!(token = id, name = %req.name, "join refused: {why}");
                refused()
            })?;
        let (role, sans) = match role {
            TokenRole::Node => {
                weft_core::validate::dns_name("node name", &req.name)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                (Role::Node, Vec::new())
            }
            TokenRole::Controller => {
                req.name.parse::<u64>().map_err(|_| {
                    Status::invalid_argument(format!("invalid controller id {:?}: a number", req.name))
                })?;
                if req.addresses.is_empty() {
                    return Err(Status::invalid_argument(
                        "a controller's credential needs the addresses clients reach it by",
                    ));
                }
                (Role::Controller, req.addresses.clone())
            }
        };
        let certificate_pem = authority
            .sign_request(&req.csr_pem, role, &req.name, &sans)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(token = id, name = %req.name, ?role, "joined: credential issued");
        Ok(Response::new(pb::JoinResponse { certificate_pem, ca_pem: signer.ca_pem.clone() }))
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let caller = request.extensions().get::<weft_pki::Caller>().cloned();
        let (signer, authority) = (self.signer()?, self.authority()?);
        let (caller, sans) = match caller {
            Some(caller) if caller.role == Role::Node => (caller, Vec::new()),
            // A controller keeps the addresses its current certificate names.
            Some(caller) if caller.role == Role::Controller => {
                let certificate = request
                    .peer_certs()
                    .and_then(|certs| certs.first().cloned())
                    .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
                let sans =
                    weft_pki::sans_of(&certificate).map_err(|e| Status::invalid_argument(e.to_string()))?;
                (caller, sans)
            }
            _ => {
                return Err(Status::failed_precondition(
                    "only hosts and controllers renew their credential this way",
                ));
            }
        };
        let certificate_pem = authority
            .sign_request(&request.get_ref().csr_pem, caller.role, &caller.name, &sans)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(%caller, "credential renewed");
        Ok(Response::new(pb::JoinResponse { certificate_pem, ca_pem: signer.ca_pem.clone() }))
    }
}
