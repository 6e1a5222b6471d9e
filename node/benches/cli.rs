//! Control operations as a user types them, weft's CLI beside Docker's, side by side in one
//! run: `network create`, `network rm`, `network connect` and `network disconnect`, each
//! timed as the command's wall time (process start included, as the user waits for it).
//!
//!     cargo bench -p weft-node --bench cli
//!
//! weft: a 3-member controller cluster and one host running weft-node (production timing),
//! the CLI run in the host's namespace over mutual TLS, as an operator on that host would;
//! `connect` attaches a fresh network namespace. Docker: Debian's dockerd in a namespace host
//! of its own (its defaults), `docker network create` of a user-defined bridge network, and
//! `connect` of a running container (started on Docker's default bridge) to it.
//!
//! `WEFT_BENCH_ROUNDS` rounds (default 3), alternating sides, of `WEFT_BENCH_OPERATIONS`
//! (default 10) of each operation. Needs root and docker.io; without dockerd, weft alone is
//! measured, loudly.

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::Instant;

use lab::dockerd::{Dockerd, IMAGE, import_busybox};
use lab::*;
use weft_bench::{Better, Comparison, Figure, Spread, record, record_comparison, setting};
use weft_testbed::{Netns, root_or_skip};

/// The operations, in the order a round runs them.
const OPERATIONS: [&str; 4] = ["network create", "network rm", "network connect", "network disconnect"];

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// `weft ARGS` on host 1, as its operator; panics when it fails.
fn weft(lab: &Lab, args: &[&str]) {
    let out = lab.weft_cli(0, args);
    assert!(out.status.success(), "weft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Each operation's wall times, ms, by index in [`OPERATIONS`].
type Times = [Vec<f64>; 4];

fn weft_round(lab: &Lab, round: usize, count: usize, times: &mut Times) {
    for k in 0..count {
        let started = Instant::now();
        weft(lab, &["network", "create", &format!("n{round}-{k}")]);
        times[0].push(ms(started));
    }
    for k in 0..count {
        let started = Instant::now();
        weft(lab, &["network", "rm", &format!("n{round}-{k}")]);
        times[1].push(ms(started));
    }
    let containers: Vec<Netns> = (0..count).map(|_| Netns::new("c")).collect();
    for (k, container) in containers.iter().enumerate() {
        let started = Instant::now();
        weft(lab, &["network", "connect", "bench", &format!("c{round}-{k}"), "--netns", &container.path()]);
        times[2].push(ms(started));
    }
    for k in 0..count {
        let started = Instant::now();
        weft(lab, &["network", "disconnect", "bench", &format!("c{round}-{k}")]);
        times[3].push(ms(started));
    }
}

fn docker_round(dockerd: &Dockerd, round: usize, count: usize, times: &mut Times) {
    for k in 0..count {
        let started = Instant::now();
        dockerd.run(&["network", "create", &format!("n{round}-{k}")]);
        times[0].push(ms(started));
    }
    for k in 0..count {
        let started = Instant::now();
        dockerd.run(&["network", "rm", &format!("n{round}-{k}")]);
        times[1].push(ms(started));
    }
    let names: Vec<String> = (0..count).map(|k| format!("c{round}-{k}")).collect();
    for name in &names {
        dockerd.run(&["run", "-d", "--name", name, IMAGE, "sleep", "100000"]);
    }
    for name in &names {
        let started = Instant::now();
        dockerd.run(&["network", "connect", "bench", name]);
        times[2].push(ms(started));
    }
    for name in &names {
        let started = Instant::now();
        dockerd.run(&["network", "disconnect", "bench", name]);
        times[3].push(ms(started));
    }
    let mut remove = vec!["rm", "-f"];
    remove.extend(names.iter().map(String::as_str));
    dockerd.run(&remove);
}

fn p50s(rounds: &[Times], operation: usize) -> Vec<f64> {
    rounds.iter().map(|times| Spread::of(&times[operation]).median).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !root_or_skip("the CLI benchmark") {
        return;
    }
    let rounds: usize = setting("WEFT_BENCH_ROUNDS", 3);
    let count: usize = setting("WEFT_BENCH_OPERATIONS", 10);
    let lab = Lab::with_default_timing(1);
    let _ = lab.agent(0).await;
    weft(&lab, &["network", "create", "bench"]);
    let dir = tempfile::tempdir().unwrap();
    let docker_host = Netns::new("d");
    let dockerd = if Dockerd::installed() {
        let dockerd = Dockerd::start(&[format!("--net={}", docker_host.path())], dir.path(), &[]);
        import_busybox(&dockerd);
        dockerd.run(&["network", "create", "bench"]);
        Some(dockerd)
    } else {
        println!(
            "\n#### docker.io is not installed: Docker's CLI is NOT measured beside weft's (apt-get install docker.io) ####\n"
        );
        None
    };
    let (mut weft_rounds, mut docker_rounds): (Vec<Times>, Vec<Times>) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut times = Times::default();
        weft_round(&lab, round, count, &mut times);
        weft_rounds.push(times);
        if let Some(dockerd) = &dockerd {
            let mut times = Times::default();
            docker_round(dockerd, round, count, &mut times);
            docker_rounds.push(times);
        }
    }

    println!("\nwall time of each command, p50 per round, median (min–max) of {rounds} rounds × {count}\n");
    println!("| command | weft | docker | weft's advantage |");
    println!("|---|---|---|---|");
    for (i, operation) in OPERATIONS.iter().enumerate() {
        let weft = Spread::of(&p50s(&weft_rounds, i));
        let id = format!("cli.{}", operation.replace(' ', "_"));
        let label = format!("`{operation}`, wall time, p50");
        record(Figure::new(
            &format!("{id}.p50"),
            &format!("weft {operation}, wall time, p50"),
            weft.median,
            "ms",
        ));
        let show = |s: &Spread| format!("{} ms", s.brief(1));
        if dockerd.is_some() {
            let docker = Spread::of(&p50s(&docker_rounds, i));
            println!(
                "| {operation} | {} | {} | {:.2} × |",
                show(&weft),
                show(&docker),
                docker.median / weft.median
            );
            record_comparison(Comparison {
                id: format!("{id}_vs_docker"),
                label,
                unit: "ms".into(),
                better: Better::Lower,
                weft,
                peer: "docker CLI and dockerd (docker.io)".into(),
                peer_spread: docker,
                goal: 1.0,
            });
        } else {
            println!("| {operation} | {} | – | |", show(&weft));
        }
    }
}
