"""A real CRL: the IGC Santé TEST CA `TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS`, 2019-06-27 (1013 entries).

Provenance in tests/data/public/README.md. Checked: validation inside its window, the index against
cryptography's own reading of every entry, staleness after its nextUpdate, and that a changed byte is refused.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.crl.errors import CrlRejected
from sniproxy.crl.index import build_index
from sniproxy.crl.prepare import prepare
from sniproxy.crl.state import IssuerState, LoadedCrl, RevocationPolicy, RevocationView, check_chain
from sniproxy.crl.validate import ca_key, validate
from sniproxy.errors import Reason

REPO = Path(__file__).resolve().parents[3]
CRL_PEM = REPO / "tests/data/public/ACI-EL-ORG-TEST-2019-06-27.crl.pem"
ISSUER = REPO / "conf/pki/public/ACI-EL-ORG-TEST.pem"
ROOT = REPO / "conf/pki/public/ACR-EL-TEST.pem"
SAMPLE = REPO / "tests/data/samples/EE-TEST-EL-ORG-sign-testsign.test.asipsante.fr.pem"
LEAF_ONLY = RevocationPolicy(required=True, chain=False)   # only this CA's CRL is at hand, not the root's


@pytest.fixture(scope="module")
def pem() -> bytes:
    data = CRL_PEM.read_bytes()
    assert hashlib.sha256(data).hexdigest() == "cc890808e7dceedda4f34cc3b3d64011ae36c7c12e622595973bda5b20f8e5fe"
    return data


@pytest.fixture(scope="module")
def crl(pem: bytes) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(pem)


@pytest.fixture(scope="module")
def der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def ca() -> x509.Certificate:
    return x509.load_pem_x509_certificate(ISSUER.read_bytes())


@pytest.fixture(scope="module")
def window(crl: x509.CertificateRevocationList) -> tuple[datetime, datetime]:
    assert crl.next_update_utc is not None
    return crl.last_update_utc, crl.next_update_utc


def inside(window: tuple[datetime, datetime]) -> datetime:
    this, nxt = window
    return this + (nxt - this) / 2


def test_validate_accepts_it_inside_its_window(pem: bytes, der: bytes, ca: x509.Certificate,
                                               window: tuple[datetime, datetime]) -> None:
    this, nxt = window
    assert (this, nxt) == (datetime(2019, 6, 27, 22, 0, 9, tzinfo=UTC), datetime(2019, 7, 3, 22, 0, 9, tzinfo=UTC))
    for now in (this, inside(window), nxt):
        parsed, issuer, meta = validate(pem, [ca], now)
        assert issuer == ca and len(parsed) == 1013
        assert meta.entries == 1013
        assert meta.number == 0x0507 and meta.base_number is None and not meta.is_delta
        assert meta.issuer_key == ca_key(ca)
        assert "CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS" in meta.issuer
        assert (meta.this_update, meta.next_update) == (this.timestamp(), nxt.timestamp())
        assert meta.sha256 == hashlib.sha256(der).hexdigest()
    # the DER form is the same CRL
    assert validate(der, [ca], inside(window))[2].sha256 == hashlib.sha256(der).hexdigest()


def test_validate_refuses_it_before_its_this_update(pem: bytes, ca: x509.Certificate,
                                                    window: tuple[datetime, datetime]) -> None:
    with pytest.raises(CrlRejected) as exc:
        validate(pem, [ca], window[0] - timedelta(hours=1))
    assert exc.value.reason == "future_this_update"


def test_other_public_cas_do_not_sign_it(pem: bytes, window: tuple[datetime, datetime]) -> None:
    prod = x509.load_pem_x509_certificate((REPO / "conf/pki/public/ACI-EL-ORG.pem").read_bytes())
    root = x509.load_pem_x509_certificate(ROOT.read_bytes())
    with pytest.raises(CrlRejected) as exc:
        validate(pem, [prod, root], inside(window))
    assert exc.value.reason == "wrong_issuer"


def test_index_agrees_with_every_entry(crl: x509.CertificateRevocationList) -> None:
    idx = build_index(crl.public_bytes(Encoding.DER), len(crl))
    assert len(idx) == 1013
    for entry in crl:
        hit = idx.lookup(entry.serial_number)
        assert hit is not None and hit.serial == entry.serial_number
        assert hit.date == entry.revocation_date_utc.timestamp()
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            assert hit.reason is None
        else:
            assert hit.reason_name == reason.value
    serials = {e.serial_number for e in crl}
    for probe in (1, 2**64 + 1, max(serials) + 1, min(serials) - 1):
        if probe not in serials:
            assert idx.lookup(probe) is None


def test_prepare_converts_it_to_der(pem: bytes, der: bytes, ca: x509.Certificate,
                                    window: tuple[datetime, datetime]) -> None:
    p = prepare(pem, (ca.public_bytes(Encoding.DER),), inside(window).timestamp())
    assert p.index.der == der and p.meta.entries == len(p.index) == 1013


def _state(pem: bytes, ca: x509.Certificate, now: datetime) -> IssuerState:
    p = prepare(pem, (ca.public_bytes(Encoding.DER),), now.timestamp())
    return IssuerState(LoadedCrl(p.meta, p.index, str(CRL_PEM)))


def _lookalike(serial: int, issuer: x509.Certificate) -> x509.Certificate:
    """A certificate with ``serial`` under ``issuer``'s name (check_chain reads only the serial and the chain)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=lookalike"))
            .issuer_name(issuer.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(datetime(2019, 1, 1, tzinfo=UTC)).not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
            .sign(key, hashes.SHA256()))


