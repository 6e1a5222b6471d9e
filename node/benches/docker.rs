//! `docker run` on weft's plugin against Docker swarm's overlay, side by side in one run: two
//! namespace hosts each with its own dockerd from Debian, on one underlay. weft's hosts run
//! weft-node with the plugin (production timing); swarm's are two more namespace hosts whose
//! dockerds form a swarm (a manager and a worker) with an attachable overlay network.
//!
//!     cargo bench -p weft-node --bench docker
//!
//! Each round, on each side in turn: `WEFT_BENCH_CONTAINERS` (default 6) containers are
//! started one after another with `docker run -d` on the second host, and after each returns,
//! a container on the first host pings the new one by name (`docker exec probe ping -c 1
//! NAME`, tried again until it answers). Then they are removed, so every round's first
//! container is the first of its network on that host (swarm sets up the overlay's sandbox
//! then). `WEFT_BENCH_ROUNDS` rounds (default 3).
//!
//! Figures: the run time of the first container of a round and of the others (median), the
//! time from `run` returning to the name answering from the other host (median and worst),
//! and how often the very first ping answered; `docker exec probe sh -c :` is measured too, since
//! every reachability figure includes one exec. Needs root and docker.io; skips loudly
//! without either.

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::dockerd::{DockerLab, Dockerd, IMAGE, Swarm};
use lab::*;
use weft_bench::{Figure, percentile, record, setting};
use weft_testbed::root_or_skip;

/// One side's two hosts: where the probe runs, and where containers are started.
struct Side<'a> {
    name: &'static str,
    probe_host: &'a Dockerd,
    run_host: &'a Dockerd,
    network: &'static str,
}

#[derive(Default)]
struct Samples {
    first_run_ms: Vec<f64>,
    later_run_ms: Vec<f64>,
    reach_ms: Vec<f64>,
    first_try: usize,
    tries: usize,
    exec_ms: Vec<f64>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// One round on one side: `count` containers started one by one, each pinged by name from the
/// probe once its `run` returned; then all removed.
fn round(side: &Side<'_>, round: usize, count: usize, samples: &mut Samples) {
    let started = Instant::now();
    assert!(side.probe_host.try_run(&["exec", "probe", "sh", "-c", ":"]).status.success());
    samples.exec_ms.push(ms(started));
    let names: Vec<String> = (0..count).map(|k| format!("{}-r{round}-{k}", side.name)).collect();
    for (k, name) in names.iter().enumerate() {
        let started = Instant::now();
        side.run_host.run(&["run", "-d", "--name", name, "--network", side.network, IMAGE, "sleep", "1000"]);
        let run = ms(started);
        if k == 0 {
            samples.first_run_ms.push(run);
        } else {
            samples.later_run_ms.push(run);
        }
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(30);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ping = side.probe_host.try_run(&["exec", "probe", "ping", "-c", "1", "-W", "1", name]);
            if ping.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {name} never answered by name", side.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        samples.reach_ms.push(ms(returned));
        samples.tries += 1;
        if attempt == 1 {
            samples.first_try += 1;
        }
    }
    let mut remove = vec!["rm", "-f"];
    remove.extend(names.iter().map(String::as_str));
    side.run_host.run(&remove);
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 500)
}

fn report(side: &str, samples: &Samples) -> Vec<(String, f64)> {
    let worst = samples.reach_ms.iter().copied().fold(0.0, f64::max);
    vec![
        (format!("{side}.first_run_ms"), median(&samples.first_run_ms)),
        (format!("{side}.run_ms"), median(&samples.later_run_ms)),
        (format!("{side}.reach_ms"), median(&samples.reach_ms)),
        (format!("{side}.reach_max_ms"), worst),
        (format!("{side}.first_try_pct"), 100.0 * samples.first_try as f64 / samples.tries.max(1) as f64),
        (format!("{side}.exec_ms"), median(&samples.exec_ms)),
    ]
}

#[tokio::main]
async fn main() {
    if !root_or_skip("the Docker plugin benchmark") {
        return;
    }
    if !Dockerd::installed() {
        println!(
            "\n#### dockerd is not installed: the Docker benchmark is SKIPPED (apt-get install docker.io) ####\n"
        );
        return;
    }
    let rounds: usize = setting("WEFT_BENCH_ROUNDS", 3);
    let count: usize = setting("WEFT_BENCH_CONTAINERS", 6);
    let weft = DockerLab::with_lab("the Docker plugin benchmark", 2, Lab::with_default_timing).await.unwrap();
    weft.create_network(0, "app", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let swarm = Swarm::start(&weft.lab, dir.path());
    weft.dockerds[0].run(&["run", "-d", "--name", "probe", "--network", "app", IMAGE, "sleep", "100000"]);
    swarm.manager.run(&["run", "-d", "--name", "probe", "--network", "ov", IMAGE, "sleep", "100000"]);
    let sides = [
        Side { name: "weft", probe_host: &weft.dockerds[0], run_host: &weft.dockerds[1], network: "app" },
        Side { name: "swarm", probe_host: &swarm.manager, run_host: &swarm.worker, network: "ov" },
    ];
    let mut samples: Vec<Samples> = sides.iter().map(|_| Samples::default()).collect();
    for r in 0..rounds {
        for (side, samples) in sides.iter().zip(samples.iter_mut()) {
            round(side, r, count, samples);
        }
    }

    println!(
        "\ndocker run on host2, then ping by name from a container on host1 ({rounds} rounds × {count})"
    );
    println!("{:<34} {:>10} {:>10} {:>8}", "", "weft", "swarm", "ratio");
    let weft_figures = report("weft", &samples[0]);
    let swarm_figures = report("swarm", &samples[1]);
    let labels = [
        ("first run of a round, median", "first_run_ms", "ms"),
        ("later runs, median", "run_ms", "ms"),
        ("run returned → name answers, median", "reach_ms", "ms"),
        ("run returned → name answers, worst", "reach_max_ms", "ms"),
        ("first ping answered", "first_try_pct", "%"),
        ("docker exec alone (in every ping)", "exec_ms", "ms"),
    ];
    for ((label, key, unit), ((_, w), (_, s))) in labels.iter().zip(weft_figures.iter().zip(&swarm_figures)) {
        let ratio = if *s > 0.0 { w / s } else { f64::NAN };
        println!("{label:<34} {w:>8.1}{unit:<2} {s:>8.1}{unit:<2} {ratio:>7.2}");
        record(Figure::new(&format!("docker.weft.{key}"), &format!("weft plugin: {label}"), *w, unit));
        record(Figure::new(&format!("docker.swarm.{key}"), &format!("swarm overlay: {label}"), *s, unit));
    }
    // The goals (issue 20): no slower a `docker run` than swarm's, and the name answering from
    // the other host by the time `run` returns.
    let ratio = |key: &str| {
        let find = |figures: &[(String, f64)], side: &str| {
            figures.iter().find(|(k, _)| *k == format!("{side}.{key}")).map(|(_, v)| *v).unwrap()
        };
        find(&weft_figures, "weft") / find(&swarm_figures, "swarm")
    };
    record(Figure::new(
        "docker.run_vs_swarm",
        "docker run time, weft / swarm (later runs)",
        ratio("run_ms"),
        "×",
    ));
    record(Figure::new(
        "docker.first_run_vs_swarm",
        "docker run time, weft / swarm (first of a network on a host)",
        ratio("first_run_ms"),
        "×",
    ));
}
