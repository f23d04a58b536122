"""sniproxy.crl.index and .entries: the flat revocation index (sorted 64-bit keys, entry offsets in the DER)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sniproxy.crl.entries import NO_REASON, read_entry, scan
from sniproxy.crl.errors import CrlRejected
from sniproxy.crl.index import (
    EMPTY_INDEX,
    REASON_CODES,
    REMOVE_FROM_CRL,
    Revoked,
    RevokedIndex,
    build_index,
    map_index,
    write_index,
)

NOW = datetime.now(UTC).replace(microsecond=0)
KEY = ec.generate_private_key(ec.SECP256R1())
ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AC INDEX")])
Entry = tuple[int, datetime, x509.ReasonFlags | None]


def crl_of(entries: Iterable[Entry], *, invalidity: bool = False) -> x509.CertificateRevocationList:
    revoked = []
    for serial, date, reason in entries:
        rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date)
        if invalidity:   # an extension before the reason, and entries over 127 bytes (long-form length)
            rb = rb.add_extension(x509.InvalidityDate(date.replace(tzinfo=None)), critical=False)
            rb = rb.add_extension(x509.CertificateIssuer([x509.DNSName("x" * 120 + ".example")]), critical=True)
        if reason is not None:
            rb = rb.add_extension(x509.CRLReason(reason), critical=False)
        revoked.append(rb.build())
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ISSUER, last_update=NOW - timedelta(minutes=1), next_update=NOW + timedelta(days=1),
        revoked_certificates=revoked)
    return builder.sign(KEY, hashes.SHA256())


def index_of(crl: x509.CertificateRevocationList) -> RevokedIndex:
    return build_index(crl.public_bytes(Encoding.DER), len(crl))


def day(n: int) -> datetime:
    return NOW - timedelta(days=n)


def test_hits_carry_date_and_reason_code() -> None:
    idx = index_of(crl_of([(1001, day(3), x509.ReasonFlags.key_compromise),
                              (1002, day(2), x509.ReasonFlags.superseded),
                              (1003, day(1), x509.ReasonFlags.certificate_hold)]))
    assert len(idx) == 3
    assert idx.lookup(1001) == Revoked(1001, day(3).timestamp(), 1)
    assert idx.lookup(1002) == Revoked(1002, day(2).timestamp(), 4)
    hold = idx.lookup(1003)
    assert hold == Revoked(1003, day(1).timestamp(), 6)
    assert hold is not None and hold.reason_name == "certificateHold"


@pytest.mark.parametrize("flag", list(REASON_CODES))
def test_every_reason_code_and_name(flag: x509.ReasonFlags) -> None:
    hit = index_of(crl_of([(77, day(1), flag)])).lookup(77)
    assert hit is not None
    assert hit.reason == REASON_CODES[flag]
    assert hit.reason_name == flag.value


def test_rfc5280_reason_numbers() -> None:
    # CRLReason codes are fixed by RFC 5280 5.3.1 (7 is unused); a wrong table would misreport every log line.
    assert REASON_CODES[x509.ReasonFlags.unspecified] == 0
    assert REASON_CODES[x509.ReasonFlags.key_compromise] == 1
    assert REASON_CODES[x509.ReasonFlags.cessation_of_operation] == 5
    assert REASON_CODES[x509.ReasonFlags.remove_from_crl] == REMOVE_FROM_CRL == 8
    assert REASON_CODES[x509.ReasonFlags.aa_compromise] == 10
    assert 7 not in REASON_CODES.values() and NO_REASON not in REASON_CODES.values()


def test_reason_absent_is_none() -> None:
    hit = index_of(crl_of([(5, day(1), None)])).lookup(5)
    assert hit is not None and hit.reason is None
    assert hit.reason_name == "unspecified"
    assert hit.date == day(1).timestamp()


def test_misses() -> None:
    idx = index_of(crl_of([(10, day(1), None), (20, day(1), None), (2**70 + 3, day(1), None)]))
    for serial in (1, 9, 11, 15, 19, 21, 2**64 + 10, 2**70 + 2, 2**70 + 4, 2**200, -10, -1, 0):
        assert idx.lookup(serial) is None, serial
    assert idx.lookup(10) is not None and idx.lookup(2**70 + 3) is not None


def test_serials_sharing_the_low_64_bits() -> None:
    s = 0x1234_5678_9ABC_DEF0
    idx = index_of(crl_of([(s + 2**64, day(2), x509.ReasonFlags.superseded),
                              (s, day(5), x509.ReasonFlags.key_compromise),
                              (s + 3 * 2**64, day(1), None)]))
    assert idx.lookup(s) == Revoked(s, day(5).timestamp(), 1)
    assert idx.lookup(s + 2**64) == Revoked(s + 2**64, day(2).timestamp(), 4)
    assert idx.lookup(s + 3 * 2**64) == Revoked(s + 3 * 2**64, day(1).timestamp(), None)
    assert idx.lookup(s + 2 * 2**64) is None  # same key, no such serial
    assert idx.lookup(s + 1) is None
    assert list(idx.keys).count(s) == 3


def test_low_64_bits_alone_do_not_match() -> None:
    s = 2**64 + 99
    idx = index_of(crl_of([(s, day(1), None)]))
    assert idx.lookup(99) is None
    assert idx.lookup(s) is not None
    only_low = index_of(crl_of([(99, day(1), None)]))
    assert only_low.lookup(s) is None and only_low.lookup(99) is not None


def patch_serials(der: bytes, swaps: dict[bytes, bytes]) -> bytes:
    """Rewrite serial INTEGER contents in a CRL's DER (same length; the signature no longer matters here)."""
    for old, new in swaps.items():
        assert len(old) == len(new)
        tlv = bytes([0x02, len(old)]) + old
        assert der.count(tlv) == 1, old
        der = der.replace(tlv, bytes([0x02, len(new)]) + new)
    return der


