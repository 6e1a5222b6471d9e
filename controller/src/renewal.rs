//! A member's own credential over its lifetime. All of a cluster's are usually issued
//! together (`weft pki init`) and would expire together, a year on, cutting the cluster off.
//! So each member checks its `--tls-dir` periodically:
//!
//! - a credential an operator put there (`weft pki issue`) is presented from then on, no
//!   restart needed;
//! - one due for renewal is renewed there (a new key, the same name and addresses) by the
//!   member itself when it holds the CA key, or else signed by another member that holds it
//!   (`JoinService.Renew`, vouched for by the current credential), and presented;
//! - one due that nothing renews is warned about, with the command that renews it.
//!
//! Connections already open keep the credential they were made with; new ones, both ways,
//! get the new one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use weft_pki::serve::Presented;
use weft_pki::{Credentials, Role, Standing};

use crate::cluster::now_ms;
use crate::forward::Peers;
use crate::raft_types::NodeId;
use crate::signer::Signer;

/// Everything a member's renewal touches.
pub struct Renewal {
    pub id: NodeId,
    /// The member's advertised address: its host is what `weft pki issue` is told.
    pub advertise: String,
    pub dir: PathBuf,
    /// Renew (or warn) this long before the credential expires.
    pub within: Duration,
    /// How often the directory is looked at.
    pub period: Duration,
    pub presented: Arc<Presented>,
    pub peers: Peers,
    pub signer: Option<Arc<Signer>>,
    /// When the presented credential expires, ms since the epoch (status and metrics).
    pub expires_ms: Arc<AtomicU64>,
    /// The certificate presented now (PEM).
    pub current: Mutex<String>,
    /// The other members' addresses, asked in turn when this member holds no CA key.
    pub others: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

/// A renewal that failed is tried again this soon, then twice as long after each further
/// failure, up to the check period: a peer not serving yet is retried at once, a directory
/// that cannot be written is not logged every few seconds for a month.
const RETRY: Duration = Duration::from_secs(5);
/// How long one member may take to answer a renewal.
const RENEW_TIMEOUT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal").field("id", &self.id).field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What one look at the credential did.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Nothing to do.
    Valid,
    /// Presented a credential found in the directory.
    PickedUp { expires_ms: u64 },
    /// Made, saved and presented a new credential.
    Renewed { expires_ms: u64 },
    /// Due, and nothing here can renew it.
    Due(Standing),
}

impl Renewal {
    /// Checks now and then every `period`, for as long as the member runs.
    pub async fn run(self) {
        let renewal = Arc::new(self);
        let mut failures = 0u32;
        loop {
            let checking = renewal.clone();
            let failed = match tokio::task::spawn_blocking(move || checking.check(now_ms())).await {
                Ok(Ok(Checked::Due(standing))) => match renewal.renew_through_others().await {
                    Ok(expires_ms) => {
                        renewal.report(&Checked::Renewed { expires_ms });
                        false
                    }
                    Err(e) => {
                        tracing::warn!("renewing through the other members: {e:#}");
                        renewal.report(&Checked::Due(standing));
                        true
                    }
                },
                Ok(Ok(checked)) => {
                    renewal.report(&checked);
                    false
                }
                Ok(Err(e)) => {
                    tracing::warn!("checking this member's credential: {e:#}");
                    true
                }
                Err(e) => {
                    tracing::warn!("checking this member's credential: {e}");
                    true
                }
            };
            failures = if failed { failures.saturating_add(1) } else { 0 };
            tokio::time::sleep(next_check(renewal.period, failures)).await;
        }
    }

