"""sniproxy.crl.entries on hand-built DER: every refusal of the walker, with its words, and every boundary.

``test_index.py`` drives the walker through real CRLs signed by ``cryptography``, which are always well
formed; these tests build the bytes by hand (the walker never checks a signature) so that each check of
``der_header``, ``_time``, ``_reason``, ``entries_bounds``, ``scan`` and ``read_entry`` meets the input it
exists for, and a check removed or moved by one shows here.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sniproxy.crl.entries import NO_REASON, _reason, _time, der_header, entries_bounds, read_entry, scan
from sniproxy.crl.errors import CrlRejected

SEQ, INT, UTC_TIME, GEN_TIME, OID, BOOL, OCTETS, ENUM = 0x30, 0x02, 0x17, 0x18, 0x06, 0x01, 0x04, 0x0A
REASON_OID = bytes.fromhex("551d15")          # id-ce-cRLReasons
INVALIDITY_OID = bytes.fromhex("551d18")      # id-ce-invalidityDate
DATE = b"240501123015Z"
DATE_TS = calendar.timegm((2024, 5, 1, 12, 30, 15, 0, 0, 0))


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element, its length in the shortest form."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def seq(*parts: bytes) -> bytes:
    return tlv(SEQ, b"".join(parts))


def reason_ext(code: bytes, *, critical: bool = False, value_tag: int = OCTETS, enum_tag: int = ENUM) -> bytes:
    """An Extension holding a CRLReason (``code`` is the ENUMERATED content)."""
    return seq(tlv(OID, REASON_OID), tlv(BOOL, b"\xff") if critical else b"",
               tlv(value_tag, tlv(enum_tag, code)))


def invalidity_ext() -> bytes:
    return seq(tlv(OID, INVALIDITY_OID), tlv(OCTETS, tlv(GEN_TIME, b"20240501000000Z")))


def entry(serial: bytes, *, date: bytes = DATE, exts: bytes | None = None) -> bytes:
    return seq(tlv(INT, serial), tlv(UTC_TIME, date), b"" if exts is None else exts)


def crl(entries: bytes | None, *, version: bool = True, next_update: bool = True, crl_exts: bool = True,
        this_update: bytes = tlv(UTC_TIME, DATE)) -> bytes:
    """A CertificateList: ``entries`` is the content of revokedCertificates (None: the field is absent)."""
    tbs = seq(tlv(INT, b"\x01") if version else b"", seq(tlv(OID, b"\x2a\x86\x48\xce\x3d\x04\x03\x02")),
              seq(), this_update, tlv(UTC_TIME, DATE) if next_update else b"",
              b"" if entries is None else tlv(SEQ, entries),
              tlv(0xA0, seq(seq(tlv(OID, b"\x55\x1d\x14"), tlv(OCTETS, tlv(INT, b"\x07"))))) if crl_exts else b"")
    return seq(tbs, seq(tlv(OID, b"\x2a\x86\x48\xce\x3d\x04\x03\x02")), tlv(0x03, b"\x00\x01\x02"))


def refused(what: str, call: object, *args: object) -> None:
    """``call(*args)`` raises a parse_error whose message is exactly ``what``."""
    assert callable(call)
    with pytest.raises(CrlRejected) as exc:
        call(*args)
    assert exc.value.reason == "parse_error"
    assert exc.value.message == f"CRL entry list: {what}"


# ------------------------------------------------------------------------------------------ der_header
def test_der_header_of_the_smallest_elements() -> None:
    assert der_header(b"\x30\x00", 0, 2) == (0x30, 2, 2)
    assert der_header(b"\x04\x01x", 0, 3) == (0x04, 2, 3)
    assert der_header(b"..\x02\x01\x05..", 2, 5) == (0x02, 4, 5)


def test_der_header_needs_a_tag_and_a_length_byte() -> None:
    refused("truncated element at byte 0", der_header, b"\x30", 0, 1)
    refused("truncated element at byte 0", der_header, b"\x30\x00", 0, 1)   # the end, not the buffer, bounds it
    refused("truncated element at byte 3", der_header, b"\x30\x00\x00\x04", 3, 4)


def test_der_header_long_form_lengths() -> None:
    assert der_header(b"\x04\x81\x00", 0, 3) == (0x04, 3, 3)
    assert der_header(b"\x04\x84\x00\x00\x00\x01x", 0, 7) == (0x04, 6, 7)    # four length bytes: the most
    assert der_header(b"\x04\x82\x01\x00" + b"x" * 256, 0, 260) == (0x04, 4, 260)
    refused("bad length at byte 2", der_header, b"\x30\x80\x00\x00", 0, 4)   # indefinite length: not DER
    refused("bad length at byte 2", der_header, b"\x04\x85\x00\x00\x00\x00\x01x", 0, 8)   # five length bytes
    refused("bad length at byte 2", der_header, b"\x04\x82\x00", 0, 3)       # its length bytes cut short
    refused("bad length at byte 2", der_header, b"\x04\x81\x00", 0, 2)


def test_der_header_content_must_end_by_end() -> None:
    refused("length past its container at byte 2", der_header, b"\x04\x02x", 0, 3)
    refused("length past its container at byte 2", der_header, b"\x04\x01xy", 0, 2)
    refused("length past its container at byte 4", der_header, b"\x04\x82\x01\x00" + b"x" * 255, 0, 259)


# ------------------------------------------------------------------------------------------------ _time
def test_utc_time_years_pivot_at_1950() -> None:
    """RFC 5280 4.1.2.5.1: YY >= 50 is 19YY, YY < 50 is 20YY."""
    assert _time(b"500101000000Z", UTC_TIME, 0) == calendar.timegm((1950, 1, 1, 0, 0, 0, 0, 0, 0))
    assert _time(b"491231235959Z", UTC_TIME, 0) == calendar.timegm((2049, 12, 31, 23, 59, 59, 0, 0, 0))
    assert _time(DATE, UTC_TIME, 0) == DATE_TS


def test_generalized_time() -> None:
    assert _time(b"20510304050607Z", GEN_TIME, 0) == calendar.timegm((2051, 3, 4, 5, 6, 7, 0, 0, 0))
    assert _time(b"19491231235959Z", GEN_TIME, 0) == calendar.timegm((1949, 12, 31, 23, 59, 59, 0, 0, 0))


@pytest.mark.parametrize(("raw", "tag"), [
    (b"500101000000X", UTC_TIME),        # not Z
    (b"5001010000000Z", UTC_TIME),       # 14 bytes
    (b"20510304050607Z", UTC_TIME),      # a GeneralizedTime under the UTCTime tag
    (b"500101000000Z", GEN_TIME),        # a UTCTime under the GeneralizedTime tag
    (b"2051030405060Z", GEN_TIME),       # 14 bytes
    (b"20510304050607X", GEN_TIME),      # not Z
    (b"500101000000Z", OCTETS),          # not a time at all
    (b"5001010000a0Z", UTC_TIME),        # a letter among the digits
    (b"205103040506+7Z", GEN_TIME),      # int() would take "+7"
    (b"50010100 000Z", UTC_TIME),        # int() would take " 0"
])
def test_times_not_in_rfc5280_form(raw: bytes, tag: int) -> None:
    refused("revocation date not in RFC 5280 form at byte 9", _time, raw, tag, 9)


@pytest.mark.parametrize("raw", [b"500001000000Z", b"501301000000Z"])
def test_time_out_of_range(raw: bytes) -> None:
    refused("revocation date out of range at byte 4", _time, raw, UTC_TIME, 4)


# ---------------------------------------------------------------------------------------------- _reason
def reason_of(exts: bytes) -> int:
    return _reason(b"!" + exts + b"!", 1, 1 + len(exts))


@pytest.mark.parametrize(("code", "expected"), [(b"\x00", 0), (b"\x01", 1), (b"\x06", 6), (b"\x0a", 10),
                                                (b"\x0b", 0), (b"\xff", 0)])
def test_reason_codes_above_10_read_as_unspecified(code: bytes, expected: int) -> None:
    assert reason_of(seq(reason_ext(code))) == expected


def test_reason_found_after_other_extensions_and_when_critical() -> None:
    assert reason_of(seq(invalidity_ext(), reason_ext(b"\x04"))) == 4
    assert reason_of(seq(reason_ext(b"\x01", critical=True))) == 1
    assert reason_of(seq(invalidity_ext(), reason_ext(b"\x05", critical=True), invalidity_ext())) == 5


def test_no_reason_among_the_extensions() -> None:
    assert reason_of(seq(invalidity_ext())) == NO_REASON
    assert reason_of(seq(invalidity_ext(), invalidity_ext())) == NO_REASON
    assert reason_of(seq()) == NO_REASON


def test_reason_refusals() -> None:
    refused("entry extensions are not a SEQUENCE at byte 3", reason_of, tlv(0x31, reason_ext(b"\x01")))
    refused("extension is not a SEQUENCE at byte 3", reason_of, seq(tlv(0x31, tlv(OID, REASON_OID))))
    refused("reasonCode value is not an OCTET STRING at byte 10", reason_of,
            seq(reason_ext(b"\x01", value_tag=0x0C)))
    refused("reasonCode is not a one-byte ENUMERATED at byte 12", reason_of, seq(reason_ext(b"\x01", enum_tag=INT)))
    refused("reasonCode is not a one-byte ENUMERATED at byte 12", reason_of, seq(reason_ext(b"\x00\x01")))
    refused("reasonCode is not a one-byte ENUMERATED at byte 12", reason_of, seq(reason_ext(b"")))


# ---------------------------------------------------------------------------------------- entries_bounds
def bounds_content(der: bytes) -> bytes:
    start, stop = entries_bounds(der)
    return der[start:stop]


def test_entries_bounds_with_and_without_the_optional_fields() -> None:
    entries = entry(b"\x05") + entry(b"\x06")
    for version in (True, False):
        for next_update in (True, False):
            for crl_exts in (True, False):
                der = crl(entries, version=version, next_update=next_update, crl_exts=crl_exts)
                assert bounds_content(der) == entries
                assert [key >> 32 for key in scan(der)] == [5, 6]
                empty = crl(None, version=version, next_update=next_update, crl_exts=crl_exts)
                start, stop = entries_bounds(empty)
                assert start == stop
                assert scan(empty) == []


def test_a_crl_of_generalized_times() -> None:
    der = crl(entry(b"\x05"), this_update=tlv(GEN_TIME, b"20510304050607Z"))
    assert bounds_content(der) == entry(b"\x05")


def test_entries_bounds_refusals() -> None:
    good = crl(entry(b"\x05"))
    refused("CertificateList is not one SEQUENCE at byte 0", entries_bounds, good + b"\x00")
    refused("CertificateList is not one SEQUENCE at byte 0", entries_bounds, bytes([0x31]) + good[1:])
    refused("tbsCertList is not a SEQUENCE at byte 4", entries_bounds, seq(tlv(OCTETS, b"\x00\x00"), seq()))
    # offsets: the CertificateList header at 0, the tbsCertList's at 2, its version at 4..7
    refused("unexpected field before the entries at byte 7", entries_bounds,
            seq(seq(tlv(INT, b"\x01"), tlv(INT, b"\x02"), seq(), tlv(UTC_TIME, DATE))))
    refused("unexpected field before the entries at byte 9", entries_bounds,
            seq(seq(tlv(INT, b"\x01"), seq(), tlv(INT, b"\x02"), tlv(UTC_TIME, DATE))))
    refused("thisUpdate missing at byte 11", entries_bounds, seq(seq(tlv(INT, b"\x01"), seq(), seq(), seq())))


# ------------------------------------------------------------------------------------------------- scan
class _Huge:
    """A 4 GiB buffer (its length) whose first bytes are a real CertificateList header: no 4 GiB in memory."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    def __len__(self) -> int:
        return 1 << 32

    def __getitem__(self, item: int | slice) -> int | bytes:
        return self.head[item]


