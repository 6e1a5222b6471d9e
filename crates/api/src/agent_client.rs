//! A client for a node agent's local API (`weft.agent.v1`) over its unix socket: for the CLI,
//! runtime front-ends and tests, without linking the agent itself.

use std::path::{Path, PathBuf};

use crate::agent::agent_service_client::AgentServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to the agent listening on `socket`.
pub async fn connect(socket: &Path) -> Result<AgentServiceClient<Channel>, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    let channel =
        Endpoint::from_static("http://weft-node.local")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
                }
            }))
            .await?;
    Ok(AgentServiceClient::new(channel))
}

/// A `-p` spec as the attach API takes it, field by field.
pub fn port_request(spec: &weft_core::PortSpec) -> crate::agent::PortRequest {
    let (host_port, host_port_end) =
        spec.host_ports.as_ref().map_or((0, 0), |r| (u32::from(*r.start()), u32::from(*r.end())));
    crate::agent::PortRequest {
        protocol: spec.protocol.to_string(),
        host_ip: spec.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        host_port,
        host_port_end,
        container_port: (*spec.container_ports.start()).into(),
        container_port_end: (*spec.container_ports.end()).into(),
    }
}
