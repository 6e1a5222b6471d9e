//! weft as Docker's network and IPAM driver, with the real dockerd from Debian: every host a
//! network namespace with a mount namespace of its own, where its dockerd and its weft-node
//! (serving `/run/docker/plugins/weft.sock`) both run, as on a real machine. Containers are
//! busybox-static imported as an image. Needs root and docker.io; skips loudly without either.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lab::dockerd::Dockerd;
use lab::*;
use weft_api::pb;
use weft_testbed::root_or_skip;

const IMAGE: &str = "weft-busybox:test";

/// busybox-static as an image, with the applets the tests use.
fn import_busybox(dockerd: &Dockerd) {
    let root = dockerd.dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "ping", "wget", "nslookup", "ip", "cat", "hostname"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    dockerd.import(&root, IMAGE);
}

fn address_in(dockerd: &Dockerd, container: &str, network: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    dockerd.run(&["inspect", "-f", &format, container])
}

/// A persistent mount namespace at `file` with a private, empty `/run/docker/plugins`.
fn mount_namespace(file: &Path) {
    std::fs::write(file, b"").unwrap();
    weft_testbed::run(
        "unshare",
        &[
            &format!("--mount={}", file.display()),
            "--propagation",
            "private",
            "sh",
            "-c",
            "mkdir -p /run/docker/plugins && mount -t tmpfs weft-plugins /run/docker/plugins",
        ],
    );
}

/// Unmounts what [`mount_namespace`] and the directory for them mounted.
struct Mounts(PathBuf);