def test_a_crl_of_4_gib_is_refused() -> None:
    der = crl(entry(b"\x05"))
    _, content, _ = der_header(der, 0, len(der))
    head = b"\x30\x84" + ((1 << 32) - 6).to_bytes(4, "big") + der[content:]
    huge = _Huge(head)
    start, stop = entries_bounds(huge)     # type: ignore[arg-type]
    assert head[start:stop] == entry(b"\x05")
    refused("CRL of 4 GiB or more at byte 0", scan, huge)


def test_scan_keys_and_offsets() -> None:
    """Each entry: the low 64 bits of its serial (two's complement) above the entry's offset."""
    serials = [b"\x05", b"\xff", b"\x01" + b"\x00" * 8, b"\x00\x80" + b"\x00" * 7 + b"\x09",
               b"\x80" + b"\x00" * 7, b"\xff" * 8]
    parts = [entry(s) for s in serials]
    der = crl(b"".join(parts))
    offsets = [der.index(b"".join(parts)) + sum(len(p) for p in parts[:i]) for i in range(len(parts))]
    keys = scan(der)
    assert [k >> 32 for k in keys] == [5, (1 << 64) - 1, 0, 9, 1 << 63, (1 << 64) - 1]
    assert [k & 0xFFFFFFFF for k in keys] == offsets


