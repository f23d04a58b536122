"""The migration report's pure parts: log lines in, figures out (issue 15)."""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from sniproxy.cli import main
from sniproxy.report.aggregate import Aggregate
from sniproxy.report.classify import (
    PKI_2TER,
    PKI_FORT,
    PKI_NONE,
    PKI_SANTE_OTHER,
    PKI_STANDARD,
    address_of,
    no_sni,
    pki_of,
)
from sniproxy.report.html import render_html
from sniproxy.report.reader import ReadStats, events_from_lines, read_events
from sniproxy.report.render import render_csv, render_json, render_table
from sniproxy.report.summary import Options, build, pseudonymizer

FORT = "CN=AC IGC-SANTE FORT PERSONNES,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"
STANDARD = "CN=AC IGC-SANTE STANDARD PERSONNES,OU=IGC-SANTE,OU=0002 187512751,O=ASIP-SANTE,C=FR"
CPS = "OU=AC-CLASSE-1,O=GIP-CPS,C=FR"


def ev(ts: str, *, listener: str = "imap", flow: str | None = "igcsante", sni: str | None = "imap-igcsante.test",
       peer: str = "10.0.0.1:40000", holder: str | None = "810000000001", issuer: str = FORT,
       reason: str = "ok", outcome: str = "ok", card: str = "CPS", **extra: Any) -> dict[str, Any]:
    """One ``connection`` event as the proxy logs it."""
    e: dict[str, Any] = {"event": "connection", "timestamp": ts, "level": "info", "listener": listener,
                         "flow": flow, "sni": sni, "peer": peer, "reason": reason, "outcome": outcome,
                         "tls_version": "TLSv1.3", **extra}
    if holder:
        e["identity"] = {"idnat_ps": holder, "issuer": issuer, "card_type_name": card,
                         "given_name": "JEAN", "surname": "DUPONT"}
    return e


def lines(*events: dict[str, Any]) -> list[str]:
    return [json.dumps(e) + "\n" for e in events]


def report_of(events: list[dict[str, Any]], **opts: Any) -> dict[str, Any]:
    agg = Aggregate()
    stats = ReadStats()
    for ts, e in events_from_lines(lines(*events), stats):
        agg.add(ts, e)
    return build(agg, stats, Options(**opts))


# ------------------------------------------------------------------------------------------ reader

def test_reader_keeps_connection_events_and_counts_malformed_lines() -> None:
    text = [json.dumps(ev("2026-12-01T10:00:00Z")) + "\n", "not json at all\n",
            '{"event": "connection", "timestamp": "2026-12-01T1\n',         # cut by a rotation
            json.dumps({"event": "ready", "timestamp": "2026-12-01T10:00:00Z"}) + "\n",
            json.dumps({"event": "connection", "timestamp": "yesterday"}) + "\n",   # no usable time
            '["connection"]\n', "\n", json.dumps(ev("2026-12-01T10:30:00Z")) + ' {"connection"}\n',
            " " + json.dumps(ev("2026-12-01T10:45:00Z", peer="10.9.9.9:1")) + "\n",
            json.dumps(ev("2026-12-01T11:00:00+00:00")) + "\n"]
    stats = ReadStats()
    got = list(events_from_lines(text, stats, "x.log"))
    assert [e["timestamp"] for _, e in got] == ["2026-12-01T10:00:00Z", "2026-12-01T10:45:00Z",
                                                "2026-12-01T11:00:00+00:00"]
    assert got[2][0] - got[0][0] == 3600
    assert stats.malformed == 5
    assert stats.examples == ["x.log:2", "x.log:3", "x.log:5", "x.log:6", "x.log:8"]
    assert stats.lines == 10 and stats.events == 3


def test_reader_window_is_half_open() -> None:
    stats = ReadStats()
    evs = lines(ev("2026-12-01T00:00:00Z"), ev("2026-12-02T00:00:00Z"), ev("2026-12-03T00:00:00Z"))
    since = datetime(2026, 12, 2, tzinfo=UTC).timestamp()
    got = list(events_from_lines(evs, stats, since=since, until=since + 86400))
    assert [e["timestamp"] for _, e in got] == ["2026-12-02T00:00:00Z"]
    assert stats.outside_window == 2


