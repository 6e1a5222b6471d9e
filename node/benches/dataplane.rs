//! Data-plane benchmarks in the namespace lab (needs root):
//! - how fast one agent programs remote endpoints (FDB + neighbour entries) from a snapshot;
//! - convergence: from an attach returning on one host to another host's entries being in
//!   place, with 10 hosts;
//! - TCP throughput container to container across hosts against the bare underlay, and over
//!   an encrypted network against the bare WireGuard tunnel between the same hosts (iperf3);
//! - DNS queries/s and latency from a container (dnsperf);
//! - attaches and detaches per second on one host at 1, 16 and 64 at once (`attaches`).
//!
//! `cargo bench -p weft-node --bench dataplane` (release build). Prints Markdown for
//! BENCHMARKS.md. `WEFT_BENCH_REMOTES` sets the remote endpoint count (default 20000),
//! `WEFT_BENCH_ATTACHES` the convergence samples (default 200). Names (`programming`,
//! `convergence`, `throughput`, `dns`, `attaches`) run those parts only. Figures go to the benchmark
//! runner too (`bash bench/run.sh`, see weft-bench).

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lab::*;
use weft_api::agent;
use weft_api::pb;
use weft_bench::{Figure, percentile, record, setting};
use weft_dataplane::Kernel;
use weft_testbed::{Netns, root_or_skip};

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
    let remotes = setting("WEFT_BENCH_REMOTES", 20_000);
    let mut lab = Lab::with_default_timing(1);
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
    record(Figure::new(
        "agent.programming.rate",
        &format!(
            "remote endpoints programmed by one agent from a snapshot ({remotes}; FDB + neighbour entry each)"
        ),
        remotes as f64 / cold.as_secs_f64(),
        "/s",
    ));
    let kernel = Kernel::connect_in(&PathBuf::from(lab.hosts[0].ns.path())).await.unwrap();
    let began = Instant::now();
    let observed = kernel.observe().await.unwrap();
    let dump = began.elapsed();
    record(Figure::new(
        "agent.programming.dump",
        &format!("one full kernel dump for a resync, {remotes} remote endpoints"),
        dump.as_secs_f64() * 1000.0,
        "ms",
    ));
    println!(
        "| {remotes} | one full dump for a resync ({} FDB + {} neighbour entries) | {} | — |",
        observed.fdb.values().map(|m| m.len()).sum::<usize>(),
        observed.neighbours.values().map(|m| m.len()).sum::<usize>(),
        ms(dump)
    );
    println!();
}

/// Asks one host's embedded DNS from inside a container there.
struct Resolver {
    socket: tokio::net::UdpSocket,
    server: std::net::SocketAddr,
    id: u16,
}

impl Resolver {
    fn new(container: &Netns, gateway: &str) -> Resolver {
        let socket = container.run_in(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
        socket.set_nonblocking(true).unwrap();
        let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
        Resolver { socket, server: format!("{gateway}:53").parse().unwrap(), id: 0 }
    }

    /// Whether `name` has an address now (one query, 50 ms to answer).
    async fn resolves(&mut self, name: &str) -> bool {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{Name, RecordType};
        self.id = self.id.wrapping_add(1);
        let mut query = Message::new(self.id, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(format!("{name}.")).unwrap(), RecordType::A));
        self.socket.send_to(&query.to_vec().unwrap(), self.server).await.unwrap();
        let mut buffer = [0u8; 1500];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        // Skip late answers to earlier queries.
        while let Ok(Ok(len)) = tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await {
            if let Ok(answer) = Message::from_vec(&buffer[..len])
                && answer.metadata.id == self.id
            {
                return !answer.answers.is_empty();
            }
        }
        false
    }
}

fn record_percentiles(id: &str, label: &str, sorted: &[Duration]) {
    for (name, per_mille) in [("p50", 500), ("p99", 990)] {
        let value = percentile(sorted, per_mille).as_secs_f64() * 1000.0;
        record(Figure::new(&format!("{id}.{name}"), &format!("{label}: {name}"), value, "ms"));
    }
}

