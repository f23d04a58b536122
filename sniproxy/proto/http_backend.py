"""The backend side of the HTTPS reverse proxy, sans-IO: one request framed again, its response parsed.

Owns: writing the request head and body the backend sees (our framing, never the client's), and
turning the backend's bytes into response events with llhttp (``httptools``, strict: it refuses bare
LF, obs-fold, Content-Length with Transfer-Encoding, bad chunk sizes).
Must not: do I/O, log, or read a clock.

Why not h11 here (it was, until issue 16): an h11 client connection cost about 130 us per small
exchange on these machines (request events, response events, its state machine), a third of the
proxy's CPU per request; llhttp parses the same response in under 10 us. The backend is the
operator's own service, but its responses are still parsed strictly: a response the client would
read differently from us is a smuggling vector in the other direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import httptools

from sniproxy.errors import Reason, SniproxyError

Headers = list[tuple[bytes, bytes]]


class _Stop(SniproxyError):
    """Raised in an llhttp callback to stop the parser (httptools has no pause)."""


class RequestError(SniproxyError):
    """A request head or body this side cannot write out (the caller answers 400)."""

    REASON = Reason.BAD_REQUEST


# Events out (facts about the backend's response).


@dataclass(frozen=True, slots=True)
class Informational:
    """A 1xx response before the final one (100 Continue, 103 Early Hints...)."""

    status: int


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The final response's status line and fields."""

    status: int
    reason: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class ResponseBody:
    """A piece of the response body (de-chunked)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The response is complete; ``reusable``: the connection may carry another exchange."""

    reusable: bool


@dataclass(frozen=True, slots=True)
class ResponseBroken:
    """The backend broke HTTP/1.1 (or closed before the response ended): answer 502."""

    detail: str


Event = Informational | ResponseHead | ResponseBody | ResponseEnd | ResponseBroken

_REUSABLE = ResponseEnd(reusable=True)       # (frozen: one of each, not one per response)
_NOT_REUSABLE = ResponseEnd(reusable=False)

_NO_BODY = (204, 304)
_FRAMING = (b"content-length", b"transfer-encoding")


_BLOCK_REFUSED = frozenset({b"host", b"content-length", b"transfer-encoding"})
# A reason phrase the client writer takes (http_server._REASON, h11's grammar: HTAB, SP, VCHAR, obs-text). llhttp
# also takes control characters there: such a response is broken here rather than refused by the writer.
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")

# What a finished exchange holds instead of its own parser: one for all, with no callbacks (see receive_data).
_SPENT = httptools.HttpResponseParser(object())


def field_block(headers: Headers) -> bytes:
    """``headers`` (fields already checked: ``check_fields``) encoded once for ``BackendExchange.request``.

    The identity fields are the same on every request of a connection (several KB with a card): encoded
    here once per connection and Host, they are not walked again per request. A field that bears on the
    request's routing or framing cannot be in such a block (``request`` counts those in ``headers`` only):
    raises ``RequestError``.
    """
    for name, _ in headers:
        if name.lower() in _BLOCK_REFUSED:
            raise RequestError(f"{name.decode('latin-1')} in a pre-encoded field block")
    return b"".join([b"%s: %s\r\n" % (name, value) for name, value in headers])


