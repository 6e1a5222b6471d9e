//! weft-cni against what podman users have instead, side by side in one run.
//!
//!     cargo bench -p weft-node --bench cni
//!
//! 1. ADD latency: the plugin binary run as a runtime runs it (environment, configuration on
//!    stdin) for `WEFT_BENCH_ADDS` (default 40) fresh namespaces, then DEL for each; weft-cni
//!    on a weft network against the reference `bridge` plugin with `host-local` addresses
//!    (containernetworking-plugins), alternating rounds.
//! 2. `podman run -d` on host2 (Debian's podman, CNI backend), `WEFT_BENCH_CONTAINERS` (default
//!    6) containers a round: on the weft network, each then pinged by name from a container on
//!    host1, another host; on podman's own network (`podman network create`: bridge,
//!    host-local, portmap, firewall, tuning, and dnsname when installed), pinged by name from a
//!    container on the same host, which is all it can reach. `WEFT_BENCH_ROUNDS` rounds
//!    (default 3).
//!
//! Needs root and podman; skips loudly without either.

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab::podman::{IMAGE, Podman};
use lab::*;
use serde_json::{Value, json};
use weft_bench::{Figure, percentile, record, setting};
use weft_testbed::{Netns, root_or_skip};

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// Runs a CNI plugin binary once as a runtime does; panics on a CNI error.
fn invoke(plugin: &Path, command: &str, container: &str, netns: &str, conf: &Value) {
    let mut child = Command::new(plugin)
        .env_clear()
        // As a runtime runs plugins: the bridge plugin runs iptables for its masquerade.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} {command}: {}{}",
        plugin.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One round of ADDs then DELs of `plugin` with `conf`, run inside `host` (the bridge plugin
/// makes its bridge there); the ADD times.
fn add_round(host: &Netns, plugin: &Path, conf: &Value, round: usize, count: usize) -> Vec<f64> {
    let containers: Vec<Netns> = (0..count).map(|_| Netns::new("b")).collect();
    let mut times = Vec::new();
    for (k, c) in containers.iter().enumerate() {
        let id = format!("{round:04x}{k:04x}").repeat(8);
        let started = Instant::now();
        host.run_in(|| invoke(plugin, "ADD", &id, &c.path(), conf));
        times.push(ms(started));
    }
    for (k, c) in containers.iter().enumerate() {
        let id = format!("{round:04x}{k:04x}").repeat(8);
        host.run_in(|| invoke(plugin, "DEL", &id, &c.path(), conf));
    }
    times
}

#[derive(Default)]
struct RunSamples {
    run_ms: Vec<f64>,
    reach_ms: Vec<f64>,
    /// `podman exec probe sh -c :`: part of every reachability figure.
    exec_ms: Vec<f64>,
}

/// `count` containers started one by one on `network` by `runner`, each pinged by name from
/// `probe` (a container on `prober`) once `run` returned; then removed.
fn run_round(
    runner: &Podman,
    prober: &Podman,
    network: &str,
    round: usize,
    count: usize,
    samples: &mut RunSamples,
) {
    let names: Vec<String> = (0..count).map(|k| format!("{network}-r{round}-{k}")).collect();
    let started = Instant::now();
    assert!(prober.try_run(&["exec", &format!("probe-{network}"), "sh", "-c", ":"]).status.success());
    samples.exec_ms.push(ms(started));
    for name in &names {
        let started = Instant::now();
        runner.run(&["run", "-d", "--name", name, "--network", network, IMAGE, "sleep", "1000"]);
        samples.run_ms.push(ms(started));
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(30);
        while !prober
            .try_run(&["exec", &format!("probe-{network}"), "ping", "-c", "1", "-W", "1", name])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "{network}: {name} never answered by name");
            std::thread::sleep(Duration::from_millis(20));
        }
        samples.reach_ms.push(ms(returned));
    }
    let mut remove = vec!["rm", "-f", "-t", "0"];
    remove.extend(names.iter().map(String::as_str));
    runner.run(&remove);
}

