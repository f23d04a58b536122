#!/usr/bin/env bash
# Install what the test suite needs on Debian 12 (run as root): the real peers of the integration tests
# (Dovecot IMAP+LMTP, Postfix, stunnel, HAProxy, OpenLDAP slapd, swaks, curl, openssl), Chromium (the report page
# test) and the Python test extras.
# Idempotent: apt is skipped when every binary is already present, so re-runs are fast (FORCE_APT=1 runs it
# anyway; SKIP_PIP=1 skips the pip step).
# The system Postfix is installed with "No configuration" and stays stopped; the system Dovecot may run on
# 143/993: the tests start private instances on free loopback ports and never touch either.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and python3-dev: scripts/test.sh compiles the HTTP half with mypyc (decision 0016), as the image does
PACKAGES=(dovecot-imapd dovecot-lmtpd postfix stunnel4 haproxy swaks curl openssl ca-certificates slapd ldap-utils
          chromium gcc python3-dev)
# one binary per package, to decide whether apt is needed at all
BINARIES=(dovecot doveadm /usr/lib/dovecot/imap /usr/lib/dovecot/lmtp postfix postconf stunnel4 haproxy swaks
          curl openssl /usr/sbin/slapd slapadd ldapsearch chromium gcc)

missing=()
for b in "${BINARIES[@]}"; do
    if [[ $b == /* ]]; then [[ -x $b ]] || missing+=("$b"); else command -v "$b" >/dev/null || missing+=("$b"); fi
done
# the headers of the interpreter the virtualenv is made from (scripts/venv.sh: python3)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || missing+=(python3-dev)
[[ -d /etc/ssl/certs ]] && [[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)

[[ ${FORCE_APT:-0} == 1 ]] && missing+=(FORCE_APT)

if ((${#missing[@]})); then
    echo "install-test-deps: missing ${missing[*]}: installing ${PACKAGES[*]}"
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "install-test-deps: need root or sudo for apt-get" >&2; exit 1; }
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | "${SUDO[@]}" debconf-set-selections
    # slapd: no system directory; the tests start private instances from their own slapd.conf
    echo "slapd slapd/no_configuration boolean true" | "${SUDO[@]}" debconf-set-selections
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
else
    echo "install-test-deps: peers already installed, skipping apt"
fi

if [[ ${SKIP_PIP:-0} != 1 ]]; then
    # the project's virtualenv (.venv): Debian 12 refuses a system-wide pip install (PEP 668)
    ./scripts/venv.sh test
    # sslyze in its own virtualenv: it pins an older cryptography (see the script)
    ./scripts/install-sslyze.sh
    # helm, kubernetes-validate, hadolint, buildah/podman/debootstrap: the packaging tests (tests/deploy)
    ./scripts/install-deploy-tools.sh
fi
echo "install-test-deps: done"
