//! The `weft` binary against a real single-member controller on loopback: what it prints,
//! what it says on bad input, and its exit codes. (Connecting containers needs a node agent
//! and root: node/tests/cli.rs.)

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// A one-member cluster from a data directory alone, killed on drop.
struct Controller {
    child: Child,
    address: String,
    /// The admin credential.
    tls: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller_binary() -> PathBuf {
    weft_testbed::workspace_binary(WEFT, "weft-controller")
}

fn start() -> Controller {
    let dir = tempfile::tempdir().unwrap();
    // A loopback IP of this test process's own: the port is picked by bind-and-release, and
    // on a shared IP another test could take it in between.
    let ip = weft_testbed::own_loopback(2);
    let address = weft_testbed::free_address_on(&ip);
    // Credentials made the way an operator makes them.
    let pki = dir.path().join("pki");
    let init = Command::new(WEFT)
        .args(["pki", "init", "--cluster", "test", "--controller", &format!("1={ip}"), "--dir"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let child = Command::new(controller_binary())
        .args(["--listen", &address, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-dir")
        .arg(pki.join("controller-1"))
        .env("RUST_LOG", "warn,openraft=off")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let controller = Controller { child, address, tls: dir.path().join("pki/admin"), _dir: dir };
    // Ready when `cluster status` names a leader and the cluster's configuration is in
    // (it carries the cluster id).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = weft(&controller, &["cluster", "status"]);
        let status = String::from_utf8_lossy(&out.stdout);
        let configured = status.lines().next().is_some_and(|l| l.trim() != "Cluster:");
        if out.status.success() && configured && !status.contains("none") {
            return controller;
        }
        assert!(
            Instant::now() < deadline,
            "controller did not come up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn weft(controller: &Controller, args: &[&str]) -> Output {
    Command::new(WEFT)
        .args(args)
        .env("WEFT_CONTROLLER", &controller.address)
        .env("WEFT_TLS_DIR", &controller.tls)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

/// Runs `weft`, expects success, returns stdout.
fn ok(controller: &Controller, args: &[&str]) -> String {
    let out = weft(controller, args);
    assert!(out.status.success(), "weft {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `weft`, expects failure with one line on stderr containing every one of `words`.
fn fails(controller: &Controller, args: &[&str], words: &[&str]) {
    let out = weft(controller, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "weft {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(stderr.lines().count(), 1, "weft {args:?}: not one line: {stderr}");
    assert!(stderr.starts_with("weft: "), "{stderr}");
    for word in words {
        assert!(stderr.contains(word), "weft {args:?}: {word:?} missing from {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn networks_are_created_listed_inspected_and_removed_like_docker_networks() {
    let c = start();
    let id = ok(
        &c,
        &[
            "network",
            "create",
            "--subnet",
            "10.30.0.0/24",
            "--gateway",
            "10.30.0.254",
            "--label",
            "team=web",
            "backend",
        ],
    );
    let id = id.trim();
    assert_eq!(id.len(), 64, "create prints the full id: {id}");
    ok(&c, &["network", "create", "-o", "encrypted=true", "--ipv6", "secrets"]);

    let table = ok(&c, &["network", "ls"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NETWORK ID") && header.contains("NAME") && header.contains("DRIVER"),
        "{table}"
    );
    let backend = table.lines().find(|l| l.contains("backend")).unwrap();
    assert!(
        backend.starts_with(&id[..12]) && !backend.contains(id) && backend.contains("overlay"),
        "{table}"
    );
    assert!(table.lines().any(|l| l.contains("secrets") && l.ends_with("true")), "{table}");

    assert_eq!(ok(&c, &["network", "ls", "-q", "--no-trunc", "--filter", "label=team=web"]).trim(), id);
    assert_eq!(
        ok(&c, &["network", "ls", "--filter", "name=sec", "--format", "{{.Name}} {{.Encrypted}}"]),
        "secrets true\n"
    );
    let json: serde_json::Value = serde_json::from_str(
        ok(&c, &["network", "ls", "--filter", "name=backend", "--format", "json"]).trim(),
    )
    .unwrap();
    assert_eq!(json["Subnet"], "10.30.0.0/24");

    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&c, &["network", "inspect", "backend", &id[..16]])).unwrap();
    let docs = inspected.as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["Id"], id);
    assert_eq!(docs[0]["IPAM"]["Config"][0]["Gateway"], "10.30.0.254");
    assert_eq!(docs[0]["Labels"]["team"], "web");
    assert_eq!(docs[0]["Scope"], "global");
    assert!(docs[0]["Containers"].as_object().unwrap().is_empty());

    assert_eq!(ok(&c, &["network", "rm", "backend"]), "backend\n");
    fails(&c, &["network", "rm", "backend"], &["backend"]);
    assert_eq!(ok(&c, &["network", "prune", "-f"]), "Deleted Networks:\nsecrets\n");
    assert_eq!(ok(&c, &["network", "ls", "-q"]), "");

    let status = ok(&c, &["cluster", "status"]);
    assert!(status.contains("Leader:         1 (") && status.contains("MEMBER ID"), "{status}");
    // `weft pki init` issues for a year: the member's own credential, not due yet.
    assert!(status.contains("\nCredential:     expires ") && status.contains(" (in 364 days)\n"), "{status}");
    assert!(ok(&c, &["node", "ls"]).starts_with("NAME"));
    assert!(ok(&c, &["completion", "bash"]).contains("weft"));
}

#[test]
fn bad_input_gets_one_readable_line_and_a_failing_exit() {
    let c = start();
    ok(&c, &["network", "create", "--subnet", "10.40.0.0/24", "taken"]);
    fails(&c, &["network", "create", "--subnet", "10.40.0.999/24", "bad"], &["10.40.0.999/24"]);
    fails(&c, &["network", "create", "--subnet", "10.40.0.128/25", "overlap"], &["overlaps", "taken"]);
    fails(&c, &["network", "create", "taken"], &["already exists"]);
    fails(
        &c,
        &["network", "create", "--ipv6", "--gateway", "10.50.0.1", "--subnet", "fd00::/64", "v6only"],
        &["gateway", "explicit IPv4 subnet"],
    );
    fails(&c, &["network", "create", "--subnet", "fd00:9::/64", "v6"], &["needs enable_ipv6", "--ipv6"]);
    fails(&c, &["network", "create", "--subnet", "224.0.0.0/24", "mcast"], &["subnet", "multicast"]);
    fails(&c, &["network", "create", "-o", "nonsense=1", "opts"], &["nonsense", "encrypted"]);
    fails(&c, &["network", "create", "--label", "novalue", "labels"], &["--label", "KEY=VALUE"]);
    fails(&c, &["network", "inspect", "nowhere"], &["nowhere"]);
    fails(&c, &["network", "ls", "--filter", "colour=red"], &["colour", "name="]);
    fails(&c, &["network", "ls", "--format", "{{.Colour}}"], &["Colour", "Name"]);
    fails(&c, &["node", "inspect", "ghost"], &["ghost"]);
    // Nothing listens there.
    let out = Command::new(WEFT).args(["--controller", "127.0.0.1:1", "network", "ls"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach a controller") && stderr.contains("127.0.0.1:1"), "{stderr}");
    // A missing agent socket is named.
    let out = Command::new(WEFT)
        .args([
            "--node-socket",
            "/nonexistent/agent.sock",
            "network",
            "connect",
            "taken",
            "c1",
            "--netns",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.sock"));
    // Usage errors are clap's: non-zero, with the usage line.
    let out = weft(&c, &["network", "create"]);
    assert_eq!(out.status.code(), Some(2));
    // --debug adds the gRPC status.
    let out = weft(&c, &["--debug", "network", "inspect", "nowhere"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}

/// An admin credential close to its expiry still works, with one warning line on stderr
/// saying how to get a new one; stdout stays what scripts parse.
#[test]
fn a_credential_about_to_expire_is_warned_about_and_still_works() {
    let c = start();
    let ca = weft_pki::Authority::load(&c._dir.path().join("pki/controller-1")).unwrap();
    let short = c._dir.path().join("pki/short-lived");
    ca.issue_valid_for(weft_pki::Role::Admin, "ops", &[], Duration::from_secs(10 * 86_400))
        .unwrap()
        .save(&short)
        .unwrap();
    let out = Command::new(WEFT)
        .args(["network", "ls", "-q"])
        .env("WEFT_CONTROLLER", &c.address)
        .env("WEFT_TLS_DIR", &short)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("expires in 9 days") && stderr.contains("weft pki issue --admin"), "{stderr}");
}

/// A controller listed first that hangs (SIGSTOP, as a paused VM): its kernel still accepts
/// the connection, but nothing answers, the TLS handshake included. `weft` gives it a short
/// while, then carries on with the next controller, well within its own timeout.
#[test]
fn a_hanging_controller_is_passed_over_for_the_next() {
    let good = start();
    // A second member with a credential from the same CA, a cluster of its own.
    let pki = good._dir.path().join("pki");
    let ip = weft_testbed::own_loopback(2);
    let issued = Command::new(WEFT)
        .args(["pki", "issue", "--controller", &format!("2={ip}"), "--dir"])
        .arg(&pki)
        .arg("--out")
        .arg(pki.join("controller-2"))
        .output()
        .unwrap();
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let address = weft_testbed::free_address_on(&ip);
    let hanging = weft_testbed::Process(
        Command::new(controller_binary())
            .args(["--listen", &address, "--data-dir"])
            .arg(good._dir.path().join("data-2"))
            .arg("--tls-dir")
            .arg(pki.join("controller-2"))
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = Command::new(WEFT)
            .args(["cluster", "status"])
            .env("WEFT_CONTROLLER", &address)
            .env("WEFT_TLS_DIR", &good.tls)
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        if probe.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the second member did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    weft_testbed::signal(hanging.0.id(), "STOP");

    let began = Instant::now();
    let mut create = weft_testbed::Process(
        Command::new(WEFT)
            .args(["--timeout", "10", "network", "create", "passed-over"])
            .env("WEFT_CONTROLLER", format!("{address},{}", good.address))
            .env("WEFT_TLS_DIR", &good.tls)
            .env("HOME", "/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = loop {
        if let Some(status) = create.0.try_wait().unwrap() {
            break status;
        }
        assert!(began.elapsed() < Duration::from_secs(8), "weft still waits on the hanging controller");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut create.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(ok(&good, &["network", "inspect", "passed-over"]).contains("passed-over"));
}
