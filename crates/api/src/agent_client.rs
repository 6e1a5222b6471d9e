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
