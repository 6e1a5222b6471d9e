#!/usr/bin/env bash
# weft on one machine, in one command (as root, on Debian):
#
#   bash deploy/quickstart.sh        # build, start a cluster, connect containers, show them talk
#   bash deploy/quickstart.sh docker # the same hosts each with its own dockerd using weft's plugin,
#                                    # and Docker containers across hosts by name, -p included
#   bash deploy/quickstart.sh down   # remove everything the quickstart made
#
# It installs the Debian packages it needs, builds weft, starts three weft-controller
# processes (a Raft cluster) in this machine's root namespace, makes three "hosts" as network
# namespaces joined by an underlay switch, runs weft-node on each, creates a plain and an
# encrypted network, connects containers (more namespaces) on every host and shows them reach
# each other by name across hosts. Then it leaves everything running and says how to use it.
#
# Nothing leaves the machine: the underlay is a bridge in a namespace of its own, with one
# leg into the root namespace where the controllers listen.
#
# Settings (environment): WEFT_QS_PREFIX names every namespace, link and file (default
# weftqs); WEFT_QS_UNDERLAY is the underlay /24 (default 10.213.0); WEFT_BIN_DIR uses built
# binaries from there instead of building (the CI test does, with a debug build).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="${WEFT_QS_PREFIX:-weftqs}"
underlay="${WEFT_QS_UNDERLAY:-10.213.0}"
state="/run/$prefix"
controller_ip="$underlay.254"
controllers="$controller_ip:7001,$controller_ip:7002,$controller_ip:7003"
hosts=(1 2 3)

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: it creates network namespaces, links and nftables rules"
[ "${#prefix}" -le 8 ] || die "WEFT_QS_PREFIX is at most 8 characters (interface names are 15)"

down() {
    # Docker's containers while the plugin still answers, then dockerd (it stops its containerd).
    for i in "${hosts[@]}"; do
        sock="$state/docker$i/docker.sock"
        [ -S "$sock" ] || continue
        ids="$(docker -H "unix://$sock" ps -aq 2>/dev/null || true)"
        # shellcheck disable=SC2086 # one id per word
        [ -z "$ids" ] || docker -H "unix://$sock" rm -f $ids >/dev/null 2>&1 || true
    done
    for i in "${hosts[@]}"; do
        pidfile="$state/docker$i/docker.pid"
        [ -e "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    # Agents next, so nothing reprograms what is being removed; then what they made.
    for pidfile in "$state"/*.pid; do
        [ -e "$pidfile" ] || continue
        kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for i in "${hosts[@]}"; do
        ns="$prefix-h$i"
        # The pins, not `ip netns list`: with namespaces going away around it, that prints
        # "Peer netns reference is invalid" for each one it cannot name.
        if [ -e "/run/netns/$ns" ]; then
            if [ -x "$state/bin/weft-node" ]; then
                nsenter "--net=/run/netns/$ns" "$state/bin/weft-node" --uninstall --state-dir "$state/host$i" \
                    --wireguard-interface "$prefix-wg$i" --switch-namespace "$ns-switch" >/dev/null 2>&1 || true
            fi
        fi
    done
    for pin in /run/netns/"$prefix"-*; do
        [ -e "$pin" ] || continue
        ns="${pin##*/}"
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    ip link del "$prefix-up" 2>/dev/null || true
    for i in "${hosts[@]}"; do rm -f "/var/run/wireguard/$prefix-wg$i.sock"; done
    # Docker mode's mounts: sandboxes under each dockerd's exec root, the hosts' mount
    # namespaces, and the private mount they are kept on (innermost first).
    if [ -d "$state" ]; then
        awk -v s="$state/" 'index($2, s) == 1 || $2 == substr(s, 1, length(s) - 1) {print $2}' /proc/self/mounts |
            sort -r | while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
    fi
    rm -rf "$state"
}

mode="${1:-up}"
if [ "$mode" = "down" ]; then
    down
    echo "quickstart removed: namespaces, links, processes and $state"
    exit 0
fi
[ "$mode" = "up" ] || [ "$mode" = "docker" ] || die "usage: bash deploy/quickstart.sh [up|docker|down]"

packages=(ca-certificates gcc libc6-dev pkg-config iproute2 iputils-ping nftables conntrack procps bind9-dnsutils wireguard-go wireguard-tools)
if [ "$mode" = docker ]; then packages+=(docker.io busybox-static util-linux); fi
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -n "${WEFT_BIN_DIR:-}" ]; then
    bin="$WEFT_BIN_DIR"
