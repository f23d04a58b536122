"""The client-facing side of the HTTPS reverse proxy: strict HTTP/1.1 request reading, sans-IO.

Owns: splitting the client's byte stream into requests, one at a time and in order (pipelined
requests wait in a bounded buffer until the previous response is complete), the raw checks of
``http_rewrite`` before a head is parsed, the framing of request bodies (Content-Length counted,
chunked decoded: ``http_body``) and the serialization of responses.
Must not: do I/O, log, or read a clock.

Why llhttp for the head but our own body framing (issue 16, docs/decisions/0007): each head is
first delimited and checked here (bare LF/CR, obs-fold, control characters, lengths), then parsed
by a fresh ``httptools`` (llhttp, strict) parser, fed that head only: llhttp would otherwise run on
into the next pipelined request within one read, and the proxy must stop at the end of each body
until its response is written. The body is framed here from the head's Content-Length or chunked
coding, and the bytes after it go through the same checks as the next head. Until issue 16 h11 did
both (one ``h11.Connection`` per request: 79 us per small exchange against 21 us now, min of
``bench/http_client_side.py`` at load average 8; 547 k against 161 k instructions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import httptools

from sniproxy.errors import SniproxyError
from sniproxy.proto.http_body import BadChunk, ChunkedBody
from sniproxy.proto.http_rewrite import BadRequest, Headers, check_framing, check_head, error_response, reason_phrase

# Events out (facts about the client's stream).


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request head that passed every check (header names lower-cased)."""

    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes
    chunked: bool                 # the body is chunked (else Content-Length or none)


@dataclass(frozen=True, slots=True)
class BodyReceived:
    """A piece of the current request's body (already de-chunked)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """The current request's body is complete (trailers, if any, are dropped: RFC 9110 §6.5.1)."""


@dataclass(frozen=True, slots=True)
class RequestRefused:
    """The stream is not acceptable HTTP/1.1: answer ``status`` (400) and close."""

    status: int
    detail: str
    soap: str | None               # SOAP version guessed from the head, for the fault body


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The client closed its side (between requests, or in the middle of one: ``mid_request``)."""

    mid_request: bool


Event = RequestStarted | BodyReceived | RequestEnded | RequestRefused | ClientClosed

_ENDED = RequestEnded()


class ResponseError(SniproxyError):
    """The proxy was asked to write a response HTTP/1.1 cannot carry (a bug upstream of this module)."""


class _State(Enum):
    HEAD = "head"          # waiting for the next request head
    BODY = "body"          # the current body is being framed
    WAIT = "wait"          # request complete; its response is not
    DONE = "done"          # refused or closed: nothing more is read


# The request line as RFC 9112 §3 writes it, one space apart, HTTP/1.0 or 1.1 only (llhttp also takes
# repeated spaces, HTTP/0.9 and 2.0). The method is a token, the target visible ASCII (as h11 had it).
_REQUEST_LINE = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/1\.[01]")
# The response fields the writer reads (framing, connection) or moves (Host goes first, as h11 wrote it).
_RESPONSE_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host"})
# A reason phrase h11 would have written (RFC 9112 §4: HTAB, SP, VCHAR, obs-text).
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def _guess_soap(head: bytes) -> str | None:
    low = head.lower()
    if b"application/soap+xml" in low:
        return "1.2"
    if b"\nsoapaction:" in low or b"text/xml" in low:
        return "1.1"
    return None


class _Head:
    """llhttp's callbacks for one request head (the parser is fed the head alone)."""

    __slots__ = ("complete", "fields", "url")

    # httptools looks every callback up (getattr with a default) when a parser is made: one this class
    # lacks costs an AttributeError raised and dropped, per request. None: no callback, nothing raised.
    on_message_begin: ClassVar[None] = None
    on_body: ClassVar[None] = None
    on_message_complete: ClassVar[None] = None
    on_chunk_header: ClassVar[None] = None
    on_chunk_complete: ClassVar[None] = None

    def __init__(self) -> None:
        self.url = b""
        self.fields: Headers = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops leading whitespace of a value, not trailing (RFC 9112 §5: OWS is not the value)
        self.fields.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.complete = True


