//! What only this host knows about its containers: which network namespace and interface
//! name each local endpoint got. The registry holds addresses; this file holds the plumbing,
//! so a restarted agent finds (and adopts) what it made. Written atomically: a crash leaves
//! the old file or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub network_id: String,
    pub container_id: String,
    pub netns: PathBuf,
    /// The interface name inside the container.
    pub ifname: String,
    /// The container's default route goes through this network (its first one).
    pub default_route: bool,
}

/// Local endpoints by endpoint id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandboxes {
    pub endpoints: BTreeMap<String, Sandbox>,
}

impl Sandboxes {
    /// Reads the file, or starts empty when there is none yet.
    pub fn load(path: &Path) -> anyhow::Result<Sandboxes> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is not a weft sandbox file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sandboxes::default()),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Writes to a temporary file, fsyncs it, and renames it over the old one.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(self)?;
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("replacing {}: {e}", path.display()))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The container's endpoint on a network, if it has one here.
    pub fn find(&self, network_id: &str, container_id: &str) -> Option<(&String, &Sandbox)> {
        self.endpoints.iter().find(|(_, s)| s.network_id == network_id && s.container_id == container_id)
    }

    /// The interface name for a container's next network: `prefix` + the lowest index none of
    /// its interfaces uses (eth0, eth1, …), and whether it is the container's first network.
    pub fn next_interface(&self, container_id: &str, netns: &Path, prefix: &str) -> (String, bool) {
        let taken: Vec<&str> = self
            .endpoints
            .values()
            .filter(|s| s.container_id == container_id || s.netns == netns)
            .map(|s| s.ifname.as_str())
            .collect();
        let first = taken.is_empty();
        let name =
            (0..).map(|i| format!("{prefix}{i}")).find(|n| !taken.contains(&n.as_str())).unwrap_or_default();
        (name, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(network: &str, container: &str, ifname: &str) -> Sandbox {
        Sandbox {
            network_id: network.into(),
            container_id: container.into(),
            netns: PathBuf::from(format!("/run/netns/{container}")),
            ifname: ifname.into(),
            default_route: ifname == "eth0",
        }
    }

    #[test]
    fn interfaces_are_numbered_per_container_reusing_gaps() {
        let mut s = Sandboxes::default();
        assert_eq!(s.next_interface("c1", Path::new("/run/netns/c1"), "eth"), ("eth0".into(), true));
        s.endpoints.insert("e1".into(), sandbox("n1", "c1", "eth0"));
        s.endpoints.insert("e2".into(), sandbox("n2", "c1", "eth2"));
        s.endpoints.insert("e3".into(), sandbox("n1", "c2", "eth0"));
        assert_eq!(s.next_interface("c1", Path::new("/run/netns/c1"), "eth"), ("eth1".into(), false));
        assert_eq!(s.next_interface("c1", Path::new("/run/netns/c1"), "net"), ("net0".into(), false));
        assert_eq!(s.find("n1", "c2").map(|(id, _)| id.as_str()), Some("e3"));
    }

    #[test]
    fn saved_sandboxes_load_back_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandboxes.json");
        assert_eq!(Sandboxes::load(&path).unwrap(), Sandboxes::default());
        let mut s = Sandboxes::default();
        s.endpoints.insert("e1".into(), sandbox("n1", "c1", "eth0"));
        s.save(&path).unwrap();
        assert_eq!(Sandboxes::load(&path).unwrap(), s);
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(Sandboxes::load(&path).unwrap_err().to_string().contains("not a weft sandbox file"));
    }
}
