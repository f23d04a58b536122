"""sniproxy.crl.manager: refresh schedule, prepare, and CrlManager over file sources (no network), with its cache."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.config.load import load
from sniproxy.config.model import Config, CrlSettings
from sniproxy.crl.cache import CrlCache, atomic_write, slug
from sniproxy.crl.errors import CrlRejected
from sniproxy.crl.index import map_index
from sniproxy.crl.manager import CrlManager, next_delay
from sniproxy.crl.prepare import PreparedFiles, prepare, prepare_file
from sniproxy.crl.state import RevocationHolder, RevocationPolicy
from sniproxy.crl.validate import ca_key
from sniproxy.demo.conf import DemoPorts, config_dict, write_config
from sniproxy.demo.crls import Entry, load_cert, load_key, make_crl
from sniproxy.demo.pki import TestPki, build

FORT = "igc-sante-fort-pp"
CPS = "igc-cps-2ter"
KC = x509.ReasonFlags.key_compromise
SETTINGS = CrlSettings(refresh_max=3600.0, retry_min=30.0)


def half() -> float:
    return 0.5  # jitter factor 0.9 + 0.2 * 0.5 = 1.0


# -- next_delay ------------------------------------------------------------------------------------------
def test_success_waits_refresh_max() -> None:
    assert next_delay(1000.0, None, 0, SETTINGS, half) == 3600.0
    assert next_delay(1000.0, 1000.0 + 7 * 86400, 0, SETTINGS, half) == 3600.0


def test_success_sooner_when_next_update_comes_first() -> None:
    assert next_delay(1000.0, 1600.0, 0, SETTINGS, half) == pytest.approx(600.0)
    assert next_delay(1000.0, 1000.0 + 3599, 0, SETTINGS, half) == pytest.approx(3599.0)


@pytest.mark.parametrize(("failures", "delay"), [(1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (7, 1920.0),
                                                 (8, 3600.0), (9, 3600.0), (50, 3600.0)])
def test_failures_double_from_retry_min_capped(failures: int, delay: float) -> None:
    assert next_delay(1000.0, None, failures, SETTINGS, half) == pytest.approx(delay)
    # a fresh CRL in force does not shorten the backoff
    assert next_delay(1000.0, 1000.0 + 86400, failures, SETTINGS, half) == pytest.approx(delay)


def test_very_many_failures_stay_capped() -> None:
    assert next_delay(1000.0, None, 1025, SETTINGS, half) == 3600.0


def test_crl_past_next_update_backs_off_like_a_failure() -> None:
    assert next_delay(1000.0, 999.0, 0, SETTINGS, half) == pytest.approx(30.0)
    assert next_delay(1000.0, 1000.0, 0, SETTINGS, half) == pytest.approx(30.0)   # at nextUpdate: past it
    assert next_delay(1000.0, 10.0, 3, SETTINGS, half) == pytest.approx(120.0)


@pytest.mark.parametrize(("failures", "fresh_until", "base"), [(0, None, 3600.0), (0, 1600.0, 600.0),
                                                               (2, None, 60.0), (0, 900.0, 30.0)])
def test_jitter_bounds(failures: int, fresh_until: float | None, base: float) -> None:
    low = next_delay(1000.0, fresh_until, failures, SETTINGS, lambda: 0.0)
    high = next_delay(1000.0, fresh_until, failures, SETTINGS, lambda: 0.999999)
    assert low == pytest.approx(0.9 * base)
    assert high == pytest.approx(1.1 * base, rel=1e-5) and high < 1.1 * base
    for _ in range(200):
        d = next_delay(1000.0, fresh_until, failures, SETTINGS)   # the real random.random
        assert 0.9 * base <= d < 1.1 * base


def test_never_below_one_second() -> None:
    assert next_delay(1000.0, 1000.2, 0, SETTINGS, lambda: 0.0) == 1.0
    tiny = CrlSettings(refresh_max=0.5, retry_min=0.1)
    assert next_delay(1000.0, None, 0, tiny, half) == 1.0
    assert next_delay(1000.0, None, 1, tiny, lambda: 0.99) == 1.0
    assert isinstance(next_delay(1000.0, None, 0, SETTINGS, half), float)


# -- fixtures: one test PKI for the session, its Fort CAs ------------------------------------------------
@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    @property
    def key_id(self) -> bytes:
        return ca_key(self.cert)

    def crl(self, number: int, revoked: list[Entry] | None = None, *, delta_of: int | None = None,
            next_update: datetime | None = None, pem: bool = False) -> bytes:
        this = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
        return make_crl(self.cert, self.key, revoked=revoked or [], number=number, delta_of=delta_of,
                        this_update=this, next_update=next_update or this + timedelta(days=7), pem=pem)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.getbasetemp() / "crl-testpki")


def _ca(pki: TestPki, name: str, level: str) -> Ca:
    files = pki.authorities[name]
    if level == "root":
        return Ca(load_cert(files.roots[0]), load_key(files.root_keys[0]))
    return Ca(load_cert(files.intermediates[0]), load_key(files.intermediate_keys[0]))


@pytest.fixture(scope="module")
def inter(pki: TestPki) -> Ca:
    return _ca(pki, FORT, "inter")


@pytest.fixture(scope="module")
def root(pki: TestPki) -> Ca:
    return _ca(pki, FORT, "root")


# -- prepare ---------------------------------------------------------------------------------------------
def test_prepare_der(inter: Ca) -> None:
    der = inter.crl(5, [(4242, datetime.now(UTC) - timedelta(days=1), KC)])
    p = prepare(der, (inter.der,), time.time())
    assert p.index.der is der and p.der_file is None   # already DER: indexed and stored as fetched
    assert p.meta.number == 5 and p.meta.entries == 1 and p.meta.issuer_key == inter.key_id
    hit = p.index.lookup(4242)
    assert hit is not None and hit.reason == 1 and p.index.lookup(4243) is None


def test_prepare_converts_pem_to_der(inter: Ca) -> None:
    pem = inter.crl(6, pem=True)
    p = prepare(pem, (inter.der,), time.time())
    assert p.index.der == x509.load_pem_x509_crl(pem).public_bytes(Encoding.DER)
    assert p.meta.number == 6


def test_prepare_refuses_what_validate_refuses(inter: Ca, root: Ca) -> None:
    with pytest.raises(CrlRejected) as exc:
        prepare(inter.crl(1), (root.der,), time.time())
    assert exc.value.reason == "wrong_issuer"
    with pytest.raises(CrlRejected) as exc:
        prepare(b"<html>oops</html>", (inter.der,), time.time())
    assert exc.value.reason == "not_a_crl"
    future = time.time() - 3600                # the CRL's thisUpdate is in the future of this `now`
    with pytest.raises(CrlRejected) as exc:
        prepare(inter.crl(1), (inter.der,), future)
    assert exc.value.reason == "future_this_update"


@pytest.mark.parametrize("pem", [False, True])
def test_prepare_file_sends_back_files_not_bytes(inter: Ca, tmp_path: Path, pem: bool) -> None:
    """The helper process gets a path and returns paths: tens of MB never cross the pipe."""
    data = inter.crl(7, [(9, datetime.now(UTC) - timedelta(days=1), KC)], pem=pem)
    src = tmp_path / "in.crl"
    src.write_bytes(data)
    files = prepare_file(str(src), (inter.der,), time.time(), str(tmp_path))
    again: PreparedFiles = pickle.loads(pickle.dumps(files))
    assert len(pickle.dumps(files)) < 2000
    assert (again.der_path == str(src)) is (not pem)
    index = map_index(Path(again.der_path), Path(again.index_path))
    hit = index.lookup(9)
    assert hit is not None and hit.reason == 1 and index.lookup(10) is None
    assert again.meta.number == 7 and again.meta.entries == 1


def test_prepare_file_leaves_nothing_behind_when_refused(inter: Ca, root: Ca, tmp_path: Path) -> None:
    src = tmp_path / "in.crl"
    src.write_bytes(inter.crl(1, pem=True))
    with pytest.raises(CrlRejected):
        prepare_file(str(src), (root.der,), time.time(), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.crl"]


# -- CrlManager over files ------------------------------------------------------------------------------
@dataclass
class Clock:
    t: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.t


_TICK = itertools.count(1)


def publish(path: Path, data: bytes) -> None:
    """Replace a CRL file as a publisher would (rename), with an mtime no earlier write had."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    ns = time.time_ns() + next(_TICK) * 1_000_000_000
    os.utime(path, ns=(ns, ns))


