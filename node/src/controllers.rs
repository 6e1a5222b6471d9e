//! The agent's way to the controller cluster: it knows every member and moves on to the next
//! when one does not answer. Any member serves any request (followers forward writes), so the
//! agent never needs to know who leads.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

#[derive(Clone, Debug)]
pub struct Controllers {
    addresses: Arc<Vec<String>>,
    channels: Arc<Vec<Channel>>,
    /// The member that answered last; tried first next time.
    preferred: Arc<AtomicUsize>,
}

/// Worth asking another member: this one is down, cut off, or without a quorum.
fn try_another(status: &Status) -> bool {
    // (DeadlineExceeded is an answer: the request's own wait ran out, e.g. a barrier.)
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

impl Controllers {
    /// `addresses` as `host:port`; `timeout` bounds every request; `tls` is mutual TLS with
    /// the host's credentials (none: plaintext, `--insecure`).
    pub fn new(
        addresses: Vec<String>,
        timeout: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> anyhow::Result<Controllers> {
        anyhow::ensure!(!addresses.is_empty(), "no controller addresses given");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let channels = addresses
            .iter()
            .map(|a| {
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{a}"))
                    .map_err(|e| anyhow::anyhow!("controller address {a:?}: {e}"))?;
                if let Some(tls) = &tls {
                    endpoint = endpoint.tls_config(tls.clone()).map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
                }
                Ok(endpoint.connect_timeout(timeout).timeout(timeout).tcp_nodelay(true).connect_lazy())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Controllers {
            addresses: Arc::new(addresses),
            channels: Arc::new(channels),
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The member to try first, and its address.
    pub fn preferred(&self) -> (usize, &str) {
        let i = self.preferred.load(Ordering::Relaxed) % self.channels.len();
        (i, &self.addresses[i])
    }

    pub fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// Makes `i` the member tried first.
    pub fn prefer(&self, i: usize) {
        self.preferred.store(i % self.channels.len(), Ordering::Relaxed);
    }

    /// Calls `request` on the preferred member, then on each other member while the answer
    /// says that member could not serve it. Returns the first real answer, or the last error.
    pub async fn call<T, F, Fut>(&self, request: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let (first, _) = self.preferred();
        let mut last = Status::unavailable("no controller answered");
        for k in 0..self.channels.len() {
            let i = (first + k) % self.channels.len();
            match request(self.channels[i].clone()).await {
                Err(status) if try_another(&status) => {
                    tracing::debug!(controller = %self.addresses[i], %status, "trying the next controller");
                    last = Status::new(
                        status.code(),
                        format!("controller {}: {}", self.addresses[i], status.message()),
                    );
                }
                answer => {
                    self.prefer(i);
                    return answer;
                }
            }
        }
        Err(last)
    }
}
