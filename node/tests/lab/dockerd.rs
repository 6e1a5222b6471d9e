//! Debian's dockerd in the lab: started with `nsenter` into a host's namespaces (not `ip
//! netns exec`, which mounts a sysfs of the namespace's own, without the cgroup mounts dockerd
//! needs), with its own data and exec roots and API socket, so nothing of the machine's is
//! touched; stopped (its containers first) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
