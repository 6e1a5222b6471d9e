//! What the Docker plugin remembers on this host (Docker's ids against weft's), and how it
//! settles what Docker forgot to tell it. Pure apart from loading and saving the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What Docker knows by its own ids, and weft by its own, on this host: kept on disk, since
/// dockerd does not repeat `CreateNetwork` when either restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DockerBindings {
    /// Docker network id → weft network id.
    pub networks: BTreeMap<String, String>,
    /// Docker endpoint id → weft endpoint id.
    pub endpoints: BTreeMap<String, String>,
    /// Every weft endpoint this host's plugin made for Docker (`RequestAddress`), until Docker
    /// releases it or the sweep finds Docker no longer has it.
    pub made: BTreeSet<String>,
    /// Weft networks whose Docker network was removed here (`docker network rm`): the agent
    /// does not create them in this host's dockerd again, until one is created here by hand.
    pub withdrawn: BTreeSet<String>,
}

/// Why the bindings file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the Docker plugin's bindings {path}: {reason}")]
pub struct UnreadableBindings {
    pub path: PathBuf,
    pub reason: String,
}

impl DockerBindings {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("docker.json")
    }

    /// The bindings saved in `state_dir`; none when there is no file yet.
    pub fn load(state_dir: &Path) -> Result<DockerBindings, UnreadableBindings> {
        let path = Self::path(state_dir);
        let unreadable = |reason: String| UnreadableBindings { path: path.clone(), reason };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerBindings::default()),
            Err(e) => Err(unreadable(e.to_string())),
        }
    }

    /// Writes the bindings whole, replacing the file only once the new one is complete.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let path = Self::path(state_dir);
        let temporary = path.with_extension("json.new");
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, &path)
    }
}

/// What dockerd shows when asked about every Docker network bound here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerView {
    /// The bound Docker networks dockerd still has.
    pub networks: BTreeSet<String>,
    /// Every endpoint dockerd lists on them (containers joined to the network).
    pub endpoints: BTreeSet<String>,
}

/// Since when each thing has been missing from Docker's view, as far as the sweeps saw.
#[derive(Debug, Clone, Default)]
pub struct Missing {
    /// By weft endpoint id.
    endpoints: BTreeMap<String, Instant>,
    /// By Docker network id.
    networks: BTreeMap<String, Instant>,
}

/// What a sweep decided: what Docker dropped without a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Weft endpoints to release (their interfaces go with them).
    pub endpoints: Vec<String>,
    /// Docker networks whose binding goes.
    pub networks: Vec<String>,
}

/// Compares the bindings with Docker's view. Docker lists an endpoint only once it has joined
/// a sandbox, and a network only once `CreateNetwork` returned, so a thing is forgotten only
/// when it has been missing from views at least `grace` apart: an address handed out a moment
/// ago is on its way to a container, not lost. Things present again, or no longer bound, are
/// no longer counted as missing.
pub fn sweep(
    bindings: &DockerBindings,
    view: &DockerView,
    missing: &mut Missing,
    now: Instant,
    grace: Duration,
) -> Forgotten {
    let listed: BTreeSet<&String> = bindings
        .endpoints
        .iter()
        .filter(|(docker, _)| view.endpoints.contains(*docker))
        .map(|(_, weft)| weft)
        .collect();
    let endpoints_missing = bindings.made.iter().filter(|weft| !listed.contains(weft));
    let networks_missing = bindings.networks.keys().filter(|docker| !view.networks.contains(*docker));
    Forgotten {
        endpoints: overdue(&mut missing.endpoints, endpoints_missing, now, grace),
        networks: overdue(&mut missing.networks, networks_missing, now, grace),
    }
}

