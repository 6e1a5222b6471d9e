//! `weft pki`: the cluster's CA and the credentials it issues. Local files only.

use std::path::PathBuf;

use clap::Subcommand;

use crate::failure::{Failure, Result, key_value};
use crate::show::print;

#[derive(Debug, Subcommand)]
pub(crate) enum PkiCommand {
    /// Make a cluster CA in DIR (ca.pem, ca-key.pem), credentials for each controller
    /// (DIR/controller-ID) and an admin credential (DIR/admin).
    #[command(
        after_help = "Example:\n  weft pki init --dir /etc/weft/pki --cluster prod --controller 1=10.0.0.1 --controller 2=10.0.0.2 --controller 3=10.0.0.3"
    )]
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cluster: String,
        /// ID=HOST: a controller's id and the address or name clients dial it by (repeat).
        #[arg(long, required = true)]
        controller: Vec<String>,
        /// The admin credential's name.
        #[arg(long, default_value = "admin")]
        admin: String,
    },
    /// Issue a credential from the CA in DIR: for a host (--node NAME), an admin, or a
    /// controller (--controller ID=HOST; members holding the CA key renew their own, and one
    /// that does not picks up a credential issued into its --tls-dir without a restart).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, group = "holder")]
        node: Option<String>,
        #[arg(long, group = "holder")]
        admin: Option<String>,
        #[arg(long, group = "holder")]
        controller: Option<String>,
        /// Where to write ca.pem, cert.pem and key.pem.
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) fn run(command: PkiCommand) -> Result<()> {
    use weft_pki::{Authority, Role};
    let failed = |e: weft_pki::PkiError| Failure::new(e.to_string());
    match command {
        PkiCommand::Init { dir, cluster, controller, admin } => {
            if dir.join("ca-key.pem").exists() {
                return Err(Failure::new(format!(
                    "{} already holds a CA; use `weft pki issue` to add credentials",
                    dir.display()
                )));
            }
            let members = controller
                .iter()
                .map(|c| {
                    let (id, host) = key_value("--controller", c)?;
                    let id: u64 = id
                        .parse()
                        .map_err(|_| Failure::new(format!("--controller {c:?}: the id is a number")))?;
                    Ok((id, host))
                })
                .collect::<Result<Vec<_>>>()?;
            let ca = Authority::create(&cluster).map_err(failed)?;
            ca.save(&dir).map_err(failed)?;
            for (id, host) in members {
                let credentials = ca.issue(Role::Controller, &id.to_string(), &[host]).map_err(failed)?;
                let member_dir = dir.join(format!("controller-{id}"));
                credentials.save(&member_dir).map_err(failed)?;
                // Controllers sign joining hosts' requests (join tokens) with it.
                ca.save(&member_dir).map_err(failed)?;
            }
            ca.issue(Role::Admin, &admin, &[]).map_err(failed)?.save(&dir.join("admin")).map_err(failed)?;
            print(&format!(
                "CA and credentials in {}: keep ca-key.pem safe; give each controller its controller-ID directory (--tls-dir); use admin/ with weft --tls-dir\n",
                dir.display()
            ));
        }
        PkiCommand::Issue { dir, node, admin, controller, out } => {
            let ca = Authority::load(&dir).map_err(failed)?;
            let credentials = match (node, admin, controller) {
                (Some(node), None, None) => ca.issue(Role::Node, &node, &[]),
                (None, Some(admin), None) => ca.issue(Role::Admin, &admin, &[]),
                (None, None, Some(controller)) => {
                    let (id, host) = key_value("--controller", &controller)?;
                    ca.issue(Role::Controller, &id, &[host])
                }
                _ => return Err(Failure::new("give one of --node NAME, --admin NAME, --controller ID=HOST")),
            }
            .map_err(failed)?;
            credentials.save(&out).map_err(failed)?;
        }
    }
    Ok(())
}
