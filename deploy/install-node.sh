#!/usr/bin/env bash
# Installs weft-node on this host as a systemd service that joins the cluster with a token,
# or removes it again (its links, WireGuard interface, nftables tables, state and files).
#
#   bash deploy/install-node.sh --controllers 10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001 \
#       --join-token weft1.… --ca-fingerprint 5d1c… [--name NAME] [--binary PATH] [--docker]
#       [--cni [--cni-binary PATH]]
#   bash deploy/install-node.sh --uninstall
#
# --docker makes the agent dockerd's network and IPAM plugin (the driver `weft`, served on
# /run/docker/plugins/weft.sock) and sets dockerd's "dns" in /etc/docker/daemon.json to weft's
# DNS address, so that Docker's 127.0.0.11 forwards the names of other hosts' containers to
# weft; dockerd is restarted to take it (its running containers stop unless live-restore is on).
#
# --cni installs the CNI plugin (weft-cni, as the plugin type `weft`) in /opt/cni/bin, where
# containerd, CRI-O and Kubernetes look (podman too), and an example network configuration
# /etc/cni/net.d/weft.conflist.example (not read by runtimes until copied to a .conflist);
# --cni-binary defaults to ./target/release/weft-cni.
#
# The token and fingerprint come from `weft token create` on an admin's machine. The host
# makes its own key on first start; only a certificate request leaves it.
#
# --root DIR installs under DIR instead of / and --no-start leaves systemd alone (packaging
# and tests); --binary defaults to ./target/release/weft-node.
set -euo pipefail

root=""
start=1
uninstall=0
binary="target/release/weft-node"
controllers="" token="" fingerprint="" name="" docker=0 cni=0
cni_binary="target/release/weft-cni"
weft_dns="169.254.53.53"
die() { printf 'install-node: %s\n' "$*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case "$1" in
        --controllers) controllers="$2"; shift 2 ;;
        --join-token) token="$2"; shift 2 ;;
        --ca-fingerprint) fingerprint="$2"; shift 2 ;;
        --name) name="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --root) root="$2"; shift 2 ;;
        --no-start) start=0; shift ;;
        --docker) docker=1; shift ;;
        --cni) cni=1; shift ;;
        --cni-binary) cni_binary="$2"; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        *) die "unknown argument $1 (see the top of this script)" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "run as root"
here="$(cd "$(dirname "$0")" && pwd)"
bin="$root/usr/local/bin/weft-node"
unit="$root/etc/systemd/system/weft-node.service"
env_file="$root/etc/weft/node.env"
daemon_json="$root/etc/docker/daemon.json"
cni_plugin="$root/opt/cni/bin/weft"
cni_example="$root/etc/cni/net.d/weft.conflist.example"
state="$root/var/lib/weft"
have_systemd() { [ "$start" -eq 1 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; }
# dockerd's daemon.json with weft's DNS address added to (add) or taken from (remove) "dns",
# everything else in it kept.
docker_dns() {
    python3 - "$daemon_json" "$weft_dns" "$1" <<'PY'
import json, os, sys
path, address, action = sys.argv[1:]
try:
    with open(path) as f:
        config = json.load(f)
except FileNotFoundError:
    config = {}
except ValueError as e:
    sys.exit(f"install-node: {path} is not JSON ({e}); fix it, then run this again")
servers = [s for s in config.get("dns", []) if s != address]
if action == "add":
    servers.insert(0, address)
if servers:
    config["dns"] = servers
else:
    config.pop("dns", None)
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".new", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".new", path)
PY
}

if [ "$uninstall" -eq 1 ]; then
    if have_systemd; then systemctl disable --now weft-node.service 2>/dev/null || true; fi
    if [ -x "$bin" ]; then
        iface=weftwg0
        if [ -f "$env_file" ]; then
            iface="$(sed -n 's/^WEFT_WIREGUARD_INTERFACE=//p' "$env_file")"
            iface="${iface:-weftwg0}"
        fi
        "$bin" --uninstall --state-dir "$state" --wireguard-interface "$iface" || die "weft-node --uninstall failed"
    fi
    if grep -q "^WEFT_DOCKER_PLUGIN_SOCKET=" "$env_file" 2>/dev/null && [ -f "$daemon_json" ]; then
        docker_dns remove || die "could not take weft's DNS address out of $daemon_json"
        echo "took $weft_dns out of dockerd's dns in $daemon_json (restart docker to apply)"
    fi
    rm -rf "$state" "$env_file" "$unit" "$bin" "$cni_plugin" "$cni_example"
    rmdir "$root/etc/weft" 2>/dev/null || true
    if have_systemd; then systemctl daemon-reload; fi
    echo "weft-node removed"
    exit 0
fi

[ -n "$controllers" ] || die "--controllers host:port,… is required"
[ -n "$token" ] && [ -n "$fingerprint" ] || die "--join-token and --ca-fingerprint are required (weft token create prints both)"
[ -x "$binary" ] || die "$binary is not an executable weft-node (build it, or pass --binary)"
if [ "$cni" -eq 1 ]; then
    [ -x "$cni_binary" ] || die "$cni_binary is not an executable weft-cni (build it, or pass --cni-binary)"
fi
if [ -z "$root" ]; then
    missing=()
    wanted=(iproute2 nftables conntrack wireguard-go)
    if [ "$docker" -eq 1 ]; then wanted+=(python3); fi
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
fi

install -D -m 0755 "$binary" "$bin"
if [ "$cni" -eq 1 ]; then
    install -D -m 0755 "$cni_binary" "$cni_plugin"
    install -D -m 0644 "$here/cni/weft.conflist" "$cni_example"
    echo "CNI plugin installed as $cni_plugin; example network: $cni_example"
fi
install -D -m 0644 "$here/systemd/weft-node.service" "$unit"
install -d -m 0700 "$state" "$state/tls"
umask 077
mkdir -p "$(dirname "$env_file")"
{
    echo "WEFT_CONTROLLER=$controllers"
    echo "WEFT_JOIN_TOKEN=$token"
    echo "WEFT_CA_FINGERPRINT=$fingerprint"
    if [ -n "$name" ]; then echo "WEFT_NODE_NAME=$name"; fi
    if [ "$docker" -eq 1 ]; then echo "WEFT_DOCKER_PLUGIN_SOCKET=/run/docker/plugins/weft.sock"; fi
} >"$env_file"
chmod 0600 "$env_file"
if [ "$docker" -eq 1 ]; then
    umask 022
    docker_dns add || die "could not set dockerd's dns in $daemon_json"
    echo "dockerd's dns in $daemon_json now starts with weft's $weft_dns"
fi
if have_systemd; then
    systemctl daemon-reload
    systemctl enable --now weft-node.service
    echo "weft-node installed and started: journalctl -u weft-node -f"
    if [ "$docker" -eq 1 ] && systemctl is-active --quiet docker.service; then
        systemctl restart docker.service
        echo "dockerd restarted: docker network create -d weft --ipam-driver weft NAME"
    fi
else
    echo "weft-node installed under ${root:-/} (not started)"
fi
