//! What the agent asks dockerd itself (its Engine API on its unix socket): the names Docker
//! never sends a plugin — a network's, a container's and its aliases. HTTP/1.0 requests, so
//! each answer is the whole body up to the end of the connection.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::mirror::NetworkView;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Engine API version asked for: dockerd 20.10 (Debian bookworm's) speaks 1.41.
const API_VERSION: &str = "v1.41";

/// Largest answer read: a network with thousands of containers is well under this.
const MAX_ANSWER: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct DockerApi {
    socket: PathBuf,
}

/// A Docker network as `GET /networks/ID` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkInfo {
    pub name: String,
    /// Container id → the container on this network.
    pub containers: BTreeMap<String, ContainerOnNetwork>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerOnNetwork {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ContainerInfo {
    network_settings: NetworkSettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NetworkSettings {
    networks: BTreeMap<String, EndpointSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct EndpointSettings {
    aliases: Option<Vec<String>>,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

/// Why dockerd could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("dockerd's API at {socket}: {source}")]
    Io { socket: String, source: std::io::Error },
    #[error("dockerd answered {status}: {body}")]
    Status { status: String, body: String },
    #[error("dockerd's answer is not what weft expected: {0}")]
    Unreadable(#[from] serde_json::Error),
}

impl ApiError {
    /// dockerd has no such thing (404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { status, .. } if status.split_whitespace().nth(1) == Some("404"))
    }
}

impl DockerApi {
    pub fn new(socket: PathBuf) -> DockerApi {
        DockerApi { socket }
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, ApiError> {
        self.call("GET", path, None).await
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ApiError> {
        let io = |source| ApiError::Io { socket: self.socket.display().to_string(), source };
        let mut stream = UnixStream::connect(&self.socket).await.map_err(io)?;
        let body = body.map(serde_json::Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} /{API_VERSION}{path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await.map_err(io)?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or_default().to_string();
        if !status.split_whitespace().nth(1).is_some_and(|code| code.starts_with('2')) {
            return Err(ApiError::Status { status, body: body.chars().take(300).collect() });
        }
        // 204 No Content (a removal) has no body at all.
        Ok(serde_json::from_str(if body.trim().is_empty() { "null" } else { body })?)
    }

    pub async fn network(&self, id: &str) -> Result<NetworkInfo, ApiError> {
        self.get(&format!("/networks/{id}")).await
    }

    /// Whether dockerd has a network by this name or id.
    pub async fn has_network(&self, name: &str) -> Result<bool, ApiError> {
        match self.network(name).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the Docker network of weft network `network`, as `docker network create -d
    /// weft --ipam-driver weft --subnet S [--ipv6 --subnet S6] --ipam-opt weft.network=ID`
    /// with `--internal` and `-o encrypted` when the network is so.
    pub async fn create_weft_network(&self, network: &NetworkView) -> Result<(), ApiError> {
        let (name, weft_id) = (&network.name, &network.id);
        let options: BTreeMap<&str, &str> =
            if network.encrypted { BTreeMap::from([("encrypted", "")]) } else { BTreeMap::new() };
        let subnets: Vec<serde_json::Value> =
            network.gateways.iter().map(|g| serde_json::json!({ "Subnet": g.network() })).collect();
        let body = serde_json::json!({
            "Name": name,
            "Driver": "weft",
            "CheckDuplicate": true,
            "Internal": network.internal,
            "EnableIPv6": network.gateway(true).is_some(),
            "Options": options,
            "IPAM": {
                "Driver": "weft",
                "Config": subnets,
                "Options": { "weft.network": weft_id },
            },
        });
        let _: serde_json::Value = self.call("POST", "/networks/create", Some(&body)).await?;
        Ok(())
    }

    /// Removes a Docker network (`docker network rm`); one already gone is no error.
    pub async fn remove_network(&self, id: &str) -> Result<(), ApiError> {
        match self.call::<serde_json::Value>("DELETE", &format!("/networks/{id}"), None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The container's aliases on the network whose endpoint is `endpoint_id` (what
    /// `--network-alias` gave, and Docker's own short id).
    pub async fn aliases(&self, container: &str, endpoint_id: &str) -> Result<Vec<String>, ApiError> {
        let info: ContainerInfo = self.get(&format!("/containers/{container}/json")).await?;
        Ok(info
            .network_settings
            .networks
            .into_values()
            .find(|n| n.endpoint_id == endpoint_id)
            .and_then(|n| n.aliases)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_answers_parse() {
        let network: NetworkInfo = serde_json::from_str(
            r#"{"Name":"app","Id":"caa0","Containers":{"9f3e":{"Name":"web","EndpointID":"e1","MacAddress":"02:42:0a:00:00:02","IPv4Address":"10.0.0.2/24"}},"Options":{}}"#,
        )
        .unwrap();
        assert_eq!(network.name, "app");
        assert_eq!(
            network.containers["9f3e"],
            ContainerOnNetwork { name: "web".into(), endpoint_id: "e1".into() }
        );
        let container: ContainerInfo = serde_json::from_str(
            r#"{"Id":"9f3e","NetworkSettings":{"Networks":{"app":{"Aliases":["api","9f3e"],"EndpointID":"e1"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            container.network_settings.networks["app"].aliases,
            Some(vec!["api".into(), "9f3e".into()])
        );
    }
}