def test_stale_after_its_next_update(pem: bytes, ca: x509.Certificate, window: tuple[datetime, datetime]) -> None:
    state = _state(pem, ca, inside(window))
    _, nxt = window
    assert state.fresh_until == nxt.timestamp()
    view = RevocationView().with_issuer(ca_key(ca), state)
    sample = x509.load_pem_x509_certificate(SAMPLE.read_bytes())
    assert sample.issuer == ca.subject and state.lookup(sample.serial_number) is None
    chain = [sample, ca, x509.load_pem_x509_certificate(ROOT.read_bytes())]
    assert check_chain(view, LEAF_ONLY, chain, inside(window).timestamp()).reason is None
    assert check_chain(view, LEAF_ONLY, chain, nxt.timestamp()).reason is None
    later = nxt.timestamp() + 1
    assert later > state.fresh_until
    verdict = check_chain(view, LEAF_ONLY, chain, later)
    assert verdict.reason is Reason.CRL_STALE and verdict.depth == 0
    assert "2019-07-03T22:00:09+00:00" in verdict.detail
    assert check_chain(view, RevocationPolicy(required=True, chain=False, grace=86400.0), chain,
                       later).reason is None
    today = datetime.now(UTC).timestamp()
    assert check_chain(view, LEAF_ONLY, chain, today).reason is Reason.CRL_STALE


def test_its_entries_revoke_even_when_stale(pem: bytes, crl: x509.CertificateRevocationList, ca: x509.Certificate,
                                            window: tuple[datetime, datetime]) -> None:
    entry = next(iter(crl))
    view = RevocationView().with_issuer(ca_key(ca), _state(pem, ca, inside(window)))
    chain = [_lookalike(entry.serial_number, ca), ca, x509.load_pem_x509_certificate(ROOT.read_bytes())]
    for now in (inside(window), datetime.now(UTC)):
        verdict = check_chain(view, LEAF_ONLY, chain, now.timestamp())
        assert verdict.reason is Reason.REVOKED
        assert verdict.revoked is not None and verdict.revoked.date == entry.revocation_date_utc.timestamp()
        assert entry.revocation_date_utc.isoformat() in verdict.detail


def _flip(der: bytes, pos: int) -> bytes:
    out = bytearray(der)
    out[pos] ^= 0x01
    return bytes(out)


def test_a_changed_byte_in_the_middle_is_refused(der: bytes, ca: x509.Certificate,
                                                 window: tuple[datetime, datetime]) -> None:
    with pytest.raises(CrlRejected) as exc:
        validate(_flip(der, len(der) // 2), [ca], inside(window))
    assert exc.value.reason in ("bad_signature", "parse_error")


@pytest.mark.parametrize("fraction", [0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 0.999])
def test_changed_bytes_across_the_crl_are_refused(der: bytes, ca: x509.Certificate,
                                                  window: tuple[datetime, datetime], fraction: float) -> None:
    pos = int(len(der) * fraction)
    for bit in (0x01, 0x80):
        out = bytearray(der)
        out[pos] ^= bit
        with pytest.raises(CrlRejected) as exc:
            validate(bytes(out), [ca], inside(window))
        assert exc.value.reason in ("bad_signature", "parse_error"), (pos, bit, exc.value)


def test_no_changed_byte_is_ever_accepted(der: bytes, ca: x509.Certificate,
                                          window: tuple[datetime, datetime]) -> None:
    """Every 53rd byte flipped: whatever the error, the CRL is never taken as valid."""
    now = inside(window)
    for pos in range(0, len(der), 53):
        try:
            validate(_flip(der, pos), [ca], now)
        except Exception:  # any refusal will do here; CrlRejected-only is tested above and below
            continue
        pytest.fail(f"CRL with byte {pos} changed was accepted")


def test_a_changed_tag_in_the_issuer_name_is_a_crl_rejection(der: bytes, ca: x509.Certificate,
                                                              window: tuple[datetime, datetime]) -> None:
    assert der[97] == 0x0C
    with pytest.raises(CrlRejected):
        validate(_flip(der, 97), [ca], inside(window))
