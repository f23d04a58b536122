"""One CRL fetcher per pod: the fetcher publishes each CRL it put in force; workers map what it published.

With ``workers: N`` only the supervisor fetches, validates and indexes (``CrlManager`` with
``publish=True``); each worker runs a ``CrlFollower``, which never downloads: it watches the
fetcher's manifests and maps the DER and index files they name (the same read-only maps a large
CRL already used), so N workers cost one download and one indexing, and share the page cache.

Files, in ``<crl.cache_dir>/published/``: per version ``<slug>.<sha>.der`` and ``<slug>.<sha>.idx``
(never rewritten once named), and per source ``<slug>.json``, the manifest naming the version in
force, replaced atomically. Older versions are removed ``KEEP_OLD`` seconds after they stop being
named: a worker that read a manifest has that long to map its files, and a map outlives the name.
Blocking file I/O: callers run these functions in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from sniproxy.crl.cache import atomic_write, slug
from sniproxy.crl.errors import CrlRejected
from sniproxy.crl.index import RevokedIndex, map_index, save_index
from sniproxy.crl.manager import CrlManager
from sniproxy.crl.prepare import Prepared, temp_file
from sniproxy.crl.validate import CrlMeta
from sniproxy.observability.log import get_logger

_log = get_logger("sniproxy.crl")
KEEP_OLD = 120.0
POLL = 0.5          # seconds between two looks at the manifests (one stat call per source)


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


class CrlFollower(CrlManager):
    """A worker's CRL manager: installs what the pod's fetcher published, never downloads."""

    role = "follower"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cache is None:
            raise ValueError("a CRL follower needs crl.cache_dir")
        self.directory = published_dir(self.cache.directory)
        self._seen: dict[str, tuple[int, int, int]] = {}

    async def refresh(self, url: str) -> str:
        """Install the published CRL of ``url`` if it changed; returns updated, unchanged or the refusal."""
        key = await asyncio.to_thread(manifest_key, self.directory, url)
        if key is None or self._seen.get(url) == key:
            return "unchanged"
        st = self.status[url]
        try:
            prepared = await asyncio.to_thread(read_published, self.directory, url)
            if prepared is None:
                return "unchanged"
            if st.meta is not None and st.meta.sha256 == prepared.meta.sha256:
                result = "unchanged"
            else:
                result = self._install(url, prepared)
                st.meta = prepared.meta
            self._retire(prepared)
        except (OSError, ValueError, KeyError) as exc:
            # Mostly a version removed between the manifest read and the map: the next look retries.
            _log.warning("crl_handover_failed", url=url, error=f"{type(exc).__name__}: {exc}")
            return "handover_error"
        except CrlRejected as exc:
            _log.warning("crl_rejected", url=url, reason=exc.reason, error=exc.message)
            result = exc.reason
        self._seen[url] = key
        st.last_result, st.last_success = result, self.clock()
        self.check_readiness()
        return result

    async def load_cache(self) -> None:
        """The follower's start: what is published now (bases before deltas: sources in config order)."""
        for url in self.specs:
            await self.refresh(url)
        # A delta published before its base waits in _pending_deltas and is applied with the base.
        self.check_readiness()

    async def start(self) -> None:
        """Install what is published; never fetches."""
        await self.load_cache()

    async def run(self) -> None:
        """Look at the manifests every ``POLL`` seconds, forever (cancel to stop)."""
        try:
            while True:
                await asyncio.sleep(POLL)
                for url in self.specs:
                    await self.refresh(url)
                self.check_readiness()
        finally:
            self.close()
