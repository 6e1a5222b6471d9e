//! Published ports side by side, in one run: requests per second and latency to the same echo
//! server (`weft-echo`) in a container reached directly, through weft's published port, and
//! through Docker's `-p` (dockerd from Debian, running in a namespace of its own with its own
//! data and exec roots, so nothing of the machine's is touched).
//!
//!     cargo bench -p weft-node --bench published
//!
//! Two kinds of request, each from 16 clients at once for `WEFT_BENCH_SECONDS` (default 5),
//! every path in turn, `WEFT_BENCH_ROUNDS` times (default 3; each path's median round counts):
//! - `round trip`: 64 bytes out and back over a connection kept open (what a proxy costs per
//!   request);
//! - `connection`: connect, 64 bytes out and back, close (what NAT and a proxy cost per flow).
//!
//! Paths: from another machine to the host's address (both DNAT) and, for the same client, to
//! the container's own address routed through the host (direct: the same hops without NAT);
//! from the container's host to the container's address (direct) and to the host's 127.0.0.1
//! (Docker: docker-proxy; weft: DNAT). Needs root; Docker's side is skipped, loudly, without dockerd
//! (`apt-get install docker.io`; `bash bench/run.sh` installs it).

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab::dockerd::Dockerd;
use lab::*;
use weft_api::agent;
use weft_bench::{Figure, percentile, record, record_comparison, setting};
use weft_testbed::{Netns, Process, root_or_skip};

const CLIENTS: usize = 16;
const MESSAGE: usize = 64;
const WEFT_PORT: u16 = 18080;
const DOCKER_PORT: u16 = 18081;
const DOCKER_HOST: &str = "192.168.77.20";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    RoundTrip,
    Connection,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::RoundTrip => "round trip",
            Kind::Connection => "connection",
        }
    }
}

struct Load {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// `CLIENTS` threads inside `from`, for `seconds`, each timing every request.
fn load(from: &Netns, target: SocketAddr, kind: Kind, seconds: u64) -> Load {
    from.run_in(|| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let threads: Vec<_> = (0..CLIENTS)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut latencies = Vec::new();
                    let mut errors = 0;
                    let message = [7u8; MESSAGE];
                    let mut answer = [0u8; MESSAGE];
                    let exchange = |stream: &mut TcpStream, answer: &mut [u8; MESSAGE]| {
                        stream.write_all(&message).and_then(|()| stream.read_exact(answer))
                    };
                    let connect = || {
                        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                        stream.set_nodelay(true)?;
                        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                        Ok::<_, std::io::Error>(stream)
                    };
                    let mut kept = None;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        let done = match kind {
                            Kind::RoundTrip => {
                                if kept.is_none() {
                                    kept = connect().ok();
                                }
                                match kept.as_mut() {
                                    Some(stream) => exchange(stream, &mut answer).is_ok(),
                                    None => false,
                                }
                            }
                            Kind::Connection => connect()
                                .and_then(|mut stream| {
                                    exchange(&mut stream, &mut answer)?;
                                    // Closed with a reset: no TIME_WAIT, so a few seconds of this
                                    // do not run the client out of ports.
                                    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))
                                })
                                .is_ok(),
                        };
                        if done {
                            latencies.push(started.elapsed());
                        } else {
                            errors += 1;
                            kept = None;
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let started = Instant::now();
        let mut all = Vec::new();
        let mut errors = 0;
        for thread in threads {
            let (latencies, failed) = thread.join().unwrap();
            all.extend(latencies);
            errors += failed;
        }
        let elapsed = started.elapsed().max(Duration::from_secs(seconds));
        all.sort_unstable();
        Load {
            per_second: all.len() as f64 / elapsed.as_secs_f64(),
            p50: percentile(&all, 500),
            p99: percentile(&all, 990),
            errors,
        }
    })
}

