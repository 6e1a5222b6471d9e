//! The watch stream (`weft.v1.WatchService/Watch`), served as raw gRPC frames.
//!
//! Every agent follows this stream, and after a controller restart or a network partition
//! they all come back at once asking for the whole registry. tonic's generated server would
//! encode each message into a buffer of its own stream: 1,000 agents and 100,000 endpoints
//! meant 1,000 conversions and encodings of a 10 MB snapshot, each holding the registry lock,
//! and 1,000 copies in memory at once. Here each snapshot and each batch of changes is
//! encoded once ([`crate::registry::Registry::snapshot_parts`], [`crate::registry::Batch::frame`]) and every
//! watcher sends slices of the same bytes; HTTP/2 flow control paces each stream without
//! copying. The wire format is exactly `WatchService.Watch` from `proto/weft/v1/watch.proto`:
//! clients, reflection and grpcurl see no difference.
//!
//! A host's agent is sent its host's view only ([`crate::scope`], decision record 0005),
//! assembled from the same shared pieces.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use weft_api::pb;

use crate::MAX_REQUEST_BYTES;
use crate::cluster::Controller;
use weft_pki::{Caller, Role};

use crate::frames::progress_frame;
use crate::registry::{Batch, Published, Registry, WatchStart};
use crate::scope::{HostView, Selection};

/// The service name gRPC clients use.
pub const SERVICE: &str = "weft.v1.WatchService";
const METHOD_PATH: &str = "/weft.v1.WatchService/Watch";

/// How often an idle watch stream says the revision it has reached is still current.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Frames (or snapshot pieces) queued per stream before the watcher counts as slow.
const STREAM_BUFFER: usize = 64;
/// A snapshot goes to HTTP/2 in pieces of this size, each a slice of the shared encoding.
const PIECE: usize = 64 * 1024;

/// The request message from a unary gRPC request body.
async fn read_request(body: Body) -> Result<pb::WatchRequest, Status> {
    let bytes = Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            Status::out_of_range(format!("watch request unreadable or over {MAX_REQUEST_BYTES} bytes: {e}"))
        })?
        .to_bytes();
    let Some((header, message)) = bytes.split_at_checked(5) else {
        return Err(Status::invalid_argument("watch request: no gRPC message in the body"));
    };
    if header[0] != 0 {
        return Err(Status::unimplemented("watch request: compressed messages are not accepted"));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if message.len() != len {
        return Err(Status::invalid_argument(format!(
            "watch request: the frame says {len} bytes, the body holds {}",
            message.len()
        )));
    }
    pb::WatchRequest::decode(message).map_err(|e| Status::invalid_argument(format!("watch request: {e}")))
}

type Sender = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// Queues `bytes` in pieces; false once the watcher has gone.
async fn send(tx: &Sender, bytes: &Bytes) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + PIECE).min(bytes.len());
        if tx.send(Ok(Frame::data(bytes.slice(at..end)))).await.is_err() {
            return false;
        }
        at = end;
    }
    true
}

/// Ends the stream with `status` in the trailers.
async fn finish(tx: &Sender, status: &Status) {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_ok() {
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    }
}

/// Sends a snapshot at revision `after` or later: everything, or a host's view (whose
/// networks are re-read from the snapshot, at its revision). The revision sent, or `None`
/// once the stream is over (the watcher went away, or the controller is shutting down and
/// has said so).
async fn send_snapshot(
    registry: &Arc<Registry>,
    tx: &Sender,
    after: u64,
    host: &mut Option<HostView>,
) -> Option<u64> {
    let Some(parts) = registry.snapshot_parts(after).await else {
        finish(tx, &shutting_down()).await;
        return None;
    };
    let pieces = match host {
        None => parts.pieces(None::<fn(&str) -> bool>),
        Some(view) => {
            *view = HostView::new(view.node(), parts.placement(view.node()));
            let view = &*view;
            parts.pieces(Some(|network: &str| view.sees(network)))
        }
    };
    for piece in &pieces {
        if !send(tx, piece).await {
            return None;
        }
    }
    Some(parts.revision)
}

