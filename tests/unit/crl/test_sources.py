"""sniproxy.crl.sources: RFC 4516 LDAP URLs, source kinds, and fetching (files; HTTP through a mock transport)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sniproxy.crl import sources
from sniproxy.crl.errors import CrlRejected
from sniproxy.crl.sources import Conditional, Fetched, LdapUrl, kind, parse_ldap_url

IGC_HOST = "annuaire-igc.esante.gouv.fr"
IGC_DN = ("cn=AC IGC-SANTE FORT PERSONNES,ou=AC RACINE IGC-SANTE FORT,ou=IGC-SANTE,ou=0002187512751,"
          "o=ASIP-SANTE,c=FR")
IGC_URL = (f"ldap://{IGC_HOST}/cn=AC%20IGC-SANTE%20FORT%20PERSONNES,ou=AC%20RACINE%20IGC-SANTE%20FORT,"
           "ou=IGC-SANTE,ou=0002187512751,o=ASIP-SANTE,c=FR?certificateRevocationList;binary?base?objectClass=pkiCA")
IGC = LdapUrl(host=IGC_HOST, port=389, tls=False, dn=IGC_DN, attribute="certificateRevocationList;binary",
              filter="(objectClass=pkiCA)")


# -- parse_ldap_url ------------------------------------------------------------------------------------
def test_igc_sante_url() -> None:
    assert parse_ldap_url(IGC_URL) == IGC


def test_igc_sante_url_with_literal_spaces() -> None:
    literal = IGC_URL.replace("%20", " ")
    assert " " in literal
    assert parse_ldap_url(literal) == IGC


def test_delta_attribute() -> None:
    url = IGC_URL.replace("certificateRevocationList;binary", "deltaRevocationList;binary")
    u = parse_ldap_url(url)
    assert u.attribute == "deltaRevocationList;binary" and u.dn == IGC_DN and u.filter == "(objectClass=pkiCA)"


def test_ldaps_default_port() -> None:
    u = parse_ldap_url(IGC_URL.replace("ldap://", "ldaps://"))
    assert (u.tls, u.port, u.host) == (True, 636, IGC_HOST)
    assert parse_ldap_url("LDAPS://h/cn=x").tls is True


@pytest.mark.parametrize(("url", "port", "tls"), [("ldap://h.example:3389/cn=x", 3389, False),
                                                  ("ldaps://h.example:10636/cn=x", 10636, True),
                                                  ("ldap://h.example:636/cn=x", 636, False)])
def test_explicit_port(url: str, port: int, tls: bool) -> None:
    u = parse_ldap_url(url)
    assert (u.host, u.port, u.tls, u.dn) == ("h.example", port, tls, "cn=x")


@pytest.mark.parametrize("scope", ["sub", "one", "SUB", "children", "subtree"])
def test_scope_other_than_base(scope: str) -> None:
    with pytest.raises(ValueError, match="scope"):
        parse_ldap_url(f"ldap://h/cn=x?certificateRevocationList;binary?{scope}?objectClass=pkiCA")


@pytest.mark.parametrize("scope", ["base", "BASE", "", " base "])
def test_base_scope_spellings(scope: str) -> None:
    assert parse_ldap_url(f"ldap://h/cn=x?a?{scope}?f=1").filter == "(f=1)"


@pytest.mark.parametrize("url", ["ldap:///cn=x?certificateRevocationList;binary?base",
                                 "ldap://:389/cn=x", "ldaps:///"])
def test_missing_host(url: str) -> None:
    with pytest.raises(ValueError, match="without a host"):
        parse_ldap_url(url)


@pytest.mark.parametrize("url", ["ldap://h:99999/cn=x", "ldap://h:port/cn=x"])
def test_bad_port(url: str) -> None:
    with pytest.raises(ValueError):
        parse_ldap_url(url)


def test_defaults_when_only_a_dn_is_given() -> None:
    u = parse_ldap_url("ldap://h/cn=AC%20X,o=Y")
    assert u == LdapUrl("h", 389, False, "cn=AC X,o=Y", "certificateRevocationList;binary", "(objectClass=*)")


def test_attribute_list_takes_the_first_and_filter_keeps_parentheses() -> None:
    u = parse_ldap_url("ldap://h/cn=x?%20deltaRevocationList;binary%20,cn?base?(%26(objectClass=pkiCA)(cn=x))")
    assert u.attribute == "deltaRevocationList;binary"
    assert u.filter == "(&(objectClass=pkiCA)(cn=x))"


def test_percent_encoded_dn_specials() -> None:
    u = parse_ldap_url("ldap://h/cn=A%2CB%3FC,o=%C3%89TAT")
    assert u.dn == "cn=A,B?C,o=ÉTAT"


# -- kind ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("http://crl.example/a.crl", "http"), ("HTTPS://crl.example/a.crl", "http"),
    ("ldap://h/cn=x", "ldap"), ("LDAPS://h/cn=x", "ldap"), (IGC_URL, "ldap"),
    ("/var/lib/sniproxy/a.crl", "file"), ("relative/a.crl", "file"), ("a.crl", "file"),
])
def test_kind(url: str, expected: str) -> None:
    assert kind(url) == expected


# -- file fetch ------------------------------------------------------------------------------------------
async def test_file_fetch_and_not_modified(tmp_path: Path) -> None:
    path = tmp_path / "a.crl"
    path.write_bytes(b"\x30" + b"x" * 99)
    got = await sources.fetch(str(path), Conditional(), timeout=5, max_bytes=1000)
    st = path.stat()
    assert got.data == b"\x30" + b"x" * 99
    assert got.etag == f"file:{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"
    again = await sources.fetch(str(path), Conditional(got.etag), timeout=5, max_bytes=1000)
    assert again == Fetched(None, got.etag)
    # a new mtime is a new tag: read again
    os.utime(path, ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))
    third = await sources.fetch(str(path), Conditional(got.etag), timeout=5, max_bytes=1000)
    assert third.data == got.data and third.etag != got.etag


async def test_file_replaced_by_rename_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "a.crl"
    path.write_bytes(b"\x30old")
    first = await sources.fetch(str(path), Conditional(), timeout=5, max_bytes=1000)
    new = tmp_path / "a.crl.new"
    new.write_bytes(b"\x30new")
    st = path.stat()
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))   # same mtime and size: only the inode differs
    os.replace(new, path)
    got = await sources.fetch(str(path), Conditional(first.etag), timeout=5, max_bytes=1000)
    assert got.data == b"\x30new"


async def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.crl"
    path.write_bytes(b"\x30" * 2048)
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(str(path), Conditional(), timeout=5, max_bytes=2047)
    assert exc.value.reason == "too_large" and "2048" in exc.value.message
    exact = await sources.fetch(str(path), Conditional(), timeout=5, max_bytes=2048)
    assert exact.data is not None and len(exact.data) == 2048


async def test_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "a.crl"
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(str(path), Conditional(), timeout=5, max_bytes=1000)
    assert exc.value.reason == "unreachable"
    assert str(path) in exc.value.message and "No such file" in exc.value.message


async def test_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(str(tmp_path), Conditional(), timeout=5, max_bytes=1 << 20)
    assert exc.value.reason == "unreachable"


async def test_ldap_url_refused_before_any_connection() -> None:
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch("ldap://h.invalid/cn=x?certificateRevocationList;binary?sub?objectClass=pkiCA",
                            Conditional(), timeout=5, max_bytes=1000)
    assert exc.value.reason == "bad_url" and "scope" in exc.value.message


# -- HTTP through httpx.MockTransport (no socket) -------------------------------------------------------
Handler = Callable[[httpx.Request], Any]


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> Callable[[Handler], list[httpx.Request]]:
    """Route the module's HTTP client to ``handler``; returns the list of requests it saw."""
    def install(handler: Handler) -> list[httpx.Request]:
        seen: list[httpx.Request] = []
        real = httpx.AsyncClient

        async def record(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            response = handler(request)
            if asyncio.iscoroutine(response):
                response = await response
            assert isinstance(response, httpx.Response)
            return response

        def client(*args: Any, **kwargs: Any) -> httpx.AsyncClient:
            return real(*args, transport=httpx.MockTransport(record), **kwargs)

        monkeypatch.setattr(sources.httpx, "AsyncClient", client)
        return seen
    return install


URL = "http://crl.example/ac.crl"


def resp(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    """A response still to be streamed, as a server would send it (a real transport never pre-reads it)."""
    return httpx.Response(status, headers={"Content-Length": str(len(body)), **(headers or {})},
                          stream=httpx.ByteStream(body))


async def test_http_ok_with_validators(http: Callable[[Handler], list[httpx.Request]]) -> None:
    seen = http(lambda r: resp(200, b"\x30crl", {"ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024"}))
    got = await sources.fetch(URL, Conditional(), timeout=5, max_bytes=1000)
    assert got == Fetched(b"\x30crl", '"v1"', "Mon, 01 Jan 2024")
    (req,) = seen
    assert req.headers["accept-encoding"] == "identity"
    assert "if-none-match" not in req.headers and "if-modified-since" not in req.headers


async def test_http_not_modified(http: Callable[[Handler], list[httpx.Request]]) -> None:
    seen = http(lambda r: resp(304))
    got = await sources.fetch(URL, Conditional('"v1"', "Mon, 01 Jan 2024"), timeout=5, max_bytes=1000)
    assert got == Fetched(None, '"v1"', "Mon, 01 Jan 2024")
    assert seen[0].headers["if-none-match"] == '"v1"'
    assert seen[0].headers["if-modified-since"] == "Mon, 01 Jan 2024"


async def test_http_status(http: Callable[[Handler], list[httpx.Request]]) -> None:
    http(lambda r: resp(404))
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=5, max_bytes=1000)
    assert exc.value.reason == "http_status" and "404" in exc.value.message


async def test_http_declared_too_large(http: Callable[[Handler], list[httpx.Request]]) -> None:
    http(lambda r: resp(200, b"\x30" * 2000))
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=5, max_bytes=1000)
    assert exc.value.reason == "too_large" and "Content-Length 2000" in exc.value.message


