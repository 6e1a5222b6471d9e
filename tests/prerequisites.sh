# Shared by tests/run.sh and bench/run.sh (sourced): installs missing Debian packages and
# checks for a Rust toolchain.

say() { printf '\n==> %s\n' "$*"; }

# install_missing WHO PACKAGE...: installs the packages not installed yet (as root), or says
# which are missing and stops.
install_missing() {
    local who="$1"
    shift
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "$who need these Debian packages: ${missing[*]}; run as root to install them" >&2
            exit 1
        fi
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "weft needs a Rust toolchain (cargo, rustc 1.88 or newer): install it with rustup" >&2
        exit 1
    fi
}
