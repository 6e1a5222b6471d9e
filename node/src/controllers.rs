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
            match self.bounded(&self.addresses[i], request(channels[i].clone())).await {
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
    /// `attempt` on the member at `address`, given up as Unavailable past the request
    /// timeout and a grace for the member's own DeadlineExceeded answer to arrive first.
    ///
    /// The channel's own timeout starts only once a request is dispatched on a ready
    /// connection. A member that hangs still has the kernel accept TCP connections on its
    /// behalf, so a new connection to it waits for ever in the TLS handshake, where neither
    /// that timeout nor HTTP/2 pings reach; without this bound every call queued on that
    /// channel would wait with it.
    pub async fn bounded<T>(
        &self,
        address: &str,
        attempt: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let limit = self.timeout + ATTEMPT_GRACE;
        tokio::time::timeout(limit, attempt).await.unwrap_or_else(|_| {
            Err(Status::unavailable(format!("controller {address} did not answer within {limit:?}")))
        })
    }

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

/// How much longer than the request timeout an attempt may take before it is abandoned.
const ATTEMPT_GRACE: Duration = Duration::from_secs(1);

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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use weft_api::pb;
    use weft_api::pb::node_service_client::NodeServiceClient;

    use super::*;

    /// A stopped member: the kernel completes TCP handshakes on its listening socket, but
    /// nothing ever reads the TLS ClientHello.
    fn hung_member() -> (std::net::TcpListener, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        (listener, address)
    }

    #[tokio::test]
    async fn a_member_that_never_finishes_the_tls_handshake_is_passed_over() {
        let (_hung, hung) = hung_member();
        let (_also_hung, also_hung) = hung_member();
        let timeout = Duration::from_millis(300);
        let tls = ClientTlsConfig::new().domain_name("weft-controller");
        let controllers =
            Controllers::new(vec![hung.clone(), also_hung.clone()], timeout, Some(tls)).unwrap();
        let started = Instant::now();
        let request = pb::HeartbeatRequest::default();
        let answer = controllers
            .send(&request, |c, r| async move { NodeServiceClient::new(c).heartbeat(r).await })
            .await;
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains(&also_hung) && status.message().contains("did not answer"),
            "{status:?}"
        );
        let bound = 2 * (timeout + ATTEMPT_GRACE) + Duration::from_secs(1);
        assert!(started.elapsed() < bound, "each member given up in time: {:?}", started.elapsed());
    }
}
