//! What only this host knows about its containers: for every container attached here, the
//! network namespace it was attached in (its path and its identity), the interface name it got
//! and how far the attach has come.
//!
//! Each attachment is a file of its own under `<state-dir>/attachments/`, replaced atomically
//! through a temporary file of its own: attaches and detaches running at once never write the
//! same file, and a crash leaves every record whole (the old version or the new one).
//!
//! An attach is written down *before* the controllers are asked for an endpoint (stage
//! [`Stage::Attaching`]) and marked [`Stage::Attached`] only once the container is plumbed, just
//! before the caller hears of success. A record still `Attaching` when the agent starts belongs
//! to an attach whose caller never heard of success: it is rolled back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::sandboxes::{Sandbox, Sandboxes};

/// Which network namespace a path led to: the device and inode of its nsfs file. Inode numbers
/// of destroyed namespaces are reused by new ones, so an identity proves "the same namespace"
/// only while the agent holds the namespace open (see [`judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceId {
    pub dev: u64,
    pub ino: u64,
}

impl NamespaceId {
    pub fn of(file: &File) -> std::io::Result<NamespaceId> {
        let meta = file.metadata()?;
        Ok(NamespaceId { dev: meta.dev(), ino: meta.ino() })
    }

    /// What the path leads to now (following `/proc/PID/ns/net`'s link).
    pub fn at(path: &Path) -> std::io::Result<NamespaceId> {
        let meta = std::fs::metadata(path)?;
        Ok(NamespaceId { dev: meta.dev(), ino: meta.ino() })
    }
}

/// How far an attach has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Written before the endpoint is created; the caller has not heard of success.
    Attaching,
    /// Plumbed, and the caller told so.
    Attached,
}

/// One container on one network on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub network_id: String,
    pub container_id: String,
    pub netns: PathBuf,
    /// The namespace `netns` led to at attach time.
    pub namespace: NamespaceId,
    /// The interface name inside the container.
    pub ifname: String,
    /// The container's default route goes through this network (its first one).
    pub default_route: bool,
    /// Known once the controllers created the endpoint.
    pub endpoint_id: Option<String>,
    /// The registry revision that created the endpoint (0 before).
    pub revision: u64,
    pub stage: Stage,
    /// weft wrote `/etc/netns/NAME/resolv.conf` for this container.
    pub resolv_conf: bool,
    /// The runtime (Docker) moves the container end of the veth into `netns` itself.
    #[serde(default)]
    pub runtime_handover: bool,
    /// Who attached it (`AttachRequest.front_end`: "cni", or empty).
    #[serde(default)]
    pub front_end: String,
}

impl Record {
    pub fn key(&self) -> String {
        key(&self.network_id, &self.container_id)
    }
}

/// The file name of a container's record on a network: one record per pair, whatever the
/// container id holds (it is the runtime's string, not ours to put in a path).
pub fn key(network_id: &str, container_id: &str) -> String {
    weft_pki::sha256_hex(format!("{network_id}\n{container_id}").as_bytes())
}

/// A record in memory, with what only the running agent knows about it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub record: Record,
    /// The namespace, held open while the container is attached: its inode cannot be reused
    /// by another namespace while it is held, so the path still leading to that inode means
    /// the container is still there. `None` after a restart until the agent has seen the
    /// container's interface again.
    pub held: Option<Arc<File>>,
    /// An attach or detach (or the janitor) is working on it; nobody else touches it.
    pub busy: bool,
    /// Why the container is considered gone: it is no longer plumbed and waits to be released.
    pub gone: Option<String>,
}

/// What the agent concludes about an attached container's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Still the namespace it was attached in.
    Same,
    /// The container is gone, for the reason given.
    Gone(String),
    /// Cannot tell now (the path could not be read for another reason); ask again later.
    Unknown(String),
}

