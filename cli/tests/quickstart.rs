//! The README's first command end to end: `deploy/quickstart.sh` brings up three controllers,
//! three hosts and five containers that reach each other by name, and `down` removes all of
//! it. Runs the script with this build's binaries (WEFT_BIN_DIR) under a prefix and underlay
//! of its own, so a quickstart someone left running is not touched. Needs root.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct Quickstart {
    prefix: String,
    underlay: &'static str,
}

impl Quickstart {
    fn run(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/quickstart.sh");
        let bin_dir = Path::new(WEFT).parent().unwrap();
        assert!(
            bin_dir.join("weft-node").exists(),
            "build the whole workspace first (cargo build --workspace)"
        );
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("WEFT_BIN_DIR", bin_dir)
            .env("WEFT_QS_PREFIX", &self.prefix)
            .env("WEFT_QS_UNDERLAY", self.underlay)
            .output()
            .unwrap()
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

#[test]
fn the_quickstart_brings_up_a_working_cluster_and_down_removes_it() {
    if !weft_testbed::root_or_skip("the_quickstart_brings_up_a_working_cluster_and_down_removes_it") {
        return;
    }
    let quickstart =
        Quickstart { prefix: format!("wq{}", std::process::id() % 100_000), underlay: "10.217.0" };
    let prefix = quickstart.prefix.clone();
    let up = quickstart.run(&[]);
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(up.status.success(), "quickstart failed:\n{stdout}\n{}", String::from_utf8_lossy(&up.stderr));
    for line in ["web1 -> web2 ok", "web1 -> web3 ok", "web3 -> web2 ok", "db1  -> db3  ok"] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }
    assert!(stdout.contains("Tear it all down"), "{stdout}");

    // Each host got its credential with the join token, its key made on the host.
    for host in 1..=3 {
        let log = std::fs::read_to_string(format!("/run/{prefix}/host{host}.log")).unwrap();
        assert!(log.contains("joined the cluster"), "host{host} did not join with the token:\n{log}");
    }

    // It is left running, and usable as the instructions say.
    let controllers = "10.217.0.254:7001,10.217.0.254:7002,10.217.0.254:7003";
    let admin = format!("/run/{prefix}/pki/admin");
    let listed = Command::new(WEFT)
        .args([
            "--controller",
            controllers,
            "--tls-dir",
            &admin,
            "network",
            "ls",
            "--format",
            "{{.Name}} {{.Encrypted}}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "frontend false\nsecrets true\n");
    let ping = Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}-db1"), "ping", "-c", "1", "-W", "2", "db3"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stderr));

    let down = quickstart.run(&["down"]);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert_eq!(String::from_utf8_lossy(&down.stderr), "", "down complained");
    let namespaces =
        String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    assert!(!namespaces.contains(&format!("{prefix}-")), "namespaces left: {namespaces}");
    let links = String::from_utf8(Command::new("ip").args(["-o", "link"]).output().unwrap().stdout).unwrap();
    assert!(!links.contains(&format!("{prefix}-")), "links left: {links}");
    assert!(!Path::new(&format!("/run/{prefix}")).exists());
    let processes = String::from_utf8(
        Command::new("pgrep").args(["-af", &format!("/run/{prefix}/")]).output().unwrap().stdout,
    )
    .unwrap();
    assert!(processes.lines().all(|l| l.contains("pgrep")), "processes left: {processes}");
}

/// An underlay range some interface on the machine already holds is refused before anything
/// is made, naming the interface and how to pick another range.
#[test]
fn the_quickstart_refuses_an_underlay_range_already_in_use() {
    if !weft_testbed::root_or_skip("the_quickstart_refuses_an_underlay_range_already_in_use") {
        return;
    }
    let pid = std::process::id() % 100_000;
    let holder = format!("wqc{pid}");
    weft_testbed::run("ip", &["link", "add", &holder, "type", "veth", "peer", "name", &format!("{holder}p")]);
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = weft_testbed::output("ip", &["link", "del", &self.0]);
        }
    }
    let _remove = Remove(holder.clone());
    weft_testbed::run("ip", &["addr", "add", "10.218.0.1/24", "dev", &holder]);
    let quickstart = Quickstart { prefix: format!("wr{pid}"), underlay: "10.218.0" };
    let up = quickstart.run(&[]);
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(!up.status.success(), "the quickstart started on a taken range");
    assert!(
        stderr.contains(&format!("10.218.0.1/24 on {holder}")) && stderr.contains("WEFT_QS_UNDERLAY"),
        "{stderr}"
    );
    let namespaces = weft_testbed::run("ip", &["netns", "list"]);
    assert!(!namespaces.contains(&quickstart.prefix), "{namespaces}");
}

/// The Docker mode: the same cluster with a dockerd on every host using weft's plugin, the
/// issue's example run through Docker (a network made on host1 used on all, a container
/// fetched by name from host2, pinged by alias from host3, its published port reached from
/// host2), and `down` removes dockerd, its containers and mounts too.
#[test]
fn the_docker_quickstart_runs_the_example_through_dockerd_and_down_removes_it() {
    let test = "the_docker_quickstart_runs_the_example_through_dockerd_and_down_removes_it";
    if !weft_testbed::root_or_skip(test) {
        return;
    }
    let quickstart =
        Quickstart { prefix: format!("wd{}", std::process::id() % 100_000), underlay: "10.219.0" };
    let prefix = quickstart.prefix.clone();
    let up = quickstart.run(&["docker"]);
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "quickstart docker failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(stdout.matches("hello from web, on host1").count(), 2, "{stdout}");
    assert!(stdout.contains("host3 lists app (weft)"), "{stdout}");
    assert!(stdout.contains("64 bytes from"), "{stdout}");
    assert!(stdout.contains("0.0.0.0:8080->80/tcp"), "{stdout}");

    let down = quickstart.run(&["down"]);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    // Tearing down says what it did and nothing else: no warnings for a user to wonder about.
    assert_eq!(String::from_utf8_lossy(&down.stderr), "", "down complained");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&format!("/run/{prefix}")), "mounts left: {mounts}");
    let processes = String::from_utf8(
        Command::new("pgrep").args(["-af", &format!("/run/{prefix}/")]).output().unwrap().stdout,
    )
    .unwrap();
    assert!(processes.lines().all(|l| l.contains("pgrep")), "processes left: {processes}");
    assert!(!Path::new(&format!("/run/{prefix}")).exists());
}
