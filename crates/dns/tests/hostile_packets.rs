//! Whatever arrives on port 53, the answerer returns: random bytes, and real queries with
//! bytes flipped, truncated or extended. The same entry point runs under cargo-fuzz
//! (`fuzz/`); this runs on stable in every test run.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;
use weft_dns::fuzzing;

fn query(name: &str, kind: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    message.to_vec().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn random_packets_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzzing::one(&fuzzing::table(4), &data);
    }

    #[test]
    fn damaged_queries_never_panic(
        selector in any::<u8>(),
        which in 0usize..4,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
        tail in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let names = [("web1.", RecordType::A), ("web.blue.", RecordType::AAAA), ("2.1.0.10.in-addr.arpa.", RecordType::PTR), ("example.com.", RecordType::MX)];
        let mut packet = query(names[which].0, names[which].1);
        for (at, byte) in flips {
            let at = at % packet.len();
            packet[at] ^= byte;
        }
        packet.truncate(cut % (packet.len() + 1));
        packet.extend(tail);
        let mut data = vec![selector];
        data.extend(packet);
        fuzzing::one(&fuzzing::table(4), &data);
    }
}
