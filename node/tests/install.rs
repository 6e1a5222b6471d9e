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

/// `--cni`: weft-cni as the CNI plugin type `weft` where runtimes look, and an example network
/// configuration weft-cni accepts; uninstall takes both away.
#[test]
fn the_cni_install_places_the_plugin_and_an_example_and_uninstall_takes_them_away() {
    if !root_or_skip("the_cni_install_places_the_plugin_and_an_example_and_uninstall_takes_them_away") {
        return;
    }
    let host = Netns::new("h");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let cni_binary = weft_testbed::workspace_binary(NODE, "weft-cni");
    let fingerprint = "ab".repeat(32);
    let mut args = vec![
        "--binary",
        NODE,
        "--controllers",
        "10.0.0.1:7001",
        "--join-token",
        "weft1.0123456789abcdef.s3cret",
        "--ca-fingerprint",
        &fingerprint,
        "--cni",
    ];
    // Without the plugin's binary, refused naming it.
    let refused = script(&host, r, &[args.as_slice(), &["--cni-binary", "/nonexistent/weft-cni"]].concat());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("/nonexistent/weft-cni"));
    args.extend_from_slice(&["--cni-binary", cni_binary.to_str().unwrap()]);
    let out = script(&host, r, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plugin = r.join("opt/cni/bin/weft");
    assert_eq!(mode(&plugin), 0o755);
    assert_eq!(std::fs::read(&plugin).unwrap(), std::fs::read(&cni_binary).unwrap());
    let example: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.join("etc/cni/net.d/weft.conflist.example")).unwrap())
            .unwrap();
    check_plugin_conf(&example, "weft");

    let out = script(&host, r, &["--uninstall"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!plugin.exists() && !r.join("etc/cni/net.d/weft.conflist.example").exists());
}

/// The conflist's weft plugin is one weft-cni takes, of type `installed_as` (the binary's
/// name where the runtime looks), talking to the agent's default socket.
fn check_plugin_conf(conflist: &serde_json::Value, installed_as: &str) {
    let plugin = conflist["plugins"].as_array().and_then(|p| p.first()).expect("a plugins list");
    assert_eq!(plugin["type"], installed_as);
    let mut conf = plugin.clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    let parsed = weft_cni::NetConf::parse(conf.to_string().as_bytes()).unwrap();
    parsed.check_version().unwrap();
    assert_eq!(parsed.socket(), Path::new("/run/weft/agent.sock"), "the agent's default --socket");
}

/// deploy/kubernetes/weft-node.yaml, as far as it can be checked without a cluster: it
/// parses; the init container installs the image's weft-cni under the plugin type the
/// configuration names, and that configuration where the runtime reads it; the agent serves
/// its socket where the plugin looks, in a host directory the plugin (run on the node) sees.
#[test]
fn the_kubernetes_manifest_agrees_with_itself_and_the_image() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/weft-node.yaml");
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(&manifest)
        .output()
        .expect("python3 (with python3-yaml) reads the manifest");
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    let documents: Vec<serde_json::Value> = serde_json::from_slice(&parsed.stdout).unwrap();
    let kind = |k: &str| documents.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    let (config_map, daemon_set) = (kind("ConfigMap"), kind("DaemonSet"));
    let pod = &daemon_set["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(
        daemon_set["spec"]["selector"]["matchLabels"], daemon_set["spec"]["template"]["metadata"]["labels"],
        "the selector matches the pods"
    );
    let host_path = |volume: &str| -> String {
        let volumes = pod["volumes"].as_array().unwrap();
        let found =
            volumes.iter().find(|v| v["name"] == volume).unwrap_or_else(|| panic!("no volume {volume}"));
        found["hostPath"]["path"].as_str().map(str::to_string).unwrap_or_default()
    };
    // A container's path → the node's path, through its volume mounts.
    let on_node = |container: &serde_json::Value, path: &str| -> Option<String> {
        container["volumeMounts"].as_array().unwrap().iter().find_map(|m| {
            let mount = m["mountPath"].as_str().unwrap();
            let rest = path.strip_prefix(mount)?;
            let host = host_path(m["name"].as_str().unwrap());
            (!host.is_empty()).then(|| format!("{host}{rest}"))
        })
    };
    let install = &pod["initContainers"][0];
    let script = install["command"].as_array().unwrap().last().unwrap().as_str().unwrap().to_string();
    let (conf_name, conflist_text) =
        config_map["data"].as_object().unwrap().iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
    let conflist: serde_json::Value = serde_json::from_str(conflist_text.as_str().unwrap()).unwrap();
    // The binary: the image's (the Dockerfile copies weft-cni there) → /opt/cni/bin/<type>.
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/container/Dockerfile"))
            .unwrap();
    assert!(
        dockerfile.contains("/src/target/release/weft-cni") && script.contains("/usr/local/bin/weft-cni ")
    );
    let binary_target = script.split_whitespace().find(|w| w.starts_with("/host/opt/cni/bin/")).unwrap();
    assert_eq!(on_node(install, binary_target).as_deref(), Some("/opt/cni/bin/weft"));
    let installed_as = binary_target.rsplit('/').next().unwrap();
    check_plugin_conf(&conflist, installed_as);
    // The configuration: from the ConfigMap's mount → /etc/cni/net.d/<key>.
    let conf_target = script.split_whitespace().find(|w| w.starts_with("/host/etc/cni/net.d/")).unwrap();
    assert_eq!(on_node(install, conf_target), Some(format!("/etc/cni/net.d/{conf_name}")));
    assert!(script.contains(&format!("/etc/weft-cni/{conf_name} ")), "{script}");
    // The socket: the agent's --socket, on the node where the plugin's conf says.
    let agent = &pod["containers"][0];
    let socket = agent["command"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("--socket="))
        .expect("the agent's --socket");
    assert_eq!(on_node(agent, socket).as_deref(), conflist["plugins"][0]["socket"].as_str());
    // Pods' namespaces reach the agent as the runtime mounts them.
    assert!(on_node(agent, "/run/netns/cni-1").is_some(), "pods' namespaces are not visible to the agent");
}

/// The systemd units as systemd reads them: `systemd-analyze verify` reports no unknown key,
/// bad value or missing dependency. What it says of the binaries themselves is left out:
/// they are not installed at /usr/local/bin on the machine running the tests.
#[test]
fn the_systemd_units_load_without_a_complaint() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    for unit in ["weft-controller.service", "weft-node.service"] {
        let path = units.join(unit);
        let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install Debian's systemd package (tests/run.sh does)")
        });
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let binary =
            format!("{unit}: Command /usr/local/bin/{} is not executable", unit.trim_end_matches(".service"));
        let complaints: Vec<&str> = said.lines().filter(|line| !line.starts_with(&binary)).collect();
        assert!(complaints.is_empty(), "{}:\n{}", path.display(), complaints.join("\n"));
    }
}