def test_entries_of_more_than_255_bytes() -> None:
    """Two-byte lengths: the fast path reads one-byte lengths only and must not take these for one."""
    big = seq(seq(tlv(OID, b"\x55\x1d\x1d"), tlv(OCTETS, b"x" * 300)), reason_ext(b"\x03"))
    entries = entry(b"\x07", exts=big) + entry(b"\x08")
    der = crl(entries)
    keys = scan(der)
    assert [k >> 32 for k in keys] == [7, 8]
    assert read_entry(der, keys[0] & 0xFFFFFFFF) == (7, float(DATE_TS), 3)
    assert read_entry(der, keys[1] & 0xFFFFFFFF) == (8, float(DATE_TS), NO_REASON)


@pytest.mark.parametrize(("tail", "what", "at"), [
    (b"\x30", "truncated element", 0),          # a lone tag: the byte after it is the next field's
    (b"\x30\x05", "entry past the list", 0),    # a short length pointing past the list
    (b"\x30\x80", "bad length", 2),             # indefinite length
    (b"\x30\x81\x05", "length past its container", 3),
    (b"\x31\x03\x02\x01\x09", "entry is not a SEQUENCE", 0),
    (b"\x30\x03\x04\x01\x09", "entry serial is not an INTEGER", 2),
    (b"\x30\x02\x02\x00", "entry serial is not an INTEGER", 2),
])
def test_scan_refuses_a_bad_last_entry(tail: bytes, what: str, at: int) -> None:
    first = entry(b"\x05")
    der = crl(first + tail, crl_exts=False)     # the byte after the list: the signatureAlgorithm's tag, 0x30
    refused(f"{what} at byte {der.index(first + tail) + len(first) + at}", scan, der)


