//! Scale benchmark: a 3-member cluster holding 1,000,000 endpoints, watched by 5,000 simulated
//! nodes (the design's goal size). Reports the members' memory, the snapshot's size, how long a restart of the whole
//! cluster takes, and how long one change takes to reach every watcher.
//!
//! `cargo bench -p weft-controller --bench scale` (release build). Settings:
//! `WEFT_BENCH_ENDPOINTS` (default 1000000), `WEFT_BENCH_WATCHERS` (5000), `WEFT_BENCH_CHANGES`
//! (changes timed for fan-out, 50), `WEFT_BENCH_NETWORKS_PER_NODE` (4),
//! `WEFT_BENCH_RAFT_HEARTBEAT_MS` (the members' `--heartbeat-ms`, 100; election timeouts are 3
//! to 6 of it), for machines too slow for the three members and thousands of simulated hosts
//! sharing their cores at the default.
//!
//! The endpoints are spread over networks of 1,000 (at least 10 networks), and each node has
//! its containers on a few of them, as hosts running a share of a cluster's applications do:
//! a network spans the nodes its application runs on. Each watcher is sent its host's view
//! (decision record 0005): every network and node, and the endpoints of its own networks.
//!
//! A simulated node does what an agent does towards the controllers, without a kernel: it
//! registers, heartbeats every second with the revision it has seen, and follows the watch
//! stream over its own connection as that host, resuming from that revision when the stream
//! breaks. It reads only the revisions of what it receives, as the bytes arrive, so the client
//! side stays light on the machine it shares with the three members.

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Members, channel, disk_usage, wait_ready};
use tonic::Code;
use tonic::transport::Channel;
use weft_api::pb;
use weft_api::pb::cluster_service_client::ClusterServiceClient;
use weft_api::pb::endpoint_service_client::EndpointServiceClient;
use weft_api::pb::network_service_client::NetworkServiceClient;
use weft_api::pb::node_service_client::NodeServiceClient;
use weft_bench::{Figure, percentile, record, setting};

/// `weft.v1.WatchResponse` as a simulated node reads it: only revisions.
#[derive(Clone, PartialEq, prost::Message)]
struct LiteWatchResponse {
    #[prost(oneof = "LiteKind", tags = "1, 2, 3")]
    kind: Option<LiteKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum LiteKind {
    /// FullState: revision is field 1.
    #[prost(message, tag = "1")]
    Snapshot(LiteRevision),
    #[prost(message, tag = "2")]
    Events(LiteEvents),
    /// Progress: revision is field 1.
    #[prost(message, tag = "3")]
    Progress(LiteRevision),
}

#[derive(Clone, PartialEq, prost::Message)]
struct LiteRevision {
    #[prost(uint64, tag = "1")]
    revision: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LiteEvents {
    /// Event: revision is field 1.
    #[prost(message, repeated, tag = "1")]
    events: Vec<LiteRevision>,
}

/// Networks the endpoints are spread over (each a /22): at least this many, more when the
/// endpoints would not fit (a million needs 1,000).
const NETWORKS: usize = 10;
const PER_NETWORK: usize = 1_000;
const LOAD_CLIENTS: usize = 256;

fn node_name(i: usize) -> String {
    format!("node{i:04}")
}

/// Where endpoints go: node `k % nodes`, on the `(k / nodes) % per_node`th of that node's
/// networks, which are `per_node` consecutive ones from `node × per_node`.
#[derive(Debug, Clone, Copy)]
struct Placement {
    nodes: usize,
    networks: usize,
    per_node: usize,
}

impl Placement {
    fn node_of(&self, k: usize) -> usize {
        k % self.nodes
    }

    fn network_of(&self, k: usize) -> usize {
        self.nth_network_of(self.node_of(k), (k / self.nodes) % self.per_node)
    }

