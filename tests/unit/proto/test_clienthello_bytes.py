"""ClientHello parser on hand-built bytes: every refusal with its words, every size boundary, every budget.

``test_clienthello.py`` feeds what the stdlib ``ssl`` client sends and ``test_fuzz_clienthello.py``
generated hellos; neither reaches a boundary exactly (a 16384-byte record, a 253-byte name, a budget
of exactly the bytes sent) nor says which refusal a truncated field gets. These build the hello field
by field (RFC 8446 4.1.2, RFC 6066 3, RFC 7301 3.1) so that one check changed or removed shows here.
"""

from __future__ import annotations

import struct
from dataclasses import FrozenInstanceError

import pytest

from sniproxy.proto.clienthello import ClientHelloError, ClientHelloInfo, ClientHelloParser, _Reader

RANDOM = bytes(range(32))
DEFAULT_MAX = (1 << 14) + 5        # one full record: 5-byte header + 2^14 bytes


def vec(len_bytes: int, body: bytes) -> bytes:
    return len(body).to_bytes(len_bytes, "big") + body


def ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!H", ext_type) + vec(2, body)


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    return ext(0, vec(2, b"".join(bytes([name_type]) + vec(2, n) for n in names)))


def body(exts: bytes | None = b"", *, legacy: bytes = b"\x03\x03", session: bytes = b"",
         suites: bytes = b"\x13\x01", compression: bytes = b"\x00") -> bytes:
    """A ClientHello body; ``exts`` is the content of the extensions vector (None: no extensions at all)."""
    return (legacy + RANDOM + vec(1, session) + vec(2, suites) + vec(1, compression)
            + (b"" if exts is None else vec(2, exts)))


def handshake(hello_body: bytes) -> bytes:
    return b"\x01" + len(hello_body).to_bytes(3, "big") + hello_body


def records(hs: bytes, *sizes: int) -> bytes:
    """``hs`` in TLS handshake records of the given fragment sizes (the rest in a last record)."""
    out, pos = bytearray(), 0
    for size in [*sizes, len(hs) - sum(sizes)]:
        piece = hs[pos:pos + size]
        if piece:
            out += b"\x16\x03\x01" + vec(2, piece)
        pos += len(piece)
    return bytes(out)


def parse(hello_body: bytes) -> ClientHelloInfo | None:
    return ClientHelloParser().feed(records(handshake(hello_body)))


def refused(data: bytes, message: str, parser: ClientHelloParser | None = None) -> None:
    parser = parser or ClientHelloParser()
    with pytest.raises(ClientHelloError) as exc:
        parser.feed(data)
    assert str(exc.value) == message


def refused_body(hello_body: bytes, message: str) -> None:
    refused(records(handshake(hello_body)), message)


# ------------------------------------------------------------------------------------------ the values
def test_a_minimal_hello_with_every_extension() -> None:
    exts = (sni_ext(b"Mail.Example") + ext(16, vec(2, vec(1, b"imap") + vec(1, b"\xe9")))
            + ext(43, vec(1, b"\x03\x04\x03\x03")) + ext(0x0A0A, b""))
    assert parse(body(exts)) == ClientHelloInfo("mail.example", ("imap", "\xe9"), (0x0304, 0x0303), 0x0303)


def test_a_hello_without_extensions() -> None:
    """RFC 5246 7.4.1.2: before TLS 1.3 the extensions may be absent altogether."""
    assert parse(body(None, legacy=b"\x03\x01")) == ClientHelloInfo(None, (), (), 0x0301)
    assert parse(body(b"")) == ClientHelloInfo(None, (), (), 0x0303)


def test_info_is_a_frozen_value() -> None:
    info = ClientHelloInfo("a.example", (), (), 0x0303)
    with pytest.raises(FrozenInstanceError):
        info.sni = "b.example"  # type: ignore[misc]
    assert not hasattr(info, "__dict__")


def test_one_parser_per_connection_without_instance_dict() -> None:
    assert not hasattr(ClientHelloParser(), "__dict__")
    assert not hasattr(_Reader(b""), "__dict__")


def test_bytes_after_the_hello_in_its_own_record_are_not_part_of_it() -> None:
    """A record may carry the ClientHello and more handshake bytes: the body ends where its length says."""
    hs = handshake(body(sni_ext(b"a.example")))
    assert ClientHelloParser().feed(records(hs + b"\x02\x00")) == ClientHelloInfo("a.example", (), (), 0x0303)