@dataclass
class Env:
    pki: TestPki
    tmp: Path
    inter: Ca
    root: Ca

    @property
    def inter_src(self) -> Path:
        return self.tmp / "pub" / "inter.crl"

    @property
    def root_src(self) -> Path:
        return self.tmp / "pub" / "root.crl"

    @property
    def delta_src(self) -> Path:
        return self.tmp / "pub" / "inter-delta.crl"

    def config(self, crl: Any = None, *, extra: dict[str, Any] | None = None, other: Any = None) -> Config:
        data = config_dict(self.pki, DemoPorts(imap=10143), state_dir=self.tmp / "state")
        data["authorities"][FORT]["crl"] = crl if crl is not None else [str(self.inter_src), str(self.root_src)]
        if other is not None:
            data["authorities"][CPS]["crl"] = other
        data.update(extra or {})
        # check_files=False: the manager reads the CA files itself, and the server keys cost 60 ms to load
        return load(write_config(data, self.tmp / "sniproxy.yaml"), check_files=False).config

    def manager(self, config: Config | None = None, clock: Clock | None = None) -> CrlManager:
        return CrlManager(config or self.config(), RevocationHolder(), clock=clock or Clock())


@pytest.fixture
def env(pki: TestPki, inter: Ca, root: Ca, tmp_path: Path) -> Env:
    return Env(pki, tmp_path, inter, root)