impl Drop for Mounts {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = Command::new("umount").arg(entry.path()).status();
        }
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_on_two_hosts_share_a_weft_network() {
    if !root_or_skip("docker_containers_on_two_hosts_share_a_weft_network") {
        return;
    }
    if !Dockerd::installed() {
        eprintln!(
            "\n#### dockerd is not installed: the Docker plugin test is SKIPPED (apt-get install docker.io) ####\n"
        );
        return;
    }
    let mut lab = Lab::new(2);
    let dir = tempfile::tempdir().unwrap();
    let mounts_dir = dir.path().join("mnt");
    std::fs::create_dir_all(&mounts_dir).unwrap();
    weft_testbed::run("mount", &["--bind", mounts_dir.to_str().unwrap(), mounts_dir.to_str().unwrap()]);
    let _mounts = Mounts(mounts_dir.clone());
    weft_testbed::run("mount", &["--make-private", mounts_dir.to_str().unwrap()]);
    let mut dockerds = Vec::new();
    for i in 0..2 {
        let mount_ns = mounts_dir.join(format!("h{}", i + 1));
        mount_namespace(&mount_ns);
        let docker_dir = dir.path().join(format!("docker{}", i + 1));
        std::fs::create_dir_all(&docker_dir).unwrap();
        lab.kill_agent(i);
        lab.hosts[i].mount_ns = Some(mount_ns.clone());
        let api = docker_dir.join("docker.sock");
        lab.start_agent_with(
            i,
            &[
                "--docker-plugin-socket",
                "/run/docker/plugins/weft.sock",
                "--docker-api-socket",
                api.to_str().unwrap(),
            ],
        );
        lab.agent(i).await;
        let enter = [format!("--mount={}", mount_ns.display()), format!("--net={}", lab.hosts[i].ns.path())];
        // weft does the forwarding and NAT of its networks; dockerd leaves the host alone.
        // Names Docker's 127.0.0.11 does not know go to weft's DNS address, as the install
        // script sets in daemon.json.
        let dockerd = Dockerd::start(
            &enter,
            &docker_dir,
            &["--iptables=false", "--ip-forward=false", "--bridge=none", "--dns", "169.254.53.53"],
        );
        import_busybox(&dockerd);
        dockerds.push(dockerd);
    }
    let (d1, d2) = (&dockerds[0], &dockerds[1]);

    // Created through Docker on h1: a weft network with a cluster-unique subnet.
    d1.run(&["network", "create", "-d", "weft", "--ipam-driver", "weft", "app"]);
    let pool = d1.run(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "app"]);
    let weft_network = lab.networks(move |mut client| {
        Box::pin(async move {
            client.list_networks(pb::ListNetworksRequest::default()).await.unwrap().into_inner().networks
        })
    });
    let weft_network =
        weft_network.into_iter().find(|n| n.ipam_config.iter().any(|c| c.subnet == pool)).unwrap();
    // Docker tells a plugin no name; the agent asks dockerd and names the weft network so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = weft_network.id.clone();
    loop {
        let id = id.clone();
        let name = lab.networks(move |mut client| {
            Box::pin(async move {
                let listed =
                    client.list_networks(pb::ListNetworksRequest::default()).await.unwrap().into_inner();
                listed.networks.into_iter().find(|n| n.id == id).map(|n| n.name).unwrap_or_default()
            })
        });
        if name == "app" {
            break;
        }
        assert!(Instant::now() < deadline, "the weft network is still named {name:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // h2's agent creates it in h2's dockerd by itself, with its subnet (so --ip works there).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d2.try_run(&["network", "inspect", "app"]).status.success() {
        assert!(Instant::now() < deadline, "h2's dockerd never got network app");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(d2.run(&["network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", "app"]), pool);
    // Creating it again there meets Docker's own refusal.
    let again = d2.fails(&["network", "create", "-d", "weft", "--ipam-driver", "weft", "app"]);
    assert!(again.contains("already exists"), "{again}");

    d1.run(&["run", "-d", "--name", "alpha", "--network", "app", IMAGE, "sleep", "1000"]);
    d2.run(&[
        "run",
        "-d",
        "--name",
        "bravo",
        "--network",
        "app",
        "--network-alias",
        "api",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let (a_ip, b_ip) = (address_in(d1, "alpha", "app"), address_in(d2, "bravo", "app"));
    assert_ne!(a_ip, b_ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d1.try_run(&["exec", "alpha", "ping", "-c", "1", "-W", "1", &b_ip]).status.success() {
        assert!(Instant::now() < deadline, "alpha (h1) cannot ping bravo (h2) at {b_ip}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d2.try_run(&["exec", "bravo", "ping", "-c", "1", "-W", "1", &a_ip]).status.success());
    let registered = lab.endpoints();
    let on = |ip: &str| {
        registered.iter().find(|e| e.ipv4_address.starts_with(&format!("{ip}/"))).map(|e| e.node.clone())
    };
    assert_eq!((on(&a_ip).as_deref(), on(&b_ip).as_deref()), (Some("h1"), Some("h2")), "{registered:?}");

    // Names and aliases reach the registry, and weft's DNS answers them on the other host.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .endpoints()
        .iter()
        .any(|e| e.container_name == "bravo" && e.aliases.contains(&"api".to_string()))
    {
        assert!(
            Instant::now() < deadline,
            "bravo's name and alias did not reach the registry: {:?}",
            lab.endpoints()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Through Docker's own resolver, as the container is set up: 127.0.0.11 does not know
    // a container of another host and forwards to weft, which does.
    assert!(d1.run(&["exec", "alpha", "cat", "/etc/resolv.conf"]).contains("127.0.0.11"));
    for name in ["bravo", "api", "bravo.app"] {
        let answer = d1.run(&["exec", "alpha", "nslookup", name]);
        assert!(answer.contains(&b_ip), "{name} through Docker's resolver on h1: {answer}");
    }
    assert!(d1.try_run(&["exec", "alpha", "ping", "-c", "1", "-W", "2", "api"]).status.success());

    // An address another host holds is refused, which Docker alone would not do.
    let refused =
        d2.fails(&["run", "-d", "--name", "dup", "--network", "app", "--ip", &a_ip, IMAGE, "sleep", "1"]);
    assert!(refused.contains("remote:") && refused.contains(&a_ip), "{refused}");
    let free_ip = format!("{}.200", a_ip.rsplit_once('.').unwrap().0);
    d2.run(&["run", "-d", "--name", "charlie", "--network", "app", "--ip", &free_ip, IMAGE, "sleep", "1000"]);
    assert!(d1.try_run(&["exec", "alpha", "ping", "-c", "1", "-W", "2", &free_ip]).status.success());

    // Removing a container releases its address everywhere.
    d1.run(&["rm", "-f", "alpha"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.endpoints().iter().any(|e| e.ipv4_address.starts_with(&format!("{a_ip}/"))) {
        assert!(Instant::now() < deadline, "alpha's address was not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
