//! The host's WireGuard interface: its key, its backend (the kernel module where there is
//! one, a supervised `wireguard-go` otherwise) and keeping the device in line with the peers
//! the registry lists. Encrypted networks' VXLAN runs over it between tunnel addresses.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_dataplane::wireguard::{self, Backend, DeviceConfig, Key, Peer};
use weft_dataplane::{Dataplane, IfAddr, Kernel, KernelError, LinkKind, Observed, Op};

/// How the operator wants WireGuard run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The kernel module where it exists, wireguard-go otherwise.
    Auto,
    Kernel,
    Userspace,
    /// No WireGuard: encrypted networks cannot reach this host.
    Off,
}

/// How long wireguard-go gets to open its UAPI socket.
const DAEMON_START: Duration = Duration::from_secs(10);

fn key_file(state_dir: &Path) -> PathBuf {
    state_dir.join("wireguard.key")
}

fn failed(doing: impl Into<String>, reason: impl std::fmt::Display) -> KernelError {
    KernelError { doing: doing.into(), reason: reason.to_string(), source: None }
}

/// The host's WireGuard interface and what runs it.
#[derive(Debug)]
pub struct Tunnel {
    interface: String,
    port: u16,
    key_path: PathBuf,
    key: Mutex<Key>,
    /// The backend in use, or why there is none.
    backend: Result<Backend, String>,
    /// The wireguard-go this agent started (none for the kernel backend, or when an earlier
    /// agent's daemon was adopted).
    daemon: Mutex<Option<std::process::Child>>,
}

/// Whether `program` is an executable somewhere on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

