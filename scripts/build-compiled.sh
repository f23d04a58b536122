#!/bin/sh
# Compile the HTTP half with mypyc, in place: each module's extension (.so) next to its .py, which it
# shadows on import, and mypyc's shared runtime as sniproxy/http__mypyc*.so. Decision 0016 (a sketch: not
# wired into .ci/run, install-test-deps.sh or the Dockerfile). Needs gcc and the Python headers (Debian:
# gcc, python3-dev; the python:3.11 images have the headers) and mypy (which ships mypyc) in $PYTHON's env.
#
#   scripts/build-compiled.sh          build (about 15 s); the .py files stay the source of truth
#   scripts/build-compiled.sh --clean  remove every .so it made: the tree is pure Python again
#
# A .so older than its .py is NOT refreshed by Python: rebuild (or --clean) after each change to a module
# below. Without the shared runtime the compiled modules do not import at all (no silent fallback).
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
MODULES="sniproxy/proto/http_backend.py sniproxy/proto/http_body.py sniproxy/proto/http_rewrite.py
sniproxy/proto/http_server.py sniproxy/driver/http.py sniproxy/driver/http_pool.py"

for m in $MODULES; do rm -f "${m%.py}".cpython-*.so; done
rm -f sniproxy/http__mypyc.cpython-*.so
rm -rf build/mypyc
[ "${1:-}" = "--clean" ] && exit 0

# shellcheck disable=SC2086  # one module path per word
"$PYTHON" - $MODULES <<'EOF'
import sys

from mypyc.build import mypycify
from setuptools import setup

setup(name="sniproxy-http-compiled",
      script_args=["build_ext", "--inplace", "--build-temp", "build/mypyc/temp", "--build-lib", "build/mypyc/lib"],
      ext_modules=mypycify(sys.argv[1:], opt_level="3", target_dir="build/mypyc", group_name="sniproxy.http"))
EOF
for m in $MODULES; do ls "${m%.py}".cpython-*.so >/dev/null; done
echo "compiled: $MODULES" | tr '\n' ' '; echo
