#!/usr/bin/env bash
# Make the project's virtualenv (.venv, or $SNIPROXY_VENV) and install sniproxy into it, editable; with an
# argument, also that extra (e.g. `scripts/venv.sh test`). Prints nothing on a re-run that has nothing to do.
# Why a virtualenv: Debian 12's python3 is "externally managed" (PEP 668), so a system-wide `pip install`
# is refused; and a stock Debian 12 has python3 but not its venv module (package python3-venv), which this
# script installs with apt when it is missing (as root, or with sudo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
VENV=${SNIPROXY_VENV:-$root/.venv}
PY=${PYTHON:-python3}
extra=${1:-}

if [[ ! -x $VENV/bin/python ]]; then
    if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
        echo "venv: $PY has no venv/ensurepip module: installing python3-venv" >&2
        SUDO=()
        [[ $(id -u) -ne 0 ]] && SUDO=(sudo)
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends python3-venv
    fi
    "$PY" -m venv "$VENV"
fi

# Re-install only when pyproject.toml (the dependency list) or the extra changed since the last install.
stamp="$VENV/.sniproxy-installed${extra:+-$extra}"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
# (an install with the test extra also satisfies a plain one)
have=$(cat "$stamp" 2>/dev/null || true)
[[ -z $extra && $have != "$want" ]] && have=$(cat "$VENV/.sniproxy-installed-test" 2>/dev/null || true)
if [[ $have != "$want" ]]; then
    spec="$root"
    [[ -n $extra ]] && spec="$root[$extra]"
    timeout 1200 "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec"
    echo "$want" >"$stamp"
fi
