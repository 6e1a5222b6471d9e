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
                "Cluster:        {}\nAnswered by:    member {}\nLeader:         {leader}\nTerm:           {}\nRevision:       {}\nApplied index:  {}\nSnapshot index: {}\n\n",
                s.cluster_id, s.member_id, s.term, s.revision, s.applied_index, s.snapshot_index
            ));
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
