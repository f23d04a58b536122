"""The ``backend`` of a listener and its identity options; the login mapping file; secrets.

Owns: the ``backend:`` schema (address, ``identity``, ``proxy_v2``, ``login``), reading the login
mapping file (YAML: IdNat_PS -> mailbox or list of mailboxes, errors with that file's own lines) and
the master password (from a file or an environment variable, never echoed in a message), and the
checks that depend on the listener's protocol. Called by ``load``; must not touch sockets.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from sniproxy.auth.login import TEMPLATE_FIELDS, LoginRule, template_fields
from sniproxy.config.fields import MISSING, Report, Section
from sniproxy.config.model import Backend, Identity, Protocol, ProxyLogin, ProxyV2Options
from sniproxy.config.names import parse_address
from sniproxy.config.yamlloc import LocDict, LocList, parse
from sniproxy.errors import ConfigError

BACKEND_KEYS = ("address", "identity", "proxy_v2", "login")
PROXY_V2_KEYS = ("send_cn", "identity_tlvs", "crc32c")
LOGIN_KEYS = ("mapping", "template", "master_user", "master_password_file", "master_password_env")
MAIL_IMAP = (Protocol.IMAP, Protocol.IMAPS)
MAIL_SMTP = (Protocol.SMTP, Protocol.SMTPS)


def read_backend(report: Report, sec: Section, protocol: Any) -> Backend | None:
    """The listener's ``backend``: ``"HOST:PORT"`` or a mapping with identity options."""
    value = sec.raw("backend", required=True)
    if value is MISSING:
        return None
    if not isinstance(value, LocDict):
        if not isinstance(value, str):
            sec.error("backend", f"expected \"HOST:PORT\" or {{address: ..., identity: ...}}, got {value!r}")
            return None
        try:
            return Backend(parse_address(value.strip(), allow_localhost=True))
        except ValueError as exc:
            sec.error("backend", str(exc))
            return None
    bsec = Section(report, value, sec.key("backend"), sec.base_dir, sec.line("backend"))
    before = len(report.errors)
    bsec.check_keys(BACKEND_KEYS)
    address_text = bsec.string("address", required=True)
    identity = bsec.enum("identity", Identity, Identity.NONE)
    address = None
    if isinstance(address_text, str):
        try:
            address = parse_address(address_text.strip(), allow_localhost=True)
        except ValueError as exc:
            bsec.error("address", str(exc))
    pv2 = ProxyV2Options()
    psec = bsec.section("proxy_v2")
    if psec is not None:
        psec.check_keys(PROXY_V2_KEYS)
        pv2 = ProxyV2Options(send_cn=psec.boolean("send_cn", True), identity_tlvs=psec.boolean("identity_tlvs", False),
                             crc32c=psec.boolean("crc32c", False))
        if identity is not Identity.PROXY_V2:
            psec.warn(None, "proxy_v2 options are ignored unless identity is proxy-v2")
    if isinstance(protocol, Protocol):
        if identity is Identity.XCLIENT and protocol not in MAIL_SMTP:
            bsec.error("identity", f"xclient is SMTP only; listener protocol is {protocol.value}")
    login = None
    lsec = bsec.section("login")
    if lsec is not None:
        login = _login(report, lsec, protocol, identity)
        if (login is not None and identity is Identity.PROXY_V2 and pv2.send_cn
                and isinstance(protocol, Protocol) and protocol in MAIL_IMAP):
            # Dovecot with auth_ssl_username_from_cert = yes puts the proxied CN in place of the name
            # the mechanism gave, the master user's included (seen with 2.3.19: the CN is then looked
            # up as a master user and the login fails). One backend is set up for one of the two ways.
            lsec.warn(None, "login by master user with a CN in the PROXY header: a Dovecot with "
                            "auth_ssl_username_from_cert = yes replaces the master user name by the CN "
                            "and the login fails; set proxy_v2.send_cn: false or drop login")
    if len(report.errors) > before or address is None:
        return None
    return Backend(address, identity, pv2, login)