class BackendExchange:
    """One request/response exchange on a backend connection (a new one per request)."""

    __slots__ = ("_chunked", "_done", "_ended", "_events", "_extra", "_final", "_head_only",
                 "_headers", "_in_head", "_keep", "_parser", "_reason", "_remaining", "_sent", "_status")

    # httptools looks every callback up when a parser is made: a missing one costs an AttributeError per
    # exchange. None: no callback, nothing raised.
    on_chunk_header: ClassVar[None] = None
    on_chunk_complete: ClassVar[None] = None

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[Event] = []
        self._headers: Headers = []
        self._reason = b""
        self._status = 0
        self._in_head = False      # between a status line and the end of its fields
        self._done = False         # the final response ended (or broke): nothing more is read
        self._final = False        # the final (non-1xx) response head was read
        self._ended = False        # its end was reached and not reported yet
        self._keep = False         # llhttp: the backend keeps the connection open after it
        self._extra = False        # bytes came after the end: never reuse the connection
        self._head_only = False    # a response to HEAD: it ends with its head
        self._chunked = False      # the request body is chunk-framed
        self._remaining: int | None = None   # request body bytes still owed (Content-Length)
        self._sent = False         # the whole request was written (a response may come before)

    # ------------------------------------------------------------------ the request
    def request(self, method: bytes, target: bytes, headers: Headers, *, chunked: bool, block: bytes = b"") -> bytes:
        """The request head. ``headers`` are fields already checked (llhttp's parser, ``check_fields``);
        ``block``, written after them, is a ``field_block`` (the identity fields, encoded once per connection)."""
        return b"".join(self.request_parts(method, target, headers, chunked=chunked, block=block))

    def request_parts(self, method: bytes, target: bytes, headers: Headers, *, chunked: bool,
                      block: bytes) -> list[bytes]:
        """``request``'s head in pieces, ``block`` one of them as it is: the caller joins them once with
        the body (a block of several KB is not copied into a head first, then into the write)."""
        hosts = 0
        length: bytes | None = None
        lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
        for name, value in headers:   # one pass: written, and the two fields request checks counted
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                length = value
            lines.append(b"%s: %s\r\n" % (name, value))
        if hosts != 1:   # RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host
            raise RequestError("missing Host header" if hosts == 0 else "several Host headers")
        if chunked and length is not None:
            raise RequestError("both Content-Length and chunked")
        if length is not None:
            if not length.isdigit():
                raise RequestError("bad Content-Length")
            self._remaining = int(length)
        self._chunked = chunked
        self._head_only = method == b"HEAD"
        return [b"".join(lines), block, b"\r\n"]

    def body(self, data: bytes) -> bytes:
        """A piece of the request body, framed for the backend."""
        if not data:
            return b""
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self._remaining is None or len(data) > self._remaining:
            raise RequestError("body longer than its Content-Length")
        self._remaining -= len(data)
        return data

    def end(self) -> bytes:
        """The end of the request body."""
        if self._remaining:
            raise RequestError("body shorter than its Content-Length")
        self._sent = True
        return b"0\r\n\r\n" if self._chunked else b""

    # ------------------------------------------------------------------ the response
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed the backend's bytes (``b""`` at its end of stream) and return what they complete."""
        if self._done:
            if data:
                self._extra = True
            return []
        if not data:
            return self._eof()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken("backend switched protocols")
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop) and not isinstance(exc.__cause__, _Stop):
                raise
        except httptools.HttpParserError as exc:
            if not self._done:
                self._broken(f"backend response: {exc}")
            else:
                self._extra = True
        if self._done:
            # Nothing is parsed after the end. The parser holds this exchange's bound callbacks: a reference
            # cycle only the garbage collector would free, about 12 objects per request, enough to run a young
            # collection every ~60 requests (decision 0015). Dropped here, after feed_data returned, never in
            # one of its callbacks.
            self._parser = _SPENT
        if self._ended:   # reported last: bytes after the end in this same read forbid reuse
            self._ended = False
            # reusable only between whole exchanges: not with a request body still owed, nor bytes after
            reusable = self._keep and self._sent and not self._extra and not self._head_only
            self._events.append(_REUSABLE if reusable else _NOT_REUSABLE)
        out, self._events = self._events, []
        return out

    def _eof(self) -> list[Event]:
        self._done = True
        self._parser = _SPENT   # (the cycle, as in receive_data)
        # (the framing fields are looked for only here, at the end of the stream, not in every field's callback)
        framed = any(name.lower() in _FRAMING for name, _ in self._headers)
        if self._final and not framed and self._status not in _NO_BODY:
            # HTTP/1.0 style: the body is framed by the connection's end (RFC 9112 §6.3 rule 8).
            return [_NOT_REUSABLE]
        return [ResponseBroken("backend closed before the response ended")]

    def _broken(self, detail: str) -> None:
        self._done = True
        self._events.append(ResponseBroken(detail))

    # llhttp callbacks (httptools calls them by name)
    def on_message_begin(self) -> None:
        """llhttp: a new message starts (after the end of the final one: extra bytes)."""
        if self._done:
            self._extra = True
            raise _Stop   # the rest is never parsed
        self._headers = []
        self._reason = b""
        self._in_head = True

    def on_status(self, reason: bytes) -> None:
        """llhttp: the reason phrase (possibly in pieces)."""
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp: one field (trailers come after the head and are dropped: RFC 9110 §6.5.1)."""
        if self._in_head:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        """llhttp: the head is complete."""
        self._in_head = False
        status = self._parser.get_status_code()
        self._status = status
        if 100 <= status < 200:
            if status != 101:   # a 101 raises HttpParserUpgrade after this
                self._events.append(Informational(status))
            return
        self._final = True
        reason = self._reason
        if reason != b"OK" and _REASON.fullmatch(reason) is None:
            self._broken("backend response: control character in the reason phrase")
            raise _Stop
        self._events.append(ResponseHead(status, reason, self._headers))
        if self._head_only:   # llhttp would wait for the body its Content-Length announces
            self._done = self._ended = True
            raise _Stop

    def on_body(self, body: bytes) -> None:
        """llhttp: a piece of the body."""
        if not self._final:
            # llhttp reads the framed body of a 1xx other than 100-103 (150, 199): a body before any final
            # head, which no client could read as we would. Broken (502), never passed on as the response's body.
            self._broken("backend sent a body with an interim (1xx) response")
            raise _Stop
        if not self._done:
            self._events.append(ResponseBody(body))

    def on_message_complete(self) -> None:
        """llhttp: the message ended (a 1xx one: the final response follows)."""
        if self._done or not self._final:
            return
        self._done = self._ended = True
        self._keep = self._parser.should_keep_alive()