else
    command -v cargo >/dev/null 2>&1 || die "weft needs a Rust toolchain (cargo, rustc 1.88 or newer): install it with rustup"
    say "building weft (release)"
    cargo build --release --locked --bins
    bin="target/release"
fi
for b in weft weft-controller weft-node; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing"
done

say "clearing an earlier quickstart"
down
# The underlay /24 must be free on this machine: an address or route already in it would take
# the hosts' traffic (every agent then fails with "No route to host").
clash_address=$(ip -o -4 addr show | awk -v p="$underlay." 'index($4, p) == 1 {print $4 " on " $2; exit}')
clash_route=$(ip -4 route show match "$underlay.1" | grep -v '^default' | head -n 1 || true)
if [ -n "$clash_address" ] || [ -n "$clash_route" ]; then
    die "the underlay $underlay.0/24 is already in use on this machine (${clash_address:-route $clash_route}); pick a free /24 with WEFT_QS_UNDERLAY, e.g. WEFT_QS_UNDERLAY=10.214.0 bash deploy/quickstart.sh"
fi
mkdir -p "$state/bin"
cp "$bin/weft" "$bin/weft-controller" "$bin/weft-node" "$state/bin/"
weft=("$state/bin/weft" --controller "$controllers" --tls-dir "$state/pki/admin")

say "certificates: a cluster CA, one credential per controller, and an admin's"
"$state/bin/weft" pki init --dir "$state/pki" --cluster "$prefix" \
    --controller "1=$controller_ip" --controller "2=$controller_ip" --controller "3=$controller_ip" >/dev/null

say "underlay $underlay.0/24: a switch namespace, three hosts, a leg into this namespace for the controllers"
ip netns add "$prefix-sw"
ip -n "$prefix-sw" link add br0 type bridge
ip -n "$prefix-sw" link set br0 up
join() { # join NAMESPACE|root ADDRESS LINK
    local where="$1" address="$2" link="$3"
    ip link add "$link" type veth peer name "$link-s"
    ip link set "$link-s" netns "$prefix-sw"
    ip -n "$prefix-sw" link set "$link-s" master br0 up
    if [ "$where" = root ]; then
        ip addr add "$address/24" dev "$link"
        ip link set "$link" up
    else
        ip link set "$link" netns "$where" name ul0
        ip -n "$where" addr add "$address/24" dev ul0
        ip -n "$where" link set ul0 up
        ip -n "$where" link set lo up
    fi
}
join root "$controller_ip" "$prefix-up"
for i in "${hosts[@]}"; do
    ip netns add "$prefix-h$i"
    join "$prefix-h$i" "$underlay.$i" "$prefix-l$i"
done

say "3 controllers (Raft) on $controllers"
cat >"$state/cluster.toml" <<EOF
cluster_id = "$prefix"
members = [
  { id = 1, address = "$controller_ip:7001" },
  { id = 2, address = "$controller_ip:7002" },
  { id = 3, address = "$controller_ip:7003" },
]
EOF
# Three members share this machine: each gets its share of the cores (see --worker-threads).
threads=$(( $(nproc) / 3 )); [ "$threads" -ge 1 ] || threads=1
for i in 1 2 3; do
    RUST_LOG="warn,openraft=off" nohup "$state/bin/weft-controller" --id "$i" --listen "$controller_ip:700$i" \
        --data-dir "$state/controller$i" --manifest "$state/cluster.toml" --tls-dir "$state/pki/controller-$i" \
        --worker-threads "$threads" \
        >"$state/controller$i.log" 2>&1 &
    echo $! >"$state/controller$i.pid"
done
for _ in $(seq 300); do
    status="$("${weft[@]}" cluster status 2>/dev/null || true)"
    if grep -q "^Cluster: *$prefix" <<<"$status" && ! grep -q "none" <<<"$status"; then break; fi
    sleep 0.1
done
grep -q "^Leader: *[1-3]" <<<"$status" || die "the controllers did not elect a leader; see $state/controller*.log"

say "a join token: each host makes its own key and gets its certificate with it"
token_out="$("${weft[@]}" token create --ttl 3600)"
token="$(head -1 <<<"$token_out")"
fingerprint="$(grep -o -- '--ca-fingerprint [0-9a-f]*' <<<"$token_out" | awk '{print $2}')"
[ -n "$token" ] && [ -n "$fingerprint" ] || die "no join token: $token_out"

