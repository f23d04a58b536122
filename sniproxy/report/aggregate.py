"""Streaming aggregate of ``connection`` events: the figures of the migration report, in bounded memory.

Memory grows with the number of distinct holders, addresses, SNI names and days, never with the number
of events; each of those tables stops growing at ``max_keys`` (``max_names`` for SNI names and other
labels) and the report then says which figure is a lower bound (``truncated``).

A *blocking client* is what would break at the cutover: a connection on the legacy flow (``2bis``) or
a ClientHello without SNI (which lands on the default flow). It is keyed by the card holder's IdNat_PS
when a card was verified, else by the client address, so one holder behind a shared NAT counts once and
an address is only listed on its own when no card was seen on that connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sniproxy.report.classify import PKI_NONE, address_of, pki_of

DAY = 86400
NO_FLOW = "(none)"


def add_counts(table: dict[str, int], more: dict[str, int]) -> None:
    """Add the counts of ``more`` into ``table``."""
    for key, n in more.items():
        table[key] = table.get(key, 0) + int(n)


def _bump(table: dict[str, int], key: str, limit: int, overflow: str = "(other)") -> bool:
    """Count ``key``; past ``limit`` distinct keys new ones go to ``overflow``. False when that happened."""
    if key in table or len(table) < limit:
        table[key] = table.get(key, 0) + 1
        return True
    table[overflow] = table.get(overflow, 0) + 1
    return False


@dataclass(slots=True)
class Group:
    """Figures of one (listener, flow) pair."""

    connections: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    holders: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    no_sni_addresses: set[str] = field(default_factory=set)
    no_sni: int = 0
    sni: dict[str, int] = field(default_factory=dict)
    pki: dict[str, int] = field(default_factory=dict)
    card_types: dict[str, int] = field(default_factory=dict)
    tls_versions: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    first: float = 0.0
    last: float = 0.0


@dataclass(slots=True)
class Day:
    """Figures of one UTC day, for the charts and the verdict's trend."""

    flows: dict[str, int] = field(default_factory=dict)
    hellos: int = 0          # connections that sent a ClientHello (the no-SNI share's denominator)
    no_sni: int = 0
    pki: dict[str, int] = field(default_factory=dict)
    blocking: set[str] = field(default_factory=set)
    sealed: int = 0          # distinct blocking clients of a finished day whose set was freed

    @property
    def blocking_count(self) -> int:
        """Distinct blocking clients this day."""
        return self.sealed + len(self.blocking)


# Blocker record, a list for compactness: [last_ts, first_ts, connections, why, last_sni, listener, flow,
# address, name, pki, card_type, software, last time seen on a new flow with SNI after a blocking connection]
B_LAST, B_FIRST, B_COUNT, B_WHY, B_SNI, B_LISTENER, B_FLOW, B_ADDR, B_NAME, B_PKI, B_CARD, B_SW, B_MOVED = range(13)
WHY_NO_SNI, WHY_LEGACY = "no SNI", "legacy flow"


class _Seen(NamedTuple):
    """What ``Aggregate.add`` read of one event, handed to the per-day count."""

    listener: str
    flow_v: Any            # the event's flow, None when the connection ended before one was chosen
    flow: str              # flow_v, or NO_FLOW
    addr: str
    sni: Any
    missing_sni: bool
    identity: dict[str, Any] | None
    pki: str
    card: str
    holder: str | None


