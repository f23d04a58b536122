"""One CRL fetcher per pod: the fetcher publishes each CRL it put in force; workers map what it published.

With ``workers: N`` only the supervisor fetches, validates and indexes (``CrlManager`` with
``publish=True``); each worker runs a ``CrlFollower``, which never downloads: it watches the
fetcher's manifests and maps the DER and index files they name (the same read-only maps a large
CRL already used), so N workers cost one download and one indexing, and share the page cache.

The files and their format are ``published``'s.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sniproxy.crl.errors import CrlRejected
from sniproxy.crl.manager import CrlManager
from sniproxy.crl.published import manifest_key, published_dir, read_published
from sniproxy.observability.log import get_logger

_log = get_logger("sniproxy.crl")
POLL = 0.5          # seconds between two looks at the manifests (one stat call per source)


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