fn shutting_down() -> Status {
    Status::unavailable("the controller is shutting down; watch again")
}

/// Feeds one watcher until it goes away: its start (snapshot or replay), then every batch
/// after it, progress when idle, a fresh snapshot when it falls behind. `node`: send only
/// that host's view.
async fn feed(controller: Controller, from: u64, node: Option<String>, tx: Sender) {
    let registry = controller.registry.clone();
    // A member behind what the watcher has seen (just restarted, or lagging the leader) would
    // take it back in time: an agent applying an older snapshot removes entries for
    // containers that exist. Catch up with the cluster first; a member that cannot sends the
    // watcher elsewhere. A watcher still ahead after that saw another history (a cluster
    // rebuilt from scratch) and starts over from a snapshot.
    if from > registry.revision()
        && let Err(status) = controller.linearizable().await
    {
        let behind = format!(
            "this member is at revision {}, behind the {from} you have seen, and cannot catch up: {}; \
             watch another member or retry",
            registry.revision(),
            status
        );
        return finish(&tx, &Status::unavailable(behind)).await;
    }
    let (mut start, mut published, placement) = registry.watch(from, node.as_deref());
    let mut host = node.map(|node| HostView::new(node, placement));
    // A replay that gives the host a network or takes one away would need the network's
    // endpoints from before the replay: start from a snapshot of its view instead.
    if let (Some(view), WatchStart::Replay(batches)) = (&host, &start)
        && batches.iter().any(|batch| view.moves_own(&batch.events))
    {
        let after = batches.last().map_or(from, |batch| batch.revision);
        start = WatchStart::Snapshot { after };
    }
    // The last revision this watcher has been sent; later batches at or below it are already
    // covered (by a snapshot taken after they were published).
    let mut seen = from;
    match start {
        WatchStart::Snapshot { after } => {
            let Some(sent) = send_snapshot(&registry, &tx, after, &mut host).await else { return };
            seen = sent;
        }
        WatchStart::Replay(batches) => {
            for batch in batches {
                seen = batch.revision;
                if !send(&tx, &frame_for(&batch, host.as_ref())).await {
                    return;
                }
            }
        }
    }
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    loop {
        let next = tokio::select! {
            received = published.recv() => match received {
                Ok(Published::Batch(batch)) if batch.revision <= seen => continue,
                Ok(Published::Batch(batch)) => {
                    seen = batch.revision;
                    // The host's first endpoint on a network, or its last: its view changes
                    // shape, sent whole as of this change or later.
                    if host.as_mut().is_some_and(|view| view.follow(&batch.events)) {
                        Next::Snapshot { after: batch.revision }
                    } else {
                        Next::Frame(frame_for(&batch, host.as_ref()))
                    }
                }
                // Fell behind the bounded buffer, or the state was replaced: start over from a
                // fresh snapshot rather than slow the cluster down.
                Ok(Published::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    published = published.resubscribe();
                    Next::Snapshot { after: registry.revision() }
                }
                Err(broadcast::error::RecvError::Closed) => return finish(&tx, &shutting_down()).await,
            },
            _ = progress.tick() => Next::Frame(progress_frame(seen)),
        };
        match next {
            Next::Frame(bytes) => {
                if !send(&tx, &bytes).await {
                    return;
                }
            }
            Next::Snapshot { after } => {
                let Some(sent) = send_snapshot(&registry, &tx, after, &mut host).await else { return };
                seen = sent;
            }
        }
    }
}

/// What a watch stream sends next.
enum Next {
    Frame(Bytes),
    /// A fresh snapshot (of the host's view) at this revision or later.
    Snapshot {
        after: u64,
    },
}