/// Runs `weft-echo 7` inside `container` until dropped.
fn echo_in(container: &Netns) -> Process {
    let echo = weft_testbed::workspace_binary(NODE, "weft-echo");
    let child = Command::new("ip")
        .args(["netns", "exec", &container.name])
        .arg(&echo)
        .arg("7")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

/// Waits until something answers on `target` from `from`.
fn wait_listening(from: &Netns, target: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while from.run_in(|| TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_err()) {
        assert!(Instant::now() < deadline, "{what} ({target}) does not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// dockerd in a namespace of its own, joined to the lab's underlay as `DOCKER_HOST`, with
/// Docker's own `-p` (iptables and docker-proxy) as it ships.
struct Docker {
    dockerd: Dockerd,
    ns: Netns,
}

impl Docker {
    fn start(lab: &Lab, dir: &Path) -> Option<Docker> {
        if !Dockerd::installed() {
            println!(
                "\n#### dockerd is not installed: Docker's side is skipped (apt-get install docker.io) ####\n"
            );
            return None;
        }
        let ns = Netns::new("d");
        lab.join_underlay(&ns, 20);
        let dockerd = Dockerd::start(&[format!("--net={}", ns.path())], dir, &[]);
        Some(Docker { dockerd, ns })
    }

    fn run(&self, args: &[&str]) -> String {
        self.dockerd.run(args)
    }

    /// An image holding only `weft-echo` and the libraries it links.
    fn import_echo(&self, dir: &Path) {
        let echo = weft_testbed::workspace_binary(NODE, "weft-echo");
        let root = dir.join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::copy(&echo, root.join("weft-echo")).unwrap();
        let libraries = weft_testbed::run("ldd", &[echo.to_str().unwrap()]);
        for path in libraries.split_whitespace().filter(|w| w.starts_with('/')) {
            let target = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(path, target).unwrap();
        }
        self.dockerd.import(&root, "weft-echo:bench");
    }
}

struct Row {
    path: String,
    id: String,
    loads: Vec<(Kind, Load)>,
    /// Every round's requests/s, by kind.
    rounds: Vec<(Kind, Vec<f64>)>,
}

/// One path to measure: who asks, and where.
struct Route<'a> {
    label: &'static str,
    id: &'static str,
    from: &'a Netns,
    target: SocketAddr,
}

/// Every path, `rounds` times in turn (so a slow spell of the machine falls on all of them),
/// keeping each path's median round.
fn measure(paths: &[Route<'_>], rounds: usize, seconds: u64) -> Vec<Row> {
    for path in paths {
        wait_listening(path.from, path.target, path.label);
    }
    let kinds = [Kind::RoundTrip, Kind::Connection];
    let mut samples: Vec<Vec<Vec<Load>>> =
        paths.iter().map(|_| kinds.iter().map(|_| Vec::new()).collect()).collect();
    for _ in 0..rounds {
        for (p, path) in paths.iter().enumerate() {
            for (k, kind) in kinds.iter().enumerate() {
                samples[p][k].push(load(path.from, path.target, *kind, seconds));
            }
        }
    }
    paths
        .iter()
        .zip(samples)
        .map(|(path, per_kind)| {
            let rounds = kinds
                .iter()
                .zip(&per_kind)
                .map(|(kind, r)| (*kind, r.iter().map(|l| l.per_second).collect()))
                .collect();
            let loads = kinds
                .iter()
                .zip(per_kind)
                .map(|(kind, mut rounds)| {
                    rounds.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
                    (*kind, rounds.swap_remove(rounds.len() / 2))
                })
                .collect();
            Row { path: path.label.to_string(), id: path.id.to_string(), loads, rounds }
        })
        .collect()
}

fn rounds_of<'a>(rows: &'a [Row], id: &str, kind: Kind) -> Option<&'a [f64]> {
    rows.iter().find(|r| r.id == id)?.rounds.iter().find(|(k, _)| *k == kind).map(|(_, r)| r.as_slice())
}

fn get(rows: &[Row], id: &str, kind: Kind) -> Option<f64> {
    rows.iter().find(|r| r.id == id)?.loads.iter().find(|(k, _)| *k == kind).map(|(_, l)| l.per_second)
}

#[tokio::main]
async fn main() {
    if !root_or_skip("the published-port benchmark") {
        return;
    }
    let seconds: u64 = setting("WEFT_BENCH_SECONDS", 5);
    let lab = Lab::with_default_timing(1);
    let network = lab.create_network("bench", false);
    let mut h1 = lab.agent(0).await;
    let container = Netns::new("c");
    let request = agent::AttachRequest {
        publish: vec![weft_api::agent_client::port_request(&format!("{WEFT_PORT}:7").parse().unwrap())],
        ..attach_request(&container, "bench", "echo")
    };
    let attached = h1.attach(request).await.unwrap().into_inner().attachment.unwrap();
    let _echo = echo_in(&container);
    let host = &lab.hosts[0].ns;
    let direct: SocketAddr = format!("{}:7", ip_of(&attached)).parse().unwrap();
    let mut paths = vec![
        Route {
            label: "weft host → container address (direct)",
            id: "weft.direct",
            from: host,
            target: direct,
        },
        Route {
            label: "weft host → 127.0.0.1, published port",
            id: "weft.localhost",
            from: host,
            target: format!("127.0.0.1:{WEFT_PORT}").parse().unwrap(),
        },
        Route {
            label: "another machine → weft host, published port",
            id: "weft.remote",
            from: &lab.outside,
            target: format!("192.168.77.1:{WEFT_PORT}").parse().unwrap(),
        },
        Route {
            label: "another machine → container address, routed through the weft host (direct)",
            id: "weft.remote_direct",
            from: &lab.outside,
            target: direct,
        },
    ];
    // The outside namespace is the lab's own: a route to the container's subnet through h1
    // lets the same client reach the same server with the same hops, without NAT.
    lab.outside.exec(&["ip", "route", "add", &network.ipam_config[0].subnet, "via", "192.168.77.1"]);
    let dir = tempfile::tempdir().unwrap();
    let docker = Docker::start(&lab, dir.path());
    if let Some(docker) = &docker {
        docker.import_echo(dir.path());
        let published = format!("{DOCKER_PORT}:7");
        docker.run(&["run", "-d", "--name", "echo", "-p", &published, "weft-echo:bench", "/weft-echo", "7"]);
        let ip = docker.run(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "echo"]);
        paths.extend([
            Route {
                label: "Docker host → container address (direct)",
                id: "docker.direct",
                from: &docker.ns,
                target: format!("{ip}:7").parse().unwrap(),
            },
            Route {
                label: "Docker host → 127.0.0.1, `-p` (docker-proxy)",
                id: "docker.localhost",
                from: &docker.ns,
                target: format!("127.0.0.1:{DOCKER_PORT}").parse().unwrap(),
            },
            Route {
                label: "another machine → Docker host, `-p`",
                id: "docker.remote",
                from: &lab.outside,
                target: format!("{DOCKER_HOST}:{DOCKER_PORT}").parse().unwrap(),
            },
        ]);
    }
    let rounds: usize = setting("WEFT_BENCH_ROUNDS", 3);
    let rows = measure(&paths, rounds, seconds);

    println!(
        "| path ({CLIENTS} clients, {MESSAGE}-byte echo, median of {rounds} rounds of {seconds} s) | kind | requests/s | p50 | p99 | errors |"
    );
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        for (kind, l) in &row.loads {
            println!(
                "| {} | {} | {:.0} | {:.3} ms | {:.3} ms | {} |",
                row.path,
                kind.label(),
                l.per_second,
                l.p50.as_secs_f64() * 1000.0,
                l.p99.as_secs_f64() * 1000.0,
                l.errors
            );
            let key = if *kind == Kind::RoundTrip { "rt" } else { "conn" };
            let label = format!("{}, {}", row.path, kind.label());
            record(Figure::new(
                &format!("published.{}.{key}", row.id),
                &format!("{label}: requests/s"),
                l.per_second,
                "req/s",
            ));
            record(Figure::new(
                &format!("published.{}.{key}.p99", row.id),
                &format!("{label}: p99"),
                l.p99.as_secs_f64() * 1000.0,
                "ms",
            ));
        }
    }
    println!();
    // Each comparison: what is measured against what, how it is said, and its figure.
    struct Comparison {
        over: (&'static str, &'static str),
        percent: bool,
        says: &'static str,
        id: &'static str,
        label: &'static str,
    }
    let comparisons = [
        Comparison {
            over: ("weft.remote", "weft.remote_direct"),
            percent: true,
            says: "from another machine, weft's published port carries {} of direct",
            id: "published.ratio",
            label: "weft published / direct, from another machine",
        },
        Comparison {
            over: ("weft.localhost", "weft.direct"),
            percent: true,
            says: "on the host, 127.0.0.1 through weft carries {} of direct",
            id: "published.local_ratio",
            label: "weft published (127.0.0.1) / direct, on the host",
        },
        Comparison {
            over: ("weft.localhost", "docker.localhost"),
            percent: false,
            says: "weft's published port (127.0.0.1) carries {} Docker's",
            id: "published.vs_docker",
            label: "weft / Docker `-p` via 127.0.0.1",
        },
    ];
    for kind in [Kind::RoundTrip, Kind::Connection] {
        let key = if kind == Kind::RoundTrip { "rt" } else { "conn" };
        for c in &comparisons {
            let (Some(measured), Some(against)) = (get(&rows, c.over.0, kind), get(&rows, c.over.1, kind))
            else {
                continue;
            };
            let (ratio, unit, shown) = if c.percent {
                let ratio = measured / against * 100.0;
                (ratio, "%", format!("{ratio:.1} %"))
            } else {
                let ratio = measured / against;
                (ratio, "×", format!("{ratio:.2}×"))
            };
            println!("- {}: {}", kind.label(), c.says.replace("{}", &shown));
            record(Figure::new(
                &format!("{}.{key}", c.id),
                &format!("{}, {}", c.label, kind.label()),
                ratio,
                unit,
            ));
        }
    }
    // weft beside Docker's `-p`, round by round, for the two ways users reach a published port.
    for kind in [Kind::RoundTrip, Kind::Connection] {
        let key = if kind == Kind::RoundTrip { "rt" } else { "conn" };
        for (path, what) in [
            ("localhost", "host → 127.0.0.1, published port"),
            ("remote", "another machine → host, published port"),
        ] {
            let (Some(weft), Some(docker)) = (
                rounds_of(&rows, &format!("weft.{path}"), kind),
                rounds_of(&rows, &format!("docker.{path}"), kind),
            ) else {
                continue;
            };
            let label = format!("{what}, {} ({CLIENTS} clients)", kind.label());
            record_comparison(weft_bench::Comparison::of_rounds(
                &format!("published.{path}.{key}_vs_docker"),
                &label,
                "req/s",
                weft_bench::Better::Higher,
                weft,
                "Docker `-p` (docker.io)",
                docker,
            ));
        }
    }
}
