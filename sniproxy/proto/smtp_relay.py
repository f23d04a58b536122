"""SMTP after TLS, both directions, when the proxy carries identity by XCLIENT (sans-IO).

Owns, for a backend such as Postfix that trusts the proxy's address for XCLIENT:
- the backend opening: greeting, ``EHLO``, check ``XCLIENT`` is offered, ``XCLIENT ADDR PORT PROTO
  HELO``, the new ``220`` greeting (passed to the client on implicit TLS, swallowed after STARTTLS);
- the client's commands, for the whole session: ``XCLIENT``/``XFORWARD`` from the client are answered
  ``550`` here and never reach the backend (which trusts this proxy's address); ``AUTH EXTERNAL`` is
  answered here when a login rule is configured (``XCLIENT LOGIN=`` then a fresh ``EHLO`` to the
  backend, then ``235`` to the client); ``BDAT`` is refused (``CHUNKING`` is hidden) so message data
  is always ``DATA`` ... ``.``, whose end is found as leniently as any server would (a line ``.``
  ended by LF or CRLF), so no command can hide in message data;
- the backend's replies, correlated one to one with the commands sent (pipelining), with EHLO
  keywords the client must not use hidden (``STARTTLS``, ``XCLIENT``, ``XFORWARD``, ``CHUNKING``) and
  ``EXTERNAL`` added to ``AUTH`` when the proxy answers it.
No I/O: bytes in, ``ToClient``/``ToBackend``/``Notice``/``Stop`` out.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from ipaddress import ip_address

from sniproxy.auth.login import LoginDecision
from sniproxy.auth.sasl import SaslError, decode_external, xtext
from sniproxy.errors import Reason
from sniproxy.proto.linebuf import safe_text, strip_eol
from sniproxy.proto.relay import Notice, RelayAction, Stop, ToBackend, ToClient

_REPLY = re.compile(rb"^([2-5][0-9][0-9])([ -])")
_HIDDEN_EHLO = frozenset({b"STARTTLS", b"XCLIENT", b"XFORWARD", b"CHUNKING", b"BINARYMIME"})
_DATA_END = re.compile(rb"\n\.\r?\n")
HOLD_MAX = 1 << 20        # client bytes held while the backend decides (DATA, a login): 1 MiB

Decide = Callable[[str], LoginDecision]


def _xclient_addr(host: str) -> str:
    addr = ip_address(host)
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        return str(mapped) if mapped is not None else f"IPV6:{addr}"
    return str(addr)


class SmtpRelay:
    """Both directions of one SMTP session through the proxy, XCLIENT mode."""

    def __init__(self, *, client_addr: tuple[str, int], helo: str, hostname: str,
                 consume_greeting: bool, decide: Decide | None, max_line: int = 8192) -> None:
        self._client_addr = client_addr
        self._helo = helo or "[UNAVAILABLE]"   # Postfix's XCLIENT word for "not known"
        self._hostname = hostname
        self._consume = consume_greeting
        self._decide = decide
        self._max_line = max_line
        self._phase = "greeting"          # greeting -> ehlo -> xclient -> ready
        self._reply: list[bytes] = []     # lines of the backend reply being assembled
        self._bline = bytearray()         # unterminated backend line
        self._queue: deque[str] = deque() # what each expected reply answers
        self._cbuf = bytearray()          # client bytes not yet processed
        self._mode = "command"            # command | data_wait | content | auth_resp | ext_resp | hold
        self._content_start = False
        self._authenticated = False
        self._mailbox: str | None = None
        self.ready = False

    # ------------------------------------------------------------------ backend -> proxy
    def backend_data(self, data: bytes) -> list[RelayAction]:
        """Feed backend bytes."""
        out: list[RelayAction] = []
        self._bline += data
        while True:
            nl = self._bline.find(b"\n")
            if nl < 0:
                if len(self._bline) > self._max_line:
                    return [*out, Stop(Reason.BACKEND_PROTOCOL, "reply line too long")]
                break
            line = bytes(self._bline[:nl + 1])
            del self._bline[:nl + 1]
            m = _REPLY.match(line)
            if m is None:
                return [*out, Stop(Reason.BACKEND_PROTOCOL, f"not an SMTP reply: {safe_text(line)}")]
            self._reply.append(line)
            if m.group(2) == b" ":
                reply, self._reply = self._reply, []
                out += self._on_reply(int(m.group(1)), reply)
                if out and isinstance(out[-1], Stop):
                    return out
        # Held client bytes may now be processed (after 354, a login, or the opening dance).
        if self.ready and self._mode in ("command", "content") and self._cbuf:
            out += self._client_process()
        return out

    def _on_reply(self, code: int, lines: list[bytes]) -> list[RelayAction]:
        text = safe_text(b" ".join(strip_eol(x[4:]) for x in lines))
        if self._phase == "greeting":
            if code != 220:
                return [Stop(Reason.BACKEND_REFUSED, f"{code} {text}")]
            self._phase = "ehlo"
            return [ToBackend(f"EHLO {self._hostname}\r\n".encode())]
        if self._phase == "ehlo":
            keywords = {strip_eol(x[4:]).split(b" ", 1)[0].upper() for x in lines[1:]}
            if code != 250 or b"XCLIENT" not in keywords:
                return [Stop(Reason.BACKEND_PROTOCOL, "backend does not offer XCLIENT to the proxy "
                                                      "(smtpd_authorized_xclient_hosts)")]
            self._phase = "xclient"
            host, port = self._client_addr
            # NAME: the proxy does no reverse DNS; Postfix then logs the client as "unknown".
            cmd = (f"XCLIENT ADDR={xtext(_xclient_addr(host))} PORT={port} PROTO=ESMTP "
                   f"HELO={xtext(self._helo)} NAME=[UNAVAILABLE]\r\n")
            return [ToBackend(cmd.encode())]
        if self._phase == "xclient":
            if code != 220:
                return [Stop(Reason.BACKEND_REFUSED, f"XCLIENT refused: {code} {text}")]
            self._phase = "ready"
            self.ready = True
            return [] if self._consume else [ToClient(b"".join(lines))]
        kind = self._queue.popleft() if self._queue else "unsolicited"
        if kind == "ehlo":
            return [ToClient(self._rewrite_ehlo(lines))]
        if kind == "data":
            self._mode = "content" if code == 354 else "command"
            self._content_start = code == 354
            return [ToClient(b"".join(lines))]
        if kind == "auth":
            if code == 334:
                self._mode = "auth_resp"
            else:
                self._mode = "command"
                self._authenticated = self._authenticated or code == 235
            return [ToClient(b"".join(lines))]
        if kind == "xclient_login":
            if code != 220:
                self._mode = "command"
                return [ToClient(b"454 4.7.0 Temporary authentication failure\r\n"),
                        Notice("auth", {"mechanism": "EXTERNAL", "result": "backend_refused",
                                        "mailbox": self._mailbox, "detail": f"{code} {text}"})]
            self._queue.append("ehlo_login")
            return [ToBackend(f"EHLO {self._helo}\r\n".encode())]
        if kind == "ehlo_login":
            self._mode = "command"
            if code != 250:
                return [ToClient(b"454 4.7.0 Temporary authentication failure\r\n"),
                        Notice("auth", {"mechanism": "EXTERNAL", "result": "backend_refused",
                                        "mailbox": self._mailbox, "detail": f"{code} {text}"})]
            self._authenticated = True
            return [ToClient(b"235 2.7.0 Authentication successful\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": "ok", "mailbox": self._mailbox})]
        return [ToClient(b"".join(lines))]

    def _rewrite_ehlo(self, lines: list[bytes]) -> bytes:
        kept = [lines[0]]
        has_auth = False
        for line in lines[1:]:
            body = strip_eol(line[4:])
            word = body.split(b" ", 1)[0].upper()
            if word in _HIDDEN_EHLO:
                continue
            if word == b"AUTH" and self._decide is not None:
                has_auth = True
                if b"EXTERNAL" not in body.upper().split():
                    line = line[:4] + body + b" EXTERNAL\r\n"
            kept.append(line)
        if self._decide is not None and not has_auth:
            kept.append(kept[0][:3] + b"-AUTH EXTERNAL\r\n")
        # Separators: "-" on every line but the last (RFC 5321 §4.2.1).
        return b"".join(x[:3] + (b" " if i == len(kept) - 1 else b"-") + x[4:] for i, x in enumerate(kept))

    # ------------------------------------------------------------------ client -> proxy
    def client_data(self, data: bytes) -> list[RelayAction]:
        """Feed client plaintext (call only once ``ready``)."""
        self._cbuf += data
        if self._mode in ("data_wait", "hold"):
            if len(self._cbuf) > HOLD_MAX:
                return [Stop(Reason.CLIENT_PROTOCOL, "client sent too much while its command was pending")]
            return []
        return self._client_process()

    def _client_process(self) -> list[RelayAction]:
        out: list[RelayAction] = []
        while self._cbuf and self._mode not in ("data_wait", "hold"):
            if self._mode == "content":
                sent = self._content()
                if not sent:
                    break  # only a possible start of the end marker is left: wait for more bytes
                out += sent
                continue
            nl = self._cbuf.find(b"\n")
            if nl < 0:
                if len(self._cbuf) > self._max_line:
                    return [*out, Stop(Reason.LINE_TOO_LONG, f"command line over {self._max_line} bytes")]
                break
            line = bytes(self._cbuf[:nl + 1])
            del self._cbuf[:nl + 1]
            if len(line) > self._max_line:
                return [*out, Stop(Reason.LINE_TOO_LONG, f"command line over {self._max_line} bytes")]
            out += self._client_line(line)
            if out and isinstance(out[-1], Stop):
                return out
        return out

    def _content(self) -> list[RelayAction]:
        """Pass message data through until a line holding only ``.`` (ended by LF or CRLF)."""
        buf = bytes(self._cbuf)
        probe = (b"\n" + buf) if self._content_start else buf
        shift = 1 if self._content_start else 0
        m = _DATA_END.search(probe)
        if m is not None:
            end = m.end() - shift
            self._cbuf = bytearray(buf[end:])
            self._mode, self._content_start = "command", False
            self._queue.append("dot")
            return [ToBackend(buf[:end])]
        # Keep back a tail that could start the end marker ("\n", "\n.", "\n.\r"); send the rest.
        keep = 0
        for k in (3, 2, 1):
            tail = probe[-k:]
            if tail in (b"\n.\r", b"\n.", b"\n"):
                keep = k
                break
        keep = min(keep, len(buf))
        if keep == len(buf):
            return []  # wait for more bytes: everything may be the start of the marker
        send, self._cbuf = buf[:len(buf) - keep], bytearray(buf[len(buf) - keep:])
        self._content_start = False
        return [ToBackend(send)]

    def _client_line(self, line: bytes) -> list[RelayAction]:
        if self._mode == "auth_resp":
            self._mode = "command"
            self._queue.append("auth")
            return [ToBackend(line)]
        if self._mode == "ext_resp":
            self._mode = "command"
            return self._external(safe_text(strip_eol(line)))
        words = strip_eol(line).split(b" ")
        verb = words[0].upper()
        if verb in (b"XCLIENT", b"XFORWARD"):
            return [ToClient(b"550 5.7.0 " + verb + b" is not accepted from clients\r\n"),
                    Notice("client_identity_refused", {"command": verb.decode()})]
        if verb == b"BDAT":
            return [ToClient(b"502 5.5.1 BDAT is not available through this proxy, use DATA\r\n")]
        if verb == b"STARTTLS":
            return [ToClient(b"503 5.5.1 TLS already active\r\n")]
        if verb == b"AUTH" and len(words) > 1 and words[1].upper() == b"EXTERNAL" and self._decide is not None:
            if self._authenticated:
                return [ToClient(b"503 5.5.1 Already authenticated\r\n")]
            if self._queue:
                return [ToClient(b"503 5.5.1 AUTH must not be pipelined\r\n")]
            if len(words) > 2:
                return self._external(safe_text(words[2]))
            self._mode = "ext_resp"
            return [ToClient(b"334 \r\n")]
        if verb in (b"EHLO", b"HELO"):
            if len(words) > 1 and words[1]:
                self._helo = safe_text(words[1])
            self._queue.append("ehlo")
        elif verb == b"DATA":
            self._queue.append("data")
            self._mode = "data_wait"
        elif verb == b"AUTH":
            self._queue.append("auth")
        else:
            self._queue.append("other")
        return [ToBackend(line)]

    def _external(self, response: str) -> list[RelayAction]:
        assert self._decide is not None
        if response == "*":
            return [ToClient(b"501 5.7.0 Authentication canceled\r\n")]
        try:
            authzid = decode_external(response)
        except SaslError as exc:
            return [ToClient(b"501 5.5.2 Cannot decode response\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": "malformed", "detail": str(exc)})]
        decision = self._decide(authzid)
        if decision.mailbox is None:
            return [ToClient(b"535 5.7.8 Authentication credentials invalid\r\n"),
                    Notice("auth", {"mechanism": "EXTERNAL", "result": decision.reason, "authzid": authzid,
                                    "detail": decision.detail})]
        self._mailbox = decision.mailbox
        self._mode = "hold"
        self._queue.append("xclient_login")
        return [ToBackend(f"XCLIENT LOGIN={xtext(decision.mailbox)}\r\n".encode())]
