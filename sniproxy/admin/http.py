"""The admin endpoint's HTTP/1.1, sans-IO: one request in (bounded), one response out.

Owns request parsing (request line, headers, an optional small body by Content-Length) and the
rendering of responses. One request per connection: every response says ``Connection: close``,
so there is no keep-alive, pipelining or chunked framing to get wrong. No I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sniproxy.errors import SniproxyError

MAX_HEAD = 8192       # request line + headers: the admin's clients (kubelet, Prometheus, curl) send little
MAX_BODY = 4096       # POST /reload and /drain take no body; a small one is read and ignored
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TARGET = re.compile(rb"^/[\x21-\x7e]*$")
REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 413: "Content Too Large", 422: "Unprocessable Content",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}


class HttpError(SniproxyError):
    """A request the endpoint refuses, with the status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request. ``path`` is the target without its query."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target's path (the part before ``?``)."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The value of the first header called ``name`` (case-insensitive), or None."""
        low = name.lower()
        return next((v for k, v in self.headers if k == low), None)


class RequestParser:
    """Feed bytes as they come; ``feed`` returns the request once whole, or raises ``HttpError``."""

    def __init__(self, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self._buf = bytearray()
        self._max_head = max_head
        self._max_body = max_body
        self._head: Request | None = None
        self._length = 0
        self._done = False

    def feed(self, data: bytes) -> Request | None:
        """Add ``data``; the whole request when complete (once), else None."""
        if self._done:
            if data:
                raise HttpError(400, "bytes after the request (one request per connection)")
            return None
        self._buf += data
        if self._head is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self._max_head:
                    raise HttpError(431, f"request head over {self._max_head} bytes")
                return None
            if end + 4 > self._max_head:
                raise HttpError(431, f"request head over {self._max_head} bytes")
            self._head, self._length = self._parse_head(bytes(self._buf[:end]))
            del self._buf[:end + 4]
        if len(self._buf) > self._length:
            raise HttpError(400, "bytes after the request (one request per connection)")
        if len(self._buf) < self._length:
            return None
        head = self._head
        self._done = True
        return Request(head.method, head.target, head.version, head.headers, bytes(self._buf))

    def _parse_head(self, raw: bytes) -> tuple[Request, int]:
        lines = raw.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        if not _TOKEN.match(method):
            raise HttpError(400, "malformed method")
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise HttpError(505 if version.startswith(b"HTTP/") else 400, "only HTTP/1.0 and HTTP/1.1")
        if not _TARGET.match(target):
            raise HttpError(400, "the target must be a path (origin form)")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                # Also refuses obsolete line folding (a line starting with a space): RFC 9112 §5.2.
                raise HttpError(400, "malformed header line")
            try:
                text = value.strip(b" \t").decode("ascii")
            except UnicodeDecodeError:
                raise HttpError(400, "header value not ASCII") from None
            if any(c in text for c in "\r\n\x00"):
                raise HttpError(400, "control character in a header value")
            headers.append((name.decode("ascii").lower(), text))
        req = Request(method.decode("ascii"), target.decode("ascii"), version.decode("ascii"), tuple(headers))
        if req.header("transfer-encoding") is not None:
            raise HttpError(501, "Transfer-Encoding is not accepted (send Content-Length)")
        lengths = {v for k, v in headers if k == "content-length"}
        length = 0
        if lengths:
            if len(lengths) > 1:
                raise HttpError(400, "conflicting Content-Length")
            (text,) = lengths
            if not text.isascii() or not text.isdigit() or len(text) > 9:
                raise HttpError(400, "malformed Content-Length")
            length = int(text)
            if length > self._max_body:
                raise HttpError(413, f"body over {self._max_body} bytes")
        return req, length


@dataclass(frozen=True, slots=True)
class Response:
    """What a route answers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def render(self, head_only: bool = False) -> bytes:
        """The response bytes, closing the connection after it."""
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
                 f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}",
                 "Cache-Control: no-store",
                 "Connection: close",
                 *(f"{k}: {v}" for k, v in self.headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head if head_only else head + self.body


def text(status: int, message: str, **kw: str) -> Response:
    """A plain-text response (a trailing newline added, for curl users)."""
    return Response(status, (message.rstrip("\n") + "\n").encode("utf-8"),
                    headers=tuple((k.replace("_", "-"), v) for k, v in kw.items()))
