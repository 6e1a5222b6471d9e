//! Control-plane benchmark: endpoint creates per second and their latency through a
//! 3-member cluster of real `weft-controller` processes on loopback, with durable commits.
//!
//! `cargo bench -p weft-controller --bench cluster` (release build). Prints a Markdown table
//! for BENCHMARKS.md. `WEFT_BENCH_SECONDS` sets the time per concurrency level (default 10);
//! `WEFT_BENCH_TLS=1` runs everything over mutual TLS (as deployed) instead of `--insecure`.
//!
//! Clients spread over all three members, as agents do; a member that is not the leader
//! forwards to it. The client load runs on the same machine as the three controllers.

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Members, channel, tls_enabled, wait_ready};
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_bench::{Figure, percentile, record, setting};

fn ms(d: Duration) -> String {
    format!("{:.2} ms", common::ms(d))
}

/// `clients` concurrent clients creating endpoints for `seconds`; returns (creates/s, latencies).
async fn creates(addrs: &[String], clients: usize, seconds: f64, offset: usize) -> (f64, Vec<Duration>) {
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let mut client = EndpointServiceClient::new(channel(&addrs[c % addrs.len()]));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut k = 0usize;
                while Instant::now() < stop {
                    let container = format!("b{offset}-{c}-{k}");
                    k += 1;
                    let request = pb::CreateEndpointRequest {
                        network: "bench".into(),
                        node: "h1".into(),
                        container_id: container.clone(),
                        container_name: container,
                        ..Default::default()
                    };
                    let began = Instant::now();
                    client.create_endpoint(request).await.expect("create endpoint");
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / elapsed, all)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; a filter argument selects nothing here.
    let seconds: f64 = setting("WEFT_BENCH_SECONDS", 10.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let members = Members::start(dir.path(), &[]);
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

    println!("Transport: {}\n", if tls_enabled() { "mutual TLS" } else { "plaintext (--insecure)" });
    println!("| concurrent clients | creates/s | p50 | p99 | creates |");
    println!("|---|---|---|---|---|");
    for (i, clients) in [1usize, 16, 256].into_iter().enumerate() {
        let (rate, latencies) = creates(&addrs, clients, seconds, i).await;
        let id = format!("control.creates_{clients}");
        let what = format!(
            "endpoint creates through 3 members, {clients} concurrent client{}",
            if clients == 1 { "" } else { "s" }
        );
        record(Figure::new(&format!("{id}.rate"), &format!("{what}: creates/s"), rate, "/s"));
        for (name, per_mille) in [("p50", 500), ("p99", 990)] {
            let value = common::ms(percentile(&latencies, per_mille));
            record(Figure::new(&format!("{id}.{name}"), &format!("{what}: {name}"), value, "ms"));
        }
        println!(
            "| {clients} | {rate:.0} | {} | {} | {} |",
            ms(percentile(&latencies, 500)),
            ms(percentile(&latencies, 990)),
            latencies.len()
        );
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
