"""Load one YAML config file into a validated ``Config``, reporting every problem at once.

Owns: the YAML schema (keys, types, defaults; documented in ``docs/config.md``), the mapping into
``sniproxy.config.model``, cross-references (flows, authority sets, binds, SNI names) and the
load-time checks of the PEM files named (see ``pemfiles``). Relative paths resolve against the
config file's folder; there is no environment-variable or ``~`` expansion.
Must not: build TLS contexts, open sockets, or exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

import yaml

from sniproxy.config.backendconf import read_backend
from sniproxy.config.cutoverconf import read_cutovers
from sniproxy.config.fields import MISSING, Report, Section
from sniproxy.config.httpconf import read_http
from sniproxy.config.model import (
    Address,
    AuthoritySet,
    CardType,
    ClientAuth,
    Config,
    CrlSettings,
    Flow,
    HttpMode,
    Identity,
    Limits,
    Listener,
    Profile,
    Protocol,
    Route,
    Timeouts,
    TlsPolicy,
    UnknownSni,
)
from sniproxy.config.names import (
    binds_overlap,
    check_hostname,
    check_object_name,
    check_sni_pattern,
    parse_address,
)
from sniproxy.config.pemfiles import Files, distribution_points, looks_test
from sniproxy.config.tlspolicy import policy_problems, policy_weaknesses
from sniproxy.config.yamlloc import LocDict, parse
from sniproxy.errors import ConfigError, ConfigErrors

TOP_KEYS = ("profile", "workers", "log", "state_dir", "crl", "limits", "secret_files", "authorities", "flows",
            "listeners", "drain", "cutover", "reload")
LIMIT_KEYS = ("max_connections", "max_per_ip", "max_pending", "max_pending_per_ip")
CRL_TOP_KEYS = ("cache_dir", "refresh_max", "retry_min", "timeout", "max_bytes")
CRL_SET_KEYS = ("sources", "from_certificates", "check", "stale")
CRL_CHECKS = ("chain", "leaf")
LOG_KEYS = ("level", "format")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
AUTHORITY_KEYS = ("roots", "intermediates", "test", "enabled", "crl")
CRL_SCHEMES = ("http", "https", "ldap", "ldaps")
FLOW_KEYS = ("certificate", "key", "client_auth", "authorities", "card_types", "refuse_test_cards",
             "verify_depth", "tls")
TLS_KEYS = ("min_version", "ciphers", "ciphersuites", "groups", "sigalgs", "session_tickets")
TLS_VERSIONS = ("1.2", "1.3")
LISTENER_KEYS = ("name", "bind", "protocol", "hostname", "backend", "flow", "sni", "default_flow",
                 "unknown_sni", "timeouts", "max_line", "max_pretls_commands", "proxy_protocol_from", "http")
TIMEOUT_KEYS = ("pretls", "handshake", "connect", "idle")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated configuration and the warnings found while loading it."""

    config: Config
    warnings: tuple[str, ...]


