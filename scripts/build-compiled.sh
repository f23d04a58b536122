#!/bin/sh
# Compile the HTTP half with mypyc (decision 0016) into a copy of the package, never into the source tree:
#
#   scripts/build-compiled.sh [DEST]     DEST (default build/compiled) gets a fresh copy of sniproxy/ whose six
#                                        HTTP modules are extensions (.so, shadowing their .py) and mypyc's shared
#                                        runtime sniproxy/http__mypyc*.so; PYTHONPATH=DEST runs the compiled build.
#
# Why a copy: an extension older than its .py silently wins on import, so compiled files in the working tree would
# run stale code after an edit. A copy is rebuilt from the sources each time (scripts/test.sh, the image).
# Needs gcc, the headers of $PYTHON's interpreter (Debian: python3-dev) and mypy, which ships mypyc, in $PYTHON's
# environment; its C output depends on mypy's version, pinned by the test extras and requirements-build.lock.
# All or nothing: without the shared runtime the compiled modules do not import; a module that fails to build
# fails the script (there is no silent fallback to the interpreted module in a compiled build).
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac  # (the build runs in DEST)
DEST=${1:-build/compiled}
MODULES="sniproxy/proto/http_backend.py sniproxy/proto/http_body.py sniproxy/proto/http_rewrite.py
sniproxy/proto/http_server.py sniproxy/driver/http.py sniproxy/driver/http_pool.py"

mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
[ "$DEST" != "$PWD" ] || { echo "build-compiled: DEST must not be the source tree" >&2; exit 2; }
rm -rf "$DEST/sniproxy"
cp -R sniproxy "$DEST/sniproxy"
find "$DEST/sniproxy" \( -name __pycache__ -prune -exec rm -rf {} + \) -o \( -name '*.so' -exec rm -f {} + \)
cp pyproject.toml "$DEST/.build-pyproject.toml"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$DEST"
# shellcheck disable=SC2086  # one module path per word
"$PYTHON" - $MODULES <<EOF
import sys

from mypyc.build import mypycify
from setuptools import setup

# mypy reads the project's own settings (strict, plugins) from the copied pyproject
setup(name="sniproxy-http-compiled", script_args=["-q", "build_ext", "--inplace", "--build-temp", "$TMP/temp",
                                                  "--build-lib", "$TMP/lib"],
      ext_modules=mypycify(["--config-file", ".build-pyproject.toml", *sys.argv[1:]], opt_level="3",
                           target_dir="$TMP/mypyc", group_name="sniproxy.http"))
EOF
rm -f .build-pyproject.toml
for m in $MODULES; do ls "${m%.py}".cpython-*.so >/dev/null; done
ls sniproxy/http__mypyc.cpython-*.so >/dev/null
echo "build-compiled: $(echo $MODULES | wc -w) modules compiled into $DEST/sniproxy"