/// A batch as a watcher is sent it: whole, the events of the host's networks only, or (none
/// of them) progress to its revision.
fn frame_for(batch: &Batch, host: Option<&HostView>) -> Bytes {
    match host.map_or(Selection::All, |view| view.select(&batch.events)) {
        Selection::All => batch.frame(),
        Selection::Some(chosen) => batch.frame_of(&chosen),
        Selection::Nothing => batch.progress_frame(),
    }
}

/// Whose view a watch request asks for. A node certificate's holder watches as its own host,
/// named or not, and is refused another's (an agent needs no more, and may not read other
/// hosts' containers); an administrator, or anyone on a plaintext cluster, names a host or
/// takes everything.
fn audience(request: &pb::WatchRequest, caller: Option<&Caller>) -> Result<Option<String>, Status> {
    match caller {
        Some(caller) if caller.role == Role::Node => {
            if !request.node.is_empty() && request.node != caller.name {
                return Err(Status::permission_denied(format!(
                    "{caller} may watch as its own host only, not as \"{}\"",
                    request.node.escape_debug()
                )));
            }
            Ok(Some(caller.name.clone()))
        }
        _ => Ok((!request.node.is_empty()).then(|| request.node.clone())),
    }
}

/// `weft.v1.WatchService` for tonic's router.
#[derive(Debug, Clone)]
pub struct WatchRoute {
    controller: Controller,
}

impl WatchRoute {
    pub fn new(controller: Controller) -> WatchRoute {
        WatchRoute { controller }
    }
}

impl tonic::server::NamedService for WatchRoute {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for WatchRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let controller = self.controller.clone();
        Box::pin(async move {
            if request.uri().path() != METHOD_PATH {
                let unknown = format!("{SERVICE} has one method, Watch; not {}", request.uri().path());
                return Ok(Status::unimplemented(unknown).into_http());
            }
            let caller = request.extensions().get::<Caller>().cloned();
            let watch = match read_request(request.into_body()).await {
                Ok(watch) => watch,
                Err(status) => return Ok(status.into_http()),
            };
            let node = match audience(&watch, caller.as_ref()) {
                Ok(node) => node,
                Err(status) => {
                    tracing::warn!(caller = ?caller.map(|c| c.to_string()), %status, "permission denied");
                    return Ok(status.into_http());
                }
            };
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            tokio::spawn(feed(controller, watch.from_revision, node, tx));
            let mut response = http::Response::new(Body::new(StreamBody::new(ReceiverStream::new(rx))));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_checked_before_any_watching() {
        let framed = |message: &[u8], flag: u8, claimed: u32| {
            let mut body = vec![flag];
            body.extend_from_slice(&claimed.to_be_bytes());
            body.extend_from_slice(message);
            Body::new(http_body_util::Full::new(Bytes::from(body)))
        };
        let good = pb::WatchRequest { from_revision: 42, ..Default::default() }.encode_to_vec();
        let len = u32::try_from(good.len()).unwrap();
        assert_eq!(read_request(framed(&good, 0, len)).await.unwrap().from_revision, 42);
        let compressed = read_request(framed(&good, 1, len)).await.unwrap_err();
        assert_eq!(compressed.code(), tonic::Code::Unimplemented);
        let short = read_request(framed(&good, 0, len + 3)).await.unwrap_err();
        assert!(short.message().contains("frame says"), "{}", short.message());
        let empty = read_request(Body::empty()).await.unwrap_err();
        assert_eq!(empty.code(), tonic::Code::InvalidArgument);
        let garbage = read_request(framed(&[0xff, 0xff], 0, 2)).await.unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
        let huge = vec![0u8; MAX_REQUEST_BYTES + 1];
        let over = read_request(framed(&huge, 0, u32::try_from(huge.len()).unwrap())).await.unwrap_err();
        assert_eq!(over.code(), tonic::Code::OutOfRange);
    }
}