def read_text(path: Path) -> str:
    """The config file's text (what a reload validates once and hands to every worker)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors([ConfigError(f"cannot read config file: {exc}", file=str(path))]) from exc


def load(path: Path, *, check_files: bool = True, text: str | None = None) -> Loaded:
    """Read, validate and map the YAML config at ``path``.

    Raises ``ConfigErrors`` holding every ``ConfigError`` found (file, line, key path). With
    ``check_files=False`` the PEM files named by the config are not opened (structure only).
    ``text``: the file's content already read (a reload compiles in every worker exactly the text
    the supervisor validated, even if the file changes meanwhile); relative paths still resolve
    against ``path``'s folder.
    """
    path = Path(path)
    report = Report(path)
    if text is None:
        text = read_text(path)
    try:
        data = parse(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigErrors([ConfigError(f"YAML syntax: {message}", file=str(path),
                                        line=mark.line + 1 if mark else None)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigErrors([ConfigError(f"YAML syntax: {exc}", file=str(path))]) from exc
    if data is None:
        raise ConfigErrors([ConfigError("the config file is empty", file=str(path))])
    base_dir = path.resolve().parent
    top = Section.of(report, data, "", 1, base_dir)
    config = None
    if top is not None:
        config = _Builder(report, top, path.resolve(), Files(report) if check_files else None).build()
    if report.errors or config is None:
        raise ConfigErrors(report.errors)
    return Loaded(config, tuple(report.warnings))


class _Builder:
    """Reads the top-level sections in dependency order: authorities, flows, listeners."""

    def __init__(self, report: Report, top: Section, source: Path, files: Files | None) -> None:
        self.r = report
        self.top = top
        self.source = source
        self.files = files
        self.profile: Profile | None = None
        self.authority_names: set[str] = set()     # every name written, even when broken
        self.authorities: dict[str, AuthoritySet] = {}
        self.flow_names: set[str] = set()
        self.flows: dict[str, Flow] = {}
        self.used_flows: set[str] = set()

    def build(self) -> Config | None:
        """The whole ``Config``, or ``None`` when an error was reported."""
        top = self.top
        top.check_keys(TOP_KEYS)
        profile = top.enum("profile", Profile, required=True)
        self.profile = profile if isinstance(profile, Profile) else None
        workers = self._workers()
        # before any key file is read
        self.r.strict_secrets = top.choice("secret_files", ("strict", "warn"), "strict") == "strict"
        level, fmt = self._log()
        state_dir = top.string("state_dir", None)
        state_path = top.resolve(state_dir) if isinstance(state_dir, str) else None
        crl = self._crl_settings(state_path)
        limits = self._limits()
        drain = self._drain()
        watch = self._reload()
        self._authorities()
        with_crl = sorted(n for n, a in self.authorities.items() if a.enabled and a.revocation_required)
        if with_crl and crl.cache_dir is None:
            top.error("state_dir", f"authority sets {', '.join(with_crl)} name CRL sources: set `state_dir` "
                                   "or `crl.cache_dir` (the CRL cache that survives a restart)")
        self._flows()
        listeners = self._listeners()
        cutovers = read_cutovers(self.r, top, self.flows, listeners, self.files, self._server_files)
        for name in sorted(self.flow_names - self.used_flows):
            top.report.warn(self._flows_section_line(name), f"flows.{name}", "flow used by no listener")
        if self.r.errors or self.profile is None:
            return None
        return Config(
            source=self.source, profile=self.profile, authorities=self.authorities, flows=self.flows,
            listeners=tuple(listeners), workers=workers, log_level=level, log_format=fmt,
            state_dir=state_path, crl=crl, limits=limits, drain_timeout=drain, cutover=cutovers,
            reload_watch=watch,
        )

    def _flows_section_line(self, name: str) -> int:
        flows = self.top.data.get("flows")
        return flows.line_of(name) if isinstance(flows, LocDict) else self.top.line("flows")

    # -- global --------------------------------------------------------------------------------
    def _workers(self) -> int | None:
        value = self.top.raw("workers")
        if value is MISSING:
            return 1
        if value == "auto":
            return None
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1024:
            return value
        self.top.error("workers", f"expected an integer 1-1024 or \"auto\", got {value!r}")
        return 1

    def _log(self) -> tuple[str, str]:
        sec = self.top.section("log")
        if sec is None:
            return "info", "auto"
        sec.check_keys(LOG_KEYS)
        return sec.choice("level", LOG_LEVELS, "info"), sec.choice("format", LOG_FORMATS, "auto")

    def _limits(self) -> Limits:
        sec = self.top.section("limits")
        d = Limits()
        if sec is None:
            return d
        sec.check_keys(LIMIT_KEYS)
        values = {k: sec.integer(k, getattr(d, k), minimum=1) for k in LIMIT_KEYS}
        values = {k: v if isinstance(v, int) else getattr(d, k) for k, v in values.items()}
        limits = Limits(**values)
        if limits.max_per_ip > limits.max_connections:
            sec.warn("max_per_ip", "larger than max_connections: one address can take every slot")
        if limits.max_pending_per_ip > limits.max_pending:
            sec.warn("max_pending_per_ip", "larger than max_pending: one address can take every handshake slot")
        return limits

    def _drain(self) -> float:
        """``drain.timeout``: how long SIGTERM lets connections finish before the goodbyes."""
        sec = self.top.section("drain")
        if sec is None:
            return 25.0
        sec.check_keys(("timeout",))
        return sec.duration("timeout", 25.0)

    def _reload(self) -> float | None:
        """``reload.watch`` (reload when the files change, polled every ``reload.interval``)."""
        sec = self.top.section("reload")
        if sec is None:
            return None
        sec.check_keys(("watch", "interval"))
        watch = sec.boolean("watch", False)
        interval = sec.duration("interval", 5.0)
        return interval if watch is True else None

    def _crl_settings(self, state_dir: Path | None) -> CrlSettings:
        sec = self.top.section("crl")
        default_dir = state_dir / "crl" if state_dir is not None else None
        if sec is None:
            return CrlSettings(cache_dir=default_dir)
        sec.check_keys(CRL_TOP_KEYS)
        cache_dir = sec.string("cache_dir", None)
        d = CrlSettings()
        max_bytes = sec.integer("max_bytes", d.max_bytes, minimum=1024)
        return CrlSettings(
            cache_dir=sec.resolve(cache_dir) if isinstance(cache_dir, str) else default_dir,
            refresh_max=sec.duration("refresh_max", d.refresh_max),
            retry_min=sec.duration("retry_min", d.retry_min),
            timeout=sec.duration("timeout", d.timeout),
            max_bytes=max_bytes if isinstance(max_bytes, int) else d.max_bytes,
        )

    # -- authorities ---------------------------------------------------------------------------
    def _authorities(self) -> None:
        sec = self.top.section("authorities")
        if sec is None:
            return
        for name, value, line in sec.items():
            self.authority_names.add(name)
            try:
                check_object_name(name, "authority set")
            except ValueError as exc:
                sec.error(name, str(exc))
            asec = Section.of(self.r, value, sec.key(name), line, sec.base_dir)
            if asec is not None:
                aset = self._authority(name, asec)
                if aset is not None:
                    self.authorities[name] = aset

    def _authority(self, name: str, sec: Section) -> AuthoritySet | None:
        before = len(self.r.errors)
        sec.check_keys(AUTHORITY_KEYS)
        roots = sec.strings("roots", required=True) or []
        if "roots" in sec.data and not roots and len(self.r.errors) == before:
            sec.error("roots", "at least one root certificate file is required")
        inters = sec.strings("intermediates") or []
        declared_test = sec.boolean("test")
        enabled = sec.boolean("enabled", True)
        crls, from_certs, check, grace = self._crl(sec)
        inferred: bool | None = None
        if self.files is not None and enabled is True:  # a disabled set is not used: files not needed
            subjects = []
            for value, line, key in roots + inters:
                subjects += self.files.ca_certs(sec.resolve(value), line, key) or []
            inferred = any(looks_test(c) for c in subjects) if subjects else None
            if from_certs:
                found = [u for u in distribution_points(subjects) if u not in crls]
                if not found:
                    sec.warn("crl", "from_certificates: the CA certificates name no CRL distribution point")
                crls += found
        if declared_test is MISSING:
            test = bool(inferred)
        else:
            test = declared_test
            if inferred is not None and inferred != test:
                sec.warn("test", f"declared test: {str(test).lower()} but the CA names "
                                 f"{'say' if inferred else 'do not say'} TEST")
        if len(self.r.errors) > before or enabled is MISSING:
            return None
        return AuthoritySet(
            name=name, roots=tuple(sec.resolve(v) for v, _, _ in roots),
            intermediates=tuple(sec.resolve(v) for v, _, _ in inters), test=test, enabled=enabled,
            crl_sources=tuple(crls), crl_check=check, crl_grace=grace, crl_from_certificates=from_certs,
        )

    def _crl(self, sec: Section) -> tuple[list[str], bool, str, float | None]:
        """The ``crl`` key of an authority set: a list of sources, or a mapping with options."""
        raw = sec.raw("crl")
        if raw is MISSING or raw is None or not isinstance(raw, LocDict):
            items = sec.strings("crl") or []
            return [c for v, ln, k in items if (c := self._crl_source(sec, v, ln, k)) is not None], False, \
                "chain", None
        csec = Section.of(self.r, raw, sec.key("crl"), sec.line("crl"), sec.base_dir)
        assert csec is not None
        csec.check_keys(CRL_SET_KEYS)
        items = csec.strings("sources") or []
        sources = [c for v, ln, k in items if (c := self._crl_source(csec, v, ln, k)) is not None]
        from_certs = csec.boolean("from_certificates", False)
        check = csec.choice("check", CRL_CHECKS, "chain")
        grace: float | None = None
        stale = csec.raw("stale")
        if isinstance(stale, LocDict):
            ssec = Section.of(self.r, stale, csec.key("stale"), csec.line("stale"), csec.base_dir)
            assert ssec is not None
            ssec.check_keys(("grace",))
            if "grace" not in ssec.data:
                ssec.error(None, "expected `fail-closed` or `{grace: DURATION}`")
            else:
                grace = ssec.duration("grace", 0.0)
        elif stale is not MISSING and stale != "fail-closed":
            csec.error("stale", f"expected `fail-closed` or `{{grace: DURATION}}`, got {stale!r}")
        if not sources and from_certs is not True:
            csec.error("sources", "no CRL source: list `sources` or set `from_certificates: true`")
        return sources, from_certs is True, check, grace

    def _crl_source(self, sec: Section, value: str, line: int, key: str) -> str | None:
        scheme, sep, _ = value.partition("://")
        if sep:
            if scheme.lower() not in CRL_SCHEMES:
                self.r.error(line, key, f"unsupported CRL source scheme {scheme!r} "
                                        f"(allowed: {', '.join(CRL_SCHEMES)}, or a file path)")
                return None
            return value
        return str(sec.resolve(value))

    # -- flows ---------------------------------------------------------------------------------
    def _flows(self) -> None:
        sec = self.top.section("flows", required=True)
        if sec is None:
            return
        if not sec.data:
            sec.error(None, "at least one flow is required")
        for name, value, line in sec.items():
            self.flow_names.add(name)
            try:
                check_object_name(name, "flow")
            except ValueError as exc:
                sec.error(name, str(exc))
            fsec = Section.of(self.r, value, sec.key(name), line, sec.base_dir)
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
            self._server_files(sec, sec.resolve(cert), sec.resolve(key))
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
            if value not in self.authority_names:
                known = ", ".join(sorted(self.authority_names)) or "none"
                self.r.error(line, path, f"unknown authority set {value!r} (defined: {known})")
                continue
            aset = self.authorities.get(value)
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

    def _server_files(self, sec: Section, cert_path: Path, key_path: Path) -> None:
        assert self.files is not None
        cline, ckey = sec.line("certificate"), sec.key("certificate")
        certs = self.files.certs(cert_path, cline, ckey)
        if certs:
            self.files.check_server_chain(certs, cert_path, cline, ckey)
        private_key = self.files.private_key(key_path, sec.line("key"), sec.key("key"))
        if certs and private_key is not None:
            self.files.check_key_matches(private_key, certs[0], cert_path, sec.line("key"), sec.key("key"))

    # -- listeners -----------------------------------------------------------------------------
    def _listeners(self) -> list[Listener]:
        items = self.top.list_of("listeners", required=True)
        if items is None:
            return []
        if not items:
            self.top.error("listeners", "at least one listener is required")
        names: dict[str, int] = {}
        binds: list[tuple[Address, int]] = []
        out = []
        for value, line, path in items:
            sec = Section.of(self.r, value, path, line, self.top.base_dir)
            if sec is None:
                continue
            listener = self._listener(sec, names, binds)
            if listener is not None:
                out.append(listener)
        return out

    def _listener(self, sec: Section, names: dict[str, int], binds: list[tuple[Address, int]]
                  ) -> Listener | None:
        before = len(self.r.errors)
        sec.check_keys(LISTENER_KEYS)
        name = sec.string("name", required=True)
        if isinstance(name, str):
            try:
                check_object_name(name, "listener")
            except ValueError as exc:
                sec.error("name", str(exc))
            if name in names:
                sec.error("name", f"listener name {name!r} already used (line {names[name]})")
            else:
                names[name] = sec.line("name")
        addresses, bind_lines = self._binds(sec, binds)
        protocol = sec.enum("protocol", Protocol, required=True)
        hostname = sec.string("hostname", "sniproxy")
        if isinstance(hostname, str) and "hostname" in sec.data:
            try:
                hostname = check_hostname(hostname)
            except ValueError as exc:
                sec.error("hostname", str(exc))
        backend = read_backend(self.r, sec, protocol)
        routes, default_flow, unknown_sni = self._routing(sec)
        timeouts = self._timeouts(sec.section("timeouts"))
        max_line = sec.integer("max_line", 8192, minimum=512, maximum=1 << 20)
        max_cmds = sec.integer("max_pretls_commands", 32, minimum=1, maximum=1000)
        proxy_from = self._proxy_from(sec)
        http = read_http(self.r, sec, protocol)
        if http is not None and http.mode is HttpMode.HTTP and backend is not None \
                and backend.identity is not Identity.NONE:
            sec.error("backend", f"identity {backend.identity.value} is for mode tcp: in mode http the "
                                 "identity travels in request headers (http.headers)")
        if len(self.r.errors) > before or backend is None:
            return None
        return Listener(
            name=name, binds=tuple(addresses), protocol=protocol, backend=backend, routes=routes,
            default_flow=default_flow, unknown_sni=unknown_sni, hostname=hostname, timeouts=timeouts,
            max_line=max_line, max_pretls_commands=max_cmds, proxy_protocol_from=proxy_from, http=http,
            bind_lines=tuple(bind_lines),
        )

    def _proxy_from(self, sec: Section) -> tuple[IPv4Network | IPv6Network, ...]:
        """``proxy_protocol_from``: CIDRs of the L4 load balancers that put a PROXY header first."""
        out: list[IPv4Network | IPv6Network] = []
        for value, line, path in sec.strings("proxy_protocol_from") or []:
            try:
                # strict: "10.0.0.1/8" is a typo for a host or a network, not something to guess
                out.append(ip_network(value.strip(), strict=True))
            except ValueError as exc:
                self.r.error(line, path, f"expected a CIDR such as 10.0.0.0/8 or 2001:db8::/32: {exc}")
        return tuple(out)

    def _binds(self, sec: Section, seen: list[tuple[Address, int]]) -> tuple[list[Address], list[int]]:
        items = sec.list_of("bind", required=True, scalar_ok=True)
        if items is None:
            return [], []
        if not items:
            sec.error("bind", "at least one address is required")
        out = []
        lines: list[int] = []
        for value, line, path in items:
            if not isinstance(value, str):
                self.r.error(line, path, f"expected \"IPv4:port\" or \"[IPv6]:port\", got {value!r}")
                continue
            try:
                addr = parse_address(value.strip())
            except ValueError as exc:
                self.r.error(line, path, str(exc))
                continue
            clash = next((other_line for other, other_line in seen if binds_overlap(addr, other)), None)
            if clash is not None:
                self.r.error(line, path, f"address {addr} is already bound by a listener (line {clash})")
            seen.append((addr, line))
            out.append(addr)
            lines.append(line)
        return out, lines

    def _flow_ref(self, sec: Section, value: Any, line: int, path: str) -> str | None:
        if not isinstance(value, str):
            self.r.error(line, path, f"expected a flow name, got {value!r}")
            return None
        if value not in self.flow_names:
            known = ", ".join(sorted(self.flow_names)) or "none"
            self.r.error(line, path, f"unknown flow {value!r} (defined: {known})")
            return None
        self.used_flows.add(value)
        return value

    def _routing(self, sec: Section) -> tuple[tuple[Route, ...], str | None, Any]:
        data = sec.data
        if "flow" in data and "sni" in data:
            sec.error("sni", "use either flow (one flow for the listener) or sni (routes), not both")
            return (), None, UnknownSni.DEFAULT
        if "flow" in data:
            for extra in ("default_flow", "unknown_sni"):
                if extra in data:
                    sec.error(extra, f"{extra} only applies with sni routes; this listener has one flow")
            flow = self._flow_ref(sec, data["flow"], sec.line("flow"), sec.key("flow"))
            return (), flow, UnknownSni.DEFAULT
        if "sni" not in data:
            sec.error(None, "one of flow or sni is required")
            return (), None, UnknownSni.DEFAULT
        routes: dict[str, list[str]] = {}
        snisec = sec.section("sni")
        if snisec is not None:
            if not snisec.data:
                sec.error("sni", "at least one SNI route is required")
            first_seen: dict[str, int] = {}
            for name, value, line in snisec.items():
                try:
                    pattern = check_sni_pattern(name)
                except ValueError as exc:
                    snisec.error(name, str(exc))
                    continue
                if pattern in first_seen:
                    snisec.error(name, f"SNI name {pattern!r} already routed (line {first_seen[pattern]})")
                    continue
                first_seen[pattern] = line
                flow = self._flow_ref(snisec, value, line, snisec.key(name))
                if flow is not None:
                    routes.setdefault(flow, []).append(pattern)
        default_flow = None
        if "default_flow" in data:
            default_flow = self._flow_ref(sec, data["default_flow"], sec.line("default_flow"),
                                          sec.key("default_flow"))
        unknown_sni = sec.enum("unknown_sni", UnknownSni, UnknownSni.DEFAULT)
        if unknown_sni is UnknownSni.DEFAULT and "default_flow" not in data:
            self.r.error(sec.line("sni"), sec.key("default_flow"),
                         "with sni routes and unknown_sni: default, default_flow is required "
                         "(the flow for clients without SNI or with an unknown name)")
        return tuple(Route(f, tuple(n)) for f, n in routes.items()), default_flow, unknown_sni

    def _timeouts(self, sec: Section | None) -> Timeouts:
        default = Timeouts()
        if sec is None:
            return default
        sec.check_keys(TIMEOUT_KEYS)
        # Same spellings as the CRL durations: 1800, "30m" and "1800s" are one idle timeout.
        return Timeouts(**{k: sec.duration(k, getattr(default, k)) for k in TIMEOUT_KEYS})


__all__ = ["Loaded", "load", "read_text"]
