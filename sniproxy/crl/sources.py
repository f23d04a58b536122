"""Fetch the raw bytes of one CRL source: HTTP(S), LDAP(S) (RFC 4516 URLs) or a local file.

Owns transport only: conditional requests (ETag / If-Modified-Since, file mtime), the size limit,
the whole-fetch deadline (a server that trickles bytes hits it), and turning every transport
failure into ``CrlRejected`` with a stable reason. Decoding and validation are in ``validate``.
Never blocks the event loop: HTTP is async (httpx), LDAP (ldap3, synchronous) and file reads run
in a thread.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from sniproxy.crl.errors import CrlRejected

_LDAP_DEFAULT_ATTR = "certificateRevocationList;binary"


@dataclass(frozen=True, slots=True)
class Conditional:
    """Validators of the copy in hand, sent so an unchanged CRL is not downloaded again."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetch result: the body in ``data``, or spooled to the file ``path`` (the caller's to remove).

    Both are None when the source answered "not modified".
    """

    data: bytes | None
    etag: str | None = None
    last_modified: str | None = None
    path: Path | None = None

    @property
    def not_modified(self) -> bool:
        """True when the source said the copy in hand is current."""
        return self.data is None and self.path is None


#: Bodies over this size are spooled to a file when the caller gives a spool directory: joining or
#: reading tens of MB into one bytes object holds the GIL long enough to stall handshakes.
SPOOL_OVER = 64 * 1024


#: How many leading bytes ``check_head`` needs to decide (PEM's "-----BEGIN", or DER's tag and length).
HEAD_BYTES = 16
_PEM_START = b"-----BEGIN"


def check_head(head: bytes, max_bytes: int) -> None:
    """Refuse a body whose first bytes cannot start a CRL, before the rest is downloaded or read.

    A CRL is DER (a SEQUENCE: tag 0x30, then a definite length, RFC 5280 4.1 / X.690 8.1.3) or PEM
    ("-----BEGIN", after optional whitespace). A CRL server answering 200 MB of zeros or an HTML page
    would otherwise be spooled whole and read whole by the CRL helper before ``decode`` refuses it.
    A DER length that announces more than ``max_bytes`` is refused as ``too_large`` at once. ``head``
    may be shorter than ``HEAD_BYTES`` (a short body): only what it holds is judged.
    """
    text = head.lstrip(b" \t\r\n")
    if not text:
        return
    if text[:1] == b"-":
        if not _PEM_START.startswith(text[:len(_PEM_START)]):
            raise CrlRejected("not_a_crl", f"body starts with {head[:16]!r}, not a PEM CRL")
        return
    if head[:1] != b"\x30":
        kind = "HTML" if text[:1] == b"<" else "not DER or PEM"
        raise CrlRejected("not_a_crl", f"body is {kind}: starts with {head[:16].hex()}")
    if len(head) < 2:
        return
    first = head[1]
    if first < 0x80:
        length, size = first, 2
    elif 0x81 <= first <= 0x84:       # 0x80 is BER's indefinite length, never DER; 4 length bytes is 4 GiB
        n = first & 0x7F
        if len(head) < 2 + n:
            return
        length, size = int.from_bytes(head[2:2 + n], "big"), 2 + n
    else:
        raise CrlRejected("not_a_crl", f"body is not DER: length byte {first:#04x}")
    if size + length > max_bytes:
        raise CrlRejected("too_large", f"DER length announces {size + length} bytes, over {max_bytes}")


def _spool_file(directory: Path) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(dir=directory, prefix=".incoming.", suffix=".tmp")
    return fd, Path(name)


@dataclass(frozen=True, slots=True)
class LdapUrl:
    """The parts of an RFC 4516 URL that a CRL fetch uses."""

    host: str
    port: int
    tls: bool
    dn: str
    attribute: str
    filter: str


def kind(url: str) -> str:
    """``http``, ``ldap`` or ``file`` for a source string."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        return "http"
    if scheme in ("ldap", "ldaps"):
        return "ldap"
    return "file"