/// With 10 hosts: attach latency, convergence (attach returned on A → B has the FDB entry
/// and answers the name), attach → every other host has the entry, and `attach --wait`.
async fn convergence() {
    let samples = setting("WEFT_BENCH_ATTACHES", 200);
    let hosts = 10;
    let lab = Lab::with_default_timing(hosts);
    let network = lab.create_network("conv", false);
    let vxlan = format!("weftx{}", network.vni);
    let mut agents = Vec::new();
    let mut kernels = Vec::new();
    let mut resolvers = Vec::new();
    let mut containers = Vec::new();
    for i in 0..hosts {
        let mut client = lab.agent(i).await;
        // One container per host first, so every host has the network's devices and a
        // container to ask its DNS from.
        let c = Netns::new("c");
        let base = attach(&mut client, &c, "conv", &format!("base{i}")).await;
        resolvers.push(Resolver::new(&c, &base.ipv4_gateway));
        containers.push(c);
        agents.push(client);
        kernels.push(Kernel::connect_in(&PathBuf::from(lab.hosts[i].ns.path())).await.unwrap());
    }
    let mut attach_times = Vec::with_capacity(samples);
    let mut converged = Vec::with_capacity(samples);
    let mut everywhere = Vec::with_capacity(samples);
    for k in 0..samples {
        let (from, to) = (k % hosts, (k + 1) % hosts);
        let c = Netns::new("c");
        let name = format!("s{k}");
        let began = Instant::now();
        let attachment = attach(&mut agents[from], &c, "conv", &name).await;
        let returned = Instant::now();
        attach_times.push(returned - began);
        let mac = weft_node::mirror::parse_mac(&attachment.mac_address).unwrap();
        let deadline = returned + Duration::from_secs(10);
        // Host B first (FDB entry and DNS answer), then every other host's FDB entry.
        let mut b_fdb = false;
        let mut b_dns = false;
        loop {
            if !b_fdb {
                let observed = kernels[to].observe().await.unwrap();
                b_fdb = observed.fdb.get(&vxlan).is_some_and(|f| f.contains_key(&mac));
            }
            if !b_dns {
                b_dns = resolvers[to].resolves(&name).await;
            }
            if b_fdb && b_dns {
                converged.push(returned.elapsed());
                break;
            }
            assert!(Instant::now() < deadline, "host {to} never programmed {mac} / answered {name}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut pending: Vec<usize> = (0..hosts).filter(|h| *h != from).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for h in pending {
                let observed = kernels[h].observe().await.unwrap();
                if !observed.fdb.get(&vxlan).is_some_and(|f| f.contains_key(&mac)) {
                    still.push(h);
                }
            }
            pending = still;
            assert!(Instant::now() < deadline, "hosts {pending:?} never programmed {mac}");
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        everywhere.push(began.elapsed());
        // Keep namespace count bounded: detach and drop the container again.
        agents[from]
            .detach(agent::DetachRequest { network: "conv".into(), container_id: attachment.container_id })
            .await
            .unwrap();
    }
    // `weft network connect --wait`: returns once every host reports the revision applied.
    let mut waited = Vec::new();
    for k in 0..samples.div_ceil(4) {
        let c = Netns::new("c");
        let mut request = attach_request(&c, "conv", &format!("w{k}"));
        request.wait_everywhere = true;
        let began = Instant::now();
        let attachment = agents[k % hosts].attach(request).await.unwrap().into_inner().attachment.unwrap();
        waited.push(began.elapsed());
        agents[k % hosts]
            .detach(agent::DetachRequest { network: "conv".into(), container_id: attachment.container_id })
            .await
            .unwrap();
    }
    for list in [&mut attach_times, &mut converged, &mut everywhere, &mut waited] {
        list.sort();
    }
    println!("| {hosts} hosts, {samples} attaches ({} with --wait) | p50 | p99 | max |", waited.len());
    println!("|---|---|---|---|");
    let rows: [(&str, &str, &Vec<Duration>); 4] = [
        ("agent.attach", "attach returns (allocate + plumb locally)", &attach_times),
        ("agent.convergence", "attach returned on A → B has the FDB entry and answers the name", &converged),
        ("agent.everywhere", "attach called on A → FDB entry on all 9 other hosts", &everywhere),
        ("agent.attach_wait", "attach --wait (returns once every host applied it)", &waited),
    ];
    for (id, label, sorted) in rows {
        println!(
            "| {label} | {} | {} | {} |",
            ms(percentile(sorted, 500)),
            ms(percentile(sorted, 990)),
            ms(sorted.last().copied().unwrap_or_default())
        );
        record_percentiles(id, &format!("{label}, {hosts} hosts"), sorted);
    }
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
    let lab = Lab::with_default_timing(2);
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
    let figures = [
        ("dataplane.underlay", "bare underlay TCP, host → host", underlay, "Gbit/s"),
        ("dataplane.vxlan", "container → container over VXLAN", overlay, "Gbit/s"),
        ("dataplane.vxlan_ratio", "VXLAN / bare underlay", overlay / underlay * 100.0, "%"),
        ("dataplane.tunnel", "bare WireGuard tunnel (wireguard-go), host → host", tunnel, "Gbit/s"),
        ("dataplane.encrypted", "container → container, encrypted network", encrypted, "Gbit/s"),
        (
            "dataplane.encrypted_ratio",
            "encrypted network / bare WireGuard tunnel",
            encrypted / tunnel * 100.0,
            "%",
        ),
    ];
    for (id, label, value, unit) in figures {
        record(Figure::new(id, &format!("{label} (iperf3, {seconds} s)"), value, unit));
    }
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
    let seconds = setting("WEFT_BENCH_DNS_SECONDS", 10).to_string();
    let mut lab = Lab::with_default_timing(2);
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
    // One line per answer: into a file, not a pipe, or dnsperf stalls whenever the pipe is
    // full and this process is slow to drain it (stalls of 2-3 ms, seen as a p99 of 1 ms).
    let answers = lab.tmp_path().join("answers.txt");
    let answers = answers.to_str().unwrap();
    asker.exec(&[
        "sh",
        "-c",
        &format!("dnsperf -s {server} -d {file} -l 5 -Q {rate} -c 8 -T 1 -v > {answers}"),
    ]);
    let verbose = std::fs::read_to_string(answers).unwrap();
    let mut latencies: Vec<f64> = verbose
        .lines()
        .filter(|l| l.starts_with("> NOERROR"))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: usize| {
        latencies.get((latencies.len().saturating_sub(1) * p + 500) / 1000).copied().unwrap_or(0.0)
    };
    if let Ok(qps) = qps.parse::<f64>() {
        record(Figure::new(
            "dns.qps",
            "DNS queries/s from a container, 1,000 names (dnsperf, full speed)",
            qps,
            "q/s",
        ));
    }
    let at_rate = format!("DNS latency at {rate} queries/s");
    record(Figure::new("dns.p50", &format!("{at_rate}: p50"), pct(500) * 1000.0, "ms"));
    record(Figure::new("dns.p99", &format!("{at_rate}: p99"), pct(990) * 1000.0, "ms"));
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

/// Runs `calls` with at most `in_flight` of them at once; returns each one's seconds, in order.
async fn bounded<F>(in_flight: usize, calls: impl Iterator<Item = F>) -> Vec<f64>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let tasks: Vec<_> = calls
        .map(|call| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _turn = gate.acquire_owned().await.unwrap();
                let start = Instant::now();
                call.await;
                start.elapsed().as_secs_f64()
            })
        })
        .collect();
    let mut seconds = Vec::with_capacity(tasks.len());
    for task in tasks {
        seconds.push(task.await.unwrap());
    }
    seconds
}