def test_sources_and_needs(env: Env) -> None:
    m = env.manager()
    assert list(m.specs) == [str(env.inter_src), str(env.root_src)]
    spec = m.specs[str(env.inter_src)]
    assert spec.authorities == (FORT,)
    assert set(spec.cas) == {env.inter.cert, env.root.cert}
    # the Fort set needs both its issuing CAs (check: chain); CPS 2ter has no crl, Standard is disabled
    assert {(n.authority, n.key) for n in m.needs} == {(FORT, env.inter.key_id), (FORT, env.root.key_id)}
    assert all(n.grace is None for n in m.needs)
    assert m.cache is not None and m.cache.directory == env.tmp / "state" / "crl"


def test_a_source_shared_by_two_sets(env: Env, pki: TestPki) -> None:
    shared = str(env.inter_src)
    m = env.manager(env.config([shared], other=[shared]))
    assert list(m.specs) == [shared]
    assert sorted(m.specs[shared].authorities) == sorted([FORT, CPS])
    cps = _ca(pki, CPS, "inter").cert
    assert {env.inter.cert, env.root.cert, cps} <= set(m.specs[shared].cas)
    assert len(m.specs[shared].cas) == 4
    assert len(m.needs) == 4


def test_leaf_check_needs_only_the_intermediate(env: Env) -> None:
    m = env.manager(env.config({"sources": [str(env.inter_src)], "check": "leaf", "stale": {"grace": "2h"}}))
    assert [(n.key, n.grace) for n in m.needs] == [(env.inter.key_id, 7200.0)]
    policy = RevocationPolicy.of(env.config({"sources": [str(env.inter_src)], "check": "leaf",
                                             "stale": {"grace": "2h"}}).authorities[FORT])
    assert (policy.required, policy.chain, policy.grace) == (True, False, 7200.0)


async def test_refresh_install_not_modified_update_unchanged(env: Env) -> None:
    publish(env.inter_src, env.inter.crl(10, [(777, datetime.now(UTC) - timedelta(days=1), KC)]))
    m = env.manager()
    url = str(env.inter_src)
    assert await m.refresh(url) == "updated"
    state = m.holder.current.issuers[env.inter.key_id]
    assert state.base.meta.number == 10 and state.base.source == url and state.delta is None
    assert state.lookup(777) is not None
    st = m.status[url]
    assert st.last_result == "updated" and st.failures == 0 and st.last_error is None
    assert st.meta is not None and st.meta.number == 10 and st.etag is not None and st.etag.startswith("file:")
    generation = m.holder.current.generation

    assert await m.refresh(url) == "not_modified"
    assert m.holder.current.generation == generation

    publish(env.inter_src, env.inter.crl(11))
    assert await m.refresh(url) == "updated"
    assert m.holder.current.issuers[env.inter.key_id].base.meta.number == 11
    assert m.holder.current.issuers[env.inter.key_id].lookup(777) is None

    publish(env.inter_src, env.inter_src.read_bytes())          # same bytes, new file: fetched, same CRL
    assert await m.refresh(url) == "unchanged"
    assert m.holder.current.generation == generation + 1


