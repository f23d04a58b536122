# sniproxy container image: the package and its locked runtime dependencies in a virtualenv, run as a fixed
# non-root UID with a read-only root filesystem. Build: `buildah bud -t sniproxy .` (or docker build);
# scripts/build-image.sh builds it without any engine. The config is mounted at /etc/sniproxy/sniproxy.yaml;
# listeners use high ports (1143 IMAP, 1587 submission, 1993 IMAPS, 1465 SMTPS, 1443 HTTPS: no capability needed,
# the Service maps 143/587/993/465/443 to them) and the admin endpoint 9100 (/healthz, /readyz, /metrics).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The C toolchain mypyc needs to compile the HTTP half (decision 0016), in this stage only. The interpreter's
# headers: the official image has them (/usr/local/include); a Debian python3 (scripts/build-image.sh's stand-in
# base) needs libpython3.11-dev. Versions are the base's Debian release's, not pinned: the base image is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && inc=$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))') \
 && { [ -f "$inc/Python.h" ] || apt-get install -y --no-install-recommends libpython3.11-dev; } \
 && [ -f "$inc/Python.h" ] \
 && rm -rf /var/lib/apt/lists/*
# Dependencies first: these layers are reused until a lock changes (scripts/lock-requirements.sh). The runtime's
# in /opt/sniproxy; the build tools (mypy, which ships mypyc; setuptools; stubs) in a throw-away venv on the same
# interpreter, so the extensions it builds match the runtime's ABI. The .pth lets mypy see the runtime packages.
COPY requirements.lock requirements-build.lock ./
RUN python3 -m venv /opt/sniproxy \
 && /opt/sniproxy/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements-build.lock \
 && /opt/sniproxy/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))' \
      > "$(/opt/build/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/sniproxy-runtime.pth"
COPY pyproject.toml ./
COPY scripts/build-compiled.sh ./scripts/
COPY sniproxy ./sniproxy
# The package without its dependencies (locked above; its build backend, setuptools, lives only in pip's
# throw-away build environment); then its HTTP half compiled (a copy made in /src/compiled replaces the installed
# package: the copy's mypy cache stays here) and checked from the runtime venv, which has no mypy (-I: not the
# sources in the working directory): a build that cannot compile fails here, never ships the interpreted modules;
# then only what runs: no pip, no setuptools.
RUN /opt/sniproxy/bin/pip install --no-cache-dir --no-deps /src \
 && PYTHON=/opt/build/bin/python scripts/build-compiled.sh /src/compiled \
 && site=$(/opt/sniproxy/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && rm -rf "$site/sniproxy" \
 && cp -R /src/compiled/sniproxy "$site/sniproxy" \
 && find "$site/sniproxy" -name '*.so' -exec strip --strip-debug {} + \
 && /opt/sniproxy/bin/python -I -c 'from sniproxy.compiled import http_build as b; print("http_build:", b()); \
      raise SystemExit(b() != "compiled")' \
 && /opt/sniproxy/bin/python -m compileall -q /opt/sniproxy/lib \
 && /opt/sniproxy/bin/pip uninstall --yes --quiet setuptools pip

FROM python:3.11-slim
# Fixed UID/GID 10001: the Helm chart's runAsUser/fsGroup and file ownership of mounted secrets rely on it.
RUN groupadd --system --gid 10001 sniproxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sniproxy --no-create-home \
      --shell /usr/sbin/nologin sniproxy \
 && mkdir -p /etc/sniproxy /var/lib/sniproxy \
 && chown 10001:10001 /var/lib/sniproxy
COPY --from=build /opt/sniproxy /opt/sniproxy
ENV PATH=/opt/sniproxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Writable places with a read-only root: the state dir (CRL cache that survives restarts; the config's
# state_dir) and /tmp (CRL downloads are spooled there before validation).
VOLUME ["/var/lib/sniproxy", "/tmp"]
WORKDIR /var/lib/sniproxy
EXPOSE 1143 1587 1993 1465 1443 9100
USER 10001:10001
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/sniproxy/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=3)"]
# SIGTERM drains: stop accepting, let connections finish (drain.timeout), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sniproxy"]
CMD ["run", "-c", "/etc/sniproxy/sniproxy.yaml"]
