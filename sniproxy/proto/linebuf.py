"""A bounded line splitter for the pre-TLS command dialogs (IMAP, SMTP).

Owns: splitting a byte stream into lines and refusing lines that are too long, with memory
bounded by ``max_line`` plus the chunk being fed. Must not do I/O, decoding or protocol logic.
"""

from __future__ import annotations

from sniproxy.errors import Reason, SniproxyError


class LineTooLong(SniproxyError):
    """The peer sent a line (complete or not) longer than the configured maximum."""

    REASON = Reason.LINE_TOO_LONG


class LineBuffer:
    """Split fed bytes into lines ending in LF (CRLF, or a bare LF as lenient pre-TLS servers accept).

    ``max_line`` counts every byte of a line, its terminator included. Bytes of an unterminated
    line beyond ``max_line + 1`` are dropped at ``feed`` time (one more byte than the limit is
    enough to know the line is too long), so the buffer never holds more than the complete lines
    of the last chunk plus ``max_line + 1`` bytes, even if the caller stops draining.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_line: int) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self._max = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Append received bytes; never raises (a too-long line is reported by ``next_line``)."""
        buf = self._buf
        buf += data
        start = buf.rfind(b"\n") + 1        # first byte of the unterminated tail
        if len(buf) - start > self._max + 1:
            del buf[start + self._max + 1:]

    def next_line(self) -> bytes | None:
        """Return the next complete line with its terminator, or ``None`` if none is complete yet.

        Raises ``LineTooLong`` when the next line, complete or not, exceeds ``max_line`` bytes.
        """
        buf = self._buf
        idx = buf.find(b"\n")
        if idx < 0:
            if len(buf) > self._max:
                raise LineTooLong(f"line longer than {self._max} bytes")
            return None
        if idx + 1 > self._max:
            raise LineTooLong(f"line longer than {self._max} bytes")
        line = bytes(buf[:idx + 1])
        del buf[:idx + 1]
        return line

    def pending(self) -> bytes:
        """Every buffered byte not yet returned by ``next_line``.

        Once the caller has drained all complete lines, this is what follows the last complete
        line; the STARTTLS dialogs use it to detect bytes pipelined after the STARTTLS command.
        """
        return bytes(self._buf)

    def __len__(self) -> int:
        return len(self._buf)


def strip_eol(line: bytes) -> bytes:
    """Remove one trailing CRLF or bare LF."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


# Printable ASCII (0x20-0x7E) kept, every other byte (controls, DEL, non-ASCII) one "?": one C call
# per text instead of a Python step per character (SMTP decodes a few per session, decision 0012).
_PRINTABLE = bytes(b if 0x20 <= b <= 0x7E else 0x3F for b in range(256))


def safe_text(data: bytes, limit: int = 200) -> str:
    """Printable, bounded rendering of peer bytes, for a ``Stop.detail`` (logs must not carry CTLs)."""
    return strip_eol(data[:limit + 2])[:limit].translate(_PRINTABLE).decode("ascii")
