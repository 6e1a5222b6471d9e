//! Where the cluster is: controllers and the local agent, from flags, the environment and
//! the config file. Credentials are loaded by the commands that call controllers, not before.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::transport::Channel;
use tonic::{Code, Status};
use weft_api::agent;

use crate::failure::{Failure, Result};

#[derive(Debug, Args)]
pub(crate) struct Connection {
    /// Controller addresses (host:port, comma separated).
    #[arg(long, global = true, env = "WEFT_CONTROLLER", value_delimiter = ',')]
    controller: Vec<String>,
    /// The local node agent's socket.
    #[arg(long, global = true, env = "WEFT_NODE_SOCKET")]
    node_socket: Option<PathBuf>,
    /// A TOML file with `controller = ["host:port", ...]` and `node_socket = "..."`
    /// (default: ~/.config/weft/config.toml when it exists).
    #[arg(long, global = true, env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    /// TLS credentials for the controllers (ca.pem, cert.pem, key.pem), e.g. the admin
    /// directory `weft pki init` made. Without, weft talks plaintext (controllers started
    /// with --insecure).
    #[arg(long, global = true, env = "WEFT_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Deadline of each request, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    controller: Option<Vec<String>>,
    node_socket: Option<PathBuf>,
    tls_dir: Option<PathBuf>,
}

/// Where to reach the cluster, with flags over environment over the config file.
pub(crate) struct Target {
    controllers: Vec<String>,
    /// Loaded when a command first calls a controller: commands for the local agent work
    /// whatever the credentials directory holds.
    tls_dir: Option<PathBuf>,
    node_socket: PathBuf,
    timeout: Duration,
}

impl Target {
    pub(crate) fn resolve(c: &Connection) -> Result<Target> {
        let default_file =
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/weft/config.toml"));
        let file = match (&c.config, default_file) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(path)) if path.exists() => Some(path),
            _ => None,
        };
        let config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Failure::new(format!("config file {}: {e}", path.display())))?;
                toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| Failure::new(format!("config file {}: {}", path.display(), e.message())))?
            }
            None => ConfigFile::default(),
        };
        let controllers = if c.controller.is_empty() {
            config.controller.unwrap_or_else(|| vec!["127.0.0.1:7001".to_string()])
        } else {
            c.controller.clone()
        };
        Ok(Target {
            tls_dir: c.tls_dir.clone().or(config.tls_dir),
            controllers: controllers.into_iter().filter(|a| !a.trim().is_empty()).collect(),
            node_socket: c
                .node_socket
                .clone()
                .or(config.node_socket)
                .unwrap_or_else(|| PathBuf::from("/run/weft/agent.sock")),
            timeout: Duration::from_secs(c.timeout.max(1)),
        })
    }

    /// A channel to the first controller that accepts a connection.
    pub(crate) async fn controller(&self) -> Result<Channel> {
        let tls = match &self.tls_dir {
            Some(dir) => {
                let credentials =
                    weft_pki::Credentials::load(dir).map_err(|e| Failure::new(format!("--tls-dir: {e}")))?;
                if let Some(warning) = expiry_warning(dir, &credentials, crate::cluster::now_ms()) {
                    eprintln!("{warning}");
                }
                Some(credentials.client())
            }
            None => None,
        };
        let mut problems = Vec::new();
        for (k, address) in self.controllers.iter().enumerate() {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let uri = if address.contains("://") { address.clone() } else { format!("{scheme}://{address}") };
            let mut endpoint = match Channel::from_shared(uri) {
                Ok(e) => e.connect_timeout(ANSWER_WITHIN).timeout(self.timeout),
                Err(_) => {
                    problems.push(format!("{address}: not a host:port"));
                    continue;
                }
            };
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone()).map_err(|e| Failure::new(format!("TLS: {e}")))?;
            }
            // A member that hangs still has its kernel accept the connection, and the TLS
            // handshake would wait on it for ever: each member gets ANSWER_WITHIN to connect
            // while another is left to try; the last one gets the whole timeout. A finished
            // TLS handshake shows the member runs; in plaintext nothing does until it answers,
            // so there it must answer a health check too.
            let others_left = k + 1 < self.controllers.len();
            let wait = if others_left { ANSWER_WITHIN.min(self.timeout) } else { self.timeout };
            let check = others_left && tls.is_none();
            match tokio::time::timeout(wait, connect_answering(&endpoint, check)).await {
                Ok(Ok(channel)) => return Ok(channel),
                Ok(Err(why)) => problems.push(format!("{address}: {why}")),
                Err(_) => problems.push(format!("{address}: no answer within {} ms", wait.as_millis())),
            }
        }
        Err(Failure::new(format!(
            "cannot reach a controller ({}); set --controller or WEFT_CONTROLLER",
            problems.join("; ")
        )))
    }

    /// Sends a write, trying again (on the first controller that accepts a connection) while
    /// the answer is Unavailable — leadership moving, a member restarting — until the
    /// timeout. `call` builds the request with the same request id every time, so a try that
    /// committed before its answer was lost is answered, not repeated or refused as taken.
    pub(crate) async fn write<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(Channel, String) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let request_id = new_request_id();
        let deadline = std::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(100);
        loop {
            let answer = call(self.controller().await?, request_id.clone()).await;
            match answer {
                Ok(done) => return Ok(done.into_inner()),
                Err(status)
                    if status.code() == Code::Unavailable && std::time::Instant::now() + pause < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    pub(crate) async fn agent(&self) -> Result<agent::agent_service_client::AgentServiceClient<Channel>> {
        weft_api::agent_client::connect(&self.node_socket).await.map_err(|e| {
            Failure::new(format!(
                "cannot reach the node agent at {} ({}); is weft-node running here? (--node-socket / WEFT_NODE_SOCKET)",
                self.node_socket.display(),
                source_text(&e)
            ))
        })
    }
}

/// How long a controller may take to connect and answer while another is left to try.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Connects to a controller and, when `check`, has it answer a health check: an accepted
/// connection alone does not show that the member runs.
async fn connect_answering(
    endpoint: &tonic::transport::Endpoint,
    check: bool,
) -> std::result::Result<Channel, String> {
    let channel = endpoint.connect().await.map_err(|e| source_text(&e))?;
    if check {
        let probe = tonic_health::pb::HealthCheckRequest { service: String::new() };
        match tonic_health::pb::health_client::HealthClient::new(channel.clone()).check(probe).await {
            // Any answer of its own, even a refusal, shows the member is there.
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                ) =>
            {
                return Err(status.message().to_string());
            }
            _ => {}
        }
    }
    Ok(channel)
}

