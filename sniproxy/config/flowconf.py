"""The ``flows`` section: a server certificate, the cards it asks for and its TLS policy.

Owns: the schema of a flow (``certificate``, ``key``, ``client_auth``, ``authorities``, ``card_types``,
``refuse_test_cards``, ``verify_depth``, ``tls``), the profile rule on TEST chains, and the load-time
check of a server certificate and its key (flows and cutovers). Called by ``load``; must not build TLS
contexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sniproxy.config.authorityconf import AuthorityReader
from sniproxy.config.fields import MISSING, Report, Section
from sniproxy.config.model import CardType, ClientAuth, Flow, Profile, TlsPolicy
from sniproxy.config.pemfiles import Files
from sniproxy.config.tlspolicy import policy_problems, policy_weaknesses

FLOW_KEYS = ("certificate", "key", "client_auth", "authorities", "card_types", "refuse_test_cards",
             "verify_depth", "tls")
TLS_KEYS = ("min_version", "ciphers", "ciphersuites", "groups", "sigalgs", "session_tickets")
TLS_VERSIONS = ("1.2", "1.3")


class FlowReader:
    """Reads ``flows`` against the authority sets already read."""

    def __init__(self, report: Report, files: Files | None, profile: Profile | None,
                 authorities: AuthorityReader) -> None:
        self.r = report
        self.files = files
        self.profile = profile
        self.authorities_read = authorities
        self.names: set[str] = set()     # every name written, even when broken
        self.flows: dict[str, Flow] = {}

    def read(self, top: Section) -> None:
        """Every flow of ``flows`` (the names even of broken ones: a listener may name them)."""
        sec = top.section("flows", required=True)
        if sec is None:
            return
        if not sec.data:
            sec.error(None, "at least one flow is required")
        for name, fsec in sec.named_objects("flow"):
            self.names.add(name)
            if fsec is not None:
                flow = self._flow(name, fsec)
                if flow is not None:
                    self.flows[name] = flow

    def _flow(self, name: str, sec: Section) -> Flow | None:
        before = len(self.r.errors)
        sec.check_keys(FLOW_KEYS)
        cert = sec.string("certificate", required=True)
        key = sec.string("key", required=True)
        client_auth = sec.enum("client_auth", ClientAuth, ClientAuth.REQUIRED)
        authorities = self._flow_authorities(sec, client_auth)
        card_types: list[CardType] = []
        for value, line, path in sec.strings("card_types") or []:
            try:
                card_types.append(CardType(value.upper()))
            except ValueError:
                self.r.error(line, path, f"invalid card type {value!r} "
                                         f"(allowed: {', '.join(c.value for c in CardType)})")
        refuse = sec.boolean("refuse_test_cards", None)
        depth = sec.integer("verify_depth", 4, minimum=1, maximum=10)
        tls = self._tls(sec.section("tls"))
        if self.files is not None and isinstance(cert, str) and isinstance(key, str):
            self.server_files(sec, sec.resolve(cert), sec.resolve(key))
        if len(self.r.errors) > before:
            return None
        return Flow(
            name=name, certificate=sec.resolve(cert), key=sec.resolve(key), client_auth=client_auth,
            authorities=authorities, card_types=tuple(dict.fromkeys(card_types)),
            refuse_test_cards=refuse, verify_depth=depth, tls=tls,
        )

    def _flow_authorities(self, sec: Section, client_auth: Any) -> tuple[str, ...]:
        names: list[str] = []
        usable = 0
        for value, line, path in sec.strings("authorities") or []:
            if value in names:
                self.r.error(line, path, f"authority set {value!r} listed twice")
                continue
            names.append(value)
            if value not in self.authorities_read.names:
                known = ", ".join(sorted(self.authorities_read.names)) or "none"
                self.r.error(line, path, f"unknown authority set {value!r} (defined: {known})")
                continue
            aset = self.authorities_read.authorities.get(value)
            if aset is None:  # broken definition, already reported
                usable += 1
                continue
            if not aset.enabled:
                continue  # defined but switched off: simply not used by this flow
            usable += 1
            if client_auth is ClientAuth.NONE:
                continue
            if self.profile is Profile.PRODUCTION and aset.test:
                self.r.error(line, path, f"authority set {value!r} is a TEST chain: "
                                         "test chains are never trusted in production")
            elif self.profile is Profile.TEST and not aset.test:
                self.r.error(line, path, f"authority set {value!r} is a production chain: "
                                         "profile test trusts only TEST chains")
        if client_auth in (ClientAuth.REQUIRED, ClientAuth.OPTIONAL) and usable == 0:
            sec.error("authorities", f"client_auth {client_auth.value} needs at least one enabled "
                                     "authority set")
        elif client_auth is ClientAuth.NONE and names:
            sec.warn("authorities", "client_auth is none: the authority sets listed are not used")
        return tuple(names)

    def _tls(self, sec: Section | None) -> TlsPolicy:
        default = TlsPolicy()
        if sec is None:
            return default
        sec.check_keys(TLS_KEYS)
        version = sec.raw("min_version")
        if version is MISSING:
            version = default.min_version
        elif isinstance(version, float) and not isinstance(version, bool):
            version = f"{version:.1f}"  # `min_version: 1.2` unquoted is a YAML number
        if version not in TLS_VERSIONS:
            sec.error("min_version", f"invalid value {version!r} (allowed: {', '.join(TLS_VERSIONS)})")
            version = default.min_version
        ciphers = sec.string("ciphers", default.ciphers)
        groups = sec.string("groups", default.groups)
        suites = sec.string("ciphersuites", default.ciphersuites)
        sigalgs = sec.string("sigalgs", default.sigalgs)
        tickets = sec.boolean("session_tickets", default.session_tickets)
        if MISSING in (ciphers, groups, tickets, suites, sigalgs):
            return default
        policy = TlsPolicy(min_version=str(version), ciphers=ciphers, groups=groups, session_tickets=tickets,
                           ciphersuites=suites, sigalgs=sigalgs)
        for key, problem in policy_problems(policy):
            if key in sec.data:
                sec.error(key, problem)
        for key, weakness in policy_weaknesses(policy):
            sec.warn(key, weakness)
        return policy

    def server_files(self, sec: Section, cert_path: Path, key_path: Path) -> None:
        """Check a server certificate chain and its key (a flow's, or a cutover's)."""
        assert self.files is not None
        cline, ckey = sec.line("certificate"), sec.key("certificate")
        certs = self.files.certs(cert_path, cline, ckey)
        if certs:
            self.files.check_server_chain(certs, cert_path, cline, ckey)
        private_key = self.files.private_key(key_path, sec.line("key"), sec.key("key"))
        if certs and private_key is not None:
            self.files.check_key_matches(private_key, certs[0], cert_path, sec.line("key"), sec.key("key"))