def test_negative_and_zero_serials_as_found_in_real_crls() -> None:
    """Some CAs wrote negative or zero serials and parsers accept them: the index must keep them apart."""
    crl = crl_of([(5, day(1), x509.ReasonFlags.key_compromise), (2**64 - 1, day(2), None),
                  (6, day(3), None), (0x80, day(4), x509.ReasonFlags.superseded), (0x81, day(5), None)])
    der = patch_serials(crl.public_bytes(Encoding.DER),
                        {b"\x05": b"\xff", b"\x06": b"\x00", b"\x00\x80": b"\xff\x7f", b"\x00\x81": b"\x00\x80"})
    idx = build_index(der, 5)
    for serial, date, reason in [(-1, day(1), 1), (2**64 - 1, day(2), None), (0, day(3), None),
                                 (-129, day(4), 4), (128, day(5), None)]:
        hit = idx.lookup(serial)
        assert hit is not None, serial
        assert hit.serial == serial and hit.date == date.timestamp() and hit.reason == reason
    # -1 and 2**64-1 share their low 64 bits; -2**64 - 1 too: no confusion
    assert idx.lookup(-(2**64) - 1) is None
    assert idx.lookup(-2) is None and idx.lookup(-128) is None and idx.lookup(129) is None


def test_empty_crl() -> None:
    idx = index_of(crl_of([]))
    assert len(idx) == 0 and idx.nbytes() == 0
    assert idx.lookup(1) is None and idx.lookup(0) is None
    assert len(EMPTY_INDEX) == 0 and EMPTY_INDEX.lookup(12345) is None


def test_twenty_byte_serials() -> None:
    big = 2**159 - 1                        # the largest RFC 5280 serial: 20 octets with the sign bit clear
    near = 2**159 - 2**64 + 17
    idx = index_of(crl_of([(big, day(1), x509.ReasonFlags.ca_compromise), (near, day(2), None),
                              (3, day(3), None)]))
    assert idx.lookup(big) == Revoked(big, day(1).timestamp(), 2)
    assert idx.lookup(near) == Revoked(near, day(2).timestamp(), None)
    assert idx.lookup(3) is not None
    assert idx.lookup(big - 1) is None and idx.lookup(2**159) is None and idx.lookup(2**300) is None


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 2**63, 2**64 - 1, 2**64, 2**71 - 1, 2**71])
def test_serial_lengths_around_the_sign_bit(serial: int) -> None:
    idx = index_of(crl_of([(serial, day(1), None), (serial + 2**64, day(2), None)]))
    assert idx.lookup(serial) == Revoked(serial, day(1).timestamp(), None)
    assert idx.lookup(serial + 2**64) == Revoked(serial + 2**64, day(2).timestamp(), None)
    assert idx.lookup(serial - 1) is None


