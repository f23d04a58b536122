#!/usr/bin/env bash
# Install the C peers that bench/peers.py measures sniproxy against, on Debian 12 (run as root or with sudo):
# HAProxy, nginx (with its stream and mail modules), stunnel4, and wrk (a C HTTP load generator, used only for
# reference: it cannot present a client certificate). Idempotent: apt is skipped when every binary and module
# is already present (FORCE_APT=1 runs it anyway). None of these services is used as a system daemon: the bench
# starts private instances on free loopback ports with its own configs; the Debian units are stopped.
set -euo pipefail

PACKAGES=(haproxy nginx libnginx-mod-stream libnginx-mod-mail stunnel4 openssl)
need=0
for b in /usr/sbin/haproxy /usr/sbin/nginx /usr/bin/stunnel4 /usr/bin/openssl \
         /usr/lib/nginx/modules/ngx_stream_module.so /usr/lib/nginx/modules/ngx_mail_module.so; do
    [[ -e $b ]] || need=1
done
[[ ${FORCE_APT:-0} == 1 ]] && need=1

if ((need)); then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "install-bench-deps: need root or sudo for apt-get" >&2; exit 1; }
        SUDO=(sudo)
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 1200 \
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
    # the packages start system daemons on :80 (nginx) / their default config; the bench needs none of them
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        "${SUDO[@]}" systemctl stop nginx haproxy stunnel4 2>/dev/null || true
    fi
else
    echo "install-bench-deps: peers already installed, skipping apt"
fi
echo "install-bench-deps: haproxy $(/usr/sbin/haproxy -v | head -1 | awk '{print $3}'), $(/usr/sbin/nginx -v 2>&1), $(/usr/bin/stunnel4 -version 2>&1 | grep -m1 '^stunnel')"
# the profilers (py-spy, pyinstrument) in the project's virtualenv
"$(dirname "$0")/venv.sh" bench
echo "install-bench-deps: done"
