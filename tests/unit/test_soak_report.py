"""The soak report's classification (issue 17) on small synthetic runs: which duplicate a Postfix stop
explains, and how connection events pair with client attempts when source ports are reused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from soak.report import ACCEPT_RESET_BOUND, REDELIVERY_WINDOW, Analysis, accepted_at, pair_accept_resets

T0 = 1_796_588_000.0
STOP = T0 + 600.0          # a Postfix stop begins here and ends 40 s later


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _conn(t: float, peer: str, listener: str, reason: str, outcome: str, phase: str) -> dict[str, Any]:
    return {"event": "connection", "timestamp": _iso(t), "peer": peer, "listener": listener, "reason": reason,
            "outcome": outcome, "phase": phase, "pid": 7}


def _run(tmp: Path, attempts: list[dict[str, Any]], events: list[dict[str, Any]] | None = None,
         mailbox: dict[str, int] | None = None, faults: list[dict[str, Any]] | None = None) -> Analysis:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "meta.json").write_text(json.dumps({"load_start": T0, "minutes": 3}))
    (tmp / "attempts.jsonl").write_text("".join(json.dumps(a) + "\n" for a in attempts))
    (tmp / "proxy.log").write_text("".join(json.dumps(e) + "\n" for e in events or []))
    (tmp / "mailbox.json").write_text(json.dumps(mailbox or {}))
    stops = [{"name": "postfix_down", "track": "mail", "start": STOP, "end": STOP + 40.0}]
    (tmp / "faults.jsonl").write_text("".join(json.dumps(f) + "\n" for f in (stops if faults is None else faults)))
    return Analysis(tmp)


def _smtp(mid: str, accepted: float | None, **kw: Any) -> dict[str, Any]:
    a: dict[str, Any] = {"driver": "smtp", "src": "127.0.12.1", "sport": None, "t0": (accepted or T0) - 0.05,
                         "kind": "smtp", "msg_id": mid, "submitted": accepted is not None, "sending": True,
                         "outcome": "completed" if accepted is not None else "disconnected"}
    if accepted is not None:
        a["accepted_at"] = accepted
    a.update(kw)
    return a


# ---------------------------------------------------------------------------------------------- duplicates
def _lost(tmp: Path, mailbox: dict[str, int], attempts: list[dict[str, Any]],
          faults: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return _run(tmp, attempts, mailbox=mailbox, faults=faults).lost()


def test_duplicate_accepted_just_before_a_postfix_stop_is_explained_and_listed(tmp_path: Path) -> None:
    lost = _lost(tmp_path, {"m1": 2, "m2": 1}, [_smtp("m1", STOP - 0.027), _smtp("m2", T0 + 5)])
    assert lost["violations"] == {}
    assert len(lost["mail_redelivered_across_stop"]) == 1
    line = lost["mail_redelivered_across_stop"][0]
    assert line.startswith("m1:") and "-27 ms" in line and "redelivered by Postfix across a stop" in line
    assert lost["mail"]["redelivered_across_stop"] == 1


def test_duplicate_accepted_while_the_stop_runs_is_explained(tmp_path: Path) -> None:
    # the 60-minute run's case: `postfix stop` issued, smtpd still answered 250 26 ms later
    lost = _lost(tmp_path, {"m1": 2}, [_smtp("m1", STOP + 0.026)])
    assert lost["violations"] == {} and len(lost["mail_redelivered_across_stop"]) == 1


def test_duplicate_outside_the_window_stays_a_failure(tmp_path: Path) -> None:
    lost = _lost(tmp_path, {"early": 2, "after": 2},
                 [_smtp("early", STOP - REDELIVERY_WINDOW - 0.5), _smtp("after", STOP + 41.0)])
    assert sorted(lost["violations"]["mail_duplicated"]) == ["after", "early"]
    assert lost["mail_redelivered_across_stop"] == []


def test_duplicate_edge_of_the_window_is_explained(tmp_path: Path) -> None:
    lost = _lost(tmp_path, {"m1": 2}, [_smtp("m1", STOP - REDELIVERY_WINDOW + 0.1)])
    assert lost["violations"] == {}


def test_three_copies_unacknowledged_or_no_stop_stay_failures(tmp_path: Path) -> None:
    near = STOP - 0.01
    lost = _lost(tmp_path / "a", {"three": 3, "no250": 2}, [_smtp("three", near), _smtp("no250", None)])
    assert sorted(lost["violations"]["mail_duplicated"]) == ["no250", "three"]
    # a Dovecot stop is not a Postfix stop
    lost = _lost(tmp_path / "b", {"m1": 2}, [_smtp("m1", near)],
                 faults=[{"name": "dovecot_down", "track": "mail", "start": STOP, "end": STOP + 40.0}])
    assert lost["violations"]["mail_duplicated"] == ["m1"]


def test_accepted_at_falls_back_to_the_timed_transaction_for_older_runs() -> None:
    a = {"t0": 100.0, "submitted": True, "hs_ms": 12.0, "req_ms": 51.0, "t1": 100.2}
    assert abs((accepted_at(a) or 0) - 100.063) < 1e-9
    assert accepted_at({"t0": 100.0, "submitted": True, "t1": 100.2}) == 100.2
    assert accepted_at({"t0": 100.0, "submitted": False, "hs_ms": 1.0, "req_ms": 1.0}) is None
    assert accepted_at({"t0": 100.0, "submitted": True, "accepted_at": 100.05, "hs_ms": 1.0, "req_ms": 1.0}) == 100.05


# ---------------------------------------------------------------------------------------------- pairing
def _reset(src: str, sport: int, t: float, listener: str = "imap") -> dict[str, Any]:
    return {"driver": "hostile", "src": src, "sport": sport, "t0": t, "kind": "reset", "phase": "at_once",
            "listener": listener, "t1": t + 0.0002, "outcome": "reset"}


def _bad_card(src: str, sport: int, t: float) -> dict[str, Any]:
    return {"driver": "hostile", "src": src, "sport": sport, "t0": t, "kind": "bad_card", "listener": "smtps",
            "card": "wrong-eku", "expect": "wrong_usage", "t1": t + 0.005, "outcome": "refused"}


def _accept_reset(t: float, listener: str = "imap") -> dict[str, Any]:
    return _conn(t, "unknown", listener, "client_reset", "closed", "accept")


def test_reused_port_gives_the_bad_card_its_own_event(tmp_path: Path) -> None:
    # The 60-minute run: a reset in the accept queue at 127.0.14.10:52571, then 1444 s later a bad card from
    # the same address and port; by rank the reset took the card's event and the card showed as unexplained.
    early, late = T0 + 100.0, T0 + 1544.0
    attempts = [_reset("127.0.14.2", 44987, T0 + 50.0), _reset("127.0.14.10", 52571, early),
                _bad_card("127.0.14.10", 52571, late)]
    events = [_accept_reset(T0 + 50.0004), _accept_reset(early + 0.0006),
              _conn(late + 0.004, "127.0.14.10:52571", "smtps", "wrong_usage", "refused", "handshake")]
    an = _run(tmp_path, attempts, events)
    assert an.missing == [] and an.extra == [] and an.unknown_unpaired == []
    card = attempts_by_kind(an, "bad_card")[0]
    assert card["event"]["reason"] == "wrong_usage"
    assert an.explain(card["event"]) == "bad card wrong-eku"
    _, _, unexplained = an.refusals()
    assert unexplained == []
    reset = next(a for a in an.attempts if a.get("sport") == 52571 and a["kind"] == "reset")
    assert abs(reset["event"]["_t"] - (early + 0.0006)) < 1e-3


def attempts_by_kind(an: Analysis, kind: str) -> list[dict[str, Any]]:
    return [a for a in an.attempts if a.get("kind") == kind]


def test_an_event_after_every_attempt_of_its_port_is_extra_not_stolen(tmp_path: Path) -> None:
    # two events for one attempt: the second is extra, the attempt keeps the first
    a = _bad_card("127.0.14.3", 40000, T0 + 10.0)
    events = [_conn(T0 + 10.004, "127.0.14.3:40000", "smtps", "wrong_usage", "refused", "handshake"),
              _conn(T0 + 20.0, "127.0.14.3:40000", "smtps", "wrong_usage", "refused", "handshake"),
              _conn(T0 + 5.0, "127.0.14.3:40000", "smtps", "wrong_usage", "refused", "handshake")]
    an = _run(tmp_path, [a], events)
    assert an.attempts[0]["event"]["_t"] == an.conns[0]["_t"]
    assert sorted(e["_t"] for e in an.extra) == sorted([an.conns[1]["_t"], an.conns[2]["_t"]])


def _ev(t: float, listener: str = "imap") -> dict[str, Any]:
    return {"_t": t, "listener": listener, "peer": "unknown"}


def test_accept_queue_resets_pair_with_the_nearest_attempt_not_by_order() -> None:
    a1, a2 = _reset("127.0.14.1", 1, 100.0), _reset("127.0.14.1", 2, 200.0)
    e_late, e_early = _ev(200.001), _ev(100.002)      # listed out of order, as several workers log them
    pair_accept_resets([e_late, e_early], [a1, a2])
    assert a1["event"] is e_early and a2["event"] is e_late
    assert e_early["attempt"] is a1 and e_late["attempt"] is a2


def test_accept_queue_reset_pairs_within_the_bound_and_same_listener_only() -> None:
    far = _reset("127.0.14.1", 1, 100.0)
    other = _reset("127.0.14.1", 2, 300.0, listener="smtp")
    near = _reset("127.0.14.1", 3, 500.0)
    e_far, e_other, e_near = _ev(100.0 + ACCEPT_RESET_BOUND + 0.5), _ev(300.001), _ev(500.0 + ACCEPT_RESET_BOUND)
    pair_accept_resets([e_far, e_other, e_near], [far, other, near])
    assert "event" not in far and "attempt" not in e_far
    assert "event" not in other and "attempt" not in e_other
    assert near["event"] is e_near


def test_one_attempt_takes_one_event_the_closest() -> None:
    a = _reset("127.0.14.1", 1, 100.0)
    e1, e2 = _ev(100.3), _ev(100.001)
    pair_accept_resets([e1, e2], [a])
    assert a["event"] is e2 and "attempt" not in e1


# ---------------------------------------------------------------------------------------------- overall verdict
def test_steady_state_fails_an_hour_run_but_not_a_three_minute_one(tmp_path: Path) -> None:
    an = _run(tmp_path / "short", [])      # no samples: the steady-state verdict is NO
    v = an.verdicts()
    assert not v["ok_steady"] and not v["steady_judged"] and v["pass"]
    long = tmp_path / "long"
    _run(long, [])
    (long / "meta.json").write_text(json.dumps({"load_start": T0, "minutes": 60}))
    v = Analysis(long).verdicts()
    assert not v["ok_steady"] and v["steady_judged"] and not v["pass"]


# ---------------------------------------------------------------------------------------------- revocation
def test_delta_in_force_counts_workers_not_the_pods_fetcher(tmp_path: Path) -> None:
    """With one CRL fetcher per pod the supervisor logs the delta first (``role: fetcher``); "in force" is
    about the workers that map it, so the fetcher's install is reported apart, never as a third worker."""
    from soak.report import BASE_NUMBER

    def upd(t: float, pid: int, role: str) -> dict[str, Any]:
        return {"event": "crl_updated", "timestamp": _iso(t), "pid": pid, "role": role,
                "crl_number": BASE_NUMBER + 2, "delta_of": BASE_NUMBER}

    a = _run(tmp_path, [], events=[upd(T0 + 10, 1, "fetcher"), upd(T0 + 10.5, 2, "follower"),
                                   upd(T0 + 11, 3, "follower")])
    assert set(a.delta_in_force()) == {2, 3}
    assert set(a.delta_in_force("fetcher")) == {1}


def test_png_size_comes_from_the_svg_root() -> None:
    """The screenshot is taken at the SVG's own pixel size; an SVG without one is refused."""
    from soak import png

    assert png.size('<svg xmlns="http://www.w3.org/2000/svg" width="900" height="660" font-size="11">') == (900, 660)
    with pytest.raises(ValueError, match="width and height"):
        png.size('<svg viewBox="0 0 10 10">')


def test_a_backend_connect_timeout_is_explained_only_while_a_backend_stops(tmp_path: Path) -> None:
    """The 40-minute soak: clients connected to Dovecot while it shut down got no greeting in time."""
    an = _run(tmp_path, [])
    ev = {"attempt": {"driver": "imap", "kind": "imap"}, "reason": "timeout", "phase": "backend_connect"}
    assert an.explain({**ev, "_t": STOP + 5}) == "backend stopping: no greeting in time"
    assert an.explain({**ev, "_t": STOP + 100}) is None                       # no stop then
    assert an.explain({**ev, "phase": "handshake", "_t": STOP + 5}) is None    # not the backend's doing
