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
    if let Some(outcome) = plain::answer(packet, asker, table, ttl) {
        return outcome;
    }
    answer_any(packet, asker, table, ttl, udp)
}

/// [`answer`] for every query hickory-proto can parse: the general path.
fn answer_any(packet: &[u8], asker: IpAddr, table: &NameTable, ttl: u32, udp: bool) -> Outcome {
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

/// The query nearly every container sends (one A or AAAA question for a plain name, no
/// EDNS), read and answered straight from the wire: a query's share of the DNS server's CPU
/// time is mostly parsing and building hickory's `Message`s, which this skips. Anything else
/// returns `None` and takes the general path; the answer is byte for byte the general path's,
/// which the tests check.
mod plain {
    use std::net::IpAddr;

    use super::{Outcome, UDP_LIMIT};
    use crate::table::{Lookup, NameTable};

    const HEADER: usize = 12;
    const TYPE_A: u16 = 1;
    const TYPE_AAAA: u16 = 28;
    const CLASS_IN: u16 = 1;
    /// Longest name as text: 255 bytes on the wire (RFC 1035) less the first length byte and
    /// the root label.
    const MAX_NAME: usize = 253;
    /// The answers' owner name: a pointer to the question's name, right after the header.
    const NAME_POINTER: [u8; 2] = [0xc0, 12];

    pub(super) fn answer(packet: &[u8], asker: IpAddr, table: &NameTable, ttl: u32) -> Option<Outcome> {
        let header = packet.get(..HEADER)?;
        let flags = u16::from_be_bytes([header[2], header[3]]);
        // A query (QR 0), opcode QUERY, not truncated; one question, no other records.
        if flags & 0xfa00 != 0 || header[4..] != [0, 1, 0, 0, 0, 0, 0, 0] {
            return None;
        }
        let mut name = [0u8; MAX_NAME];
        let mut name_len = 0;
        let mut at = HEADER;
        loop {
            let label = usize::from(*packet.get(at)?);
            at += 1;
            if label == 0 {
                break;
            }
            // Compression pointers and the extended label types are not for the plain path.
            if label > 63 {
                return None;
            }
            let text = packet.get(at..at + label)?;
            if !text.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') {
                return None;
            }
            let dot = usize::from(name_len > 0);
            if name_len + dot + label > MAX_NAME {
                return None;
            }
            if dot == 1 {
                name[name_len] = b'.';
            }
            for (to, from) in name[name_len + dot..name_len + dot + label].iter_mut().zip(text) {
                *to = from.to_ascii_lowercase();
            }
            name_len += dot + label;
            at += label;
        }
        let question_end = at + 4;
        let fixed = packet.get(at..question_end)?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        if name_len == 0
            || question_end != packet.len()
            || class != CLASS_IN
            || !matches!(kind, TYPE_A | TYPE_AAAA)
        {
            return None;
        }
        let name = std::str::from_utf8(&name[..name_len]).ok()?;
        let (rcode, addresses) = match table.lookup_lowered(asker, name, kind == TYPE_AAAA) {
            Lookup::Upstream => return Some(Outcome::Forward),
            Lookup::NoSuchName => (3, Vec::new()),
            Lookup::Found(addresses) => (0, addresses),
            Lookup::Pointer(_) => return None,
        };
        let record_len = |a: &IpAddr| 12 + if a.is_ipv4() { 4 } else { 16 };
        let len = question_end + addresses.iter().map(record_len).sum::<usize>();
        if len > UDP_LIMIT {
            return None;
        }
        let mut reply = Vec::with_capacity(len);
        reply.extend_from_slice(&header[..2]);
        // QR, AA and the asker's RD; RA and the response code.
        reply.push(0x84 | (header[2] & 0x01));
        reply.push(0x80 | rcode);
        reply.extend_from_slice(&[0, 1]);
        reply.extend_from_slice(&u16::try_from(addresses.len()).ok()?.to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0]);
        reply.extend_from_slice(&packet[HEADER..question_end]);
        // Round robin as on the general path: each query starts the list somewhere else.
        let turn = if addresses.is_empty() {
            0
        } else {
            usize::from(u16::from_be_bytes([header[0], header[1]])) % addresses.len()
        };
        for address in addresses[turn..].iter().chain(&addresses[..turn]) {
            reply.extend_from_slice(&NAME_POINTER);
            let (kind, data): (u16, &[u8]) = match address {
                IpAddr::V4(v4) => (TYPE_A, &v4.octets()),
                IpAddr::V6(v6) => (TYPE_AAAA, &v6.octets()),
            };
            reply.extend_from_slice(&kind.to_be_bytes());
            reply.extend_from_slice(&CLASS_IN.to_be_bytes());
            reply.extend_from_slice(&ttl.to_be_bytes());
            reply.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
            reply.extend_from_slice(data);
        }
        Some(Outcome::Reply(reply))
    }
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
    fn plain_queries_are_answered_byte_for_byte_as_the_general_path_does() {
        let (small, large) = (table(3), table(40));
        let long_label = "l".repeat(63);
        let names = [
            "web.",
            "WeB.",
            "web0.",
            "web1.blue.",
            "WEB2.Blue.",
            "nobody.",
            "nobody.blue.",
            "example.org.",
            "a-b_c.",
            "web0.red.",
            "x.y.z.blue.",
            &format!("{long_label}."),
            &format!("{long_label}.blue."),
        ];
        let askers: [IpAddr; 3] =
            ["10.0.1.2".parse().unwrap(), "10.9.9.9".parse().unwrap(), "fd00::2".parse().unwrap()];
        let mut plain_answers = 0;
        for (t, name, kind, id, asker, rd, udp) in every_combination(&names, &askers) {
            let t = if t { &large } else { &small };
            let mut m = Message::new(id, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = rd;
            m.metadata.checking_disabled = id % 2 == 0;
            m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
            let packet = m.to_vec().unwrap();
            let general = answer_any(&packet, asker, t, 5, udp);
            assert_eq!(answer(&packet, asker, t, 5, udp), general, "{name} {kind} from {asker}");
            plain_answers += usize::from(plain::answer(&packet, asker, t, 5).is_some());
        }
        assert!(plain_answers > 300, "most of these queries take the plain path: {plain_answers}");
    }

    /// Every combination of table (small, large), name, type, query id, asker, RD bit and
    /// transport.
    fn every_combination<'a>(
        names: &'a [&'a str],
        askers: &'a [IpAddr],
    ) -> impl Iterator<Item = (bool, &'a str, RecordType, u16, IpAddr, bool, bool)> + 'a {
        let kinds = [RecordType::A, RecordType::AAAA, RecordType::MX];
        [false, true].into_iter().flat_map(move |large| {
            names.iter().flat_map(move |name| {
                kinds.into_iter().flat_map(move |kind| {
                    (0..3u16).flat_map(move |id| {
                        askers.iter().flat_map(move |asker| {
                            [true, false].into_iter().flat_map(move |rd| {
                                [true, false]
                                    .into_iter()
                                    .map(move |udp| (large, *name, kind, id, *asker, rd, udp))
                            })
                        })
                    })
                })
            })
        })
    }

    #[test]
    fn queries_off_the_plain_path_still_get_the_general_answer() {
        let t = table(3);
        let asker: IpAddr = ASKER.parse().unwrap();
        let base = query(5, "web.", RecordType::A);
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut packet = base.clone();
            edit(&mut packet);
            packet
        };
        for packet in [
            // EDNS: one additional record (an OPT).
            {
                let mut m = Message::from_vec(&base).unwrap();
                m.set_edns(hickory_proto::op::Edns::new());
                m.to_vec().unwrap()
            },
            with(&|p| p.push(0)),                  // a byte after the question
            with(&|p| p.truncate(p.len() - 1)),    // a question cut short
            with(&|p| p[2] |= 0x80),               // a response, not a query
            with(&|p| p[2] |= 0x02),               // truncated
            with(&|p| *p.last_mut().unwrap() = 3), // class CHAOS
            with(&|p| p[13] = b'*'),               // a wildcard label
            // A name of 257 bytes on the wire: too long for DNS, dropped.
            with(&|p| {
                let label = [&[63u8][..], &[b'l'; 63]].concat();
                p.splice(12..p.len() - 4, label.repeat(4).into_iter().chain([0]));
            }),
        ] {
            assert_eq!(plain::answer(&packet, asker, &t, 5), None, "{packet:?}");
            assert_eq!(answer(&packet, asker, &t, 5, true), answer_any(&packet, asker, &t, 5, true));
        }
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
