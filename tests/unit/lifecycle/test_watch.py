"""reload.watch: which files are watched and when their fingerprint changes."""

from __future__ import annotations

import os
from pathlib import Path

from sniproxy.lifecycle.watch import fingerprint


def test_fingerprint_follows_content_not_timestamps(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.pem"
    a.write_text("one")
    b.write_text("cert")
    first = fingerprint([a, b])
    os.utime(a, (1, 1))                                    # touched, same bytes: no reload
    assert fingerprint([a, b]) == first
    b.write_text("renewed cert")                           # a certificate renewed in place
    second = fingerprint([a, b])
    assert second != first
    b.unlink()                                             # a missing file is a change too
    assert fingerprint([a, b]) not in (first, second)


def test_known_content_stands_for_the_file(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("edited meanwhile")
    # The running config was built from "original": the file on disk differs, so the watcher will reload.
    assert fingerprint([a], {a: b"original"}) != fingerprint([a])
    assert fingerprint([a], {a: b"edited meanwhile"}) == fingerprint([a])
