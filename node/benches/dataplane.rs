//! Data-plane benchmarks in the namespace lab (needs root):
//! - how fast one agent programs remote endpoints (FDB + neighbour entries) from a snapshot;
//! - convergence: from an attach returning on one host to another host's entries being in
//!   place, with 10 hosts;
//! - TCP throughput container to container across hosts against the bare underlay, and over
//!   an encrypted network against the bare WireGuard tunnel between the same hosts (iperf3);
//! - DNS queries/s and latency from a container (dnsperf).
//!
//! `cargo bench -p weft-node --bench dataplane` (release build). Prints Markdown for
//! BENCHMARKS.md. `WEFT_BENCH_REMOTES` sets the remote endpoint count (default 20000),
//! `WEFT_BENCH_ATTACHES` the convergence samples (default 200). A name (`programming`,
//! `convergence`, `throughput`, `dns`) runs one part.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lab::*;
use weft_api::agent;
use weft_api::pb;
use weft_dataplane::Kernel;
use weft_testbed::{Netns, root_or_skip};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The nearest-rank percentile, given in thousandths.
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(((sorted.len() - 1) * per_mille + 500) / 1000).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn wait_applied(lab: &Lab, host: usize, revision: u64, timeout: Duration) -> Instant {
    let mut client = lab.agent(host).await;
    let deadline = Instant::now() + timeout;
    loop {
        let applied = client.list(agent::ListRequest {}).await.unwrap().into_inner().applied_revision;
        if applied >= revision {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "host {host} stuck at revision {applied} < {revision}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn programming_rate() {
    let remotes = env_or("WEFT_BENCH_REMOTES", 20_000);
    let mut lab = Lab::new(1);
    let network = lab.create(pb::CreateNetworkRequest {
        name: "big".into(),
        ipam_config: vec![pb::IpamConfig { subnet: "100.64.0.0/14".into(), ..Default::default() }],
        ..Default::default()
    });
    let container = Netns::new("c");
    let mut h1 = lab.agent(0).await;
    attach(&mut h1, &container, "big", "local").await;
    drop(h1);

    // From a snapshot: the agent restarts to find every remote endpoint missing.
    lab.kill_agent(0);
    let revision = lab.remote_endpoints(&network.id, remotes, 0);
    let began = Instant::now();
    lab.start_agent(0);
    let done = wait_applied(&lab, 0, revision, Duration::from_secs(300)).await;
    let cold = done - began;
    let fdb = lab.hosts[0].ns.exec(&["bridge", "fdb", "show", "dev", &format!("weftx{}", network.vni)]);
    let programmed = fdb.lines().filter(|l| l.contains(&format!("dst {UNDERLAY}.200"))).count();
    assert_eq!(programmed, remotes, "every remote endpoint has its FDB entry");

    println!("| remote endpoints | how | time | endpoints/s (FDB + neighbour entry each) |");
    println!("|---|---|---|---|");
    println!(
        "| {remotes} | agent start (snapshot, one pass; includes process start and registration) | {} | {:.0} |",
        ms(cold),
        remotes as f64 / cold.as_secs_f64()
    );
    let kernel = Kernel::connect_in(&PathBuf::from(lab.hosts[0].ns.path())).await.unwrap();
    let began = Instant::now();
    let observed = kernel.observe().await.unwrap();
    let dump = began.elapsed();
    println!(
        "| {remotes} | one full dump for a resync ({} FDB + {} neighbour entries) | {} | — |",
        observed.fdb.values().map(|m| m.len()).sum::<usize>(),
        observed.neighbours.values().map(|m| m.len()).sum::<usize>(),
        ms(dump)
    );
    println!();
}

async fn convergence() {
    let samples = env_or("WEFT_BENCH_ATTACHES", 200);
    let hosts = 10;
    let lab = Lab::new(hosts);
    let network = lab.create_network("conv", false);
    let vxlan = format!("weftx{}", network.vni);
    let mut agents = Vec::new();
    let mut kernels = Vec::new();
    let mut containers = Vec::new();
    for i in 0..hosts {
        let mut client = lab.agent(i).await;
        // One container per host first, so every host has the network's devices.
        let c = Netns::new("c");
        attach(&mut client, &c, "conv", &format!("base{i}")).await;
        containers.push(c);
        agents.push(client);
        kernels.push(Kernel::connect_in(&PathBuf::from(lab.hosts[i].ns.path())).await.unwrap());
    }
    let mut latencies = Vec::with_capacity(samples);
    let mut attach_times = Vec::with_capacity(samples);
    for k in 0..samples {
        let (from, to) = (k % hosts, (k + 1) % hosts);
        let c = Netns::new("c");
        let began = Instant::now();
        let attachment = attach(&mut agents[from], &c, "conv", &format!("s{k}")).await;
        let returned = Instant::now();
        attach_times.push(returned - began);
        let mac = weft_node::mirror::parse_mac(&attachment.mac_address).unwrap();
        let deadline = returned + Duration::from_secs(10);
        loop {
            let observed = kernels[to].observe().await.unwrap();
            if observed.fdb.get(&vxlan).is_some_and(|f| f.contains_key(&mac)) {
                latencies.push(returned.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "host {to} never programmed {mac}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Keep namespace count bounded: detach and drop the container again.
        agents[from]
            .detach(agent::DetachRequest { network: "conv".into(), container_id: attachment.container_id })
            .await
            .unwrap();
    }
    latencies.sort();
    attach_times.sort();
    println!("| {hosts} hosts, {samples} attaches | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| attach returns (allocate + plumb locally) | {} | {} | {} |",
        ms(percentile(&attach_times, 500)),
        ms(percentile(&attach_times, 990)),
        ms(*attach_times.last().unwrap())
    );
    println!(
        "| attach returned on A → FDB entry on B | {} | {} | {} |",
        ms(percentile(&latencies, 500)),
        ms(percentile(&latencies, 990)),
        ms(*latencies.last().unwrap())
    );
    println!();
}

/// iperf3 for `seconds` from `client` to `server_ip` (a server started in `server`); Gbit/s.
fn iperf(client: &Netns, server: &Netns, server_ip: &str, seconds: u32) -> f64 {
    server.exec(&["iperf3", "-s", "-D", "-1"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = client.exec(&["iperf3", "-c", server_ip, "-t", &seconds.to_string(), "-J"]);
    let key = "\"bits_per_second\":";
    // The receiver's summary is the last bits_per_second in the report.
    let bits: f64 = out
        .rmatch_indices(key)
        .next()
        .and_then(|(i, _)| out[i + key.len()..].trim_start().split([',', '\n']).next()?.trim().parse().ok())
        .expect("iperf3 report");
    bits / 1e9
}

async fn throughput() {
    if weft_testbed::output("sh", &["-c", "command -v iperf3"]).stdout.is_empty() {
        println!("(iperf3 not installed: throughput skipped; apt-get install iperf3)\n");
        return;
    }
    let lab = Lab::new(2);
    lab.create_network("fast", false);
    lab.create(pb::CreateNetworkRequest {
        name: "sealed".into(),
        options: [("encrypted".to_string(), "true".to_string())].into(),
        ..Default::default()
    });
    let (c1, c2) = (Netns::new("c"), Netns::new("c"));
    let mut h1 = lab.agent(0).await;
    let mut h2 = lab.agent(1).await;
    attach(&mut h1, &c1, "fast", "c1").await;
    let mut waiting = attach_request(&c2, "fast", "c2");
    waiting.wait_everywhere = true;
    let e2 = h2.attach(waiting).await.unwrap().into_inner().attachment.unwrap();
    let (s1, s2) = (Netns::new("c"), Netns::new("c"));
    attach(&mut h1, &s1, "sealed", "s1").await;
    let mut waiting = attach_request(&s2, "sealed", "s2");
    waiting.wait_everywhere = true;
    let sealed2 = h2.attach(waiting).await.unwrap().into_inner().attachment.unwrap();
    // The hosts' own WireGuard interfaces (wireguard-go here) are the bare tunnel: the same
    // daemons, keys and namespaces, without VXLAN or a container in between.
    let h2_tunnel = lab.with_controller(|channel| {
        Box::pin(async move {
            weft_api::pb::node_service_client::NodeServiceClient::new(channel)
                .inspect_node(pb::InspectNodeRequest { name: "h2".into() })
                .await
                .unwrap()
                .into_inner()
                .node
                .unwrap()
                .tunnel_address
        })
    });
    assert!(reaches(&s1, &ip_of(&sealed2)).await, "the encrypted network does not carry traffic");
    let seconds = 5;
    let underlay = iperf(&lab.hosts[0].ns, &lab.hosts[1].ns, &format!("{UNDERLAY}.2"), seconds);
    let overlay = iperf(&c1, &c2, &ip_of(&e2), seconds);
    let tunnel = iperf(&lab.hosts[0].ns, &lab.hosts[1].ns, &h2_tunnel, seconds);
    let encrypted = iperf(&s1, &s2, &ip_of(&sealed2), seconds);
    println!("| TCP, {seconds} s, iperf3 | Gbit/s | ratio |");
    println!("|---|---|---|");
    println!("| bare underlay, host 1 → host 2 (MTU 1500) | {underlay:.2} | |");
    println!(
        "| container → container over VXLAN (MTU {}) | {overlay:.2} | **{:.0} %** of the underlay |",
        e2.mtu,
        overlay / underlay * 100.0
    );
    println!(
        "| bare WireGuard tunnel (wireguard-go), host 1 → host 2 (MTU 1440) | {tunnel:.2} | {:.0} % of the underlay |",
        tunnel / underlay * 100.0
    );
    println!(
        "| container → container, encrypted network (MTU {}) | {encrypted:.2} | **{:.0} %** of the bare tunnel, {:.0} % of the plain overlay |",
        sealed2.mtu,
        encrypted / tunnel * 100.0,
        encrypted / overlay * 100.0
    );
    println!();
}

/// dnsperf from a container: `WEFT_BENCH_DNS_SECONDS` (default 10) at full speed for
/// queries/s, then at a fixed rate with per-query output for the latency percentiles.
async fn dns() {
    if weft_testbed::output("sh", &["-c", "command -v dnsperf"]).stdout.is_empty() {
        println!("(dnsperf not installed: DNS skipped; apt-get install dnsperf)\n");
        return;
    }
    let seconds = env_or("WEFT_BENCH_DNS_SECONDS", 10).to_string();
    let mut lab = Lab::new(2);
    lab.create(pb::CreateNetworkRequest {
        name: "names".into(),
        ipam_config: vec![pb::IpamConfig { subnet: "100.64.0.0/16".into(), ..Default::default() }],
        ..Default::default()
    });
    let asker = Netns::new("c");
    let mut h1 = lab.agent(0).await;
    let me = attach(&mut h1, &asker, "names", "asker").await;
    // 1,000 containers on another host (registered without an agent), queried by name.
    lab.kill_agent(1);
    let revision = lab.remote_endpoints("names", 1000, 0);
    wait_applied(&lab, 0, revision, Duration::from_secs(60)).await;
    let queries = (0..1000).map(|k| format!("r{k} A\n")).collect::<String>();
    let file = lab.tmp_path().join("queries.txt");
    std::fs::write(&file, queries).unwrap();
    let file = file.to_str().unwrap().to_string();
    let server = me.ipv4_gateway.clone();
    let full = asker
        .exec(&["dnsperf", "-s", &server, "-d", &file, "-l", &seconds, "-c", "8", "-T", "1", "-q", "200"]);
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let qps = field(&full, "Queries per second:");
    let lost = field(&full, "Queries lost:");
    // Latency at a rate the machine sustains: every answer's time, from dnsperf -v.
    let rate = "20000";
    let verbose = asker
        .exec(&["dnsperf", "-s", &server, "-d", &file, "-l", "5", "-Q", rate, "-c", "8", "-T", "1", "-v"]);
    let mut latencies: Vec<f64> = verbose
        .lines()
        .filter(|l| l.starts_with("> NOERROR"))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: usize| {
        latencies.get((latencies.len().saturating_sub(1) * p + 500) / 1000).copied().unwrap_or(0.0)
    };
    println!("| DNS, dnsperf from a container, 1,000 names on another host | value |");
    println!("|---|---|");
    println!("| queries/s, full speed, {seconds} s (lost: {lost}) | **{qps}** |");
    println!(
        "| latency at {rate} queries/s: p50 / p99 / max ({} answers) | {:.3} ms / {:.3} ms / {:.3} ms |",
        latencies.len(),
        pct(500) * 1000.0,
        pct(990) * 1000.0,
        latencies.last().copied().unwrap_or(0.0) * 1000.0
    );
    println!();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !root_or_skip("the data-plane benchmarks") {
        return;
    }
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    if only.is_empty() || only == "programming" {
        programming_rate().await;
    }
    if only.is_empty() || only == "convergence" {
        convergence().await;
    }
    if only.is_empty() || only == "throughput" {
        throughput().await;
    }
    if only.is_empty() || only == "dns" {
        dns().await;
    }
}
