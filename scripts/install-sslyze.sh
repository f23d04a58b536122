#!/usr/bin/env bash
# Install sslyze (the TLS scanner of tests/integration/test_sslyze.py) in its own virtualenv, .venv-sslyze.
# Why not in the `test` extra: sslyze 6 pins cryptography<47 while sniproxy runs on a newer one, and
# installing it next to sniproxy would downgrade cryptography under the code being tested.
# Idempotent: does nothing when .venv-sslyze/bin/sslyze already runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SSLYZE_VENV:-.venv-sslyze}
if "$VENV/bin/sslyze" --help >/dev/null 2>&1; then
    echo "install-sslyze: $VENV already has sslyze"
    exit 0
fi
"${PYTHON:-python3}" -m venv "$VENV"
timeout 600 "$VENV/bin/python" -m pip install -q 'sslyze>=6,<7'
"$VENV/bin/sslyze" --help >/dev/null
echo "install-sslyze: done ($VENV/bin/sslyze)"