def test_reader_merges_files_by_time_and_reads_gzip_by_content(tmp_path: Path) -> None:
    a = tmp_path / "pod-a.log"
    a.write_text("".join(lines(ev("2026-12-01T10:00:00Z", peer="10.0.0.1:1"), ev("2026-12-01T12:00:00Z",
                                                                                 peer="10.0.0.1:2"))))
    b = tmp_path / "pod-b.log.1"      # gzip without a .gz name: told by its magic bytes
    b.write_bytes(gzip.compress("".join(lines(ev("2026-12-01T11:00:00Z", peer="10.0.0.2:1"),
                                              ev("2026-12-01T13:00:00Z", peer="10.0.0.2:2"))).encode()))
    stats = ReadStats()
    got = [e["peer"] for _, e in read_events([str(a), str(b)], stats)]
    assert got == ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.1:2", "10.0.0.2:2"]
    assert stats.events == 4


# ------------------------------------------------------------------------------------------ classify

@pytest.mark.parametrize(("identity", "authority", "want"), [
    ({"issuer": CPS}, None, PKI_2TER),
    ({"issuer": "OU=AC-CLASSE-1-TEST,O=GIP-CPS-TEST,C=FR"}, None, PKI_2TER),
    ({"issuer": FORT}, None, PKI_FORT),
    ({"issuer": "CN=TEST AC IGC-SANTE FORT PERSONNES,OU=IGC-SANTE TEST,O=ASIP-SANTE,C=FR"}, None, PKI_FORT),
    ({"issuer": STANDARD}, None, PKI_STANDARD),
    ({"issuer": "CN=AC IGC-SANTE ELEMENTAIRE ORGANISATIONS,OU=IGC-SANTE,C=FR"}, None, PKI_SANTE_OTHER),
    ({"parse_error": "ValueError", "authority": "igc-cps-2ter"}, None, PKI_2TER),
    (None, "igc-sante-standard-pp", PKI_STANDARD),   # a refused card: only the authority set is logged
    (None, None, PKI_NONE),
])
def test_pki_from_issuer_then_authority(identity: dict[str, Any] | None, authority: str | None, want: str) -> None:
    assert pki_of(identity, authority) == want


def test_no_sni_only_once_a_client_hello_was_read() -> None:
    assert no_sni(ev("t", sni=None, flow="2bis"))                                   # default flow
    assert no_sni(ev("t", sni=None, flow=None, reason="unknown_sni", outcome="refused"))  # no default flow
    assert not no_sni(ev("t", sni=None, flow=None, reason="timeout", outcome="refused"))  # never said hello
    assert not no_sni(ev("t", sni="x.test", flow="2bis"))


def test_address_of_ipv4_ipv6() -> None:
    assert address_of("10.1.2.3:443") == "10.1.2.3"
    assert address_of("::1:5555") == "::1"
    assert address_of("[2001:db8::1]:993") == "2001:db8::1"
    assert address_of(None) == "?"


# ------------------------------------------------------------------------------------------ figures

def _mixed() -> list[dict[str, Any]]:
    return [
        ev("2026-12-01T09:00:00Z", holder="810000000001"),                                      # Santé, SNI
        ev("2026-12-01T10:00:00Z", holder="810000000001"),
        ev("2026-12-01T11:00:00Z", holder="810000000002", issuer=CPS, flow="2bis", sni="imap.test",
           peer="10.0.0.2:1"),                                                                # 2TER on 2bis
        ev("2026-12-02T08:00:00Z", holder="810000000003", issuer=STANDARD, card="CPE", flow="2bis", sni=None,
           peer="10.0.0.3:1"),                                                                # no SNI
        ev("2026-12-02T09:00:00Z", holder=None, flow=None, sni=None, reason="unknown_sni", outcome="refused",
           listener="smtp", peer="10.0.0.4:1"),
        ev("2026-12-02T10:00:00Z", holder=None, flow="igcsante", reason="card_revoked", outcome="refused",
           peer="10.0.0.5:1", authority="igc-sante-fort-pp"),
        ev("2026-12-02T11:00:00Z", holder="810000000002", issuer=CPS, flow="2bis", sni="imap.test",
           peer="10.0.0.2:2", listener="smtp"),
    ]


def test_figures_per_listener_and_flow() -> None:
    r = report_of(_mixed())
    t = r["totals"]
    assert (t["connections"], t["holders"], t["addresses"], t["no_sni_clients"], t["no_sni_connections"]) == \
        (7, 3, 5, 2, 2)
    g = {(x["listener"], x["flow"]): x for x in r["groups"]}
    assert set(g) == {("imap", "igcsante"), ("imap", "2bis"), ("smtp", "(none)"), ("smtp", "2bis")}
    sante = g[("imap", "igcsante")]
    assert (sante["connections"], sante["holders"], sante["addresses"]) == (3, 1, 2)
    assert sante["refusals"] == {"card_revoked": 1}
    assert sante["pki"] == {PKI_FORT: 3}
    assert g[("imap", "2bis")]["sni"] == {"imap.test": 1}
    assert g[("imap", "2bis")]["no_sni_clients"] == 1
    assert g[("smtp", "(none)")]["refusals"] == {"unknown_sni": 1}
    assert r["holders_by_pki"] == {PKI_2TER: 1, PKI_FORT: 1, PKI_STANDARD: 1}
    assert r["holders_by_card_type"] == {"CPS": 2, "CPE": 1}
    assert sante["first_seen"] == "2026-12-01T09:00:00Z" and sante["last_seen"] == "2026-12-02T10:00:00Z"


