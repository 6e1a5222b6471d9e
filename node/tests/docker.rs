//! weft as Docker's network and IPAM driver, with the real dockerd from Debian: every host a
//! network namespace with a mount namespace of its own, where its dockerd and its weft-node
//! (serving `/run/docker/plugins/weft.sock`) both run, as on a real machine. Containers are
//! busybox-static imported as an image. Needs root and docker.io; skips loudly without either.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lab::*;
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_testbed::root_or_skip;

const IMAGE: &str = "weft-busybox:test";

/// One host's dockerd, in the host's own mount and network namespaces.
struct Dockerd {
    socket: String,
    dir: PathBuf,
    daemon: Option<std::process::Child>,
}

impl Dockerd {
    fn start(mount_ns: &Path, netns: &str, dir: &Path) -> Dockerd {
        let socket = format!("unix://{}/docker.sock", dir.display());
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let daemon = Command::new("nsenter")
            .arg(format!("--mount={}", mount_ns.display()))
            .arg(format!("--net={netns}"))
            .arg("dockerd")
            .arg(format!("--data-root={}/data", dir.display()))
            .arg(format!("--exec-root={}/exec", dir.display()))
            .arg(format!("--pidfile={}/docker.pid", dir.display()))
            .arg(format!("--host={socket}"))
            // weft does the forwarding and NAT of its networks; dockerd leaves the host alone.
            .args(["--iptables=false", "--ip-forward=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let dockerd = Dockerd { socket, dir: dir.to_path_buf(), daemon: Some(daemon) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dockerd.try_run(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "dockerd did not come up: {}", dockerd.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn try_run(&self, args: &[&str]) -> Output {
        Command::new("docker").arg("-H").arg(&self.socket).args(args).output().unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(!out.status.success(), "docker {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    /// busybox-static as an image, with the applets the tests use.
    fn import_busybox(&self) {
        let root = self.dir.join("rootfs");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "ping", "wget", "nslookup", "ip", "cat", "hostname"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let tarball = self.dir.join("rootfs.tar");
        weft_testbed::run("tar", &["-C", root.to_str().unwrap(), "-cf", tarball.to_str().unwrap(), "."]);
        self.run(&["import", tarball.to_str().unwrap(), IMAGE]);
    }

    fn ip_of(&self, container: &str, network: &str) -> String {
        self.run(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            container,
        ])
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let listed = self.try_run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = self.try_run(&["rm", "-f", id]);
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
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

fn endpoints(lab: &Lab) -> Vec<pb::Endpoint> {
    lab.with_controller(|channel| {
        Box::pin(async move {
            EndpointServiceClient::new(channel)
                .list_endpoints(pb::ListEndpointsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .endpoints
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_on_two_hosts_share_a_weft_network() {
    if !root_or_skip("docker_containers_on_two_hosts_share_a_weft_network") {
        return;
    }
    if weft_testbed::output("sh", &["-c", "command -v dockerd && command -v docker"]).stdout.is_empty() {
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
        let dockerd = Dockerd::start(&mount_ns, &lab.hosts[i].ns.path(), &docker_dir);
        dockerd.import_busybox();
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
    // The same network on h2 (until agents create it by themselves).
    d2.run(&[
        "network",
        "create",
        "-d",
        "weft",
        "--ipam-driver",
        "weft",
        "--ipam-opt",
        &format!("weft.network={}", weft_network.id),
        // Docker takes --ip only on networks whose subnet the user gave.
        "--subnet",
        &pool,
        "app",
    ]);

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
    let (a_ip, b_ip) = (d1.ip_of("alpha", "app"), d2.ip_of("bravo", "app"));
    assert_ne!(a_ip, b_ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d1.try_run(&["exec", "alpha", "ping", "-c", "1", "-W", "1", &b_ip]).status.success() {
        assert!(Instant::now() < deadline, "alpha (h1) cannot ping bravo (h2) at {b_ip}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d2.try_run(&["exec", "bravo", "ping", "-c", "1", "-W", "1", &a_ip]).status.success());
    let registered = endpoints(&lab);
    let on = |ip: &str| {
        registered.iter().find(|e| e.ipv4_address.starts_with(&format!("{ip}/"))).map(|e| e.node.clone())
    };
    assert_eq!((on(&a_ip).as_deref(), on(&b_ip).as_deref()), (Some("h1"), Some("h2")), "{registered:?}");

    // Names and aliases reach the registry, and weft's DNS answers them on the other host.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !endpoints(&lab)
        .iter()
        .any(|e| e.container_name == "bravo" && e.aliases.contains(&"api".to_string()))
    {
        assert!(
            Instant::now() < deadline,
            "bravo's name and alias did not reach the registry: {:?}",
            endpoints(&lab)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway =
        d1.run(&["inspect", "-f", "{{(index .NetworkSettings.Networks \"app\").Gateway}}", "alpha"]);
    for name in ["bravo", "api", "bravo.app"] {
        let answer = d1.run(&["exec", "alpha", "nslookup", name, &gateway]);
        assert!(answer.contains(&b_ip), "{name} through weft's DNS on h1: {answer}");
    }

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
    while endpoints(&lab).iter().any(|e| e.ipv4_address.starts_with(&format!("{a_ip}/"))) {
        assert!(Instant::now() < deadline, "alpha's address was not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