# ------------------------------------------------------------------------------------------- read_entry
def test_read_entry() -> None:
    entries = (entry(b"\x05") + entry(b"\xfe", exts=seq(reason_ext(b"\x01")))
               + entry(b"\x06", exts=seq(invalidity_ext())))
    der = crl(entries)
    offsets = [k & 0xFFFFFFFF for k in scan(der)]
    assert [read_entry(der, o) for o in offsets] == [(5, float(DATE_TS), NO_REASON), (-2, float(DATE_TS), 1),
                                                    (6, float(DATE_TS), NO_REASON)]


def test_a_malformed_reason_keeps_the_date() -> None:
    """The reason only informs the log: a bad one reads as none, the revocation and its date stand."""
    der = crl(entry(b"\x05", exts=seq(reason_ext(b"\x01", value_tag=0x0C))))
    (key,) = scan(der)
    assert read_entry(der, key & 0xFFFFFFFF) == (5, float(DATE_TS), NO_REASON)


def test_read_entry_refuses_a_serial_that_is_not_an_integer() -> None:
    der = crl(entry(b"\x05"))
    offset = der.index(entry(b"\x05"))
    bad = der[:offset + 2] + b"\x04" + der[offset + 3:]
    refused(f"entry serial is not an INTEGER at byte {offset + 2}", read_entry, bad, offset)


def test_a_real_crl_with_a_crl_number_and_no_entries() -> None:
    """cryptography writes crlExtensions ([0]) right after nextUpdate when there is no entry: not a list."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    real = (x509.CertificateRevocationListBuilder()
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AC ENTRIES")]))
            .last_update(now).next_update(now + timedelta(days=1))
            .add_extension(x509.CRLNumber(7), critical=False)
            .sign(key, hashes.SHA256()))
    der = real.public_bytes(Encoding.DER)
    start, stop = entries_bounds(der)
    assert start == stop
    assert scan(der) == []
