"""sniproxy.crl.state: base + delta lookup, freshness, the revocation view, and the verdict for a chain."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.crl.index import build_index
from sniproxy.crl.prepare import prepare
from sniproxy.crl.state import (
    IssuerState,
    LoadedCrl,
    RevocationHolder,
    RevocationPolicy,
    RevocationView,
    Verdict,
    check_chain,
)
from sniproxy.crl.validate import ca_key
from sniproxy.demo.crls import Entry, load_cert, load_key, make_crl
from sniproxy.demo.pki import TestPki, build
from sniproxy.errors import Reason

FORT = "igc-sante-fort-pp"
NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW.timestamp()
HOUR = 3600.0
KC = x509.ReasonFlags.key_compromise


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes


@dataclass(frozen=True)
class Chain:
    leaf: x509.Certificate
    inter: Ca
    root: Ca

    @property
    def certs(self) -> list[x509.Certificate]:
        return [self.leaf, self.inter.cert, self.root.cert]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.getbasetemp() / "crl-testpki")


@pytest.fixture(scope="module")
def chain(pki: TestPki) -> Chain:
    files = pki.authorities[FORT]
    return Chain(load_cert(pki.cards["fort"].cert),
                 Ca(load_cert(files.intermediates[0]), load_key(files.intermediate_keys[0])),
                 Ca(load_cert(files.roots[0]), load_key(files.root_keys[0])))


def loaded(ca: Ca, *, revoked: list[Entry] | None = None, number: int = 10, delta_of: int | None = None,
           next_update: datetime | None = None, source: str = "file") -> LoadedCrl:
    this = NOW - timedelta(days=1)
    der = make_crl(ca.cert, ca.key, revoked=revoked or [], number=number, delta_of=delta_of, this_update=this,
                   next_update=next_update or this + timedelta(days=7))
    p = prepare(der, (ca.cert.public_bytes(Encoding.DER),), T0)
    return LoadedCrl(p.meta, p.index, source)


def view_of(*states: tuple[Ca, IssuerState]) -> RevocationView:
    view = RevocationView()
    for ca, state in states:
        view = view.with_issuer(ca_key(ca.cert), state)
    return view


def fresh_view(chain: Chain, *, leaf: list[Entry] | None = None, inter: list[Entry] | None = None,
               inter_next: datetime | None = None, root_next: datetime | None = None) -> RevocationView:
    return view_of((chain.inter, IssuerState(loaded(chain.inter, revoked=leaf, next_update=inter_next))),
                   (chain.root, IssuerState(loaded(chain.root, revoked=inter, next_update=root_next))))


REQUIRED = RevocationPolicy(required=True)
REVOKED_AT = NOW - timedelta(hours=5)


def revoked_entry(cert: x509.Certificate, reason: x509.ReasonFlags | None = KC) -> Entry:
    return cert.serial_number, REVOKED_AT, reason


# -- IssuerState ---------------------------------------------------------------------------------------
def test_lookup_base_only(chain: Chain) -> None:
    state = IssuerState(loaded(chain.inter, revoked=[(111, REVOKED_AT, KC)]))
    hit = state.lookup(111)
    assert hit is not None and hit.reason == 1 and hit.date == REVOKED_AT.timestamp()
    assert state.lookup(112) is None


def test_delta_revocation_wins(chain: Chain) -> None:
    base = loaded(chain.inter, revoked=[(111, NOW - timedelta(days=3), x509.ReasonFlags.certificate_hold),
                                        (222, NOW - timedelta(days=3), None)])
    delta = loaded(chain.inter, number=11, delta_of=10,
                   revoked=[(111, NOW - timedelta(hours=2), KC), (333, NOW - timedelta(hours=1), None)])
    state = IssuerState(base, delta)
    hit = state.lookup(111)
    assert hit is not None and hit.reason == 1 and hit.date == (NOW - timedelta(hours=2)).timestamp()
    new = state.lookup(333)                      # only in the delta
    assert new is not None and new.reason is None
    old = state.lookup(222)                      # only in the base
    assert old is not None and old.date == (NOW - timedelta(days=3)).timestamp()
    assert state.lookup(444) is None


def test_delta_remove_from_crl_releases_a_hold(chain: Chain) -> None:
    base = loaded(chain.inter, revoked=[(111, NOW - timedelta(days=3), x509.ReasonFlags.certificate_hold)])
    delta = loaded(chain.inter, number=11, delta_of=10,
                   revoked=[(111, NOW - timedelta(hours=2), x509.ReasonFlags.remove_from_crl)])
    assert IssuerState(base).lookup(111) is not None
    assert IssuerState(base, delta).lookup(111) is None


def test_remove_from_crl_in_a_base_counts_as_revoked(chain: Chain) -> None:
    base = loaded(chain.inter, revoked=[(111, REVOKED_AT, x509.ReasonFlags.remove_from_crl)])
    hit = IssuerState(base).lookup(111)
    assert hit is not None and hit.reason == 8


def test_fresh_until_is_the_earliest_next_update(chain: Chain) -> None:
    this = NOW - timedelta(days=1)
    base = loaded(chain.inter, next_update=this + timedelta(days=7))
    soon = loaded(chain.inter, number=11, delta_of=10, next_update=this + timedelta(days=1))
    late = loaded(chain.inter, number=12, delta_of=10, next_update=this + timedelta(days=9))
    assert IssuerState(base).fresh_until == (this + timedelta(days=7)).timestamp()
    assert IssuerState(base, soon).fresh_until == (this + timedelta(days=1)).timestamp()
    assert IssuerState(base, late).fresh_until == (this + timedelta(days=7)).timestamp()


# -- view and holder -------------------------------------------------------------------------------------
def test_view_is_copied_on_write(chain: Chain) -> None:
    empty = RevocationView()
    state = IssuerState(loaded(chain.inter))
    one = empty.with_issuer(b"a", state)
    two = one.with_issuer(b"b", state)
    assert dict(empty.issuers) == {} and set(one.issuers) == {b"a"} and set(two.issuers) == {b"a", b"b"}
    assert (empty.generation, one.generation, two.generation) == (0, 1, 2)
    with pytest.raises(TypeError):
        two.issuers[b"c"] = state  # type: ignore[index]


def test_holder_swaps(chain: Chain) -> None:
    holder = RevocationHolder()
    assert holder.current.generation == 0 and not holder.current.issuers
    view = RevocationView().with_issuer(b"k", IssuerState(loaded(chain.inter)))
    holder.swap(view)
    assert holder.current is view


# -- check_chain ---------------------------------------------------------------------------------------
def test_good_chain(chain: Chain) -> None:
    verdict = check_chain(fresh_view(chain), REQUIRED, chain.certs, T0)
    assert verdict.reason is None and verdict.revoked is None and verdict.grace_issuers == []
    assert verdict.detail == ""


def test_revoked_leaf(chain: Chain) -> None:
    view = fresh_view(chain, leaf=[revoked_entry(chain.leaf)])
    verdict = check_chain(view, REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.REVOKED and verdict.depth == 0
    assert verdict.revoked is not None and verdict.revoked.serial == chain.leaf.serial_number
    assert verdict.revoked.reason == 1
    assert REVOKED_AT.isoformat() in verdict.detail          # e.g. 2026-01-01T10:00:00+00:00
    assert "keyCompromise" in verdict.detail
    assert f"{chain.leaf.serial_number:x}" in verdict.detail
    assert chain.inter.cert.subject.rfc4514_string() in verdict.detail and "depth 0" in verdict.detail


def test_revoked_leaf_without_reason_reads_unspecified(chain: Chain) -> None:
    view = fresh_view(chain, leaf=[revoked_entry(chain.leaf, None)])
    verdict = check_chain(view, REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.REVOKED and "reason unspecified" in verdict.detail


def test_revoked_intermediate(chain: Chain) -> None:
    view = fresh_view(chain, inter=[revoked_entry(chain.inter.cert, x509.ReasonFlags.ca_compromise)])
    verdict = check_chain(view, REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.REVOKED and verdict.depth == 1
    assert verdict.revoked is not None and verdict.revoked.serial == chain.inter.cert.serial_number
    assert "cACompromise" in verdict.detail and "depth 1" in verdict.detail
    assert chain.root.cert.subject.rfc4514_string() in verdict.detail


def test_crl_missing_for_the_root(chain: Chain) -> None:
    view = view_of((chain.inter, IssuerState(loaded(chain.inter))))
    verdict = check_chain(view, REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.CRL_MISSING and verdict.depth == 1
    assert chain.root.cert.subject.rfc4514_string() in verdict.detail


def test_crl_missing_for_the_intermediate(chain: Chain) -> None:
    view = view_of((chain.root, IssuerState(loaded(chain.root))))
    verdict = check_chain(view, REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.CRL_MISSING and verdict.depth == 0
    assert "no CRL" in verdict.detail and chain.inter.cert.subject.rfc4514_string() in verdict.detail


def test_crl_missing_everywhere(chain: Chain) -> None:
    verdict = check_chain(RevocationView(), REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.CRL_MISSING and verdict.depth == 0


def test_stale_fail_closed(chain: Chain) -> None:
    nu = NOW + timedelta(hours=1)
    view = fresh_view(chain, inter_next=nu)
    assert check_chain(view, REQUIRED, chain.certs, nu.timestamp()).reason is None   # at nextUpdate: still fresh
    verdict = check_chain(view, REQUIRED, chain.certs, nu.timestamp() + 1)
    assert verdict.reason is Reason.CRL_STALE and verdict.depth == 0
    assert "stale since" in verdict.detail and nu.isoformat() in verdict.detail


def test_stale_root_crl(chain: Chain) -> None:
    view = fresh_view(chain, root_next=NOW + timedelta(hours=1))
    verdict = check_chain(view, REQUIRED, chain.certs, T0 + 2 * HOUR)
    assert verdict.reason is Reason.CRL_STALE and verdict.depth == 1


def test_stale_within_grace_is_accepted_and_named(chain: Chain) -> None:
    nu = NOW + timedelta(hours=1)
    view = fresh_view(chain, inter_next=nu, root_next=nu)
    policy = RevocationPolicy(required=True, grace=6 * HOUR)
    verdict = check_chain(view, policy, chain.certs, nu.timestamp() + HOUR)
    assert verdict.reason is None
    assert verdict.grace_issuers == [chain.inter.cert.subject.rfc4514_string(),
                                     chain.root.cert.subject.rfc4514_string()]
    edge = check_chain(view, policy, chain.certs, nu.timestamp() + 6 * HOUR)
    assert edge.reason is None and len(edge.grace_issuers) == 2


def test_only_the_stale_issuer_is_in_grace(chain: Chain) -> None:
    view = fresh_view(chain, inter_next=NOW + timedelta(hours=1))
    verdict = check_chain(view, RevocationPolicy(required=True, grace=6 * HOUR), chain.certs, T0 + 2 * HOUR)
    assert verdict.reason is None and verdict.grace_issuers == [chain.inter.cert.subject.rfc4514_string()]


def test_stale_after_grace(chain: Chain) -> None:
    nu = NOW + timedelta(hours=1)
    view = fresh_view(chain, inter_next=nu)
    verdict = check_chain(view, RevocationPolicy(required=True, grace=6 * HOUR), chain.certs,
                          nu.timestamp() + 6 * HOUR + 1)
    assert verdict.reason is Reason.CRL_STALE and verdict.depth == 0


@pytest.mark.parametrize("grace", [None, 6 * HOUR])
def test_revocation_in_a_stale_crl_still_revokes(chain: Chain, grace: float | None) -> None:
    nu = NOW + timedelta(hours=1)
    view = fresh_view(chain, leaf=[revoked_entry(chain.leaf)], inter_next=nu)
    verdict = check_chain(view, RevocationPolicy(required=True, grace=grace), chain.certs,
                          nu.timestamp() + 30 * 24 * HOUR)
    assert verdict.reason is Reason.REVOKED and verdict.depth == 0


def test_grace_then_revoked_intermediate(chain: Chain) -> None:
    view = fresh_view(chain, inter=[revoked_entry(chain.inter.cert)], inter_next=NOW + timedelta(hours=1))
    verdict = check_chain(view, RevocationPolicy(required=True, grace=6 * HOUR), chain.certs, T0 + 2 * HOUR)
    assert verdict.reason is Reason.REVOKED and verdict.depth == 1


def test_revocation_deeper_in_the_chain_wins_over_staleness(chain: Chain) -> None:
    view = fresh_view(chain, inter=[revoked_entry(chain.inter.cert)], inter_next=NOW + timedelta(hours=1))
    verdict = check_chain(view, REQUIRED, chain.certs, T0 + 2 * HOUR)
    assert verdict.reason is Reason.REVOKED and verdict.depth == 1


def test_delta_in_the_view(chain: Chain) -> None:
    base = loaded(chain.inter)
    delta = loaded(chain.inter, number=11, delta_of=10, revoked=[revoked_entry(chain.leaf)],
                   next_update=NOW + timedelta(hours=1))
    view = view_of((chain.inter, IssuerState(base, delta)), (chain.root, IssuerState(loaded(chain.root))))
    verdict = check_chain(view, REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.REVOKED and verdict.depth == 0
    # the delta's nextUpdate (sooner than the base's) makes the issuer stale
    clean = view_of((chain.inter, IssuerState(base, loaded(chain.inter, number=11, delta_of=10,
                                                           next_update=NOW + timedelta(hours=1)))),
                    (chain.root, IssuerState(loaded(chain.root))))
    assert check_chain(clean, REQUIRED, chain.certs, T0).reason is None
    assert check_chain(clean, REQUIRED, chain.certs, T0 + 2 * HOUR).reason is Reason.CRL_STALE


def test_leaf_policy_checks_only_the_card(chain: Chain) -> None:
    leaf_only = RevocationPolicy(required=True, chain=False)
    revoked_inter = fresh_view(chain, inter=[revoked_entry(chain.inter.cert)])
    assert check_chain(revoked_inter, leaf_only, chain.certs, T0).reason is None
    assert check_chain(revoked_inter, REQUIRED, chain.certs, T0).reason is Reason.REVOKED
    no_root = view_of((chain.inter, IssuerState(loaded(chain.inter))))
    assert check_chain(no_root, leaf_only, chain.certs, T0).reason is None
    stale_root = fresh_view(chain, root_next=NOW + timedelta(hours=1))
    assert check_chain(stale_root, leaf_only, chain.certs, T0 + 2 * HOUR).reason is None
    revoked_leaf = fresh_view(chain, leaf=[revoked_entry(chain.leaf)])
    verdict = check_chain(revoked_leaf, leaf_only, chain.certs, T0)
    assert verdict.reason is Reason.REVOKED and verdict.depth == 0
    assert check_chain(RevocationView(), leaf_only, chain.certs, T0).reason is Reason.CRL_MISSING


def test_not_required_accepts_everything(chain: Chain) -> None:
    off = RevocationPolicy(required=False)
    assert check_chain(RevocationView(), off, chain.certs, T0).reason is None
    revoked = fresh_view(chain, leaf=[revoked_entry(chain.leaf)], inter=[revoked_entry(chain.inter.cert)])
    verdict = check_chain(revoked, off, chain.certs, T0 + 365 * 24 * HOUR)
    assert verdict.reason is None and verdict.revoked is None and verdict.grace_issuers == []


def test_the_trust_anchor_itself_is_not_looked_up(chain: Chain) -> None:
    """The root is the last certificate: nothing above it publishes a CRL for it."""
    view = fresh_view(chain, inter=[revoked_entry(chain.root.cert)])   # root listed in its own CRL
    assert check_chain(view, REQUIRED, chain.certs, T0).reason is None


def test_issuer_identity_is_name_and_key(chain: Chain, pki: TestPki) -> None:
    """A CRL of another CA (another name and key) gives no answer for this chain: CRL_MISSING."""
    files = pki.authorities["igc-sante-standard-pp"]
    other = Ca(load_cert(files.intermediates[0]), load_key(files.intermediate_keys[0]))
    view = view_of((other, IssuerState(loaded(other, revoked=[revoked_entry(chain.leaf)]))),
                   (chain.root, IssuerState(loaded(chain.root))))
    verdict = check_chain(view, REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.CRL_MISSING and verdict.depth == 0


def test_the_policy_of_an_authority_set() -> None:
    from sniproxy.config.model import AuthoritySet

    plain = AuthoritySet(name="a", roots=())
    assert RevocationPolicy.of(plain) == RevocationPolicy(required=False, chain=True, grace=None)
    crl = AuthoritySet(name="a", roots=(), crl_sources=("http://crl.example/a.crl",), crl_check="leaf",
                       crl_grace=3600.0)
    assert RevocationPolicy.of(crl) == RevocationPolicy(required=True, chain=False, grace=3600.0)
    dps = AuthoritySet(name="a", roots=(), crl_from_certificates=True, crl_check="chain")
    assert RevocationPolicy.of(dps) == RevocationPolicy(required=True, chain=True, grace=None)


# -- the values and their shapes -------------------------------------------------------------------------
def test_the_state_is_frozen(chain: Chain) -> None:
    """Every handshake reads the view in force without a lock: no one may change it in place."""
    crl = loaded(chain.inter)
    state = IssuerState(crl)
    view = view_of((chain.inter, state))
    with pytest.raises(FrozenInstanceError):
        crl.source = "elsewhere"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        state.delta = crl  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        view.generation = 0  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        REQUIRED.required = False  # type: ignore[misc]


def test_no_instance_dict(chain: Chain) -> None:
    """Slots: a verdict per handshake, and no misspelled attribute set silently (``holder.curent = view``)."""
    crl = loaded(chain.inter)
    holder = RevocationHolder()
    for obj in (crl, IssuerState(crl), RevocationView(), REQUIRED, Verdict(), holder):
        assert not hasattr(obj, "__dict__"), type(obj).__name__
    with pytest.raises(AttributeError):
        holder.curent = RevocationView()  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        Verdict().reasons = None  # type: ignore[attr-defined]


def test_an_accepted_verdict_names_nothing(chain: Chain) -> None:
    verdict = check_chain(fresh_view(chain), REQUIRED, chain.certs, T0)
    assert (verdict.reason, verdict.detail, verdict.revoked, verdict.depth, verdict.grace_issuers) == \
        (None, "", None, 0, [])
    assert Verdict().depth == 0


def test_a_revocation_with_an_unreadable_date_is_logged_as_such(chain: Chain) -> None:
    """An entry whose date the index cannot read (date and reason None): still revoked, on "unknown date"."""
    good = loaded(chain.inter, revoked=[revoked_entry(chain.leaf)])
    stamp = REVOKED_AT.strftime("%y%m%d%H%M%SZ").encode()
    der = bytes(good.index.der)
    assert der.count(stamp) == 1
    index = build_index(der.replace(stamp, stamp[:-2] + b"XZ"), 1)
    view = view_of((chain.inter, IssuerState(LoadedCrl(good.meta, index, "file"))),
                   (chain.root, IssuerState(loaded(chain.root))))
    verdict = check_chain(view, REQUIRED, chain.certs, T0)
    assert verdict.reason is Reason.REVOKED and verdict.revoked is not None and verdict.revoked.date is None
    assert verdict.detail == (f"serial {chain.leaf.serial_number:x} revoked on unknown date reason unspecified "
                              f"by {chain.inter.cert.subject.rfc4514_string()} (depth 0)")


def test_a_lone_certificate_has_no_issuer_to_look_up(chain: Chain) -> None:
    """A chain of one certificate (a trust anchor presented alone): nothing above it publishes a CRL."""
    for policy in (REQUIRED, RevocationPolicy(required=True, chain=False)):
        verdict = check_chain(RevocationView(), policy, [chain.root.cert], T0)
        assert verdict.reason is None and verdict.depth == 0


def test_leaf_policy_on_a_chain_of_two(chain: Chain) -> None:
    """A card issued straight by the root: the leaf policy still checks the card in the root's CRL."""
    leaf_only = RevocationPolicy(required=True, chain=False)
    two = [chain.inter.cert, chain.root.cert]
    revoked = view_of((chain.root, IssuerState(loaded(chain.root, revoked=[revoked_entry(chain.inter.cert)]))))
    verdict = check_chain(revoked, leaf_only, two, T0)
    assert verdict.reason is Reason.REVOKED and verdict.depth == 0
    assert check_chain(RevocationView(), leaf_only, two, T0).reason is Reason.CRL_MISSING


def test_the_first_stale_issuer_is_the_reason(chain: Chain) -> None:
    """Stale at depth 0 and missing (or stale) at depth 1: the verdict is the card's issuer's, at depth 0."""
    nu = NOW + timedelta(hours=1)
    stale_then_missing = view_of((chain.inter, IssuerState(loaded(chain.inter, next_update=nu))))
    verdict = check_chain(stale_then_missing, REQUIRED, chain.certs, T0 + 2 * HOUR)
    assert verdict.reason is Reason.CRL_STALE and verdict.depth == 0
    assert verdict.detail == (f"CRL of {chain.inter.cert.subject.rfc4514_string()} stale since {nu.isoformat()} "
                              f"(depth 0)")
    both_stale = fresh_view(chain, inter_next=nu, root_next=nu)
    verdict = check_chain(both_stale, REQUIRED, chain.certs, T0 + 2 * HOUR)
    assert verdict.reason is Reason.CRL_STALE and verdict.depth == 0
