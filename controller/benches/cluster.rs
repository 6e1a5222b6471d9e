//! Control-plane benchmark: endpoint creates per second and their latency through a
//! 3-member cluster of real `weft-controller` processes on loopback, with durable commits.
//!
//! `cargo bench -p weft-controller --bench cluster` (release build). Prints a Markdown table
//! for BENCHMARKS.md. `WEFT_BENCH_SECONDS` sets the time per round (default 5),
//! `WEFT_BENCH_ROUNDS` the rounds per concurrency level (default 3), `WEFT_BENCH_CLIENTS` the
//! concurrency levels (default `1,16,256`); `WEFT_BENCH_TLS=1` runs weft over mutual TLS (as
//! deployed) instead of `--insecure`.
//!
//! Clients spread over all three members, as agents do; a member that is not the leader
//! forwards to it. Each client takes the members in turn, call by call, so that one client's
//! figures do not depend on whether the member it happened to reach leads (weft's first
//! member usually does, etcd's leader is drawn at random); the table shows the p50 through the
//! leader and through a follower apart. The client load runs on the same machine as the three controllers.
//!
//! Beside weft, in the same rounds: a 3-member etcd (Debian's etcd-server, its defaults, one
//! fsync per commit like weft) on loopback, driven the same way — the same clients, one unary
//! gRPC `KV.Put` of a new key with a 160-byte value per call, spread over the members — so
//! that consensus writes are compared with what users would run instead.

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Members, channel, etcd, tls_enabled, wait_ready};
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_bench::{Better, Comparison, Figure, Spread, percentile, record, record_comparison, setting};

fn ms(d: Duration) -> String {
    format!("{:.2} ms", common::ms(d))
}

/// Every call of one load: which member it went through and how long it took.
struct Calls {
    rate: f64,
    /// Every call's latency, sorted.
    all: Vec<Duration>,
    /// Each member's calls' latencies, sorted, by the member's index.
    by_member: Vec<Vec<Duration>>,
}