    /// Asks the other members in turn to sign a new key for this member; the first that
    /// holds the CA key does. Returns when the renewed credential expires.
    async fn renew_through_others(&self) -> anyhow::Result<u64> {
        use weft_api::pb::join_service_client::JoinServiceClient;
        let (csr_pem, key) = weft_pki::certificate_request(Role::Controller, &self.id.to_string())
            .context("making this member's new key")?;
        let mut refused = Vec::new();
        for address in (self.others)() {
            let channel = match self.peers.channel(&address) {
                Ok(channel) => channel,
                Err(status) => {
                    refused.push(format!("{address}: {}", status.message()));
                    continue;
                }
            };
            let mut request = tonic::Request::new(weft_api::pb::RenewRequest { csr_pem: csr_pem.clone() });
            request.set_timeout(RENEW_TIMEOUT);
            match JoinServiceClient::new(channel).renew(request).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    let renewed = Credentials { ca: answer.ca_pem, cert: answer.certificate_pem, key };
                    renewed.save(&self.dir).context("saving the renewed credential")?;
                    return self.present(&renewed);
                }
                Err(status) => refused.push(format!("{address}: {}", status.message())),
            }
        }
        if refused.is_empty() {
            anyhow::bail!("no other member to ask");
        }
        anyhow::bail!("{}", refused.join("; "))
    }

    /// One look at the directory at `now_ms`.
    pub fn check(&self, now_ms: u64) -> anyhow::Result<Checked> {
        let on_disk = Credentials::load(&self.dir).context("loading this member's credential")?;
        let mut checked = Checked::Valid;
        let changed = *self.current.lock().unwrap_or_else(PoisonError::into_inner) != on_disk.cert;
        if changed {
            checked = Checked::PickedUp { expires_ms: self.present(&on_disk)? };
        }
        let standing = on_disk.standing(now_ms, self.within)?;
        if standing == Standing::Valid {
            return Ok(checked);
        }
        let Some(authority) = self.signer.as_ref().and_then(|s| s.authority.as_ref()) else {
            return Ok(Checked::Due(standing));
        };
        let sans = on_disk.sans().context("reading the addresses of this member's certificate")?;
        let renewed = authority.issue(Role::Controller, &self.id.to_string(), &sans)?;
        renewed.save(&self.dir).context("saving the renewed credential")?;
        Ok(Checked::Renewed { expires_ms: self.present(&renewed)? })
    }

    /// Presents `credentials` on new connections, both ways.
    fn present(&self, credentials: &Credentials) -> anyhow::Result<u64> {
        let expires_ms = credentials.expires_ms()?;
        self.presented.replace(credentials).context("presenting the credential")?;
        self.peers.reconnect_with(credentials.client());
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = credentials.cert.clone();
        self.expires_ms.store(expires_ms, Ordering::Relaxed);
        Ok(expires_ms)
    }

    fn report(&self, checked: &Checked) {
        let host = self.advertise.rsplit_once(':').map_or(self.advertise.as_str(), |(host, _)| host);
        let renew = format!(
            "renew it: `weft pki issue --controller {}={host}` into {}; it is presented within {:?}, no restart needed",
            self.id,
            self.dir.display(),
            self.period
        );
        match checked {
            Checked::Valid => {}
            Checked::PickedUp { expires_ms } => {
                tracing::info!(expires = %date(*expires_ms), "presenting the credential found in --tls-dir");
            }
            Checked::Renewed { expires_ms } => {
                tracing::info!(expires = %date(*expires_ms), "credential renewed");
            }
            Checked::Due(Standing::Due { days_left }) => {
                let expires = date(self.expires_ms.load(Ordering::Relaxed));
                tracing::warn!(%expires, days_left, "this member's credential expires soon; {renew}");
            }
            Checked::Due(_) => {
                let expires = date(self.expires_ms.load(Ordering::Relaxed));
                tracing::error!(
                    %expires,
                    "this member's credential has expired: peers and clients refuse it; {renew}"
                );
            }
        }
    }
}

/// When to look again after `failures` failed attempts in a row.
fn next_check(period: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return period;
    }
    RETRY.saturating_mul(2u32.saturating_pow(failures - 1)).min(period)
}