#[tokio::main]
async fn main() {
    if !root_or_skip("the CNI benchmark") {
        return;
    }
    if !Podman::installed() {
        println!(
            "\n#### podman is not installed: the CNI benchmark is SKIPPED (apt-get install podman containernetworking-plugins) ####\n"
        );
        return;
    }
    let rounds: usize = setting("WEFT_BENCH_ROUNDS", 3);
    let adds: usize = setting("WEFT_BENCH_ADDS", 40);
    let count: usize = setting("WEFT_BENCH_CONTAINERS", 6);
    let lab = Lab::with_default_timing(2);
    lab.agent(0).await;
    lab.agent(1).await;
    lab.create_network("app", false);

    // 1. ADD latency, the plugins alone.
    let weft_cni = weft_testbed::workspace_binary(NODE, "weft-cni");
    let bridge = Path::new("/usr/lib/cni/bridge").to_path_buf();
    let weft_conf =
        json!({"cniVersion": "1.0.0", "name": "app", "type": "weft", "socket": lab.hosts[1].socket});
    let bridge_conf = json!({
        "cniVersion": "1.0.0", "name": "peer", "type": "bridge", "bridge": "cni-bench0", "isGateway": true,
        "ipMasq": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.199.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": lab.tmp_path().join("host-local").display().to_string()},
    });
    let (mut weft_adds, mut bridge_adds) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        weft_adds.extend(add_round(&lab.hosts[1].ns, &weft_cni, &weft_conf, r, adds));
        bridge_adds.extend(add_round(&lab.hosts[1].ns, &bridge, &bridge_conf, r, adds));
    }

    // 2. podman run → reachable by name.
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (Podman::new(&lab, 0, dir.path(), &["app"]), Podman::new(&lab, 1, dir.path(), &["app"]));
    p2.run(&["network", "create", "peer"]);
    let dnsname = p2.run(&["network", "inspect", "-f", "{{.DNSEnabled}}", "peer"]) == "true";
    p1.run(&["run", "-d", "--name", "probe-app", "--network", "app", IMAGE, "sleep", "100000"]);
    p2.run(&["run", "-d", "--name", "probe-peer", "--network", "peer", IMAGE, "sleep", "100000"]);
    let (mut weft_runs, mut peer_runs) = (RunSamples::default(), RunSamples::default());
    for r in 0..rounds {
        run_round(&p2, &p1, "app", r, count, &mut weft_runs);
        if dnsname {
            run_round(&p2, &p2, "peer", r, count, &mut peer_runs);
        } else {
            // Without dnsname podman's CNI network has no names: time `run` alone.
            for k in 0..count {
                let name = format!("peer-r{r}-{k}");
                let started = Instant::now();
                p2.run(&["run", "-d", "--name", &name, "--network", "peer", IMAGE, "sleep", "1000"]);
                peer_runs.run_ms.push(ms(started));
                p2.run(&["rm", "-f", "-t", "0", &name]);
            }
        }
    }

    let (w, b) = (sorted(&weft_adds), sorted(&bridge_adds));
    let rows = [
        ("ADD p50", "add.p50", percentile(&w, 500), percentile(&b, 500), "ms"),
        ("ADD p99", "add.p99", percentile(&w, 990), percentile(&b, 990), "ms"),
        (
            "podman run, median",
            "run_ms",
            percentile(&sorted(&weft_runs.run_ms), 500),
            percentile(&sorted(&peer_runs.run_ms), 500),
            "ms",
        ),
        (
            "run returned → name answers, median",
            "reach_ms",
            percentile(&sorted(&weft_runs.reach_ms), 500),
            if dnsname { percentile(&sorted(&peer_runs.reach_ms), 500) } else { f64::NAN },
            "ms",
        ),
        (
            "podman exec alone (in every ping)",
            "exec_ms",
            percentile(&sorted(&weft_runs.exec_ms), 500),
            if dnsname { percentile(&sorted(&peer_runs.exec_ms), 500) } else { f64::NAN },
            "ms",
        ),
    ];
    println!(
        "\nweft-cni (weft network, names from another host) vs podman's own CNI network (bridge{}, same host); {rounds} rounds",
        if dnsname { " + dnsname" } else { ", no names" }
    );
    println!("{:<38} {:>10} {:>10} {:>8}", "", "weft", "podman", "ratio");
    for (label, key, weft, peer, unit) in rows {
        println!("{label:<38} {weft:>8.1}{unit:<2} {peer:>8.1}{unit:<2} {:>7.2}", weft / peer);
        record(Figure::new(&format!("cni.weft.{key}"), &format!("weft-cni: {label}"), weft, unit));
        if peer.is_finite() {
            record(Figure::new(
                &format!("cni.podman.{key}"),
                &format!("podman's CNI network: {label}"),
                peer,
                unit,
            ));
        }
    }
    record(Figure::new(
        "cni.add_vs_bridge",
        "CNI ADD p50, weft-cni / reference bridge plugin",
        percentile(&w, 500) / percentile(&b, 500),
        "×",
    ));
    record(Figure::new(
        "cni.run_vs_podman",
        "podman run time, weft network / podman's own",
        percentile(&sorted(&weft_runs.run_ms), 500) / percentile(&sorted(&peer_runs.run_ms), 500),
        "×",
    ));
}
