//! weft's DNS socket loops against `hickory-server`'s `Server`, answering the same 1,000
//! names from the same [`NameTable`], measured by dnsperf in the same run (the evidence behind
//! docs/decisions/0001). Loopback only; no root needed.
//!
//!     cargo bench -p weft-dns --bench servers
//!
//! Settings: `WEFT_BENCH_DNS_SECONDS` (full-speed run per round, default 10),
//! `WEFT_BENCH_DNS_ROUNDS` (alternating rounds per server, default 3; the median is kept).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;

use hickory_proto::op::{Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use weft_bench::{Figure, record, setting};
use weft_dns::table::{EndpointRecord, Lookup, NameTable};

const TTL: u32 = 5;
const NAMES: u32 = 1000;

/// dnsperf asks from 127.0.0.1: that address is a container on network `names`, beside
/// 1,000 others.
fn table() -> NameTable {
    let record = |container: String, ipv4: Ipv4Addr| EndpointRecord {
        network_id: "n1".into(),
        network_name: "names".into(),
        node: "host".into(),
        name: container.clone(),
        container_id: container,
        aliases: vec![],
        ipv4: Some(ipv4),
        ipv6: None,
    };
    let others = (0..NAMES).map(|k| record(format!("r{k}"), Ipv4Addr::from(0x0a40_0000 + k + 2)));
    NameTable::build(std::iter::once(record("asker".into(), Ipv4Addr::LOCALHOST)).chain(others))
}

/// The same answers as weft's `answer()`, in hickory-server's handler model: the server
/// parses, the handler looks up and builds, the server encodes and sends.
struct TableHandler {
    table: Arc<NameTable>,
}

#[async_trait::async_trait]
impl RequestHandler for TableHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            let refusal = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response_handle.send_response(refusal).await.unwrap();
        };
        let name = info.query.name().to_string();
        let asker = request.src().ip();
        let lookup = match info.query.query_type() {
            RecordType::A => self.table.lookup(asker, &name, false),
            RecordType::AAAA => self.table.lookup(asker, &name, true),
            _ => Lookup::Found(Vec::new()),
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = true;
        let code = match &lookup {
            Lookup::Found(_) => ResponseCode::NoError,
            Lookup::NoSuchName => ResponseCode::NXDomain,
            // No upstream in this benchmark.
            Lookup::Pointer(_) | Lookup::Upstream => ResponseCode::ServFail,
        };
        metadata.response_code = code;
        let owner: hickory_proto::rr::Name = info.query.name().into();
        let answers: Vec<Record> = match lookup {
            Lookup::Found(addresses) => addresses
                .into_iter()
                .map(|address| {
                    let rdata = match address {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    };
                    Record::from_rdata(owner.clone(), TTL, rdata)
                })
                .collect(),
            _ => Vec::new(),
        };
        let response = builder.build(metadata, answers.iter(), [], [], []);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => panic!("hickory-server could not send an answer: {e}"),
        }
    }
}

struct Round {
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
    answers: usize,
}

/// dnsperf at full speed for queries/s, then at a fixed rate for every answer's latency.
fn dnsperf(server: SocketAddr, queries: &str, seconds: u32, dir: &std::path::Path) -> Round {
    let port = server.port().to_string();
    let full = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port, "-d", queries, "-l", &seconds.to_string()])
        .args(["-c", "8", "-T", "1", "-q", "200"])
        .output()
        .expect("dnsperf runs");
    let full = String::from_utf8_lossy(&full.stdout);
    let qps = full
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    // Into a file, not a pipe: dnsperf stalls whenever a pipe fills.
    let answers = dir.join(format!("answers-{port}.txt"));
    let command = format!(
        "dnsperf -s 127.0.0.1 -p {port} -d {queries} -l 5 -Q 20000 -c 8 -T 1 -v > {}",
        answers.display()
    );
    Command::new("sh").args(["-c", &command]).status().expect("dnsperf runs");
    let text = std::fs::read_to_string(&answers).unwrap();
    let mut latencies: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> NOERROR"))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |p: usize| latencies.get((latencies.len().saturating_sub(1) * p + 500) / 1000).copied();
    Round {
        qps,
        p50_ms: at(500).unwrap_or(0.0) * 1000.0,
        p99_ms: at(990).unwrap_or(0.0) * 1000.0,
        answers: latencies.len(),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    if Command::new("sh").args(["-c", "command -v dnsperf"]).output().map_or(true, |o| o.stdout.is_empty()) {
        println!("(dnsperf not installed: skipped; apt-get install dnsperf)");
        return;
    }
    let seconds: u32 = setting("WEFT_BENCH_DNS_SECONDS", 10);
    let rounds: usize = setting("WEFT_BENCH_DNS_ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, (0..NAMES).map(|k| format!("r{k} A\n")).collect::<String>()).unwrap();
    let queries = queries.to_str().unwrap().to_string();

    let shared_table = Arc::new(table());
    let dns = weft_dns::server::Dns::new(weft_dns::server::Settings {
        ttl: TTL,
        upstreams: vec![],
        upstream_timeout: std::time::Duration::from_secs(1),
        max_forwards: 64,
    });
    dns.set_table(table());
    let weft = weft_dns::server::listen(dns, ([127, 0, 0, 1], 0).into()).await.unwrap();
    let weft_address = weft.address;

    let mut hickory = hickory_server::Server::new(TableHandler { table: shared_table });
    let hickory_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hickory_address = hickory_socket.local_addr().unwrap();
    hickory.register_socket(hickory_socket);

    let mut weft_rounds = Vec::new();
    let mut hickory_rounds = Vec::new();
    for _ in 0..rounds {
        for (server, results) in [(weft_address, &mut weft_rounds), (hickory_address, &mut hickory_rounds)] {
            let queries = queries.clone();
            let dir = dir.path().to_path_buf();
            let round =
                tokio::task::spawn_blocking(move || dnsperf(server, &queries, seconds, &dir)).await.unwrap();
            assert!(round.answers > 0, "no answers from {server}: the server does not answer");
            results.push(round);
        }
    }
    println!(
        "| DNS server, 1,000 names, dnsperf over loopback, median of {rounds} rounds | queries/s | p50 at 20,000 q/s | p99 at 20,000 q/s |"
    );
    println!("|---|---|---|---|");
    let mut summary = Vec::new();
    for (who, id, results) in [
        ("weft (blocking loops)", "weft", &weft_rounds),
        ("hickory-server `Server`", "hickory", &hickory_rounds),
    ] {
        let qps = median(results.iter().map(|r| r.qps).collect());
        let p50 = median(results.iter().map(|r| r.p50_ms).collect());
        let p99 = median(results.iter().map(|r| r.p99_ms).collect());
        println!("| {who} | {qps:.0} | {p50:.3} ms | {p99:.3} ms |");
        record(Figure::new(&format!("dnsserver.{id}.qps"), &format!("DNS queries/s, {who}"), qps, "q/s"));
        record(Figure::new(
            &format!("dnsserver.{id}.p99"),
            &format!("DNS p99 at 20,000 q/s, {who}"),
            p99,
            "ms",
        ));
        summary.push(qps);
    }
    println!("\nweft answers {:.2}× hickory-server's queries/s in the same run.", summary[0] / summary[1]);
    hickory.shutdown_gracefully().await.unwrap();
}
