"""docs/troubleshooting.md explains every refusal reason the code can log (a new reason must be documented)."""

from __future__ import annotations

import re
from pathlib import Path

from sniproxy.errors import Reason

DOC = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"


def test_every_reason_has_a_row_with_cause_and_action() -> None:
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_0-9]+)` \|[^\n]*$", DOC.read_text(), re.M)}
    missing = sorted(r.value for r in Reason if r.value not in rows)
    assert missing == [], f"reasons without a row in docs/troubleshooting.md: {missing}"
    for reason, row in rows.items():
        assert reason in {r.value for r in Reason}, f"{reason} is not a reason in sniproxy/errors.py"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and len(cells[1]) > 10 and len(cells[2]) >= 7, row
