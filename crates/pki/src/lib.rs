//! weft's certificates. Every cluster has its own CA; every gRPC connection is mutual TLS
//! with credentials it issued; a certificate says who its holder is in its common name,
//! `role:name` — `admin:ops`, `node:h1`, `controller:2` — which is all authorization needs.
//!
//! - [`Authority`]: the cluster CA (made once at bootstrap, key kept 0600), which issues
//!   credentials for a role and name.
//! - [`Credentials`]: the CA certificate, a certificate and its key, in a directory as
//!   `ca.pem`, `cert.pem`, `key.pem` — what every process is started with (`--tls-dir`).
//! - [`Caller`]: who a peer is, from the certificate it presented.
//! - [`authorize`]: a tower layer for the controllers' server that lets each role call only
//!   its methods and hands the [`Caller`] to the handlers.

use std::fmt;
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How long issued certificates are valid.
pub const VALIDITY_DAYS: i64 = 365;

/// [`VALIDITY_DAYS`] as a duration.
const FULL_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(86_400 * VALIDITY_DAYS.unsigned_abs());

/// Certificates are valid from this long before they are issued, for clocks a little behind;
/// the issue time is recovered from `not_before` by adding it back.
pub const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("making a certificate: {0}")]
    Certificate(String),
}

fn file_error(path: &Path, reason: impl fmt::Display) -> PkiError {
    PkiError::File { path: path.display().to_string(), reason: reason.to_string() }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| file_error(path, e))
}

/// Writes `text` to a new file (mode 0600 for keys, 0644 otherwise), replacing an old one.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&temporary)
        .map_err(|e| file_error(&temporary, e))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| file_error(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| file_error(path, e))
}

/// The addresses and names a certificate (DER) is valid for.
pub fn sans_of(der: &[u8]) -> Result<Vec<String>, PkiError> {
    use x509_parser::extensions::GeneralName;
    let unreadable = |e: &dyn fmt::Display| PkiError::Certificate(format!("unreadable certificate: {e}"));
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| unreadable(&e))?;
    let Some(names) = cert.subject_alternative_name().map_err(|e| unreadable(&e))? else {
        return Ok(Vec::new());
    };
    let mut sans = Vec::new();
    for name in &names.value.general_names {
        match name {
            GeneralName::DNSName(dns) => sans.push((*dns).to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => sans.push(
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default()).to_string(),
                ),
                16 => sans.push(
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default()).to_string(),
                ),
                _ => return Err(unreadable(&"an IP address of neither 4 nor 16 bytes")),
            },
            other => return Err(unreadable(&format!("unexpected subject alternative name {other:?}"))),
        }
    }
    Ok(sans)
}

/// Where [`Credentials::save`] stages a new certificate and key before putting them in place.
const STAGED_CERT: &str = "cert.pem.new";
const STAGED_KEY: &str = "key.pem.new";

/// Whether `key_pem` is the private key of the certificate `cert_pem`.
fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return false };
    let Ok(cert) = pem.parse_x509() else { return false };
    KeyPair::from_pem(key_pem)
        .is_ok_and(|key| rcgen::PublicKeyData::subject_public_key_info(&key) == cert.public_key().raw)
}

/// Reads `path` and its permission bits (from the one open file: a save in another process
/// may rename over it meanwhile), or `None` when it is not there.
fn read_if_there(path: &Path) -> Result<Option<(String, u32)>, PkiError> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e)),
    };
    let mode = file.metadata().map_err(|e| file_error(path, e))?.permissions().mode();
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| file_error(path, e))?;
    Ok(Some((text, mode)))
}

/// A pair as read: certificate, key, the key's file and its permission bits.
type Pair = (String, String, std::path::PathBuf, u32);

/// A staged certificate with the key that belongs to it, staged or already moved into place:
/// a save past its point of no return. Staged files are complete when they exist (each is
/// written whole, then renamed into its staged name).
fn staged_pair(dir: &Path) -> Result<Option<Pair>, PkiError> {
    let Some((cert, _)) = read_if_there(&dir.join(STAGED_CERT))? else { return Ok(None) };
    for key_path in [dir.join(STAGED_KEY), dir.join("key.pem")] {
        if let Some((key, mode)) = read_if_there(&key_path)?
            && key_matches(&cert, &key)
        {
            return Ok(Some((cert, key, key_path, mode)));
        }
    }
    Ok(None)
}

