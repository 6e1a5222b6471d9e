//! The switch namespace: a network namespace of weft's beside the host's, holding every
//! network's bridge, VXLAN device and the host ends of its containers' veths (decision 0004).
//! It holds no rules but `icc=false`'s and has br_netfilter's hooks off, so frames switched
//! within a network pay for no firewall and no connection tracking; what leaves a network goes
//! through its gateway pair into the host namespace, where routing, NAT, published ports and
//! isolation are.
//!
//! It is pinned at `/run/netns/NAME` like any `ip netns add` namespace, so it outlives the
//! agent (a restarted agent finds it by name; operators read it with `ip -n NAME`).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::KernelError;

/// Where named network namespaces are pinned.
pub const NETNS_DIR: &str = "/run/netns";

/// br_netfilter's switches, per namespace: present only while the module is loaded.
const BRIDGE_HOOKS: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

fn failed(doing: String) -> impl FnOnce(std::io::Error) -> KernelError {
    move |e| KernelError { doing, reason: e.to_string(), source: Some(std::sync::Arc::new(e)) }
}

fn errno(doing: String) -> impl FnOnce(nix::Error) -> KernelError {
    move |e| KernelError { doing, reason: e.desc().to_string(), source: None }
}

/// The path a switch namespace named `name` is pinned at.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The network namespace pinned at `path`, opened (`None` for nothing, or just a file left
/// where one was).
fn pinned_namespace(path: &Path) -> Option<File> {
    let file = File::open(path).ok()?;
    nix::sys::statfs::fstatfs(&file)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .then_some(file)
}

/// Whether `path` is a pinned network namespace.
fn is_pinned(path: &Path) -> bool {
    pinned_namespace(path).is_some()
}

/// The switch namespace named `name`, made and pinned if it is not there yet, with
/// br_netfilter's hooks off inside. Blocking: call it off the async workers.
pub fn ensure(name: &str) -> Result<PathBuf, KernelError> {
    let pin = path(name);
    if !is_pinned(&pin) {
        create(&pin)?;
    }
    quiet_bridge_hooks(&pin)?;
    Ok(pin)
}

fn create(pin: &Path) -> Result<(), KernelError> {
    let shown = pin.display().to_string();
    std::fs::create_dir_all(NETNS_DIR).map_err(failed(format!("creating {NETNS_DIR}")))?;
    File::create(pin).map_err(failed(format!("creating {shown}")))?;
    let target = pin.to_path_buf();
    // A thread of its own: unsharing changes the namespace of the calling thread, which then
    // ends instead of going back to serve anything else.
    let made = std::thread::spawn(move || -> Result<(), KernelError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(errno("making the switch namespace".into()))?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(errno(format!("pinning the switch namespace at {}", target.display())))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(KernelError { doing: format!("making {shown}"), reason: "panicked".into(), source: None })
    });
    if made.is_err() {
        let _ = std::fs::remove_file(pin);
    }
    made
}

/// Pins the namespace open at `held` at `pin` again when the pin is gone: `ip netns del`
/// unpins and removes it, but the namespace lives on, with every bridge, VXLAN device and
/// container veth in it, as long as the agent holds it open. Re-pinned, operators see it
/// again and agent restarts find it. Returns whether it had to be re-pinned; a different
/// namespace pinned there (deleted and made again by hand) is an error, as weft's devices are
/// not in it.
pub fn keep_pinned(pin: &Path, held: &File) -> Result<bool, KernelError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    if let Some(pinned) = pinned_namespace(pin) {
        let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
        return match (pinned.metadata(), held.metadata()) {
            (Ok(pinned), Ok(ours)) if !same(&pinned, &ours) => Err(KernelError {
                doing: format!("checking the switch namespace at {}", pin.display()),
                reason: "another namespace is pinned there (deleted and made again?); this agent's \
                         networks are in the one it holds: restart the agent to rebuild them there"
                    .into(),
                source: None,
            }),
            _ => Ok(false),
        };
    }
    let shown = pin.display().to_string();
    std::fs::create_dir_all(NETNS_DIR).map_err(failed(format!("creating {NETNS_DIR}")))?;
    File::create(pin).map_err(failed(format!("creating {shown}")))?;
    let source = format!("/proc/self/fd/{}", held.as_raw_fd());
    let pinned = mount(Some(source.as_str()), pin, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(errno(format!("pinning the switch namespace at {shown} again")));
    if pinned.is_err() {
        let _ = std::fs::remove_file(pin);
    }
    pinned.map(|()| true)
}

/// Runs `work` on a thread inside the namespace at `netns`.
fn inside<T: Send + 'static>(
    netns: &Path,
    work: impl FnOnce() -> Result<T, KernelError> + Send + 'static,
) -> Result<T, KernelError> {
    let shown = netns.display().to_string();
    let target = File::open(netns).map_err(failed(format!("opening {shown}")))?;
    let doing = format!("entering {shown}");
    std::thread::spawn(move || {
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(errno(doing))?;
        work()
    })
    .join()
    .unwrap_or_else(|_| {
        Err(KernelError { doing: format!("working in {shown}"), reason: "panicked".into(), source: None })
    })
}

/// Turns br_netfilter's hooks off inside the switch: where the module is loaded (Docker and
/// Kubernetes hosts), every new namespace starts with them on, and each bridged frame would be
/// handed to the IP hooks. Nothing in the switch needs them: `icc=false` is a bridge-family
/// rule. Called again on every rules load, as the module may be loaded after weft started.
pub fn quiet_bridge_hooks(netns: &Path) -> Result<(), KernelError> {
    inside(netns, || {
        for hook in BRIDGE_HOOKS {
            match std::fs::read_to_string(hook) {
                Ok(value) if value.trim() != "0" => {
                    std::fs::write(hook, "0").map_err(failed(format!("turning off {hook} in the switch")))?;
                }
                _ => {}
            }
        }
        Ok(())
    })
}

/// Unpins and so ends the switch namespace (and whatever is still in it). Absent is fine.
pub fn remove(name: &str) -> Result<(), KernelError> {
    let pin = path(name);
    if is_pinned(&pin) {
        umount2(&pin, MntFlags::MNT_DETACH).map_err(errno(format!("unpinning {}", pin.display())))?;
    }
    match std::fs::remove_file(&pin) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(failed(format!("removing {}", pin.display()))(e))
        }
        _ => Ok(()),
    }
}
