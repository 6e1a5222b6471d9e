//! The local attach API on a unix socket.

use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use weft_api::agent;
use weft_api::agent::agent_service_server::{AgentService, AgentServiceServer};

use weft_dataplane::Dataplane;

use crate::agent::Agent;

#[derive(Debug)]
pub struct Service<D: Dataplane> {
    agent: Arc<Agent<D>>,
}

#[tonic::async_trait]
impl<D: Dataplane> AgentService for Service<D> {
    async fn attach(
        &self,
        request: Request<agent::AttachRequest>,
    ) -> Result<Response<agent::AttachResponse>, Status> {
        let attachment = self.agent.attach(request.into_inner()).await?;
        Ok(Response::new(agent::AttachResponse { attachment: Some(attachment) }))
    }

    async fn detach(
        &self,
        request: Request<agent::DetachRequest>,
    ) -> Result<Response<agent::DetachResponse>, Status> {
        let attachment = self.agent.detach(request.into_inner()).await?;
        Ok(Response::new(agent::DetachResponse { attachment: Some(attachment) }))
    }

    async fn list(&self, _: Request<agent::ListRequest>) -> Result<Response<agent::ListResponse>, Status> {
        Ok(Response::new(self.agent.list()))
    }

    async fn check(
        &self,
        request: Request<agent::CheckRequest>,
    ) -> Result<Response<agent::CheckResponse>, Status> {
        let attachment = self.agent.check(request.into_inner()).await?;
        Ok(Response::new(agent::CheckResponse { attachment: Some(attachment) }))
    }

    async fn rotate_key(
        &self,
        _: Request<agent::RotateKeyRequest>,
    ) -> Result<Response<agent::RotateKeyResponse>, Status> {
        Ok(Response::new(self.agent.rotate_key().await?))
    }
}

/// Serves the attach API on `socket` until the process ends. A stale socket file from an
/// earlier run is replaced.
/// Listens on `socket` (its directory made, a stale socket file replaced), for root only:
/// what is served there puts interfaces into namespaces. (A group that should share it can be
/// given access with chmod/chgrp afterwards.)
pub fn listen_for_root(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("removing the old socket {}: {e}", socket.display()),
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| anyhow::anyhow!("listening on {}: {e}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("restricting {}: {e}", socket.display()))?;
    Ok(listener)
}

pub async fn serve<D: Dataplane>(agent: Arc<Agent<D>>, socket: &Path) -> anyhow::Result<()> {
    let listener = listen_for_root(socket)?;
    tracing::info!(socket = %socket.display(), "attach API listening");
    tonic::transport::Server::builder()
        .add_service(AgentServiceServer::new(Service { agent }))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await?;
    Ok(())
}
