#!/usr/bin/env bash
# CI step: mutation-test the security-critical modules a change touched, fail under the target (issue 11).
#   scripts/mutation-ci.sh [REV]   modules changed since REV (default HEAD~1; working-tree changes count too)
# Environment: MUTATION_TARGET (95), MUTATION_MAX_SECONDS (600: the bound of the step), MUTATION_JOBS (2),
# MUTATION_REPORT (where the markdown report goes; default a temporary file, printed at the end).
# A clone too shallow to hold REV mutates nothing and warns (MUTATION_ALL_IF_SHALLOW=1: every listed module).
# Exit status: scripts/mutation.py's (0 ok, 1 a module under the target, 2 out of time, 3 tests failing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SNIPROXY_VENV:-$PWD/.venv}/bin/python
[[ -x $PY ]] || { echo "mutation-ci.sh: no $PY: run ./scripts/install-test-deps.sh first" >&2; exit 1; }
REV=${1:-HEAD~1}
REPORT=${MUTATION_REPORT:-$(mktemp "${TMPDIR:-/tmp}/mutation-ci.XXXXXX.md")}
args=(--target "${MUTATION_TARGET:-95}" --max-seconds "${MUTATION_MAX_SECONDS:-600}" --jobs "${MUTATION_JOBS:-2}"
      --report "$REPORT")
if git rev-parse --verify --quiet "$REV^{commit}" >/dev/null; then
    args+=(--changed-since "$REV")
elif [[ ${MUTATION_ALL_IF_SHALLOW:-0} == 1 ]]; then
    echo "mutation-ci.sh: $REV is not in this clone's history: mutating every listed module" >&2
else
    # Every listed module takes far longer than the step's bound, so a shallow clone cannot tell what a
    # change touched: say so loudly rather than fail the whole CI on time. The full run is documented.
    echo "mutation-ci.sh: WARNING: $REV is not in this clone's history (shallow clone): nothing mutated;" \
         "fetch more history, or run MUTATION_ALL_IF_SHALLOW=1 $0, or scripts/mutation.py for the full run" >&2
    exit 0
fi
status=0
"$PY" scripts/mutation.py "${args[@]}" || status=$?
# The summary table and the survivors, for the CI log.
sed -n '/^| module/,$p' "$REPORT"
case $status in
    0) echo "mutation-ci.sh: ok (report: $REPORT)";;
    1) echo "mutation-ci.sh: FAIL: a module is under the target: add the test that kills its survivors," \
            "or list a truly equivalent mutant with its reason in tests/mutation-equivalents.txt" >&2;;
    2) echo "mutation-ci.sh: FAIL: out of time before every mutant ran (MUTATION_MAX_SECONDS)" >&2;;
    *) echo "mutation-ci.sh: FAIL: the unit tests do not pass without mutants (status $status)" >&2;;
esac
exit $status