async def test_rollback_keeps_the_newer_crl(env: Env) -> None:
    m = env.manager()
    url = str(env.inter_src)
    publish(env.inter_src, env.inter.crl(11))
    assert await m.refresh(url) == "updated"
    newer = env.inter_src.read_bytes()
    publish(env.inter_src, env.inter.crl(9))
    assert await m.refresh(url) == "rollback"
    assert m.holder.current.issuers[env.inter.key_id].base.meta.number == 11
    st = m.status[url]
    assert st.failures == 1 and st.last_result == "rollback" and st.last_error is not None and "9" in st.last_error
    assert st.meta is not None and st.meta.number == 11
    assert m.cache is not None and m.cache.read_crl(url) == newer       # the cache keeps the good copy
    # same number, other content: also a rollback
    publish(env.inter_src, env.inter.crl(11, [(5, datetime.now(UTC) - timedelta(days=1), None)]))
    assert await m.refresh(url) == "rollback"
    assert m.status[url].failures == 2
    assert m.holder.current.issuers[env.inter.key_id].lookup(5) is None


async def test_bad_signature_keeps_the_old_crl(env: Env) -> None:
    m = env.manager()
    url = str(env.inter_src)
    publish(env.inter_src, env.inter.crl(10))
    assert await m.refresh(url) == "updated"
    forged = make_crl(env.inter.cert, rsa.generate_private_key(65537, 1024), number=99,
                      revoked=[(load_cert(env.pki.cards["fort"].cert).serial_number, datetime.now(UTC), KC)])
    publish(env.inter_src, forged)
    assert await m.refresh(url) == "bad_signature"
    state = m.holder.current.issuers[env.inter.key_id]
    assert state.base.meta.number == 10
    assert state.lookup(load_cert(env.pki.cards["fort"].cert).serial_number) is None


@pytest.mark.parametrize(("body", "result"), [(b"<html>404</html>", "not_a_crl"), (b"\x30\x03\x02", "parse_error")])
async def test_garbage_is_refused(env: Env, body: bytes, result: str) -> None:
    m = env.manager()
    publish(env.inter_src, body)
    assert await m.refresh(str(env.inter_src)) == result
    assert env.inter.key_id not in m.holder.current.issuers


async def test_wrong_issuer_and_missing_file(env: Env, pki: TestPki) -> None:
    m = env.manager()
    publish(env.inter_src, _ca(pki, CPS, "inter").crl(10))
    assert await m.refresh(str(env.inter_src)) == "wrong_issuer"
    assert await m.refresh(str(env.root_src)) == "unreachable"          # never published
    assert m.status[str(env.root_src)].failures == 1
    assert not m.holder.current.issuers


async def test_delta_on_the_right_base(env: Env) -> None:
    serial = load_cert(env.pki.cards["fort"].cert).serial_number
    day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    m = env.manager(env.config([str(env.inter_src), str(env.delta_src)]))
    publish(env.inter_src, env.inter.crl(11, [(1000, day, x509.ReasonFlags.certificate_hold)]))
    assert await m.refresh(str(env.inter_src)) == "updated"
    publish(env.delta_src, env.inter.crl(12, [(serial, day, KC), (1000, day, x509.ReasonFlags.remove_from_crl)],
                                         delta_of=11))
    assert await m.refresh(str(env.delta_src)) == "updated"
    state = m.holder.current.issuers[env.inter.key_id]
    assert state.base.meta.number == 11
    assert state.delta is not None and state.delta.meta.base_number == 11 and state.delta.meta.number == 12
    assert state.delta.source == str(env.delta_src)
    hit = state.lookup(serial)
    assert hit is not None and hit.reason == 1 and hit.date == day.timestamp()
    assert state.lookup(1000) is None                                     # held in the base, released by the delta

    # a delta for another base is refused, the one in force stays
    publish(env.delta_src, env.inter.crl(60, delta_of=50))
    assert await m.refresh(str(env.delta_src)) == "delta_base_mismatch"
    state = m.holder.current.issuers[env.inter.key_id]
    assert state.delta is not None and state.delta.meta.number == 12

    # an older delta on the same base is a rollback; a newer one replaces it
    publish(env.delta_src, env.inter.crl(13, delta_of=11))
    assert await m.refresh(str(env.delta_src)) == "updated"
    assert m.holder.current.issuers[env.inter.key_id].lookup(serial) is None
    publish(env.delta_src, env.inter.crl(12, [(serial, day, KC)], delta_of=11))
    assert await m.refresh(str(env.delta_src)) == "rollback"