class Aggregate:
    """Feed events with ``add(ts, event)``; read figures with ``summary()``; ``merge`` another (live page)."""

    def __init__(self, legacy_flows: tuple[str, ...] = ("2bis",), max_keys: int = 1_000_000,
                 max_names: int = 1000, seal_days: bool = False) -> None:
        """``seal_days``: the input comes in time order (``sniproxy report``), so a day's set of blocking
        clients can be dropped for its count when the next day starts. Not for aggregates merged later."""
        self.seal_days = seal_days
        self.legacy_flows = frozenset(legacy_flows)
        self.max_keys = max_keys
        self.max_names = max_names
        self.groups: dict[tuple[str, str], Group] = {}
        self.days: dict[int, Day] = {}
        self.holder_pki: dict[str, str] = {}
        self.holder_card: dict[str, str] = {}
        self.blockers: dict[str, list[Any]] = {}
        self.software_seen = 0
        self.truncated: set[str] = set()
        self.first = 0.0
        self.last = 0.0
        self.events = 0
        self._pki_memo: dict[tuple[Any, Any, Any], str] = {}
        self._last_day: tuple[int, Day] = (-1, Day())

    # ------------------------------------------------------------------ feeding
    def _keep(self, table: set[str] | dict[str, Any], key: str, what: str) -> bool:
        if key in table or len(table) < self.max_keys:
            return True
        self.truncated.add(what)
        return False

    def add(self, ts: float, ev: dict[str, Any]) -> None:
        """Count one ``connection`` event that happened at ``ts`` (seconds since the epoch).

        The hot path of a million-event report: dict and set tests are inline, the PKI is memoized by
        issuer, and the helpers of ``classify`` are spelled out here (their unit tests pin the rules).
        """
        self.events += 1
        if not self.first or ts < self.first:
            self.first = ts
        if ts > self.last:
            self.last = ts
        get = ev.get
        listener = get("listener") or "?"
        flow_v = get("flow")
        flow = flow_v or NO_FLOW
        g = self.groups.get((listener, flow))
        if g is None:
            g = self.groups[(listener, flow)] = Group(first=ts, last=ts)
        g.connections += 1
        if ts < g.first:
            g.first = ts
        elif ts > g.last:
            g.last = ts
        outcome = get("outcome") or "?"
        table = g.outcomes
        table[outcome] = table.get(outcome, 0) + 1
        if outcome == "refused":
            _bump(g.refusals, get("reason") or "?", self.max_names)
        addr = address_of(get("peer"))
        if addr not in g.addresses and self._keep(g.addresses, addr, "addresses"):
            g.addresses.add(addr)
        identity = get("identity")
        if identity is not None and not isinstance(identity, dict):
            identity = None
        pki, card, holder = self._count_card(g, identity, get("authority"), get("tls_version"))
        sni = get("sni")
        missing_sni = not sni and (flow_v is not None or get("reason") == "unknown_sni")
        if sni:
            if sni in g.sni:
                g.sni[sni] += 1
            elif not _bump(g.sni, sni, self.max_names):
                self.truncated.add("sni")
        elif missing_sni:
            g.no_sni += 1
            if addr not in g.no_sni_addresses and self._keep(g.no_sni_addresses, addr, "addresses"):
                g.no_sni_addresses.add(addr)
        day_no = int(ts // DAY)
        if self._last_day[0] == day_no:
            day = self._last_day[1]
        else:
            new_day = self._new_day(day_no)
            if new_day is None:
                return
            day = new_day
        self._count_day(day, ts, ev, _Seen(listener, flow_v, flow, addr, sni, missing_sni, identity, pki, card,
                                           holder))

    def _count_card(self, g: Group, identity: dict[str, Any] | None, authority: Any, tls: Any
                    ) -> tuple[str, str, str | None]:
        """Count the card (PKI, card type, holder) and TLS version of one event in ``g``: (pki, card, holder)."""
        if identity:
            memo_key: tuple[Any, Any, Any] = (identity.get("issuer"), identity.get("layout"), identity.get("authority"))
            card = identity.get("card_type_name") or "unknown"
            holder = identity.get("idnat_ps") or None
        else:
            memo_key = (None, None, authority)
            card, holder = "-", None
        pki = self._pki_memo.get(memo_key)
        if pki is None:
            pki = pki_of(identity, authority)
            if len(self._pki_memo) < self.max_names:
                self._pki_memo[memo_key] = pki
        table = g.pki
        if pki in table:
            table[pki] += 1
        else:
            _bump(table, pki, self.max_names)
        table = g.card_types
        if card in table:
            table[card] += 1
        else:
            _bump(table, card, self.max_names)
        if tls:
            table = g.tls_versions
            if tls in table:
                table[tls] += 1
            else:
                _bump(table, tls, self.max_names)
        if holder is not None:
            if holder not in g.holders and self._keep(g.holders, holder, "holders"):
                g.holders.add(holder)
            if holder not in self.holder_pki:
                if self._keep(self.holder_pki, holder, "holders"):
                    self.holder_pki[holder] = pki
                    self.holder_card[holder] = card
            elif self.holder_pki[holder] != pki:   # a renewed card: the report shows the newest
                self.holder_pki[holder] = pki
                self.holder_card[holder] = card
        return pki, card, holder

    def _count_day(self, day: Day, ts: float, ev: dict[str, Any], seen: _Seen) -> None:
        """Count one event in its day: hellos, flows, PKIs, and the clients the 2bis switch-off would block."""
        flow_v, flow, missing_sni, pki, holder, addr = (seen.flow_v, seen.flow, seen.missing_sni, seen.pki,
                                                         seen.holder, seen.addr)
        if flow_v or missing_sni:
            day.hellos += 1
            if flow_v:
                _bump(day.flows, flow, self.max_names)
            if missing_sni:
                day.no_sni += 1
        if pki != PKI_NONE:
            table = day.pki
            table[pki] = table.get(pki, 0) + 1
        if missing_sni or flow in self.legacy_flows:
            key = holder if holder is not None else "@" + addr
            if key not in day.blocking and self._keep(day.blocking, key, "blocking"):
                day.blocking.add(key)
            self._block(key, ts, ev, WHY_NO_SNI if missing_sni else WHY_LEGACY, seen.listener, flow, addr,
                        seen.identity, pki, seen.card)
        elif flow_v and seen.sni:
            # A blocking client now seen on a new flow with SNI has probably moved: remember when, so the
            # report can tell "still on 2bis" from "moved since". Events come in time order, so only
            # clients already listed need it.
            rec = self.blockers.get(holder if holder is not None else "@" + addr)
            if rec is not None and (rec[B_MOVED] is None or ts > rec[B_MOVED]):
                rec[B_MOVED] = ts

    def _new_day(self, day_no: int) -> Day | None:
        """The ``Day`` of ``day_no`` (made if new); seals the days before it when ``seal_days``."""
        day = self.days.get(day_no)
        if day is None:
            if len(self.days) >= self.max_names * 4:   # ~11 years of days: beyond that, a broken clock
                self.truncated.add("days")
                return None
            day = self.days[day_no] = Day()
        prev_no, prev = self._last_day
        if self.seal_days and prev is not None and prev_no < day_no:
            # Input merged by time: the previous day is over, keep its distinct count and free its set
            # (60 days of blocking clients were a third of a million-event report's memory).
            prev.sealed += len(prev.blocking)
            prev.blocking = set()
        self._last_day = (day_no, day)
        return day

    def _block(self, key: str, ts: float, ev: dict[str, Any], why: str, listener: str, flow: str, addr: str,
               identity: dict[str, Any] | None, pki: str, card: str) -> None:
        rec = self.blockers.get(key)
        if rec is None:
            if not self._keep(self.blockers, key, "blockers"):
                return
            rec = self.blockers[key] = [ts, ts, 0, why, None, listener, flow, addr, None, pki, card, None, None]
        rec[B_COUNT] += 1
        if ts < rec[B_FIRST]:
            rec[B_FIRST] = ts
        if ts >= rec[B_LAST]:
            rec[B_LAST] = ts
            rec[B_WHY], rec[B_LISTENER], rec[B_FLOW], rec[B_ADDR] = why, listener, flow, addr
            rec[B_SNI] = ev.get("sni")
            rec[B_PKI], rec[B_CARD] = pki, card
            if identity:
                given, surname = identity.get("given_name"), identity.get("surname")
                rec[B_NAME] = f"{given} {surname}" if given and surname else (given or surname or None)
            software = ev.get("client_software") or ev.get("user_agent")
            if software:
                self.software_seen += 1
                rec[B_SW] = str(software)[:200]

    # ------------------------------------------------------------------ state (live dumps) and merge
    def to_state(self) -> dict[str, Any]:
        """A JSON-able copy of everything, for the live page's per-worker dumps."""
        return {
            "version": 1,
            "legacy_flows": sorted(self.legacy_flows),
            "events": self.events, "first": self.first, "last": self.last,
            "software_seen": self.software_seen, "truncated": sorted(self.truncated),
            "groups": [[ls, fl, {
                "connections": g.connections, "outcomes": g.outcomes, "holders": sorted(g.holders),
                "addresses": sorted(g.addresses), "no_sni_addresses": sorted(g.no_sni_addresses),
                "no_sni": g.no_sni, "sni": g.sni, "pki": g.pki, "card_types": g.card_types,
                "tls_versions": g.tls_versions, "refusals": g.refusals, "first": g.first, "last": g.last}]
                for (ls, fl), g in self.groups.items()],
            "days": {str(d): {"flows": v.flows, "hellos": v.hellos, "no_sni": v.no_sni, "pki": v.pki,
                              "blocking": sorted(v.blocking), "sealed": v.sealed} for d, v in self.days.items()},
            "holder_pki": self.holder_pki, "holder_card": self.holder_card,
            "blockers": self.blockers,
        }

    def merge_state(self, st: dict[str, Any]) -> None:
        """Add a dump made by ``to_state`` (another worker's aggregate) into this one."""
        self.events += int(st["events"])
        if st["first"] and (not self.first or st["first"] < self.first):
            self.first = float(st["first"])
        self.last = max(self.last, float(st["last"]))
        self.software_seen += int(st.get("software_seen", 0))
        self.truncated.update(st.get("truncated", []))
        for ls, fl, gs in st["groups"]:
            g = self.groups.get((ls, fl))
            if g is None:
                g = self.groups[(ls, fl)] = Group(first=float(gs["first"]), last=float(gs["last"]))
            g.connections += int(gs["connections"])
            g.no_sni += int(gs["no_sni"])
            g.first, g.last = min(g.first, float(gs["first"])), max(g.last, float(gs["last"]))
            for name in ("holders", "addresses", "no_sni_addresses"):
                getattr(g, name).update(gs[name])
            for name in ("outcomes", "sni", "pki", "card_types", "tls_versions", "refusals"):
                add_counts(getattr(g, name), gs[name])
        for d, ds in st["days"].items():
            day = self.days.setdefault(int(d), Day())
            day.hellos += int(ds["hellos"])
            day.no_sni += int(ds["no_sni"])
            add_counts(day.flows, ds["flows"])
            add_counts(day.pki, ds["pki"])
            day.blocking.update(ds["blocking"])
            day.sealed += int(ds.get("sealed", 0))
        self.holder_pki.update(st["holder_pki"])
        self.holder_card.update(st["holder_card"])
        for key, rec in st["blockers"].items():
            mine = self.blockers.get(key)
            if mine is None:
                self.blockers[key] = list(rec)
                continue
            count = mine[B_COUNT] + rec[B_COUNT]
            first = min(mine[B_FIRST], rec[B_FIRST])
            moved = max((m for m in (mine[B_MOVED], rec[B_MOVED]) if m is not None), default=None)
            if rec[B_LAST] > mine[B_LAST]:
                mine[:] = list(rec)
            mine[B_COUNT], mine[B_FIRST], mine[B_MOVED] = count, first, moved
