"""Strict decoding of a chunked request body (RFC 9112 §7.1), sans-IO, for ``http_server``.

Owns: finding where a chunked body ends (so that the bytes after it are the next pipelined request,
and nothing of it is read as a head), the chunk data in order, and the refusal of anything two
parsers could read two ways: a chunk size that is not 1 to 16 hex digits, whitespace or a bare CR/LF
in a chunk line, chunk data not followed by exactly CR LF, and trailer lines that are not plain
``name: value`` fields (bare LF, obs-fold, control characters). Chunk extensions are allowed and
dropped, as are the trailer fields (the body is re-chunked for the backend without either).
Must not: do I/O, log, or buffer more than one chunk line or trailer section (``limit`` bytes).
"""

from __future__ import annotations

import re

from sniproxy.errors import SniproxyError

# chunk-size [ chunk-ext ]: 1 to 16 hex digits (a 64-bit size), then ";" extensions of visible
# characters, SP, HTAB or obs-text (their grammar does not matter: they are dropped, not forwarded).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?")
# One trailer field: a token, ":", a value without control characters other than HTAB.
_TRAILER = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")

_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)


class BadChunk(SniproxyError):
    """The chunked body is malformed: the request is refused and the connection closed."""


class ChunkedBody:
    """Feed the bytes that follow a chunked request's head; get the body pieces and where it ends."""

    __slots__ = ("_buf", "_left", "_limit", "_scanned", "_state")

    def __init__(self, limit: int = 32768) -> None:
        self._limit = limit      # longest chunk line, or trailer section, kept while incomplete
        self._buf = bytearray()
        self._state = _SIZE
        self._left = 0           # bytes of the current chunk's data still to come
        # How much of an incomplete line was already checked: a line trickled a byte at a time must
        # not be rescanned whole on every byte (quadratic CPU on the one event loop).
        self._scanned = 0

    @property
    def buffered(self) -> int:
        """Bytes held while a chunk line or the trailers are incomplete."""
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        """The body pieces ``data`` completes and whether the body ended; raises ``BadChunk``.

        After the end, ``rest`` holds the bytes that followed it; ``feed`` must not be called again.
        """
        assert self._state != _DONE
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            state = self._state
            if state == _DATA:
                left = self._left
                if len(buf) < left:   # (all of it exactly: the branch below, so that no empty piece follows)
                    out.append(bytes(buf))
                    self._left = left - len(buf)
                    buf.clear()
                    break
                out.append(bytes(buf[:left]))
                del buf[:left]
                self._left = 0
                self._state = _DATA_END
            elif state == _DATA_END:
                if len(buf) < 2:
                    if buf[0] != 0x0D:
                        raise BadChunk("chunk data not followed by CR LF")
                    break
                if buf[:2] != b"\r\n":
                    raise BadChunk("chunk data not followed by CR LF")
                del buf[:2]
                self._state = _SIZE
            elif state == _SIZE:
                if not self._size_line():
                    break
            elif self._trailers():   # _TRAILERS
                return out, True
            else:
                break
        return out, False

    def _size_line(self) -> bool:
        """In state _SIZE: read a chunk line if it is complete (False: wait for more bytes)."""
        buf = self._buf
        end = buf.find(b"\r\n", max(0, self._scanned - 1))
        if end < 0:
            self._incomplete_line("chunk line")
            return False
        m = _CHUNK_LINE.fullmatch(buf, 0, end)
        if m is None:
            raise BadChunk(f"bad chunk line {bytes(buf[:min(end, 40)])!r}")
        size = int(m.group(1), 16)
        del buf[:end + 2]
        self._scanned = 0
        if size:
            self._left = size
            self._state = _DATA
        else:
            self._state = _TRAILERS
        return True

    def _trailers(self) -> bool:
        """In state _TRAILERS: check and drop the trailer section if it is complete (True: the body ended)."""
        buf = self._buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            self._state = _DONE
            return True
        end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
        if end < 0:
            self._incomplete_line("trailer section")
            return False
        for line in bytes(buf[:end]).split(b"\r\n"):
            if _TRAILER.fullmatch(line) is None:
                raise BadChunk(f"bad trailer line {line[:40]!r}")
        del buf[:end + 4]
        self._state = _DONE
        return True

    def _incomplete_line(self, what: str) -> None:
        # A LF or CR not part of a CR LF can never become one: refuse it now, not at the limit. Only
        # the bytes not checked yet are scanned (a CR at the very end is checked again next time).
        buf = self._buf
        start = self._scanned
        lf = buf.find(b"\n", start)
        while lf >= 0:
            if lf == 0 or buf[lf - 1] != 0x0D:
                raise BadChunk(f"bare LF in the {what}")
            lf = buf.find(b"\n", lf + 1)
        cr = buf.find(b"\r", start)
        while 0 <= cr < len(buf) - 1:
            if buf[cr + 1] != 0x0A:
                raise BadChunk(f"bare CR in the {what}")
            cr = buf.find(b"\r", cr + 1)
        self._scanned = len(buf) - 1 if buf[-1:] == b"\r" else len(buf)
        if len(buf) > self._limit:
            raise BadChunk(f"{what} over {self._limit} bytes")

    def rest(self) -> bytes:
        """The bytes after the end of the body (the next request), once ``feed`` said it ended."""
        assert self._state == _DONE
        data = bytes(self._buf)
        self._buf.clear()
        return data