async def test_new_base_drops_or_keeps_the_delta(env: Env) -> None:
    m = env.manager(env.config([str(env.inter_src), str(env.delta_src)]))
    publish(env.inter_src, env.inter.crl(11))
    publish(env.delta_src, env.inter.crl(13, [(55, datetime.now(UTC) - timedelta(hours=1), None)], delta_of=11))
    assert await m.refresh(str(env.inter_src)) == "updated"
    assert await m.refresh(str(env.delta_src)) == "updated"
    publish(env.inter_src, env.inter.crl(12))                             # older than the delta, on its base
    assert await m.refresh(str(env.inter_src)) == "updated"
    state = m.holder.current.issuers[env.inter.key_id]
    assert state.base.meta.number == 12 and state.delta is not None and state.lookup(55) is not None
    publish(env.inter_src, env.inter.crl(13))                             # a base as new as the delta
    assert await m.refresh(str(env.inter_src)) == "updated"
    state = m.holder.current.issuers[env.inter.key_id]
    assert state.base.meta.number == 13 and state.delta is None and state.lookup(55) is None


async def test_delta_before_its_base_waits_for_it(env: Env) -> None:
    m = env.manager(env.config([str(env.delta_src), str(env.inter_src)]))
    publish(env.delta_src, env.inter.crl(12, [(66, datetime.now(UTC) - timedelta(hours=1), KC)], delta_of=11))
    publish(env.inter_src, env.inter.crl(11))
    assert await m.refresh(str(env.delta_src)) == "delta_without_base"
    assert env.inter.key_id not in m.holder.current.issuers
    assert await m.refresh(str(env.inter_src)) == "updated"
    state = m.holder.current.issuers[env.inter.key_id]
    assert state.delta is not None and state.lookup(66) is not None
    assert m.status[str(env.delta_src)].last_result == "updated"


async def test_refresh_all(env: Env) -> None:
    publish(env.inter_src, env.inter.crl(10))
    m = env.manager()
    results = await m.refresh_all()
    assert results == {str(env.inter_src): "updated", str(env.root_src): "unreachable"}


# -- cache -----------------------------------------------------------------------------------------------
def assert_clean(directory: Path) -> None:
    names = sorted(p.name for p in directory.iterdir())
    assert names, "empty cache"
    assert all(n.endswith((".crl", ".json")) and not n.startswith(".") and ".tmp" not in n for n in names), names


async def test_cache_files_written(env: Env) -> None:
    der = env.inter.crl(10)
    pem = env.root.crl(20, pem=True)
    publish(env.inter_src, der)
    publish(env.root_src, pem)
    m = env.manager()
    assert await m.refresh_all() == {str(env.inter_src): "updated", str(env.root_src): "updated"}
    cache = m.cache
    assert cache is not None
    inter_path = cache.crl_path(str(env.inter_src))
    assert inter_path == env.tmp / "state" / "crl" / f"{slug(str(env.inter_src))}.crl"
    assert inter_path.read_bytes() == der
    assert cache.read_crl(str(env.root_src)) == x509.load_pem_x509_crl(pem).public_bytes(Encoding.DER)
    status = json.loads(cache.status_path(str(env.inter_src)).read_text())
    assert status["url"] == str(env.inter_src) and status["last_result"] == "updated"
    assert status["etag"].startswith("file:") and status["last_error"] is None
    assert status["last_success"] >= status["last_attempt"]
    assert_clean(cache.directory)
    assert len(list(cache.directory.iterdir())) == 4

    # a failure is recorded in the status, the CRL file is untouched
    publish(env.inter_src, b"garbage")
    assert await m.refresh(str(env.inter_src)) == "not_a_crl"
    assert inter_path.read_bytes() == der
    assert cache.read_status(str(env.inter_src))["last_result"] == "not_a_crl"
    assert_clean(cache.directory)


