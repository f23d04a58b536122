"""The files the pod's CRL fetcher publishes for its workers, and how a worker reads them back.

Files, in ``<crl.cache_dir>/published/``: per version ``<slug>.<sha>.der`` and ``<slug>.<sha>.idx``
(never rewritten once named), and per source ``<slug>.json``, the manifest naming the version in
force, replaced atomically. Older versions are removed ``KEEP_OLD`` seconds after they stop being
named: a worker that read a manifest has that long to map its files, and a map outlives the name.
Owns the format on both sides, so the fetcher (``manager``) and the followers (``handover``) share it
without importing each other. Blocking file I/O: callers run these functions in a thread.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sniproxy.crl.cache import atomic_write, slug
from sniproxy.crl.errors import CrlRejected
from sniproxy.crl.index import RevokedIndex, map_index, save_index
from sniproxy.crl.prepare import Prepared, temp_file
from sniproxy.crl.validate import CrlMeta

KEEP_OLD = 120.0


def published_dir(cache_dir: Path) -> Path:
    """Where the fetcher publishes for the workers."""
    return cache_dir / "published"


def _meta_json(meta: CrlMeta) -> dict[str, Any]:
    return {"issuer_key": meta.issuer_key.hex(), "issuer": meta.issuer, "number": meta.number,
            "base_number": meta.base_number, "this_update": meta.this_update, "next_update": meta.next_update,
            "entries": meta.entries, "sha256": meta.sha256}


def _meta_of(d: dict[str, Any]) -> CrlMeta:
    return CrlMeta(issuer_key=bytes.fromhex(d["issuer_key"]), issuer=str(d["issuer"]), number=d["number"],
                   base_number=d["base_number"], this_update=float(d["this_update"]),
                   next_update=float(d["next_update"]), entries=int(d["entries"]), sha256=str(d["sha256"]))


def publish(directory: Path, url: str, meta: CrlMeta, index: RevokedIndex) -> None:
    """Publish the CRL of ``url`` now in force: its DER and index files, then its manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{slug(url)}.{meta.sha256[:24]}"
    der, idx = directory / f"{stem}.der", directory / f"{stem}.idx"
    if not (der.is_file() and idx.is_file()):
        tmp_der = temp_file(directory, "der", index.der)  # type: ignore[arg-type]  # bytes or an mmap: both buffers
        tmp_idx = temp_file(directory, "idx", b"")
        try:
            save_index(index, tmp_idx)
            os.replace(tmp_der, der)
            os.replace(tmp_idx, idx)
        finally:
            tmp_der.unlink(missing_ok=True)
            tmp_idx.unlink(missing_ok=True)
    manifest = {"url": url, "der": der.name, "index": idx.name, "meta": _meta_json(meta),
                "published": time.time()}
    atomic_write(directory / f"{slug(url)}.json", (json.dumps(manifest) + "\n").encode())
    _remove_old(directory, url, {der.name, idx.name})


def _remove_old(directory: Path, url: str, keep: set[str]) -> None:
    limit = time.time() - KEEP_OLD
    for f in directory.glob(f"{slug(url)}.*"):
        if f.suffix in (".der", ".idx") and f.name not in keep:
            try:
                if f.stat().st_mtime < limit:
                    f.unlink()
            except OSError:
                continue


def manifest_key(directory: Path, url: str) -> tuple[int, int, int] | None:
    """What changes when the manifest of ``url`` is replaced (None: not published yet)."""
    try:
        st = (directory / f"{slug(url)}.json").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def read_published(directory: Path, url: str) -> Prepared | None:
    """Map the CRL the fetcher published for ``url`` (None when nothing is published)."""
    try:
        manifest = json.loads((directory / f"{slug(url)}.json").read_text())
    except FileNotFoundError:
        return None
    meta = _meta_of(manifest["meta"])
    index = map_index(directory / manifest["der"], directory / manifest["index"])
    if len(index) != meta.entries:
        raise CrlRejected("parse_error", f"published index of {url} has {len(index)} entries, not {meta.entries}")
    return Prepared(meta, index)
