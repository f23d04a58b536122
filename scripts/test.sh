#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests (real Dovecot, Postfix, openssl, curl).
# Run scripts/install-test-deps.sh first on a fresh machine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# the project's virtualenv, made by scripts/install-test-deps.sh (scripts/venv.sh test)
PY=${SNIPROXY_VENV:-$PWD/.venv}/bin/python
[[ -x $PY ]] || { echo "test.sh: no $PY: run ./scripts/install-test-deps.sh first" >&2; exit 1; }
export PATH="$(dirname "$PY"):$PATH"
echo "== ruff"; "$PY" -m ruff check sniproxy tests bench fuzz soak
echo "== mypy --strict"; "$PY" -m mypy
echo "== pytest"; "$PY" -m pytest -q -ra "$@"
