#!/usr/bin/env bash
# A mirror of the working tree whose HTTP half is compiled with mypyc (decision 0016): the build the image ships,
# for the suite (scripts/test.sh) and the benches (run them from inside DEST: `python -m sniproxy` then loads it).
#
#   scripts/compiled-mirror.sh DEST      DEST is emptied, then gets the tracked and new (not ignored) files, i.e.
#                                        what the next commit would hold, edits included, with symlinks to the
#                                        ignored tool directories (.venv, .venv-sslyze, .tools), and is compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:?usage: scripts/compiled-mirror.sh DEST}
PY=${PYTHON:-${SNIPROXY_VENV:-$PWD/.venv}/bin/python}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
# (it is emptied: never the tree itself nor one of its parents)
parent=${DEST%/}/
if [[ $PWD/ == "$parent"* ]]; then echo "compiled-mirror: DEST must not be the source tree or above it" >&2; exit 2; fi
rm -rf "$DEST"
mkdir -p "$DEST"
git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$DEST"
for d in .venv .venv-sslyze .tools; do [[ -e $d ]] && ln -s "$PWD/$d" "$DEST/$d"; done
PYTHON=$PY ./scripts/build-compiled.sh "$DEST"