/// The certificate and key `dir` holds: a [`staged_pair`], or else `cert.pem` and `key.pem`.
/// A save in another process moves files between these reads, so a pair that does not match
/// is read again.
fn current_pair(dir: &Path) -> Result<Pair, PkiError> {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let required = |path: &Path| read_if_there(path)?.ok_or_else(|| file_error(path, "missing"));
    for _ in 0..5 {
        if let Some(pair) = staged_pair(dir)? {
            return Ok(pair);
        }
        let ((cert, _), (key, mode)) = (required(&cert_path)?, required(&key_path)?);
        if key_matches(&cert, &key) {
            return Ok((cert, key, key_path, mode));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(file_error(&key_path, format!("not the key of {}", cert_path.display())))
}

/// Makes what [`current_pair`] reads permanent: a [`staged_pair`] is put in place, key
/// first; whatever else is staged is a save cut short before it replaced anything, and goes.
fn finish_staged(dir: &Path) -> Result<(), PkiError> {
    let (staged_cert, staged_key) = (dir.join(STAGED_CERT), dir.join(STAGED_KEY));
    let mut changed = false;
    if let Some((_, _, key_path, _)) = staged_pair(dir)? {
        if key_path == staged_key {
            let key = dir.join("key.pem");
            std::fs::rename(&staged_key, &key).map_err(|e| file_error(&key, e))?;
        }
        let cert = dir.join("cert.pem");
        std::fs::rename(&staged_cert, &cert).map_err(|e| file_error(&cert, e))?;
        changed = true;
    }
    for staged in [&staged_key, &staged_cert] {
        match std::fs::remove_file(staged) {
            Ok(()) => changed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(staged, e)),
        }
    }
    if changed { sync_dir(dir) } else { Ok(()) }
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| file_error(dir, e))
}

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// A host's agent: register itself, heartbeat, watch, endpoints on its own host.
    Node,
    /// A controller: Raft between members.
    Controller,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Node => "node",
            Role::Controller => "controller",
        }
    }
}

/// Who is calling, as their certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub name: String,
    /// When the certificate was issued, ms since the epoch (0 when unknown).
    pub issued_ms: u64,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.name)
    }
}

/// Why a certificate does not name a weft caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    #[error("no client certificate")]
    NoCertificate,
    /// x509-parser's error borrows the certificate's bytes; its message is kept instead.
    #[error("unreadable certificate: {0}")]
    Unreadable(String),
    #[error("the certificate has no common name")]
    NoCommonName,
    #[error("common name {0:?} is not role:name")]
    NotRoleName(String),
    #[error("unknown role {role:?} in certificate {common_name:?}")]
    UnknownRole { role: String, common_name: String },
    #[error("certificate {0:?} names nobody")]
    NoName(String),
}

impl Caller {
    /// Reads `role:name` from a certificate's common name (DER).
    pub fn from_certificate(der: &[u8]) -> Result<Caller, CallerError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| CallerError::Unreadable(e.to_string()))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(CallerError::NoCommonName)?;
        let not_before = u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0);
        let issued_ms = (not_before + CLOCK_SKEW.as_secs()) * 1000;
        Ok(Caller { issued_ms, ..Caller::parse(cn)? })
    }

    pub fn parse(common_name: &str) -> Result<Caller, CallerError> {
        let (role, name) =
            common_name.split_once(':').ok_or_else(|| CallerError::NotRoleName(common_name.to_string()))?;
        let role = match role {
            "admin" => Role::Admin,
            "node" => Role::Node,
            "controller" => Role::Controller,
            other => {
                return Err(CallerError::UnknownRole {
                    role: other.to_string(),
                    common_name: common_name.to_string(),
                });
            }
        };
        if name.is_empty() {
            return Err(CallerError::NoName(common_name.to_string()));
        }
        Ok(Caller { role, name: name.to_string(), issued_ms: 0 })
    }
}

