//! `weft cluster`: status and membership of the controllers.

use clap::Subcommand;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;

use crate::failure::Result;
use crate::output::{self, Row};
use crate::show::print;
use crate::target::Target;

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Leader, term, revision and the health of each member.
    Status,
    /// The members.
    Members,
    /// Add a member (start it with --join first).
    Add { id: u64, address: String },
    /// Remove a member.
    Remove { id: u64 },
}

pub(crate) async fn run(target: &Target, command: ClusterCommand) -> Result<()> {
    let mut client = ClusterServiceClient::new(target.controller().await?);
    match command {
        ClusterCommand::Status => {
            let s = client.status(pb::StatusRequest {}).await?.into_inner();
            let leader = if s.leader_id == 0 {
                "none (no quorum?)".to_string()
            } else {
                format!("{} ({})", s.leader_id, s.leader_address)
            };
            print(&format!(
                "Cluster:        {}\nAnswered by:    member {}\nLeader:         {leader}\nTerm:           {}\nRevision:       {}\nApplied index:  {}\nSnapshot index: {}\n",
                s.cluster_id, s.member_id, s.term, s.revision, s.applied_index, s.snapshot_index
            ));
            if let Some(expires) = &s.credential_expires {
                print(&format!("Credential:     {}\n", credential_line(expires, s.member_id, now_ms())));
            }
            print("\n");
            let rows: Vec<Row> =
                s.members.iter().map(|m| output::member_row(m, s.leader_id, s.members_reported_by)).collect();
            print(&output::table("member", output::MEMBER_COLUMNS, &rows));
        }
        ClusterCommand::Members => {
            let status = client.status(pb::StatusRequest {}).await?.into_inner();
            let listed = client.list_members(pb::ListMembersRequest {}).await?.into_inner();
            let rows: Vec<Row> = listed
                .members
                .iter()
                .map(|m| output::member_row(m, status.leader_id, listed.members_reported_by))
                .collect();
            print(&output::table("member", output::MEMBER_COLUMNS, &rows));
        }
        ClusterCommand::Add { id, address } => {
            client.add_member(pb::AddMemberRequest { id, address }).await?;
            print(&format!("{id}\n"));
        }
        ClusterCommand::Remove { id } => {
            client.remove_member(pb::RemoveMemberRequest { id }).await?;
            print(&format!("{id}\n"));
        }
    }
    Ok(())
}

/// A member renews its own credential 30 days ahead when it holds the CA key; one that does
/// not needs an operator, and the status says so once it is due.
const CREDENTIAL_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// The answering member's credential: when it expires, and what to do once that is near.
fn credential_line(expires: &prost_types::Timestamp, member: u64, now_ms: u64) -> String {
    let expires_ms = weft_api::convert::millis(expires);
    let renew = format!(
        "renew it with `weft pki issue --controller {member}=HOST` into member {member}'s --tls-dir (picked up without a restart)"
    );
    match weft_pki::Standing::of(expires_ms, now_ms, CREDENTIAL_WARNING) {
        weft_pki::Standing::Valid => {
            format!(
                "expires {} (in {} days)",
                output::time(Some(expires)),
                (expires_ms - now_ms) / 86_400_000
            )
        }
        weft_pki::Standing::Due { days_left } => {
            format!("expires {} (in {days_left} days): {renew}", output::time(Some(expires)))
        }
        weft_pki::Standing::Expired => format!("EXPIRED {}: {renew}", output::time(Some(expires))),
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_line_says_when_and_what_to_do_once_due() {
        let day = 86_400_000;
        let expires = weft_api::convert::timestamp(20_000 * day);
        let line = |now_ms| credential_line(&expires, 2, now_ms);
        assert_eq!(line(20_000 * day - 100 * day), "expires 2024-10-04T00:00:00.000000000Z (in 100 days)");
        assert_eq!(
            line(20_000 * day - 10 * day),
            "expires 2024-10-04T00:00:00.000000000Z (in 10 days): renew it with `weft pki issue --controller 2=HOST` into member 2's --tls-dir (picked up without a restart)"
        );
        assert!(line(20_001 * day).starts_with("EXPIRED 2024-10-04"), "{}", line(20_001 * day));
    }
}