# In Docker mode every host is a machine of its own to dockerd too: a mount namespace of its
# own (its /run/docker/plugins, where its agent serves the plugin), entered with the host's
# network namespace by both.
enter=()
if [ "$mode" = docker ]; then
    mkdir -p "$state/mnt"
    mount --bind "$state/mnt" "$state/mnt"
    mount --make-private "$state/mnt"
fi
host_enter() { # host_enter I: sets enter to the command prefix that runs something on host I
    if [ "$mode" = docker ]; then
        enter=(nsenter "--mount=$state/mnt/h$1" "--net=/run/netns/$prefix-h$1")
    else
        # nsenter, not `ip netns exec`, which would give weft-node a mount namespace of its
        # own: the switch namespace it pins under /run/netns would live and die with it.
        enter=(nsenter "--net=/run/netns/$prefix-h$1")
    fi
}

say "weft-node on host1, host2, host3"
for i in "${hosts[@]}"; do
    plugin=()
    if [ "$mode" = docker ]; then
        touch "$state/mnt/h$i"
        unshare "--mount=$state/mnt/h$i" --propagation private \
            sh -c 'mkdir -p /run/docker/plugins && mount -t tmpfs weft-plugins /run/docker/plugins'
        mkdir -p "$state/docker$i"
        plugin=(--docker-plugin-socket /run/docker/plugins/weft.sock --docker-api-socket "$state/docker$i/docker.sock")
    fi
    host_enter "$i"
    RUST_LOG=info nohup "${enter[@]}" "$state/bin/weft-node" --controllers "$controllers" \
        --name "host$i" --underlay-address "$underlay.$i" --socket "$state/host$i.sock" --state-dir "$state/host$i" \
        --wireguard-interface "$prefix-wg$i" --switch-namespace "$prefix-h$i-switch" --tls-dir "$state/pki/host$i" \
        --join-token "$token" --ca-fingerprint "$fingerprint" "${plugin[@]}" >"$state/host$i.log" 2>&1 &
    echo $! >"$state/host$i.pid"
done
for i in "${hosts[@]}"; do
    for _ in $(seq 300); do [ -S "$state/host$i.sock" ] && break; sleep 0.1; done
    [ -S "$state/host$i.sock" ] || die "weft-node on host$i did not start; see $state/host$i.log"
done

if [ "$mode" = docker ]; then
    say "dockerd on host1, host2, host3, with weft as its network and IPAM plugin"
    for i in "${hosts[@]}"; do
        host_enter "$i"
        # Names Docker's 127.0.0.11 does not know (containers on other hosts) go to weft's DNS,
        # which every host's agent serves on 169.254.53.53, as deploy/install-node.sh --docker sets.
        nohup "${enter[@]}" dockerd --data-root "$state/docker$i/data" --exec-root "$state/docker$i/exec" \
            --pidfile "$state/docker$i/docker.pid" --host "unix://$state/docker$i/docker.sock" \
            --dns 169.254.53.53 >"$state/docker$i.log" 2>&1 &
    done
    docker_on() { local i="$1"; shift; docker -H "unix://$state/docker$i/docker.sock" "$@"; }
    for i in "${hosts[@]}"; do
        for _ in $(seq 600); do docker_on "$i" version >/dev/null 2>&1 && break; sleep 0.1; done
        docker_on "$i" version >/dev/null 2>&1 || die "dockerd on host$i did not start; see $state/docker$i.log"
    done
    say "an image: busybox, imported (nothing is pulled from a registry)"
    rootfs="$state/rootfs"
    mkdir -p "$rootfs/bin" "$rootfs/www"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in sh sleep ping wget nslookup httpd cat; do ln -sf busybox "$rootfs/bin/$applet"; done
    echo "hello from web, on host1" >"$rootfs/www/index.html"
    tar -C "$rootfs" -cf "$state/rootfs.tar" .
    for i in "${hosts[@]}"; do docker_on "$i" import "$state/rootfs.tar" busybox:weft >/dev/null; done

    say "host1\$ docker network create -d weft --ipam-driver weft app"
    docker_on 1 network create -d weft --ipam-driver weft app >/dev/null
    for i in 2 3; do
        for _ in $(seq 300); do docker_on "$i" network inspect app >/dev/null 2>&1 && break; sleep 0.1; done
        docker_on "$i" network inspect app >/dev/null 2>&1 || die "network app did not reach host$i's dockerd"
    done
    echo "  every host's dockerd has it: host3 lists $(docker_on 3 network ls --filter driver=weft --format '{{.Name}} ({{.Driver}})')"
    say "host1\$ docker run -d --name web --network app --network-alias api -p 8080:80 busybox:weft httpd -f -p 80 -h /www"
    docker_on 1 run -d --name web --network app --network-alias api -p 8080:80 busybox:weft httpd -f -p 80 -h /www >/dev/null
    say "host2\$ docker run --rm --network app busybox:weft wget -qO- http://web/"
    fetched=""
    for _ in $(seq 100); do
        # Docker's 127.0.0.11 on host2 does not know web; it asks weft's DNS, which does.
        fetched="$(docker_on 2 run --rm --network app busybox:weft wget -qO- http://web/ 2>/dev/null || true)"
        [ -n "$fetched" ] && break
        sleep 0.2
    done
    [ -n "$fetched" ] || die "host2 could not fetch http://web/ across hosts"
    echo "  $fetched"
    say "host3\$ docker run --rm --network app busybox:weft ping -c 1 api"
    docker_on 3 run --rm --network app busybox:weft ping -c 1 api | sed -n 2p | sed 's/^/  /'
    say "host2 (the machine itself)\$ wget -qO- http://$underlay.1:8080/   # web's published port on host1"
    host_enter 2
    echo "  $("${enter[@]}" busybox wget -qO- "http://$underlay.1:8080/")"
    "${weft[@]}" endpoint ls
    cat <<DONE