async def test_restart_loads_the_cache_bases_before_deltas(env: Env) -> None:
    serial = load_cert(env.pki.cards["fort"].cert).serial_number
    revoked = [(serial, datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3), KC)]
    # the delta source is listed first: the cache must still install its base first
    config = env.config([str(env.delta_src), str(env.inter_src), str(env.root_src)])
    publish(env.inter_src, env.inter.crl(11))
    publish(env.delta_src, env.inter.crl(12, revoked, delta_of=11))
    publish(env.root_src, env.root.crl(30))
    first = env.manager(config)
    await first.refresh(str(env.inter_src))
    await first.refresh(str(env.delta_src))
    await first.refresh(str(env.root_src))
    assert first.ready

    again = env.manager(config)                      # a restart: new manager, new holder, same cache
    assert not again.holder.current.issuers and not again.ready
    await again.load_cache()
    issuers = again.holder.current.issuers
    assert set(issuers) == {env.inter.key_id, env.root.key_id}
    state = issuers[env.inter.key_id]
    assert state.base.meta.number == 11 and state.delta is not None and state.delta.meta.number == 12
    assert state.lookup(serial) is not None
    assert issuers[env.root.key_id].base.meta.number == 30
    for url in (env.delta_src, env.inter_src, env.root_src):
        st = again.status[str(url)]
        assert st.meta is not None and st.last_result == "updated" and st.last_success is not None
    assert again.ready
    # the validators came back too: an unchanged file is not read again
    assert await again.refresh(str(env.inter_src)) == "not_modified"


async def test_start_uses_the_cache_then_fetches_what_it_lacks(env: Env) -> None:
    publish(env.inter_src, env.inter.crl(10))
    publish(env.root_src, env.root.crl(20))
    first = env.manager()
    await first.refresh(str(env.inter_src))
    publish(env.inter_src, env.inter.crl(15))       # newer on the source; start() does not fetch it (cached)
    again = env.manager()
    await again.start()
    assert again.holder.current.issuers[env.inter.key_id].base.meta.number == 10
    assert again.holder.current.issuers[env.root.key_id].base.meta.number == 20
    assert again.status[str(env.root_src)].last_result == "updated"
    assert again.ready


async def test_garbage_in_the_cache_is_skipped(env: Env) -> None:
    publish(env.inter_src, env.inter.crl(10))
    m = env.manager()
    await m.refresh(str(env.inter_src))
    assert m.cache is not None
    atomic_write(m.cache.crl_path(str(env.inter_src)), b"<html>not a crl</html>")
    again = env.manager()
    await again.load_cache()
    assert not again.holder.current.issuers
    assert again.status[str(env.inter_src)].meta is None
    assert again.status[str(env.inter_src)].etag is None          # so the next refresh reads the source again
    assert again.status[str(env.inter_src)].last_result == "updated"
    assert await again.refresh(str(env.inter_src)) == "updated"


async def test_corrupt_cache_does_not_stop_the_start(env: Env) -> None:
    publish(env.inter_src, env.inter.crl(10))
    m = env.manager()
    await m.refresh(str(env.inter_src))
    assert m.cache is not None
    path = m.cache.crl_path(str(env.inter_src))
    der = bytearray(path.read_bytes())
    pos = bytes(der).index(b"AC IGC-SANTE FORT PERSONNES") - 2
    assert der[pos] == 0x0C
    der[pos] = 0x0D                                   # one bit flipped on disk, inside the issuer name
    path.write_bytes(bytes(der))
    again = env.manager()
    await again.load_cache()
    assert not again.holder.current.issuers


