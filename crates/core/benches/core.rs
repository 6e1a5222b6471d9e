//! Benchmarks of the pure core: `cargo bench -p weft-core`.
//!
//! Each figure is taken at 1k, 100k and 1M endpoints already allocated, to show that no
//! operation's cost grows with the number of addresses held:
//! - `ipam/allocate_release`: one dynamic allocation and its release in a fragmented subnet
//!   (every seventh address released, so the free space is split into many intervals);
//! - `apply/create_endpoint`: `State::apply` of a create-endpoint proposal, the hot path of the
//!   controllers' state machine (validation, allocation, indexes, id, event);
//! - `apply/remove_endpoint`: the inverse;
//! - `apply/create_endpoint_with_request_id` (at 1k only): the same create sent as a client's
//!   write with a request id, which the registry remembers for retries, and
//!   `apply/retry_with_request_id`: a retry answered from that memory;
//! - `apply/create_network`: carving a /24 beside 1,000 existing networks, then removing it;
//! - `snapshot/encode` and `snapshot/restore`: whole-registry snapshots, for Raft;
//!   `snapshot/view`: the part of `encode` a controller does under the registry's lock
//!   (applies wait for it), sharing the records without encoding them.
//!
//! BENCHMARKS.md records the figures; `WEFT_BENCH_QUICK=1` runs fewer samples.

// A benchmark: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weft_core::ipam::{SubnetAllocator, SubnetRequest};
use weft_core::{
    Cidr, ClusterConfig, Command, EndpointRef, EndpointRequest, NetworkRequest, NodeRequest, Proposal,
    Response, State,
};

const SIZES: [(usize, &str); 3] = [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")];

/// Room for well over a million endpoints: a /10 holds 4,194,302 host addresses.
const BIG_SUBNET: &str = "100.64.0.0/10";

fn proposal(command: Command) -> Proposal {
    Proposal { at_ms: 1_700_000_000_000, command }
}

fn attach_request(i: usize) -> Command {
    Command::CreateEndpoint(EndpointRequest {
        network: "big".into(),
        node: "h1".into(),
        container_id: format!("c{i}"),
        container_name: format!("c{i}"),
        ..EndpointRequest::default()
    })
}

/// A registry with one host and one /10 network holding `n` endpoints.
fn registry(n: usize) -> State {
    let mut state = State::new(ClusterConfig { cluster_id: "bench".into(), ..ClusterConfig::default() })
        .expect("default config");
    let node = NodeRequest {
        name: "h1".into(),
        underlay: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        underlay_mtu: 1500,
        wireguard_public_key: None,
        wireguard_port: 0,
        labels: Default::default(),
        agent_version: String::new(),
        wireguard_backend: String::new(),
    };
    state.apply(&proposal(Command::RegisterNode(node))).expect("register");
    let network = NetworkRequest {
        name: "big".into(),
        ipv4: SubnetRequest { subnet: Some(BIG_SUBNET.parse().expect("cidr")), ..SubnetRequest::default() },
        ..NetworkRequest::default()
    };
    state.apply(&proposal(Command::CreateNetwork(network))).expect("network");
    for i in 0..n {
        state.apply(&proposal(attach_request(i))).expect("attach");
    }
    state
}

/// Applies `iters` creates made by `create` (containers `next`, `next + 1`, ...) and returns
/// the time they took; removes them again untimed, so the registry stays at its size.
fn time_creates(
    state: &mut State,
    next: &mut usize,
    iters: u64,
    create: impl Fn(usize) -> Command,
) -> Duration {
    let batch: Vec<Proposal> = (0..usize::try_from(iters).expect("batch fits in memory"))
        .map(|i| proposal(create(*next + i)))
        .collect();
    *next += batch.len();
    let start = Instant::now();
    let mut ids = Vec::with_capacity(batch.len());
    for p in &batch {
        match state.apply(black_box(p)).expect("room").response {
            Response::Endpoint(e) => ids.push(e.id),
            other => unreachable!("{other:?}"),
        }
    }
    let elapsed = start.elapsed();
    for id in ids {
        state.apply(&proposal(Command::RemoveEndpoint(EndpointRef::Id(id.to_string())))).expect("remove");
    }
    elapsed
}

fn ipam(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipam/allocate_release");
    group.throughput(Throughput::Elements(1));
    let subnet: Cidr = BIG_SUBNET.parse().expect("cidr");
    for (n, label) in SIZES {
        let config = SubnetRequest::default().resolve(subnet).expect("config");
        let mut alloc = SubnetAllocator::new(&config).expect("allocator");
        let held: Vec<IpAddr> = (0..n).map(|_| alloc.allocate("big").expect("room")).collect();
        for addr in held.iter().step_by(7) {
            alloc.release(*addr);
        }
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                let addr = alloc.allocate("big").expect("room");
                alloc.release(black_box(addr));
            })
        });
    }
    group.finish();
}

