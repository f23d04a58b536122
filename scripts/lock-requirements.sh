#!/usr/bin/env bash
# Write requirements.lock: the runtime dependencies of pyproject.toml (no extras) resolved for the image's
# platform (Linux x86_64, CPython 3.11) and pinned with the SHA-256 of every file PyPI has for each version, so
# the Dockerfile installs them with `pip install --require-hashes` and nothing else can slip in.
# Then requirements-build.lock: the image's build-only tools (requirements-build.in: mypy for mypyc, decision 0016),
# the same way, constrained to the runtime lock's versions of what both have; the runtime stage gets none of it.
# Re-run after changing `dependencies` in pyproject.toml or requirements-build.in, and commit the result
# (tests/deploy checks they agree).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SNIPROXY_VENV:-$PWD/.venv}/bin/python
"$PY" -m piptools compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
    --no-emit-find-links --no-header --resolver=backtracking --output-file requirements.lock pyproject.toml
sed -i '1i # The runtime dependencies, pinned with hashes: made by scripts/lock-requirements.sh from pyproject.toml' \
    requirements.lock
echo "lock-requirements: wrote requirements.lock ($(grep -c '==' requirements.lock) packages)"
"$PY" -m piptools compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
    --no-emit-find-links --no-header --resolver=backtracking --output-file requirements-build.lock \
    requirements-build.in
sed -i '1i # The image build stage tools, pinned with hashes: made by scripts/lock-requirements.sh from requirements-build.in' \
    requirements-build.lock
echo "lock-requirements: wrote requirements-build.lock ($(grep -c '==' requirements-build.lock) packages)"