weft is running under Docker: 3 controllers, 3 hosts each with its own dockerd. Try:

  alias d1='docker -H unix://$state/docker1/docker.sock' d2='docker -H unix://$state/docker2/docker.sock'
  d2 run -d --name db --network app busybox:weft sleep 1d
  d1 exec web ping -c 2 db                          # host1 to host2, by name
  export WEFT_CONTROLLER=$controllers WEFT_TLS_DIR=$state/pki/admin
  $state/bin/weft network inspect app                # Docker's containers, on every host

Logs: $state/*.log. Tear it all down: bash deploy/quickstart.sh down
DONE
    exit 0
fi

say "two networks: frontend (plain) and secrets (encrypted with WireGuard)"
"${weft[@]}" network create --subnet 10.214.1.0/24 frontend >/dev/null
"${weft[@]}" network create --subnet 10.214.2.0/24 -o encrypted=true secrets >/dev/null
"${weft[@]}" network ls

say "containers: web1, web2, web3 on frontend (one per host); db1 and db3 on secrets"
connect() { # connect HOST NETWORK CONTAINER
    local ns="$prefix-$3"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    "${weft[@]}" --node-socket "$state/host$1.sock" network connect --wait "$2" "$3" --netns "$ns"
}
connect 1 frontend web1
connect 2 frontend web2
connect 3 frontend web3
connect 1 secrets db1
connect 3 secrets db3
"${weft[@]}" endpoint ls

say "reaching each other by name, across hosts"
check() { # check FROM NAME
    if ip netns exec "$prefix-$1" ping -c 1 -W 2 -q "$2" >/dev/null; then
        printf '  %-4s -> %-4s ok (%s)\n' "$1" "$2" "$(ip netns exec "$prefix-$1" dig +short +time=2 "$2" | head -1)"
    else
        die "$1 cannot reach $2 by name"
    fi
}
check web1 web2
check web1 web3
check web3 web2
check db1 db3

cat <<EOF

weft is running: 3 controllers, 3 hosts, 5 containers. Try:

  export WEFT_CONTROLLER=$controllers WEFT_TLS_DIR=$state/pki/admin
  $state/bin/weft network ls
  $state/bin/weft network inspect secrets
  $state/bin/weft node ls
  $state/bin/weft cluster status
  ip netns exec $prefix-web1 ping web3                 # a container on host1 to one on host3
  ip netns exec $prefix-db1 ping db3                   # inside WireGuard between host1 and host3
  ip netns add $prefix-web4 && $state/bin/weft --node-socket $state/host2.sock \\
      network connect frontend web4 --netns $prefix-web4

Logs: $state/*.log. Tear it all down: bash deploy/quickstart.sh down
EOF
