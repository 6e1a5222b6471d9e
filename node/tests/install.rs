//! deploy/install-node.sh: installs the agent's binary, unit and settings (the join token
//! kept 0600), and --uninstall removes them with everything the agent made. Run under a
//! temporary root and inside a namespace of its own, so nothing on the machine is touched.
//! Needs root.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use weft_testbed::{Netns, root_or_skip};

const NODE: &str = env!("CARGO_BIN_EXE_weft-node");

fn script(host: &Netns, root: &Path, args: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/install-node.sh");
    Command::new("ip")
        .args(["netns", "exec", &host.name, "bash"])
        .arg(script)
        .arg("--root")
        .arg(root)
        .arg("--no-start")
        .args(args)
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_node_install_puts_everything_in_place_and_uninstall_takes_it_all_away() {
    if !root_or_skip("the_node_install_puts_everything_in_place_and_uninstall_takes_it_all_away") {
        return;
    }
    let host = Netns::new("h");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let out = script(
        &host,
        r,
        &[
            "--binary",
            NODE,
            "--controllers",
            "10.0.0.1:7001,10.0.0.2:7001",
            "--join-token",
            "weft1.0123456789abcdef.s3cret",
            "--ca-fingerprint",
            &"ab".repeat(32),
            "--name",
            "edge-1",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&r.join("usr/local/bin/weft-node")), 0o755);
    assert_eq!(mode(&r.join("etc/weft/node.env")), 0o600, "the join token is a secret");
    assert_eq!(mode(&r.join("var/lib/weft")), 0o700);
    let env = std::fs::read_to_string(r.join("etc/weft/node.env")).unwrap();
    assert!(
        env.contains("WEFT_CONTROLLER=10.0.0.1:7001,10.0.0.2:7001\n")
            && env.contains("WEFT_JOIN_TOKEN=weft1.")
            && env.contains("WEFT_NODE_NAME=edge-1"),
        "{env}"
    );
    let unit = std::fs::read_to_string(r.join("etc/systemd/system/weft-node.service")).unwrap();
    assert!(
        unit.contains("EnvironmentFile=/etc/weft/node.env")
            && unit.contains("ExecStart=/usr/local/bin/weft-node"),
        "{unit}"
    );

    // Missing settings are refused, naming them.
    let refused = script(&host, r, &["--binary", NODE, "--controllers", "10.0.0.1:7001"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--join-token"));

    // What an agent leaves behind is removed too: its nftables tables, here.
    host.exec(&["nft", "add", "table", "inet", "weft"]);
    let out = script(&host, r, &["--uninstall"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for gone in [
        "usr/local/bin/weft-node",
        "etc/weft/node.env",
        "etc/systemd/system/weft-node.service",
        "var/lib/weft",
    ] {
        assert!(!r.join(gone).exists(), "{gone} is still there");
    }
    let tables = host.exec(&["nft", "list", "tables"]);
    assert!(!tables.contains("weft"), "{tables}");
}

/// `--docker`: the agent serves dockerd's plugin, and dockerd's daemon.json sends unknown
/// names to weft's DNS first, the rest of the file kept; uninstall takes the address out again.
#[test]
fn the_docker_install_points_dockerd_at_weft_and_uninstall_takes_it_back() {
    if !root_or_skip("the_docker_install_points_dockerd_at_weft_and_uninstall_takes_it_back") {
        return;
    }
    let host = Netns::new("h");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let daemon_json = r.join("etc/docker/daemon.json");
    std::fs::create_dir_all(daemon_json.parent().unwrap()).unwrap();
    std::fs::write(&daemon_json, r#"{"log-driver": "journald", "dns": ["192.0.2.53"]}"#).unwrap();
    let fingerprint = "ab".repeat(32);
    let install = || {
        let out = script(
            &host,
            r,
            &[
                "--binary",
                NODE,
                "--controllers",
                "10.0.0.1:7001",
                "--join-token",
                "weft1.0123456789abcdef.s3cret",
                "--ca-fingerprint",
                &fingerprint,
                "--docker",
            ],
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let config =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(&daemon_json).unwrap()).unwrap() };
    install();
    let env = std::fs::read_to_string(r.join("etc/weft/node.env")).unwrap();
    assert!(env.contains("WEFT_DOCKER_PLUGIN_SOCKET=/run/docker/plugins/weft.sock\n"), "{env}");
    assert_eq!(config()["dns"], serde_json::json!(["169.254.53.53", "192.0.2.53"]));
    assert_eq!(config()["log-driver"], "journald");
    // Again: nothing doubled.
    install();
    assert_eq!(config()["dns"], serde_json::json!(["169.254.53.53", "192.0.2.53"]));

    let out = script(&host, r, &["--uninstall"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(config()["dns"], serde_json::json!(["192.0.2.53"]));
    assert_eq!(config()["log-driver"], "journald");
}
