//! WireGuard for encrypted networks: the host's keypair (private key on disk, mode 0600,
//! never sent anywhere) and a client for WireGuard's cross-platform configuration protocol
//! (UAPI), which the userspace implementation (`wireguard-go`) serves on a unix socket.
//! Request building and answer parsing are pure; only [`uapi`] touches the socket.
//!
//! weft speaks UAPI itself rather than through wireguard-control: the protocol is a few
//! lines of text, and it keeps an LGPL dependency and a second netlink stack out of weft.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A Curve25519 key, as WireGuard uses them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A Key may be private, and whatever derives Debug over one (an Update, a
        // DeviceConfig, the agent's Tunnel) must be safe to log: no key material at all.
        // Public keys are logged on purpose with `to_base64`.
        f.write_str("Key(redacted)")
    }
}

impl Key {
    /// The base64 form `wg` prints and weft registers.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn from_base64(text: &str) -> Option<Key> {
        let bytes = STANDARD.decode(text.trim()).ok()?;
        Some(Key(<[u8; 32]>::try_from(bytes.as_slice()).ok()?))
    }

    /// The hex form UAPI uses.
    pub fn to_hex(&self) -> String {
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    pub fn from_hex(text: &str) -> Option<Key> {
        if text.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Key(key))
    }

    /// The public key of this private key.
    /// A fresh private key from the kernel's random source, clamped as X25519 requires (so
    /// `wg` shows the same key).
    pub fn generate() -> std::io::Result<Key> {
        let mut random = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
        random[0] &= 248;
        random[31] = (random[31] & 127) | 64;
        Ok(Key(random))
    }

    pub fn public(&self) -> Key {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        Key(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

/// Writes a private key to a new file with mode 0600 (created exclusively: an existing file
/// is an error, never overwritten half-way).
pub fn write_private_key(path: &Path, key: &Key) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(format!("{}\n", key.to_base64()).as_bytes())?;
    file.sync_all()
}

/// Loads the host's private key from `path`, or creates one (mode 0600, whole or not at all,
/// one key even when two starts race). Refuses a key file others can read.
pub fn load_or_create_private_key(path: &Path) -> std::io::Result<Key> {
    use std::os::unix::fs::PermissionsExt;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(invalid(format!(
                    "{} is readable by others (mode {:o}); it must be 0600: chmod 600 it or remove it to make a new key",
                    path.display(),
                    mode & 0o777
                )));
            }
            Key::from_base64(&text)
                .ok_or_else(|| invalid(format!("{} does not hold a base64 WireGuard key", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Key::generate()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Written whole beside it, then linked into place: an agent killed while writing
            // leaves no empty key file behind (seen when an agent was killed just after
            // starting), and of two agents starting at once the second links nothing and
            // reads the first one's key.
            static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let temporary = path.with_extension(format!("new.{}.{write}", std::process::id()));
            let _ = std::fs::remove_file(&temporary);
            write_private_key(&temporary, &key)?;
            let linked = std::fs::hard_link(&temporary, path);
            let _ = std::fs::remove_file(&temporary);
            match linked {
                Ok(()) => Ok(key),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_private_key(path),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// One peer as weft configures it: another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    /// Replaces whatever allowed IPs the peer had.
    pub allowed_ips: Vec<(IpAddr, u8)>,
    pub keepalive_seconds: Option<u16>,
}

/// A change to a WireGuard device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    /// Drop every peer not listed in `peers`.
    pub replace_peers: bool,
    pub peers: Vec<Peer>,
    pub remove: Vec<Key>,
}

/// The `set=1` request for `update`.
pub fn set_request(update: &Update) -> String {
    let mut s = String::from("set=1\n");
    if let Some(key) = &update.private_key {
        let _ = writeln!(s, "private_key={}", key.to_hex());
    }
    if let Some(port) = update.listen_port {
        let _ = writeln!(s, "listen_port={port}");
    }
    if update.replace_peers {
        s.push_str("replace_peers=true\n");
    }
    for peer in &update.peers {
        let _ = writeln!(s, "public_key={}", peer.public_key.to_hex());
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(s, "endpoint={endpoint}");
        }
        if let Some(seconds) = peer.keepalive_seconds {
            let _ = writeln!(s, "persistent_keepalive_interval={seconds}");
        }
        s.push_str("replace_allowed_ips=true\n");
        for (ip, prefix) in &peer.allowed_ips {
            let _ = writeln!(s, "allowed_ip={ip}/{prefix}");
        }
    }
    for key in &update.remove {
        let _ = writeln!(s, "public_key={}\nremove=true", key.to_hex());
    }
    s.push('\n');
    s
}

/// A peer as the device reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<(IpAddr, u8)>,
    /// Seconds since the epoch of the last handshake (0: none yet).
    pub last_handshake_seconds: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A device as `get=1` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    pub public_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

/// Why a device's description could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceReadError {
    #[error("the device answered errno {0}")]
    Errno(String),
    #[error("malformed UAPI line {0:?}")]
    UapiLine(String),
    #[error("wg printed nothing for the device")]
    NoDevice,
    #[error("unexpected {what} line {line:?} from wg")]
    DumpLine { what: &'static str, line: String },
}

/// Parses the answer to `get=1`; an `errno` other than 0 is an error.
pub fn parse_get(text: &str) -> Result<DeviceState, DeviceReadError> {
    let mut device = DeviceState::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| DeviceReadError::UapiLine(line.to_string()))?;
        match key {
            "errno" if value != "0" => return Err(DeviceReadError::Errno(value.to_string())),
            "private_key" => device.public_key = Key::from_hex(value).map(|k| k.public()),
            "listen_port" => device.listen_port = value.parse().unwrap_or(0),
            "public_key" => {
                device.peers.push(PeerState { public_key: Key::from_hex(value), ..PeerState::default() })
            }
            _ => {
                let Some(peer) = device.peers.last_mut() else { continue };
                match key {
                    "endpoint" => peer.endpoint = value.parse().ok(),
                    "allowed_ip" => {
                        if let Some((ip, prefix)) = value.split_once('/')
                            && let (Ok(ip), Ok(prefix)) = (ip.parse(), prefix.parse())
                        {
                            peer.allowed_ips.push((ip, prefix));
                        }
                    }
                    "last_handshake_time_sec" => peer.last_handshake_seconds = value.parse().unwrap_or(0),
                    "rx_bytes" => peer.rx_bytes = value.parse().unwrap_or(0),
                    "tx_bytes" => peer.tx_bytes = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    Ok(device)
}

/// Where wireguard-go serves UAPI for `interface`. The directory is shared by every network
/// namespace, so interface names must be unique on the machine.
pub fn socket_path(interface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{interface}.sock"))
}

/// Sends one UAPI request and returns the answer (up to the blank line that ends it).
pub fn uapi(socket: &Path, request: &str) -> std::io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.ends_with(b"\n\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Applies `update` to the device behind `socket`.
pub fn apply(socket: &Path, update: &Update) -> std::io::Result<()> {
    let answer = uapi(socket, &set_request(update))?;
    match answer.lines().find_map(|l| l.strip_prefix("errno=")) {
        Some("0") => Ok(()),
        Some(errno) => {
            Err(std::io::Error::other(format!("WireGuard refused the configuration (errno {errno})")))
        }
        None => Err(std::io::Error::other("WireGuard gave no answer to the configuration")),
    }
}

/// Reads the device behind `socket`.
pub fn get(socket: &Path) -> std::io::Result<DeviceState> {
    parse_get(&uapi(socket, "get=1\n\n")?).map_err(std::io::Error::other)
}

/// How a host runs WireGuard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The kernel module: the device is a `wireguard` link, configured over generic netlink
    /// (through `wg`, which speaks it).
    Kernel,
    /// `wireguard-go`: the device is a TUN link served by a daemon, configured over UAPI.
    Userspace,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace (wireguard-go)",
        })
    }
}

impl Backend {
    /// Applies `update` to `interface`.
    pub fn apply(self, interface: &str, update: &Update) -> std::io::Result<()> {
        match self {
            Backend::Userspace => apply(&socket_path(interface), update),
            Backend::Kernel => {
                let mut update = update.clone();
                if update.replace_peers {
                    // `wg set` has no "replace peers": remove the ones not listed.
                    let keep: Vec<Key> = update.peers.iter().map(|p| p.public_key).collect();
                    let current = self.get(interface)?;
                    update.remove.extend(
                        current.peers.iter().filter_map(|p| p.public_key).filter(|k| !keep.contains(k)),
                    );
                }
                let (args, stdin) = wg_set_args(interface, &update);
                run_wg(&args, stdin.as_deref()).map(drop)
            }
        }
    }

    /// Reads `interface`.
    pub fn get(self, interface: &str) -> std::io::Result<DeviceState> {
        match self {
            Backend::Userspace => get(&socket_path(interface)),
            Backend::Kernel => parse_dump(&run_wg(&["show".into(), interface.into(), "dump".into()], None)?)
                .map_err(std::io::Error::other),
        }
    }
}

/// Runs `wg` with `args`, feeding `stdin`, and returns its output.
fn run_wg(args: &[String], stdin: Option<&str>) -> std::io::Result<String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::other(format!("cannot run wg ({e}); install wireguard-tools")))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or_default().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(std::io::Error::other(format!(
            "wg {}: {}",
            args.first().map(String::as_str).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `wg set` arguments for `update`; the private key, if any, travels on standard input so it
/// never shows in a process listing.
pub fn wg_set_args(interface: &str, update: &Update) -> (Vec<String>, Option<String>) {
    let mut args = vec!["set".to_string(), interface.to_string()];
    let mut stdin = None;
    if let Some(key) = &update.private_key {
        args.extend(["private-key".into(), "/dev/stdin".into()]);
        stdin = Some(format!("{}\n", key.to_base64()));
    }
    if let Some(port) = update.listen_port {
        args.extend(["listen-port".into(), port.to_string()]);
    }
    for peer in &update.peers {
        args.extend(["peer".into(), peer.public_key.to_base64()]);
        if let Some(endpoint) = peer.endpoint {
            args.extend(["endpoint".into(), endpoint.to_string()]);
        }
        if let Some(seconds) = peer.keepalive_seconds {
            args.extend(["persistent-keepalive".into(), seconds.to_string()]);
        }
        let allowed: Vec<String> =
            peer.allowed_ips.iter().map(|(ip, prefix)| format!("{ip}/{prefix}")).collect();
        args.extend(["allowed-ips".into(), allowed.join(",")]);
    }
    for key in &update.remove {
        args.extend(["peer".into(), key.to_base64(), "remove".into()]);
    }
    (args, stdin)
}

/// Parses `wg show IFACE dump`: the device on the first line (private key, public key,
/// listen port, fwmark), then one line per peer (public key, preshared key, endpoint,
/// allowed IPs, latest handshake, rx, tx, keepalive), tab separated.
pub fn parse_dump(text: &str) -> Result<DeviceState, DeviceReadError> {
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let first = lines.next().ok_or(DeviceReadError::NoDevice)?;
    let fields: Vec<&str> = first.split('\t').collect();
    let [_, public, port, ..] = fields[..] else {
        return Err(DeviceReadError::DumpLine { what: "device", line: first.to_string() });
    };
    let mut device = DeviceState {
        public_key: Key::from_base64(public),
        listen_port: port.parse().unwrap_or(0),
        peers: Vec::new(),
    };
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        let [public, _, endpoint, allowed, handshake, rx, tx, ..] = fields[..] else {
            return Err(DeviceReadError::DumpLine { what: "peer", line: line.to_string() });
        };
        let allowed_ips = allowed
            .split(',')
            .filter_map(|a| {
                let (ip, prefix) = a.split_once('/')?;
                Some((ip.parse().ok()?, prefix.parse().ok()?))
            })
            .collect();
        device.peers.push(PeerState {
            public_key: Key::from_base64(public),
            endpoint: endpoint.parse().ok(),
            allowed_ips,
            last_handshake_seconds: handshake.parse().unwrap_or(0),
            rx_bytes: rx.parse().unwrap_or(0),
            tx_bytes: tx.parse().unwrap_or(0),
        });
    }
    Ok(device)
}

/// What a host's WireGuard device should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub private_key: Key,
    pub listen_port: u16,
    pub peers: Vec<Peer>,
}

/// The smallest update that makes `have` into `want`, or `None` when it already is. Peers
/// that are right are left alone, so their sessions carry on; a peer whose key changed is a
/// new peer (and the old key is removed).
pub fn changes(want: &DeviceConfig, have: &DeviceState) -> Option<Update> {
    let mut update = Update::default();
    if have.public_key != Some(want.private_key.public()) {
        update.private_key = Some(want.private_key);
    }
    if have.listen_port != want.listen_port {
        update.listen_port = Some(want.listen_port);
    }
    let sorted = |ips: &[(IpAddr, u8)]| {
        let mut ips = ips.to_vec();
        ips.sort();
        ips
    };
    for peer in &want.peers {
        let current = have.peers.iter().find(|p| p.public_key == Some(peer.public_key));
        let right = current.is_some_and(|c| {
            c.endpoint == peer.endpoint && sorted(&c.allowed_ips) == sorted(&peer.allowed_ips)
        });
        if !right {
            update.peers.push(peer.clone());
        }
    }
    for current in &have.peers {
        match current.public_key {
            Some(key) if want.peers.iter().any(|p| p.public_key == key) => {}
            Some(key) => update.remove.push(key),
            None => {}
        }
    }
    (update != Update::default()).then_some(update)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_key_material() {
        let private = Key([0xa7; 32]);
        let update = Update { private_key: Some(private), ..Update::default() };
        let config = DeviceConfig { private_key: private, listen_port: 51820, peers: Vec::new() };
        let text = format!("{update:?} {config:?} {private:?}");
        let base64 = private.to_base64();
        for window in base64.as_bytes().windows(4) {
            assert!(!text.contains(std::str::from_utf8(window).unwrap()), "{text}");
        }
    }

    #[test]
    fn keys_convert_and_derive_the_public_key_as_wg_does() {
        // `wg pubkey` of this private key (RFC 7748 test vector, as base64).
        let private = Key::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        assert_eq!(private.public().to_base64(), "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=");
        assert_eq!(Key::from_hex(&private.to_hex()), Some(private));
        assert_eq!(Key::from_base64("short"), None);
        assert_eq!(Key::from_hex("zz"), None);
        assert!(!format!("{private:?}").contains(&private.to_base64()), "Debug never prints a whole key");
    }

    #[test]
    fn a_private_key_is_made_once_with_mode_0600_and_refused_when_others_can_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let made = load_or_create_private_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_private_key(&path).unwrap(), made);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = load_or_create_private_key(&path).unwrap_err();
        assert!(refused.to_string().contains("must be 0600"), "{refused}");
    }

    #[test]
    fn starts_racing_for_the_key_all_get_the_same_one_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let keys: Vec<Key> = std::thread::scope(|scope| {
            let racers: Vec<_> =
                (0..8).map(|_| scope.spawn(|| load_or_create_private_key(&path).unwrap())).collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, vec![std::ffi::OsString::from("wireguard.key")]);
    }

    #[test]
    fn a_set_request_replaces_peers_and_their_allowed_ips() {
        let peer = Key([1; 32]);
        let gone = Key([2; 32]);
        let request = set_request(&Update {
            private_key: Some(Key([3; 32])),
            listen_port: Some(51820),
            replace_peers: true,
            peers: vec![Peer {
                public_key: peer,
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                allowed_ips: vec![("10.255.0.2".parse().unwrap(), 32)],
                keepalive_seconds: Some(25),
            }],
            remove: vec![gone],
        });
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\nreplace_peers=true\npublic_key={}\nendpoint=192.0.2.2:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.255.0.2/32\npublic_key={}\nremove=true\n\n",
            "03".repeat(32),
            "01".repeat(32),
            "02".repeat(32)
        );
        assert_eq!(request, expected);
    }

    #[test]
    fn a_get_answer_parses_and_errors_are_errors() {
        let text = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nendpoint=192.0.2.2:51820\nallowed_ip=10.255.0.2/32\nlast_handshake_time_sec=1700000000\nrx_bytes=10\ntx_bytes=20\nerrno=0\n\n",
            "03".repeat(32),
            "01".repeat(32)
        );
        let device = parse_get(&text).unwrap();
        assert_eq!(device.listen_port, 51820);
        assert_eq!(device.public_key, Some(Key([3; 32]).public()));
        assert_eq!(device.peers.len(), 1);
        assert_eq!(device.peers[0].allowed_ips, vec![("10.255.0.2".parse().unwrap(), 32)]);
        assert_eq!((device.peers[0].rx_bytes, device.peers[0].tx_bytes), (10, 20));
        assert!(parse_get("errno=22\n\n").is_err());
    }

    fn peer(byte: u8, endpoint: &str, tunnel: &str) -> Peer {
        Peer {
            public_key: Key([byte; 32]).public(),
            endpoint: Some(endpoint.parse().unwrap()),
            allowed_ips: vec![(tunnel.parse().unwrap(), 32)],
            keepalive_seconds: None,
        }
    }

    fn state_of(config: &DeviceConfig) -> DeviceState {
        DeviceState {
            public_key: Some(config.private_key.public()),
            listen_port: config.listen_port,
            peers: config
                .peers
                .iter()
                .map(|p| PeerState {
                    public_key: Some(p.public_key),
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.clone(),
                    ..PeerState::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_device_in_line_needs_nothing_and_drift_is_one_peer_at_a_time() {
        let want = DeviceConfig {
            private_key: Key([1; 32]),
            listen_port: 51820,
            peers: vec![peer(2, "192.0.2.2:51820", "10.255.0.2"), peer(3, "192.0.2.3:51820", "10.255.0.3")],
        };
        let mut have = state_of(&want);
        assert_eq!(changes(&want, &have), None);

        // A fresh device gets everything.
        let fresh = changes(&want, &DeviceState::default()).unwrap();
        assert_eq!(fresh.private_key, Some(Key([1; 32])));
        assert_eq!((fresh.listen_port, fresh.peers.len(), fresh.remove.len()), (Some(51820), 2, 0));

        // A moved peer is rewritten, a stranger removed; the peer that is right is untouched.
        have.peers[1].endpoint = Some("192.0.2.99:51820".parse().unwrap());
        have.peers.push(PeerState { public_key: Some(Key([9; 32]).public()), ..PeerState::default() });
        let update = changes(&want, &have).unwrap();
        assert_eq!(update.private_key, None);
        assert_eq!(update.peers, vec![want.peers[1].clone()]);
        assert_eq!(update.remove, vec![Key([9; 32]).public()]);
        assert!(!update.replace_peers, "replacing peers would drop every session");
    }

    #[test]
    fn a_rotated_key_is_a_new_peer_and_the_old_one_goes() {
        let before = DeviceConfig {
            private_key: Key([1; 32]),
            listen_port: 51820,
            peers: vec![peer(2, "192.0.2.2:51820", "10.255.0.2")],
        };
        let after = DeviceConfig { peers: vec![peer(7, "192.0.2.2:51820", "10.255.0.2")], ..before.clone() };
        let update = changes(&after, &state_of(&before)).unwrap();
        assert_eq!(update.peers, after.peers);
        assert_eq!(update.remove, vec![Key([2; 32]).public()]);
        // Our own rotation: only the private key changes.
        let own = DeviceConfig { private_key: Key([5; 32]), ..before.clone() };
        let update = changes(&own, &state_of(&before)).unwrap();
        assert_eq!((update.private_key, update.peers.len(), update.remove.len()), (Some(Key([5; 32])), 0, 0));
    }

    #[test]
    fn wg_arguments_keep_the_private_key_off_the_command_line_and_dumps_parse() {
        let update = Update {
            private_key: Some(Key([1; 32])),
            listen_port: Some(51820),
            peers: vec![peer(2, "192.0.2.2:51820", "10.255.0.2")],
            remove: vec![Key([3; 32])],
            replace_peers: false,
        };
        let (args, stdin) = wg_set_args("weftwg", &update);
        let key = Key([2; 32]).public().to_base64();
        let removed = Key([3; 32]).to_base64();
        assert_eq!(
            args.join(" "),
            format!(
                "set weftwg private-key /dev/stdin listen-port 51820 peer {key} endpoint 192.0.2.2:51820 allowed-ips 10.255.0.2/32 peer {removed} remove"
            )
        );
        assert_eq!(stdin, Some(format!("{}\n", Key([1; 32]).to_base64())));
        assert!(!args.iter().any(|a| a.contains(&Key([1; 32]).to_base64())));

        let private = Key([1; 32]);
        let dump = format!(
            "{}\t{}\t51820\toff\n{key}\t(none)\t192.0.2.2:51820\t10.255.0.2/32\t1700000000\t10\t20\toff\n",
            private.to_base64(),
            private.public().to_base64()
        );
        let device = parse_dump(&dump).unwrap();
        assert_eq!((device.public_key, device.listen_port), (Some(private.public()), 51820));
        assert_eq!(device.peers[0].allowed_ips, vec![("10.255.0.2".parse().unwrap(), 32)]);
        assert_eq!((device.peers[0].last_handshake_seconds, device.peers[0].tx_bytes), (1_700_000_000, 20));
        assert!(parse_dump("").is_err());
    }
}