/// `YYYY-MM-DD` of a time in ms since the epoch.
fn date(ms: u64) -> String {
    let (year, month, day) =
        weft_core::calendar::civil_from_days(i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX));
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_pki::Authority;

    const DAY: u64 = 86_400_000;

    fn renewal(dir: &std::path::Path, credentials: &Credentials, signer: Option<Arc<Signer>>) -> Renewal {
        Renewal {
            id: 2,
            advertise: "10.0.0.2:7001".into(),
            dir: dir.to_path_buf(),
            within: Duration::from_secs(30 * 86_400),
            period: Duration::from_secs(3600),
            presented: Presented::new(credentials).unwrap(),
            peers: Peers::new(Some(credentials.client())),
            signer,
            expires_ms: Arc::new(AtomicU64::new(credentials.expires_ms().unwrap())),
            current: Mutex::new(credentials.cert.clone()),
            others: Arc::new(Vec::new),
        }
    }

    /// Member 2's credential, valid for `days`, saved in `dir`. With `ca_key` the member holds
    /// the CA key; without, the CA is handed back (an operator's).
    fn member(dir: &std::path::Path, days: u64, ca_key: bool) -> (Renewal, Credentials, Option<Authority>) {
        let ca = Authority::create("c").unwrap();
        let first = ca
            .issue_valid_for(Role::Controller, "2", &["10.0.0.2".into()], Duration::from_secs(days * 86_400))
            .unwrap();
        first.save(dir).unwrap();
        if ca_key {
            let signer = Arc::new(Signer { ca_pem: first.ca.clone(), authority: Some(ca) });
            (renewal(dir, &first, Some(signer)), first, None)
        } else {
            (renewal(dir, &first, None), first, Some(ca))
        }
    }

    #[test]
    fn failed_renewals_are_retried_soon_then_less_and_less_often() {
        let hour = Duration::from_secs(3600);
        let waits: Vec<u64> = (0..12).map(|failures| next_check(hour, failures).as_secs()).collect();
        assert_eq!(waits, [3600, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]);
        assert_eq!(next_check(Duration::from_secs(2), 1), Duration::from_secs(2), "never past the period");
        assert_eq!(next_check(hour, u32::MAX), hour);
    }

    #[test]
    fn a_member_holding_the_ca_key_renews_its_credential_once_it_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let (member, first, _) = member(dir.path(), 40, true);
        let expires = first.expires_ms().unwrap();

        assert_eq!(member.check(expires - 31 * DAY).unwrap(), Checked::Valid);
        let Checked::Renewed { expires_ms } = member.check(expires - 29 * DAY).unwrap() else {
            panic!("not renewed when due")
        };
        let renewed = Credentials::load(dir.path()).unwrap();
        assert_ne!(renewed.cert, first.cert);
        assert_ne!(renewed.key, first.key, "a new key");
        assert_eq!(renewed.sans().unwrap(), ["10.0.0.2"], "the same addresses");
        assert_eq!(renewed.expires_ms().unwrap(), expires_ms);
        assert_eq!(member.expires_ms.load(Ordering::Relaxed), expires_ms);
        assert_eq!(*member.current.lock().unwrap(), renewed.cert);
        // The renewed one lasts a year: not due at the same moment.
        assert_eq!(member.check(expires - 29 * DAY).unwrap(), Checked::Valid);
    }

    #[test]
    fn a_member_without_the_ca_key_picks_up_a_credential_renewed_by_hand_and_warns_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let (member, first, operator) = member(dir.path(), 20, false);
        let expires = first.expires_ms().unwrap();

        assert_eq!(member.check(expires - 10 * DAY).unwrap(), Checked::Due(Standing::Due { days_left: 10 }));
        assert_eq!(member.check(expires + DAY).unwrap(), Checked::Due(Standing::Expired));
        // An operator issues a new one into the directory.
        let by_hand = operator.unwrap().issue(Role::Controller, "2", &["10.0.0.2".into()]).unwrap();
        by_hand.save(dir.path()).unwrap();
        let now = expires - 10 * DAY;
        assert_eq!(
            member.check(now).unwrap(),
            Checked::PickedUp { expires_ms: by_hand.expires_ms().unwrap() }
        );
        assert_eq!(*member.current.lock().unwrap(), by_hand.cert);
        assert_eq!(member.check(now).unwrap(), Checked::Valid);
    }
}
