"""The soak's report: verdicts computed from what the clients saw, what the proxy logged and what the
backends hold, written as Markdown with SVG plots (and ``verdicts.json`` for the test).

Also runnable alone on a finished run's data: ``python -m soak.report DATA_DIR OUT.md``.
"""

from __future__ import annotations

import bisect
import json
import statistics
import sys
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from soak import png, svg
from soak.faults import CRL_REASONS, EXPLAINS
from soak.stack import BASE_NUMBER, read_events

#: Steady-state bounds (stated in the report): RSS growth over the last 2/3 of the load, and after the load
#: the open descriptors and asyncio tasks of every worker back to their pre-load values.
RSS_GROWTH_PCT, RSS_GROWTH_FLOOR_KIB = 5.0, 4096
#: A refusal is explained by a fault if it happened from shortly before the window to shortly after (the
#: backend restart, then the connect timeout of connections begun in the window).
MARGIN_BEFORE, MARGIN_AFTER = 2.0, 8.0
#: An event's timestamp and an attempt's start come from the same clock, the attempt's a moment earlier.
CLOCK_SLACK = 0.05
#: An accept-queue reset is logged when a worker's accept() meets the reset connection: at once unless the
#: worker is busy. Farther apart than this, an event and an attempt are not the same connection.
ACCEPT_RESET_BOUND = 1.0
#: A message found twice in the mailbox is Postfix's at-least-once delivery, not the proxy, when its 250 came
#: at most this long before a Postfix stop began (or while the stop ran). Postfix removes a queue file only
#: after LMTP delivery to Dovecot ended; a stop between Dovecot's commit and that removal makes Postfix deliver
#: the message again after the restart. Here the queue manager is woken at once and LMTP runs over loopback
#: (tens of ms), and a delivery deferred once is retried within ``maximal_backoff_time = 6s`` (soak/stack.py):
#: 10 s covers both with a margin, and is under 2 % of the time between two Postfix stops (~590 s), so a
#: duplicate made by the proxy is still a failure unless it lands next to a stop.
REDELIVERY_WINDOW = 10.0
#: From this run length on, the steady-state verdict is part of PASS/FAIL.
STEADY_JUDGED_FROM_MINUTES = 30.0
GOOD_DRIVERS = ("imap", "idle", "smtp", "https", "held", "readback")


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


def _ts(ev: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(ev["timestamp"]).replace("Z", "+00:00")).timestamp()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def _fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:.1f}{unit}"


def pair_accept_resets(events: list[dict[str, Any]], attempts: list[dict[str, Any]],
                       bound: float = ACCEPT_RESET_BOUND) -> None:
    """Pair accept-queue reset events (no peer address) with reset-at-once attempts by time.

    Pairing by count pairs them in the wrong order as soon as one attempt found its event elsewhere; here the
    closest pairs (same listener, at most ``bound`` s apart) are taken first, each event and attempt once.
    Paired items get ``attempt`` / ``event`` keys; the others are left as they are."""
    pairs = sorted((abs(e["_t"] - a["t0"]), i, j) for i, e in enumerate(events) for j, a in enumerate(attempts)
                   if e.get("listener") == a.get("listener") and abs(e["_t"] - a["t0"]) <= bound)
    for _, i, j in pairs:
        e, a = events[i], attempts[j]
        if "attempt" not in e and "event" not in a:
            e["attempt"], a["event"] = a, e


def accepted_at(a: dict[str, Any]) -> float | None:
    """When a submission's 250 after DATA came (wall clock), or None when it never did.

    Runs from before ``accepted_at`` was recorded give it as the start plus the handshake and the transaction
    (both timed from the start, on the monotonic clock)."""
    if not a.get("submitted"):
        return None
    if a.get("accepted_at") is not None:
        return float(a["accepted_at"])
    if a.get("hs_ms") is not None and a.get("req_ms") is not None:
        return float(a["t0"]) + (float(a["hs_ms"]) + float(a["req_ms"])) / 1000
    return float(a["t1"]) if a.get("t1") is not None else None


