#!/usr/bin/env bash
# weft's benchmarks, from a fresh Debian machine: installs what they need, builds in release
# mode, runs every part (or the parts named: control cli scale agent dns dnsserver dataplane published docker cni), prints each
# figure beside its target and updates BENCHMARKS.md and bench/results.json.
#
#   bash bench/run.sh                # everything, about forty minutes on 2 cores
#   bash bench/run.sh dns dataplane  # some parts
#
# The agent, DNS and data-plane parts build hosts as network namespaces: run as root. As
# another user they are skipped, loudly. Settings: WEFT_BENCH_SECONDS, WEFT_BENCH_TLS=1,
# WEFT_BENCH_ENDPOINTS, WEFT_BENCH_WATCHERS, WEFT_BENCH_REMOTES, WEFT_BENCH_ATTACHES, ...
# (each benchmark's header says which it reads); they are recorded with the command.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=tests/prerequisites.sh
source tests/prerequisites.sh

# The test suite's packages, plus the load generators: iperf3 (TCP throughput) and dnsperf;
# and docker.io, whose `-p` the published-port benchmark compares with (its dockerd runs in a
# namespace of its own, with its own data and exec roots), and whose swarm overlay the Docker
# plugin benchmark compares with (busybox-static is its image); podman with its CNI plugins
# and dnsname, whose own network the CNI benchmark compares with; etcd-server, the 3-member
# etcd the consensus benchmark writes to beside weft's controllers (its own members, on free
# loopback ports, whatever Debian's packaged etcd service does).
packages=(ca-certificates gcc libc6-dev pkg-config git iproute2 iputils-ping nftables conntrack procps bind9-dnsutils wireguard-go wireguard-tools tcpdump iperf3 dnsperf docker.io busybox-static podman containernetworking-plugins golang-github-containernetworking-plugin-dnsname etcd-server)
install_missing "weft's benchmarks" "${packages[@]}"

if [ "$(id -u)" -ne 0 ]; then
    cat >&2 <<'WARN'
################################################################################
# NOT ROOT: the agent, DNS and data-plane benchmarks need network namespaces    #
# and will SKIP. Run as root for every figure.                                  #
################################################################################
WARN
fi

say "building (release)"
# The data-plane benchmarks start the release weft-node and weft-controller binaries.
cargo build --release --locked --workspace --bins

exec cargo run --release --locked -q -p weft-bench -- "$@"
