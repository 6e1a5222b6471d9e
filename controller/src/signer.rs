//! What a member holds to hand out credentials to joining hosts and controllers.

use weft_pki::Authority;

/// What a member needs to hand out credentials.
#[derive(Debug)]
pub struct Signer {
    /// The cluster CA certificate (PEM): sent to joiners, fingerprinted in tokens.
    pub ca_pem: String,
    /// The CA's key, when this member holds it.
    pub authority: Option<Authority>,
}
