//! The watch stream's messages as ready-to-send gRPC frames: each snapshot and each batch of
//! changes is encoded once and its bytes shared by every watcher (see [`crate::watch`]).
//!
//! A host's view (decision record 0005) is assembled from shared pieces without re-encoding:
//! concatenated protobuf encodings of one message type decode as that message with the
//! repeated fields of all of them, so a `FullState` is its common part (config, networks,
//! nodes) followed by the endpoint parts of the networks the host sees, and an `EventBatch`
//! is the chosen events' entries one after another.

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

/// Field numbers in `WatchResponse` and `EventBatch` (proto/weft/v1/watch.proto).
const WATCH_RESPONSE_SNAPSHOT: u32 = 1;
const WATCH_RESPONSE_EVENTS: u32 = 2;
const EVENT_BATCH_EVENTS: u32 = 1;

fn put_varint(mut value: u64, buf: &mut Vec<u8>) {
    let low_byte = |value: u64| value.to_le_bytes()[0];
    while value >= 0x80 {
        buf.push(low_byte(value) | 0x80);
        value >>= 7;
    }
    buf.push(low_byte(value));
}

/// The key of a length-delimited field followed by the length.
fn put_length_delimited(field: u32, len: usize, buf: &mut Vec<u8>) {
    put_varint(u64::from(field << 3 | 2), buf);
    put_varint(len as u64, buf);
}

/// The gRPC frame header and the `WatchResponse` field key in front of a message of `len`
/// bytes in that field.
fn response_head(field: u32, len: usize) -> Vec<u8> {
    let mut field_head = Vec::with_capacity(11);
    put_length_delimited(field, len, &mut field_head);
    let total = field_head.len() + len;
    let mut head = Vec::with_capacity(5 + field_head.len());
    head.push(0);
    head.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    head.extend_from_slice(&field_head);
    head
}

/// What comes before the parts of a snapshot whose `FullState` encoding is `body_len` bytes:
/// send it, then the parts, and the watcher has one `WatchResponse`.
pub fn snapshot_head(body_len: usize) -> Bytes {
    Bytes::from(response_head(WATCH_RESPONSE_SNAPSHOT, body_len))
}

/// One event as an entry of `EventBatch.events`, to be put next to others.
pub fn event_entry(event: &pb::Event) -> Bytes {
    let len = event.encoded_len();
    let mut buf = Vec::with_capacity(len + 6);
    put_length_delimited(EVENT_BATCH_EVENTS, len, &mut buf);
    event.encode(&mut buf).unwrap_or_else(|_| unreachable!("a Vec grows as needed"));
    Bytes::from(buf)
}

/// A `WatchResponse` frame with an `EventBatch` of these entries ([`event_entry`]).
pub fn events_frame_of<'a>(entries: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
    let len = entries.clone().map(Bytes::len).sum();
    let mut buf = response_head(WATCH_RESPONSE_EVENTS, len);
    buf.reserve(len);
    for entry in entries {
        buf.extend_from_slice(entry);
    }
    Bytes::from(buf)
}

/// A batch of changes as a `WatchResponse` frame.
pub fn events_frame(events: &[pb::Event]) -> Bytes {
    frame(&pb::WatchResponse {
        kind: Some(pb::watch_response::Kind::Events(pb::EventBatch { events: events.to_vec() })),
    })
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

    fn decode(frame: &[u8]) -> pb::WatchResponse {
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - 5, "the header counts the message");
        pb::WatchResponse::decode(&frame[5..]).unwrap()
    }

    fn endpoint(id: &str, network: &str) -> pb::Endpoint {
        pb::Endpoint { id: id.into(), network_id: network.into(), ..Default::default() }
    }

    #[test]
    fn chosen_events_make_one_batch_in_their_order() {
        let events: Vec<pb::Event> = (1..=300)
            .map(|i| pb::Event {
                revision: i,
                kind: Some(pb::event::Kind::EndpointCreated(endpoint(&format!("e{i}"), "n"))),
            })
            .collect();
        let entries: Vec<Bytes> = events.iter().map(event_entry).collect();
        let chosen = [0usize, 7, 299];
        let frame = events_frame_of(chosen.iter().map(|&i| &entries[i]));
        let expected = pb::EventBatch { events: chosen.iter().map(|&i| events[i].clone()).collect() };
        assert_eq!(decode(&frame).kind, Some(pb::watch_response::Kind::Events(expected)));
        let all = events_frame_of(entries.iter());
        assert_eq!(all, events_frame(&events), "every entry is the shared batch frame, byte for byte");
        let none = events_frame_of([].iter());
        assert_eq!(decode(&none).kind, Some(pb::watch_response::Kind::Events(pb::EventBatch::default())));
    }

    #[test]
    fn a_snapshot_is_its_head_and_its_parts() {
        let common = pb::FullState {
            revision: 41,
            networks: vec![pb::Network { id: "a".into(), ..Default::default() }],
            nodes: vec![pb::Node { name: "h1".into(), ..Default::default() }],
            ..Default::default()
        };
        // Large enough that lengths take several varint bytes.
        let a: Vec<pb::Endpoint> = (0..2000).map(|i| endpoint(&format!("a{i}"), "a")).collect();
        let b = vec![endpoint("b0", "b")];
        let parts = [
            Bytes::from(common.encode_to_vec()),
            Bytes::from(pb::FullState { endpoints: a.clone(), ..Default::default() }.encode_to_vec()),
            Bytes::from(pb::FullState { endpoints: b.clone(), ..Default::default() }.encode_to_vec()),
        ];
        let body: usize = parts.iter().map(Bytes::len).sum();
        let mut frame = snapshot_head(body).to_vec();
        for part in &parts {
            frame.extend_from_slice(part);
        }
        let expected = pb::FullState { endpoints: [a, b].concat(), ..common };
        assert_eq!(decode(&frame).kind, Some(pb::watch_response::Kind::Snapshot(expected)));
    }
}