/// Whether a container is still where it was attached. `now` is what the path leads to at
/// present; `held` whether the agent has held the namespace open since it last saw it;
/// `interface_present` whether the container's host-side veth exists (it dies with the
/// namespace its peer is in).
pub fn judge(
    path: &Path,
    recorded: NamespaceId,
    now: &std::io::Result<NamespaceId>,
    held: bool,
    interface_present: bool,
) -> Presence {
    match now {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Presence::Gone(format!("its network namespace {} no longer exists", path.display()))
        }
        Err(e) => Presence::Unknown(format!("cannot read {}: {e}", path.display())),
        Ok(id) if *id != recorded => {
            Presence::Gone(format!("{} now leads to another network namespace", path.display()))
        }
        Ok(_) if held || interface_present => Presence::Same,
        // Not held (the agent restarted) and its interface is gone: the namespace it was in
        // died with it, and the one at the path now may reuse its inode. Nothing ties the two
        // together, so a new container never inherits the old one's network.
        Ok(_) => Presence::Gone(format!(
            "its interface vanished while the agent was not running, so the namespace at {} \
             cannot be proven to be the one it was attached in",
            path.display()
        )),
    }
}

/// Every record of this host, by [`key`].
#[derive(Debug, Default)]
pub struct Attachments {
    pub entries: BTreeMap<String, Entry>,
}

impl Attachments {
    pub fn from_records(records: Vec<Record>) -> Attachments {
        let entries = records
            .into_iter()
            .map(|record| (record.key(), Entry { record, held: None, busy: false, gone: None }))
            .collect();
        Attachments { entries }
    }

    /// The interface name for a container's next network: `prefix` + the lowest index none of
    /// its interfaces uses (eth0, eth1, …), and whether it is the container's first network.
    /// Attaches in flight count: two of them at once never get the same name.
    /// The interface for a container's next network: `wanted` when given and free, else the
    /// first free `{prefix}N`; and whether it is the container's first. `None`: `wanted` is
    /// taken.
    pub fn next_interface(
        &self,
        container_id: &str,
        netns: &Path,
        prefix: &str,
        wanted: &str,
    ) -> Option<(String, bool)> {
        let taken: Vec<&str> = self
            .entries
            .values()
            .map(|e| &e.record)
            .filter(|r| r.container_id == container_id || r.netns == netns)
            .map(|r| r.ifname.as_str())
            .collect();
        let first = taken.is_empty();
        if !wanted.is_empty() {
            return (!taken.contains(&wanted)).then(|| (wanted.to_string(), first));
        }
        let name =
            (0..).map(|i| format!("{prefix}{i}")).find(|n| !taken.contains(&n.as_str())).unwrap_or_default();
        Some((name, first))
    }

    /// What the kernel should have plumbed: containers attached, or being attached right now,
    /// that are not gone. (An `Attaching` record nobody works on is a crashed attach waiting
    /// to be rolled back.)
    pub fn plumbing(&self) -> Sandboxes {
        let endpoints = self
            .entries
            .values()
            .filter(|e| e.gone.is_none() && (e.record.stage == Stage::Attached || e.busy))
            .filter_map(|e| {
                let r = &e.record;
                let id = r.endpoint_id.clone()?;
                Some((
                    id,
                    Sandbox {
                        network_id: r.network_id.clone(),
                        container_id: r.container_id.clone(),
                        netns: r.netns.clone(),
                        ifname: r.ifname.clone(),
                        default_route: r.default_route,
                        runtime_handover: r.runtime_handover,
                    },
                ))
            })
            .collect();
        Sandboxes { endpoints }
    }

    /// Whether the container has a record on another network than `network_id` (its resolv.conf
    /// stays while it does).
    pub fn elsewhere(&self, container_id: &str, network_id: &str) -> bool {
        self.entries
            .values()
            .any(|e| e.record.container_id == container_id && e.record.network_id != network_id)
    }
}

/// The records on disk.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Makes every temporary file name unique within the process (the pid across processes).
    next_temporary: AtomicU64,
}

const RECORD_SUFFIX: &str = ".json";
const TEMPORARY_MARK: &str = ".tmp-";

impl Store {
    /// Opens (and creates) `<state_dir>/attachments`. An agent of an earlier version kept its
    /// records in one `sandboxes.json`; those are carried over once.
    pub fn open(state_dir: &Path) -> anyhow::Result<Store> {
        let dir = state_dir.join("attachments");
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let store = Store { dir, next_temporary: AtomicU64::new(0) };
        store.carry_over(&state_dir.join("sandboxes.json"))?;
        Ok(store)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{RECORD_SUFFIX}"))
    }