/// `clients` concurrent clients, each with its own connection to every member from
/// `connect(client, member)`, calling `call(connection, client, k)` one call after another for
/// `seconds`. A client's calls take the members in turn, so at any concurrency (one client
/// included) a third of the calls reach the leader and two thirds are forwarded, whichever
/// member leads.
async fn load<C, F, Fut>(
    members: usize,
    clients: usize,
    seconds: f64,
    connect: impl Fn(usize, usize) -> C,
    call: F,
) -> Calls
where
    C: Clone + Send + 'static,
    F: Fn(C, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let connections: Vec<C> = (0..members).map(|m| connect(c, m)).collect();
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut k = 0usize;
                while Instant::now() < stop {
                    let member = (c + k) % members;
                    let began = Instant::now();
                    call(connections[member].clone(), c, k).await;
                    latencies.push((member, began.elapsed()));
                    k += 1;
                }
                latencies
            })
        })
        .collect();
    let mut by_member = vec![Vec::new(); members];
    for task in tasks {
        for (member, latency) in task.await.expect("client task") {
            by_member[member].push(latency);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut all: Vec<Duration> = by_member.iter().flatten().copied().collect();
    all.sort();
    by_member.iter_mut().for_each(|l| l.sort());
    Calls { rate: all.len() as f64 / elapsed, all, by_member }
}

/// weft: endpoint creates through the members (one allocation and one registry write each).
async fn creates(addrs: &[String], clients: usize, seconds: f64, round: usize) -> Calls {
    let connect = |_, member: usize| EndpointServiceClient::new(channel(&addrs[member]));
    load(addrs.len(), clients, seconds, connect, move |mut client, c, k| async move {
        let container = format!("b{round}-{c}-{k}");
        let request = pb::CreateEndpointRequest {
            network: "bench".into(),
            node: "h1".into(),
            container_id: container.clone(),
            container_name: container,
            ..Default::default()
        };
        client.create_endpoint(request).await.expect("create endpoint");
    })
    .await
}

/// etcd: puts of a new key with a value the size of an endpoint record, through the members.
async fn puts(addrs: &[String], clients: usize, seconds: f64, round: usize) -> Calls {
    let connect = |_, member: usize| common::channel_plain(&addrs[member]);
    load(addrs.len(), clients, seconds, connect, move |channel, c, k| async move {
        let request = etcd::PutRequest {
            key: format!("/weft/endpoints/b{round}-{c}-{k}").into_bytes(),
            value: vec![b'x'; 160],
        };
        etcd::put(channel, request).await.expect("etcd put");
    })
    .await
}

/// Each round's rate, p50 and p99 of one side at one concurrency, and the p50 of the calls
/// through the leader and through the followers.
#[derive(Default)]
struct Rounds {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    leader_p50: Vec<f64>,
    follower_p50: Vec<f64>,
}

impl Rounds {
    fn add(&mut self, calls: Calls, leader: Option<usize>) {
        self.rate.push(calls.rate);
        self.p50.push(common::ms(percentile(&calls.all, 500)));
        self.p99.push(common::ms(percentile(&calls.all, 990)));
        if let Some(leader) = leader {
            self.leader_p50.push(common::ms(percentile(&calls.by_member[leader], 500)));
            let mut followers: Vec<Duration> = (calls.by_member.iter().enumerate())
                .filter(|(m, _)| *m != leader)
                .flat_map(|(_, l)| l.iter().copied())
                .collect();
            followers.sort();
            self.follower_p50.push(common::ms(percentile(&followers, 500)));
        }
    }
}

/// Which member leads the weft cluster now, by index into `addrs`.
async fn weft_leader(addrs: &[String]) -> Option<usize> {
    let status = ClusterServiceClient::new(channel(&addrs[0])).status(pb::StatusRequest {}).await.ok()?;
    let id = status.into_inner().leader_id;
    (0..addrs.len()).find(|i| *i as u64 + 1 == id)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; a filter argument selects nothing here.
    let seconds: f64 = setting("WEFT_BENCH_SECONDS", 5.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let threads = common::worker_threads().to_string();
    let members = Members::start(dir.path(), &["--worker-threads", &threads]);
    for addr in &members.addrs {
        wait_ready(addr, 0, Duration::from_secs(30)).await;
    }
    let addrs = members.addrs.clone();
    NodeServiceClient::new(channel(&addrs[0]))
        .register_node(pb::RegisterNodeRequest {
            name: "h1".into(),
            underlay_address: "192.0.2.1".into(),
            underlay_mtu: 1500,
            ..Default::default()
        })
        .await
        .expect("register");
    NetworkServiceClient::new(channel(&addrs[0]))
        .create_network(pb::CreateNetworkRequest {
            name: "bench".into(),
            ipam_config: vec![pb::IpamConfig { subnet: "100.64.0.0/10".into(), ..Default::default() }],
            ..Default::default()
        })
        .await
        .expect("network");

    let rounds: usize = setting("WEFT_BENCH_ROUNDS", 3);
    let peer = if etcd::installed() {
        let peer = etcd::Etcd::start(dir.path());
        peer.wait_ready(Duration::from_secs(30)).await;
        Some(peer)
    } else {
        println!(
            "\n#### etcd is not installed: consensus writes are NOT measured beside etcd (apt-get install etcd-server) ####\n"
        );
        None
    };

    println!("Transport: {}", if tls_enabled() { "mutual TLS" } else { "plaintext (--insecure)" });
    println!("Each weft member: --worker-threads {threads} (its share of the cores); etcd: its defaults\n");
    println!("{rounds} rounds of {seconds} s, alternating weft and etcd; median (min–max) of the rounds\n");
    println!(
        "| concurrent clients | weft creates/s | weft p50, ms | weft p99, ms | … p50 through the leader / a follower | \
         etcd puts/s | etcd p50, ms | etcd p99, ms | … p50 through the leader / a follower |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let spread = |values: &[f64]| Spread::of(values).brief(1);
    let levels: String = setting("WEFT_BENCH_CLIENTS", "1,16,256".to_string());
    let levels: Vec<usize> = levels
        .split(',')
        .map(|n| n.trim().parse().expect("WEFT_BENCH_CLIENTS: client counts separated by commas"))
        .collect();
    for (level, clients) in levels.into_iter().enumerate() {
        let (mut weft, mut other) = (Rounds::default(), Rounds::default());
        for round in 0..rounds {
            let tag = level * rounds + round;
            let calls = creates(&addrs, clients, seconds, tag).await;
            weft.add(calls, weft_leader(&addrs).await);
            if let Some(peer) = &peer {
                let calls = puts(&peer.addrs, clients, seconds, tag).await;
                other.add(calls, peer.leader().await);
            }
        }
        let id = format!("control.creates_{clients}");
        let what = format!(
            "endpoint creates through 3 members, {clients} concurrent client{}",
            if clients == 1 { "" } else { "s" }
        );
        let median = |v: &[f64]| Spread::of(v).median;
        record(Figure::new(&format!("{id}.rate"), &format!("{what}: creates/s"), median(&weft.rate), "/s"));
        record(Figure::new(&format!("{id}.p50"), &format!("{what}: p50"), median(&weft.p50), "ms"));
        record(Figure::new(&format!("{id}.p99"), &format!("{what}: p99"), median(&weft.p99), "ms"));
        let roles = |r: &Rounds| match (r.leader_p50.is_empty(), r.follower_p50.is_empty()) {
            (false, false) => format!("{} / {}", spread(&r.leader_p50), spread(&r.follower_p50)),
            _ => "–".into(),
        };
        println!(
            "| {clients} | {} | {} | {} | {} | {} | {} | {} | {} |",
            spread(&weft.rate),
            spread(&weft.p50),
            spread(&weft.p99),
            roles(&weft),
            spread(&other.rate),
            spread(&other.p50),
            spread(&other.p99),
            roles(&other)
        );
        if peer.is_some() {
            let writes = format!(
                "durable writes through 3 members, {clients} concurrent client{}",
                if clients == 1 { "" } else { "s" }
            );
            let compare =
                |key: &str, label: String, unit: &str, better: Better, ours: &[f64], theirs: &[f64]| {
                    let id = format!("{id}.{key}_vs_etcd");
                    let peer = "etcd 3.4 (etcd-server), KV.Put";
                    record_comparison(Comparison::of_rounds(&id, &label, unit, better, ours, peer, theirs))
                };
            compare("rate", format!("{writes}: writes/s"), "/s", Better::Higher, &weft.rate, &other.rate);
            compare("p99", format!("{writes}: p99"), "ms", Better::Lower, &weft.p99, &other.p99);
        }
    }

    // Network create latency, one at a time, through each member.
    println!();
    println!("| network create, sequential, through | p50 | p99 | creates |");
    println!("|---|---|---|---|");
    let leader = ClusterServiceClient::new(channel(&addrs[0]))
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .leader_id;
    let mut every_member = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut client = NetworkServiceClient::new(channel(addr));
        let mut latencies = Vec::new();
        for k in 0..200 {
            let began = Instant::now();
            let name = format!("n{i}-{k}");
            client
                .create_network(pb::CreateNetworkRequest { name: name.clone(), ..Default::default() })
                .await
                .expect("create network");
            latencies.push(began.elapsed());
            client
                .remove_network(pb::RemoveNetworkRequest {
                    network: name,
                    force: false,
                    ..Default::default()
                })
                .await
                .expect("remove network");
        }
        latencies.sort();
        every_member.extend_from_slice(&latencies);
        let role = if (i as u64 + 1) == leader { "leader" } else { "follower" };
        println!(
            "| member {} ({role}) | {} | {} | {} |",
            i + 1,
            ms(percentile(&latencies, 500)),
            ms(percentile(&latencies, 990)),
            latencies.len()
        );
    }
    every_member.sort();
    for (name, per_mille) in [("p50", 500), ("p99", 990)] {
        let label = format!("network create, one at a time, through every member: {name}");
        record(Figure::new(
            &format!("control.network_create.{name}"),
            &label,
            common::ms(percentile(&every_member, per_mille)),
            "ms",
        ));
    }
}
