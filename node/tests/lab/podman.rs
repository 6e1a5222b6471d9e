//! Debian's podman in the lab, with the CNI backend and weft-cni: run with `nsenter` into a
//! host's network namespace, with storage, run directory, containers.conf and CNI network
//! configurations of its own, so nothing of the machine's is touched; its containers are
//! removed when it drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;

use super::{Lab, NODE};

/// The image the podman tests run.
pub const IMAGE: &str = "localhost/weft-busybox:test";

pub struct Podman {
    dir: PathBuf,
    netns: String,
    /// The host's agent.
    socket: PathBuf,
}

impl Podman {
    pub fn installed() -> bool {
        Path::new("/usr/bin/podman").exists() && Path::new("/usr/lib/cni/portmap").exists()
    }

    /// podman for host `i` of `lab`, under `dir`, with the weft networks `networks` as CNI
    /// networks of the same names (through that host's agent), and the busybox image.
    pub fn new(lab: &Lab, i: usize, dir: &Path, networks: &[&str]) -> Podman {
        let dir = dir.join(format!("podman{}", i + 1));
        let (plugins, configs) = (dir.join("cni-bin"), dir.join("net.d"));
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&configs).unwrap();
        // A CNI plugin is found by its type: weft-cni is installed as "weft".
        std::os::unix::fs::symlink(weft_testbed::workspace_binary(NODE, "weft-cni"), plugins.join("weft"))
            .unwrap();
        let podman =
            Podman { dir: dir.clone(), netns: lab.hosts[i].ns.path(), socket: lab.hosts[i].socket.clone() };
        for network in networks {
            podman.network(network, network, &[]);
        }
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n\
             [containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            plugins.display(),
            configs.display()
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        // vfs: a busybox image is small, and nothing is mounted that could outlive a test.
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("storage").display(),
            dir.join("run").display()
        );
        std::fs::write(dir.join("storage.conf"), storage).unwrap();
        let root = super::busybox_rootfs(&dir);
        let tarball = dir.join("rootfs.tar");
        weft_testbed::run("tar", &["-C", root.to_str().unwrap(), "-cf", tarball.to_str().unwrap(), "."]);
        podman.run(&["import", tarball.to_str().unwrap(), IMAGE]);
        podman
    }

    /// The CNI network `name`: weft network `weft_network`, then the plugins `chained`.
    pub fn network(&self, name: &str, weft_network: &str, chained: &[serde_json::Value]) {
        let mut plugins = vec![json!({
            "type": "weft",
            "network": weft_network,
            "socket": self.socket,
            "capabilities": {"portMappings": true, "aliases": true, "ips": true, "mac": true},
        })];
        plugins.extend_from_slice(chained);
        let conflist = json!({ "cniVersion": "1.0.0", "name": name, "plugins": plugins });
        std::fs::write(self.dir.join("net.d").join(format!("{name}.conflist")), conflist.to_string())
            .unwrap();
    }

    pub fn try_run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns))
            .arg("podman")
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .output()
            .unwrap()
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The container's IPv4 address on `network`, as podman shows it.
    pub fn address_in(&self, container: &str, network: &str) -> String {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        self.run(&["inspect", "-f", &format, container])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.try_run(&["rm", "-af", "-t", "0"]);
        let _ = self.try_run(&["system", "reset", "-f"]);
    }
}