def parse_ldap_url(url: str) -> LdapUrl:
    """Split ``ldap://host:port/dn?attribute?scope?filter`` (percent-decoded; scope must be base)."""
    parts = urlsplit(url)
    tls = parts.scheme.lower() == "ldaps"
    if not parts.hostname:
        raise ValueError(f"LDAP URL without a host: {url}")
    fields = [*parts.query.split("?"), "", "", ""][:3]
    attrs, scope, flt = (unquote(f) for f in fields)
    attribute = attrs.split(",")[0].strip() or _LDAP_DEFAULT_ATTR
    if scope.strip().lower() not in ("", "base"):
        raise ValueError(f"LDAP URL scope must be base for a CRL, got {scope!r}")
    return LdapUrl(
        host=parts.hostname,
        port=parts.port or (636 if tls else 389),
        tls=tls,
        dn=unquote(parts.path.lstrip("/")),
        attribute=attribute,
        # Real CA URLs write the filter bare (``objectClass=pkiCA``); LDAP libraries want it in parentheses.
        filter=_parenthesize(flt.strip() or "objectClass=*"),
    )


def _parenthesize(flt: str) -> str:
    return flt if flt.startswith("(") else f"({flt})"


async def fetch(url: str, cond: Conditional, *, timeout: float, max_bytes: int,  # noqa: ASYNC109
                spool: Path | None = None) -> Fetched:
    """Fetch ``url`` within ``timeout`` seconds and ``max_bytes``; raise ``CrlRejected`` on any failure.

    With ``spool`` (a directory), a body over ``SPOOL_OVER`` bytes comes back as a file there.
    """
    try:
        async with asyncio.timeout(timeout):
            k = kind(url)
            if k == "http":
                return await _fetch_http(url, cond, max_bytes, spool)
            if k == "ldap":
                return await asyncio.to_thread(_fetch_ldap, url, timeout, max_bytes)
            return await asyncio.to_thread(_fetch_file, Path(url), cond, max_bytes, spool)
    except TimeoutError:
        raise CrlRejected("timeout", f"no complete answer within {timeout:g} s") from None


async def _fetch_http(url: str, cond: Conditional, max_bytes: int, spool: Path | None) -> Fetched:
    headers = {"Accept": "application/pkix-crl, application/x-pkcs7-crl;q=0.9, */*;q=0.1",
               "User-Agent": "sniproxy-crl",
               # raw bytes are counted against the size limit: no compression to expand behind it
               "Accept-Encoding": "identity"}
    if cond.etag:
        headers["If-None-Match"] = cond.etag
    if cond.last_modified:
        headers["If-Modified-Since"] = cond.last_modified
    try:
        # trust_env: operators behind an egress proxy set HTTP(S)_PROXY / NO_PROXY as for any tool.
        # The whole-fetch deadline is the asyncio.timeout around this call (it also stops a trickle).
        async with httpx.AsyncClient(follow_redirects=True, max_redirects=3, timeout=None) as client:  # noqa: S113
            async with client.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 304:
                    return Fetched(None, cond.etag, cond.last_modified)
                if resp.status_code != 200:
                    raise CrlRejected("http_status", f"HTTP {resp.status_code} {resp.reason_phrase}")
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                    raise CrlRejected("too_large", f"Content-Length {declared} exceeds {max_bytes} bytes")
                encoding = resp.headers.get("content-encoding", "identity").lower()
                if encoding not in ("identity", ""):
                    raise CrlRejected("http_status", f"unsupported Content-Encoding {encoding}")
                body = _Body(spool)
                head = b""
                try:
                    async for chunk in resp.aiter_raw():
                        if body.size + len(chunk) > max_bytes:
                            raise CrlRejected("too_large", f"body exceeds {max_bytes} bytes")
                        if len(head) < HEAD_BYTES:
                            head += chunk[:HEAD_BYTES - len(head)]
                            if len(head) == HEAD_BYTES:
                                check_head(head, max_bytes)
                        await body.add(chunk)
                    if len(head) < HEAD_BYTES:
                        check_head(head, max_bytes)
                    data, path = await body.finish()
                except BaseException:
                    await body.discard()
                    raise
                return Fetched(data, resp.headers.get("etag"), resp.headers.get("last-modified"), path)
    except httpx.HTTPError as exc:
        # A body cut short (the server closed before Content-Length) lands here too.
        raise CrlRejected("unreachable", f"{type(exc).__name__}: {exc}") from None


