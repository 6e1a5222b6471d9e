//! Cleaning up after containers that went away without a detach and attaches that never
//! finished: their endpoints are released, their records dropped.

use tonic::{Code, Status};
use weft_api::pb;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_dataplane::Dataplane;

use crate::attachments::{Record, Stage};

use super::attach::remove_resolv_conf;
use super::*;

/// What to do with a record nobody is working on.
pub(super) enum Chore {
    /// The container is gone, or its attach never finished: release its endpoint.
    Release(String),
    /// Its endpoint left the registry some other way (removed by an operator, its network
    /// removed by force): only the record is left to drop.
    Forget,
}

impl<D: Dataplane> Agent<D> {
    /// Releases the endpoints of containers that are gone, rolls back attaches that never
    /// finished (left by a crash, or that could not be undone at the time) and drops records
    /// whose endpoint left the registry some other way. Runs for the life of the agent.
    pub async fn janitor_forever(&self) {
        loop {
            tokio::select! {
                _ = self.janitor.notified() => {}
                _ = tokio::time::sleep(self.settings.resync) => {}
            }
            self.tidy().await;
        }
    }

    pub(super) async fn tidy(&self) {
        let chores: Vec<(Record, Chore)> = {
            let mut shared = self.shared();
            let Shared { mirror, attachments } = &mut *shared;
            if !mirror.synced {
                return;
            }
            let mut chores = Vec::new();
            for entry in attachments.entries.values_mut().filter(|e| !e.busy) {
                let record = &entry.record;
                let chore = if let Some(why) = &entry.gone {
                    Chore::Release(why.clone())
                } else if record.stage == Stage::Attaching {
                    Chore::Release("its attach did not finish".into())
                } else if mirror.revision >= record.revision
                    && record.endpoint_id.as_ref().is_none_or(|id| !mirror.endpoints.contains_key(id))
                {
                    Chore::Forget
                } else {
                    continue;
                };
                entry.busy = true;
                chores.push((record.clone(), chore));
            }
            chores
        };
        if chores.is_empty() {
            return;
        }
        for (record, chore) in chores {
            let done = match &chore {
                Chore::Release(_) => self.release(&record).await,
                Chore::Forget => Ok(()),
            };
            match done {
                Ok(()) => {
                    match &chore {
                        Chore::Release(why) => tracing::info!(
                            container = %record.container_id, network = %short(&record.network_id), %why,
                            "released"
                        ),
                        Chore::Forget => tracing::info!(
                            container = %record.container_id, network = %short(&record.network_id),
                            "its endpoint was removed from the registry; forgetting it here"
                        ),
                    }
                    self.drop_record(&record);
                }
                Err(status) => {
                    tracing::warn!(container = %record.container_id, %status, "cannot release yet; retrying");
                    self.unbusy(&record.key());
                }
            }
        }
        self.wake.notify_one();
    }

    pub(super) fn unbusy(&self, key: &str) {
        if let Some(entry) = self.shared().attachments.entries.get_mut(key) {
            entry.busy = false;
        }
    }

    /// Forgets a record whose endpoint is released: on disk, in memory, in the mirror (the
    /// watch confirms it a moment later), and its resolv.conf once the container has no other
    /// network here. Dropping the entry closes the namespace it held.
    pub(super) fn drop_record(&self, record: &Record) {
        let key = record.key();
        if let Err(e) = self.store.remove(&key) {
            tracing::error!(error = %e, "removing an attachment record");
        }
        let last_network = {
            let mut shared = self.shared();
            shared.attachments.entries.remove(&key);
            if let Some(id) = &record.endpoint_id {
                shared.mirror.remove_endpoint(id);
            }
            !shared.attachments.elsewhere(&record.container_id, &record.network_id)
        };
        if record.resolv_conf && last_network {
            remove_resolv_conf(&record.netns, &self.settings.state_dir);
        }
    }

    /// Releases a record's endpoint through the controllers. Without an endpoint id (the agent
    /// stopped before the controllers answered) the registry is asked whether one was made for
    /// the container on this host.
    pub(super) async fn release(&self, record: &Record) -> Result<(), Status> {
        let endpoint_id = match &record.endpoint_id {
            Some(id) => id.clone(),
            None => match self.find_registered(&record.network_id, &record.container_id).await? {
                Some(endpoint) => endpoint.id,
                None => return Ok(()),
            },
        };
        self.release_endpoint(endpoint_id).await
    }

    /// Removes an endpoint from the registry; one already gone counts as removed.
    pub(super) async fn release_endpoint(&self, endpoint_id: String) -> Result<(), Status> {
        let request = pb::RemoveEndpointRequest {
            request_id: request_id("detach", &endpoint_id),
            target: Some(pb::remove_endpoint_request::Target::EndpointId(endpoint_id)),
        };
        let result = self
            .controllers
            .send(&request, |c, r| async move { EndpointServiceClient::new(c).remove_endpoint(r).await })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(status),
        }
    }

    /// The registry's endpoint for a container on a network on this host, if it has one.
    pub(super) async fn find_registered(
        &self,
        network_id: &str,
        container_id: &str,
    ) -> Result<Option<pb::Endpoint>, Status> {
        let request = pb::ListEndpointsRequest {
            network: network_id.to_string(),
            node: self.settings.host.name.clone(),
        };
        let listed = self
            .controllers
            .send(&request, |c, r| async move { EndpointServiceClient::new(c).list_endpoints(r).await })
            .await;
        match listed {
            Ok(list) => Ok(list.endpoints.into_iter().find(|e| e.container_id == container_id)),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }
}
