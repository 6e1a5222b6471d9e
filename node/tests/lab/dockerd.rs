//! Debian's dockerd in the lab: started with `nsenter` into a host's namespaces (not `ip
//! netns exec`, which mounts a sysfs of the namespace's own, without the cgroup mounts dockerd
//! needs), with its own data and exec roots and API socket, so nothing of the machine's is
//! touched; stopped (its containers first) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use weft_testbed::{Netns, root_or_skip};

use super::{Lab, UNDERLAY};

pub struct Dockerd {
    pub socket: String,
    pub dir: PathBuf,
    daemon: Option<Child>,
    enter: Vec<String>,
    flags: Vec<String>,
}

/// The docker CLI of the docker.io package, which speaks dockerd's own API version (a newer
/// CLI elsewhere on the PATH refuses some flags against dockerd 20.10's API 1.41).
fn cli() -> &'static str {
    if Path::new("/usr/bin/docker").exists() { "/usr/bin/docker" } else { "docker" }
}

impl Dockerd {
    /// Whether dockerd and the docker CLI are installed.
    pub fn installed() -> bool {
        !weft_testbed::output("sh", &["-c", "command -v dockerd && command -v docker"]).stdout.is_empty()
    }

    /// Starts dockerd entered into namespaces by `nsenter` arguments (`--net=…`, `--mount=…`),
    /// keeping everything under `dir`; waits until it answers.
    pub fn start(enter: &[String], dir: &Path, flags: &[&str]) -> Dockerd {
        let mut dockerd = Dockerd {
            socket: format!("unix://{}/docker.sock", dir.display()),
            dir: dir.to_path_buf(),
            daemon: None,
            enter: enter.to_vec(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        dockerd.launch();
        dockerd
    }

    fn launch(&mut self) {
        let dir = &self.dir;
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join("dockerd.log")).unwrap();
        let daemon = Command::new("nsenter")
            .args(&self.enter)
            .arg("dockerd")
            .arg(format!("--data-root={}/data", dir.display()))
            .arg(format!("--exec-root={}/exec", dir.display()))
            .arg(format!("--pidfile={}/docker.pid", dir.display()))
            .arg(format!("--host={}", self.socket))
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.try_run(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "dockerd did not come up: {}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops dockerd as its service manager would (TERM: it stops its containers) and starts
    /// it again with the same flags.
    #[allow(dead_code)] // the Docker tests use it, the benchmark does not
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    pub fn try_run(&self, args: &[&str]) -> Output {
        Command::new(cli()).arg("-H").arg(&self.socket).args(args).output().unwrap()
    }

    /// A docker command left running, its output piped.
    #[allow(dead_code)] // the Docker tests use it, the benchmark does not
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new(cli()).arg("-H").arg(&self.socket).args(args).stdout(Stdio::piped()).spawn().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(!out.status.success(), "docker {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    /// Imports the directory `root` as the image `tag` (no registry needed).
    /// dockerd's process id (nsenter execs it), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    pub fn import(&self, root: &Path, tag: &str) {
        let tarball = root.with_extension("tar");
        weft_testbed::run("tar", &["-C", root.to_str().unwrap(), "-cf", tarball.to_str().unwrap(), "."]);
        self.run(&["import", tarball.to_str().unwrap(), tag]);
    }
}

impl Drop for Dockerd {
    /// The containers first, then dockerd with a TERM, so it stops its containerd too.
    fn drop(&mut self) {
        let listed = self.try_run(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = self.try_run(&["rm", "-f", id]);
        }
        self.stop();
    }
}

/// The image every Docker test and benchmark runs: busybox-static and nothing else.
pub const IMAGE: &str = "weft-busybox:test";

/// busybox-static as an image, with the applets the tests use.
pub fn import_busybox(dockerd: &Dockerd) {
    let root = super::busybox_rootfs(&dockerd.dir);
    dockerd.import(&root, IMAGE);
}

/// The container's IPv4 address on `network`, as Docker shows it.
pub fn address_in(dockerd: &Dockerd, container: &str, network: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    dockerd.run(&["inspect", "-f", &format, container])
}

/// The network namespace of a running container, as a path `nsenter --net=` takes.
pub fn netns_of(dockerd: &Dockerd, container: &str) -> String {
    format!("/proc/{}/ns/net", dockerd.run(&["inspect", "-f", "{{.State.Pid}}", container]))
}

/// A persistent mount namespace at `file` with a private, empty `/run/docker/plugins`.
pub fn mount_namespace(file: &Path) {
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
pub struct Mounts(pub PathBuf);

impl Drop for Mounts {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = Command::new("umount").arg(entry.path()).status();
        }
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Namespace hosts, each with its own dockerd and its own weft-node serving the plugin.
/// Dropped dockerds first (their containers are removed while the plugin still answers),
/// then the hosts, then the mounts.
pub struct DockerLab {
    pub dockerds: Vec<Dockerd>,
    pub lab: Lab,
    _mounts: Mounts,
    dir: tempfile::TempDir,
}

impl DockerLab {
    /// `None` (after saying so loudly) when not root or without docker.io.
    pub async fn new(test: &str, hosts: usize) -> Option<DockerLab> {
        DockerLab::with_lab(test, hosts, Lab::new).await
    }

    /// As [`DockerLab::new`], on a lab `make` builds (production timing, for benchmarks).
    pub async fn with_lab(test: &str, hosts: usize, make: fn(usize) -> Lab) -> Option<DockerLab> {
        if !root_or_skip(test) {
            return None;
        }
        if !Dockerd::installed() {
            eprintln!(
                "\n#### dockerd is not installed: {test} is SKIPPED (apt-get install docker.io) ####\n"
            );
            return None;
        }
        let mut lab = make(hosts);
        let dir = tempfile::tempdir().unwrap();
        let mounts_dir = dir.path().join("mnt");
        std::fs::create_dir_all(&mounts_dir).unwrap();
        weft_testbed::run("mount", &["--bind", mounts_dir.to_str().unwrap(), mounts_dir.to_str().unwrap()]);
        let mounts = Mounts(mounts_dir.clone());
        weft_testbed::run("mount", &["--make-private", mounts_dir.to_str().unwrap()]);
        let mut dockerds = Vec::new();
        for i in 0..hosts {
            let mount_ns = mounts_dir.join(format!("h{}", i + 1));
            mount_namespace(&mount_ns);
            let docker_dir = dir.path().join(format!("docker{}", i + 1));
            std::fs::create_dir_all(&docker_dir).unwrap();
            lab.kill_agent(i);
            lab.hosts[i].mount_ns = Some(mount_ns.clone());
            let flags = DockerLab::plugin_flags(&docker_dir);
            lab.start_agent_with(i, &flags.iter().map(String::as_str).collect::<Vec<_>>());
            lab.agent(i).await;
            let enter =
                [format!("--mount={}", mount_ns.display()), format!("--net={}", lab.hosts[i].ns.path())];
            // weft does the forwarding and NAT of its networks; dockerd leaves the host alone.
            // Names Docker's 127.0.0.11 does not know go to weft's DNS address, as the install
            // script sets in daemon.json.
            let dockerd = Dockerd::start(&enter, &docker_dir, &["--dns", "169.254.53.53"]);
            import_busybox(&dockerd);
            dockerds.push(dockerd);
        }
        Some(DockerLab { dockerds, lab, _mounts: mounts, dir })
    }

    fn plugin_flags(docker_dir: &Path) -> Vec<String> {
        let api = docker_dir.join("docker.sock");
        vec![
            "--docker-plugin-socket".into(),
            "/run/docker/plugins/weft.sock".into(),
            "--docker-api-socket".into(),
            api.display().to_string(),
        ]
    }

    /// `kill -9` of host `i`'s agent.
    pub fn kill_agent(&mut self, i: usize) {
        self.lab.kill_agent(i);
    }

    /// Starts host `i`'s agent again, as the plugin.
    pub async fn start_agent(&mut self, i: usize) {
        let flags = DockerLab::plugin_flags(&self.dir.path().join(format!("docker{}", i + 1)));
        self.lab.start_agent_with(i, &flags.iter().map(String::as_str).collect::<Vec<_>>());
        self.lab.agent(i).await;
    }

    /// `docker network create` on weft refused by host `i`'s dockerd: its message.
    pub fn create_network_refused(&self, i: usize, name: &str, extra: &[&str]) -> String {
        self.dockerds[i].fails(&network_create(name, extra))
    }

    /// Creates the Docker network `name` through host `i`'s dockerd and waits until every
    /// other host's dockerd has it too.
    pub async fn create_network(&self, i: usize, name: &str, extra: &[&str]) {
        self.dockerds[i].run(&network_create(name, extra));
        for (j, dockerd) in self.dockerds.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(15);
            while !dockerd.try_run(&["network", "inspect", name]).status.success() {
                assert!(Instant::now() < deadline, "h{}'s dockerd never got network {name}", j + 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Whether the registry holds an endpoint with this IPv4 address.
    pub fn registered(&self, ip: &str) -> bool {
        self.lab.endpoints().iter().any(|e| e.ipv4_address.starts_with(&format!("{ip}/")))
    }
}

/// `docker network create -d weft --ipam-driver weft EXTRA… NAME`.
fn network_create<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["network", "create", "-d", "weft", "--ipam-driver", "weft"];
    args.extend_from_slice(extra);
    args.push(name);
    args
}

/// Two more namespace hosts on the lab's underlay, each with a dockerd of its own (Docker's
/// defaults), joined as a swarm with an attachable overlay network `ov`.
pub struct Swarm {
    pub manager: Dockerd,
    pub worker: Dockerd,
    _namespaces: [Netns; 2],
}

impl Swarm {
    pub fn start(lab: &Lab, dir: &std::path::Path) -> Swarm {
        let namespaces = [Netns::new("s"), Netns::new("s")];
        let addresses = [format!("{UNDERLAY}.31"), format!("{UNDERLAY}.32")];
        lab.join_underlay(&namespaces[0], 31);
        lab.join_underlay(&namespaces[1], 32);
        let start = |i: usize| {
            let docker_dir = dir.join(format!("swarm{}", i + 1));
            std::fs::create_dir_all(&docker_dir).unwrap();
            let dockerd = Dockerd::start(&[format!("--net={}", namespaces[i].path())], &docker_dir, &[]);
            import_busybox(&dockerd);
            dockerd
        };
        let (manager, worker) = (start(0), start(1));
        manager.run(&["swarm", "init", "--advertise-addr", &addresses[0]]);
        let token = manager.run(&["swarm", "join-token", "-q", "worker"]);
        worker.run(&["swarm", "join", "--token", &token, &format!("{}:2377", addresses[0])]);
        manager.run(&["network", "create", "-d", "overlay", "--attachable", "ov"]);
        Swarm { manager, worker, _namespaces: namespaces }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = self.worker.try_run(&["swarm", "leave", "--force"]);
        let _ = self.manager.try_run(&["swarm", "leave", "--force"]);
    }
}
