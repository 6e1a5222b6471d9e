//! `weft node`: the hosts in the cluster.

use clap::Subcommand;
use weft_api::agent;
use weft_api::pb;
use weft_api::pb::node_service_client::NodeServiceClient;

use crate::failure::Result;
use crate::output::{self, Row};
use crate::show::{inspect_each, print, rows_or_format};
use crate::target::Target;

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// List hosts.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show hosts in detail, as a JSON array.
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove hosts from the cluster (and their endpoints).
    #[command(visible_alias = "remove")]
    Rm {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Give this host a new WireGuard key (through the local agent).
    RotateKey,
}

pub(crate) async fn run(target: &Target, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Ls { format } => {
            let mut client = NodeServiceClient::new(target.controller().await?);
            let mut listed = client.list_nodes(pb::ListNodesRequest {}).await?.into_inner();
            listed.nodes.sort_by(|a, b| a.name.cmp(&b.name));
            let rows: Vec<Row> = listed.nodes.iter().map(output::node_row).collect();
            rows_or_format("node", &format, output::NODE_COLUMNS, &rows)?;
        }
        NodeCommand::Inspect { nodes } => {
            let client = NodeServiceClient::new(target.controller().await?);
            inspect_each(nodes, |name| {
                let mut client = client.clone();
                async move {
                    let found = client.inspect_node(pb::InspectNodeRequest { name }).await?.into_inner();
                    Ok(found.node.map(|n| output::inspect_node(&n, &found.endpoints)))
                }
            })
            .await?;
        }
        NodeCommand::Rm { nodes } => {
            for name in nodes {
                target
                    .write(|channel, request_id| {
                        let request = pb::RemoveNodeRequest { name: name.clone(), request_id };
                        async move { NodeServiceClient::new(channel).remove_node(request).await }
                    })
                    .await?;
                print(&format!("{name}\n"));
            }
        }
        NodeCommand::RotateKey => {
            let mut agent = target.agent().await?;
            let rotated = agent.rotate_key(agent::RotateKeyRequest {}).await?.into_inner();
            print(&format!("{}\n", rotated.public_key));
        }
    }
    Ok(())
}
