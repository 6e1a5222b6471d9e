//! Following the controllers: registering this host, heartbeats carrying what it has
//! programmed, and the watch stream that keeps the mirror of the registry current.

use std::time::Duration;

use tonic::Code;
use weft_api::pb;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_api::pb::watch_service_client::WatchServiceClient;
use weft_dataplane::Dataplane;

use crate::tunnel::Tunnel;

use super::*;

impl<D: Dataplane> Agent<D> {
    pub(super) fn registration(&self) -> pb::RegisterNodeRequest {
        let host = &self.settings.host;
        let public_key = self.tunnel.as_ref().and_then(Tunnel::public_key);
        pb::RegisterNodeRequest {
            name: host.name.clone(),
            underlay_address: host.vtep.to_string(),
            underlay_mtu: host.underlay_mtu,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            wireguard_public_key: public_key.map(|k| k.to_base64()).unwrap_or_default(),
            wireguard_port: match (&self.tunnel, public_key) {
                (Some(tunnel), Some(_)) => u32::from(tunnel.port()),
                _ => 0,
            },
            wireguard_backend: self.tunnel.as_ref().map_or_else(|| "off".to_string(), Tunnel::backend_label),
            ..Default::default()
        }
    }

    /// Registers this host, retrying until some controller accepts it.
    pub async fn register(&self) {
        let host = &self.settings.host;
        let request = self.registration();
        let mut delay = Duration::from_millis(100);
        loop {
            let result = self
                .controllers
                .send(&request, |c, r| async move { NodeServiceClient::new(c).register_node(r).await })
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(host = %host.name, vtep = %host.vtep, "registered");
                    return;
                }
                Err(status) => {
                    tracing::warn!(%status, "registering this host failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Heartbeats forever, carrying the revision this host has programmed and the endpoints it
    /// could not program. A host the controllers forgot (removed by an operator) registers
    /// again.
    pub async fn heartbeat(&self) {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.beat_now.notified() => {}
            }
            let problems = self
                .problems()
                .into_iter()
                .map(|(endpoint_id, reason)| pb::EndpointProblem { endpoint_id, reason })
                .collect();
            let request = pb::HeartbeatRequest {
                name: self.settings.host.name.clone(),
                applied_revision: self.applied_revision(),
                problems,
            };
            let result = self
                .controllers
                .send(&request, |c, r| async move { NodeServiceClient::new(c).heartbeat(r).await })
                .await;
            match result {
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => self.register().await,
                Err(status) => tracing::warn!(%status, "heartbeat failed"),
            }
        }
    }

    /// Follows the registry from the last revision seen, moving to the next controller when a
    /// stream breaks.
    pub async fn follow(&self) {
        let mut delay = Duration::from_millis(50);
        loop {
            let (i, address) = self.controllers.preferred();
            let address = address.to_string();
            let from_revision = self.shared().mirror.revision;
            let mut client = WatchServiceClient::new(self.controllers.channel(i))
                .max_decoding_message_size(MAX_SNAPSHOT_BYTES);
            let watch =
                client.watch(pb::WatchRequest { from_revision, node: self.settings.host.name.clone() });
            match self.controllers.bounded(&address, watch).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(message)) => {
                                delay = Duration::from_millis(50);
                                self.take(message);
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(controller = %address, %status, "watch stream broke");
                                break;
                            }
                        }
                    }
                }
                Err(status) => tracing::warn!(controller = %address, %status, "cannot watch"),
            }
            self.controllers.prefer(i + 1);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    pub(super) fn take(&self, message: pb::WatchResponse) {
        use pb::watch_response::Kind;
        let changed = {
            let mut shared = self.shared();
            let before = shared.mirror.revision;
            match message.kind {
                Some(Kind::Snapshot(state)) => {
                    for problem in shared.mirror.reset(&state) {
                        tracing::warn!(%problem, "skipped");
                    }
                    true
                }
                Some(Kind::Events(batch)) => {
                    for (revision, problem) in shared.mirror.apply(&batch.events) {
                        tracing::warn!(%problem, revision, "skipped");
                    }
                    shared.mirror.revision != before
                }
                Some(Kind::Progress(progress)) => {
                    // Nothing changed up to this revision: what is applied is current.
                    shared.mirror.progress(progress.revision);
                    shared.mirror.revision != before
                }
                None => false,
            }
        };
        if changed {
            self.wake.notify_one();
        }
    }
}
