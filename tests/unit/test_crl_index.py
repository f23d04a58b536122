"""sniproxy.crl.index: the flat revocation index (sorted 64-bit keys, full serials, dates, reasons)."""

from __future__ import annotations

import pickle
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sniproxy.crl.index import (
    EMPTY_INDEX,
    NO_REASON,
    REASON_CODES,
    REMOVE_FROM_CRL,
    Revoked,
    build_index,
)

NOW = datetime.now(UTC).replace(microsecond=0)
KEY = ec.generate_private_key(ec.SECP256R1())
ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AC INDEX")])
Entry = tuple[int, datetime, x509.ReasonFlags | None]


def crl_of(entries: Iterable[Entry]) -> x509.CertificateRevocationList:
    revoked = []
    for serial, date, reason in entries:
        rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date)
        if reason is not None:
            rb = rb.add_extension(x509.CRLReason(reason), critical=False)
        revoked.append(rb.build())
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ISSUER, last_update=NOW - timedelta(minutes=1), next_update=NOW + timedelta(days=1),
        revoked_certificates=revoked)
    return builder.sign(KEY, hashes.SHA256())


def day(n: int) -> datetime:
    return NOW - timedelta(days=n)


def test_hits_carry_date_and_reason_code() -> None:
    idx = build_index(crl_of([(1001, day(3), x509.ReasonFlags.key_compromise),
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
    hit = build_index(crl_of([(77, day(1), flag)])).lookup(77)
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
    hit = build_index(crl_of([(5, day(1), None)])).lookup(5)
    assert hit is not None and hit.reason is None
    assert hit.reason_name == "unspecified"
    assert hit.date == day(1).timestamp()


def test_misses() -> None:
    idx = build_index(crl_of([(10, day(1), None), (20, day(1), None), (2**70 + 3, day(1), None)]))
    for serial in (1, 9, 11, 15, 19, 21, 2**64 + 10, 2**70 + 2, 2**70 + 4, 2**200, -10, -1, 0):
        assert idx.lookup(serial) is None, serial
    assert idx.lookup(10) is not None and idx.lookup(2**70 + 3) is not None


def test_serials_sharing_the_low_64_bits() -> None:
    s = 0x1234_5678_9ABC_DEF0
    idx = build_index(crl_of([(s + 2**64, day(2), x509.ReasonFlags.superseded),
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
    idx = build_index(crl_of([(s, day(1), None)]))
    assert idx.lookup(99) is None
    assert idx.lookup(s) is not None
    only_low = build_index(crl_of([(99, day(1), None)]))
    assert only_low.lookup(s) is None and only_low.lookup(99) is not None


def test_negative_serial_from_the_builder() -> None:
    try:
        crl = crl_of([(-5, day(1), None), (7, day(1), None)])
    except ValueError as exc:
        pytest.skip(f"cryptography refuses to build a negative serial: {exc}")
    idx = build_index(crl)
    assert idx.lookup(-5) is not None and idx.lookup(5) is None


def fake_crl(entries: Iterable[Entry]) -> list[Any]:
    """CRL-shaped entries (what ``build_index`` reads), for serials the builder refuses (negative, zero)."""
    out = []
    for serial, date, reason in entries:
        exts = [SimpleNamespace(value=x509.CRLReason(reason))] if reason is not None else []
        out.append(SimpleNamespace(serial_number=serial, revocation_date_utc=date, extensions=exts))
    return out


def test_negative_and_zero_serials_as_parsed_from_real_crls() -> None:
    """Some CAs wrote negative serials and parsers accept them: the index must keep them apart."""
    entries: list[Entry] = [(-1, day(1), x509.ReasonFlags.key_compromise), (2**64 - 1, day(2), None),
                            (0, day(3), None), (-129, day(4), x509.ReasonFlags.superseded), (128, day(5), None)]
    idx = build_index(fake_crl(entries))  # type: ignore[arg-type]
    for serial, date, reason in entries:
        hit = idx.lookup(serial)
        assert hit is not None, serial
        assert hit.serial == serial and hit.date == date.timestamp()
        assert hit.reason == (REASON_CODES[reason] if reason else None)
    # -1 and 2**64-1 share their low 64 bits; -2**64 - 1 too: no confusion
    assert idx.lookup(-(2**64) - 1) is None
    assert idx.lookup(-2) is None and idx.lookup(-128) is None and idx.lookup(129) is None


def test_empty_crl() -> None:
    idx = build_index(crl_of([]))
    assert len(idx) == 0 and idx.width == 1 and idx.nbytes() == 0
    assert idx.lookup(1) is None and idx.lookup(0) is None
    assert len(EMPTY_INDEX) == 0 and EMPTY_INDEX.lookup(12345) is None


def test_twenty_byte_serials() -> None:
    big = 2**159 - 1                        # the largest RFC 5280 serial: 20 octets with the sign bit clear
    near = 2**159 - 2**64 + 17
    idx = build_index(crl_of([(big, day(1), x509.ReasonFlags.ca_compromise), (near, day(2), None),
                              (3, day(3), None)]))
    assert idx.width == 20
    assert len(idx.serials) == 3 * 20
    assert idx.lookup(big) == Revoked(big, day(1).timestamp(), 2)
    assert idx.lookup(near) == Revoked(near, day(2).timestamp(), None)
    assert idx.lookup(3) is not None
    assert idx.lookup(big - 1) is None and idx.lookup(2**159) is None and idx.lookup(2**300) is None


@pytest.mark.parametrize(("serial", "width"), [(1, 1), (127, 1), (128, 2), (255, 2), (2**63, 9), (2**64 - 1, 9),
                                               (2**64, 9), (2**71 - 1, 9), (2**71, 10)])
def test_width_leaves_room_for_the_sign_bit(serial: int, width: int) -> None:
    idx = build_index(crl_of([(serial, day(1), None)]))
    assert idx.width == width
    assert idx.lookup(serial) is not None


def test_nbytes() -> None:
    n = 50
    idx = build_index(crl_of([(2**80 + i, day(1), None) for i in range(n)]))
    assert idx.width == 11
    assert idx.nbytes() == n * 8 + n * 11 + n * 8 + n
    assert idx.nbytes() == len(idx.keys) * 8 + len(idx.serials) + len(idx.dates) * 8 + len(idx.reasons)


def test_random_serials_agree_with_cryptography() -> None:
    rng = random.Random(5280)
    reasons = [None, *REASON_CODES]
    serials = {rng.getrandbits(rng.choice([16, 63, 64, 65, 120, 159])) | 1 for _ in range(400)}
    # and a few collisions on the low 64 bits
    serials |= {s + (k << 64) for s in list(serials)[:20] for k in (1, 2)}
    entries = [(s, day(rng.randrange(1, 300)), rng.choice(reasons)) for s in serials if s < 2**159]
    crl = crl_of(entries)
    idx = build_index(crl)
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
    idx = build_index(crl_of([(9, datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC), None)]))
    hit = idx.lookup(9)
    assert hit is not None and hit.date == datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC).timestamp()
    assert isinstance(hit.date, float)


def test_index_survives_pickling() -> None:
    """The index is built in a helper process for large CRLs and sent back pickled."""
    idx = build_index(crl_of([(1, day(1), x509.ReasonFlags.key_compromise), (2**90, day(2), None)]))
    again = pickle.loads(pickle.dumps(idx))
    assert again.lookup(1) == idx.lookup(1) and again.lookup(2**90) == idx.lookup(2**90)
    assert again.lookup(3) is None and again.nbytes() == idx.nbytes()


def test_index_is_immutable() -> None:
    idx = build_index(crl_of([(1, day(1), None)]))
    with pytest.raises(AttributeError):
        idx.width = 3  # type: ignore[misc]
