#!/usr/bin/env bash
# The README's first command: install sniproxy in the project's virtualenv (scripts/venv.sh) and run
# `sniproxy demo` with the given arguments, from the current directory (its state goes to ./state/demo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/venv.sh"
exec "${SNIPROXY_VENV:-$root/.venv}/bin/python" -m sniproxy demo "$@"