def test_nbytes() -> None:
    n = 50
    idx = index_of(crl_of([(2**80 + i, day(1), None) for i in range(n)]))
    assert idx.nbytes() == n * 12 == len(idx.keys) * 8 + len(idx.offsets) * 4
    assert idx.der_bytes() == len(idx.der)


def test_random_serials_agree_with_cryptography() -> None:
    rng = random.Random(5280)
    reasons = [None, *REASON_CODES]
    serials = {rng.getrandbits(rng.choice([16, 63, 64, 65, 120, 159])) | 1 for _ in range(400)}
    # and a few collisions on the low 64 bits
    serials |= {s + (k << 64) for s in list(serials)[:20] for k in (1, 2)}
    entries = [(s, day(rng.randrange(1, 300)), rng.choice(reasons)) for s in serials if s < 2**159]
    crl = crl_of(entries)
    idx = index_of(crl)
    assert len(idx) == len(entries)
    assert list(idx.keys) == sorted(idx.keys)
    for serial, date, reason in entries:
        hit = idx.lookup(serial)
        assert hit is not None
        ref = crl.get_revoked_certificate_by_serial_number(serial)
        assert ref is not None and hit.date == ref.revocation_date_utc.timestamp() == date.timestamp()
        assert hit.reason == (REASON_CODES[reason] if reason is not None else None)
    for _ in range(300):
        probe = rng.getrandbits(rng.choice([16, 64, 100, 159]))
        assert (idx.lookup(probe) is None) == (probe not in serials)


def test_dates_are_whole_seconds() -> None:
    idx = index_of(crl_of([(9, datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC), None)]))
    hit = idx.lookup(9)
    assert hit is not None and hit.date == datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC).timestamp()
    assert isinstance(hit.date, float)


def test_index_files_map_back(tmp_path: Path) -> None:
    """Large CRLs are indexed in a helper process into a file that the proxy maps."""
    crl = crl_of([(1, day(1), x509.ReasonFlags.key_compromise), (2**90, day(2), None),
                  (2**90 + 2**64, day(3), None)])
    der = crl.public_bytes(Encoding.DER)
    (tmp_path / "crl.der").write_bytes(der)
    write_index(der, tmp_path / "crl.idx", len(crl))
    mapped = map_index(tmp_path / "crl.der", tmp_path / "crl.idx")
    mem = build_index(der, len(crl))
    (tmp_path / "crl.idx").unlink()
    (tmp_path / "crl.der").rename(tmp_path / "elsewhere")   # the cache replaces files by rename
    assert list(mapped.keys) == list(mem.keys) and list(mapped.offsets) == list(mem.offsets)
    for serial in (1, 2**90, 2**90 + 2**64, 3, 2**90 + 1):
        assert mapped.lookup(serial) == mem.lookup(serial)
    assert mapped.lookup(1) == Revoked(1, day(1).timestamp(), 1)


def test_map_index_refuses_a_foreign_file(tmp_path: Path) -> None:
    der = crl_of([(1, day(1), None)]).public_bytes(Encoding.DER)
    (tmp_path / "crl.der").write_bytes(der)
    (tmp_path / "bad.idx").write_bytes(b"not an index at all, no")
    with pytest.raises(CrlRejected) as exc:
        map_index(tmp_path / "crl.der", tmp_path / "bad.idx")
    assert exc.value.reason == "parse_error"


def test_entries_after_other_extensions_and_long_form_lengths() -> None:
    entries = [(10 + i, day(i + 1), flag) for i, flag in enumerate([None, *REASON_CODES])]
    crl = crl_of(entries, invalidity=True)
    der = crl.public_bytes(Encoding.DER)
    assert b"\x30\x81" in der or b"\x30\x82" in der
    idx = build_index(der, len(crl))
    for serial, date, flag in entries:
        assert idx.lookup(serial) == Revoked(serial, date.timestamp(), REASON_CODES[flag] if flag else None)


