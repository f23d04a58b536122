"""sniproxy.crl.handover: the pod's fetcher publishes, workers' followers map; followers never download."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import sniproxy.crl.published as published
from sniproxy.crl.handover import CrlFollower
from sniproxy.crl.manager import CrlManager
from sniproxy.crl.published import manifest_key, published_dir, read_published
from sniproxy.crl.state import RevocationHolder
from tests.unit.crl.test_manager import (
    KC,
    Clock,
    Env,
    env,  # noqa: F401 - fixtures shared with test_crl_manager
    inter,  # noqa: F401
    pki,  # noqa: F401
    publish,
    root,  # noqa: F401
)


def fetcher(env: Env) -> CrlManager:
    return CrlManager(env.config(), RevocationHolder(), clock=Clock(), publish=True)


def follower(env: Env) -> CrlFollower:
    return CrlFollower(env.config(), RevocationHolder(), clock=Clock())


def versions(directory: Path) -> list[str]:
    return sorted(f.name for f in directory.iterdir() if f.suffix in (".der", ".idx"))


@pytest.mark.parametrize("large", [False, True])
async def test_follower_maps_what_the_fetcher_published(env: Env, large: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if large:   # indexed in the helper process and mapped from files, as a 50 MB CRL is
        import sniproxy.crl.manager as manager_mod
        monkeypatch.setattr(manager_mod, "THREAD_LIMIT", 0)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    publish(env.inter_src, env.inter.crl(10, [(4242, when, KC), (2**70 + 5, when, None)]))
    publish(env.root_src, env.root.crl(20))
    f, w = fetcher(env), follower(env)
    try:
        await w.start()
        assert not w.ready and w.holder.current.issuers == {}          # nothing published yet
        await f.start()
        directory = published_dir(env.tmp / "state" / "crl")
        assert len(versions(directory)) == 4                          # a DER and an index per source
        await w.start()
        assert w.ready
        state = w.holder.current.issuers[env.inter.key_id]
        hit = state.lookup(4242)
        assert hit is not None and hit.reason == 1 and hit.date == when.timestamp()
        assert state.lookup(2**70 + 5) is not None and state.lookup(4243) is None
        assert not isinstance(state.base.index.der, bytes)            # mapped, not copied
        # the fetcher gets a new CRL: the follower picks it up at its next look, once
        publish(env.inter_src, env.inter.crl(11))
        assert await f.refresh(str(env.inter_src)) == "updated"
        assert await w.refresh(str(env.inter_src)) == "updated"
        assert w.holder.current.issuers[env.inter.key_id].lookup(4242) is None
        assert await w.refresh(str(env.inter_src)) == "unchanged"
        assert await w.refresh(str(env.root_src)) == "unchanged"
        # the old version stays a while for followers that read the old manifest, then goes
        assert len(versions(directory)) == 6
        for p in directory.iterdir():
            os.utime(p, (0, 0))                                        # every version is old now
        publish(env.inter_src, env.inter.crl(12))
        assert await f.refresh(str(env.inter_src)) == "updated"
        assert len(versions(directory)) == 4        # the inter's new version and the root's: the rest removed
        assert await w.refresh(str(env.inter_src)) == "updated"
        assert w.holder.current.issuers[env.inter.key_id].base.meta.number == 12
    finally:
        f.close()
        w.close()


async def test_follower_never_fetches(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import sniproxy.crl.sources as sources

    async def no_fetch(*args: object, **kw: object) -> None:
        raise AssertionError("a follower fetched")

    monkeypatch.setattr(sources, "fetch", no_fetch)
    w = follower(env)
    assert await w.refresh(str(env.inter_src)) == "unchanged"
    assert manifest_key(w.directory, str(env.inter_src)) is None and read_published(w.directory, "x") is None


async def test_a_vanished_version_is_retried(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(env.inter_src, env.inter.crl(10))
    publish(env.root_src, env.root.crl(20))
    f, w = fetcher(env), follower(env)
    try:
        await f.start()
        real = published.map_index
        calls = []

        def flaky(der: Path, idx: Path) -> object:
            calls.append(der)
            if len(calls) == 1:
                raise FileNotFoundError(der)
            return real(der, idx)

        monkeypatch.setattr(published, "map_index", flaky)
        url = str(env.inter_src)
        assert await w.refresh(url) == "handover_error"
        assert await w.refresh(url) == "updated"                      # not marked seen after the failure
    finally:
        f.close()
        w.close()


def test_follower_needs_a_cache_dir(env: Env) -> None:
    from dataclasses import replace

    cfg = env.config()
    with pytest.raises(ValueError, match="cache_dir"):
        CrlFollower(replace(cfg, crl=replace(cfg.crl, cache_dir=None)), RevocationHolder())
