#!/usr/bin/env bash
# weft's whole test suite, from a fresh Debian machine: installs what the tests need, then checks
# formatting and lints and runs every test. CI runs exactly this (see .ci/run).
#
# Run it as root: the kernel-facing tests (network namespaces, VXLAN, nftables) need root. As
# another user they skip, and say so loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=tests/prerequisites.sh
source tests/prerequisites.sh

# Debian packages the build and the tests use. Installed only when missing.
# iproute2, iputils-ping, nftables and procps: the kernel tests build hosts and containers as
# namespaces, ping across them, load nftables rules and clean up processes; bind9-dnsutils
# gives the DNS tests dig; wireguard-go is the userspace WireGuard the encryption tests run,
# and tcpdump captures the underlay to show nothing of an encrypted network crosses in the clear;
# python3 and python3-venv run the stock grpcio client of the API conformance tests (its pip
# packages, tests/python/requirements.txt, go into target/python-grpcio).
# conntrack forgets the flows of unpublished ports; docker.io and busybox-static: the Docker
# plugin tests run Debian's dockerd on namespace hosts with a busybox image; podman and
# containernetworking-plugins: the CNI plugin tests run podman with its CNI backend there;
# python3-yaml reads the Kubernetes manifest the way kubectl would before it is checked;
# systemd gives systemd-analyze, which checks deploy/systemd's units as systemd reads them.
packages=(ca-certificates gcc libc6-dev pkg-config git iproute2 iputils-ping nftables conntrack procps bind9-dnsutils wireguard-go wireguard-tools tcpdump python3 python3-venv docker.io busybox-static podman containernetworking-plugins python3-yaml systemd)

install_missing "weft's tests" "${packages[@]}"

if [ "$(id -u)" -ne 0 ]; then
    cat >&2 <<'WARN'
################################################################################
# NOT ROOT: tests that need the kernel (namespaces, links, nftables) will SKIP. #
# Run as root for the full suite.                                               #
################################################################################
WARN
fi

export CARGO_TERM_COLOR=never
# Clean builds (CI, fresh clones) gain nothing from incremental state.
export CARGO_INCREMENTAL=0

say "formatting"
cargo fmt --all --check

say "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "binaries"
# Tests of one package run the binaries of others (weft-node's tests run weft-cni, the
# controller and the CLI); nextest builds only the binaries of the packages it tests, and
# weft-cni has no integration tests of its own.
cargo build --workspace --bins --locked

say "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    echo "(cargo-nextest not found: using cargo test)"
    cargo test --workspace --locked --no-fail-fast
fi