/// A CA certificate, a certificate and its private key, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// `ca.pem`, `cert.pem` and `key.pem` from `dir`; a key others can read is refused. A
    /// save cut short by a crash (see [`Credentials::save`]) reads as the pair it leaves
    /// whole, and a save under way in another process as the old pair or the new one; the
    /// directory is not changed (its owner tidies it with [`Credentials::recover`]).
    pub fn load(dir: &Path) -> Result<Credentials, PkiError> {
        let (cert, key, key_path, mode) = current_pair(dir)?;
        if mode & 0o077 != 0 {
            return Err(file_error(
                &key_path,
                format!("readable by others (mode {:o}); chmod 600 it", mode & 0o777),
            ));
        }
        Ok(Credentials { ca: read(&dir.join("ca.pem"))?, cert, key })
    }

    /// Finishes a save a crash cut short, or drops what it left staged: for the process
    /// that owns `dir`, when it starts.
    pub fn recover(dir: &Path) -> Result<(), PkiError> {
        finish_staged(dir)
    }

    /// Writes the credential to `dir`. The certificate and key are staged first and then
    /// put in place, so that a crash part-way leaves either the old pair or the new one for
    /// [`Credentials::load`], never a certificate beside another's key.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        write(&dir.join("ca.pem"), &self.ca, false)?;
        write(&dir.join(STAGED_CERT), &self.cert, false)?;
        write(&dir.join(STAGED_KEY), &self.key, true)?;
        finish_staged(dir)
    }

    /// The addresses and names the certificate is valid for.
    pub fn sans(&self) -> Result<Vec<String>, PkiError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert.as_bytes())
            .map_err(|e| PkiError::Certificate(format!("unreadable certificate: {e}")))?;
        sans_of(&pem.contents)
    }

    /// When the certificate stops being valid, ms since the epoch.
    pub fn expires_ms(&self) -> Result<u64, PkiError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert.as_bytes())
            .map_err(|e| PkiError::Certificate(format!("unreadable certificate: {e}")))?;
        let cert =
            pem.parse_x509().map_err(|e| PkiError::Certificate(format!("unreadable certificate: {e}")))?;
        Ok(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0) * 1000)
    }

    /// How this credential stands at `now_ms`, warned `within` ahead of its expiry.
    pub fn standing(&self, now_ms: u64, within: std::time::Duration) -> Result<Standing, PkiError> {
        Ok(Standing::of(self.expires_ms()?, now_ms, within))
    }

    /// For a client: trust only the cluster CA, present this certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// The cluster CA.
pub struct Authority {
    cert: String,
    key: KeyPair,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn cert_error(e: rcgen::Error) -> PkiError {
    PkiError::Certificate(e.to_string())
}

impl Authority {
    /// A new CA for the cluster `cluster`.
    pub fn create(cluster: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("weft cluster CA {cluster}"));
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key).map_err(cert_error)?;
        Ok(Authority { cert: cert.pem(), key })
    }

    /// `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<Authority, PkiError> {
        let key_path = dir.join("ca-key.pem");
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| file_error(&key_path, e))?;
        Ok(Authority { cert: read(&dir.join("ca.pem"))?, key })
    }

    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        write(&dir.join("ca.pem"), &self.cert, false)?;
        write(&dir.join("ca-key.pem"), &self.key.serialize_pem(), true)
    }

    pub fn certificate(&self) -> &str {
        &self.cert
    }

    /// Signs a joiner's certificate request for `role:name`. Only the request's public key is
    /// taken: the name, role and addresses are the ones the token and request vouch for here.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        sans: &[String],
    ) -> Result<String, PkiError> {
        let mut request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Certificate(format!("unreadable certificate request: {e}")))?;
        request.params = leaf_params(role, name, sans, FULL_VALIDITY)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert, &self.key).map_err(cert_error)?;
        Ok(request.signed_by(&issuer).map_err(cert_error)?.pem())
    }

    /// Credentials for `role:name`, valid for the host names and addresses in `sans` (what
    /// clients dial a server by; empty for a client-only credential).
    pub fn issue(&self, role: Role, name: &str, sans: &[String]) -> Result<Credentials, PkiError> {
        self.issue_valid_for(role, name, sans, FULL_VALIDITY)
    }

    /// [`Authority::issue`] with a validity of the caller's choosing (short-lived credentials).
    pub fn issue_valid_for(
        &self,
        role: Role,
        name: &str,
        sans: &[String],
        validity: std::time::Duration,
    ) -> Result<Credentials, PkiError> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let params = leaf_params(role, name, sans, validity)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert, &self.key).map_err(cert_error)?;
        let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
        Ok(Credentials { ca: self.cert.clone(), cert: cert.pem(), key: key.serialize_pem() })
    }
}