/// Records since when each of `absent` has been missing, forgets the rest, and gives those
/// missing for `grace` or longer.
fn overdue<'a>(
    since: &mut BTreeMap<String, Instant>,
    absent: impl Iterator<Item = &'a String>,
    now: Instant,
    grace: Duration,
) -> Vec<String> {
    let absent: BTreeSet<&String> = absent.collect();
    since.retain(|key, _| absent.contains(key));
    for key in &absent {
        since.entry((*key).clone()).or_insert(now);
    }
    since
        .iter()
        .filter(|(_, first)| now.duration_since(**first) >= grace)
        .map(|(key, _)| key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> DockerBindings {
        DockerBindings {
            networks: BTreeMap::from([("dnet".into(), "wnet".into())]),
            endpoints: BTreeMap::from([("dep1".into(), "wep1".into()), ("dep2".into(), "wep2".into())]),
            made: BTreeSet::from(["wep1".into(), "wep2".into(), "wep3".into()]),
            withdrawn: BTreeSet::new(),
        }
    }

    const GRACE: Duration = Duration::from_secs(15);

    #[test]
    fn what_docker_dropped_is_forgotten_only_after_the_grace() {
        let bindings = bound();
        // dep2 is gone from Docker (removed while the plugin was down); wep3 was handed out
        // and never bound to an endpoint (dockerd died between the two calls).
        let view = DockerView { networks: ["dnet".into()].into(), endpoints: ["dep1".into()].into() };
        let mut missing = Missing::default();
        let start = Instant::now();
        assert_eq!(sweep(&bindings, &view, &mut missing, start, GRACE), Forgotten::default());
        assert_eq!(
            sweep(&bindings, &view, &mut missing, start + GRACE / 2, GRACE),
            Forgotten::default(),
            "missing for less than the grace"
        );
        let forgotten = sweep(&bindings, &view, &mut missing, start + GRACE, GRACE);
        assert_eq!(forgotten.endpoints, vec!["wep2".to_string(), "wep3".to_string()]);
        assert!(forgotten.networks.is_empty());
    }

    #[test]
    fn an_endpoint_seen_again_starts_its_count_over() {
        let bindings = bound();
        let mut missing = Missing::default();
        let start = Instant::now();
        let without = DockerView { networks: ["dnet".into()].into(), endpoints: ["dep2".into()].into() };
        let with =
            DockerView { networks: ["dnet".into()].into(), endpoints: ["dep1".into(), "dep2".into()].into() };
        sweep(&bindings, &without, &mut missing, start, GRACE);
        sweep(&bindings, &with, &mut missing, start + GRACE / 2, GRACE);
        let forgotten = sweep(&bindings, &without, &mut missing, start + GRACE, GRACE);
        assert_eq!(forgotten.endpoints, vec!["wep3".to_string()], "wep1 was seen in between");
    }

    #[test]
    fn a_network_docker_no_longer_has_loses_its_binding_and_its_endpoints() {
        let bindings = bound();
        let mut missing = Missing::default();
        let start = Instant::now();
        let gone = DockerView::default();
        sweep(&bindings, &gone, &mut missing, start, GRACE);
        let forgotten = sweep(&bindings, &gone, &mut missing, start + GRACE, GRACE);
        assert_eq!(forgotten.networks, vec!["dnet".to_string()]);
        assert_eq!(forgotten.endpoints, vec!["wep1".to_string(), "wep2".to_string(), "wep3".to_string()]);
    }

    #[test]
    fn bindings_files_of_before_the_sweep_still_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("docker.json"), r#"{"networks":{"d":"w"},"endpoints":{}}"#).unwrap();
        let loaded = DockerBindings::load(dir.path()).unwrap();
        assert_eq!(loaded.networks["d"], "w");
        assert!(loaded.made.is_empty());
        std::fs::write(dir.path().join("docker.json"), "{not json").unwrap();
        let error = DockerBindings::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("docker.json"), "{error}");
        bound().save(dir.path()).unwrap();
        assert_eq!(DockerBindings::load(dir.path()).unwrap(), bound());
    }
}