def test_blockers_most_recent_first_with_last_sni() -> None:
    r = report_of(_mixed())
    got = [(b["kind"], b["id"], b["why"], b["last_sni"], b["connections"], b["listener"]) for b in r["blockers"]]
    assert got == [
        ("holder", "810000000002", "legacy flow", "imap.test", 2, "smtp"),
        ("address", "10.0.0.4", "no SNI", None, 1, "smtp"),
        ("holder", "810000000003", "no SNI", None, 1, "imap"),
    ]
    assert r["blockers"][0]["first_seen"] == "2026-12-01T11:00:00Z"
    assert [d["blocking"] for d in r["days"]] == [1, 3]
    assert [d["no_sni_share"] for d in r["days"]] == [0.0, 0.5]


def test_verdict_counts_and_falling_since() -> None:
    # 4 blocking holders a day for 3 days, then one fewer each day: falling since the last day at the peak.
    events = []
    for day in range(1, 8):
        n = 4 if day <= 3 else 4 - (day - 3)
        for h in range(n):
            events.append(ev(f"2026-12-0{day}T10:00:00Z", holder=f"8100000000{h}", flow="2bis"))
    r = report_of(events, cutover=date(2027, 1, 15))
    v = r["verdict"]
    assert v["would_break"] == 4 and v["holders"] == 4 and v["addresses"] == 0
    assert v["falling_since"] == "2026-12-03"
    assert "Cutover on 2027-01-15: 4 client(s) would break" in v["text"]
    flat = report_of([ev("2026-12-01T10:00:00Z", flow="2bis")], cutover=date(2027, 1, 15))["verdict"]
    assert flat["falling_since"] is None and "not falling" in flat["text"]
    none = report_of([ev("2026-12-01T10:00:00Z")], cutover=date(2027, 1, 15))["verdict"]
    assert none["would_break"] == 0 and "nothing would break" in none["text"]


def test_pseudonymize_hides_idnat_ps_and_names() -> None:
    key = b"k" * 32
    r = report_of(_mixed(), pseudonym=pseudonymizer(key))
    text = render_json(r) + render_csv(r) + render_table(r) + render_html(r)
    for raw in ("810000000002", "810000000003", "DUPONT"):
        assert raw not in text
    ids = [b["id"] for b in r["blockers"] if b["kind"] == "holder"]
    assert ids[0] == pseudonymizer(key)("810000000002") != pseudonymizer(b"other")("810000000002")
    assert all(i.startswith("ps-") and len(i) == 19 for i in ids)


def test_tables_stop_growing_and_say_so() -> None:
    agg = Aggregate(max_keys=3)
    stats = ReadStats()
    for ts, e in events_from_lines(lines(*[ev("2026-12-01T10:00:00Z", holder=f"81{i:010d}", flow="2bis",
                                               peer=f"10.0.0.{i}:1") for i in range(10)]), stats):
        agg.add(ts, e)
    r = build(agg, stats, Options())
    assert r["totals"]["holders"] == 3 and r["totals"]["addresses"] == 3
    assert len(r["blockers"]) == 3
    assert {"holders", "addresses", "blockers", "blocking"} <= set(r["truncated"])


# ------------------------------------------------------------------------------------------ renderings

def test_csv_and_json_parse() -> None:
    r = report_of(_mixed(), cutover=date(2027, 1, 15))
    rows = list(csv.DictReader(io.StringIO(render_csv(r))))
    blockers = [x for x in rows if x["section"] == "blocker"]
    assert [(x["kind"], x["key"]) for x in blockers] == [("holder", "810000000002"), ("address", "10.0.0.4"),
                                                          ("holder", "810000000003")]
    totals = {x["key"]: int(x["value"]) for x in rows if x["section"] == "total"}
    assert totals["holders"] == 3 and totals["no_sni_clients"] == 2
    assert any(x["section"] == "verdict" and x["value"] == "3" for x in rows)
    assert json.loads(render_json(r))["totals"] == r["totals"]


