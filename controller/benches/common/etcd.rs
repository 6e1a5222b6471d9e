//! The peer of the consensus benchmark: a 3-member etcd cluster (Debian's etcd-server) on
//! loopback, each member with its own data directory and etcd's defaults (fsync on every
//! commit, as weft's members do), and a gRPC client of its `KV.Put` driven the same way as
//! weft's endpoint creates: one unary call per write, clients spread over the members.
//!
//! The two messages are written out here rather than generated from etcd's protos, which
//! import gogoproto and google.api annotations: only the fields a put needs, with etcd's field
//! numbers (api/etcdserverpb/rpc.proto); fields of the answer not named are skipped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    pub leader: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// `etcdserverpb.KV/Put` on `channel`.
pub async fn put(channel: Channel, request: PutRequest) -> Result<PutResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    Ok(grpc.unary(tonic::Request::new(request), path, codec).await?.into_inner())
}

/// `etcdserverpb.Maintenance/Status` on `channel`: the member's id and its leader's.
pub async fn status(channel: Channel) -> Result<StatusResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<StatusRequest, StatusResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Maintenance/Status");
    Ok(grpc.unary(tonic::Request::new(StatusRequest {}), path, codec).await?.into_inner())
}

/// Whether Debian's etcd is installed.
pub fn installed() -> bool {
    Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Three etcd members on loopback; killed on drop.
pub struct Etcd {
    children: Vec<Child>,
    /// Client endpoints, `127.0.0.1:PORT`.
    pub addrs: Vec<String>,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        let port = || super::free_port();
        let clients: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", port())).collect();
        let peers: Vec<String> = (0..3).map(|_| format!("http://127.0.0.1:{}", port())).collect();
        let cluster: Vec<String> = peers.iter().enumerate().map(|(i, p)| format!("e{}={p}", i + 1)).collect();
        let children = (0..3)
            .map(|i| {
                let log = std::fs::File::create(dir.join(format!("etcd{}.log", i + 1))).expect("etcd log");
                Command::new("etcd")
                    .args(["--name", &format!("e{}", i + 1)])
                    .arg(format!("--data-dir={}", dir.join(format!("etcd{}", i + 1)).display()))
                    .arg(format!("--listen-client-urls=http://{}", clients[i]))
                    .arg(format!("--advertise-client-urls=http://{}", clients[i]))
                    .arg(format!("--listen-peer-urls={}", peers[i]))
                    .arg(format!("--initial-advertise-peer-urls={}", peers[i]))
                    .arg(format!("--initial-cluster={}", cluster.join(",")))
                    .args(["--initial-cluster-state", "new", "--initial-cluster-token", "weft-bench"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("spawn etcd")
            })
            .collect();
        Etcd { children, addrs: clients }
    }

    /// Waits until a put through every member succeeds.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for addr in &self.addrs {
            loop {
                let request = PutRequest { key: b"ready".to_vec(), value: b"1".to_vec() };
                if put(super::channel_plain(addr), request).await.is_ok() {
                    break;
                }
                assert!(Instant::now() < deadline, "etcd at {addr} not ready within {timeout:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Etcd {
    /// Which of `addrs` leads now, by index.
    pub async fn leader(&self) -> Option<usize> {
        for (i, addr) in self.addrs.iter().enumerate() {
            let status = status(super::channel_plain(addr)).await.ok()?;
            if status.header.is_some_and(|h| h.member_id == status.leader) {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
