//! The plugin socket: HTTP/1.1 POSTs from dockerd, each answered with JSON. A refusal is
//! `{"Err": "..."}` with status 200, which dockerd shows as `remote: ...`; an unknown path is
//! 404, which dockerd takes for "not implemented" and carries on.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;
use weft_dataplane::Dataplane;

use super::protocol::{self as docker, IpamRefusal, Refusal};
use crate::agent::Agent;

/// Largest request body taken: dockerd's are a few hundred bytes.
const MAX_BODY: usize = 1 << 20;

/// Serves the plugin protocols on `socket` until the task is dropped.
pub async fn serve<D: Dataplane>(agent: Arc<Agent<D>>, socket: &Path) -> anyhow::Result<()> {
    let listener = crate::service::listen_for_root(socket)?;
    tracing::info!(socket = %socket.display(), "Docker network and IPAM plugin listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let agent = agent.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&agent, request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "plugin connection ended");
            }
        });
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/vnd.docker.plugins.v1+json"),
    );
    response
}

/// A refusal in the field the protocol of `path` reads it from.
fn refused(path: &str, message: String) -> Response<Full<Bytes>> {
    if path.starts_with("/IpamDriver.") {
        json(StatusCode::OK, &IpamRefusal { error: message })
    } else {
        json(StatusCode::OK, &Refusal { err: message })
    }
}

/// The request, or why it is unreadable (answered 400).
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("unreadable request: {e}"))
}

fn done<T: Serialize>(path: &str, result: Result<T, Status>) -> Response<Full<Bytes>> {
    match result {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(status) => refused(path, status.message().to_string()),
    }
}

fn empty(path: &str, result: Result<(), Status>) -> Response<Full<Bytes>> {
    done(path, result.map(|()| serde_json::json!({})))
}

async fn answer<D: Dataplane>(
    agent: &Arc<Agent<D>>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return refused(&path, format!("reading the request: {e}")),
    };
    if body.len() > MAX_BODY {
        return refused(&path, format!("request of {} bytes is larger than {MAX_BODY}", body.len()));
    }
    tracing::debug!(%path, body = %String::from_utf8_lossy(&body), "Docker plugin call");
    macro_rules! call {
        ($handler:ident, $kind:ty) => {
            match parse::<$kind>(&body) {
                Ok(parsed) => agent.$handler(parsed).await,
                Err(why) => return json(StatusCode::BAD_REQUEST, &Refusal { err: why }),
            }
        };
    }
    match path.as_str() {
        "/Plugin.Activate" => {
            json(StatusCode::OK, &docker::Manifest { implements: vec!["NetworkDriver", "IpamDriver"] })
        }
        "/NetworkDriver.GetCapabilities" => {
            json(StatusCode::OK, &docker::DriverCapabilities { scope: "local", connectivity_scope: "global" })
        }
        "/IpamDriver.GetCapabilities" => {
            // Not asked for: Docker would then make up a random MAC for every start of a
            // container, and a neighbour's ARP cache would keep the old one for the address
            // weft hands out again. weft's own (02:42 + the IPv4 octets, as Docker's bridge
            // makes) is given in CreateEndpoint instead.
            json(StatusCode::OK, &docker::IpamCapabilities { requires_mac_address: false })
        }
        "/IpamDriver.GetDefaultAddressSpaces" => json(
            StatusCode::OK,
            &docker::AddressSpaces {
                local_default_address_space: "weft",
                global_default_address_space: "weft",
            },
        ),
        "/IpamDriver.RequestPool" => done(&path, call!(docker_request_pool, docker::RequestPool)),
        "/IpamDriver.ReleasePool" => empty(&path, call!(docker_release_pool, docker::ReleasePool)),
        "/IpamDriver.RequestAddress" => done(&path, call!(docker_request_address, docker::RequestAddress)),
        "/IpamDriver.ReleaseAddress" => empty(&path, call!(docker_release_address, docker::ReleaseAddress)),
        "/NetworkDriver.CreateNetwork" => match parse::<docker::CreateNetwork>(&body) {
            Ok(create) => {
                let network = create.network_id.clone();
                let result = agent.docker_create_network(create).await;
                if result.is_ok() {
                    // Docker shows the network (and its name) only once this call returned.
                    let agent = agent.clone();
                    tokio::spawn(async move { agent.docker_learn_network_name(network).await });
                }
                empty(&path, result)
            }
            Err(why) => json(StatusCode::BAD_REQUEST, &Refusal { err: why }),
        },
        "/NetworkDriver.DeleteNetwork" => empty(&path, call!(docker_delete_network, docker::NetworkRef)),
        "/NetworkDriver.CreateEndpoint" => done(&path, call!(docker_create_endpoint, docker::CreateEndpoint)),
        "/NetworkDriver.DeleteEndpoint" => empty(&path, call!(docker_delete_endpoint, docker::EndpointRef)),
        "/NetworkDriver.Join" => match parse::<docker::Join>(&body) {
            Ok(join) => {
                let (network, endpoint) = (join.network_id.clone(), join.endpoint_id.clone());
                let result = agent.docker_join(join).await;
                if result.is_ok() {
                    let agent = agent.clone();
                    tokio::spawn(async move { agent.docker_learn_container(network, endpoint).await });
                }
                done(&path, result)
            }
            Err(why) => json(StatusCode::BAD_REQUEST, &Refusal { err: why }),
        },
        "/NetworkDriver.Leave" => empty(&path, call!(docker_leave, docker::EndpointRef)),
        "/NetworkDriver.ProgramExternalConnectivity" => {
            empty(&path, call!(docker_program_external, docker::ExternalConnectivity))
        }
        "/NetworkDriver.RevokeExternalConnectivity" => {
            empty(&path, call!(docker_revoke_external, docker::EndpointRef))
        }
        "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => {
            json(StatusCode::OK, &serde_json::json!({}))
        }
        "/NetworkDriver.EndpointOperInfo" => match parse::<docker::EndpointRef>(&body) {
            Ok(endpoint) => json(StatusCode::OK, &agent.docker_endpoint_info(&endpoint)),
            Err(why) => json(StatusCode::BAD_REQUEST, &Refusal { err: why }),
        },
        _ => json(StatusCode::NOT_FOUND, &Refusal { err: format!("{path} is not implemented") }),
    }
}
