//! The UDP server as askers meet it: many sockets with queries in flight at once (the server
//! takes and answers them in batches), over IPv4 and IPv6, names it knows and names it
//! forwards. Loopback only; no root needed.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use weft_dns::server::{Dns, Settings, listen};
use weft_dns::table::{EndpointRecord, NameTable};

const NAMES: u32 = 200;

fn address_of(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a40_0000 + k + 2)
}

/// Containers `r0`…`r199`, and the askers (127.0.0.1 and ::1) as containers of the same network.
fn table() -> NameTable {
    let record = |name: String, ipv4: Option<Ipv4Addr>, ipv6| EndpointRecord {
        network_id: "n1".into(),
        network_name: "names".into(),
        node: "host".into(),
        container_id: name.clone(),
        name,
        aliases: vec![],
        ipv4,
        ipv6,
    };
    let askers = [
        record("asker4".into(), Some(Ipv4Addr::LOCALHOST), None),
        record("asker6".into(), None, Some(std::net::Ipv6Addr::LOCALHOST)),
    ];
    NameTable::build(
        askers.into_iter().chain((0..NAMES).map(|k| record(format!("r{k}"), Some(address_of(k)), None))),
    )
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    message.to_vec().unwrap()
}

async fn server(ip: IpAddr, upstream: Option<SocketAddr>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let dns = Dns::new(Settings {
        ttl: 5,
        upstreams: upstream.into_iter().collect(),
        upstream_timeout: Duration::from_millis(500),
        max_forwards: 64,
    });
    dns.set_table(table());
    let listening = listen(dns, SocketAddr::new(ip, 0)).await.unwrap();
    (listening.address, listening.task)
}

/// Sends one asker's queries ten at a time, each ten before reading their answers, so that the
/// server's socket holds many at once (16 askers: up to 160) without overflowing its receive
/// buffer; returns the answers with their query ids.
fn ask_all(server: SocketAddr, asker: usize, names: &[String]) -> Vec<(u16, Message)> {
    let socket = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buffer = [0u8; 1500];
    let mut answers = Vec::new();
    for (window, chunk) in names.chunks(10).enumerate() {
        for (j, name) in chunk.iter().enumerate() {
            socket.send_to(&query(id_of(asker, window * 10 + j), name), server).unwrap();
        }
        for _ in chunk {
            let (len, from) = socket.recv_from(&mut buffer).expect("an answer for every query");
            assert_eq!(from, server);
            let message = Message::from_vec(&buffer[..len]).unwrap();
            answers.push((message.metadata.id, message));
        }
    }
    answers
}

fn id_of(asker: usize, i: usize) -> u16 {
    u16::try_from(asker * 1000 + i).unwrap()
}

fn the_address(message: &Message) -> Ipv4Addr {
    assert_eq!(message.metadata.response_code, ResponseCode::NoError, "{message:?}");
    match message.answers.as_slice() {
        [answer] => match answer.data {
            RData::A(a) => a.0,
            ref other => panic!("not an A record: {other:?}"),
        },
        other => panic!("one answer expected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_askers_at_once_each_get_their_own_answers_over_ipv4_and_ipv6() {
    for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)] {
        let (address, task) = server(ip, None).await;
        let askers: Vec<_> = (0..16)
            .map(|asker| {
                std::thread::spawn(move || {
                    let names: Vec<String> = (0..NAMES)
                        .map(|k| format!("r{}", (k as usize + asker * 7) % NAMES as usize))
                        .collect();
                    let answers = ask_all(address, asker, &names);
                    (asker, names, answers)
                })
            })
            .collect();
        for handle in askers {
            let (asker, names, answers) = handle.join().unwrap();
            assert_eq!(answers.len(), names.len());
            let mut seen = std::collections::HashSet::new();
            for (id, message) in answers {
                assert!(seen.insert(id), "asker {asker} got the answer to query {id} twice");
                let i = usize::from(id) - asker * 1000;
                let k: u32 = names[i][1..].parse().unwrap();
                assert_eq!(
                    the_address(&message),
                    address_of(k),
                    "asker {asker} query {i} ({}) over {ip}",
                    names[i]
                );
            }
        }
        task.abort();
    }
}

/// A stub upstream on loopback answering every name with 192.0.2.1.
fn stub_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buffer) {
            let request = Message::from_vec(&buffer[..len]).unwrap();
            let mut response = Message::response(request.metadata.id, request.metadata.op_code);
            let question = request.queries[0].clone();
            response.add_answer(hickory_proto::rr::Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 1))),
            ));
            response.add_query(question);
            let _ = socket.send_to(&response.to_vec().unwrap(), from);
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_and_local_names_mixed_in_one_batch_all_come_back() {
    let (address, task) = server(IpAddr::V4(Ipv4Addr::LOCALHOST), Some(stub_upstream())).await;
    let names: Vec<String> =
        (0..100).map(|k| if k % 3 == 0 { format!("host{k}.example.") } else { format!("r{k}") }).collect();
    let answers = tokio::task::spawn_blocking(move || {
        let answers = ask_all(address, 0, &names);
        (names, answers)
    })
    .await
    .unwrap();
    let (names, answers) = answers;
    assert_eq!(answers.len(), names.len());
    for (id, message) in answers {
        let name = &names[usize::from(id)];
        let expected = match name.strip_prefix('r') {
            Some(k) => address_of(k.parse().unwrap()),
            None => Ipv4Addr::new(192, 0, 2, 1),
        };
        assert_eq!(the_address(&message), expected, "{name}");
    }
    task.abort();
}