/// What an issued certificate says: `role:name`, the addresses, valid from now (less the
/// clock skew) for [`VALIDITY_DAYS`].
fn leaf_params(
    role: Role,
    name: &str,
    sans: &[String],
    validity: std::time::Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(sans.to_vec()).map_err(cert_error)?;
    params.distinguished_name.push(DnType::CommonName, format!("{}:{name}", role.as_str()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(now);
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
    Ok(params)
}

/// SHA-256 of `bytes`, lowercase hex (fingerprints, token secrets).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a PEM certificate's DER, lowercase hex: what a joining machine pins.
pub fn fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::Certificate(format!("unreadable certificate: {e}")))?;
    Ok(sha256_hex(&pem.contents))
}

/// A new key and a certificate request for `role:name`, both PEM: the key stays here.
pub fn certificate_request(role: Role, name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    params.distinguished_name.push(DnType::CommonName, format!("{}:{name}", role.as_str()));
    let request = params.serialize_request(&key).map_err(cert_error)?;
    Ok((request.pem().map_err(cert_error)?, key.serialize_pem()))
}

pub mod authorize;
pub mod join;
pub mod serve;

/// Where a credential stands against its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// More than the warning period left.
    Valid,
    /// Inside the warning period: renew it. Whole days left, rounded down.
    Due { days_left: u64 },
    /// Past its expiry: peers refuse it.
    Expired,
}

