"""Private Dovecot 2.3 and Postfix 3.7 instances for integration tests, started from pure Python.

Each instance lives in its own fresh directory under the system temp dir (config, state, queue, mail, log),
listens only on 127.0.0.1 on ports bind-probed at start (retried on collision), and never touches the
system instances (``/etc/dovecot``, ``/etc/postfix``, ports 25/143/993). Needs root (Dovecot switches to
``nobody`` for mail, Postfix to ``postfix``).

Postfix and a non-default config directory: the root-run ``postfix``, ``postconf`` and ``postsuper``
commands accept ``-c DIR`` (exported to every Postfix program as ``MAIL_CONFIG``) without any entry in
``/etc/postfix/main.cf`` (which the Debian "No configuration" install does not even create). Only the
set-gid ``postdrop``/``postqueue`` (used by ``sendmail``) insist that a non-default directory be listed in
``alternate_config_directories`` of the default main.cf. The tests submit over SMTP only, so the default
configuration is left alone: nothing system-wide is written.

This module must not import the package under test: the peers are the unchanged backend.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_ports

HOST = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 5

# Users of the private Dovecot: (name, password). The digits-only one is named like a card CN.
USERS: tuple[tuple[str, str], ...] = (
    ("alice@example.test", "alicepw"),
    ("bob@example.test", "bobpw"),
    ("810001234567", "cardpw"),
)
MASTER_USERS: tuple[tuple[str, str], ...] = (("proxy-master", "masterpw"),)
MASTER_SEPARATOR = "*"


class PeerStartError(RuntimeError):
    """A peer did not come up; the message carries its log."""


class _PortInUse(PeerStartError):
    """The peer failed because a probed port was taken in the meantime: retry with new ports."""


ROOT_PREFIX = "sniproxy-test-"


def _unique(kind: str) -> str:
    # the owner pid in the name lets reap_stale() recognise the instances of a test run that was killed
    return f"{ROOT_PREFIX}{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _make_root(kind: str) -> Path:
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700 and the unprivileged peer processes
    # (nobody, dovecot, postfix) must traverse the path.
    root = Path(tempfile.mkdtemp(prefix=f"{_unique(kind)}-"))
    root.chmod(0o755)
    return root


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs; a zombie (a killed daemon not yet reaped by init) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _kill_group(pgid: int) -> None:
    """SIGKILL a whole process group (peer masters call setsid, their children share the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def _wait_dead(pid: int, timeout: float = STOP_TIMEOUT) -> bool:
    return _wait_until(lambda: not pid_alive(pid), timeout)


def _greeting(port: int, prefix: bytes, timeout: float = 2.0) -> bool:
    """True when a TCP connection to ``port`` gets a first line starting with ``prefix``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(512).startswith(prefix)
    except OSError:
        return False


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = STOP_TIMEOUT,
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def _proc_mentions(pid: int, needle: str) -> bool:
    """True when process ``pid`` has ``needle`` in its command line or environment (guards PID reuse)."""
    for name in ("cmdline", "environ"):
        try:
            if needle.encode() in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
        except OSError:
            continue
    return False


def reap_stale() -> list[Path]:
    """Kill the peers and remove the directories left by test runs whose process is gone (e.g. a pytest
    killed by a timeout). Returns the directories removed. Instances of live runs are never touched."""
    removed: list[Path] = []
    for root in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*-*-*"):
        parts = root.name[len(ROOT_PREFIX):].split("-")
        if len(parts) < 3 or parts[0] not in ("dovecot", "postfix") or not parts[1].isdigit():
            continue
        owner = int(parts[1])
        if owner == os.getpid() or pid_alive(owner):
            continue
        if parts[0] == "dovecot":
            pid = _read_pid(root / "run" / "master.pid")
            needle = str(root / "dovecot.conf")
        else:
            pid = _read_pid(root / "queue" / "pid" / "master.pid")
            needle = f"MAIL_CONFIG={root / 'conf'}"
        if pid is not None and pid_alive(pid) and _proc_mentions(pid, needle):
            _kill_group(pid)
            _wait_dead(pid)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


# ----------------------------------------------------------------------------------------------- Dovecot

@dataclass
class Dovecot:
    """A running private Dovecot: plain IMAP, IMAP behind ``haproxy = yes`` (PROXY v1/v2 required), LMTP."""

    root: Path
    instance_name: str
    imap_port: int
    imap_haproxy_port: int
    lmtp_port: int
    host: str = HOST
    extra_conf: str = field(default="", repr=False)
    external_users: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def users_path(self) -> Path:
        return self.root / "users"

    @property
    def master_users_path(self) -> Path:
        return self.root / "master-users"

    @property
    def external_users_path(self) -> Path:
        return self.root / "external-users"

    @property
    def mail_root(self) -> Path:
        return self.root / "mail"

    @property
    def users(self) -> dict[str, str]:
        """Current users and their passwords, as read from the passwd-file."""
        return _read_passwd(self.users_path)

    @property
    def master_users(self) -> dict[str, str]:
        return _read_passwd(self.master_users_path)

    @property
    def master_separator(self) -> str:
        """``auth_master_user_separator``: LOGIN ``alice@example.test*proxy-master`` masterpw."""
        return MASTER_SEPARATOR

    def read_log(self) -> str:
        return _read_text(self.log_path)

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> bool:
        """Poll the log until ``needle`` appears (the log process writes asynchronously)."""
        return _wait_until(lambda: needle in self.read_log(), timeout)

    def add_user(self, name: str, password: str) -> None:
        """Add (or replace) a user; Dovecot re-reads the passwd-file when it changes, no reload needed."""
        _write_passwd(self.users_path, {**self.users, name: password})
        _next_second()

    def add_master_user(self, name: str, password: str) -> None:
        """Add (or replace) a master user (LOGIN ``user*name``, or SASL PLAIN with authzid ``user``)."""
        _write_passwd(self.master_users_path, {**self.master_users, name: password})
        _next_second()

    def reload(self) -> None:
        r = _run(["doveadm", "-c", str(self.config_path), "reload"])
        if r.returncode != 0:
            raise RuntimeError(f"doveadm reload failed: {r.stdout}{r.stderr}")

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the master and every child, bounded in time; remove the directory. Idempotent.

        ``graceful=False`` SIGKILLs the whole process group at once (a crash, and no 1 s shutdown)."""
        self.halt(graceful=graceful)
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Start the master again after ``halt()``: same config, ports and mailboxes (a backend restart)."""
        self.halt()
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc
        if not _wait_until(lambda: proc.poll() is not None or (_greeting(self.imap_port, b"* OK")
                                                               and _greeting(self.lmtp_port, b"220")),
                           START_TIMEOUT) or proc.poll() is not None:
            raise PeerStartError(f"dovecot did not restart (exit {proc.poll()}); log:\n{self.read_log()[-3000:]}")

    def halt(self, *, graceful: bool = True) -> None:
        """Stop the master and every child, bounded in time, keeping the directory (``restart()`` resumes)."""
        if self.proc is not None:
            if graceful and self.proc.poll() is None:
                self.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=STOP_TIMEOUT)
            # children (auth, login, imap, lmtp) share the group of the foreground master
            _kill_group(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)
            self.proc = None


def _read_passwd(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _read_text(path).splitlines():
        name, _, rest = line.partition(":")
        if name and rest.startswith("{PLAIN}"):
            out[name] = rest[len("{PLAIN}"):].split(":", 1)[0]
    return out


def _next_second() -> None:
    # The auth process stats a passwd-file at most once per ioloop second (db-passwd-file.c): a lookup in
    # the same second as the previous one would still see the old file.
    time.sleep(1.05 - time.time() % 1.0)


def _write_passwd(path: Path, users: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users.items()))
    tmp.chmod(0o644)  # read by the auth process (user dovecot); throwaway test passwords
    tmp.replace(path)  # atomic: the auth process never sees half a file


def _external_conf(d: Dovecot) -> str:
    """The "EXTERNAL from the proxied CN" set-up (docs/identity.md): the CN of the PROXY v2 SSL TLV becomes
    the user name, and a passdb restricted to EXTERNAL accepts those users without a password (EXTERNAL
    checks the passdb with an empty one). Every other mechanism skips it, so LOGIN still needs the password."""
    if not d.external_users:
        return ""
    return f"""\
auth_mechanisms = plain login external
auth_ssl_username_from_cert = yes
passdb {{
  driver = passwd-file
  args = username_format=%u {d.external_users_path}
  mechanisms = external
}}
"""


def _dovecot_conf(d: Dovecot) -> str:
    r = d.root
    return f"""\
# private test instance; self-contained, does NOT include /etc/dovecot/conf.d
base_dir = {r}/run
state_dir = {r}/state
instance_name = {d.instance_name}
log_path = {d.log_path}
protocols = imap lmtp
listen = {d.host}
ssl = no
# the backend speaks plaintext behind the proxy
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_master_user_separator = {MASTER_SEPARATOR}
verbose_proctitle = yes
# rip (the PROXY-forwarded address when haproxy = yes) shows in every login line
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{{session}}>
haproxy_trusted_networks = 127.0.0.0/8 ::1
haproxy_timeout = 3s
# every test client and the proxy come from 127.0.0.1: a failed login must not slow down the next ones.
# No failure delay, and no anvil penalty (auth disables it when it cannot connect to this listener).
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
mail_location = maildir:{r}/mail/%u
mail_uid = nobody
mail_gid = nogroup
first_valid_uid = 100
# master users: LOGIN "user*proxy-master" or SASL PLAIN authzid=user authcid=proxy-master;
# result_success = continue makes the next passdb check that the target user exists
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d.master_users_path}
  master = yes
  result_success = continue
}}
{_external_conf(d)}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d.users_path}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d.users_path}
  default_fields = uid=nobody gid=nogroup home={r}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {d.host}
    port = {d.imap_port}
  }}
  inet_listener imap_haproxy {{
    address = {d.host}
    port = {d.imap_haproxy_port}
    haproxy = yes
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {d.host}
    port = {d.lmtp_port}
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@example.test
}}
{d.extra_conf}
"""


def _dovecot_once(root: Path, instance_name: str, extra_conf: str, external_users: tuple[str, ...]) -> Dovecot:
    imap, haproxy, lmtp = free_ports(3, HOST)
    d = Dovecot(root=root, instance_name=instance_name, imap_port=imap, imap_haproxy_port=haproxy,
                lmtp_port=lmtp, extra_conf=extra_conf, external_users=external_users)
    d.log_path.unlink(missing_ok=True)
    d.config_path.write_text(_dovecot_conf(d))
    # -F: the master stays our child, in its own session, so stop() can reap the whole group
    d.proc = subprocess.Popen(["dovecot", "-F", "-c", str(d.config_path)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    proc = d.proc

    def ready() -> bool:
        return proc.poll() is not None or (_greeting(imap, b"* OK") and _greeting(lmtp, b"220"))

    ok = _wait_until(ready, START_TIMEOUT)
    if ok and proc.poll() is None:
        return d
    log = d.read_log()
    d.proc = None
    if proc.poll() is None:
        proc.terminate()
    _kill_group(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT)
    why = f"dovecot exited {proc.returncode}" if ok else f"dovecot not ready in {START_TIMEOUT}s"
    err = _PortInUse if "Address already in use" in log else PeerStartError
    raise err(f"{why} (ports {imap}/{haproxy}/{lmtp}); log:\n{log}")


def start_dovecot(extra_conf: str = "", external_users: tuple[str, ...] = ()) -> Dovecot:
    """Start a private Dovecot and wait until IMAP and LMTP greet; the caller must ``stop()`` it.

    ``extra_conf`` is appended to dovecot.conf (later settings override earlier ones). ``external_users``
    (user names, e.g. card CNs) sets the instance up for SASL EXTERNAL from the CN a PROXY v2 header
    carries: ``auth_ssl_username_from_cert = yes`` and a passdb accepting those users for EXTERNAL only."""
    if shutil.which("dovecot") is None:
        raise FileNotFoundError("dovecot")
    reap_stale()
    instance = _unique("dovecot")
    root = _make_root("dovecot")
    try:
        for sub in ("run", "state"):
            (root / sub).mkdir()
        mail = root / "mail"
        mail.mkdir()
        os.chown(mail, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
        _write_passwd(root / "users", dict(USERS))
        _write_passwd(root / "master-users", dict(MASTER_USERS))
        ext = root / "external-users"
        # passwd-file fields: user:password:uid:gid:gecos:home:shell:extra; no password, nopassword=y
        ext.write_text("".join(f"{u}:::::::nopassword\n" for u in external_users))
        ext.chmod(0o644)
        for attempt in range(PORT_ATTEMPTS):
            try:
                return _dovecot_once(root, instance, extra_conf, tuple(external_users))
            except _PortInUse:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------- Postfix

# Debian's services, none chrooted (the chroot would need a copy of /etc files); smtpd only on loopback.
_MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class Postfix:
    """A running private Postfix: one smtpd (the plaintext backend) accepting XCLIENT from 127.0.0.0/8,
    delivering ``@example.test`` over LMTP to the given Dovecot."""

    root: Path
    instance_name: str
    smtp_port: int
    lmtp_port: int
    host: str = HOST
    extra_main_cf: str = field(default="", repr=False)

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def log_path(self) -> Path:
        return self.root / "postfix.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Postfix commands aimed at this instance."""
        return dict(os.environ, MAIL_CONFIG=str(self.config_dir))

    def master_pid(self) -> int | None:
        return _read_pid(self.queue_dir / "pid" / "master.pid")

    def read_log(self) -> str:
        return _read_text(self.log_path)

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> bool:
        return _wait_until(lambda: needle in self.read_log(), timeout)

    def postfix(self, *args: str, timeout: float = STOP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c CONF ARGS`` (e.g. ``reload``, ``flush``)."""
        return _run(["postfix", "-c", str(self.config_dir), *args], env=self.env, timeout=timeout)

    def backdate_config(self) -> None:
        """Set main.cf/master.cf mtimes 10 s in the past: Postfix does not read a config file modified in
        the current second (it polls every 0.3 s until the file looks settled: about 1.5 s per start)."""
        past = time.time() - 10
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))

    def postconf(self, **settings: str) -> None:
        """Change main.cf parameters (``postconf -c CONF -e``) and reload the running instance."""
        r = _run(["postconf", "-c", str(self.config_dir), "-e",
                  *(f"{k}={v}" for k, v in settings.items())], env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"postconf failed: {r.stdout}{r.stderr}")
        self.backdate_config()
        r = self.postfix("reload")
        if r.returncode != 0:
            raise RuntimeError(f"postfix reload failed: {r.stdout}{r.stderr}\n{self.read_log()}")

    def stop(self, *, graceful: bool = True) -> None:
        """``postfix stop`` (bounded), then SIGKILL the master's process group; remove the directory.

        Idempotent. ``graceful=False`` SIGKILLs the group at once."""
        self.halt(graceful=graceful)
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """``postfix start`` again after ``halt()``: same config, port and queue (a backend restart)."""
        self.halt()
        (self.queue_dir / "quick-start").touch()
        r = self.postfix("start", timeout=START_TIMEOUT)
        if r.returncode != 0 or not _wait_until(lambda: _greeting(self.smtp_port, b"220"), START_TIMEOUT):
            raise PeerStartError(f"postfix did not restart: {r.stdout}{r.stderr}\n{self.read_log()[-3000:]}")

    def halt(self, *, graceful: bool = True) -> None:
        """Stop the master and its children, bounded in time, keeping the queue (``restart()`` resumes)."""
        pid = self.master_pid()
        if pid is not None and pid_alive(pid):
            if graceful:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.postfix("stop")
                _wait_dead(pid)
            _kill_group(pid)  # children (smtpd, qmgr, ...) left behind, or a master that did not stop
            _wait_dead(pid)


def _postfix_main_cf(p: Postfix) -> str:
    r = p.root
    return f"""\
compatibility_level = 3.6
config_directory = {p.config_dir}
queue_directory = {p.queue_dir}
data_directory = {r}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = {p.instance_name}
maillog_file = {p.log_path}
maillog_file_prefixes = {r}
myhostname = mx.example.test
mydomain = example.test
myorigin = example.test
mydestination =
inet_interfaces = {p.host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
relayhost =
smtpd_banner = $myhostname ESMTP test
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = example.test
virtual_mailbox_maps = static:ok
virtual_transport = lmtp:inet:{p.host}:{p.lmtp_port}
biff = no
smtputf8_enable = no
{p.extra_main_cf}
"""


# $queue_directory entries of /etc/postfix/postfix-files (Postfix 3.7): name, owner, group, mode
_QUEUE_DIRS: tuple[tuple[str, str, str | None, int], ...] = (
    *((n, "postfix", None, 0o700) for n in ("active", "bounce", "corrupt", "defer", "deferred", "flush",
                                             "hold", "incoming", "private", "saved", "trace")),
    ("maildrop", "postfix", "postdrop", 0o730),
    ("public", "postfix", "postdrop", 0o710),
    ("pid", "root", None, 0o755),
)


def _make_postfix_dirs(root: Path) -> None:
    """Queue and data directories with the owners and modes ``postfix set-permissions`` would give them."""
    queue = root / "queue"
    queue.mkdir(mode=0o755)
    for name, owner, group, mode in _QUEUE_DIRS:
        d = queue / name
        d.mkdir()
        os.chown(d, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid if group else -1)
        d.chmod(mode)
    data = root / "data"
    data.mkdir()
    os.chown(data, pwd.getpwnam("postfix").pw_uid, -1)
    data.chmod(0o700)


def _postfix_once(root: Path, instance_name: str, lmtp_port: int, extra_main_cf: str) -> Postfix:
    (smtp,) = free_ports(1, HOST)
    p = Postfix(root=root, instance_name=instance_name, smtp_port=smtp, lmtp_port=lmtp_port,
                extra_main_cf=extra_main_cf)
    (p.config_dir / "main.cf").write_text(_postfix_main_cf(p))
    (p.config_dir / "master.cf").write_text(_MASTER_CF.format(host=p.host, port=smtp))
    p.backdate_config()
    log_before = len(p.read_log())
    # quick-start (consumed by postfix-script): skip check-fatal/check-warn, the queue is already made
    (p.queue_dir / "quick-start").touch()
    r = p.postfix("start", timeout=START_TIMEOUT)  # master -w: exits non-zero if the master fails to init
    pid = p.master_pid()

    def ready() -> bool:
        return pid is None or not pid_alive(pid) or _greeting(smtp, b"220")

    if r.returncode == 0 and _wait_until(ready, START_TIMEOUT) and pid is not None and pid_alive(pid):
        if _greeting(smtp, b"220"):
            return p
    if pid is not None:
        _kill_group(pid)
        _wait_dead(pid)
    log = p.read_log()[log_before:]
    if "Address already in use" in log:
        raise _PortInUse(f"postfix port {smtp} taken:\n{log}")
    check = p.postfix("check", timeout=START_TIMEOUT)
    raise PeerStartError(f"postfix start exit {r.returncode} (port {smtp}): {r.stdout}{r.stderr}\nlog:\n{log}"
                         f"\npostfix check exit {check.returncode}: {check.stdout}{check.stderr}"
                         f"\n{p.read_log()[log_before + len(log):]}")


def start_postfix(lmtp_port: int, extra_main_cf: str = "") -> Postfix:
    """Start a private Postfix delivering to LMTP on 127.0.0.1:``lmtp_port``; the caller must ``stop()`` it.

    ``extra_main_cf`` is appended to main.cf (a later setting overrides an earlier one).
    About 0.1 s: the queue directories are made here and ``quick-start`` skips ``postfix-script``'s integrity
    checks (``post-install create-missing`` alone takes 2 s), and the config files are backdated (see
    ``Postfix.backdate_config``); on failure ``postfix check`` output is added to the error."""
    if shutil.which("postfix") is None:
        raise FileNotFoundError("postfix")
    reap_stale()
    instance = _unique("postfix")
    root = _make_root("postfix")
    try:
        (root / "conf").mkdir()
        _make_postfix_dirs(root)
        for attempt in range(PORT_ATTEMPTS):
            try:
                return _postfix_once(root, instance, lmtp_port, extra_main_cf)
            except _PortInUse:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
