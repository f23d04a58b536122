#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests (real Dovecot, Postfix, openssl, curl).
# Run scripts/install-test-deps.sh first on a fresh machine. Extra arguments go to pytest.
#
# The suite runs against the build the image ships: the HTTP half compiled with mypyc (decision 0016), in a copy
# of the tree (build/compiled-tree; compiled files never sit next to the sources, where a stale one would shadow
# an edited .py). The unit tests of the compiled modules' packages then run once more on the interpreted sources,
# which is what the demo, mutation testing and a developer's edit-and-run use. SNIPROXY_TEST_BUILD=interpreted
# runs the whole suite on the sources only (no compiler needed).
set -euo pipefail
cd "$(dirname "$0")/.."
# the project's virtualenv, made by scripts/install-test-deps.sh (scripts/venv.sh test)
PY=${SNIPROXY_VENV:-$PWD/.venv}/bin/python
[[ -x $PY ]] || { echo "test.sh: no $PY: run ./scripts/install-test-deps.sh first" >&2; exit 1; }
export PATH="$(dirname "$PY"):$PATH"
echo "== ruff"; "$PY" -m ruff check sniproxy tests bench fuzz soak
echo "== mypy --strict"; "$PY" -m mypy
if [[ ${SNIPROXY_TEST_BUILD:-compiled} == interpreted ]]; then
    echo "== pytest (interpreted)"; exec "$PY" -m pytest -q -ra "$@"
fi

TREE=$PWD/build/compiled-tree
echo "== mirror of the tree in $TREE, HTTP half compiled (scripts/compiled-mirror.sh)"
PYTHON=$PY ./scripts/compiled-mirror.sh "$TREE"
echo "== pytest (compiled HTTP half)"
(cd "$TREE" && SNIPROXY_EXPECT_COMPILED=1 "$PY" -m pytest -q -ra "$@")
echo "== pytest (interpreted: the unit tests of the compiled modules' packages)"
"$PY" -m pytest -q -ra tests/unit/proto tests/unit/driver