# -------------------------------------------------------------------------------------------- records
def test_the_record_version_is_checked_on_its_own_byte() -> None:
    refused(b"\x16\x02", "bad record version major 2")
    refused(b"\x16\x04", "bad record version major 4")
    assert ClientHelloParser().feed(b"\x16\x03") is None


def test_the_record_header_is_checked_before_the_next_byte_counts() -> None:
    refused(b"\x16\x03\x01\x00\x00x", "bad record length 0", ClientHelloParser(max_size=5))
    refused(b"\x16\x03\x01\x40\x01x", "bad record length 16385", ClientHelloParser(max_size=5))


def full_record_hello(extra: int = 0) -> bytes:
    """A hello whose handshake message is 2^14 + ``extra`` bytes (padding in an unknown extension)."""
    base = len(handshake(body(ext(21, b""))))
    return handshake(body(ext(21, b"\x00" * ((1 << 14) + extra - base))))


def test_a_record_of_exactly_2_14_bytes_fits_the_default_budget() -> None:
    hs = full_record_hello()
    assert len(hs) == 1 << 14
    raw = records(hs)
    assert len(raw) == DEFAULT_MAX
    info = ClientHelloParser().feed(raw)
    assert info is not None and info.legacy_version == 0x0303


def test_the_default_budget_counts_every_record_header() -> None:
    """Two records: 10 header bytes. The default budget (16389) takes a message of 16379, not 16380."""
    fits = full_record_hello(-5)
    assert ClientHelloParser().feed(records(fits, 16000)) is not None
    refused(records(full_record_hello(-4), 16000), f"ClientHello larger than {DEFAULT_MAX} bytes")


def test_the_byte_budget_is_exact_however_the_bytes_arrive() -> None:
    """``max_size`` bytes are examined, not one more nor one less, whatever the chunks (record headers counted)."""
    raw = records(handshake(body(sni_ext(b"budget.example"))), 3, 40, 7)
    want = ClientHelloParser().feed(raw)
    assert want is not None and want.sni == "budget.example"
    for cut in range(1, len(raw)):
        parser = ClientHelloParser(max_size=len(raw))
        assert parser.feed(raw[:cut]) is None, cut
        assert parser.feed(raw[cut:]) == want, cut
    for cut in range(1, len(raw)):
        parser = ClientHelloParser(max_size=len(raw) - 1)
        with pytest.raises(ClientHelloError) as exc:
            parser.feed(raw[:cut])
            parser.feed(raw[cut:])
        assert str(exc.value) == f"ClientHello larger than {len(raw) - 1} bytes", cut


# ------------------------------------------------------------------------------------------ handshake
def test_the_announced_length_is_checked_against_the_budget_once_its_record_is_in() -> None:
    """The length in the handshake header, plus one record header, over ``max_size``: refused before the body.

    The first record holds only the handshake header, so the announced length is judged before any
    body byte arrives; at exactly ``max_size`` it passes and only the byte count (two record headers)
    refuses it later.
    """
    hs = handshake(body(sni_ext(b"len.example")))
    length = len(hs) - 4
    raw = records(hs, 4)
    assert len(raw) == length + 4 + 10
    info = ClientHelloParser(max_size=len(raw)).feed(raw)
    assert info is not None and info.sni == "len.example"
    refused(raw[:9], f"ClientHello of {length} bytes is too big", ClientHelloParser(max_size=length + 8))
    exact = ClientHelloParser(max_size=length + 9)
    assert exact.feed(raw[:9]) is None
    refused(raw[9:], f"ClientHello larger than {length + 9} bytes", exact)


def test_the_handshake_length_is_read_once_its_three_bytes_are_in() -> None:
    # The first two length bytes alone (0x5000) would already be too big: the whole length is reported.
    refused(records(b"\x01\x50\x00", 3) + records(b"\x00"), f"ClientHello of {0x500000} bytes is too big")
    refused(records(b"\x01\x01\x00\x00"), "ClientHello of 65536 bytes is too big")


def test_handshake_not_a_client_hello() -> None:
    refused(records(b"\x02\x00\x00\x00"), "handshake message type 2 is not ClientHello")


