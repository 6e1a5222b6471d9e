//! The agent's way to the controller cluster: it knows every member and moves on to the next
//! when one does not answer. Any member serves any request (followers forward writes), so the
//! agent never needs to know who leads.

use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

#[derive(Clone, Debug)]
pub struct Controllers {
    addresses: Arc<Vec<String>>,
    /// Replaced whole when the host's credential is renewed; calls in flight keep theirs.
    channels: Arc<std::sync::RwLock<Arc<Vec<Channel>>>>,
    timeout: Duration,
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
        let channels = connect(&addresses, timeout, tls)?;
        Ok(Controllers {
            addresses: Arc::new(addresses),
            channels: Arc::new(std::sync::RwLock::new(Arc::new(channels))),
            timeout,
            preferred: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// New connections present `tls` from now on (a renewed credential).
    pub fn reconnect_with(&self, tls: ClientTlsConfig) -> anyhow::Result<()> {
        let channels = connect(&self.addresses, self.timeout, Some(tls))?;
        *self.channels.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(channels);
        Ok(())
    }

    fn channels(&self) -> Arc<Vec<Channel>> {
        self.channels.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The addresses of the members, as given.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The member to try first, and its address.
    pub fn preferred(&self) -> (usize, &str) {
        let i = self.preferred.load(Ordering::Relaxed) % self.addresses.len();
        (i, &self.addresses[i])
    }

    pub fn channel(&self, i: usize) -> Channel {
        let channels = self.channels();
        channels[i % channels.len()].clone()
    }

    /// Makes `i` the member tried first.
    pub fn prefer(&self, i: usize) {
        self.preferred.store(i % self.addresses.len(), Ordering::Relaxed);
    }

    /// Calls `request` on the preferred member, then on each other member while the answer
    /// says that member could not serve it. Returns the first real answer, or the last error.
    pub async fn call<T, F, Fut>(&self, request: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let (first, _) = self.preferred();
        let channels = self.channels();
        let mut last = Status::unavailable("no controller answered");
        for k in 0..channels.len() {
            let i = (first + k) % channels.len();
            match request(channels[i].clone()).await {
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

impl Controllers {
    /// [`Controllers::call`] for the common shape: one request message, cloned for each
    /// member tried.
    pub async fn send<R, T, F, Fut>(&self, request: &R, call: F) -> Result<T, Status>
    where
        R: Clone,
        F: Fn(Channel, R) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|channel| call(channel, request.clone())).await.map(tonic::Response::into_inner)
    }
}

/// How long a connection to a controller may go without a sign of it before a ping, and how
/// long the ping may go unanswered before the connection is given up.
const CONTROLLER_SILENCE: Duration = Duration::from_secs(5);

/// Lazily connected channels to each member.
fn connect(
    addresses: &[String],
    timeout: Duration,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<Vec<Channel>> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    addresses
        .iter()
        .map(|a| {
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{a}"))
                .with_context(|| format!("controller address {a:?}"))?;
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone()).context("TLS")?;
            }
            // A controller that hangs or loses power closes nothing: without pings the watch
            // on it would wait for ever (or for TCP's retransmissions, a quarter of an hour)
            // instead of moving to another member.
            Ok(endpoint
                .connect_timeout(timeout)
                .timeout(timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(CONTROLLER_SILENCE)
                .keep_alive_timeout(CONTROLLER_SILENCE)
                .keep_alive_while_idle(true)
                .connect_lazy())
        })
        .collect()
}