/// Concurrent attaches on one host, as a runtime starting many containers makes them: 192
/// fresh namespaces attached with 1, 16 and 64 requests in flight, then detached the same way.
async fn attach_concurrency() {
    const CONTAINERS: usize = 192;
    let lab = Lab::with_default_timing(2);
    lab.create_network("many", false);
    let containers: Vec<Netns> = (0..CONTAINERS).map(|_| Netns::new("c")).collect();
    let client = lab.agent(0).await;
    println!("### Concurrent attaches on one host ({CONTAINERS} containers per round)\n");
    println!("| in flight | attaches/s | attach p50 | attach p99 | detaches/s |");
    println!("|---|---|---|---|---|");
    for in_flight in [1usize, 16, 64] {
        let began = Instant::now();
        let mut latencies = bounded(
            in_flight,
            containers.iter().enumerate().map(|(i, ns)| {
                let mut client = client.clone();
                let request = attach_request(ns, "many", &format!("a{i}"));
                async move {
                    client.attach(request).await.unwrap();
                }
            }),
        )
        .await;
        let attach_rate = CONTAINERS as f64 / began.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let began = Instant::now();
        bounded(
            in_flight,
            containers.iter().enumerate().map(|(i, ns)| {
                let mut client = client.clone();
                let container_id = attach_request(ns, "many", &format!("a{i}")).container_id;
                async move {
                    client
                        .detach(agent::DetachRequest { network: "many".into(), container_id })
                        .await
                        .unwrap();
                }
            }),
        )
        .await;
        let detach_rate = CONTAINERS as f64 / began.elapsed().as_secs_f64();
        let p50 = percentile(&latencies, 500) * 1000.0;
        let p99 = percentile(&latencies, 990) * 1000.0;
        println!("| {in_flight} | {attach_rate:.0} | {p50:.1} ms | {p99:.1} ms | {detach_rate:.0} |");
        let label = format!("attaches on one host, {in_flight} in flight");
        record(Figure::new(
            &format!("attach.rate.{in_flight}"),
            &format!("{label}: attaches/s"),
            attach_rate,
            "/s",
        ));
        record(Figure::new(&format!("attach.p99.{in_flight}"), &format!("{label}: p99"), p99, "ms"));
        record(Figure::new(
            &format!("detach.rate.{in_flight}"),
            &format!("{label}: detaches/s"),
            detach_rate,
            "/s",
        ));
    }
    println!();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !root_or_skip("the data-plane benchmarks") {
        return;
    }
    let parts = ["programming", "convergence", "throughput", "dns", "attaches"];
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if let Some(unknown) = named.iter().find(|n| !parts.contains(&n.as_str())) {
        eprintln!("unknown part {unknown:?}; parts are: {}", parts.join(", "));
        std::process::exit(2);
    }
    let run = |part: &str| named.is_empty() || named.iter().any(|n| n == part);
    if run("programming") {
        programming_rate().await;
    }
    if run("convergence") {
        convergence().await;
    }
    if run("throughput") {
        throughput().await;
    }
    if run("dns") {
        dns().await;
    }
    if run("attaches") {
        attach_concurrency().await;
    }
}
