#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests (real Dovecot, Postfix, openssl, curl).
# Run scripts/install-test-deps.sh first on a fresh machine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"; python -m ruff check sniproxy tests bench fuzz
echo "== mypy --strict"; python -m mypy
echo "== pytest"; python -m pytest -q -ra "$@"
