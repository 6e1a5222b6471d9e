//! Control-plane benchmark: endpoint creates per second and their latency through a
//! 3-member cluster of real `weft-controller` processes on loopback, with durable commits.
//!
//! `cargo bench -p weft-controller --bench cluster` (release build). Prints a Markdown table
//! for BENCHMARKS.md. `WEFT_BENCH_SECONDS` sets the time per concurrency level (default 10);
//! `WEFT_BENCH_TLS=1` runs everything over mutual TLS (as deployed) instead of `--insecure`.
//!
//! Clients spread over all three members, as agents do; a member that is not the leader
//! forwards to it. The client load runs on the same machine as the three controllers.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;

const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");

/// The admin's client TLS settings when the benchmark runs with TLS.
static CLIENT_TLS: std::sync::OnceLock<Option<tonic::transport::ClientTlsConfig>> =
    std::sync::OnceLock::new();

fn tls_enabled() -> bool {
    std::env::var("WEFT_BENCH_TLS").is_ok_and(|v| v == "1")
}

struct Members {
    children: Vec<Child>,
    addrs: Vec<String>,
}

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start(dir: &Path) -> Members {
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let list: Vec<String> =
        addrs.iter().enumerate().map(|(i, a)| format!("{{ id = {}, address = \"{a}\" }}", i + 1)).collect();
    let manifest = dir.join("cluster.toml");
    std::fs::write(&manifest, format!("cluster_id = \"bench\"\nmembers = [{}]\n", list.join(", ")))
        .expect("manifest");
    let ca = tls_enabled().then(|| weft_pki::Authority::create("bench").expect("CA"));
    let _ = CLIENT_TLS.set(
        ca.as_ref()
            .map(|ca| ca.issue(weft_pki::Role::Admin, "bench", &[]).expect("admin credential").client()),
    );
    let children = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let security: Vec<String> = match &ca {
                Some(ca) => {
                    let tls = dir.join(format!("tls{}", i + 1));
                    ca.issue(weft_pki::Role::Controller, &(i + 1).to_string(), &["127.0.0.1".into()])
                        .expect("controller credential")
                        .save(&tls)
                        .expect("save");
                    vec!["--tls-dir".into(), tls.display().to_string()]
                }
                None => vec!["--insecure".into()],
            };
            Command::new(BIN)
                .args(&security)
                .args(["--id", &(i + 1).to_string(), "--listen", addr, "--data-dir"])
                .arg(dir.join(format!("m{}", i + 1)))
                .arg("--manifest")
                .arg(&manifest)
                .args(["--node-timeout-ms", "600000"])
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn weft-controller")
        })
        .collect();
    Members { children, addrs }
}

fn channel(addr: &str) -> Channel {
    match CLIENT_TLS.get().cloned().flatten() {
        Some(tls) => Channel::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy(),
        None => Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy(),
    }
}

async fn wait_ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = ClusterServiceClient::new(channel(addr)).status(pb::StatusRequest {}).await {
            let s = s.into_inner();
            if s.leader_id != 0 && !s.cluster_id.is_empty() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "cluster not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The nearest-rank percentile, given in thousandths (500 = p50, 990 = p99).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) * per_mille + 500) / 1000;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
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
    let seconds: f64 = std::env::var("WEFT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let members = start(dir.path());
    for addr in &members.addrs {
        wait_ready(addr).await;
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
                .remove_network(pb::RemoveNetworkRequest { network: name, force: false })
                .await
                .expect("remove network");
        }
        latencies.sort();
        let role = if (i as u64 + 1) == leader { "leader" } else { "follower" };
        println!(
            "| member {} ({role}) | {} | {} | {} |",
            i + 1,
            ms(percentile(&latencies, 500)),
            ms(percentile(&latencies, 990)),
            latencies.len()
        );
    }
}