    /// Every record. Temporary files a crash left behind are removed; a file that is not a
    /// record (edited by hand, say) is renamed `*.unreadable` and reported, not fatal.
    pub fn load(&self) -> anyhow::Result<Vec<Record>> {
        let mut records = Vec::new();
        let listing = std::fs::read_dir(&self.dir)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.dir.display()))?;
        for item in listing {
            let path = item.map_err(|e| anyhow::anyhow!("reading {}: {e}", self.dir.display()))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if name.contains(TEMPORARY_MARK) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(RECORD_SUFFIX) {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).map_err(|e| e.to_string()));
            match parsed {
                Ok(record) => records.push(record),
                Err(why) => {
                    tracing::error!(file = %path.display(), %why, "not an attachment record; set aside as *.unreadable");
                    let _ = std::fs::rename(&path, path.with_extension("unreadable"));
                }
            }
        }
        Ok(records)
    }

    /// Writes a record: a temporary file of its own, fsynced, renamed over the old one, and
    /// the directory fsynced so the rename survives a power cut.
    pub fn save(&self, record: &Record) -> anyhow::Result<()> {
        let path = self.path(&record.key());
        let n = self.next_temporary.fetch_add(1, Ordering::Relaxed);
        let temporary = self.dir.join(format!("{}{TEMPORARY_MARK}{}-{n}", record.key(), std::process::id()));
        let bytes = serde_json::to_vec_pretty(record)?;
        let written = File::create(&temporary)
            .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            anyhow::bail!("writing {}: {e}", path.display());
        }
        self.sync_dir()
    }

    /// Removes a record (nothing to do when it is already gone).
    pub fn remove(&self, key: &str) -> anyhow::Result<()> {
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => anyhow::bail!("removing {}: {e}", path.display()),
        }
    }

    fn sync_dir(&self) -> anyhow::Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| anyhow::anyhow!("syncing {}: {e}", self.dir.display()))
    }

    /// Turns the single file of earlier versions into records. Their namespaces' identities
    /// were not recorded: each is taken from the path now, and the first reconcile pass
    /// accepts it only where the container's interface is still in place (see [`judge`]).
    fn carry_over(&self, legacy: &Path) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct Legacy {
            endpoints: BTreeMap<String, Sandbox>,
        }
        let bytes = match std::fs::read(legacy) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => anyhow::bail!("reading {}: {e}", legacy.display()),
        };
        let old: Legacy = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a weft sandbox file: {e}", legacy.display()))?;
        for (endpoint_id, sandbox) in old.endpoints {
            // A namespace already gone gets an identity nothing matches: it is released.
            let namespace = NamespaceId::at(&sandbox.netns).unwrap_or(NamespaceId { dev: 0, ino: 0 });
            self.save(&Record {
                network_id: sandbox.network_id,
                container_id: sandbox.container_id,
                netns: sandbox.netns,
                namespace,
                ifname: sandbox.ifname,
                default_route: sandbox.default_route,
                endpoint_id: Some(endpoint_id),
                // Unknown; the first pass reads it from the registry.
                revision: 0,
                stage: Stage::Attached,
                resolv_conf: false,
                runtime_handover: false,
                front_end: String::new(),
            })?;
        }
        std::fs::remove_file(legacy).map_err(|e| anyhow::anyhow!("removing {}: {e}", legacy.display()))?;
        tracing::info!(file = %legacy.display(), "carried the attachment records over to one file each");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(network: &str, container: &str, ifname: &str) -> Record {
        Record {
            network_id: network.into(),
            container_id: container.into(),
            netns: PathBuf::from(format!("/run/netns/{container}")),
            namespace: NamespaceId { dev: 4, ino: 100 },
            ifname: ifname.into(),
            default_route: ifname == "eth0",
            endpoint_id: Some(format!("e-{network}-{container}")),
            revision: 7,
            stage: Stage::Attached,
            resolv_conf: false,
            runtime_handover: false,
            front_end: String::new(),
        }
    }

    #[test]
    fn interfaces_are_numbered_per_container_reusing_gaps() {
        let mut a = Attachments::default();
        let next = |a: &Attachments, prefix: &str, wanted: &str| {
            a.next_interface("c1", Path::new("/run/netns/c1"), prefix, wanted)
        };
        assert_eq!(next(&a, "eth", ""), Some(("eth0".into(), true)));
        assert_eq!(next(&a, "eth", "net7"), Some(("net7".into(), true)));
        a = Attachments::from_records(vec![
            record("n1", "c1", "eth0"),
            record("n2", "c1", "eth2"),
            record("n1", "c2", "eth0"),
        ]);
        assert_eq!(next(&a, "eth", ""), Some(("eth1".into(), false)));
        assert_eq!(next(&a, "net", ""), Some(("net0".into(), false)));
        // A name the runtime asks for (CNI_IFNAME) is taken as it is, unless taken.
        assert_eq!(next(&a, "eth", "eth5"), Some(("eth5".into(), false)));
        assert_eq!(next(&a, "eth", "eth2"), None);
        assert_eq!(a.entries.get(&key("n1", "c2")).map(|e| e.record.ifname.as_str()), Some("eth0"));
        assert!(a.elsewhere("c1", "n1"));
        assert!(!a.elsewhere("c2", "n1"));
    }

    #[test]
    fn only_live_attachments_are_plumbed() {
        let mut a = Attachments::from_records(vec![
            record("n1", "attached", "eth0"),
            Record { stage: Stage::Attaching, ..record("n1", "in-flight", "eth0") },
            Record { stage: Stage::Attaching, ..record("n1", "crashed", "eth0") },
            record("n1", "gone", "eth0"),
        ]);
        a.entries.get_mut(&key("n1", "in-flight")).unwrap().busy = true;
        a.entries.get_mut(&key("n1", "gone")).unwrap().gone = Some("deleted".into());
        let plumbed: Vec<String> = a.plumbing().endpoints.into_keys().collect();
        assert_eq!(plumbed, ["e-n1-attached", "e-n1-in-flight"]);
    }

    #[test]
    fn a_namespace_is_the_same_only_while_provably_so() {
        let path = Path::new("/run/netns/c1");
        let id = NamespaceId { dev: 4, ino: 100 };
        let missing = Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(
            matches!(judge(path, id, &missing, true, true), Presence::Gone(w) if w.contains("no longer exists"))
        );
        let other = Ok(NamespaceId { dev: 4, ino: 101 });
        assert!(matches!(judge(path, id, &other, true, true), Presence::Gone(w) if w.contains("another")));
        assert_eq!(judge(path, id, &Ok(id), true, false), Presence::Same);
        assert_eq!(judge(path, id, &Ok(id), false, true), Presence::Same);
        // After a restart, a reused inode without the container's interface is not trusted.
        assert!(matches!(judge(path, id, &Ok(id), false, false), Presence::Gone(_)));
        let denied = Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(matches!(judge(path, id, &denied, true, true), Presence::Unknown(_)));
    }

    #[test]
    fn records_survive_a_reload_and_crash_leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.load().unwrap().is_empty());
        let a = record("n1", "c1", "eth0");
        let b = Record { stage: Stage::Attaching, endpoint_id: None, ..record("n2", "c/../1", "eth1") };
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        // A crash between writing a temporary file and renaming it; a hand-edited record.
        std::fs::write(dir.path().join("attachments").join(format!("{}.tmp-1-0", a.key())), b"{").unwrap();
        std::fs::write(dir.path().join("attachments/broken.json"), b"{ not json").unwrap();
        let mut loaded = store.load().unwrap();
        loaded.sort_by_key(|r| r.network_id.clone());
        assert_eq!(loaded, vec![a.clone(), b.clone()]);
        let names: Vec<String> = std::fs::read_dir(dir.path().join("attachments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
        assert!(names.contains(&"broken.unreadable".to_string()), "{names:?}");
        store.remove(&a.key()).unwrap();
        store.remove(&a.key()).unwrap();
        assert_eq!(store.load().unwrap(), vec![b]);
    }

    #[test]
    fn concurrent_saves_of_different_records_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for round in 0..10 {
                        let mut r = record("n1", &format!("c{i}"), "eth0");
                        r.revision = round;
                        store.save(&r).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 32);
        assert!(loaded.iter().all(|r| r.revision == 9));
    }

    #[test]
    fn the_single_file_of_earlier_versions_is_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sandboxes.json"),
            br#"{"endpoints":{"e1":{"network_id":"n1","container_id":"c1","netns":"/nonexistent/ns","ifname":"eth0","default_route":true}}}"#,
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].endpoint_id.as_deref(), Some("e1"));
        assert_eq!(loaded[0].stage, Stage::Attached);
        assert!(!dir.path().join("sandboxes.json").exists());
    }
}
