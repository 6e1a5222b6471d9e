//! `weft token`: join tokens for new hosts and controllers.

use clap::Subcommand;
use weft_api::pb;

use crate::failure::{Failure, Result};
use crate::output::{self, Row};
use crate::show::print;
use crate::target::Target;

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token; prints it and the CA fingerprint a joining host checks.
    #[command(
        after_help = "Example:\n  weft token create --ttl 3600\n  weft-node --join-token weft1.… --ca-fingerprint … --tls-dir /etc/weft/tls …"
    )]
    Create {
        /// node or controller.
        #[arg(long, default_value = "node")]
        role: String,
        /// Lifetime in seconds (default 24 hours, at most 30 days).
        #[arg(long, default_value_t = 86_400)]
        ttl: u32,
    },
    /// List tokens (never their secrets).
    #[command(visible_alias = "list")]
    Ls,
    /// Make a token unusable.
    Revoke { id: String },
}

pub(crate) async fn run(target: &Target, command: TokenCommand) -> Result<()> {
    use weft_api::pb::token_service_client::TokenServiceClient;
    let mut client = TokenServiceClient::new(target.controller().await?);
    let row = |t: &pb::Token| -> Row {
        let role = match pb::TokenRole::try_from(t.role) {
            Ok(pb::TokenRole::Controller) => "controller",
            _ => "node",
        };
        vec![
            ("ID", t.id.clone()),
            ("Role", role.to_string()),
            ("Expires", output::time(t.expires.as_ref())),
            ("Revoked", t.revoked.to_string()),
        ]
    };
    match command {
        TokenCommand::Create { role, ttl } => {
            let role = match role.as_str() {
                "node" => pb::TokenRole::Node,
                "controller" => pb::TokenRole::Controller,
                other => {
                    return Err(Failure::new(format!(
                        "--role {other:?}: a token is for a node or a controller"
                    )));
                }
            };
            let made = client
                .create_token(pb::CreateTokenRequest { role: role.into(), ttl_seconds: ttl })
                .await?
                .into_inner();
            print(&format!(
                "{}\n\nOn the new host:\n  weft-node --join-token {} --ca-fingerprint {} --tls-dir /etc/weft/tls --controllers …\n",
                made.secret_token, made.secret_token, made.ca_fingerprint
            ));
        }
        TokenCommand::Ls => {
            let listed = client.list_tokens(pb::ListTokensRequest {}).await?.into_inner();
            let rows: Vec<Row> = listed.tokens.iter().map(row).collect();
            print(&output::table("token", &["ID", "Role", "Expires", "Revoked"], &rows));
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await?;
            print(&format!("{id}\n"));
        }
    }
    Ok(())
}
