//! What the controller benchmarks share: three real `weft-controller` processes on loopback,
//! each with its own data directory, optionally over mutual TLS (`WEFT_BENCH_TLS=1`).

#![allow(dead_code)] // each benchmark uses its own subset

pub mod etcd;

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_weft-controller");

/// The admin's client TLS settings when the benchmark runs with TLS.
static CLIENT_TLS: std::sync::OnceLock<Option<tonic::transport::ClientTlsConfig>> =
    std::sync::OnceLock::new();

pub fn tls_enabled() -> bool {
    std::env::var("WEFT_BENCH_TLS").is_ok_and(|v| v == "1")
}

/// A running 3-member cluster; every process is killed on drop.
pub struct Members {
    children: Vec<Option<Child>>,
    /// Each member's command line, to start it again.
    commands: Vec<Vec<OsString>>,
    pub addrs: Vec<String>,
    pub metrics: Vec<String>,
    pub data_dirs: Vec<PathBuf>,
}

impl Drop for Members {
    fn drop(&mut self) {
        self.kill_all();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Each member's share of the machine's cores, as `deploy/quickstart.sh` gives members that
/// share a machine (at least one). The `cluster` bench runs its members so; etcd is left at
/// its defaults, its best here (decision 0010).
pub fn worker_threads() -> usize {
    (std::thread::available_parallelism().map_or(1, usize::from) / 3).max(1)
}

impl Members {
    /// Three members bootstrapped from one manifest, each given `extra` arguments.
    pub fn start(dir: &Path, extra: &[&str]) -> Members {
        let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let metrics: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let list: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, address = \"{a}\" }}", i + 1))
            .collect();
        let manifest = dir.join("cluster.toml");
        std::fs::write(&manifest, format!("cluster_id = \"bench\"\nmembers = [{}]\n", list.join(", ")))
            .expect("manifest");
        let ca = tls_enabled().then(|| weft_pki::Authority::create("bench").expect("CA"));
        let _ = CLIENT_TLS.set(
            ca.as_ref()
                .map(|ca| ca.issue(weft_pki::Role::Admin, "bench", &[]).expect("admin credential").client()),
        );
        let data_dirs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("m{}", i + 1))).collect();
        let commands = (0..3)
            .map(|i| {
                let mut args: Vec<OsString> = match &ca {
                    Some(ca) => {
                        let tls = dir.join(format!("tls{}", i + 1));
                        ca.issue(weft_pki::Role::Controller, &(i + 1).to_string(), &["127.0.0.1".into()])
                            .expect("controller credential")
                            .save(&tls)
                            .expect("save");
                        vec!["--tls-dir".into(), tls.into()]
                    }
                    None => vec!["--insecure".into()],
                };
                for arg in [
                    "--id",
                    &(i + 1).to_string(),
                    "--listen",
                    &addrs[i],
                    "--metrics-listen",
                    &metrics[i],
                    "--node-timeout-ms",
                    "600000",
                ] {
                    args.push(arg.into());
                }
                args.extend(["--data-dir".into(), data_dirs[i].clone().into_os_string()]);
                args.extend(["--manifest".into(), manifest.clone().into_os_string()]);
                args.extend(extra.iter().map(OsString::from));
                args
            })
            .collect();
        let mut members = Members { children: vec![None, None, None], commands, addrs, metrics, data_dirs };
        for i in 0..3 {
            members.spawn(i);
        }
        members
    }

    fn spawn(&mut self, i: usize) {
        let child = Command::new(BIN)
            .args(&self.commands[i])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn weft-controller");
        self.children[i] = Some(child);
    }

    /// kill -9 every member: nothing gets to flush or say goodbye.
    pub fn kill_all(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_all(&mut self) {
        for i in 0..3 {
            self.spawn(i);
        }
    }

    /// Resident and peak resident memory of member `i`, in bytes (VmRSS, VmHWM).
    pub fn memory(&self, i: usize) -> (u64, u64) {
        let Some(child) = &self.children[i] else { return (0, 0) };
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// A gauge from member `i`'s metrics endpoint.
    pub fn gauge(&self, i: usize, name: &str) -> Option<u64> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics[i]).ok()?;
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        let prefix = format!("{name} ");
        body.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
    }
}

pub fn channel(addr: &str) -> Channel {
    match CLIENT_TLS.get().cloned().flatten() {
        Some(tls) => Channel::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect_lazy(),
        None => Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy(),
    }
}

/// A plaintext channel (the peers' benchmarks run without TLS, as weft's default one does).
pub fn channel_plain(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy()
}

/// Waits until `addr` knows a leader and (when given) has applied `revision`.
pub async fn wait_ready(addr: &str, revision: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = ClusterServiceClient::new(channel(addr)).status(pb::StatusRequest {}).await {
            let s = s.into_inner();
            if s.leader_id != 0 && !s.cluster_id.is_empty() && s.revision >= revision {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} not ready (revision {revision}) within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Bytes in every file under `dir`.
pub fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => disk_usage(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