# ---------------------------------------------------------------------------------------------- body
@pytest.mark.parametrize(("hello_body", "what"), [
    (b"\x03", "legacy_version"),
    (b"\x03\x03" + RANDOM[:31], "random"),
    (b"\x03\x03" + RANDOM, "session id"),
    (b"\x03\x03" + RANDOM + b"\x05abc", "session id"),
    (b"\x03\x03" + RANDOM + b"\x00\x00", "cipher suites"),
    (b"\x03\x03" + RANDOM + b"\x00\x00\x04\x13\x01", "cipher suites"),
    (b"\x03\x03" + RANDOM + b"\x00\x00\x02\x13\x01", "compression methods"),
    (b"\x03\x03" + RANDOM + b"\x00\x00\x02\x13\x01\x02\x00", "compression methods"),
    (body(b"")[:-1], "extensions"),
    (body(b"")[:-2] + b"\x00\x05\x00\x00", "extensions"),
    (body(b"\x00"), "extension type"),
    (body(b"\x00\x00\x00"), "extension"),
    (body(b"\x00\x2b\x00\x05\x02"), "extension"),
    (body(ext(0, b"\x00")), "server name list"),
    (body(ext(0, b"\x00\x05\x00")), "server name list"),
    (body(ext(0, vec(2, b"\x00\x00\x05ab"))), "server name"),
    (body(ext(16, b"\x00")), "ALPN list"),
    (body(ext(16, vec(2, b"\x05ab"))), "ALPN name"),
    (body(ext(43, b"")), "supported versions"),
    (body(ext(43, b"\x04\x03\x04")), "supported versions"),
])
def test_truncated_fields_are_named(hello_body: bytes, what: str) -> None:
    refused_body(hello_body, f"truncated {what}")


@pytest.mark.parametrize(("hello_body", "message"), [
    (body(legacy=b"\x02\x00"), "bad ClientHello version 0x0200"),
    (body(legacy=b"\x04\x03"), "bad ClientHello version 0x0403"),
    (body(session=b"s" * 33), "session id longer than 32 bytes"),
    (body(suites=b""), "bad cipher suites length"),
    (body(suites=b"\x13\x01\x13"), "bad cipher suites length"),
    (body(compression=b""), "no compression method"),
    (body(b"") + b"\x00", "bytes after extensions"),
    (body(ext(10, b"") + ext(10, b"x")), "duplicate extension 10"),
    (body(sni_ext(b"a.example") + ext(16, vec(2, vec(1, b"h2"))) + sni_ext(b"b.example")), "duplicate extension 0"),
    (body(ext(0, vec(2, b"\x00" + vec(2, b"a.example")) + b"\x00")), "bytes after server name list"),
    (body(ext(0, vec(2, b"\x00" + vec(2, b"a.example") + b"\x00" + vec(2, b"b.example")))),
     "more than one host_name"),
    (body(ext(16, vec(2, vec(1, b"h2")) + b"\x00")), "bytes after ALPN list"),
    (body(ext(16, vec(2, vec(1, b"h2") + vec(1, b"")))), "empty ALPN name"),
    (body(ext(43, vec(1, b"\x03\x04") + b"\x00")), "bad supported_versions"),
    (body(ext(43, vec(1, b""))), "bad supported_versions"),
    (body(ext(43, vec(1, b"\x03\x04\x03"))), "bad supported_versions"),
    (body(sni_ext(b"")), "SNI is not an ASCII host name"),
    (body(sni_ext(b"caf\xe9.example")), "SNI is not an ASCII host name"),
    (body(sni_ext(b"a..example")), "SNI is not a valid host name"),
])
def test_refusals_say_what_was_wrong(hello_body: bytes, message: str) -> None:
    refused_body(hello_body, message)


def test_session_ids_up_to_32_bytes() -> None:
    assert parse(body(session=b"s" * 32)) == ClientHelloInfo(None, (), (), 0x0303)


def test_other_name_types_are_skipped() -> None:
    exts = ext(0, vec(2, b"\x07" + vec(2, b"x") + b"\x00" + vec(2, b"ok.example") + b"\x01" + vec(2, b"y")))
    info = parse(body(exts))
    assert info is not None and info.sni == "ok.example"


def test_host_names_up_to_253_bytes() -> None:
    """RFC 1035 2.3.4: 253 characters without the trailing dot, each label 1..63."""
    longest = b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61])
    assert len(longest) == 253
    info = parse(body(sni_ext(longest)))
    assert info is not None and info.sni == longest.decode()
    refused_body(body(sni_ext(longest + b"d")), "SNI is not an ASCII host name")