class ClientSide:
    """Requests in, responses out, for one client connection."""

    __slots__ = ("_buf", "_chunks", "_eof", "_eol_seen", "_max_head", "_max_line", "_method", "_remaining",
                 "_req_keep", "_req_v11", "_resp", "_resp_keep", "_resp_left", "_scanned", "_state", "requests")

    def __init__(self, max_request_line: int = 8192, max_header_bytes: int = 32768) -> None:
        self._max_line = max_request_line
        self._max_head = max_header_bytes
        self._buf = bytearray()
        self._state = _State.HEAD
        self._eof = False
        # How much of the partial head was already scanned: a head trickled a byte at a time must not
        # be rescanned whole on every byte (quadratic CPU on the one event loop).
        self._scanned = 0
        self._eol_seen = False
        self.requests = 0
        # The request in progress: its body framing and what its response must do.
        self._remaining = 0                     # Content-Length bytes still to come
        self._chunks: ChunkedBody | None = None  # or its chunked decoder
        self._method = b""
        self._req_v11 = True
        self._req_keep = True
        # The response in progress: None before its head, else "length", "chunked", "close" or "none".
        self._resp: str | None = None
        self._resp_left = 0
        self._resp_keep = True

    @property
    def buffered(self) -> int:
        """Bytes held for requests not started yet (the driver pauses reading past a limit)."""
        return len(self._buf)

    @property
    def waiting(self) -> bool:
        """A complete request is waiting for its response."""
        return self._state is _State.WAIT

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client (``b""`` at EOF) and return what they complete."""
        state = self._state
        if state is _State.DONE:
            return []
        if not data:
            self._eof = True
        if state is _State.BODY:
            return self._body(data, [])
        self._buf += data
        return self._advance() if state is _State.HEAD else []

    def _refuse(self, detail: str, soap: str | None) -> list[Event]:
        self._state = _State.DONE
        self._buf.clear()
        self._scanned = 0
        self._chunks = None
        return [RequestRefused(400, detail, soap)]

    def _advance(self) -> list[Event]:
        """In state HEAD: start the next request if its head is complete."""
        buf = self._buf
        # RFC 9112 §2.2: empty lines before a request line are ignored (some clients send one after a body).
        if self._scanned == 0:
            while buf[:2] == b"\r\n":
                del buf[:2]
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            lf = buf.find(b"\n", self._scanned)
            while lf >= 0:
                if lf == 0 or buf[lf - 1] != 0x0D:
                    return self._refuse("bare LF in the request head", _guess_soap(bytes(buf)))
                self._eol_seen = True
                lf = buf.find(b"\n", lf + 1)
            # a CR at the very end may be completed by the next read: rescan it then
            self._scanned = len(buf) - 1 if buf[-1:] == b"\r" else len(buf)
            if len(buf) > self._max_head or (not self._eol_seen and len(buf) > self._max_line):
                return self._refuse("request head too large", None)
            if self._eof:
                self._state = _State.DONE
                return [ClientClosed(mid_request=bool(buf))]
            return []
        head = bytes(buf[:end + 4])
        del buf[:end + 4]
        self._scanned, self._eol_seen = 0, False
        return self._start(head)

    def _start(self, head: bytes) -> list[Event]:
        """Check and parse one delimited head; start its request (and its body, with the bytes after)."""
        buf = self._buf
        if len(head) > self._max_head:
            return self._refuse("request head too large", None)
        try:
            check_head(head, self._max_line)
        except BadRequest as exc:
            return self._refuse(str(exc), _guess_soap(head))
        eol = head.find(b"\r\n")
        if _REQUEST_LINE.fullmatch(head, 0, eol) is None:
            return self._refuse("malformed request line", _guess_soap(head))
        parsed = _Head()
        parser = httptools.HttpRequestParser(parsed)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass     # Upgrade (never forwarded: hop-by-hop) or CONNECT (refused below): the head is complete
        except httptools.HttpParserError as perr:   # (not `exc`: mypyc gives a name one type per function)
            return self._refuse(f"bad request head: {perr}", _guess_soap(head))
        if not parsed.complete:
            return self._refuse("incomplete request head", _guess_soap(head))
        method = parser.get_method()
        # "1.0" or "1.1": the request line ends with it (_REQUEST_LINE), and llhttp parsed that same line
        # (its get_http_version formats a str from the numbers, per request)
        version = head[eol - 3:eol]
        headers = parsed.fields
        try:
            framing = check_framing(headers, lowered=True)   # (on_header lower-cased the names)
        except BadRequest as exc:
            return self._refuse(str(exc), _guess_soap(head))
        if not framing.host and version == b"1.1":
            return self._refuse("missing mandatory Host header (RFC 9112 §3.2)", _guess_soap(head))
        if framing.chunked and version != b"1.1":
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing, whatever follows.
            return self._refuse("Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1)", _guess_soap(head))
        if method == b"CONNECT":
            return self._refuse("CONNECT is not served by a reverse proxy", _guess_soap(head))
        self.requests += 1
        self._method = method
        self._req_v11 = version == b"1.1"
        self._req_keep = self._req_v11 and not framing.close
        self._resp = None
        started = RequestStarted(method, parsed.url, headers, version, framing.chunked)
        self._chunks = ChunkedBody(self._max_head) if framing.chunked else None
        self._remaining = framing.length   # (llhttp and check_framing both took it as digits only)
        self._state = _State.BODY
        if not buf and not self._eof and self._remaining:
            return [started]
        rest = bytes(buf)
        buf.clear()
        return self._body(rest, [started])

    def _body(self, data: bytes, out: list[Event]) -> list[Event]:
        """In state BODY: frame ``data`` (``b""`` at EOF) into body events; the rest waits as the next head."""
        chunks = self._chunks
        if chunks is None:
            left = self._remaining
            if left:
                if len(data) <= left:
                    piece, rest = data, b""
                else:
                    piece, rest = data[:left], data[left:]
                if piece:
                    out.append(BodyReceived(piece))
                    left -= len(piece)
                    self._remaining = left
                if left:
                    if self._eof:
                        self._state = _State.DONE
                        out.append(ClientClosed(mid_request=True))
                    return out
                data = rest
        else:
            try:
                pieces, done = chunks.feed(data)
            except BadChunk as exc:
                if self._eof:
                    self._state = _State.DONE
                    out.append(ClientClosed(mid_request=True))
                else:
                    out += self._refuse(f"bad body framing: {exc}", None)
                return out
            out += [BodyReceived(p) for p in pieces]
            if not done:
                if self._eof:
                    self._state = _State.DONE
                    out.append(ClientClosed(mid_request=True))
                return out
            data = chunks.rest()
            self._chunks = None
        out.append(_ENDED)
        self._state = _State.WAIT
        if data:
            self._buf += data
        return out

    # ------------------------------------------------------------------ responses
    def informational(self, status: int, headers: Headers) -> bytes:
        """A 1xx response (100 Continue relayed from the backend)."""
        assert self._state is _State.BODY or self._state is _State.WAIT
        return b"HTTP/1.1 %d \r\n" % status + _fields(headers, any(n.lower() == b"host" for n, _ in headers)) + b"\r\n"

    def response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        """The head of the current request's response, with the framing it needs (as h11 chose it:
        the backend's Content-Length kept, else chunked for HTTP/1.1 clients, else the end of the
        connection; ``Connection: close`` when this response is the connection's last)."""
        assert self._resp is None and (self._state is _State.BODY or self._state is _State.WAIT)
        if reason != b"OK" and _REASON.fullmatch(reason) is None:
            raise ResponseError(f"illegal reason phrase {reason[:40]!r}")
        lengths: list[bytes] = []
        codings: list[bytes] = []
        close_tokens: list[bytes] = []
        host = False
        for name, value in headers:   # one pass: the fields h11 looked at, as its get_comma_header read them
            low = name.lower()
            if low not in _RESPONSE_FRAMING:
                continue
            if low == b"host":
                host = True
                continue
            into = lengths if low == b"content-length" else codings if low == b"transfer-encoding" else close_tokens
            for item in value.split(b","):
                item = item.strip().lower()
                if item:
                    into.append(item)
        need_close = False
        empty = status in (204, 304)
        if empty:
            framing = "none"
        elif codings:
            if codings != [b"chunked"]:
                raise ResponseError(f"response Transfer-Encoding {codings!r}")
            # to an HTTP/1.0 client a chunked body goes out delimited by the connection's end, as h11 did
            framing = "chunked" if self._req_v11 else "close"
        elif lengths:
            framing = "length"
            self._resp_left = int(lengths[0])
        else:
            framing = "chunked" if self._req_v11 else "close"
        if framing == "chunked" or framing == "close":
            # an unknown length: chunked to an HTTP/1.1 client, else delimited by the connection's end
            headers = [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]
            if self._req_v11:
                headers.append((b"Transfer-Encoding", b"chunked"))
            elif self._method != b"HEAD":
                need_close = True
        if not self._req_keep or need_close:
            tokens = set(close_tokens)
            tokens.discard(b"keep-alive")
            tokens.add(b"close")
            headers = [(n, v) for n, v in headers if n.lower() != b"connection"]
            headers += [(b"Connection", t) for t in sorted(tokens)]
            self._resp_keep = False
        else:
            self._resp_keep = b"close" not in close_tokens
        if self._method == b"HEAD" and not empty:
            framing = "none"     # the headers of a GET, no body (RFC 9110 §9.3.2)
        elif framing == "close":
            self._resp_keep = False
        self._resp = framing
        return b"HTTP/1.1 %d %s\r\n" % (status, reason) + _fields(headers, host) + b"\r\n"

    def body(self, data: bytes) -> bytes:
        """A piece of the response body (chunk-framed when the length is unknown)."""
        framing = self._resp
        if framing == "length":
            if len(data) > self._resp_left:
                raise ResponseError("too much data for the response's Content-Length")
            self._resp_left -= len(data)
            return data
        if framing == "chunked":
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if framing == "close":
            return data
        if framing == "none" and not data:
            return b""
        raise ResponseError("a body on a response that has none" if framing == "none" else "no response head")

    def end(self) -> tuple[bytes, bool]:
        """Finish the response: (bytes to send, the connection may serve another request)."""
        framing = self._resp
        if framing is None:
            raise ResponseError("no response head")
        if framing == "length" and self._resp_left:
            raise ResponseError("response shorter than its Content-Length")
        out = b"0\r\n\r\n" if framing == "chunked" else b""
        keep = self._resp_keep and self._req_keep and self._state is _State.WAIT
        self._resp = None
        self._state = _State.HEAD if keep else _State.DONE
        return out, keep

    def next_request(self) -> list[Event]:
        """After ``end`` allowed it: start the next pipelined request, if its bytes are here."""
        if self._state is not _State.HEAD or (not self._buf and not self._eof):
            return []   # (nothing pipelined: the usual case, with nothing to scan)
        return self._advance()

    def error(self, status: int, message: str, soap: str | None) -> bytes:
        """A complete error response the proxy answers itself, then the stream is done."""
        self._state = _State.DONE
        self._resp = None
        headers, body = error_response(status, message, soap)
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
        head += b"".join(n + b": " + v + b"\r\n" for n, v in headers)
        return head + b"\r\n" + body


def _fields(headers: Headers, host: bool) -> bytes:
    # Host first, as h11 wrote it (RFC 9110 §7.2 asks it of requests; harmless on a response).
    if host:
        headers = ([(n, v) for n, v in headers if n.lower() == b"host"]
                   + [(n, v) for n, v in headers if n.lower() != b"host"])
    return b"".join([b"%s: %s\r\n" % (n, v) for n, v in headers])