def test_generalized_time_dates() -> None:
    """RFC 5280 writes dates from 2050 on as GeneralizedTime."""
    late = datetime(2051, 3, 4, 5, 6, 7, tzinfo=UTC)
    crl = crl_of([(3, late, None), (4, datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), None)])
    idx = index_of(crl)
    assert idx.lookup(3) == Revoked(3, late.timestamp(), None)
    hit = idx.lookup(4)
    assert hit is not None and hit.date == datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def test_count_must_match_the_crl_parser() -> None:
    crl = crl_of([(1, day(1), None), (2, day(1), None)])
    with pytest.raises(CrlRejected) as exc:
        build_index(crl.public_bytes(Encoding.DER), 3)
    assert exc.value.reason == "parse_error"


@pytest.mark.parametrize("cut", [1, 2, 10, 40])
def test_truncated_der_is_refused(cut: int) -> None:
    der = crl_of([(i, day(1), None) for i in range(1, 5)]).public_bytes(Encoding.DER)
    with pytest.raises(CrlRejected) as exc:
        scan(der[:-cut])
    assert exc.value.reason == "parse_error"


def test_a_serial_that_is_not_an_integer_is_refused() -> None:
    der = crl_of([(0x42, day(1), None)]).public_bytes(Encoding.DER)
    with pytest.raises(CrlRejected):
        scan(der.replace(b"\x02\x01\x42", b"\x04\x01\x42"))


def test_an_unreadable_date_still_reports_the_revocation() -> None:
    crl = crl_of([(0x42, datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC), x509.ReasonFlags.key_compromise)])
    der = crl.public_bytes(Encoding.DER).replace(b"240501123015Z", b"24050112301XZ")
    idx = build_index(der, 1)
    hit = idx.lookup(0x42)
    assert hit == Revoked(0x42, None, None)
    (offset,) = idx.offsets
    assert read_entry(der, offset) == (0x42, None, NO_REASON)


def test_index_is_immutable() -> None:
    idx = index_of(crl_of([(1, day(1), None)]))
    with pytest.raises(AttributeError):
        idx.der = b""  # type: ignore[misc]


@pytest.mark.parametrize("change", [-12, -1, 1, 12])
def test_map_index_refuses_an_index_of_the_wrong_length(tmp_path: Path, change: int) -> None:
    """The right magic but a file cut short (a helper killed mid-write) or with bytes after the arrays:
    mapped as is, its keys and offsets would point at the wrong entries of the CRL."""
    crl = crl_of([(1, day(1), None), (2, day(2), None)])
    der = crl.public_bytes(Encoding.DER)
    (tmp_path / "crl.der").write_bytes(der)
    write_index(der, tmp_path / "crl.idx", len(crl))
    whole = (tmp_path / "crl.idx").read_bytes()
    (tmp_path / "crl.idx").write_bytes(whole[:change] if change < 0 else whole + b"\0" * change)
    with pytest.raises(CrlRejected) as exc:
        map_index(tmp_path / "crl.der", tmp_path / "crl.idx")
    assert exc.value.reason == "parse_error" and "crl.idx" in exc.value.message


def test_revoked_is_a_value() -> None:
    """Frozen: a hit can be shared by every handshake that finds it, and kept in sets (hashable)."""
    hit = Revoked(5, 1.0, 1)
    assert {hit, Revoked(5, 1.0, 1)} == {hit}
    with pytest.raises(AttributeError):
        hit.reason = 0  # type: ignore[misc]


@pytest.mark.parametrize(("code", "name"), [(None, "unspecified"), (0, "unspecified"), (1, "keyCompromise"),
                                            (7, "unspecified"), (11, "unspecified"), (8, "removeFromCRL")])
def test_reason_names_of_codes_rfc5280_does_not_name(code: int | None, name: str) -> None:
    assert Revoked(1, None, code).reason_name == name


def test_empty_index_holds_nothing() -> None:
    assert len(EMPTY_INDEX) == 0 and EMPTY_INDEX.nbytes() == 0 and EMPTY_INDEX.der_bytes() == 0
    assert EMPTY_INDEX.lookup(0) is None and EMPTY_INDEX.lookup(2**64 - 1) is None