/// The request id of one write and its retries: this host and process.
fn new_request_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host.trim().chars().filter(char::is_ascii_graphic).take(48).collect();
    weft_api::request_id(&format!("weft-cli/{host}/{}", std::process::id()))
}

/// The innermost cause of an error: "Connection refused" rather than "transport error".
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// One line for stderr when the credential the CLI presents expires within 30 days, or has:
/// admins' credentials are renewed by hand, and the command itself goes on.
fn expiry_warning(dir: &std::path::Path, credentials: &weft_pki::Credentials, now_ms: u64) -> Option<String> {
    let within = std::time::Duration::from_secs(30 * 86_400);
    let renew = "an admin issues a new one with `weft pki issue --admin NAME`";
    match credentials.standing(now_ms, within).ok()? {
        weft_pki::Standing::Valid => None,
        weft_pki::Standing::Due { days_left } => Some(format!(
            "weft: warning: the credential in {} expires in {days_left} days; {renew}",
            dir.display()
        )),
        weft_pki::Standing::Expired => Some(format!(
            "weft: the credential in {} has expired and controllers refuse it; {renew}",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    #[test]
    fn an_expiring_credential_gets_one_line_and_a_fresh_one_none() {
        let ca = weft_pki::Authority::create("c").unwrap();
        let admin = ca.issue(weft_pki::Role::Admin, "ops", &[]).unwrap();
        let expires = admin.expires_ms().unwrap();
        let dir = std::path::Path::new("/etc/weft/admin");
        assert_eq!(expiry_warning(dir, &admin, expires - 31 * 86_400_000), None);
        assert_eq!(
            expiry_warning(dir, &admin, expires - 3 * 86_400_000).unwrap(),
            "weft: warning: the credential in /etc/weft/admin expires in 3 days; an admin issues a new one with `weft pki issue --admin NAME`"
        );
        assert!(expiry_warning(dir, &admin, expires + 1).unwrap().contains("has expired"));
    }
}