async def test_http_streamed_too_large(http: Callable[[Handler], list[httpx.Request]]) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"\x30" * 300

    http(lambda r: httpx.Response(200, content=body()))
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=5, max_bytes=1000)
    assert exc.value.reason == "too_large" and "body exceeds 1000" in exc.value.message


async def test_http_compressed_body_refused(http: Callable[[Handler], list[httpx.Request]]) -> None:
    http(lambda r: resp(200, b"\x1f\x8b...", {"Content-Encoding": "gzip"}))
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=5, max_bytes=1000)
    assert exc.value.reason == "http_status" and "gzip" in exc.value.message


async def test_http_unreachable(http: Callable[[Handler], list[httpx.Request]]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    http(refuse)
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=5, max_bytes=1000)
    assert exc.value.reason == "unreachable" and "ConnectError" in exc.value.message


async def test_whole_fetch_deadline(http: Callable[[Handler], list[httpx.Request]]) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return resp(200, b"late")

    http(slow)
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=0.05, max_bytes=1000)
    assert exc.value.reason == "timeout" and "0.05" in exc.value.message


# -- spooling large bodies to a file ------------------------------------------------------------------------
async def test_large_file_is_copied_to_the_spool(tmp_path: Path) -> None:
    src, spool = tmp_path / "big.crl", tmp_path / "spool"
    spool.mkdir()
    body = b"\x30\x7f" + bytes(range(256)) * (sources.SPOOL_OVER // 256 + 10)
    src.write_bytes(body)
    got = await sources.fetch(str(src), Conditional(), timeout=5, max_bytes=len(body), spool=spool)
    assert got.data is None and got.path is not None and got.path.parent == spool
    assert got.path.read_bytes() == body and not got.not_modified
    small = tmp_path / "small.crl"
    small.write_bytes(b"\x30\x05small")
    kept = await sources.fetch(str(small), Conditional(), timeout=5, max_bytes=100, spool=spool)
    assert kept.data == b"\x30\x05small" and kept.path is None
    assert sorted(p.name for p in spool.iterdir()) == [got.path.name]


async def test_http_body_spooled_past_the_threshold(http: Callable[[Handler], list[httpx.Request]],
                                                    tmp_path: Path) -> None:
    body = b"\x30" + bytes(sources.SPOOL_OVER * 3)
    http(lambda r: resp(200, body, {"ETag": '"big"'}))
    got = await sources.fetch(URL, Conditional(), timeout=5, max_bytes=len(body), spool=tmp_path)
    assert got.data is None and got.path is not None and got.etag == '"big"'
    assert got.path.read_bytes() == body
    small = await sources.fetch(URL, Conditional(), timeout=5, max_bytes=len(body))   # no spool: in memory
    assert small.data == body and small.path is None


async def test_http_spool_removed_when_the_body_is_too_large(http: Callable[[Handler], list[httpx.Request]],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"\x30\x00"                       # a DER head: the body is judged by its size only
        for _ in range(48):
            yield bytes(sources.SPOOL_OVER // 16)

    spooled: list[Path] = []
    real = sources._spool_file

    def spy(directory: Path) -> tuple[int, Path]:
        fd, path = real(directory)
        spooled.append(path)
        return fd, path

    monkeypatch.setattr(sources, "_spool_file", spy)
    # no Content-Length: the limit is hit while streaming, after the spool file was created
    http(lambda r: httpx.Response(200, content=body()))
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=5, max_bytes=sources.SPOOL_OVER * 2, spool=tmp_path)
    assert exc.value.reason == "too_large"
    assert len(spooled) == 1 and os.listdir(tmp_path) == []


# -- a body that cannot be a CRL is refused at its first bytes ------------------------------------------------
@pytest.mark.parametrize(("head", "reason"), [
    (bytes(16), "not_a_crl"),                          # 200 MB of zeros starts like this
    (b"<html><body>503", "not_a_crl"),
    (b"\x30\x80\x30\x82", "not_a_crl"),              # BER indefinite length: never DER
    (b"\x30\x85\x00\x00\x00\x00\x01", "not_a_crl"),  # five length bytes
    (b"-----END X509 CRL", "not_a_crl"),
    (b"\x30\x84\x10\x00\x00\x00\x30", "too_large"),  # announces 256 MiB + 6 bytes
    (b"\x30\x82\x03\xe9\x30", "too_large"),          # 4 + 1001 bytes with max 1000
])
def test_check_head_refuses(head: bytes, reason: str) -> None:
    with pytest.raises(CrlRejected) as exc:
        sources.check_head(head, 1000 if reason == "too_large" and head[1] == 0x82 else 1 << 28)
    assert exc.value.reason == reason


@pytest.mark.parametrize("head", [b"\x30\x82\x03\xe4\x30\x82", b"  \n-----BEGIN X509 CRL-----", b"-----BE",
                                  b"\x30", b"\x30\x83\x00", b"", b"   ", b"\x30\x10\x30"])
def test_check_head_accepts_what_can_start_a_crl(head: bytes) -> None:
    sources.check_head(head, 1000)


async def test_http_zeros_refused_at_the_first_chunk(http: Callable[[Handler], list[httpx.Request]],
                                                    tmp_path: Path) -> None:
    sent: list[int] = []

    async def zeros() -> AsyncIterator[bytes]:
        for i in range(200):                # 200 x 64 KiB, under max_bytes: only the head can refuse it
            sent.append(i)
            yield bytes(65536)

    http(lambda r: httpx.Response(200, content=zeros()))
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=5, max_bytes=1 << 28, spool=tmp_path)
    assert exc.value.reason == "not_a_crl"
    assert len(sent) == 1 and os.listdir(tmp_path) == []


async def test_http_head_split_across_chunks(http: Callable[[Handler], list[httpx.Request]]) -> None:
    async def split() -> AsyncIterator[bytes]:
        yield b"\x30"
        yield b"\x84\x7f"
        yield b"\xff\xff\xff" + bytes(20)      # announces 2 GiB: refused once the length is complete

    http(lambda r: httpx.Response(200, content=split()))
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(URL, Conditional(), timeout=5, max_bytes=1 << 20)
    assert exc.value.reason == "too_large" and "announces" in exc.value.message


async def test_file_of_zeros_refused_before_the_copy(tmp_path: Path) -> None:
    src, spool = tmp_path / "zeros.crl", tmp_path / "spool"
    spool.mkdir()
    src.write_bytes(bytes(sources.SPOOL_OVER * 2))
    with pytest.raises(CrlRejected) as exc:
        await sources.fetch(str(src), Conditional(), timeout=5, max_bytes=1 << 28, spool=spool)
    assert exc.value.reason == "not_a_crl" and os.listdir(spool) == []
