//! The watch stream's messages as ready-to-send gRPC frames: each snapshot and each batch of
//! changes is encoded once and its bytes shared by every watcher (see [`crate::watch`]).

use bytes::Bytes;
use prost::Message;
use weft_api::pb;

/// `message` as one gRPC frame: uncompressed flag, big-endian length, the encoding.
pub fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    // Messages beyond 4 GiB cannot be framed; a registry that large is far outside what a
    // controller holds (100,000 endpoints encode to about 10 MB).
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message.encode(&mut buf).unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
    Bytes::from(buf)
}

/// A batch of changes as a `WatchResponse` frame.
pub fn events_frame(events: &[pb::Event]) -> Bytes {
    frame(&pb::WatchResponse {
        kind: Some(pb::watch_response::Kind::Events(pb::EventBatch { events: events.to_vec() })),
    })
}

/// The whole registry as a `WatchResponse` frame.
pub fn snapshot_frame(full: pb::FullState) -> Bytes {
    frame(&pb::WatchResponse { kind: Some(pb::watch_response::Kind::Snapshot(full)) })
}

/// "Nothing new up to `revision`" as a `WatchResponse` frame.
pub fn progress_frame(revision: u64) -> Bytes {
    frame(&pb::WatchResponse { kind: Some(pb::watch_response::Kind::Progress(pb::Progress { revision })) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_what_a_grpc_client_decodes() {
        let event = pb::Event { revision: 7, ..Default::default() };
        let bytes = events_frame(std::slice::from_ref(&event));
        assert_eq!(bytes[0], 0, "uncompressed");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 5);
        let decoded = pb::WatchResponse::decode(&bytes[5..]).unwrap();
        assert_eq!(
            decoded.kind,
            Some(pb::watch_response::Kind::Events(pb::EventBatch { events: vec![event] }))
        );
        let progress = pb::WatchResponse::decode(&progress_frame(9)[5..]).unwrap();
        assert_eq!(progress.kind, Some(pb::watch_response::Kind::Progress(pb::Progress { revision: 9 })));
    }
}