class _Body:
    """An HTTP body kept in memory while small, then spooled to a file chunk by chunk."""

    def __init__(self, spool: Path | None) -> None:
        self.spool = spool
        self.chunks: list[bytes] = []
        self.size = 0
        self.fd: int | None = None
        self.path: Path | None = None

    async def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.fd is None and self.spool is not None and self.size > SPOOL_OVER:
            self.fd, self.path = await asyncio.to_thread(_spool_file, self.spool)
            chunk, self.chunks = b"".join((*self.chunks, chunk)), []
        if self.fd is not None:
            os.write(self.fd, chunk)   # one network chunk into the page cache: microseconds
        else:
            self.chunks.append(chunk)

    async def finish(self) -> tuple[bytes | None, Path | None]:
        if self.fd is None:
            return b"".join(self.chunks), None
        fd, self.fd = self.fd, None
        await asyncio.to_thread(_sync_close, fd)
        return None, self.path

    async def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.path is not None:
            await asyncio.to_thread(self.path.unlink, missing_ok=True)


def _sync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fetch_ldap(url: str, timeout: float, max_bytes: int) -> Fetched:
    import ldap3
    from ldap3.core.exceptions import LDAPException

    try:
        u = parse_ldap_url(url)
    except ValueError as exc:
        raise CrlRejected("bad_url", str(exc)) from None
    seconds = max(1, math.ceil(timeout))  # ldap3 packs it into SO_RCVTIMEO: whole seconds only
    try:
        server = ldap3.Server(u.host, port=u.port, use_ssl=u.tls, get_info=ldap3.NONE, connect_timeout=seconds)
        conn = ldap3.Connection(server, auto_bind=True, read_only=True, receive_timeout=seconds)
        try:
            conn.search(u.dn, u.filter, search_scope=ldap3.BASE, attributes=[u.attribute])
            entries = list(conn.response or [])
        finally:
            conn.unbind()
    except LDAPException as exc:
        raise CrlRejected("unreachable", f"LDAP {type(exc).__name__}: {exc}") from None
    entries = [e for e in entries if e.get("type") == "searchResEntry"]
    if not entries:
        raise CrlRejected("ldap_no_entry", f"no entry {u.dn!r} matching {u.filter}")
    wanted = u.attribute.lower().split(";")[0]
    for name, values in (entries[0].get("raw_attributes") or {}).items():
        if name.lower().split(";")[0] == wanted and values:
            value = values[0]
            if len(value) > max_bytes:
                raise CrlRejected("too_large", f"attribute exceeds {max_bytes} bytes")
            return Fetched(bytes(value))
    raise CrlRejected("ldap_no_attribute", f"entry {u.dn!r} has no {u.attribute}")


def _fetch_file(path: Path, cond: Conditional, max_bytes: int, spool: Path | None) -> Fetched:
    try:
        st = path.stat()
        tag = f"file:{st.st_mtime_ns}:{st.st_size}:{st.st_ino}"
        if cond.etag == tag:
            return Fetched(None, tag)
        if st.st_size > max_bytes:
            raise CrlRejected("too_large", f"{path} is {st.st_size} bytes, over {max_bytes}")
        with open(path, "rb") as f:
            check_head(f.read(HEAD_BYTES), max_bytes)
        if spool is not None and st.st_size > SPOOL_OVER:
            return Fetched(None, tag, path=_copy_file(path, spool, max_bytes))
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise CrlRejected("unreachable", f"{path}: {os.strerror(exc.errno or 0) or exc}") from None
    if len(data) > max_bytes:
        raise CrlRejected("too_large", f"{path} grew over {max_bytes} bytes")
    return Fetched(data, tag)


def _copy_file(path: Path, spool: Path, max_bytes: int) -> Path:
    """Copy a large source file into the spool in the kernel (no 50 MB bytes object in this process)."""
    fd, tmp = _spool_file(spool)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())          # it may become the cache copy by rename
        if tmp.stat().st_size > max_bytes:
            raise CrlRejected("too_large", f"{path} grew over {max_bytes} bytes")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