def test_html_is_self_contained_with_chart_series() -> None:
    page = render_html(report_of(_mixed()))
    assert page.startswith("<!DOCTYPE html>")
    for needle in ('id="chart-flows"', 'data-series="2bis"', 'data-series="igcsante"', 'id="chart-nosni"',
                   'data-series="no-SNI share"', 'id="chart-pki"', f'data-series="{PKI_2TER}"'):
        assert needle in page
    # nothing fetched: no script, no stylesheet link, no URL but the SVG namespace
    assert "<script" not in page and "src=" not in page
    assert page.count("<link") == 1 and '<link rel="icon" href="data:,">' in page
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0


# ------------------------------------------------------------------------------------------ CLI

def test_cli_report_listener_filter_and_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "a.log"
    log.write_text("".join(lines(*_mixed())) + "garbage\n")
    out = tmp_path / "r.json"
    assert main(["report", str(log), "--listener", "smtp", "--since", "2026-12-02", "--format", "json",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["totals"]["connections"] == 2
    assert {g["listener"] for g in r["groups"]} == {"smtp"}
    assert r["input"]["malformed"] == 1
    assert "1 malformed line(s) skipped" in capsys.readouterr().err


def test_cli_report_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.log")]) == 2
    assert main(["report", "--since", "last tuesday", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing.log" in err and "not a date" in err


def test_blocker_seen_later_on_a_new_flow_is_marked_moved_and_card_less_address_folded() -> None:
    r = report_of([
        ev("2026-12-01T10:00:00Z", holder="810000000001", flow="2bis", sni=None, peer="10.0.0.1:1"),
        ev("2026-12-01T11:00:00Z", holder=None, flow="2bis", sni=None, peer="10.0.0.1:2", reason="expired",
           outcome="refused"),                                  # same address, card refused: folded
        ev("2026-12-02T10:00:00Z", holder="810000000001", flow="igcsante", peer="10.0.0.1:3"),   # moved
        ev("2026-12-02T10:00:00Z", holder="810000000002", flow="2bis", sni="imap.test", peer="10.0.0.2:1"),
        ev("2026-12-01T09:00:00Z", holder="810000000002", flow="igcsante", peer="10.0.0.2:1"),  # before: no
    ], cutover=date(2027, 1, 15))
    got = {b["id"]: b["moved_since"] for b in r["blockers"]}
    assert got == {"810000000001": "2026-12-02T10:00:00Z", "810000000002": None}
    assert r["totals"]["folded_addresses"] == 1
    assert r["verdict"]["probably_moved"] == 1
    assert "1 of them were seen on a new flow" in r["verdict"]["text"]


def test_sealed_days_count_the_same_as_kept_sets() -> None:
    from sniproxy.report import synth

    results = []
    for seal in (False, True):
        agg = Aggregate(seal_days=seal)
        stats = ReadStats()
        for ts, e in events_from_lines(list(synth.lines(3000, days=10, holders=200)), stats):
            agg.add(ts, e)
        results.append(build(agg, stats, Options()))
        if seal:
            assert sum(len(d.blocking) for d in agg.days.values()) == len(agg.days[max(agg.days)].blocking)
    for r in results:
        r.pop("generated")
    assert results[0] == results[1]
    assert sum(d["blocking"] for d in results[0]["days"]) > 100


@pytest.mark.parametrize("value", ["2026-12-06T18:40:05.123456Z", "2026-12-06T18:40:05Z", "2026-12-06T18:40:05+00:00",
                                   "2026-12-06T19:40:05.123456+01:00", "2026-12-06T18:40:05.123456"])
def test_timestamp_fast_path_agrees_with_fromisoformat(value: str) -> None:
    from sniproxy.report.reader import parse_time

    want = datetime(2026, 12, 6, 18, 40, 5, tzinfo=UTC).timestamp()
    got = parse_time(value)
    assert got is not None and abs(got - want) < 0.2
    assert parse_time("2026-12-06T18:40:xxZ") is None


def test_csv_defuses_spreadsheet_formulas_from_client_fields() -> None:
    r = report_of([ev("2026-12-01T10:00:00Z", flow="2bis", sni="=HYPERLINK(\"http://x\")"),
                   ev("2026-12-01T11:00:00Z", flow="2bis", sni="-1+2", holder="810000000002")])
    rows = list(csv.DictReader(io.StringIO(render_csv(r))))
    snis = {x["key"] for x in rows if x["section"] == "sni"}
    assert snis == {"'=HYPERLINK(\"http://x\")", "'-1+2"}
    assert {x["last_sni"] for x in rows if x["section"] == "blocker"} == {"'=HYPERLINK(\"http://x\")", "'-1+2"}
    assert {x["value"] for x in rows if x["section"] == "total" and x["key"] == "connections"} == {"2"}
