//! Prometheus metrics: Raft role and progress, commit latency, and gRPC requests by method and
//! status code, served as text on `/metrics` of a separate listener.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::http;

/// Upper bounds (seconds) of the commit-latency histogram buckets.
const COMMIT_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

/// Counters and histograms shared by the request layer, the proposer and the exporter.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, gRPC code) -> count.
    requests: Mutex<BTreeMap<(String, String), u64>>,
    commit_buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    commit_count: AtomicU64,
    commit_micros_sum: AtomicU64,
}

/// A point-in-time view of the member for the gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub is_leader: bool,
    pub term: u64,
    pub revision: u64,
    pub last_applied_index: u64,
    pub members: u64,
    pub snapshot_bytes: u64,
    pub credential_expires_ms: Option<u64>,
}

impl Metrics {
    pub fn count_request(&self, method: &str, code: &str) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((method.to_string(), code.to_string())).or_default() += 1;
    }

    /// Records how long a write took from proposal to applied result.
    pub fn observe_commit(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bucket, bound) in self.commit_buckets.iter().zip(COMMIT_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.commit_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.commit_micros_sum.fetch_add(micros, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge(
            &mut out,
            "weft_controller_is_leader",
            "1 when this member is the Raft leader.",
            u64::from(gauges.is_leader),
        );
        gauge(&mut out, "weft_controller_term", "Current Raft term.", gauges.term);
        gauge(
            &mut out,
            "weft_controller_revision",
            "Registry revision applied on this member.",
            gauges.revision,
        );
        gauge(
            &mut out,
            "weft_controller_applied_index",
            "Last Raft log index applied.",
            gauges.last_applied_index,
        );
        gauge(&mut out, "weft_controller_members", "Members in the Raft configuration.", gauges.members);
        gauge(
            &mut out,
            "weft_controller_snapshot_bytes",
            "Size of the latest registry snapshot this member keeps (0 before the first).",
            gauges.snapshot_bytes,
        );
        if let Some(expires_ms) = gauges.credential_expires_ms {
            gauge(
                &mut out,
                "weft_controller_credential_expiry_timestamp_seconds",
                "When this member's TLS certificate expires, seconds since the epoch (renewed by hand).",
                expires_ms / 1000,
            );
        }

        let _ = writeln!(
            out,
            "# HELP weft_controller_commit_seconds Time from proposing a write to its applied result."
        );
        let _ = writeln!(out, "# TYPE weft_controller_commit_seconds histogram");
        for (bucket, bound) in self.commit_buckets.iter().zip(COMMIT_BUCKETS) {
            let _ = writeln!(
                out,
                "weft_controller_commit_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.commit_count.load(Ordering::Relaxed);
        let sum = Duration::from_micros(self.commit_micros_sum.load(Ordering::Relaxed)).as_secs_f64();
        let _ = writeln!(out, "weft_controller_commit_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "weft_controller_commit_seconds_sum {sum}");
        let _ = writeln!(out, "weft_controller_commit_seconds_count {count}");

        let _ = writeln!(
            out,
            "# HELP weft_controller_requests_total gRPC requests served, by method and status code."
        );
        let _ = writeln!(out, "# TYPE weft_controller_requests_total counter");
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((method, code), n) in requests.iter() {
            let _ =
                writeln!(out, "weft_controller_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}");
        }
        out
    }
}

/// The gRPC status code name for a numeric `grpc-status`.
/// When the client stops waiting for a request, from its `grpc-timeout` header: the request
/// is not proposed once this has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientDeadline(pub Instant);

/// The deadline a `grpc-timeout` header sets for a request that arrived at `arrived`: up to
/// eight digits and a unit (H, M, S, m, u, n), per the gRPC HTTP/2 protocol.
pub fn client_deadline(headers: &http::HeaderMap, arrived: Instant) -> Option<ClientDeadline> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    };
    arrived.checked_add(timeout).map(ClientDeadline)
}

fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from_i32) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Cancelled",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        _ => "Unknown",
    }
}

/// A tower layer counting public gRPC requests by method and status code. Errors come back
/// "trailers-only", with `grpc-status` in the response headers; a response without it succeeded
/// (its status travels in the trailers).
#[derive(Debug, Clone)]
pub struct CountRequests {
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Stamped on arrival, so time spent before the handler runs counts against it too.
        if let Some(deadline) = client_deadline(request.headers(), Instant::now()) {
            request.extensions_mut().insert(deadline);
        }
        let path = request.uri().path().to_string();
        // Raft traffic between members is not a client request.
        let counted = path.starts_with("/weft.v1.");
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if counted {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or("OK", code_name);
                let method = path.rsplit('/').next().unwrap_or_default();
                metrics.count_request(method, code);
            }
            Ok(response)
        })
    }
}

/// Times an operation for [`Metrics::observe_commit`].
#[derive(Debug)]
pub struct Timer(Instant);

impl Timer {
    pub fn start() -> Timer {
        Timer(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.count_request("CreateNetwork", "OK");
        m.count_request("CreateNetwork", "OK");
        m.count_request("CreateNetwork", "AlreadyExists");
        m.observe_commit(Duration::from_micros(1500));
        let text = m.render(Gauges {
            is_leader: true,
            term: 3,
            revision: 42,
            last_applied_index: 50,
            members: 3,
            snapshot_bytes: 9000,
            credential_expires_ms: None,
        });
        assert!(text.contains("weft_controller_is_leader 1\n"), "{text}");
        assert!(text.contains("weft_controller_snapshot_bytes 9000\n"));
        assert!(text.contains("weft_controller_revision 42\n"));
        assert!(text.contains("weft_controller_requests_total{method=\"CreateNetwork\",code=\"OK\"} 2\n"));
        assert!(
            text.contains(
                "weft_controller_requests_total{method=\"CreateNetwork\",code=\"AlreadyExists\"} 1\n"
            )
        );
        assert!(text.contains("weft_controller_commit_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("weft_controller_commit_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("weft_controller_commit_seconds_count 1\n"));
        assert!(!text.contains("credential"), "no credential without TLS");
        let with_tls =
            m.render(Gauges { credential_expires_ms: Some(1_800_000_000_500), ..Gauges::default() });
        assert!(with_tls.contains("weft_controller_credential_expiry_timestamp_seconds 1800000000\n"));
        assert_eq!(code_name("6"), "AlreadyExists");
        assert_eq!(code_name("14"), "Unavailable");
    }
}
