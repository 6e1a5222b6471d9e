//! One DNS query in, one decision out: a finished reply, "ask upstream", or drop. Pure: the
//! server feeds it bytes and the asker's address.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::table::{Lookup, NameTable};

/// Largest UDP answer without EDNS (RFC 1035); longer answers are truncated so the client
/// retries over TCP.
pub const UDP_LIMIT: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Vec<u8>),
    /// Not a name weft answers: forward the query unchanged.
    Forward,
    /// Not a DNS query at all: no answer.
    Drop,
}

/// Answers `packet` from `asker` out of `table`. `udp` limits the answer to [`UDP_LIMIT`]
/// bytes (setting TC when it would not fit).
pub fn answer(packet: &[u8], asker: IpAddr, table: &NameTable, ttl: u32, udp: bool) -> Outcome {
    let Ok(request) = Message::from_vec(packet) else { return Outcome::Drop };
    if request.metadata.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    if request.metadata.op_code != OpCode::Query {
        return reply(response, ResponseCode::NotImp, udp);
    }
    let [query] = request.queries.as_slice() else { return reply(response, ResponseCode::FormErr, udp) };
    response.add_query(query.clone());
    let name = query.name().to_ascii();
    let lookup = match query.query_type() {
        RecordType::A => table.lookup(asker, &name, false),
        RecordType::AAAA => table.lookup(asker, &name, true),
        RecordType::PTR => table.reverse(asker, &name),
        // Other types of a container name exist but are empty (NODATA).
        _ => match table.lookup(asker, &name, false) {
            Lookup::Found(_) => Lookup::Found(Vec::new()),
            other => other,
        },
    };
    response.metadata.authoritative = !matches!(lookup, Lookup::Upstream);
    match lookup {
        Lookup::Upstream => Outcome::Forward,
        Lookup::NoSuchName => reply(response, ResponseCode::NXDomain, udp),
        Lookup::Found(mut addresses) => {
            // Round robin: start the list somewhere different for each query.
            if !addresses.is_empty() {
                let turn = usize::from(request.metadata.id) % addresses.len();
                addresses.rotate_left(turn);
            }
            for address in addresses {
                let rdata = match address {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                response.add_answer(Record::from_rdata(query.name().clone(), ttl, rdata));
            }
            reply(response, ResponseCode::NoError, udp)
        }
        Lookup::Pointer(target) => match Name::from_ascii(format!("{target}.")) {
            Ok(target) => {
                response.add_answer(Record::from_rdata(query.name().clone(), ttl, RData::PTR(PTR(target))));
                reply(response, ResponseCode::NoError, udp)
            }
            Err(_) => reply(response, ResponseCode::ServFail, udp),
        },
    }
}

/// A REFUSED answer to `packet` (when forwarding is saturated), or nothing for garbage.
pub fn refused(packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let mut response =
        Message::error_msg(request.metadata.id, request.metadata.op_code, ResponseCode::Refused);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_queries(request.queries);
    response.to_vec().ok()
}

/// A SERVFAIL answer to `packet` (when every upstream failed), or nothing for garbage.
pub fn server_failure(packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let mut response =
        Message::error_msg(request.metadata.id, request.metadata.op_code, ResponseCode::ServFail);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries);
    response.to_vec().ok()
}

fn reply(mut response: Message, code: ResponseCode, udp: bool) -> Outcome {
    response.metadata.response_code = code;
    let Ok(bytes) = response.to_vec() else { return Outcome::Drop };
    if udp && bytes.len() > UDP_LIMIT {
        return match response.truncate().to_vec() {
            Ok(truncated) => Outcome::Reply(truncated),
            Err(_) => Outcome::Drop,
        };
    }
    Outcome::Reply(bytes)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;

    use super::*;

    use crate::fuzzing::table;

    fn query(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn reply_of(outcome: Outcome) -> Message {
        match outcome {
            Outcome::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    const ASKER: &str = "10.0.1.2";

    #[test]
    fn a_known_name_is_answered_with_round_robin_order() {
        let t = table(3);
        let asker = ASKER.parse().unwrap();
        let first = |id| {
            let m = reply_of(answer(&query(id, "web.", RecordType::A), asker, &t, 5, true));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative);
            assert_eq!(m.answers.len(), 3);
            assert_eq!(m.answers[0].ttl, 5);
            m.answers[0].data.clone()
        };
        assert_ne!(first(0), first(1), "the first address changes from query to query");
    }

    #[test]
    fn unknown_weft_names_are_nxdomain_and_others_go_upstream() {
        let t = table(1);
        let asker = ASKER.parse().unwrap();
        let m = reply_of(answer(&query(7, "nobody.", RecordType::A), asker, &t, 5, true));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.metadata.id, 7);
        assert_eq!(answer(&query(7, "example.org.", RecordType::A), asker, &t, 5, true), Outcome::Forward);
        let mx = reply_of(answer(&query(8, "web0.", RecordType::MX), asker, &t, 5, true));
        assert_eq!((mx.metadata.response_code, mx.answers.len()), (ResponseCode::NoError, 0));
    }

    #[test]
    fn answers_too_big_for_udp_are_truncated_and_whole_over_tcp() {
        let t = table(40);
        let asker = ASKER.parse().unwrap();
        let udp = reply_of(answer(&query(1, "web.", RecordType::A), asker, &t, 5, true));
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let tcp = reply_of(answer(&query(1, "web.", RecordType::A), asker, &t, 5, false));
        assert_eq!(tcp.answers.len(), 40);
    }

    #[test]
    fn garbage_is_dropped_and_odd_requests_get_an_error() {
        let t = table(1);
        let asker = ASKER.parse().unwrap();
        assert_eq!(answer(b"\x00\x01garbage", asker, &t, 5, true), Outcome::Drop);
        assert_eq!(answer(&[], asker, &t, 5, true), Outcome::Drop);
        let mut two = Message::new(3, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(Name::from_ascii("a.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
        let m = reply_of(answer(&two.to_vec().unwrap(), asker, &t, 5, true));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let refused = Message::from_vec(&refused(&query(9, "x.org.", RecordType::A)).unwrap()).unwrap();
        assert_eq!((refused.metadata.id, refused.metadata.response_code), (9, ResponseCode::Refused));
    }
}