fn apply_endpoints(c: &mut Criterion) {
    let mut create = c.benchmark_group("apply/create_endpoint");
    create.throughput(Throughput::Elements(1));
    let mut states = Vec::new();
    for (n, label) in SIZES {
        let mut state = registry(n);
        let mut next = n;
        create.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_custom(|iters| time_creates(&mut state, &mut next, iters, attach_request))
        });
        states.push((state, label));
    }
    create.finish();

    let mut remove = c.benchmark_group("apply/remove_endpoint");
    remove.throughput(Throughput::Elements(1));
    for (state, label) in &mut states {
        let mut next = 0usize;
        remove.bench_function(BenchmarkId::from_parameter(*label), |b| {
            b.iter_custom(|iters| {
                let mut removals = Vec::with_capacity(usize::try_from(iters).expect("batch fits in memory"));
                for i in 0..usize::try_from(iters).expect("batch fits in memory") {
                    let id = match state
                        .apply(&proposal(attach_request(usize::MAX / 2 + next + i)))
                        .expect("room")
                        .response
                    {
                        Response::Endpoint(e) => e.id,
                        other => unreachable!("{other:?}"),
                    };
                    removals.push(proposal(Command::RemoveEndpoint(EndpointRef::Id(id.to_string()))));
                }
                next += removals.len();
                let start = Instant::now();
                for p in &removals {
                    state.apply(black_box(p)).expect("remove");
                }
                start.elapsed()
            })
        });
    }
    remove.finish();
}

/// What request ids cost the state machine: fingerprinting the command and remembering the
/// answer (compare with `apply/create_endpoint/1k`), and answering a retry.
fn apply_with_request_ids(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));
    let mut state = registry(1_000);
    let mut next = 1_000usize;
    let once = |i: usize| Command::once(&format!("5f0c2a1e-1111-4d4d-8888-{i:012}"), attach_request(i));
    group.bench_function(BenchmarkId::new("create_endpoint_with_request_id", "1k"), |b| {
        b.iter_custom(|iters| time_creates(&mut state, &mut next, iters, once))
    });
    let retried = proposal(once(5_000_000));
    let mut fresh = registry(1_000);
    fresh.apply(&retried).expect("first attempt");
    group.bench_function(BenchmarkId::new("retry_with_request_id", "1k"), |b| {
        b.iter(|| black_box(fresh.apply(black_box(&retried)).expect("answered")))
    });
    group.finish();
}

fn apply_networks(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply/create_network");
    group.throughput(Throughput::Elements(1));
    let mut state = State::default();
    for i in 0..1_000 {
        let request = NetworkRequest { name: format!("n{i}"), ..NetworkRequest::default() };
        state.apply(&proposal(Command::CreateNetwork(request))).expect("network");
    }
    group.bench_function(BenchmarkId::from_parameter("1k"), |b| {
        b.iter_batched(
            || {
                proposal(Command::CreateNetwork(NetworkRequest {
                    name: "extra".into(),
                    ..NetworkRequest::default()
                }))
            },
            |p| {
                state.apply(&p).expect("network");
                state
                    .apply(&proposal(Command::RemoveNetwork { network: "extra".into(), force: false }))
                    .expect("rm");
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn snapshots(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    for (n, label) in SIZES {
        let state = registry(n);
        let bytes = state.snapshot();
        eprintln!("snapshot of {label} endpoints: {} bytes ({} per endpoint)", bytes.len(), bytes.len() / n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("encode", label), |b| b.iter(|| black_box(state.snapshot())));
        group
            .bench_function(BenchmarkId::new("view", label), |b| b.iter(|| black_box(state.snapshot_view())));
        group.bench_function(BenchmarkId::new("restore", label), |b| {
            b.iter(|| black_box(State::restore(&bytes).expect("restore")))
        });
    }
    group.finish();
}

fn config() -> Criterion {
    let quick = std::env::var_os("WEFT_BENCH_QUICK").is_some();
    let (warm, measure) = if quick { (1, 2) } else { (2, 5) };
    Criterion::default()
        .warm_up_time(Duration::from_secs(warm))
        .measurement_time(Duration::from_secs(measure))
}

criterion_group! {
    name = benches;
    config = config();
    targets = ipam, apply_endpoints, apply_with_request_ids, apply_networks, snapshots
}
criterion_main!(benches);