class Analysis:
    """Everything the report says, computed once from the run's files."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.meta: dict[str, Any] = json.loads((data / "meta.json").read_text()) if (data / "meta.json").exists() \
            else {}
        self.attempts = _load_jsonl(data / "attempts.jsonl")
        self.faults = _load_jsonl(data / "faults.jsonl")
        self.samples = _load_jsonl(data / "samples.jsonl")
        self.events = read_events(data / "proxy.log")
        for ev in self.events:
            try:
                ev["_t"] = _ts(ev)
            except (KeyError, ValueError):
                ev["_t"] = 0.0
        self.conns = [e for e in self.events if e.get("event") == "connection"]
        mb = data / "mailbox.json"
        self.mailbox: dict[str, int] = json.loads(mb.read_text()) if mb.exists() else {}
        self.backend_requests = _load_jsonl(data / "http-requests.jsonl")
        self.log_text = (data / "proxy.log").read_text(errors="replace") if (data / "proxy.log").exists() else ""
        self.t0 = float(self.meta.get("load_start", self.meta.get("started", 0.0)))
        self.violations: dict[str, list[str]] = defaultdict(list)
        self._match()

    # ------------------------------------------------------------------ matching
    def _match(self) -> None:
        """Pair each client attempt with the proxy's connection event from the same address and port."""
        by_peer: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for ev in self.conns:
            by_peer[str(ev.get("peer"))].append(ev)
        self.unknown_peer = by_peer.pop("unknown", [])
        attempts_by_peer: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.no_port: list[dict[str, Any]] = []
        for a in self.attempts:
            if a.get("kind") == "driver_crash":
                continue
            if a.get("sport"):
                attempts_by_peer[f"{a['src']}:{a['sport']}"].append(a)
            else:
                self.no_port.append(a)
        self.missing: list[dict[str, Any]] = []
        self.extra: list[dict[str, Any]] = []
        for peer, atts in attempts_by_peer.items():
            self._pair_peer(atts, sorted(by_peer.pop(peer, []), key=lambda e: e["_t"]))
        self.foreign = [e for evs in by_peer.values() for e in evs]
        # A reset while still in the accept queue leaves the proxy no peer address: such events pair with
        # reset-at-once attempts that found no event of their own, by time (see ``pair_accept_resets``).
        resets = [a for a in self.missing if a.get("kind") == "reset" and a.get("phase") == "at_once"]
        pair_accept_resets(self.unknown_peer, resets)
        self.missing = [a for a in self.missing if "event" not in a]
        self.unknown_unpaired = [e for e in self.unknown_peer if "attempt" not in e]

    def _pair_peer(self, atts: list[dict[str, Any]], evs: list[dict[str, Any]]) -> None:
        """Pair one address:port's attempts and events by time, not by rank.

        Over an hour the clients reuse source ports, and an attempt reset in the accept queue has no event at
        its address: pairing by rank then hands the next connection's event to it. An event is logged when its
        connection ends, so it belongs to the latest attempt begun before it (connections from one address and
        port do not overlap)."""
        atts.sort(key=lambda a: a["t0"])
        starts = [a["t0"] for a in atts]
        for ev in evs:
            i = bisect.bisect_right(starts, ev["_t"] + CLOCK_SLACK) - 1
            if i < 0 or "event" in atts[i]:
                self.extra.append(ev)
            else:
                atts[i]["event"] = ev
                ev["attempt"] = atts[i]
        self.missing += [a for a in atts if "event" not in a]

    # ------------------------------------------------------------------ faults
    def fault_windows(self, name: str) -> list[tuple[float, float]]:
        return [(f["start"], f.get("end", f["start"])) for f in self.faults if f["name"] == name]

    def in_fault(self, names: tuple[str, ...] | list[str], t: float) -> str | None:
        for f in self.faults:
            if f["name"] in names and f["start"] - MARGIN_BEFORE <= t <= f.get("end", f["start"]) + MARGIN_AFTER:
                return str(f["name"])
        return None

    def delta_in_force(self, role: str = "worker") -> dict[int, float]:
        """Per worker pid, when the delta CRL revoking the card was installed (``role="fetcher"``: when the
        pod's one CRL fetcher, the supervisor, published it; its ``crl_updated`` says ``role: fetcher``)."""
        out: dict[int, float] = {}
        for ev in self.events:
            if (ev.get("event") == "crl_updated" and ev.get("delta_of") == BASE_NUMBER
                    and ev.get("crl_number") == BASE_NUMBER + 2
                    and (ev.get("role") == "fetcher") == (role == "fetcher")):
                out.setdefault(int(ev.get("pid", 0)), ev["_t"])
        return out

    # ------------------------------------------------------------------ refusals
    def explain(self, ev: dict[str, Any]) -> str | None:
        """Why a refused connection was refused, or None when nothing injected explains it."""
        a = ev.get("attempt")
        reason = ev.get("reason")
        t = ev["_t"]
        if a is None:
            return None
        drv, kind = a.get("driver"), a.get("kind")
        if kind == "bad_card":
            return f"bad card {a.get('card')}" if reason == a.get("expect") else None
        if kind == "garbage_hello":
            return "garbage ClientHello" if reason in ("bad_client_hello", "handshake_failed", "unknown_sni") \
                else None
        if kind == "slow":
            return "slow client" if reason == "timeout" else None
        if drv == "stale" and reason == "crl_stale":
            stale_at = float(self.meta.get("stale_at", 0))
            return "stale CRL, fail closed" if a["t0"] >= stale_at - 1 else None
        if drv == "probe" or (drv == "held" and reason == "revoked"):
            if reason == "revoked":
                in_force = self.delta_in_force().get(int(ev.get("pid", 0)))
                return "revoked by the delta CRL" if in_force is not None and a["t0"] >= in_force - 1 else None
        for fault, reasons in EXPLAINS.items():
            if reason in reasons and self.in_fault((fault,), t):
                return fault
        if reason == "timeout" and ev.get("phase") == "backend_connect" and \
                self.in_fault(("dovecot_down", "postfix_down"), t):
            return "backend stopping: no greeting in time"   # connected while it shut down (40-min soak)
        if kind == "reset" and reason in ("backend_unavailable", "backend_refused") and \
                self.in_fault(("dovecot_down", "postfix_down"), t):
            return "backend down"
        return None

    def refusals(self) -> tuple[Counter[str], Counter[str], list[dict[str, Any]]]:
        by_reason: Counter[str] = Counter()
        by_explanation: Counter[str] = Counter()
        unexplained: list[dict[str, Any]] = []
        for ev in self.conns:
            if ev.get("outcome") != "refused":
                continue
            by_reason[str(ev.get("reason"))] += 1
            why = self.explain(ev)
            if why is None:
                unexplained.append(ev)
            else:
                by_explanation[f"{ev.get('reason')} ← {why}"] += 1
        # A good card refused at TLS level must show as a refused event; one that did not is unexplained too.
        return by_reason, by_explanation, unexplained

    # ------------------------------------------------------------------ verdicts
    def verdicts(self) -> dict[str, Any]:
        v: dict[str, Any] = {}
        by_reason, by_expl, unexplained = self.refusals()
        v["refused_by_reason"] = dict(by_reason)
        v["refusals_explained"] = dict(by_expl)
        v["unexplained_refusals"] = [self._ev_line(e) for e in unexplained]
        for a in self.attempts:
            if a.get("driver") in GOOD_DRIVERS and a.get("outcome") == "served":
                v["unexplained_refusals"].append(f"client saw an odd outcome: {a}")
            if a.get("kind") == "bad_card" and a.get("outcome") == "served":
                self.violations["revocation"].append(f"bad card {a.get('card')} was served: {a.get('detail')}")
        internal = [e for e in self.events if e.get("reason") == "internal_error" or e.get("event") == "internal_error"]
        v["internal_errors"] = [self._ev_line(e) for e in internal]
        tb = [i for i, line in enumerate(self.log_text.splitlines()) if "Traceback" in line or '"exception"' in line]
        v["tracebacks"] = len(tb)
        v["error_events"] = dict(Counter(str(e.get("event")) for e in self.events if e.get("level") == "error"))
        v["lost"] = self.lost()
        v["revocation"] = self.revocation()
        v["steady"] = self.steady()
        v["reloads"] = self.reloads()
        v["crash"] = [f"{a['driver']}: {a.get('detail')}" for a in self.attempts if a.get("kind") == "driver_crash"]
        v["aborted"] = self.meta.get("aborted")
        v["ok_unexplained"] = not v["unexplained_refusals"]
        v["ok_no_errors"] = not v["internal_errors"] and v["tracebacks"] == 0
        v["ok_nothing_lost"] = not any(v["lost"]["violations"].values())
        v["ok_revocation"] = not v["revocation"]["violations"]
        v["ok_steady"] = not v["steady"]["violations"]
        v["ok_reloads"] = not v["reloads"]["violations"]
        # Steady state is judged over the last 2/3 of the load: a short run's (CI's 3 minutes) is warm-up and
        # only shown, an hour's counts (the report said PASS over a steady-state NO before this).
        v["steady_judged"] = float(self.meta.get("minutes", 0)) >= STEADY_JUDGED_FROM_MINUTES
        v["pass"] = bool(v["ok_unexplained"] and v["ok_no_errors"] and v["ok_nothing_lost"] and v["ok_revocation"]
                         and v["ok_reloads"] and not v["aborted"] and not v["crash"]
                         and (v["ok_steady"] or not v["steady_judged"]))
        return v

    def reloads(self) -> dict[str, Any]:
        """Valid reloads took (a new generation), invalid ones were refused with file:line errors."""
        rows = [dict(f.get("detail") or {}, at=f["start"] - self.t0, error=f.get("error")) for f in self.faults
                if f["name"] in ("reload_valid", "reload_invalid")]
        viol = []
        for r in rows:
            want = "reload" if r.get("valid") else "reload_failed"
            if r.get("result") != want:
                viol.append(f"+{r['at']:.0f}s valid={r.get('valid')}: {r.get('result')} {r.get('errors') or ''} "
                            f"{r.get('error') or ''}")
            elif not r.get("valid") and not any(":" in str(e) and "max_connections" in str(e)
                                                for e in r.get("errors") or []):
                viol.append(f"+{r['at']:.0f}s invalid reload refused without a file:line: key error: {r}")
        return {"enabled": bool(self.meta.get("reloads")), "done": rows, "violations": viol}

    def _ev_line(self, e: dict[str, Any]) -> str:
        a = e.get("attempt") or {}
        return (f"{e.get('timestamp')} pid={e.get('pid')} {e.get('listener')} peer={e.get('peer')} "
                f"reason={e.get('reason')} phase={e.get('phase')} detail={e.get('detail', '')!s:.120} "
                f"driver={a.get('driver')} kind={a.get('kind')} card={a.get('card')}")

    def lost(self) -> dict[str, Any]:
        out: dict[str, Any] = {"violations": {}}
        viol: dict[str, list[str]] = {}
        # mail
        smtp = [a for a in self.attempts if a.get("kind") == "smtp"]
        submitted = [a for a in smtp if a.get("submitted")]
        uncertain = [a for a in smtp if a.get("sending") and not a.get("submitted")]
        aborted = [a for a in smtp if a.get("outcome") == "reset_in_data"]
        ours = {a["msg_id"] for a in smtp}
        viol["mail_missing"] = [a["msg_id"] for a in submitted if self.mailbox.get(a["msg_id"], 0) == 0]
        redelivered, viol["mail_duplicated"] = self.duplicates(smtp)
        out["mail_redelivered_across_stop"] = redelivered
        viol["mail_aborted_but_delivered"] = [a["msg_id"] for a in aborted if self.mailbox.get(a["msg_id"])]
        viol["mail_unknown"] = [m for m in self.mailbox if m not in ours]
        out["mail"] = {"attempts": len(smtp), "submitted": len(submitted), "found": sum(
            1 for a in submitted if self.mailbox.get(a["msg_id"])), "uncertain": len(uncertain),
            "uncertain_found": sum(1 for a in uncertain if self.mailbox.get(a["msg_id"])),
            "reset_in_data": len(aborted), "mailbox_messages": sum(self.mailbox.values()),
            "redelivered_across_stop": len(redelivered),
            "not_submitted": dict(Counter(a.get("outcome") for a in smtp if not a.get("submitted")))}
        # HTTPS
        reqs = [q for a in self.attempts if a.get("kind") == "https" for q in a.get("requests", [])]
        answered = [q for q in reqs if "status" in q]
        viol["https_unanswered"] = [f"{q['id']} at {q['t0']:.0f}" for q in reqs if "status" not in q]
        viol["https_wrong_body"] = [q["id"] for q in answered if q.get("match") is False]
        seen: Counter[str] = Counter()
        for r in self.backend_requests:
            for k, val in r.get("headers", []):
                if k.lower() == "x-soak-id":
                    seen[val] += 1
        viol["https_forwarded_twice"] = [k for k, n in seen.items() if n > 1]
        out["https"] = {"requests": len(reqs), "answered": len(answered),
                        "by_status": dict(Counter(str(q["status"]) for q in answered)),
                        "connections": sum(1 for a in self.attempts if a.get("kind") == "https")}
        # IMAP sessions (accepted cards): completed, or a BYE
        imap = [a for a in self.attempts if a.get("kind") == "imap" and a.get("outcome") != "refused"]
        viol["imap_no_goodbye"] = [f"{a['driver']} {a['src']}:{a.get('sport')} {a.get('detail')}"
                                   for a in imap if a.get("outcome") not in ("completed", "bye")]
        out["imap"] = {"sessions": len(imap), "by_outcome": dict(Counter(a.get("outcome") for a in imap))}
        # connection events
        viol["connection_without_event"] = [f"{a['driver']}/{a.get('kind')} {a['src']}:{a['sport']} "
                                            f"{a.get('outcome')}" for a in self.missing]
        viol["event_without_connection"] = [self._ev_line(e) for e in self.extra + self.unknown_unpaired]
        out["events"] = {"connection_events": len(self.conns), "attempts": len(self.attempts),
                         "attempts_without_port": len(self.no_port), "foreign_events": len(self.foreign),
                         "accept_queue_resets": len(self.unknown_peer)}
        out["violations"] = {k: v for k, v in viol.items() if v}
        return out

    def duplicates(self, smtp: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """Messages found more than once: (redelivered by Postfix across a stop, explained; the others).

        Explained: found exactly twice, and its 250 came from ``REDELIVERY_WINDOW`` s before a ``postfix_down``
        fault began to the end of that fault (no 250 can come while Postfix is down, so after the start only
        while the stop runs). Anything else (three copies, a message never acknowledged, far from a stop)
        stays a loss/duplication failure."""
        stops = [(f["start"], f.get("end", f["start"])) for f in self.faults if f["name"] == "postfix_down"]
        by_id = {a["msg_id"]: a for a in smtp if a.get("submitted")}
        explained: list[str] = []
        others: list[str] = []
        for mid, n in self.mailbox.items():
            if n <= 1:
                continue
            a = by_id.get(mid)
            at = accepted_at(a) if a is not None else None
            stop = next((st for st, end in stops if at is not None and st - REDELIVERY_WINDOW <= at <= end), None)
            if n == 2 and at is not None and stop is not None:
                explained.append(f"{mid}: 250 at +{at - self.t0:.3f}s, Postfix stop began at +{stop - self.t0:.3f}s "
                                 f"({(at - stop) * 1000:+.0f} ms): redelivered by Postfix across a stop (explained)")
            else:
                others.append(mid)
        return explained, others

    def revocation(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        viol: list[str] = list(self.violations["revocation"])
        pids = sorted({int(e["pid"]) for e in self.events if e.get("event") == "ready" and "pid" in e})
        out["workers"] = pids
        inter = self.meta.get("urls", {}).get("fort_inter")
        updates = [e for e in self.events if e.get("event") == "crl_updated"]
        inter_updates = [e for e in updates if e.get("url") == inter]
        bad = [e for e in inter_updates if e.get("crl_number") != BASE_NUMBER]
        viol += [f"a bad CRL replaced the good one: {self._crl_line(e)}" for e in bad]
        out["fort_inter_installs"] = [self._crl_line(e) for e in inter_updates]
        # per fault: which crl_rejected each worker logged during the window
        rows = []
        for f in self.faults:
            if f["name"] not in CRL_REASONS:
                continue
            url = inter if f["name"].startswith("crl_") else None
            start, end = f["start"], f.get("end", f["start"])
            rej = [e for e in self.events if e.get("event") == "crl_rejected" and start - 1 <= e["_t"] <= end + 6
                   and (url is None or e.get("url") == url) and (url is not None or str(e.get("url", "")).
                                                                  startswith("ldap"))]
            per_pid: dict[int, Counter[str]] = defaultdict(Counter)
            for e in rej:
                per_pid[int(e.get("pid", 0))][str(e.get("reason"))] += 1
            expected = CRL_REASONS[f["name"]]
            seen_expected = {p for p, c in per_pid.items() if any(r in expected for r in c)}
            rows.append({"fault": f["name"], "start": start - self.t0, "end": end - self.t0,
                         "per_worker": {str(p): dict(c) for p, c in per_pid.items()},
                         "workers_with_expected": len(seen_expected), "bytes_sent": f.get("bytes_sent")})
            if not seen_expected:
                viol.append(f"{f['name']} at +{start - self.t0:.0f}s: no worker logged {expected} "
                            f"(saw {dict(Counter(str(e.get('reason')) for e in rej))})")
        out["crl_faults"] = rows
        # the card revoked by the base CRL: refused every time
        rv = [a for a in self.attempts if a.get("kind") == "bad_card" and a.get("card") == "revoked"]
        out["revoked_card_attempts"] = len(rv)
        out["revoked_card_refused_revoked"] = sum(1 for a in rv if (a.get("event") or {}).get("reason") == "revoked")
        # the card revoked by the delta mid-run
        in_force = self.delta_in_force()
        out["delta_published"] = next((f["start"] - self.t0 for f in self.faults if f["name"] == "delta_revocation"),
                                      None)
        out["delta_in_force"] = {str(p): t - self.t0 for p, t in in_force.items()}
        out["delta_fetched"] = {str(p): t - self.t0 for p, t in self.delta_in_force("fetcher").items()}
        missing = [p for p in pids if p not in in_force]
        if out["delta_published"] is not None and missing:
            viol.append(f"workers {missing} never installed the delta CRL")
        probes = [a for a in self.attempts if a.get("driver") == "probe"]
        after_ok: list[str] = []
        before_refused: list[str] = []
        first_refused: dict[int, float] = {}
        for a in probes:
            ev = a.get("event") or {}
            pid = int(ev.get("pid", 0))
            t = in_force.get(pid)
            accepted = ev.get("reason") in ("ok", "client_closed", "client_quit") and a.get("outcome") == "accepted"
            if t is not None and a["t0"] > t and accepted:
                after_ok.append(f"+{a['t0'] - self.t0:.1f}s pid {pid}")
            if ev.get("reason") == "revoked":
                first_refused.setdefault(pid, a["t0"] - self.t0)
                if t is None or a["t0"] < t - 1:
                    before_refused.append(f"+{a['t0'] - self.t0:.1f}s pid {pid}")
        viol += [f"revoked card accepted after the delta was in force: {x}" for x in after_ok]
        viol += [f"card refused as revoked before the delta was in force: {x}" for x in before_refused]
        out["probe_attempts"] = len(probes)
        out["probe_first_refused"] = {str(p): t for p, t in first_refused.items()}
        out["probe_by_outcome"] = dict(Counter(a.get("outcome") for a in probes))
        # the CA whose CRL source went away: cached CRL until its nextUpdate, then fail closed
        stale_at = self.meta.get("stale_at")
        stale = [a for a in self.attempts if a.get("driver") == "stale"]
        gone = next((f["start"] for f in self.faults if f["name"] == "crl_source_gone"), None)
        if stale_at is not None and gone is not None:
            late_ok = [a for a in stale if a["t0"] > stale_at + 1 and a.get("outcome") == "accepted"]
            early_no = [a for a in stale if a["t0"] < stale_at - 1 and (a.get("event") or {}).get("reason") != "ok"
                        and a.get("outcome") != "accepted"]
            viol += [f"card of a stale CRL accepted at +{a['t0'] - self.t0:.1f}s" for a in late_ok]
            viol += [f"card of a cached, current CRL refused at +{a['t0'] - self.t0:.1f}s: {a.get('detail')}"
                     for a in early_no]
            not_ready = {int(e.get("pid", 0)) for e in self.events if e.get("event") == "crl_not_ready"
                         and e["_t"] >= stale_at - 1}
            out["stale"] = {"source_gone": gone - self.t0, "next_update": stale_at - self.t0,
                            "accepted_while_cached": sum(1 for a in stale if gone <= a["t0"] < stale_at - 1
                                                         and a.get("outcome") == "accepted"),
                            "refused_after": sum(1 for a in stale if a["t0"] > stale_at + 1
                                                 and (a.get("event") or {}).get("reason") == "crl_stale"),
                            "attempts": len(stale), "workers_not_ready_after": sorted(not_ready)}
            if stale_at - 1 < float(self.meta.get("load_end", 0)) and set(pids) - not_ready:
                viol.append(f"workers {sorted(set(pids) - not_ready)} never said crl_not_ready after nextUpdate")
        held = [a for a in self.attempts if a.get("driver") == "held"]
        out["held_session"] = [{"outcome": a.get("outcome"), "detail": a.get("detail"),
                                "from": a["t0"] - self.t0, "to": a.get("t1", a["t0"]) - self.t0} for a in held]
        out["violations"] = viol
        return out

    def _crl_line(self, e: dict[str, Any]) -> str:
        return (f"+{e['_t'] - self.t0:.1f}s pid={e.get('pid')} number={e.get('crl_number')} "
                f"delta_of={e.get('delta_of')} entries={e.get('entries')}")

    # ------------------------------------------------------------------ steady state
    def worker_series(self) -> dict[int, list[dict[str, Any]]]:
        series: dict[int, list[dict[str, Any]]] = defaultdict(list)
        stats = defaultdict(list)
        for e in self.events:
            if e.get("event") == "stats" and "pid" in e:
                stats[int(e["pid"])].append(e)
        for s in self.samples:
            pid = int(s["pid"])
            # the stats event the sample's SIGUSR1 asked for: the first one after it
            st = next((e for e in stats[pid] if e["_t"] >= s["t"] - 0.5), None)
            if st is not None and st["_t"] - s["t"] < 5:
                s = dict(s, tasks=st.get("tasks"), active=st.get("active"), py_blocks=st.get("py_blocks"))
            series[pid].append(s)
        return series

    def steady(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bound": f"RSS growth over the last 2/3 of the load <= max({RSS_GROWTH_PCT:g} %, "
                                        f"{RSS_GROWTH_FLOOR_KIB // 1024} MiB); after the load, open fds and asyncio "
                                        "tasks back to (at most) their pre-load values"}
        viol: list[str] = []
        workers = {}
        load_start = float(self.meta.get("load_start", 0))
        load_end = float(self.meta.get("load_end", 0))
        for pid, ss in self.worker_series().items():
            base = [s for s in ss if s["phase"] == "baseline"]
            load = [s for s in ss if s["phase"] == "load"]
            after = [s for s in ss if s["phase"] == "after"]
            w: dict[str, Any] = {}
            if base:
                w["baseline"] = {k: base[-1].get(k) for k in ("rss_kib", "fds", "tasks")}
            if after:
                w["after"] = {k: after[-1].get(k) for k in ("rss_kib", "fds", "tasks")}
            cut = load_start + (load_end - load_start) / 3
            tail = [s for s in load if s["t"] >= cut and s.get("rss_kib")]
            if len(tail) >= 2:
                first = statistics.median(s["rss_kib"] for s in tail[:3])
                last = statistics.median(s["rss_kib"] for s in tail[-3:])
                growth = last - first
                w["rss_last_two_thirds_kib"] = {"from": first, "to": last, "growth": growth,
                                                "growth_pct": round(100 * growth / first, 2) if first else None}
                blocks = [s["py_blocks"] for s in tail if s.get("py_blocks")]
                if len(blocks) >= 6:
                    # The Python heap alone: flat while RSS grows means the allocator, rising means objects kept.
                    b0, b1 = statistics.median(blocks[:3]), statistics.median(blocks[-3:])
                    w["py_blocks_last_two_thirds"] = {"from": b0, "to": b1,
                                                      "growth_pct": round(100 * (b1 - b0) / b0, 2) if b0 else None}
                if growth > max(first * RSS_GROWTH_PCT / 100, RSS_GROWTH_FLOOR_KIB):
                    viol.append(f"pid {pid}: RSS grew {growth} KiB over the last 2/3 of the load")
            w["rss_peak_kib"] = max((s.get("rss_kib") or 0 for s in ss), default=None)
            if base and after:
                # The least of each phase: CRL refreshes (every few seconds) add tasks and fds for a moment.
                for k in ("fds", "tasks"):
                    bs = [s[k] for s in base if s.get(k) is not None]
                    as_ = [s[k] for s in after if s.get(k) is not None]
                    b, a = (min(bs) if bs else None), (min(as_) if as_ else None)
                    w.setdefault("least", {})[k] = {"before": b, "after": a}
                    if b is not None and a is not None and a > b:   # fewer after is no leak (a start-up task ended)
                        viol.append(f"pid {pid}: {k} {b} before the load, {a} after")
                fb = next((s.get("fd_detail") for s in base if s.get("fds") == min(x["fds"] for x in base)), None)
                fa = next((s.get("fd_detail") for s in after if s.get("fds") == min(x["fds"] for x in after)), None)
                if fb is not None and fa is not None:
                    gained = sorted((Counter(fa) - Counter(fb)).elements())
                    lost_fds = sorted((Counter(fb) - Counter(fa)).elements())
                    if gained or lost_fds:
                        w["fd_diff"] = {"gained": gained, "lost": lost_fds}
            workers[str(pid)] = w
        if not workers:
            viol.append("no samples")
        out["workers"] = workers
        out["violations"] = viol
        return out

    # ------------------------------------------------------------------ latency
    def window_seconds(self) -> float:
        minutes = float(self.meta.get("minutes", 3))
        load = float(self.meta.get("load_seconds", 120))
        return 300.0 if minutes >= 30 else max(20.0, round(load / 6))

    def latency(self) -> list[dict[str, Any]]:
        win = self.window_seconds()
        hs: dict[int, list[float]] = defaultdict(list)
        rq: dict[int, list[float]] = defaultdict(list)
        for a in self.attempts:
            if a.get("driver") not in ("imap", "idle", "smtp", "https"):
                continue
            k = int((a["t0"] - self.t0) // win)
            if a.get("hs_ms") is not None:
                hs[k].append(a["hs_ms"])
            if a.get("req_ms") is not None:
                rq[k].append(a["req_ms"])
            for q in a.get("requests", []):
                if "ms" in q:
                    rq[int((q["t0"] - self.t0) // win)].append(q["ms"])
        load1: dict[int, list[float]] = defaultdict(list)
        for s in self.samples:
            if s.get("load1") is not None:
                load1[int((s["t"] - self.t0) // win)].append(float(s["load1"]))
        rows = []
        for k in sorted(set(hs) | set(rq)):
            if k < 0:
                continue
            # The machine's load beside the latency: a drift that follows it is the machine, not the proxy.
            rows.append({"window": k, "from": k * win, "to": (k + 1) * win, "handshakes": len(hs[k]),
                         "load1": round(statistics.median(load1[k]), 2) if load1[k] else None,
                         "hs_p50": _pct(hs[k], 50), "hs_p99": _pct(hs[k], 99), "requests": len(rq[k]),
                         "req_p50": _pct(rq[k], 50), "req_p99": _pct(rq[k], 99)})
        return rows


# ---------------------------------------------------------------------------------------------- writing
def _plots(an: Analysis, out: Path) -> tuple[str, str]:
    t0 = an.t0
    spans = [(f["start"] - t0, f.get("end", f["start"]) - t0, f["name"]) for f in an.faults
             if f["name"] in ("dovecot_down", "postfix_down")]
    load_span = [(0.0, float(an.meta.get("load_end", t0)) - t0, "load")]
    rss = svg.Panel("RSS per worker", "MiB", spans=load_span, ymin=None)
    fds = svg.Panel("Open file descriptors per worker", "fds", spans=load_span)
    tasks = svg.Panel("asyncio tasks per worker", "tasks", spans=load_span)
    blocks = svg.Panel("Python heap: allocated blocks per worker (thousands)", "k blocks", spans=load_span, ymin=None)
    for pid, ss in sorted(an.worker_series().items()):
        rss.series.append((f"pid {pid}", [(s["t"] - t0, s["rss_kib"] / 1024) for s in ss if s.get("rss_kib")]))
        fds.series.append((f"pid {pid}", [(s["t"] - t0, s["fds"]) for s in ss if s.get("fds") is not None]))
        tasks.series.append((f"pid {pid}", [(s["t"] - t0, s["tasks"]) for s in ss if s.get("tasks") is not None]))
        blocks.series.append((f"pid {pid}", [(s["t"] - t0, s["py_blocks"] / 1000) for s in ss if s.get("py_blocks")]))
    mem = out.with_name(out.stem + "-resources.svg")
    mem.write_text(svg.render([rss, blocks, fds, tasks], "seconds since the load started (shaded: load)"))
    rows = an.latency()
    mid = [(r["from"] + r["to"]) / 2 for r in rows]
    hs = svg.Panel("Handshake latency per window (client side, to first application data)", "ms", spans=spans)
    rq = svg.Panel("Request latency per window (IMAP SELECT+FETCH, SMTP transaction, HTTPS POST)", "ms",
                   spans=spans)
    for label, key, panel in (("p50", "hs_p50", hs), ("p99", "hs_p99", hs), ("p50", "req_p50", rq),
                              ("p99", "req_p99", rq)):
        panel.series.append((label, [(x, r[key]) for x, r in zip(mid, rows, strict=True) if r[key] is not None]))
    lat = out.with_name(out.stem + "-latency.svg")
    lat.write_text(svg.render([hs, rq], "seconds since the load started (shaded: Dovecot/Postfix down)"))
    return _shown(mem), _shown(lat)


def _shown(svg_path: Path) -> str:
    """The plot's PNG when one could be made (the SVG beside it), else the SVG."""
    made = png.to_png(svg_path)
    return svg_path.name if made is None else made.name


def _vector(shown: str) -> list[str]:
    """A pointer to the SVG source under its PNG."""
    return ["", f"(Vector source: [{Path(shown).stem}.svg]({Path(shown).stem}.svg).)"] if shown.endswith(".png") else []


def _list(items: list[str], limit: int = 30) -> list[str]:
    lines = [f"- `{x}`" for x in items[:limit]]
    if len(items) > limit:
        lines.append(f"- … and {len(items) - limit} more")
    return lines


def render(an: Analysis, v: dict[str, Any], mem_svg: str, lat_svg: str) -> str:
    m = an.meta
    ok = "PASS" if v["pass"] else "FAIL"
    L: list[str] = []
    started = datetime.fromtimestamp(float(m.get("started", 0))).astimezone().isoformat(timespec="seconds")
    L += [f"# Soak run {started}: {ok}", "",
          f"Command: `python -m soak --minutes {m.get('minutes'):g} --seed {m.get('seed')}` "
          f"(workers: {m.get('workers')}, load {m.get('load_seconds', 0):.0f} s, hard deadline "
          f"{m.get('hard_deadline_s')} s). Peers: {json.dumps(m.get('versions', {}))}.", ""]
    if v["aborted"]:
        L += [f"**Aborted**: {v['aborted']}", ""]
    L += ["## Verdicts", "",
          "| verdict | result |", "|---|---|",
          f"| every refusal explained by an injected fault or a bad card | {'yes' if v['ok_unexplained'] else 'NO'} "
          f"({len(v['unexplained_refusals'])} unexplained) |",
          f"| zero internal_error, zero tracebacks | {'yes' if v['ok_no_errors'] else 'NO'} "
          f"({len(v['internal_errors'])} internal_error, {v['tracebacks']} traceback lines) |",
          f"| nothing lost | {'yes' if v['ok_nothing_lost'] else 'NO'} "
          f"({len(v['lost']['mail_redelivered_across_stop'])} message(s) redelivered by Postfix across a stop, "
          "explained) |",
          f"| revocation held | {'yes' if v['ok_revocation'] else 'NO'} |",
          f"| steady state within the bound | {'yes' if v['ok_steady'] else 'NO'}"
          f"{'' if v['steady_judged'] else f' (shown only: under {STEADY_JUDGED_FROM_MINUTES:g} min is warm-up)'} |",
          f"| config reloads: valid ones taken, invalid ones refused | "
          f"{('yes' if v['ok_reloads'] else 'NO') if v['reloads']['enabled'] else 'not run'} |", ""]
    if v["crash"]:
        L += ["Driver crashes (bugs of the soak itself):", *_list(v["crash"]), ""]
    # connections
    outcomes = Counter(str(e.get("outcome")) for e in an.conns)
    L += ["## Connections", "",
          f"Client attempts: {len(an.attempts)}; proxy `connection` events: {len(an.conns)} "
          f"(ok {outcomes.get('ok', 0)}, closed by the client {outcomes.get('closed', 0)}, "
          f"refused {outcomes.get('refused', 0)}).", "",
          "Client attempts by driver and outcome:", "", "| driver | kind | outcome | count |", "|---|---|---|---|"]
    for (d, k, o), n in sorted(Counter((a.get("driver"), a.get("kind"), a.get("outcome"))
                                       for a in an.attempts).items(), key=lambda x: str(x)):
        L.append(f"| {d} | {k} | {o} | {n} |")
    L += ["", "Refused by reason (proxy events):", "", "| reason | count |", "|---|---|"]
    L += [f"| {r} | {n} |" for r, n in sorted(v["refused_by_reason"].items())]
    L += ["", "How each refusal is explained:", "", "| reason ← explanation | count |", "|---|---|"]
    L += [f"| {r} | {n} |" for r, n in sorted(v["refusals_explained"].items())]
    L += ["", f"Unexplained refusals: {len(v['unexplained_refusals'])}", *_list(v["unexplained_refusals"]), ""]
    L += [f"internal_error events: {len(v['internal_errors'])}", *_list(v["internal_errors"]),
          f"Traceback lines in the proxy log: {v['tracebacks']}. Events at level error: "
          f"{json.dumps(v['error_events'])}.", ""]
    # lost
    lost = v["lost"]
    L += ["## Nothing lost", "",
          f"- Mail: {json.dumps(lost['mail'])}. Every submitted message (250 after DATA) must be in the mailbox "
          "exactly once (read back over IMAP through the proxy); a message whose client reset mid-DATA must not be.",
          f"- HTTPS: {json.dumps(lost['https'])}; each request's answer is checked against its own body, and "
          "the backend's log shows no request id twice.",
          f"- IMAP sessions with an accepted card: {json.dumps(lost['imap'])} (completed = LOGOUT answered; "
          "bye = the server's `* BYE`, e.g. a backend restart).",
          f"- Connection events: {json.dumps(lost['events'])}: every client connection is paired with exactly "
          "one `connection` event by its address and port, each event to the latest attempt begun before it; "
          "a reset in the accept queue (no address) to the nearest reset-at-once attempt of its listener in "
          f"time, at most {ACCEPT_RESET_BOUND:g} s apart.", ""]
    red = lost["mail_redelivered_across_stop"]
    L += [f"Found twice, redelivered by Postfix across a stop (explained): {len(red)}. A duplicate counts as "
          f"explained only when found exactly twice and its 250 came at most {REDELIVERY_WINDOW:g} s before a "
          "`postfix_down` fault began (or while the stop ran): Postfix removes a queue file only after the LMTP "
          "delivery ended, so a stop in between delivers the message again after the restart (at-least-once). "
          f"Its queue manager delivers at once over loopback and retries within 6 s; {REDELIVERY_WINDOW:g} s is "
          "under 2 % of the time between two stops. Any other duplicate is listed under `mail_duplicated`.",
          *_list(red), ""]
    for k, items in lost["violations"].items():
        L += [f"**{k}** ({len(items)}):", *_list(items), ""]
    # revocation
    rv = v["revocation"]
    L += ["## Revocation", "",
          f"- Workers: {rv['workers']}. Fort intermediate CRL installs (number {BASE_NUMBER} is the good one; "
          f"the bad ones are {BASE_NUMBER - 1} rollback and {BASE_NUMBER + 5} forged):",
          *[f"  - {x}" for x in rv["fort_inter_installs"]],
          f"- Card in the base CRL (`revoked`): {rv['revoked_card_attempts']} attempts, "
          f"{rv['revoked_card_refused_revoked']} refused `revoked`.",
          f"- Delta CRL revoking `fort-liberal` published at +{_fmt(rv['delta_published'], 's')}; in force per "
          f"worker at {json.dumps(rv['delta_in_force'])} (s since load start); first probe refused per worker at "
          f"{json.dumps(rv['probe_first_refused'])}; probes {json.dumps(rv['probe_by_outcome'])}.",
          f"- The session of that card opened before the delta and held in IDLE: {json.dumps(rv['held_session'])} "
          "(the proxy checks cards at the handshake: a session already open goes on).",
          f"- Stale policy (Standard set, fail closed, no grace): its CRL source answers 500 from "
          f"+{_fmt((rv.get('stale') or {}).get('source_gone'), 's')}, its cached CRL's nextUpdate is at "
          f"+{_fmt((rv.get('stale') or {}).get('next_update'), 's')}: {json.dumps(rv.get('stale'))} "
          "(`standard-cpe` accepted on the cached CRL, refused `crl_stale` after nextUpdate).", "",
          "CRL faults and what each worker logged (`crl_rejected` reasons) during the window:", "",
          "| fault | window (s) | per worker | workers with the expected reason | note |", "|---|---|---|---|---|"]
    for r in rv["crl_faults"]:
        note = f"server sent {r['bytes_sent']} bytes before the client gave up" if r.get("bytes_sent") else ""
        L.append(f"| {r['fault']} | {r['start']:.0f}-{r['end']:.0f} | {json.dumps(r['per_worker'])} | "
                 f"{r['workers_with_expected']} | {note} |")
    L += [""]
    if rv["violations"]:
        L += ["**Revocation violations**:", *_list(rv["violations"]), ""]
    rl = v["reloads"]
    L += ["## Config reloads (SIGHUP)", ""]
    if not rl["enabled"]:
        L += ["Not run: this sniproxy has no SIGHUP reload (the supervisor of issue 13 is not merged).", ""]
    else:
        ok_n = sum(1 for r in rl["done"] if r.get("valid") and r.get("result") == "reload")
        bad_n = sum(1 for r in rl["done"] if not r.get("valid") and r.get("result") == "reload_failed")
        L += [f"{len(rl['done'])} reloads under load: {ok_n} valid ones took (new generation), {bad_n} invalid "
              "ones refused with file:line errors while the running config stayed. No refusal is explained by a "
              "reload: a connection refused around one counts as unexplained.", "",
              "| at (s) | valid | result | generation | seconds | errors |", "|---|---|---|---|---|---|"]
        for r in rl["done"]:
            L.append(f"| {r['at']:.0f} | {r.get('valid')} | {r.get('result')} | {r.get('generation')} | "
                     f"{r.get('seconds')} | {'; '.join(map(str, r.get('errors') or []))[:160]} |")
        L += [""]
        if rl["violations"]:
            L += ["**Reload violations**:", *_list(rl["violations"]), ""]
    # faults
    L += ["## Faults injected", "", "| fault | start (s) | end (s) | error |", "|---|---|---|---|"]
    for f in sorted(an.faults, key=lambda f: f["start"]):
        L.append(f"| {f['name']} | {f['start'] - an.t0:.1f} | {f.get('end', f['start']) - an.t0:.1f} | "
                 f"{f.get('error') or ''} |")
    # steady
    sd = v["steady"]
    L += ["", "## Steady state", "", f"Bound: {sd['bound']}.", "", f"![resources]({mem_svg})", *_vector(mem_svg), "",
          "| worker | baseline | after the load | RSS over the last 2/3 of the load | RSS peak (KiB) "
          "| Python heap blocks over the last 2/3 |",
          "|---|---|---|---|---|---|"]
    for pid, w in sd["workers"].items():
        L.append(f"| {pid} | {json.dumps(w.get('baseline'))} | {json.dumps(w.get('after'))} | "
                 f"{json.dumps(w.get('rss_last_two_thirds_kib'))} | {w.get('rss_peak_kib')} | "
                 f"{json.dumps(w.get('py_blocks_last_two_thirds'))} |")
    L += ["", "Least fds and tasks of each phase (CRL refreshes add some for a moment): " + "; ".join(
        f"pid {pid}: {json.dumps(w.get('least'))}" for pid, w in sd["workers"].items())]
    for pid, w in sd["workers"].items():
        if w.get("fd_diff"):
            L.append(f"- pid {pid} descriptors after vs before the load: {json.dumps(w['fd_diff'])}")
    if sd["violations"]:
        L += ["", "**Steady-state violations**:", *_list(sd["violations"])]
    # latency
    L += ["", "## Latency", "", f"Windows of {an.window_seconds():g} s from the start of the load; client side.",
          "", f"![latency]({lat_svg})", *_vector(lat_svg), "",
          "| window (s) | handshakes | p50 (ms) | p99 (ms) | requests | p50 (ms) | p99 (ms) | 1-min load (median) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in an.latency():
        L.append(f"| {r['from']:.0f}-{r['to']:.0f} | {r['handshakes']} | {_fmt(r['hs_p50'])} | {_fmt(r['hs_p99'])} "
                 f"| {r['requests']} | {_fmt(r['req_p50'])} | {_fmt(r['req_p99'])} | {_fmt(r.get('load1'))} |")
    L += ["", "Latency windows include the faults (a slow backend, a restart): a drift shows across windows, not "
          "within one."]
    return "\n".join(L) + "\n"


def write(data: Path, out: Path) -> dict[str, Any]:
    """Analyse the run in ``data``, write ``out`` (Markdown), its SVGs, and ``data/verdicts.json``."""
    an = Analysis(data)
    v = an.verdicts()
    mem, lat = _plots(an, out)
    out.write_text(render(an, v, mem, lat))
    (data / "verdicts.json").write_text(json.dumps(v, indent=1, default=str))
    return v


if __name__ == "__main__":
    verdicts = write(Path(sys.argv[1]), Path(sys.argv[2]))
    print("PASS" if verdicts["pass"] else "FAIL")
