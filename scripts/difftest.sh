#!/usr/bin/env bash
# Cross-build differential of the HTTP half (decision 0016): the same generated transcripts (fixed seeds) through
# the interpreted sources and the compiled mirror, each build in its own processes; the outputs (every event,
# written byte and exception, canonical) must be identical. Not run by scripts/test.sh: a tool for a change to
# the compiled modules, to mypy/mypyc, or to llhttp. About 20 s of compile, then about 30 s per seed.
#
#   scripts/difftest.sh [OUT] [SEED...]    OUT (default build/difftest) is emptied; seeds default to 1616
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/difftest}
shift || true
SEEDS=${*:-1616}
PY=${PYTHON:-${SNIPROXY_VENV:-$PWD/.venv}/bin/python}
HERE=$PWD/scripts/difftest
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/interp"
mkdir -p "$OUT/interp"
git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$OUT/interp"
PYTHON=$PY ./scripts/compiled-mirror.sh "$OUT/compiled" >/dev/null
( cd "$OUT/interp" && PYTHONPATH=. "$PY" -c "from pathlib import Path; from sniproxy.demo.pki import build; build(Path('$OUT/pki'))" )
fail=0
run() {   # run NAME SCRIPT ARGS...: both builds, then compare
    local name=$1; shift
    for b in interp compiled; do
        ( cd "$OUT/$b" && PYTHONPATH="$OUT/$b" timeout 900 "$PY" "$@" 2>"$OUT/$name-$b.err" | grep -a -E '^(client|chunked|backend|head|rewrite|response|drv) ' > "$OUT/$name-$b.txt" ) &
    done
    wait
    grep -h "^# build" "$OUT/$name-interp.err" "$OUT/$name-compiled.err" | tr '\n' ' '
    if cmp -s "$OUT/$name-interp.txt" "$OUT/$name-compiled.txt"; then
        echo "$name: $(wc -l < "$OUT/$name-interp.txt") transcripts, identical"
    else
        echo "$name: DIFFERENT ($(diff "$OUT/$name-interp.txt" "$OUT/$name-compiled.txt" | grep -c '^<') of $(wc -l < "$OUT/$name-interp.txt") lines)"
        fail=1
    fi
}
for seed in $SEEDS; do
    ( cd "$OUT/interp" && SEED=$seed DIFFTEST_TREE=. "$PY" "$HERE/drive.py" gen "$OUT/sans-$seed.pkl" 2>/dev/null )
    run "sans-$seed" "$HERE/drive.py" run "$OUT/sans-$seed.pkl"
done
seed=${SEEDS%% *}
"$PY" "$HERE/gen_back.py" "$OUT/sans-$seed.pkl" "$OUT/driver.pkl" 3000 >/dev/null
run driver "$HERE/drive_back.py" "$OUT/driver.pkl" "$OUT/pki"
exit $fail
