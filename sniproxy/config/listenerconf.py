"""The ``listeners`` list: addresses, protocol, backend, SNI routes, timeouts, PROXY header sources.

Owns: the schema of a listener (``backend`` and ``http`` are read by ``backendconf`` and ``httpconf``),
the bind overlap check across listeners, the flow references (and which flows are used). Called by
``load``; must not open sockets.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from sniproxy.config.backendconf import read_backend
from sniproxy.config.fields import Report, Section
from sniproxy.config.httpconf import read_http
from sniproxy.config.model import Address, HttpMode, Identity, Listener, Protocol, Route, Timeouts, UnknownSni
from sniproxy.config.names import binds_overlap, check_hostname, check_object_name, check_sni_pattern, parse_address

LISTENER_KEYS = ("name", "bind", "protocol", "hostname", "backend", "flow", "sni", "default_flow",
                 "unknown_sni", "timeouts", "max_line", "max_pretls_commands", "proxy_protocol_from", "http")
TIMEOUT_KEYS = ("pretls", "handshake", "connect", "idle")


class ListenerReader:
    """Reads ``listeners`` against the flow names already read; notes the flows they use."""

    def __init__(self, report: Report, flow_names: set[str]) -> None:
        self.r = report
        self.flow_names = flow_names
        self.used_flows: set[str] = set()
        self.binds: list[tuple[Address, int]] = []   # every listener address, with its line

    def read(self, top: Section) -> list[Listener]:
        """Every valid listener of ``listeners``, in file order."""
        items = top.list_of("listeners", required=True)
        if items is None:
            return []
        if not items:
            top.error("listeners", "at least one listener is required")
        names: dict[str, int] = {}
        binds = self.binds
        out = []
        for value, line, path in items:
            sec = Section.of(self.r, value, path, line, top.base_dir)
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
