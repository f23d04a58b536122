"""The client-facing side of the HTTPS reverse proxy: strict HTTP/1.1 request reading, sans-IO.

Owns: splitting the client's byte stream into requests, one at a time and in order (pipelined
requests wait in a bounded buffer until the previous response is complete), the raw checks of
``http_rewrite`` before h11 sees a head, and the serialization of responses.
Must not: do I/O, log, or read a clock.

Why one ``h11.Connection`` per request: h11 parses a head leniently (bare LF, obs-fold), so each
head is first delimited and checked here, then given to a fresh h11 connection, which frames the
body; the bytes after the body come back through ``trailing_data`` and go through the same checks
as the next head. h11 stays the only parser of request lines, fields and chunked framing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import h11

from sniproxy.proto.http_rewrite import BadRequest, Headers, check_framing, check_head, error_response, reason_phrase

# Events out (facts about the client's stream).


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request head that passed every check (header names lower-cased by h11)."""

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


class _State(Enum):
    HEAD = "head"          # waiting for the next request head
    BODY = "body"          # h11 frames the current body
    WAIT = "wait"          # request complete; its response is not
    DONE = "done"          # refused or closed: nothing more is read


def _guess_soap(head: bytes) -> str | None:
    low = head.lower()
    if b"application/soap+xml" in low:
        return "1.2"
    if b"\nsoapaction:" in low or b"text/xml" in low:
        return "1.1"
    return None


class ClientSide:
    """Requests in, responses out, for one client connection."""

    __slots__ = ("_buf", "_conn", "_eof", "_eol_seen", "_max_head", "_max_line", "_scanned", "_state", "requests")

    def __init__(self, max_request_line: int = 8192, max_header_bytes: int = 32768) -> None:
        self._max_line = max_request_line
        self._max_head = max_header_bytes
        self._buf = bytearray()
        self._conn: h11.Connection | None = None
        self._state = _State.HEAD
        self._eof = False
        # How much of the partial head was already scanned: a head trickled a byte at a time must not
        # be rescanned whole on every byte (quadratic CPU on the one event loop).
        self._scanned = 0
        self._eol_seen = False
        self.requests = 0

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
        if self._state is _State.DONE:
            return []
        if not data:
            self._eof = True
        if self._state is _State.BODY:
            assert self._conn is not None
            self._conn.receive_data(data)
            return self._body_events()
        self._buf += data
        return self._advance() if self._state is _State.HEAD else []

    def _refuse(self, detail: str, soap: str | None) -> list[Event]:
        self._state = _State.DONE
        self._buf.clear()
        self._scanned = 0
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
        rest = bytes(buf[end + 4:])
        buf.clear()
        self._scanned, self._eol_seen = 0, False
        if len(head) > self._max_head:
            return self._refuse("request head too large", None)
        try:
            check_head(head, self._max_line)
        except BadRequest as exc:
            return self._refuse(str(exc), _guess_soap(head))
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        conn.receive_data(head)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return self._refuse(str(exc), _guess_soap(head))
        if not isinstance(event, h11.Request):
            return self._refuse("incomplete request head", _guess_soap(head))
        headers: Headers = list(event.headers.raw_items())
        try:
            check_framing(headers)
        except BadRequest as exc:
            return self._refuse(str(exc), _guess_soap(head))
        if event.method == b"CONNECT":
            return self._refuse("CONNECT is not served by a reverse proxy", _guess_soap(head))
        self._conn = conn
        self._state = _State.BODY
        self.requests += 1
        chunked = any(n.lower() == b"transfer-encoding" for n, _ in headers)
        started = RequestStarted(event.method, event.target, [(n.lower(), v) for n, v in headers],
                                 event.http_version, chunked)
        if rest:  # (h11 takes b"" as the end of the stream)
            conn.receive_data(rest)
        if self._eof:
            conn.receive_data(b"")
        return [started, *self._body_events()]

    def _body_events(self) -> list[Event]:
        conn = self._conn
        assert conn is not None
        out: list[Event] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof:
                    self._state = _State.DONE
                    out.append(ClientClosed(mid_request=True))
                else:
                    out += self._refuse(f"bad body framing: {exc}", None)
                return out
            if isinstance(event, h11.Data):
                out.append(BodyReceived(bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                out.append(RequestEnded())
                self._state = _State.WAIT
                data, closed = conn.trailing_data
                self._buf += data
                self._eof = self._eof or closed
                return out
            elif event is h11.NEED_DATA:
                return out
            else:  # ConnectionClosed mid-body, or PAUSED (cannot happen before EndOfMessage)
                self._state = _State.DONE
                out.append(ClientClosed(mid_request=True))
                return out

    # ------------------------------------------------------------------ responses
    def informational(self, status: int, headers: Headers) -> bytes:
        """A 1xx response (100 Continue relayed from the backend)."""
        assert self._conn is not None
        return self._conn.send(h11.InformationalResponse(status_code=status, headers=headers)) or b""

    def response(self, status: int, headers: Headers, reason: bytes = b"") -> bytes:
        """The head of the current request's response; h11 adds the framing it needs."""
        assert self._conn is not None
        return self._conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""

    def body(self, data: bytes) -> bytes:
        """A piece of the response body (chunk-framed by h11 when the length is unknown)."""
        assert self._conn is not None
        return self._conn.send(h11.Data(data=data)) or b""

    def end(self) -> tuple[bytes, bool]:
        """Finish the response: (bytes to send, the connection may serve another request)."""
        conn = self._conn
        assert conn is not None
        out = conn.send(h11.EndOfMessage()) or b""
        keep = conn.our_state is h11.DONE and conn.their_state is h11.DONE and self._state is _State.WAIT
        self._conn = None
        if keep:
            self._state = _State.HEAD
        else:
            self._state = _State.DONE
        return out, keep

    def next_request(self) -> list[Event]:
        """After ``end`` allowed it: start the next pipelined request, if its bytes are here."""
        if self._state is not _State.HEAD:
            return []
        return self._advance()

    def error(self, status: int, message: str, soap: str | None) -> bytes:
        """A complete error response the proxy answers itself, then the stream is done.

        Written without h11 because h11 refuses to answer a request it never accepted (raw-check
        refusals); this is serialization of fixed values, not parsing.
        """
        self._state = _State.DONE
        self._conn = None
        headers, body = error_response(status, message, soap)
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
        head += b"".join(n + b": " + v + b"\r\n" for n, v in headers)
        return head + b"\r\n" + body
