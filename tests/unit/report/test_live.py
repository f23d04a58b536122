"""The live migration page: per-worker dumps and their merge (issue 15, contract with the admin route)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sniproxy.driver import shared as connection
from sniproxy.report import live
from sniproxy.report.aggregate import Aggregate
from sniproxy.report.live import LiveRecorder, load_dumps, merge, render_live
from sniproxy.report.summary import Options, build
from tests.unit.report.test_report import _mixed


def _strip(report: dict[str, Any]) -> dict[str, Any]:
    report.pop("generated")
    report.pop("window")
    return report


def _worker(dump_dir: Path, name: str, events: list[dict[str, Any]]) -> LiveRecorder:
    rec = LiveRecorder(dump_dir)
    rec.path = dump_dir / f"live-{name}.json"
    for e in events:
        rec.observe(e)
    rec.flush()
    return rec


def test_merge_of_two_workers_equals_one_aggregate(tmp_path: Path) -> None:
    events = _mixed()
    _worker(tmp_path, "1", events[::2])
    _worker(tmp_path, "2", events[1::2])
    dumps, skipped = load_dumps(tmp_path)
    assert len(dumps) == 2 and skipped == []
    one = LiveRecorder(tmp_path / "single")
    for e in events:
        one.observe(e)
    merged = _strip(build(merge(dumps), None, Options()))
    single = _strip(build(one.agg, None, Options()))
    # the observer stamps events with the wall clock, so first/last seen differ; everything counted must not
    for r in (merged, single):
        for b in r["blockers"]:
            b.pop("first_seen"), b.pop("last_seen")
        for g in r["groups"]:
            g.pop("first_seen"), g.pop("last_seen")
    assert sorted(merged["blockers"], key=lambda b: b["id"]) == sorted(single["blockers"], key=lambda b: b["id"])
    merged.pop("blockers"), single.pop("blockers")
    assert merged == single
    assert merged["totals"]["holders"] == 3 and merged["totals"]["no_sni_clients"] == 2


def test_blocker_merge_keeps_the_latest_record_and_sums_counts() -> None:
    a, b = Aggregate(), Aggregate()
    base = {"event": "connection", "listener": "imap", "flow": "2bis", "peer": "10.0.0.1:1", "outcome": "ok",
            "identity": {"idnat_ps": "810000000001"}}
    a.add(100.0, {**base, "sni": "old.test"})
    b.add(200.0, {**base, "sni": "new.test", "listener": "smtp"})
    a.add(50.0, {**base, "sni": "older.test"})
    a.merge_state(json.loads(json.dumps(b.to_state())))
    rec = build(a, None, Options())["blockers"][0]
    assert (rec["last_sni"], rec["listener"], rec["connections"]) == ("new.test", "smtp", 3)
    assert rec["first_seen"] == "1970-01-01T00:00:50Z" and rec["last_seen"] == "1970-01-01T00:03:20Z"


def test_dumps_of_gone_processes_and_broken_files_are_skipped(tmp_path: Path) -> None:
    rec = _worker(tmp_path, "7", _mixed())
    gone = subprocess.Popen(["true"])
    gone.wait()
    state = json.loads(rec.path.read_text())
    state["pid"] = gone.pid
    (tmp_path / "live-99.json").write_text(json.dumps(state))
    (tmp_path / "live-98.json").write_text('{"version": 1, "events": ')
    dumps, skipped = load_dumps(tmp_path)
    assert len(dumps) == 1
    assert any(f"process {gone.pid} is gone" in s for s in skipped)
    assert any(s.startswith("live-98.json: JSONDecodeError") for s in skipped)
    page = render_live(tmp_path)
    assert "Skipped: " in page and "is gone" in page
    assert 'id="kpi-holders">3<' in page


def test_dump_is_atomic_and_only_when_changed(tmp_path: Path) -> None:
    rec = _worker(tmp_path, "5", _mixed()[:1])
    first = rec.path.stat().st_mtime_ns
    rec.flush()                                   # nothing new: not rewritten
    assert rec.path.stat().st_mtime_ns == first
    assert [p.name for p in tmp_path.iterdir()] == ["live-5.json"]   # no temporary file left
    rec.observe(_mixed()[1])
    rec.flush()
    assert json.loads(rec.path.read_text())["events"] == 2


def test_observer_never_raises() -> None:
    rec = LiveRecorder(Path("/nonexistent"))
    rec.observe({"peer": object(), "identity": "not a dict", "flow": 3})   # odd but must not raise
    rec.observe(None)  # type: ignore[arg-type]
    assert rec.errors >= 1


def test_live_dump_stays_bounded(tmp_path: Path) -> None:
    rec = LiveRecorder(tmp_path)
    rec.agg = Aggregate(max_keys=50, max_names=10)
    for i in range(500):
        rec.observe({"event": "connection", "listener": "imap", "flow": "2bis", "sni": f"n{i}.test",
                     "peer": f"10.0.{i // 250}.{i % 250}:1", "outcome": "ok",
                     "identity": {"idnat_ps": f"81{i:010d}"}})
    rec.flush()
    state = json.loads(rec.path.read_text())
    assert len(state["blockers"]) == 50 and len(state["holder_pki"]) == 50
    assert len(state["groups"][0][2]["sni"]) == 11          # 10 names and "(other)"
    assert "holders" in state["truncated"]


@pytest.fixture
def clean_observers() -> Iterator[None]:
    before = list(connection.OBSERVERS)
    yield
    connection.OBSERVERS[:] = before
    if live._recorder is not None:
        live._recorder.stop()
        live._recorder = None


def test_install_subscribes_once_and_dumps(tmp_path: Path, clean_observers: None) -> None:
    live.install(tmp_path)
    live.install(tmp_path)
    hooks = [o for o in connection.OBSERVERS if getattr(o, "__self__", None) is live._recorder]
    assert len(hooks) == 1
    for e in _mixed():
        hooks[0](e)
    assert live._recorder is not None
    live._recorder.stop()
    dumps, _ = load_dumps(tmp_path)
    assert len(dumps) == 1 and dumps[0]["events"] == 7
    assert "Live view" in render_live(tmp_path)


def test_render_live_without_any_dump_is_an_empty_page(tmp_path: Path) -> None:
    page = render_live(tmp_path / "not-created-yet")
    assert "0 worker(s)" in page and 'id="kpi-connections">0<' in page and "no data" in page