def _login(report: Report, sec: Section, protocol: Any, identity: Any) -> ProxyLogin | None:
    before = len(report.errors)
    sec.check_keys(LOGIN_KEYS)
    mapping_path = sec.string("mapping", None)
    template = sec.string("template", None)
    rule: LoginRule | None = None
    if isinstance(mapping_path, str) and isinstance(template, str):
        sec.error(None, "use either mapping or template, not both")
    elif isinstance(mapping_path, str):
        path = sec.resolve(mapping_path)
        mapping = read_mapping(report, path, sec.line("mapping"), sec.key("mapping"))
        if mapping is not None:
            rule = LoginRule(mapping=mapping, source=str(path))
    elif isinstance(template, str):
        unknown = [f for f in template_fields(template) if f not in TEMPLATE_FIELDS]
        if unknown or not template_fields(template):
            sec.error("template", f"fields {unknown or '(none)'} not allowed; use {', '.join(TEMPLATE_FIELDS)} "
                                  "as {idnat_ps}@example.test")
        else:
            rule = LoginRule(template=template, source="template")
    else:
        sec.error(None, "a login needs mapping (a file) or template")
    master_user = sec.string("master_user", None)
    password = _secret(report, sec)
    if isinstance(protocol, Protocol):
        if protocol in MAIL_IMAP and (not isinstance(master_user, str) or password is None):
            sec.error("master_user", "IMAP logins go through a master user: set master_user and "
                                     "master_password_file or master_password_env")
        if protocol in MAIL_SMTP and identity is not Identity.XCLIENT:
            sec.error(None, "SMTP logins are carried by XCLIENT LOGIN: set identity: xclient")
        if protocol not in (*MAIL_IMAP, *MAIL_SMTP):
            sec.error(None, f"login is for IMAP and SMTP listeners, not {protocol.value}")
    if len(report.errors) > before or rule is None:
        return None
    return ProxyLogin(rule, master_user if isinstance(master_user, str) else None, password)


def _secret(report: Report, sec: Section) -> str | None:
    file_name = sec.string("master_password_file", None)
    env_name = sec.string("master_password_env", None)
    if isinstance(file_name, str) and isinstance(env_name, str):
        sec.error(None, "use either master_password_file or master_password_env, not both")
        return None
    if isinstance(env_name, str):
        value = os.environ.get(env_name)
        if not value:
            sec.error("master_password_env", f"environment variable {env_name} is not set or empty")
            return None
        return value
    if isinstance(file_name, str):
        path = sec.resolve(file_name)
        try:
            mode = path.stat().st_mode
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            sec.error("master_password_file", f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
            return None
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            sec.report.exposed_secret(sec.line("master_password_file"), sec.key("master_password_file"), path,
                                      stat.S_IMODE(mode))
        if not value:
            sec.error("master_password_file", f"{path} is empty")
            return None
        return value
    return None


def read_mapping(report: Report, path: Path, line: int, key: str) -> dict[str, tuple[str, ...]] | None:
    """The login mapping file: ``IdNat_PS: mailbox`` or ``IdNat_PS: [mailbox, ...]`` (first = default)."""
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        report.error(line, key, f"cannot read login mapping {path}: {getattr(exc, 'strerror', None) or exc}")
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        report.errors.append(ConfigError(f"YAML syntax: {exc}", file=str(path),
                                         line=mark.line + 1 if mark else None))
        return None
    if data is None:
        return {}
    if not isinstance(data, LocDict):
        report.errors.append(ConfigError("expected a mapping IdNat_PS -> mailbox(es)", file=str(path), line=1))
        return None
    out: dict[str, tuple[str, ...]] = {}
    for ident, value in data.items():
        where = data.line_of(ident)
        items = list(value) if isinstance(value, LocList) else [value]
        if not isinstance(ident, (str, int)) or isinstance(ident, bool) or not items or not all(
                isinstance(v, str) and v.strip() and " " not in v for v in items):
            report.errors.append(ConfigError("expected IdNat_PS: mailbox or IdNat_PS: [mailbox, ...]",
                                             file=str(path), line=where, key=str(ident)))
            continue
        out[str(ident)] = tuple(v.strip() for v in items)
    for ident, dup_line in data.duplicates:
        report.errors.append(ConfigError("IdNat_PS written twice", file=str(path), line=dup_line, key=str(ident)))
    return out
