//! `weft-cni` invoked exactly as a runtime invokes a CNI plugin (the `CNI_*` environment, the
//! network configuration on stdin, the answer on stdout) against real agents: results in the
//! configuration's version, idempotent ADD and DEL, CHECK against the kernel, STATUS and GC,
//! the spec's error codes, concurrent ADDs, and an agent that is down. Needs root; skips
//! loudly otherwise.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use lab::podman::{IMAGE, Podman};
use lab::*;
use serde_json::{Value, json};
use weft_api::pb;
use weft_testbed::{Netns, root_or_skip};

/// One run of the plugin: its exit status and its stdout as JSON (`Null` when empty).
struct Answer {
    ok: bool,
    json: Value,
}

impl Answer {
    /// The CNI error code, failing the test if the call succeeded.
    fn code(&self) -> u64 {
        assert!(!self.ok, "expected a CNI error, got {}", self.json);
        self.json["code"].as_u64().unwrap_or_else(|| panic!("no code in {}", self.json))
    }
}

fn cni(command: &str, container: &str, netns: &str, args: &str, conf: &Value) -> Answer {
    cni_raw(command, container, netns, args, conf.to_string().as_bytes())
}

fn cni_raw(command: &str, container: &str, netns: &str, args: &str, stdin: &[u8]) -> Answer {
    let mut child = Command::new(weft_testbed::workspace_binary(NODE, "weft-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json = if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
    Answer { ok: out.status.success(), json }
}

fn conf(version: &str, network: &str, socket: &Path) -> Value {
    json!({"cniVersion": version, "name": network, "type": "weft", "network": network, "socket": socket})
}

/// A 64-hex container id, as runtimes make them.
fn container_id(n: usize) -> String {
    format!("{n:08x}").repeat(8)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_plugin_follows_the_spec_against_a_real_agent() {
    if !root_or_skip("cni_plugin_follows_the_spec_against_a_real_agent") {
        return;
    }
    let mut lab = Lab::new(2);
    lab.agent(0).await;
    lab.agent(1).await;
    lab.create(pb::CreateNetworkRequest { name: "app".into(), enable_ipv6: true, ..Default::default() });
    let socket = lab.hosts[0].socket.clone();
    let v1 = conf("1.0.0", "app", &socket);

    // VERSION, before anything else as podman does.
    let version = cni("VERSION", "", "", "", &json!({"cniVersion": "1.0.0"}));
    assert!(version.ok && version.json["supportedVersions"].as_array().unwrap().contains(&json!("0.4.0")));

    // ADD: the interface is in the container with the result's addresses.
    let web = Netns::new("cni-web");
    let web_id = container_id(1);
    let add = cni("ADD", &web_id, &web.path(), "IgnoreUnknown=1;K8S_POD_NAME=web", &v1);
    assert!(add.ok, "{}", add.json);
    let result = &add.json;
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], "eth0");
    assert_eq!(result["interfaces"][0]["sandbox"], json!(web.path()));
    let v4 = result["ips"][0]["address"].as_str().unwrap().to_string();
    let v6 = result["ips"][1]["address"].as_str().unwrap().to_string();
    assert!(result["ips"][0].get("version").is_none(), "1.0.0 results carry no version: {result}");
    let shown = web.exec(&["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains(&v4) && shown.contains(&v6), "{shown} lacks {v4} or {v6}");
    let gateway = result["ips"][0]["gateway"].as_str().unwrap();
    assert_eq!(result["dns"]["nameservers"][0], gateway);
    assert_eq!(result["routes"][0], json!({"dst": "0.0.0.0/0", "gw": gateway}));
    assert!(lab.endpoints().iter().any(|e| e.container_name == "web" && e.node == "h1"));

    // The same ADD again (a runtime's retry) answers the same; CHECK finds it all in place.
    let again = cni("ADD", &web_id, &web.path(), "IgnoreUnknown=1;K8S_POD_NAME=web", &v1);
    assert!(again.ok, "{}", again.json);
    assert_eq!(again.json["ips"], result["ips"]);
    let mut with_prev = v1.clone();
    with_prev["prevResult"] = result.clone();
    let check = cni("CHECK", &web_id, &web.path(), "", &with_prev);
    assert!(check.ok && check.json.is_null(), "{}", check.json);
    // CHECK sees what changed in the kernel.
    web.exec(&["ip", "addr", "del", &v4, "dev", "eth0"]);
    let broken = cni("CHECK", &web_id, &web.path(), "", &with_prev);
    assert_eq!(broken.code(), 100);
    assert!(broken.json["msg"].as_str().unwrap().contains(&v4), "{}", broken.json);

    // Across hosts, in an older version's shape.
    let db = Netns::new("cni-db");
    let old = conf("0.4.0", "app", &lab.hosts[1].socket);
    let db_add = cni("ADD", &container_id(2), &db.path(), "", &old);
    assert!(db_add.ok, "{}", db_add.json);
    assert_eq!(
        (db_add.json["cniVersion"].as_str(), db_add.json["ips"][0]["version"].as_str()),
        (Some("0.4.0"), Some("4"))
    );
    let db_ip = db_add.json["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    web.exec(&["ip", "addr", "add", &v4, "dev", "eth0"]);
    assert!(reaches(&web, &db_ip).await, "web does not reach db across hosts");

    // DEL is idempotent, and works once the namespace is gone.
    assert!(cni("DEL", &web_id, &web.path(), "", &v1).ok);
    assert!(cni("DEL", &web_id, &web.path(), "", &v1).ok);
    assert!(!lab.endpoints().iter().any(|e| e.container_name == "web"));
    drop(db);
    let gone = cni("DEL", &container_id(2), "/run/netns/cni-db-gone", "", &old);
    assert!(gone.ok, "{}", gone.json);
    assert!(cni("DEL", &container_id(9), "", "", &v1).ok, "DEL of something never added");

    // Bad input: the spec's codes, nothing left behind.
    let c = Netns::new("cbad");
    let unknown = cni("ADD", &container_id(3), &c.path(), "", &conf("1.0.0", "nope", &socket));
    assert_eq!(unknown.code(), 7);
    assert!(unknown.json["msg"].as_str().unwrap().contains("nope"), "{}", unknown.json);
    assert_eq!(cni_raw("ADD", &container_id(3), &c.path(), "", b"{\"cniVersion\":").code(), 6);
    let ancient = cni("ADD", &container_id(3), &c.path(), "", &conf("0.2.0", "app", &socket));
    assert_eq!((ancient.code(), ancient.json["cniVersion"].as_str()), (1, Some("0.2.0")));
    assert_eq!(cni("ADD", &container_id(3), "", "", &v1).code(), 4);
    assert_eq!(cni("ADD", &container_id(3), &c.path(), "BOGUS=1", &v1).code(), 4);
    let bad_ip = cni("ADD", &container_id(3), &c.path(), "IgnoreUnknown=1;IP=10.255.255.300", &v1);
    assert_eq!(bad_ip.code(), 7);
    assert!(lab.endpoints().is_empty(), "a refused ADD left an endpoint: {:?}", lab.endpoints());
    assert!(c.exec(&["ip", "-o", "link"]).lines().count() == 1, "a refused ADD left an interface");

    // CNI 1.1: STATUS while the agent answers and when it does not; GC of what the runtime
    // no longer has.
    let v11 = conf("1.1.0", "app", &socket);
    assert!(cni("STATUS", "", "", "", &v11).ok);
    let (keep, stale) = (Netns::new("ckeep"), Netns::new("cstale"));
    assert!(cni("ADD", &container_id(4), &keep.path(), "", &v11).ok);
    assert!(cni("ADD", &container_id(5), &stale.path(), "", &v11).ok);
    let mut gc = v11.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": container_id(4), "ifname": "eth0"}]);
    assert!(cni("GC", "", "", "", &gc).ok);
    let left: Vec<String> = lab.endpoints().into_iter().map(|e| e.container_id).collect();
    assert_eq!(left, vec![container_id(4)]);

    // An agent that is down: try again later (11), STATUS not available (50); back, it works.
    lab.kill_agent(0);
    assert_eq!(cni("STATUS", "", "", "", &v11).code(), 50);
    let later = cni("ADD", &container_id(6), &stale.path(), "", &v1);
    assert_eq!(later.code(), 11);
    lab.start_agent(0);
    lab.agent(0).await;
    let back = cni("ADD", &container_id(6), &stale.path(), "", &v1);
    assert!(back.ok, "{}", back.json);
}

/// A dozen containers started at once, as a runtime does for a pod set: every ADD succeeds
/// with an address of its own, and every DEL releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_adds_run_concurrently() {
    if !root_or_skip("cni_adds_run_concurrently") {
        return;
    }
    let lab = Lab::new(1);
    lab.agent(0).await;
    lab.create_network("app", false);
    let v1 = conf("1.0.0", "app", &lab.hosts[0].socket);
    let containers: Vec<Netns> = (0..12).map(|i| Netns::new(&format!("cni-c{i}"))).collect();
    let addresses: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let v1 = &v1;
                scope.spawn(move || {
                    let args = format!("IgnoreUnknown=1;K8S_POD_NAME=c{i}");
                    let add = cni("ADD", &container_id(100 + i), &c.path(), &args, v1);
                    assert!(add.ok, "{}", add.json);
                    add.json["ips"][0]["address"].as_str().unwrap().to_string()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let distinct: std::collections::BTreeSet<&String> = addresses.iter().collect();
    assert_eq!(distinct.len(), containers.len(), "{addresses:?}");
    std::thread::scope(|scope| {
        for (i, c) in containers.iter().enumerate() {
            let v1 = &v1;
            scope.spawn(move || assert!(cni("DEL", &container_id(100 + i), &c.path(), "", v1).ok));
        }
    });
    assert!(lab.endpoints().is_empty(), "{:?}", lab.endpoints());
}

/// Waits until `container` (on `podman`) pings `target`.
async fn podman_pings(podman: &Podman, container: &str, target: &str) {
    eventually(&format!("{container} pings {target}"), std::time::Duration::from_secs(15), || {
        podman.try_run(&["exec", container, "ping", "-c", "1", "-W", "1", target]).status.success()
    })
    .await;
}

/// podman from Debian with its CNI backend on two namespace hosts, containers on a weft
/// network through weft-cni: names and aliases across hosts through the resolver the result
/// gave, a published port reached from the other host, restart and `network reload` keeping
/// the address, a plugin chained after weft's, `rm -f` releasing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_containers_on_two_hosts_share_a_weft_network() {
    if !root_or_skip("podman_containers_on_two_hosts_share_a_weft_network") {
        return;
    }
    if !Podman::installed() {
        eprintln!(
            "\n#### podman is not installed: podman_containers_on_two_hosts_share_a_weft_network is SKIPPED (apt-get install podman containernetworking-plugins) ####\n"
        );
        return;
    }
    let lab = Lab::new(2);
    lab.agent(0).await;
    lab.agent(1).await;
    lab.create_network("app", false);
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (Podman::new(&lab, 0, dir.path(), &["app"]), Podman::new(&lab, 1, dir.path(), &["app"]));
    let detached = |podman: &Podman, name: &str, extra: &[&str]| {
        let mut args = vec!["run", "-d", "--name", name, "--network", "app"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sleep", "1000"]);
        podman.run(&args);
    };
    detached(&p1, "web", &["--network-alias", "api"]);
    detached(&p2, "client", &[]);
    let web_ip = p1.address_in("web", "app");
    assert!(lab.endpoints().iter().any(|e| e.container_name == "web"
        && e.node == "h1"
        && e.ipv4_address.starts_with(&format!("{web_ip}/"))));
    // weft's DNS is the container's resolver (the result's dns), answering across hosts.
    let gateway = lab.endpoints()[0].ipv4_address.rsplit_once('.').unwrap().0.to_string() + ".1";
    assert!(p2.run(&["exec", "client", "cat", "/etc/resolv.conf"]).contains(&gateway));
    for name in ["web", "api", "web.app"] {
        let answer = p2.run(&["exec", "client", "nslookup", name]);
        assert!(answer.contains(&web_ip), "{name}: {answer}");
    }
    podman_pings(&p2, "client", "web").await;

    // -p: podman passes the mapping to weft-cni, weft publishes it on h2.
    p2.run(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "app",
        "-p",
        "8080:80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let h2 = format!("{UNDERLAY}.2");
    eventually("h1 reaches srv through h2:8080", std::time::Duration::from_secs(15), || {
        lab.hosts[0]
            .ns
            .try_exec(&["wget", "-q", "-O", "-", "-T", "2", &format!("http://{h2}:8080/")])
            .stdout
            .starts_with(b"served by weft")
    })
    .await;

    // restart (DEL, then ADD in a new namespace) and network reload (DEL, ADD in the same):
    // the address stays and the container is reachable again.
    p1.run(&["restart", "-t", "0", "web"]);
    assert_eq!(p1.address_in("web", "app"), web_ip);
    podman_pings(&p2, "client", "web").await;
    p1.run(&["network", "reload", "web"]);
    assert_eq!(p1.address_in("web", "app"), web_ip);
    podman_pings(&p2, "client", "api").await;

    // Chained after weft, the reference tuning plugin finds weft's interface in prevResult.
    p1.network("tuned", "app", &[json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}})]);
    p1.run(&["run", "-d", "--name", "tuned", "--network", "tuned", IMAGE, "sleep", "1000"]);
    assert_eq!(p1.run(&["exec", "tuned", "cat", "/proc/sys/net/core/somaxconn"]), "512");
    podman_pings(&p2, "client", &p1.address_in("tuned", "tuned")).await;

    // rm -f releases the address everywhere.
    p1.run(&["rm", "-f", "-t", "0", "web"]);
    eventually("web's address released", std::time::Duration::from_secs(10), || {
        !lab.endpoints().iter().any(|e| e.container_name == "web")
    })
    .await;
}
