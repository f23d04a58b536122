"""sniproxy.crl.validate: decoding, issuer and signature, dates, rollback and delta-base rules."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.crl.validate import (
    SKEW_SECONDS,
    CrlMeta,
    CrlRejected,
    ca_key,
    check_delta_base,
    check_not_older,
    decode,
    find_issuer,
    signed_by,
    validate,
)
from sniproxy.demo.crls import load_cert, load_key
from sniproxy.demo.crls import make_crl as _make_crl
from sniproxy.demo.pki import TestPki, build

FORT = "igc-sante-fort-pp"
NOW = datetime.now(UTC).replace(microsecond=0)


def make_crl(*args: Any, **kwargs: Any) -> bytes:
    """``testcrl.make_crl`` dated from this module's NOW, the instant every test validates at: its own
    default (the real clock at the call) drifted past NOW's skew when the suite ran for over 10 minutes
    before these tests, and valid CRLs were refused as ``future_this_update``."""
    kwargs.setdefault("this_update", NOW - timedelta(minutes=5))
    return _make_crl(*args, **kwargs)


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    # One PKI for the whole session: build() reuses a complete PKI already in the folder.
    return build(tmp_path_factory.getbasetemp() / "crl-testpki")


@pytest.fixture(scope="module")
def inter(pki: TestPki) -> Ca:
    files = pki.authorities[FORT]
    key = load_key(files.intermediate_keys[0])
    assert isinstance(key, rsa.RSAPrivateKey)
    return Ca(load_cert(files.intermediates[0]), key)


@pytest.fixture(scope="module")
def root(pki: TestPki) -> Ca:
    files = pki.authorities[FORT]
    key = load_key(files.root_keys[0])
    assert isinstance(key, rsa.RSAPrivateKey)
    return Ca(load_cert(files.roots[0]), key)


@pytest.fixture(scope="module")
def other(pki: TestPki) -> Ca:
    files = pki.authorities["igc-cps-2ter"]
    key = load_key(files.intermediate_keys[0])
    assert isinstance(key, rsa.RSAPrivateKey)
    return Ca(load_cert(files.intermediates[0]), key)


def rejected(exc: pytest.ExceptionInfo[CrlRejected], reason: str) -> CrlRejected:
    err = exc.value
    assert err.reason == reason, str(err)
    assert str(err).startswith(f"{reason}: ")
    return err


# -- DER surgery: re-sign a CRL whose TBS was edited (what the builder refuses to make) ---------------
def _tlv(buf: bytes, pos: int) -> tuple[int, int]:
    """Content start and end of the TLV at ``pos``."""
    n = buf[pos + 1]
    i = pos + 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(buf[i:i + k], "big")
        i += k
    return i, i + n


def _items(content: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(content):
        _, end = _tlv(content, pos)
        out.append(content[pos:end])
        pos = end
    return out


def _enc(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def resign(der: bytes, key: rsa.RSAPrivateKey, edit: Callable[[list[bytes]], list[bytes]]) -> bytes:
    """``der`` with its TBSCertList items passed through ``edit`` and signed again with ``key``."""
    start, end = _tlv(der, 0)
    tbs, alg, _sig = _items(der[start:end])
    ts, te = _tlv(tbs, 0)
    new_tbs = _enc(0x30, b"".join(edit(_items(tbs[ts:te]))))
    signature = key.sign(new_tbs, padding.PKCS1v15(), hashes.SHA256())
    return _enc(0x30, new_tbs + alg + _enc(0x03, b"\x00" + signature))


def _is_time(item: bytes) -> bool:
    return item[0] in (0x17, 0x18)


def test_resign_helper_round_trips(inter: Ca) -> None:
    der = make_crl(inter.cert, inter.key, number=3)
    again = resign(der, inter.key, lambda items: items)
    assert again == der  # PKCS#1 v1.5 is deterministic: the same TBS gives the same bytes


# -- decode ------------------------------------------------------------------------------------------
def test_decode_der(inter: Ca) -> None:
    crl = decode(make_crl(inter.cert, inter.key, number=7))
    assert crl.issuer == inter.cert.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7


def test_decode_pem_with_leading_whitespace(inter: Ca) -> None:
    pem = make_crl(inter.cert, inter.key, number=8, pem=True)
    assert pem.startswith(b"-----BEGIN X509 CRL-----")
    crl = decode(b"\r\n  \n" + pem)
    assert crl.issuer == inter.cert.subject
    assert crl.public_bytes(Encoding.PEM) == pem


def test_decode_html_error_page() -> None:
    body = b"\n<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"
    with pytest.raises(CrlRejected) as exc:
        decode(body)
    err = rejected(exc, "not_a_crl")
    assert err.message == f"body is HTML ({len(body)} bytes)"


@pytest.mark.parametrize("data", [b"hello world", b"", b"   ", b"\x00\x01\x02", b"%PDF-1.4"])
def test_decode_garbage(data: bytes) -> None:
    with pytest.raises(CrlRejected) as exc:
        decode(data)
    assert rejected(exc, "not_a_crl").message == f"body is not DER or PEM ({len(data)} bytes)"


def test_decode_truncated_der(inter: Ca) -> None:
    der = make_crl(inter.cert, inter.key)
    with pytest.raises(CrlRejected) as exc:
        decode(der[: len(der) // 2])
    assert str(len(der) // 2) in rejected(exc, "parse_error").message


def test_decode_der_with_trailing_bytes_is_refused(inter: Ca) -> None:
    der = make_crl(inter.cert, inter.key)
    with pytest.raises(CrlRejected) as exc:
        decode(der + b"\x00")
    rejected(exc, "parse_error")


def test_decode_pem_armour_around_garbage() -> None:
    with pytest.raises(CrlRejected) as exc:
        decode(b"-----BEGIN X509 CRL-----\nbm90IGEgY3Js\n-----END X509 CRL-----\n")
    rejected(exc, "parse_error")


def test_crl_rejected_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(CrlRejected("bad_signature", "signature does not verify")))
    assert (err.reason, err.message) == ("bad_signature", "signature does not verify")
    assert str(err) == "bad_signature: signature does not verify"


def test_decode_a_certificate_is_not_a_crl(inter: Ca) -> None:
    with pytest.raises(CrlRejected) as exc:
        decode(inter.cert.public_bytes(Encoding.DER))
    rejected(exc, "parse_error")


def test_decode_bad_version_is_a_parse_error(inter: Ca) -> None:
    der = make_crl(inter.cert, inter.key)
    # version INTEGER 1 (v2) -> 0 inside the TBS (02 01 01 is its first item)
    bad = resign(der, inter.key, lambda items: [b"\x02\x01\x00", *items[1:]])
    with pytest.raises(CrlRejected) as exc:
        decode(bad)
    rejected(exc, "parse_error")


# -- issuer and signature ----------------------------------------------------------------------------
def test_find_issuer_picks_the_signing_ca(inter: Ca, root: Ca, other: Ca) -> None:
    crl = decode(make_crl(inter.cert, inter.key))
    assert find_issuer(crl, [other.cert, root.cert, inter.cert]) == inter.cert
    crl_root = decode(make_crl(root.cert, root.key))
    assert find_issuer(crl_root, [other.cert, inter.cert, root.cert]) == root.cert


def test_wrong_issuer(inter: Ca, root: Ca, other: Ca) -> None:
    crl = decode(make_crl(inter.cert, inter.key))
    with pytest.raises(CrlRejected) as exc:
        find_issuer(crl, [root.cert, other.cert])
    assert inter.cert.subject.rfc4514_string() in rejected(exc, "wrong_issuer").message
    with pytest.raises(CrlRejected) as exc:
        find_issuer(crl, [])
    rejected(exc, "wrong_issuer")


def test_bad_signature_same_name_other_key(inter: Ca) -> None:
    forged = decode(make_crl(inter.cert, rsa.generate_private_key(65537, 1024)))
    assert forged.issuer == inter.cert.subject
    with pytest.raises(CrlRejected) as exc:
        find_issuer(forged, [inter.cert])
    assert inter.cert.subject.rfc4514_string() in rejected(exc, "bad_signature").message


def test_bad_signature_with_an_ec_ca_of_the_same_name(inter: Ca) -> None:
    """A candidate whose key type does not match the signature is a mismatch, not a crash."""
    key = ec.generate_private_key(ec.SECP256R1())
    twin = (x509.CertificateBuilder().subject_name(inter.cert.subject).issuer_name(inter.cert.subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    crl = decode(make_crl(inter.cert, inter.key))
    with pytest.raises(CrlRejected) as exc:
        find_issuer(crl, [twin])
    rejected(exc, "bad_signature")
    # with the real CA listed after its EC twin, the real one is found
    assert find_issuer(crl, [twin, inter.cert]) == inter.cert


def test_find_issuer_among_two_cas_of_one_name(inter: Ca) -> None:
    """A re-keyed CA keeps its name: the CRL belongs to the copy whose key verifies it."""
    key = rsa.generate_private_key(65537, 1024)
    rekeyed = (x509.CertificateBuilder().subject_name(inter.cert.subject).issuer_name(inter.cert.subject)
               .public_key(key.public_key()).serial_number(2)
               .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
               .sign(key, hashes.SHA256()))
    assert find_issuer(decode(make_crl(inter.cert, inter.key)), [rekeyed, inter.cert]) == inter.cert
    assert find_issuer(decode(make_crl(rekeyed, key)), [inter.cert, rekeyed]) == rekeyed


def test_ca_key_is_name_and_key_not_certificate(inter: Ca) -> None:
    reissued = (x509.CertificateBuilder().subject_name(inter.cert.subject).issuer_name(inter.cert.issuer)
                .public_key(inter.cert.public_key()).serial_number(12345)
                .not_valid_before(NOW - timedelta(days=2)).not_valid_after(NOW + timedelta(days=9000))
                .sign(inter.key, hashes.SHA256()))
    assert reissued.fingerprint(hashes.SHA256()) != inter.cert.fingerprint(hashes.SHA256())
    assert ca_key(reissued) == ca_key(inter.cert)
    other_key = rsa.generate_private_key(65537, 1024)
    rekeyed = (x509.CertificateBuilder().subject_name(inter.cert.subject).issuer_name(inter.cert.subject)
               .public_key(other_key.public_key()).serial_number(1)
               .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
               .sign(other_key, hashes.SHA256()))
    assert ca_key(rekeyed) != ca_key(inter.cert)
    assert len(ca_key(inter.cert)) == 32


# -- validate ----------------------------------------------------------------------------------------
def test_validate_accepts_and_describes(inter: Ca, root: Ca) -> None:
    this = NOW - timedelta(hours=2)
    der = make_crl(inter.cert, inter.key, number=42, this_update=this, next_update=this + timedelta(days=3),
                   revoked=[(5, NOW - timedelta(days=1), x509.ReasonFlags.key_compromise),
                            (6, NOW - timedelta(days=1), None)])
    crl, ca, meta = validate(der, [root.cert, inter.cert], NOW)
    assert ca == inter.cert and len(crl) == 2
    assert meta == CrlMeta(
        issuer_key=ca_key(inter.cert), issuer=inter.cert.subject.rfc4514_string(), number=42, base_number=None,
        this_update=this.timestamp(), next_update=(this + timedelta(days=3)).timestamp(), entries=2,
        sha256=hashlib.sha256(der).hexdigest())
    assert meta.is_delta is False


def test_validate_pem_hashes_the_der(inter: Ca) -> None:
    pem = make_crl(inter.cert, inter.key, number=4, pem=True)
    der = x509.load_pem_x509_crl(pem).public_bytes(Encoding.DER)
    _, _, meta = validate(pem, [inter.cert], NOW)
    assert meta.sha256 == hashlib.sha256(der).hexdigest()


def test_validate_delta(inter: Ca) -> None:
    _, _, meta = validate(make_crl(inter.cert, inter.key, number=12, delta_of=11), [inter.cert], NOW)
    assert (meta.number, meta.base_number, meta.is_delta) == (12, 11, True)


def test_validate_rejects_wrong_issuer_and_bad_signature(inter: Ca, other: Ca) -> None:
    with pytest.raises(CrlRejected) as exc:
        validate(make_crl(inter.cert, inter.key), [other.cert], NOW)
    rejected(exc, "wrong_issuer")
    with pytest.raises(CrlRejected) as exc:
        validate(make_crl(inter.cert, other.key), [inter.cert], NOW)
    rejected(exc, "bad_signature")


def test_future_this_update(inter: Ca) -> None:
    der = make_crl(inter.cert, inter.key, this_update=NOW + timedelta(hours=1))
    with pytest.raises(CrlRejected) as exc:
        validate(der, [inter.cert], NOW)
    rejected(exc, "future_this_update")


def test_this_update_within_clock_skew(inter: Ca) -> None:
    edge = NOW + timedelta(seconds=SKEW_SECONDS)
    _, _, meta = validate(make_crl(inter.cert, inter.key, this_update=edge), [inter.cert], NOW)
    assert meta.this_update == edge.timestamp()
    past = make_crl(inter.cert, inter.key, this_update=edge + timedelta(seconds=1))
    with pytest.raises(CrlRejected) as exc:
        validate(past, [inter.cert], NOW)
    rejected(exc, "future_this_update")


def test_no_next_update(inter: Ca) -> None:
    der = make_crl(inter.cert, inter.key)

    def drop_next_update(items: list[bytes]) -> list[bytes]:
        # version, signature, issuer, thisUpdate, nextUpdate, ...
        assert _is_time(items[3]) and _is_time(items[4])
        return items[:4] + items[5:]

    bare = resign(der, inter.key, drop_next_update)
    assert x509.load_der_x509_crl(bare).next_update_utc is None
    with pytest.raises(CrlRejected) as exc:
        validate(bare, [inter.cert], NOW)
    assert rejected(exc, "no_next_update").message == "nextUpdate is absent"


def test_bad_dates_equal(inter: Ca) -> None:
    this = NOW - timedelta(hours=1)
    with pytest.raises(CrlRejected) as exc:
        validate(make_crl(inter.cert, inter.key, this_update=this, next_update=this), [inter.cert], NOW)
    assert rejected(exc, "bad_dates").message == "nextUpdate is not after thisUpdate"


def test_bad_dates_reversed(inter: Ca) -> None:
    der = make_crl(inter.cert, inter.key, this_update=NOW - timedelta(days=1),
                   next_update=NOW - timedelta(hours=1))
    swapped = resign(der, inter.key, lambda it: [*it[:3], it[4], it[3], *it[5:]])
    crl = x509.load_der_x509_crl(swapped)
    assert crl.next_update_utc is not None and crl.next_update_utc < crl.last_update_utc
    with pytest.raises(CrlRejected) as exc:
        validate(swapped, [inter.cert], NOW)
    assert rejected(exc, "bad_dates").message == "nextUpdate is not after thisUpdate"


def test_validate_accepts_a_stale_crl(inter: Ca) -> None:
    """Staleness is decided per handshake (state.check_chain), not at validation: an old CRL still revokes."""
    this = NOW - timedelta(days=30)
    _, _, meta = validate(make_crl(inter.cert, inter.key, this_update=this, next_update=this + timedelta(days=7)),
                          [inter.cert], NOW)
    assert meta.next_update < NOW.timestamp()


def test_malformed_issuer_name_is_refused_not_raised(inter: Ca) -> None:
    der = make_crl(inter.cert, inter.key)
    cn = b"AC IGC-SANTE FORT PERSONNES"
    pos = der.index(cn) - 2
    assert der[pos] == 0x0C  # UTF8String tag of the CN value, in the signed issuer name
    bad = bytearray(der)
    bad[pos] = 0x0D
    with pytest.raises(CrlRejected):
        validate(bytes(bad), [inter.cert], NOW)


# -- rollback ----------------------------------------------------------------------------------------
BASE_META = CrlMeta(issuer_key=b"k" * 32, issuer="CN=CA", number=10, base_number=None,
                    this_update=1_000_000.0, next_update=1_600_000.0, entries=3, sha256="a" * 64)


def meta(**kw: object) -> CrlMeta:
    return replace(BASE_META, **kw)  # type: ignore[arg-type]


def test_not_older_than_nothing() -> None:
    check_not_older(meta(number=1), None)
    check_not_older(meta(number=None), None)


def test_rollback_by_number() -> None:
    with pytest.raises(CrlRejected) as exc:
        check_not_older(meta(number=9, this_update=2_000_000.0, sha256="b" * 64), meta(number=10))
    err = rejected(exc, "rollback")
    assert "9" in err.message and "10" in err.message


def test_newer_number_wins_over_an_older_this_update() -> None:
    check_not_older(meta(number=11, this_update=500.0, sha256="b" * 64), meta(number=10))


def test_same_number_same_content_is_fine() -> None:
    check_not_older(meta(), meta())


def test_same_number_different_content() -> None:
    with pytest.raises(CrlRejected) as exc:
        check_not_older(meta(sha256="b" * 64, this_update=2_000_000.0), meta())
    assert "reused" in rejected(exc, "rollback").message


def test_without_numbers_this_update_decides() -> None:
    current = meta(number=None)
    with pytest.raises(CrlRejected) as exc:
        check_not_older(meta(number=None, this_update=999_999.0, sha256="b" * 64), current)
    assert rejected(exc, "rollback").message == "thisUpdate is older than the CRL in force"
    check_not_older(meta(number=None, this_update=1_000_001.0, sha256="b" * 64), current)
    check_not_older(meta(number=None, sha256="b" * 64), current)  # same thisUpdate: not older


def test_number_vanishing_is_a_rollback() -> None:
    with pytest.raises(CrlRejected) as exc:
        check_not_older(meta(number=None, this_update=2_000_000.0, sha256="b" * 64), meta(number=10))
    assert rejected(exc, "rollback").message == "CRL number missing where the CRL in force has one"


def test_number_appearing_compares_this_update() -> None:
    current = meta(number=None)
    check_not_older(meta(number=1, this_update=1_000_001.0, sha256="b" * 64), current)
    with pytest.raises(CrlRejected) as exc:
        check_not_older(meta(number=1, this_update=999_000.0, sha256="b" * 64), current)
    rejected(exc, "rollback")


# -- delta base (RFC 5280 5.2.4) ---------------------------------------------------------------------
def delta(number: int | None, base_number: int) -> CrlMeta:
    return meta(number=number, base_number=base_number, sha256="d" * 64)


def test_delta_without_base() -> None:
    with pytest.raises(CrlRejected) as exc:
        check_delta_base(delta(12, 10), None)
    assert "10" in rejected(exc, "delta_without_base").message


def test_delta_base_mismatch_lower_base() -> None:
    with pytest.raises(CrlRejected) as exc:
        check_delta_base(delta(13, 11), meta(number=10))
    err = rejected(exc, "delta_base_mismatch")
    assert "11" in err.message and "10" in err.message


def test_delta_base_mismatch_base_without_number() -> None:
    with pytest.raises(CrlRejected) as exc:
        check_delta_base(delta(13, 11), meta(number=None))
    rejected(exc, "delta_base_mismatch")


@pytest.mark.parametrize("number", [10, 9, 1])
def test_delta_obsolete(number: int) -> None:
    with pytest.raises(CrlRejected) as exc:
        check_delta_base(delta(number, 8), meta(number=10))
    rejected(exc, "delta_obsolete")


@pytest.mark.parametrize(("delta_number", "base_number", "base_in_force"),
                         [(11, 10, 10), (12, 9, 10), (None, 10, 10), (20, 5, 19)])
def test_delta_accepted(delta_number: int | None, base_number: int, base_in_force: int) -> None:
    check_delta_base(delta(delta_number, base_number), meta(number=base_in_force))


def test_validated_metas_chain_through_the_checks(inter: Ca) -> None:
    """The rules on real CRLs: base 10, base 11, a delta on 11, an older base refused."""
    def m(der: bytes) -> CrlMeta:
        return validate(der, [inter.cert], NOW)[2]

    b10 = m(make_crl(inter.cert, inter.key, number=10))
    b11 = m(make_crl(inter.cert, inter.key, number=11))
    d12 = m(make_crl(inter.cert, inter.key, number=12, delta_of=11))
    check_not_older(b11, b10)
    check_delta_base(d12, b11)
    with pytest.raises(CrlRejected) as exc:
        check_not_older(b10, b11)
    rejected(exc, "rollback")
    with pytest.raises(CrlRejected) as exc:
        check_delta_base(d12, b10)
    rejected(exc, "delta_base_mismatch")


def test_module_has_no_clock_of_its_own(inter: Ca) -> None:
    """``now`` decides: the same CRL is future at one instant and fine a minute later."""
    der = make_crl(inter.cert, inter.key, this_update=NOW + timedelta(seconds=SKEW_SECONDS + 60))
    with pytest.raises(CrlRejected):
        validate(der, [inter.cert], NOW)
    validate(der, [inter.cert], NOW + timedelta(minutes=2))


@pytest.mark.parametrize("kind", ["rsa", "rsa-pss", "ec", "ed25519"])
def test_signed_by_over_the_received_bytes_agrees_with_cryptography(kind: str) -> None:
    """validate checks the signature over the DER as received (fast path) for RSA and ECDSA, else via cryptography."""
    key: Any = {"rsa": lambda: rsa.generate_private_key(65537, 2048),
                "rsa-pss": lambda: rsa.generate_private_key(65537, 2048),
                "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
                "ed25519": ed25519.Ed25519PrivateKey.generate}[kind]()
    other: Any = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "AC SIG")])
    builder = (x509.CertificateRevocationListBuilder().issuer_name(name)
               .last_update(NOW - timedelta(hours=1)).next_update(NOW + timedelta(days=1))
               .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(7)
                                        .revocation_date(NOW - timedelta(days=1)).build()))
    if kind == "ed25519":
        crl = builder.sign(key, None)
    elif kind == "rsa-pss":
        crl = builder.sign(key, hashes.SHA256(),
                           rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH))
    else:
        crl = builder.sign(key, hashes.SHA256())
    der = crl.public_bytes(Encoding.DER)
    assert signed_by(crl, der, key.public_key()) is True is crl.is_signature_valid(key.public_key())
    assert signed_by(crl, der, other.public_key()) is False
    bad = bytearray(der)
    bad[der.index(b"AC SIG")] ^= 0x20                       # the issuer name changed after signing
    tampered = x509.load_der_x509_crl(bytes(bad))
    assert signed_by(tampered, bytes(bad), key.public_key()) is False
    assert tampered.is_signature_valid(key.public_key()) is False


def test_crl_meta_is_frozen() -> None:
    # shared between the CRL manager and every handshake's view (issue 11, mutation testing)
    with pytest.raises(AttributeError):
        BASE_META.number = 11  # type: ignore[misc]
