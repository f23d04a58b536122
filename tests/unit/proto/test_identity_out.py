"""The PROXY v2 header sent to proxy-v2 backends: decoded back with the parser, byte layout and size limit."""

from __future__ import annotations

import struct

import pytest

from sniproxy.card import CardFacts, card_facts
from sniproxy.demo.pki import TestPki, build
from sniproxy.proto.identity_out import IDENTITY_TLVS, proxy_v2_header
from sniproxy.proto.proxy_protocol import ProxyHeaderParser, parse_ssl_tlv
from sniproxy.proto.proxy_wire import (
    MAX_HEADER,
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_SSL,
    V2_SIGNATURE,
    ProxyResult,
)

CARD = CardFacts(cn="810001234567", sig_alg="RSA-SHA256", key_alg="RSA2048")


def _parse(header: bytes, **kw: bool) -> ProxyResult:
    result = ProxyHeaderParser(**kw).feed(header + b"a1 CAPABILITY\r\n")
    assert result is not None and result.rest == b"a1 CAPABILITY\r\n"
    return result


def test_card_header_has_flags_verify_zero_and_cn() -> None:
    h = proxy_v2_header(src=("192.0.2.7", 40000), dst=("127.0.0.1", 143), sni="frontimap.mssante.fr",
                        tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", card=CARD, send_cn=True)
    assert h.startswith(V2_SIGNATURE) and h[12] == 0x21 and h[13] == 0x11   # v2 PROXY, TCP over IPv4
    r = _parse(h)
    assert r.src == ("192.0.2.7", 40000) and r.dst == ("127.0.0.1", 143)
    info = parse_ssl_tlv(r.tlv(PP2_TYPE_SSL) or b"")
    assert info["client_flags"] == PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
    assert info["verify"] == 0
    assert (info["version"], info["cn"], info["cipher"], info["sig_alg"], info["key_alg"]) == (
        "TLSv1.3", "810001234567", "TLS_AES_256_GCM_SHA384", "RSA-SHA256", "RSA2048")
    assert r.tlv(PP2_TYPE_AUTHORITY) == b"frontimap.mssante.fr"
    # spec 2.2.6 layout: type 0x20, 16-bit length, client byte, 32-bit verify, then sub-TLVs
    at = h.index(bytes([PP2_TYPE_SSL]), 16 + 12)
    length = struct.unpack("!H", h[at + 1:at + 3])[0]
    assert h[at + 3] == 0x07 and h[at + 4:at + 8] == b"\0\0\0\0" and length == len(r.tlv(PP2_TYPE_SSL) or b"")


def test_no_cn_when_asked_and_no_card_means_ssl_only() -> None:
    r = _parse(proxy_v2_header(src=("192.0.2.7", 1), dst=("127.0.0.1", 143), sni=None, tls_version="TLSv1.2",
                               cipher="ECDHE-RSA-AES128-GCM-SHA256", card=CARD, send_cn=False))
    info = parse_ssl_tlv(r.tlv(PP2_TYPE_SSL) or b"")
    assert info["cn"] is None and info["verify"] == 0 and info["sig_alg"] == "RSA-SHA256"
    assert r.tlv(PP2_TYPE_AUTHORITY) is None
    r = _parse(proxy_v2_header(src=("192.0.2.7", 1), dst=("127.0.0.1", 143), sni=None, tls_version="TLSv1.2",
                               cipher="X", card=None, send_cn=True))
    info = parse_ssl_tlv(r.tlv(PP2_TYPE_SSL) or b"")
    assert info["client_flags"] == PP2_CLIENT_SSL and info["verify"] != 0 and info["cn"] is None


def test_ipv6_and_mapped_clients() -> None:
    r = _parse(proxy_v2_header(src=("2001:db8::7", 5), dst=("::1", 993), sni=None, tls_version="TLSv1.3",
                               cipher="X", card=CARD, send_cn=True))
    assert r.src == ("2001:db8::7", 5) and r.dst == ("::1", 993)
    r = _parse(proxy_v2_header(src=("::ffff:192.0.2.9", 5), dst=("::ffff:127.0.0.1", 993), sni=None,
                               tls_version="TLSv1.3", cipher="X", card=CARD, send_cn=True))
    assert r.src == ("192.0.2.9", 5)


def test_identity_tlvs_and_crc32c() -> None:
    identity = {"idnat_ps": "810001234567", "subject": "CN=810001234567,O=x", "authority": "igc-cps-2ter"}
    h = proxy_v2_header(src=("192.0.2.7", 1), dst=("127.0.0.1", 143), sni="a.example", tls_version="TLSv1.3",
                        cipher="X", card=CARD, send_cn=True, identity=identity, crc32c=True)
    r = _parse(h, require_crc32c=True)
    assert r.tlvs[0][0] == PP2_TYPE_CRC32C
    assert r.tlv(IDENTITY_TLVS["idnat_ps"]) == b"810001234567"
    assert r.tlv(IDENTITY_TLVS["authority"]) == b"igc-cps-2ter"
    assert r.tlv(IDENTITY_TLVS["serial"]) is None     # absent fields are not sent
    corrupted = bytearray(h)
    corrupted[-1] ^= 1
    with pytest.raises(Exception, match="bad_crc"):
        ProxyHeaderParser().feed(bytes(corrupted))


def test_never_over_1500_bytes_identity_tlvs_dropped_first() -> None:
    identity = {"idnat_ps": "810001234567", "subject": "O=" + "x" * 1400}
    h = proxy_v2_header(src=("192.0.2.7", 1), dst=("127.0.0.1", 143), sni="a.example", tls_version="TLSv1.3",
                        cipher="X", card=CARD, send_cn=True, identity=identity)
    assert len(h) <= MAX_HEADER
    r = _parse(h)
    assert r.tlv(IDENTITY_TLVS["subject"]) is None and r.tlv(PP2_TYPE_SSL) is not None
    assert r.tlv(IDENTITY_TLVS["idnat_ps"]) == b"810001234567"   # what fits is kept
    with pytest.raises(ValueError, match="max_size"):
        proxy_v2_header(src=("192.0.2.7", 1), dst=("127.0.0.1", 143), sni="a." * 750 + "example",
                        tls_version="TLSv1.3", cipher="X", card=CARD, send_cn=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return build(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(("card", "cn"), [("cps-2ter", "810001234567"), ("fort", "810009876543"),
                                          ("standard-cpe", "30B0057881/CPET0099")])
def test_card_facts_read_the_cn_from_the_multivalued_rdn(pki: TestPki, card: str, cn: str) -> None:
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(pki.cards[card].chain.read_bytes())
    facts = card_facts(leaf)
    assert facts.cn == cn and facts.sig_alg == "RSA-SHA256" and (facts.key_alg or "").startswith("RSA")


def _header(identity: dict[str, str] | None) -> bytes:
    return proxy_v2_header(src=("192.0.2.7", 1), dst=("127.0.0.1", 143), sni="a.example", tls_version="TLSv1.3",
                           cipher="X", card=CARD, send_cn=True, identity=identity)


def test_an_identity_tlv_that_fits_exactly_is_kept() -> None:
    room = MAX_HEADER - len(_header(None))
    h = _header({"idnat_ps": "a" * (room - 3)})            # 3 bytes of type and length, then the value
    assert len(h) == MAX_HEADER and _parse(h).tlv(IDENTITY_TLVS["idnat_ps"]) == b"a" * (room - 3)
    h = _header({"idnat_ps": "a" * (room - 2)})
    assert len(h) == len(_header(None)) and _parse(h).tlv(IDENTITY_TLVS["idnat_ps"]) is None


def test_each_kept_identity_tlv_takes_its_room_from_the_next() -> None:
    room = MAX_HEADER - len(_header(None))
    first = "a" * 10                                        # 13 bytes with its type and length
    fits = {"idnat_ps": first, "subject": "s" * (room - 13 - 3)}
    h = _header(fits)
    assert len(h) == MAX_HEADER
    assert _parse(h).tlv(IDENTITY_TLVS["subject"]) == fits["subject"].encode()
    over = {"idnat_ps": first, "subject": "s" * (room - 13 - 2)}
    r = _parse(_header(over))
    assert r.tlv(IDENTITY_TLVS["idnat_ps"]) == first.encode() and r.tlv(IDENTITY_TLVS["subject"]) is None
