//! `weft endpoint`: container interfaces on every host.

use clap::Subcommand;
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;

use crate::failure::Result;
use crate::output::{self, Row};
use crate::show::rows_or_format;
use crate::target::Target;

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointCommand {
    /// List endpoints.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        no_trunc: bool,
        #[arg(long, default_value = "table")]
        format: String,
    },
}

pub(crate) async fn run(target: &Target, command: EndpointCommand) -> Result<()> {
    let EndpointCommand::Ls { network, node, no_trunc, format } = command;
    let mut client = EndpointServiceClient::new(target.controller().await?);
    let listed = client
        .list_endpoints(pb::ListEndpointsRequest {
            network: network.unwrap_or_default(),
            node: node.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let mut endpoints = listed.endpoints;
    endpoints.sort_by(|a, b| {
        (&a.network_name, &a.node, &a.container_name).cmp(&(&b.network_name, &b.node, &b.container_name))
    });
    let rows: Vec<Row> = endpoints.iter().map(|e| output::endpoint_row(e, !no_trunc)).collect();
    rows_or_format("endpoint", &format, output::ENDPOINT_COLUMNS, &rows)?;
    Ok(())
}
