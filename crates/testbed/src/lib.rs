//! Hosts and containers as network namespaces for weft's integration tests. Every namespace
//! and link made here is removed when its guard drops, including when a test panics. Names
//! carry the test process id, so parallel tests never collide.

// Test fixtures: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// True when running as root. When not, says loudly which test is skipped and why.
pub fn root_or_skip(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1));
    if euid == Some("0") {
        return true;
    }
    eprintln!(
        "\n!!! SKIPPED {test}: it needs root (network namespaces, links, nftables). Run the suite as root. !!!\n"
    );
    false
}

/// Runs a command; panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = output(program, args);
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns whatever happened.
pub fn output(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static SWEPT: std::sync::Once = std::sync::Once::new();

/// Removes namespaces left by test processes that were killed before their guards could run
/// (a timeout's SIGKILL, say): names start with `w` and the process id, and that process is
/// gone. Processes still running inside them are killed first.
fn sweep_stale() {
    let listed = output("ip", &["netns", "list"]);
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix('w') else { continue };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let alive = std::path::Path::new(&format!("/proc/{digits}")).exists();
        if digits.is_empty() || alive || rest.len() == digits.len() {
            continue;
        }
        drop(Netns { name: name.to_string() });
    }
    remove_dead_wireguard_sockets("w");
}