impl Tunnel {
    /// Loads (or makes) the host key and picks the backend. A backend the operator asked for
    /// by name that cannot work is an error; `auto` with neither available is not, but says
    /// why in the node's status, and encrypted networks then carry nothing to or from here.
    pub async fn open(
        mode: Mode,
        interface: &str,
        port: u16,
        state_dir: &Path,
        kernel: &Kernel,
    ) -> anyhow::Result<Option<Tunnel>> {
        if mode == Mode::Off {
            return Ok(None);
        }
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
            anyhow::bail!(
                "--wireguard-interface {interface:?}: an interface name is 1 to 15 characters, no '/' or spaces"
            );
        }
        let key_path = key_file(state_dir);
        let key = wireguard::load_or_create_private_key(&key_path)
            .map_err(|e| anyhow::anyhow!("WireGuard key {}: {e}", key_path.display()))?;
        let existing = kernel
            .observe()
            .await
            .context("listing this host's links")?
            .links
            .get(interface)
            .map(|link| link.kind.clone());
        let kernel_backend = async {
            match existing.clone() {
                Some(LinkKind::Other(kind)) if kind.eq_ignore_ascii_case("wireguard") => Ok(()),
                Some(other) => Err(format!("a {other:?} link named {interface} is in the way")),
                None => kernel.create_wireguard(interface).await.map_err(|e| e.reason),
            }
        };
        let userspace = || {
            if on_path("wireguard-go") {
                Ok(Backend::Userspace)
            } else {
                Err("wireguard-go is not installed (apt-get install wireguard-go)".to_string())
            }
        };
        let backend = match mode {
            Mode::Off => unreachable!("handled above"),
            Mode::Kernel => match kernel_backend.await {
                Ok(()) => Ok(Backend::Kernel),
                Err(why) => anyhow::bail!("--wireguard kernel: cannot create a WireGuard link: {why}"),
            },
            Mode::Userspace => match userspace() {
                Ok(backend) => Ok(backend),
                Err(why) => anyhow::bail!("--wireguard userspace: {why}"),
            },
            Mode::Auto => match &existing {
                // A TUN link of that name: wireguard-go from an earlier run, adopted.
                Some(LinkKind::Other(kind)) if kind.eq_ignore_ascii_case("tun") => userspace(),
                _ => match kernel_backend.await {
                    Ok(()) => Ok(Backend::Kernel),
                    Err(kernel_why) => userspace().map_err(|userspace_why| {
                        format!("no WireGuard kernel module ({kernel_why}) and {userspace_why}")
                    }),
                },
            },
        };
        match &backend {
            Ok(backend) => {
                tracing::info!(%backend, interface, port, public_key = %key.public().to_base64(), "WireGuard")
            }
            Err(why) => tracing::error!(
                interface,
                "WireGuard unavailable: {why}; encrypted networks will not reach this host"
            ),
        }
        Ok(Some(Tunnel {
            interface: interface.to_string(),
            port,
            key_path,
            key: Mutex::new(key),
            backend,
            daemon: Mutex::new(None),
        }))
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn key(&self) -> Key {
        *self.key.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The public key to register; none when there is no working backend (other hosts then
    /// leave this one out of their peers).
    pub fn public_key(&self) -> Option<Key> {
        self.backend.is_ok().then(|| self.key().public())
    }

    /// What node status shows: the backend, or why there is none.
    pub fn backend_label(&self) -> String {
        match &self.backend {
            Ok(backend) => backend.to_string(),
            Err(why) => format!("unavailable: {why}"),
        }
    }

    /// Replaces the host key with a fresh one, on disk first (a crash after this keeps the
    /// new key). The caller registers the new public key and reconciles.
    pub fn rotate(&self) -> std::io::Result<Key> {
        let key = Key::generate()?;
        let temporary = self.key_path.with_extension("key.new");
        let _ = std::fs::remove_file(&temporary);
        wireguard::write_private_key(&temporary, &key)?;
        std::fs::rename(&temporary, &self.key_path)?;
        *self.key.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = key;
        tracing::info!(public_key = %key.public().to_base64(), "WireGuard key rotated");
        Ok(key)
    }

    /// Makes the device match: running (wireguard-go restarted if it died), the host key and
    /// port, exactly `peers`, the tunnel address, MTU and link up. Peers that are right are
    /// not touched, so their sessions carry on.
    pub async fn sync<D: Dataplane>(
        &self,
        kernel: &D,
        observed: &Observed,
        address: Option<IfAddr>,
        mtu: u32,
        peers: Vec<Peer>,
    ) -> Vec<KernelError> {
        let backend = match &self.backend {
            Ok(backend) => *backend,
            Err(_) => return Vec::new(),
        };
        let doing = format!("configuring WireGuard interface {}", self.interface);
        let mut fresh_link = false;
        match backend {
            Backend::Userspace => match self.ensure_daemon().await {
                Ok(started) => fresh_link = started,
                Err(e) => return vec![e],
            },
            Backend::Kernel if !observed.links.contains_key(&self.interface) => {
                if let Err(e) = kernel.create_wireguard(&self.interface).await {
                    return vec![e];
                }
                fresh_link = true;
            }
            Backend::Kernel => {}
        }
        let want = DeviceConfig { private_key: self.key(), listen_port: self.port, peers };
        let interface = self.interface.clone();
        let configured = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let have = backend.get(&interface)?;
            match wireguard::changes(&want, &have) {
                Some(update) => backend.apply(&interface, &update).map(|()| true),
                None => Ok(false),
            }
        })
        .await;
        let mut errors = Vec::new();
        match configured {
            Ok(Ok(true)) => tracing::debug!(interface = %self.interface, "WireGuard device updated"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => errors.push(failed(&doing, e)),
            Err(e) => errors.push(failed(&doing, e)),
        }
        // The link: the tunnel address (its prefix makes every other host's tunnel address
        // on-link), the MTU, up. wireguard-go binds its port only once the link is up.
        let link = if fresh_link { None } else { observed.links.get(&self.interface) };
        let mut ops = Vec::new();
        if link.is_none_or(|l| l.mtu != mtu || !l.up) {
            ops.push(Op::SetLink {
                name: self.interface.clone(),
                place: weft_dataplane::Place::Host,
                mtu,
                master: None,
            });
        }
        let current = link.map(|l| l.addresses.clone()).unwrap_or_default();
        if let Some(address) = address
            && !current.contains(&address)
        {
            ops.push(Op::AddAddress { link: self.interface.clone(), address });
        }
        for stale in current.iter().filter(|a| Some(**a) != address && !a.ip.is_ipv6()) {
            ops.push(Op::DeleteAddress {
                link: self.interface.clone(),
                place: weft_dataplane::Place::Host,
                address: *stale,
            });
        }
        errors.extend(kernel.apply_each(&ops).await.into_iter().map(|(_, e)| e));
        errors
    }

    /// Starts wireguard-go unless a daemon answers on the interface's socket already (this
    /// agent's, or an earlier run's, which is adopted). Returns whether it started one.
    async fn ensure_daemon(&self) -> Result<bool, KernelError> {
        let socket = wireguard::socket_path(&self.interface);
        let answers = {
            let socket = socket.clone();
            tokio::task::spawn_blocking(move || wireguard::get(&socket).is_ok()).await.unwrap_or(false)
        };
        if answers {
            return Ok(false);
        }
        let doing = format!("starting wireguard-go for {}", self.interface);
        {
            let mut daemon = self.daemon.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(mut old) = daemon.take() {
                match old.try_wait() {
                    Ok(Some(status)) => tracing::warn!(%status, "wireguard-go exited; starting it again"),
                    _ => {
                        tracing::warn!("wireguard-go stopped answering; starting it again");
                        let _ = old.kill();
                        let _ = old.wait();
                    }
                }
            }
            let _ = std::fs::remove_file(&socket);
            let child = std::process::Command::new("wireguard-go")
                .args(["-f", &self.interface])
                .env("WG_PROCESS_FOREGROUND", "1")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| failed(&doing, e))?;
            *daemon = Some(child);
        }
        let deadline = Instant::now() + DAEMON_START;
        loop {
            let probe = socket.clone();
            if tokio::task::spawn_blocking(move || wireguard::get(&probe).is_ok()).await.unwrap_or(false) {
                tracing::info!(interface = %self.interface, "wireguard-go started");
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Err(failed(
                    doing,
                    format!("no UAPI socket at {} after {DAEMON_START:?}", socket.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes the interface down for good (uninstall): the kernel link is deleted, and
    /// wireguard-go exits when its socket goes.
    pub async fn remove(interface: &str, kernel: &Kernel) -> Result<(), KernelError> {
        kernel.delete_link(interface).await?;
        let socket = wireguard::socket_path(interface);
        match std::fs::remove_file(&socket) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(format!("removing {}", socket.display()), e)),
        }
    }
}