impl Standing {
    /// A credential expiring at `expires_ms`, seen at `now_ms`, warned `within` ahead.
    pub fn of(expires_ms: u64, now_ms: u64, within: std::time::Duration) -> Standing {
        let Some(left_ms) = expires_ms.checked_sub(now_ms).filter(|left| *left > 0) else {
            return Standing::Expired;
        };
        if u128::from(left_ms) > within.as_millis() {
            Standing::Valid
        } else {
            Standing::Due { days_left: left_ms / 86_400_000 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_addresses() {
        let ca = Authority::create("c").unwrap();
        let sans = vec!["10.1.2.3".to_string(), "fd00::7".to_string(), "ctl-1.example".to_string()];
        let issued = ca.issue(Role::Controller, "1", &sans).unwrap();
        let mut found = issued.sans().unwrap();
        found.sort();
        let mut expected = sans;
        expected.sort();
        assert_eq!(found, expected);
    }

    /// Every point a crash can cut a save at leaves a matching pair: the old one before the
    /// first rename, the new one from it on.
    #[test]
    fn a_save_cut_short_anywhere_leaves_a_matching_pair() {
        let ca = Authority::create("c").unwrap();
        let old = ca.issue(Role::Node, "h1", &[]).unwrap();
        let new = ca.issue(Role::Node, "h1", &[]).unwrap();
        assert!(key_matches(&old.cert, &old.key) && !key_matches(&new.cert, &old.key));
        let fresh = || {
            let dir = tempfile::tempdir().unwrap();
            old.save(dir.path()).unwrap();
            dir
        };
        let staged = |dir: &Path, cert: Option<&str>, key: Option<&str>| {
            if let Some(cert) = cert {
                write(&dir.join(STAGED_CERT), cert, false).unwrap();
            }
            if let Some(key) = key {
                write(&dir.join(STAGED_KEY), key, true).unwrap();
            }
        };
        // What a crash left reads as a whole pair, and stays that pair once the owner tidies up.
        let loads = |dir: &Path| {
            let loaded = Credentials::load(dir).unwrap();
            assert!(key_matches(&loaded.cert, &loaded.key));
            Credentials::recover(dir).unwrap();
            assert!(!dir.join(STAGED_CERT).exists() && !dir.join(STAGED_KEY).exists(), "nothing left staged");
            assert_eq!(Credentials::load(dir).unwrap(), loaded);
            loaded
        };
        // Cut while staging: the certificate staged, the key not yet.
        let dir = fresh();
        staged(dir.path(), Some(&new.cert), None);
        assert_eq!(loads(dir.path()), old);
        // Both staged, nothing renamed yet.
        let dir = fresh();
        staged(dir.path(), Some(&new.cert), Some(&new.key));
        assert_eq!(loads(dir.path()), new);
        // The key in place, the certificate still staged.
        let dir = fresh();
        staged(dir.path(), Some(&new.cert), None);
        write(&dir.path().join("key.pem"), &new.key, true).unwrap();
        assert_eq!(loads(dir.path()), new);
        // A key staged alone is never a save in progress.
        let dir = fresh();
        staged(dir.path(), None, Some(&new.key));
        assert_eq!(loads(dir.path()), old);
        // And a whole save.
        let dir = fresh();
        new.save(dir.path()).unwrap();
        assert_eq!(loads(dir.path()), new);
        assert_eq!(mode_of(&dir.path().join("key.pem")), 0o600);
    }

    /// Another process reading the directory while the owner saves, again and again, sees
    /// the old pair or the new one, never one of each.
    #[test]
    fn a_load_during_saves_always_reads_a_matching_pair() {
        let ca = Authority::create("c").unwrap();
        let credentials: Vec<Credentials> =
            (0..4).map(|_| ca.issue(Role::Node, "h1", &[]).unwrap()).collect();
        let dir = tempfile::tempdir().unwrap();
        credentials[0].save(dir.path()).unwrap();
        let saving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let saver = {
            let (saving, dir, credentials) = (saving.clone(), dir.path().to_path_buf(), credentials.clone());
            std::thread::spawn(move || {
                for k in 0..200 {
                    credentials[k % credentials.len()].save(&dir).unwrap();
                }
                saving.store(false, std::sync::atomic::Ordering::Relaxed);
            })
        };
        let mut loads = 0;
        while saving.load(std::sync::atomic::Ordering::Relaxed) {
            let loaded = Credentials::load(dir.path()).unwrap();
            assert!(credentials.contains(&loaded), "a pair that was never saved");
            loads += 1;
        }
        saver.join().unwrap();
        assert!(loads > 0);
    }

    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_credential_is_valid_then_due_then_expired() {
        let day = 86_400_000;
        let within = std::time::Duration::from_secs(30 * 86_400);
        let expires = 1_000 * day;
        assert_eq!(Standing::of(expires, expires - 31 * day, within), Standing::Valid);
        assert_eq!(Standing::of(expires, expires - 30 * day, within), Standing::Due { days_left: 30 });
        assert_eq!(Standing::of(expires, expires - 30 * day + 1, within), Standing::Due { days_left: 29 });
        assert_eq!(Standing::of(expires, expires - 1, within), Standing::Due { days_left: 0 });
        assert_eq!(Standing::of(expires, expires, within), Standing::Expired);
        assert_eq!(Standing::of(expires, expires + day, within), Standing::Expired);
        assert_eq!(Standing::of(expires, expires - day, std::time::Duration::ZERO), Standing::Valid);
    }

    #[test]
    fn issued_certificates_name_their_holder_and_role() {
        let ca = Authority::create("test").unwrap();
        let node = ca.issue(Role::Node, "h1", &[]).unwrap();
        let der = x509_parser::pem::parse_x509_pem(node.cert.as_bytes()).unwrap().1.contents;
        let caller = Caller::from_certificate(&der).unwrap();
        assert_eq!((caller.role, caller.name.as_str()), (Role::Node, "h1"));
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        assert!(
            u128::from(caller.issued_ms).abs_diff(now_ms) < 2000,
            "issued {} now {now_ms}",
            caller.issued_ms
        );
        assert!(Caller::parse("nobody").is_err());
        assert!(Caller::parse("root:x").unwrap_err().to_string().contains("unknown role"));
        assert!(Caller::parse("node:").is_err());
    }

    #[test]
    fn credentials_round_trip_and_a_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("test").unwrap();
        ca.save(dir.path()).unwrap();
        let again = Authority::load(dir.path()).unwrap();
        let admin = again.issue(Role::Admin, "ops", &["127.0.0.1".into()]).unwrap();
        admin.save(&dir.path().join("admin")).unwrap();
        assert_eq!(Credentials::load(&dir.path().join("admin")).unwrap(), admin);
        let key = dir.path().join("admin/key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Credentials::load(&dir.path().join("admin")).unwrap_err().to_string().contains("chmod 600"));
    }
}