async def test_refresh_survives_a_malformed_issuer_name(env: Env) -> None:
    """Served by a source, the same bytes only fail that fetch: the CRL in force stays."""
    publish(env.inter_src, env.inter.crl(10))
    m = env.manager()
    assert await m.refresh(str(env.inter_src)) == "updated"
    der = bytearray(env.inter.crl(11))
    pos = bytes(der).index(b"AC IGC-SANTE FORT PERSONNES") - 2
    der[pos] = 0x0D
    publish(env.inter_src, bytes(der))
    assert await m.refresh(str(env.inter_src)) not in ("updated", "unchanged", "not_modified")
    assert m.status[str(env.inter_src)].failures == 1
    assert m.holder.current.issuers[env.inter.key_id].base.meta.number == 10


async def test_a_manager_without_cache_dir(env: Env) -> None:
    config = env.config()
    m = CrlManager(replace(config, crl=replace(config.crl, cache_dir=None)), RevocationHolder(), clock=Clock())
    assert m.cache is None
    await m.load_cache()                              # nothing to load, no error
    publish(env.inter_src, env.inter.crl(10))
    assert await m.refresh(str(env.inter_src)) == "updated"
    assert not (env.tmp / "state").exists()


async def test_large_crls_go_through_the_helper_process_as_files(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above THREAD_LIMIT the CRL is sent by path and mapped back; the cache keeps DER; no temp file stays."""
    import sniproxy.crl.manager as manager_mod

    monkeypatch.setattr(manager_mod, "THREAD_LIMIT", 0)
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    der = env.inter.crl(10, [(4242, when, KC), (2**70 + 5, when, None)])
    publish(env.inter_src, der)
    publish(env.root_src, env.root.crl(20, pem=True))
    m = env.manager()
    try:
        assert await m.refresh_all() == {str(env.inter_src): "updated", str(env.root_src): "updated"}
        state = m.holder.current.issuers[env.inter.key_id]
        hit = state.lookup(4242)
        assert hit is not None and hit.reason == 1 and hit.date == when.timestamp()
        assert state.lookup(2**70 + 5) is not None and state.lookup(4243) is None
        assert not isinstance(state.base.index.der, bytes)          # mapped from the cache file
        cache = m.cache
        assert cache is not None
        assert cache.read_crl(str(env.inter_src)) == der
        assert cache.read_crl(str(env.root_src)) == x509.load_pem_x509_crl(
            env.root_src.read_bytes()).public_bytes(Encoding.DER)
        assert_clean(cache.directory)
        publish(env.inter_src, b"\x30\x03\x02\x01\x01")              # DER-looking garbage, refused in the helper
        assert await m.refresh(str(env.inter_src)) == "parse_error"
        publish(env.inter_src, env.inter.crl(9))                     # a rollback, refused at install
        assert await m.refresh(str(env.inter_src)) == "rollback"
        assert_clean(cache.directory)
        assert m.holder.current.issuers[env.inter.key_id].lookup(4242) is not None
    finally:
        m.close()
    again = env.manager()
    try:
        await again.load_cache()
        assert again.holder.current.issuers[env.inter.key_id].lookup(4242) is not None
        assert cache.read_crl(str(env.inter_src)) == der                  # the cache file is read, not rewritten
        assert_clean(cache.directory)
    finally:
        again.close()


async def test_large_crls_without_cache_leave_no_file(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import sniproxy.crl.manager as manager_mod

    monkeypatch.setattr(manager_mod, "THREAD_LIMIT", 0)
    config = env.config()
    m = CrlManager(replace(config, crl=replace(config.crl, cache_dir=None)), RevocationHolder(), clock=Clock())
    publish(env.inter_src, env.inter.crl(10, [(77, datetime.now(UTC) - timedelta(days=1), None)]))
    try:
        assert await m.refresh(str(env.inter_src)) == "updated"
        workdir = m._tmpdir
        assert workdir is not None and list(workdir.iterdir()) == []
        assert m.holder.current.issuers[env.inter.key_id].lookup(77) is not None
    finally:
        m.close()
    assert not workdir.exists()
    assert m.holder.current.issuers[env.inter.key_id].lookup(77) is not None   # still mapped after close


def test_stale_temp_files_are_removed_only_when_old(tmp_path: Path) -> None:
    cache = CrlCache(tmp_path)
    old, new, kept = tmp_path / ".incoming.a.tmp", tmp_path / ".index.b.tmp", tmp_path / "x.crl"
    for f in (old, new, kept):
        f.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert cache.remove_stale_temps(3600) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".index.b.tmp", "x.crl"]


# -- readiness and report -------------------------------------------------------------------------------
async def test_problems_and_ready(env: Env) -> None:
    clock = Clock()
    m = env.manager(clock=clock)
    inter_name, root_name = env.inter.cert.subject.rfc4514_string(), env.root.cert.subject.rfc4514_string()
    assert sorted(m.problems()) == sorted([f"{FORT}: no CRL for {inter_name}", f"{FORT}: no CRL for {root_name}"])
    assert not m.ready and not m.check_readiness()

    next_update = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    publish(env.inter_src, env.inter.crl(10, next_update=next_update))
    publish(env.root_src, env.root.crl(20))
    await m.refresh(str(env.inter_src))
    assert m.problems() == [f"{FORT}: no CRL for {root_name}"]
    await m.refresh(str(env.root_src))
    assert m.problems() == [] and m.ready and m.check_readiness()

    clock.t = next_update.timestamp() + 1
    (problem,) = m.problems()
    assert problem.startswith(f"{FORT}: CRL of {inter_name} stale since ")
    assert next_update.isoformat(timespec="seconds") in problem
    assert not m.ready and not m.check_readiness()
    assert m.problems(now=next_update.timestamp()) == []           # `now` may be given


async def test_grace_keeps_the_set_ready(env: Env) -> None:
    clock = Clock()
    m = env.manager(env.config({"sources": [str(env.inter_src), str(env.root_src)], "stale": {"grace": "1h"}}),
                    clock=clock)
    next_update = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    publish(env.inter_src, env.inter.crl(10, next_update=next_update))
    publish(env.root_src, env.root.crl(20))
    await m.refresh_all()
    clock.t = next_update.timestamp() + 1800
    assert m.ready and m.check_readiness()
    clock.t = next_update.timestamp() + 3601
    assert not m.ready and "stale since" in m.problems()[0]


async def test_report_rows(env: Env) -> None:
    clock = Clock()
    m = env.manager(clock=clock)
    publish(env.inter_src, env.inter.crl(10, [(1, datetime.now(UTC) - timedelta(days=1), None),
                                              (2, datetime.now(UTC) - timedelta(days=1), KC)]))
    await m.refresh(str(env.inter_src))
    await m.refresh(str(env.root_src))
    rows = {r["url"]: r for r in m.report()}
    row = rows[str(env.inter_src)]
    assert row["authorities"] == [FORT] and row["kind"] == "file"
    assert row["issuer"] == env.inter.cert.subject.rfc4514_string()
    assert row["crl_number"] == 10 and row["delta_of"] is None and row["entries"] == 2
    assert row["last_result"] == "updated" and row["last_error"] is None and row["stale"] is False
    assert 9 * 60 <= row["age_s"] <= 12 * 60
    assert row["last_attempt"] is not None and row["next_update"] > row["this_update"]
    missing = rows[str(env.root_src)]
    assert "issuer" not in missing and "crl_number" not in missing
    assert missing["last_result"] == "unreachable" and missing["last_error"]
    clock.t += 8 * 86400
    assert {r["url"]: r for r in m.report()}[str(env.inter_src)]["stale"] is True


# -- CrlCache on its own ---------------------------------------------------------------------------------
def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "x.crl"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.crl"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.crl"
    atomic_write(target, b"good")

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sniproxy.crl.cache.os.replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"torn")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["x.crl"]


def test_cache_reads(tmp_path: Path) -> None:
    cache = CrlCache(tmp_path / "c")
    url = "http://crl.example/a.crl"
    assert cache.read_crl(url) is None and cache.read_status(url) == {}
    cache.write_crl(url, b"\x30\x00")
    cache.write_status(url, {"etag": '"x"', "last_result": "updated"})
    assert cache.read_crl(url) == b"\x30\x00"
    assert cache.read_status(url) == {"url": url, "etag": '"x"', "last_result": "updated"}
    cache.status_path(url).write_text("{not json")
    assert cache.read_status(url) == {}
    cache.status_path(url).write_text("[1, 2]")
    assert cache.read_status(url) == {}
    assert slug(url) == slug(url) and len(slug(url)) == 24 and slug(url) != slug(url + "x")
    assert cache.crl_path(url).stem == cache.status_path(url).stem == slug(url)