    fn nth_network_of(&self, node: usize, nth: usize) -> usize {
        (node * self.per_node + nth) % self.networks
    }
}

/// What the watchers have seen, one slot each, plus how many snapshots they received.
struct Watchers {
    seen: Vec<AtomicU64>,
    snapshots: AtomicU64,
    /// Watch-stream bytes received by all of them.
    bytes: AtomicU64,
    /// Snapshots older than what their watcher had already seen: must stay 0.
    backwards: AtomicU64,
}

impl Watchers {
    fn all_at(&self, revision: u64) -> bool {
        self.seen.iter().all(|s| s.load(Ordering::Acquire) >= revision)
    }

    fn behind(&self, revision: u64) -> usize {
        self.seen.iter().filter(|s| s.load(Ordering::Acquire) < revision).count()
    }

    /// Waits until every watcher has seen `revision`; the instant the last one got there
    /// (to within the 1 ms polling step).
    async fn wait_all(&self, revision: u64, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.all_at(revision) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} watchers still behind revision {revision} after {timeout:?}",
                self.behind(revision),
                self.seen.len()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Messages up to this size are decoded whole; a larger one is a snapshot, of which only the
/// head (holding its revision) is kept.
const DECODE_LIMIT: usize = 1 << 20;
const SNAPSHOT_HEAD: usize = 32;

/// Reads revisions out of a watch stream as it arrives, without ever holding a snapshot: a
/// thousand simulated nodes in one process cannot each keep a 10 MB copy, as a thousand real
/// agents (one each) do.
#[derive(Default)]
struct RevisionReader {
    header: Vec<u8>,
    len: usize,
    read: usize,
    kept: Vec<u8>,
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    prost::encoding::decode_varint(bytes).ok()
}

impl RevisionReader {
    /// Feeds stream bytes; returns the revision of each message completed, and whether it
    /// was a snapshot.
    fn feed(&mut self, mut bytes: &[u8], seen: &mut impl FnMut(u64, bool)) {
        while !bytes.is_empty() {
            if self.header.len() < 5 {
                let take = (5 - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.header.len() == 5 {
                    self.len =
                        u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]])
                            as usize;
                    self.read = 0;
                    self.kept.clear();
                }
            } else {
                let take = (self.len - self.read).min(bytes.len());
                let keep = if self.len <= DECODE_LIMIT {
                    take
                } else {
                    take.min(SNAPSHOT_HEAD.saturating_sub(self.kept.len()))
                };
                self.kept.extend_from_slice(&bytes[..keep]);
                self.read += take;
                bytes = &bytes[take..];
            }
            if self.header.len() == 5 && self.read == self.len {
                self.header.clear();
                if self.len <= DECODE_LIMIT {
                    use prost::Message;
                    let revision =
                        match LiteWatchResponse::decode(self.kept.as_slice()).ok().and_then(|m| m.kind) {
                            Some(LiteKind::Snapshot(s)) => Some((s.revision, true)),
                            Some(LiteKind::Events(e)) => {
                                e.events.iter().map(|e| e.revision).max().map(|r| (r, false))
                            }
                            Some(LiteKind::Progress(p)) => Some((p.revision, false)),
                            None => None,
                        };
                    if let Some((revision, snapshot)) = revision {
                        seen(revision, snapshot);
                    }
                } else {
                    // WatchResponse.snapshot (field 1, length-delimited), then FullState's
                    // first field, revision (field 1, varint).
                    let mut head = self.kept.as_slice();
                    if head.first() == Some(&0x0a) {
                        head = &head[1..];
                        if varint(&mut head).is_some() && head.first() == Some(&0x08) {
                            head = &head[1..];
                            if let Some(revision) = varint(&mut head) {
                                seen(revision, true);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Opens a watch stream from `from` and reads it until it ends.
async fn watch_once(
    channel: &Channel,
    node: String,
    from: u64,
    received: &AtomicU64,
    seen: &mut impl FnMut(u64, bool),
) {
    use http_body_util::BodyExt;
    use tonic::codegen::http;
    use tower::{Service, ServiceExt};
    let body = weft_controller::frames::frame(&pb::WatchRequest { from_revision: from, node });
    let request = http::Request::builder()
        .method("POST")
        .uri("/weft.v1.WatchService/Watch")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(body)))
        .expect("request");
    let mut service = channel.clone();
    let Ok(ready) = service.ready().await else { return };
    let Ok(response) = ready.call(request).await else { return };
    let mut body = response.into_body();
    let mut reader = RevisionReader::default();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
            reader.feed(&data, seen);
        }
    }
}

/// One simulated node: heartbeats and a watch stream over one connection.
fn simulate_node(id: usize, addr: String, watchers: Arc<Watchers>) {
    let channel = channel(&addr);
    let beating = channel.clone();
    let beats = watchers.clone();
    tokio::spawn(async move {
        // Spread the heartbeats over the second, as independent agents would be.
        let offset = Duration::from_micros((id as u64 * 1_000_000) / beats.seen.len().max(1) as u64);
        tokio::time::sleep(offset).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut client = NodeServiceClient::new(beating);
        loop {
            tick.tick().await;
            let request = pb::HeartbeatRequest {
                name: node_name(id),
                applied_revision: beats.seen[id].load(Ordering::Acquire),
                ..Default::default()
            };
            // Failures (a restart in progress) are retried on the next beat, as agents do.
            let _ = client.heartbeat(request).await;
        }
    });
    tokio::spawn(async move {
        loop {
            let from = watchers.seen[id].load(Ordering::Acquire);
            watch_once(&channel, node_name(id), from, &watchers.bytes, &mut |revision, snapshot| {
                if snapshot {
                    watchers.snapshots.fetch_add(1, Ordering::Relaxed);
                    if revision < watchers.seen[id].load(Ordering::Acquire) {
                        watchers.backwards.fetch_add(1, Ordering::Relaxed);
                    }
                }
                watchers.seen[id].fetch_max(revision, Ordering::AcqRel);
            })
            .await;
            // The agent's reconnect pause.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// Creates an endpoint, retrying a write that timed out (a leader change) with the same
/// request id, as agents do, for up to `patience`; each retry is counted.
async fn create_retrying(
    client: &mut EndpointServiceClient<Channel>,
    request: &pb::CreateEndpointRequest,
    retries: &AtomicU64,
    patience: Duration,
) -> pb::Endpoint {
    let deadline = Instant::now() + patience;
    loop {
        match client.create_endpoint(request.clone()).await {
            Ok(created) => return created.into_inner(),
            Err(status) => {
                let retriable = matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded);
                assert!(retriable && Instant::now() < deadline, "create endpoint: {status:?}");
                retries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn revision_of(addr: &str) -> u64 {
    ClusterServiceClient::new(channel(addr))
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .revision
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The largest resident and peak memory among the members, in MiB.
fn memory(members: &Members) -> (f64, f64) {
    let all: Vec<(u64, u64)> = (0..3).map(|i| members.memory(i)).collect();
    (mib(all.iter().map(|m| m.0).max().unwrap_or(0)), mib(all.iter().map(|m| m.1).max().unwrap_or(0)))
}

fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[tokio::main]
async fn main() {
    let endpoints: usize = setting("WEFT_BENCH_ENDPOINTS", 1_000_000);
    let nodes: usize = setting("WEFT_BENCH_WATCHERS", 5_000);
    let changes: usize = setting("WEFT_BENCH_CHANGES", 50);
    let per_node: usize = setting("WEFT_BENCH_NETWORKS_PER_NODE", 4);
    let raft_heartbeat_ms: u64 = setting("WEFT_BENCH_RAFT_HEARTBEAT_MS", 100);
    // One connection per simulated node, and the members inherit the limit.
    raise_open_file_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    // Snapshots every 500 entries, so the figures include one (the default, 10,000, is not
    // reached by this load: creates are batched into far fewer entries). Worker threads stay
    // at the default, one per core, as members on machines of their own run: with one each
    // (the share of three members on two cores) the fan-out to 5,000 watchers crowded Raft's
    // heartbeats out, and the restart took 27 s instead of 9 (decision 0010).
    let heartbeat = raft_heartbeat_ms.to_string();
    let mut members = Members::start(dir.path(), &["--snapshot-every", "500", "--heartbeat-ms", &heartbeat]);
    let addrs = members.addrs.clone();
    for addr in &addrs {
        wait_ready(addr, 0, Duration::from_secs(30)).await;
    }

    let (rss_empty, _) = memory(&members);
    let network_count = NETWORKS.max(endpoints.div_ceil(PER_NETWORK));
    let placement = Placement { nodes, networks: network_count, per_node: per_node.clamp(1, network_count) };

    // The registry: nodes, networks, endpoints spread over both.
    let began = Instant::now();
    let register: Vec<_> = (0..64)
        .map(|w| {
            let mut client = NodeServiceClient::new(channel(&addrs[w % 3]));
            tokio::spawn(async move {
                for i in (w..nodes).step_by(64) {
                    let request = pb::RegisterNodeRequest {
                        name: node_name(i),
                        underlay_address: format!("10.200.{}.{}", i / 200, i % 200 + 1),
                        underlay_mtu: 1500,
                        ..Default::default()
                    };
                    client.register_node(request).await.expect("register node");
                }
            })
        })
        .collect();
    for task in register {
        task.await.expect("register task");
    }
    let mut networks = NetworkServiceClient::new(channel(&addrs[0]));
    for n in 0..network_count {
        // Consecutive /22s from 100.64.0.0 (4,096 of them fit in 100.64.0.0/10).
        let base = u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) + u32::try_from(n * 1024).expect("fits");
        let request = pb::CreateNetworkRequest {
            name: format!("net{n}"),
            ipam_config: vec![pb::IpamConfig {
                subnet: format!("{}/22", std::net::Ipv4Addr::from(base)),
                ..Default::default()
            }],
            ..Default::default()
        };
        networks.create_network(request).await.expect("create network");
    }
    // Clients retry a write that timed out (a leader change under load) with its request id,
    // as agents do; the retries are counted.
    let retries = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..LOAD_CLIENTS)
        .map(|c| {
            let mut client = EndpointServiceClient::new(channel(&addrs[c % 3]));
            let retries = retries.clone();
            tokio::spawn(async move {
                for k in (c..endpoints).step_by(LOAD_CLIENTS) {
                    let request = pb::CreateEndpointRequest {
                        network: format!("net{}", placement.network_of(k)),
                        node: node_name(placement.node_of(k)),
                        container_id: format!("c{k:06}"),
                        container_name: format!("c{k:06}"),
                        request_id: format!("load-{k}"),
                        ..Default::default()
                    };
                    create_retrying(&mut client, &request, &retries, Duration::from_secs(120)).await;
                }
            })
        })
        .collect();
    for task in load {
        task.await.expect("load task");
    }
    let loaded = began.elapsed();
    let revision = revision_of(&addrs[0]).await;
    for addr in &addrs {
        wait_ready(addr, revision, Duration::from_secs(60)).await;
    }
    let (rss_loaded, _) = memory(&members);

    // The watchers, all at once, as after a power cut of every host.
    let watchers = Arc::new(Watchers {
        seen: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
        snapshots: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        backwards: AtomicU64::new(0),
    });
    let began = Instant::now();
    for id in 0..nodes {
        simulate_node(id, addrs[id % 3].clone(), watchers.clone());
    }
    let synced = watchers.wait_all(revision, Duration::from_secs(600)).await - began;
    let sync_bytes = watchers.bytes.load(Ordering::Relaxed);
    let (rss_watched, _) = memory(&members);

    // One change at a time, until every watcher has it. Elections and snapshots sent to
    // watchers meanwhile are counted: either stretches the fan-out.
    let term = |members: &Members| {
        (0..3).filter_map(|i| members.gauge(i, "weft_controller_term")).max().unwrap_or(0)
    };
    let term_before_changes = term(&members);
    let snapshots_before_changes = watchers.snapshots.load(Ordering::Relaxed);
    let mut from_request = Vec::with_capacity(changes);
    let mut from_ack = Vec::with_capacity(changes);
    for c in 0..changes {
        let mut client = EndpointServiceClient::new(channel(&addrs[c % 3]));
        // On one of the node's networks: reaches the network's other hosts as an event, every
        // other watcher as progress.
        let request = pb::CreateEndpointRequest {
            network: format!("net{}", placement.nth_network_of(c % nodes, 0)),
            node: node_name(c % nodes),
            container_id: format!("change{c}"),
            container_name: format!("change{c}"),
            request_id: format!("change-{c}"),
            ..Default::default()
        };
        let sent = Instant::now();
        let created = create_retrying(&mut client, &request, &retries, Duration::from_secs(60)).await;
        let acked = Instant::now();
        let everywhere = watchers.wait_all(created.created_revision, Duration::from_secs(60)).await;
        from_request.push(everywhere - sent);
        from_ack.push(everywhere.saturating_duration_since(acked));
    }
    from_request.sort();
    from_ack.sort();
    let elections_in_changes = term(&members) - term_before_changes;
    let snapshots_in_changes = watchers.snapshots.load(Ordering::Relaxed) - snapshots_before_changes;
    let (rss_steady, peak) = memory(&members);

    // The snapshot and the disk.
    let snapshot =
        (0..3).filter_map(|i| members.gauge(i, "weft_controller_snapshot_bytes")).max().unwrap_or(0);
    let data = members.data_dirs.iter().map(|d| disk_usage(d)).max().unwrap_or(0);

    // kill -9 every member and start them again: until each serves the whole registry, then
    // until every watcher follows again (has a change made right after).
    let before = revision_of(&addrs[0]).await;
    let snapshots_before = watchers.snapshots.load(Ordering::Relaxed);
    members.kill_all();
    let began = Instant::now();
    members.start_all();
    for addr in &addrs {
        wait_ready(addr, before, Duration::from_secs(120)).await;
    }
    let restarted = began.elapsed();
    let request = pb::CreateEndpointRequest {
        network: format!("net{}", placement.nth_network_of(0, 0)),
        node: node_name(0),
        container_id: "after-restart".into(),
        container_name: "after-restart".into(),
        ..Default::default()
    };
    let created = EndpointServiceClient::new(channel(&addrs[0]))
        .create_endpoint(request)
        .await
        .expect("create endpoint after the restart")
        .into_inner();
    let resumed = watchers.wait_all(created.created_revision, Duration::from_secs(600)).await - began;
    let resnapshots = watchers.snapshots.load(Ordering::Relaxed) - snapshots_before;
    let backwards = watchers.backwards.load(Ordering::Relaxed);
    let (rss_restarted, _) = memory(&members);

    let at = format!("{endpoints} endpoints, {nodes} watching nodes, Raft heartbeat {raft_heartbeat_ms} ms");
    let figures = [
        Figure::new("scale.endpoints", "endpoints held by the cluster", endpoints as f64, ""),
        Figure::new(
            "scale.memory_per_endpoint",
            "member memory per endpoint (largest RSS loaded less empty, over the endpoints)",
            (rss_loaded - rss_empty).max(0.0) * 1024.0 * 1024.0 / endpoints.max(1) as f64,
            "bytes",
        ),
        Figure::new(
            "scale.watchers",
            "simulated nodes watching (and heartbeating every second)",
            nodes as f64,
            "",
        ),
        Figure::new(
            "scale.load_rate",
            &format!("creating {endpoints} endpoints with {LOAD_CLIENTS} clients: creates/s"),
            endpoints as f64 / loaded.as_secs_f64(),
            "/s",
        ),
        Figure::new(
            "scale.load_retries",
            "writes retried after a timeout (a leader change), load and timed changes",
            retries.load(Ordering::Relaxed) as f64,
            "",
        ),
        Figure::new(
            "scale.rss_loaded",
            &format!("member memory (largest RSS), {endpoints} endpoints, no watchers"),
            rss_loaded,
            "MiB",
        ),
        Figure::new(
            "scale.rss_watched",
            &format!("member memory (largest RSS), {at}"),
            rss_steady.max(rss_watched),
            "MiB",
        ),
        Figure::new(
            "scale.rss_peak",
            "member memory, peak (largest VmHWM) through load and initial sync",
            peak,
            "MiB",
        ),
        Figure::new(
            "scale.snapshot_size",
            &format!("registry snapshot, {endpoints} endpoints"),
            mib(snapshot),
            "MiB",
        ),
        Figure::new(
            "scale.snapshot_wire",
            &format!(
                "a host's view as its watcher receives it (protobuf; {per_node} networks of about {} endpoints)",
                endpoints / network_count
            ),
            mib(sync_bytes) / nodes.max(1) as f64,
            "MiB",
        ),
        Figure::new("scale.data_dir", "largest member data directory (log + snapshot)", mib(data), "MiB"),
        Figure::new(
            "scale.initial_sync",
            &format!("{nodes} watchers connect at once: until all have their view"),
            synced.as_secs_f64(),
            "s",
        ),
        Figure::new(
            "scale.initial_sync_rate",
            "… watch-stream data delivered per second during it",
            mib(sync_bytes) / synced.as_secs_f64(),
            "MiB/s",
        ),
        Figure::new(
            "scale.fanout.p50",
            &format!("one change, request sent → all {nodes} watchers have it: p50"),
            common::ms(percentile(&from_request, 500)),
            "ms",
        ),
        Figure::new(
            "scale.fanout.p99",
            &format!("one change, request sent → all {nodes} watchers have it: p99"),
            common::ms(percentile(&from_request, 990)),
            "ms",
        ),
        Figure::new(
            "scale.fanout_elections",
            "… elections (term changes) while the changes were timed",
            elections_in_changes as f64,
            "",
        ),
        Figure::new(
            "scale.fanout_snapshots",
            "… snapshots sent to watchers while the changes were timed",
            snapshots_in_changes as f64,
            "",
        ),
        Figure::new(
            "scale.fanout_after_ack.p99",
            &format!("one change, acknowledged → all {nodes} watchers have it: p99"),
            common::ms(percentile(&from_ack, 990)),
            "ms",
        ),
        Figure::new(
            "scale.restart",
            "kill -9 all 3 members, start again: until each serves the whole registry",
            restarted.as_secs_f64(),
            "s",
        ),
        Figure::new(
            "scale.restart_watchers",
            &format!("… until all {nodes} watchers have a change made after it"),
            resumed.as_secs_f64(),
            "s",
        ),
        Figure::new(
            "scale.backwards",
            "… watchers sent a state older than they had seen (must be 0)",
            backwards as f64,
            "",
        ),
        Figure::new(
            "scale.rss_restarted",
            "member memory (largest RSS) after the restart",
            rss_restarted,
            "MiB",
        ),
    ];
    println!("| {at}, 3 members | value |");
    println!("|---|---|");
    for figure in figures {
        println!("| {} | {} {} |", figure.label, weft_bench::format_value(figure.value), figure.unit);
        record(figure);
    }
    println!(
        "\n({} changes timed; the restart sent {resnapshots} full snapshots to resuming watchers; revision {before})",
        changes
    );
}