/// wireguard-go leaves its UAPI socket behind when it is killed; the sockets of the tests'
/// interfaces (named by [`unique`]) that nobody answers any more are removed.
fn remove_dead_wireguard_sockets(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/var/run/wireguard") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix)
            && name.ends_with(".sock")
            && std::os::unix::net::UnixStream::connect(entry.path()).is_err()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A binary of this workspace built next to `sibling` (a test's own `CARGO_BIN_EXE_…`): tests
/// of one package run binaries of others, which a workspace build puts in the same directory.
pub fn workspace_binary(sibling: &str, name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(sibling).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the whole workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// A loopback IP of this test process's own, `127.A.B.host` with A.B from the process id
/// (nextest runs each test in a process of its own). Ports there are picked by
/// bind-and-release; on a shared 127.0.0.1 another test could take the port in between, and a
/// controller of its cluster would answer this one's traffic.
pub fn own_loopback(host: u8) -> String {
    let pid = std::process::id();
    format!("127.{}.{}.{host}", (pid >> 8) & 0xff, pid & 0xff)
}

/// `ip:port` with a port free on `ip` right now.
pub fn free_address_on(ip: &str) -> String {
    let port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
    format!("{ip}:{port}")
}

/// Writes a cluster manifest at `path`: `cluster_id` and one member per address, ids from 1.
pub fn write_manifest(path: &std::path::Path, cluster_id: &str, addresses: &[impl AsRef<str>]) {
    let members: Vec<String> = addresses
        .iter()
        .enumerate()
        .map(|(i, address)| format!("{{ id = {}, address = \"{}\" }}", i + 1, address.as_ref()))
        .collect();
    std::fs::write(path, format!("cluster_id = \"{cluster_id}\"\nmembers = [{}]\n", members.join(", ")))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// The body of `GET path` from the plain HTTP server at `addr` (metrics endpoints); panics
/// on anything but 200.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// Sends `signal` (`STOP`, `CONT`, ...) to process `pid`, as `kill -SIGNAL PID` does; panics
/// when it cannot be sent.
pub fn signal(pid: u32, signal: &str) {
    let sent = output("kill", &[&format!("-{signal}"), &pid.to_string()]);
    assert!(sent.status.success(), "kill -{signal} {pid}: {}", String::from_utf8_lossy(&sent.stderr));
}

/// A process a test started: killed and reaped when dropped, even when the test panics.
#[derive(Debug)]
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A name unique to this test process: `w<pid><tag><n>`, at most 15 characters so that it
/// also works as an interface name.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("w{}{tag}{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// `ip` arguments that run `args` inside the named namespace.
fn in_netns<'a>(name: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["netns", "exec", name];
    full.extend_from_slice(args);
    full
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        SWEPT.call_once(sweep_stale);
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `/run/netns/NAME`, what weft's attach API takes.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace; panics when it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        run("ip", &in_netns(&self.name, args))
    }

    /// Runs a command inside the namespace and returns whatever happened.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        output("ip", &in_netns(&self.name, args))
    }

    /// Runs a command inside the namespace with `input` on its standard input.
    pub fn try_exec_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("wait")
    }

    /// Runs `f` on a thread inside the namespace: sockets it opens belong to the namespace
    /// (how a test reaches a process listening only there).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let target = std::fs::File::open(&path).expect("open netns");
                    nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter netns");
                    f()
                })
                .join()
                .expect("thread inside the namespace panicked")
        })
    }

    /// The switch namespace a `weft-node` running in this namespace is given
    /// (`--switch-namespace`): where its bridges, VXLAN devices and FDB entries are.
    pub fn switch_name(&self) -> String {
        format!("{}-sw", self.name)
    }

    /// Where the switch namespace of [`Netns::switch_name`] is pinned.
    pub fn switch_path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(self.switch_name())
    }

    /// Runs a command in this host's switch namespace; panics when it fails.
    pub fn switch_exec(&self, args: &[&str]) -> String {
        run("ip", &in_netns(&self.switch_name(), args))
    }

    /// Runs a command in this host's switch namespace and returns whatever happened.
    pub fn switch_try_exec(&self, args: &[&str]) -> Output {
        output("ip", &in_netns(&self.switch_name(), args))
    }

    /// True when `ping` from here reaches `ip` (a few quick probes).
    pub fn pings(&self, ip: &str) -> bool {
        self.try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", ip]).status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Killing what still runs inside first lets the namespace go at once.
        let pids = output("ip", &["netns", "pids", &self.name]).stdout;
        for pid in String::from_utf8_lossy(&pids).split_whitespace() {
            let _ = output("kill", &["-9", pid]);
        }
        let _ = output("ip", &["netns", "del", &self.name]);
        // The switch namespace of an agent that ran here (weft-node pins it; nothing else
        // would remove it).
        if self.switch_path().exists() {
            let _ = output("ip", &["netns", "del", &self.switch_name()]);
        }
        remove_dead_wireguard_sockets(&format!("w{}", std::process::id() % 100_000));
        // Files `ip netns exec` shows inside (resolv.conf written by weft-node).
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// An underlay: a bridge in a namespace of its own, hosts joined to it by veth pairs, each
/// host end carrying the host's underlay address.
#[derive(Debug)]
pub struct Underlay {
    pub switch: Netns,
    bridge: String,
    /// First three octets of the underlay /24.
    prefix: String,
}

impl Underlay {
    /// An underlay /24 `prefix.0/24`, e.g. `"192.168.77"` (namespaced, so it clashes with
    /// nothing on the machine).
    pub fn new(prefix: &str) -> Underlay {
        let switch = Netns::new("sw");
        switch.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.exec(&["ip", "link", "set", "br0", "up"]);
        Underlay { switch, bridge: "br0".into(), prefix: prefix.into() }
    }

    /// Joins `host` with address `prefix.octet/24` on interface `ul0`, MTU `mtu`.
    pub fn join(&self, host: &Netns, octet: u8, mtu: u32) -> String {
        let outside = unique("u");
        run("ip", &["link", "add", &outside, "type", "veth", "peer", "name", "ul0", "netns", &host.name]);
        run("ip", &["link", "set", &outside, "netns", &self.switch.name]);
        let mtu = mtu.to_string();
        self.switch.exec(&["ip", "link", "set", &outside, "master", &self.bridge, "mtu", &mtu, "up"]);
        let address = format!("{}.{octet}", self.prefix);
        host.exec(&["ip", "link", "set", "ul0", "mtu", &mtu, "up"]);
        host.exec(&["ip", "addr", "add", &format!("{address}/24"), "dev", "ul0"]);
        address
    }
}
