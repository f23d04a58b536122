"""Fuzzing the two-sided relay dialogs: SMTP XCLIENT (``SmtpRelay``) and IMAP EXTERNAL (``ImapExternal``),
and the PROXY v2 header sniproxy writes (``identity_out.proxy_v2_header``).

Properties:
- never an exception, only ``ToClient``/``ToBackend``/``Notice``/``Stop`` (a ``Stop`` is last);
- memory bounded by the configured limits: client and backend partial lines by ``max_line``, bytes
  held while the backend decides by ``HOLD_MAX``, an SMTP reply being assembled by ``MAX_REPLY``;
- chunking-invariant: a session played as segments (client bytes, then a backend reply, ...) gives
  the same actions, once consecutive same-direction writes are merged, however each client segment
  is cut into reads;
- the header written to a proxy-v2 backend always parses back (with our own parser) to what was
  given, and is never over 1500 bytes.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sniproxy.auth.login import LoginRule, decide
from sniproxy.card import CardFacts
from sniproxy.proto.identity_out import IDENTITY_TLVS, proxy_v2_header
from sniproxy.proto.imap_auth import ImapExternal
from sniproxy.proto.proxy_protocol import ProxyHeaderParser, parse_ssl_tlv
from sniproxy.proto.proxy_wire import MAX_HEADER, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL
from sniproxy.proto.relay import Notice, RelayAction, Stop, ToBackend, ToClient
from sniproxy.proto.smtp_relay import HOLD_MAX, MAX_REPLY, SmtpRelay
from tests.unit.fuzzkit import FUZZ, mutated, random_splits

MAX_LINE = 128
RULE = LoginRule(mapping={"810001234567": ("alice@example.test",)})
CARD = {"idnat_ps": "810001234567"}
POSTFIX_EHLO = (b"250-mx.example.test\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PROTO HELO LOGIN\r\n"
                b"250-STARTTLS\r\n250 CHUNKING\r\n")


def merged(actions: list[RelayAction]) -> list[RelayAction]:
    """Consecutive writes in the same direction merged: how a chunking may legitimately differ."""
    out: list[RelayAction] = []
    for a in actions:
        if out and type(a) is type(out[-1]) and isinstance(a, ToClient | ToBackend):
            out[-1] = type(a)(out[-1].data + a.data)   # type: ignore[union-attr]
        elif not (isinstance(a, ToClient | ToBackend) and not a.data):
            out.append(a)
    return out


# ---------------------------------------------------------------------------- SMTP XCLIENT relay
_SMTP_CMD = st.sampled_from([b"EHLO c.example", b"HELO c", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA",
                             b"XCLIENT ADDR=1.2.3.4", b"xforward NAME=x", b"BDAT 10 LAST", b"STARTTLS",
                             b"AUTH EXTERNAL", b"AUTH EXTERNAL =", b"AUTH EXTERNAL " + base64.b64encode(
                                 b"alice@example.test"), b"AUTH PLAIN", b"*", b"QUIT", b"NOOP", b""])
_SMTP_BODY = st.lists(st.sampled_from([b"hello", b".", b"..dot", b"", b".\r", b"x" * 50]), max_size=5)
_SMTP_REPLY = st.sampled_from([b"250 ok\r\n", b"354 go\r\n", b"220 mx\r\n", b"550 no\r\n", b"334 \r\n",
                               b"235 ok\r\n", b"250-a\r\n250 b\r\n", b"garbage\r\n", b"250-x" * 3 + b"\r\n"])


@st.composite
def smtp_client_segment(draw: st.DrawFn) -> bytes:
    parts = []
    for cmd in draw(st.lists(_SMTP_CMD, max_size=5)):
        parts.append(cmd + draw(st.sampled_from([b"\r\n", b"\n"])))
        if cmd == b"DATA" and draw(st.booleans()):
            # Message data may follow the 354 in the same segment; its end marker may or may not come.
            parts.append(b"\r\n".join(draw(_SMTP_BODY)) + draw(st.sampled_from([b"\r\n.\r\n", b"\n.\n", b""])))
    raw = b"".join(parts)
    return draw(st.one_of(st.just(raw), mutated(st.just(raw)), st.binary(max_size=200)))


def _smtp_relay(consume: bool) -> tuple[SmtpRelay, list[RelayAction]]:
    r = SmtpRelay(client_addr=("192.0.2.7", 40000), helo="c.example", hostname="p.example",
                  consume_greeting=consume, decide=lambda z: decide(RULE, CARD, z), max_line=MAX_LINE)
    opening = [*r.from_backend(b"220 mx ESMTP\r\n"), *r.from_backend(POSTFIX_EHLO),
               *r.from_backend(b"220 mx ESMTP\r\n")]
    assert r.ready
    return r, opening


def _smtp_play(consume: bool, script: list[tuple[str, list[bytes]]]) -> list[RelayAction]:
    r, out = _smtp_relay(consume)
    for side, chunks in script:
        for chunk in chunks:
            actions = r.from_client(chunk) if side == "client" else r.from_backend(chunk)
            # Bounds hold after every read, whatever came in, while the session goes on.
            if not (actions and isinstance(actions[-1], Stop)):
                assert len(r._bline) <= MAX_LINE
                assert len(r._cbuf) <= max(HOLD_MAX, MAX_LINE) + len(chunk)
            assert sum(len(x) for x in r._reply) <= MAX_REPLY
            for i, a in enumerate(actions):
                assert isinstance(a, ToClient | ToBackend | Notice | Stop)
                assert not isinstance(a, Stop) or i == len(actions) - 1
            out += actions
            if actions and isinstance(actions[-1], Stop):
                return merged(out)
    return merged(out)


@FUZZ
@given(consume=st.booleans(), data=st.data())
def test_smtp_relay_chunking_and_bounds(consume: bool, data: st.DataObject) -> None:
    segments: list[tuple[str, bytes]] = []
    for _ in range(data.draw(st.integers(1, 6))):
        segments.append(("client", data.draw(smtp_client_segment())))
        segments.append(("backend", data.draw(st.lists(_SMTP_REPLY, max_size=3).map(b"".join))))
    whole = _smtp_play(consume, [(side, [seg]) for side, seg in segments])
    split = _smtp_play(consume, [(side, random_splits(data, seg) if side == "client" else [seg])
                                 for side, seg in segments])
    assert split == whole
    # No client XCLIENT/XFORWARD ever reaches the backend, as Postfix would tokenize the line (any
    # whitespace). Message data may carry such lines: only sessions that never say DATA are checked.
    if not any(b"DATA" in seg.upper() for _, seg in segments):
        sent = b"".join(a.data for a in whole if isinstance(a, ToBackend))
        for line in sent.split(b"\n"):
            words = line.split()
            if line.startswith((b"XCLIENT LOGIN=", b"XCLIENT ADDR=192.0.2.7 PORT=40000 ")):
                continue   # the proxy's own: the opening one, and the one for AUTH EXTERNAL
            assert not (words and words[0].upper() in (b"XCLIENT", b"XFORWARD")), line


@pytest.mark.parametrize("line", [b"XCLIENT\tADDR=192.0.2.98 LOGIN=bob", b" XCLIENT ADDR=192.0.2.98",
                                  b"\tXCLIENT LOGIN=bob", b"xclient\x0bLOGIN=bob", b"XCLIENT\x0cLOGIN=bob",
                                  b"XFORWARD\tNAME=x", b"  xforward  ADDR=1.2.3.4"])
def test_client_xclient_with_any_whitespace_is_refused(line: bytes) -> None:
    """Regression (found by the property above): Postfix reads ``XCLIENT<TAB>LOGIN=bob`` as XCLIENT; before
    the fix only a space was recognised and the line went through. Now a command line with a control
    character or leading blank is refused outright (500), whatever its verb; plain ones get 550."""
    r, _ = _smtp_relay(True)
    out = r.from_client(line + b"\r\n")
    assert not any(isinstance(a, ToBackend) for a in out), out
    assert any(isinstance(a, ToClient) and a.data.startswith((b"500 5.5.2", b"550 5.7.0")) for a in out)


def test_smtp_reply_assembly_is_bounded() -> None:
    """A backend that never ends a multi-line reply is stopped at ``MAX_REPLY`` bytes, not buffered forever."""
    r, _ = _smtp_relay(True)
    r.from_client(b"NOOP\r\n")
    line = b"250-" + b"x" * 100 + b"\r\n"
    stopped = None
    for _ in range(MAX_REPLY // len(line) + 2):
        out = r.from_backend(line)
        assert sum(len(x) for x in r._reply) <= MAX_REPLY
        if out and isinstance(out[-1], Stop):
            stopped = out[-1]
            break
    assert stopped is not None and stopped.reason.value == "backend_protocol"


_BACKEND_LINE = st.sampled_from([
    b"250 ok\r\n", b"250-a\r\n", b"250-STARTTLS\r\n", b"250-AUTH PLAIN\r\n", b"354 go\n", b"250 x\r\r\n",
    b"220 mx\r\n", b"550-\r\n", b"550 no\r\n", b"garbage\r\n", b"25\r\n", b"250\r\n", b"250-\r250 x\r\n",
    b"235 2.7.0 ok\r\n", b"250 " + b"y" * 300 + b"\r\n", b"250-" + b"z" * 300 + b"\n", b"221 bye"])


def _backend_play(chunks: list[bytes]) -> tuple[list[RelayAction], tuple[bytes, list[bytes]] | None]:
    """A ready session with an EHLO and NOOPs pipelined, fed the backend's chunks up to a ``Stop``; the
    merged actions, and the reply state left (partial line, partial reply) when no ``Stop`` came."""
    r = SmtpRelay(client_addr=("192.0.2.7", 40000), helo="", hostname="p.example", consume_greeting=True,
                  decide=None, xclient=False)
    r.from_backend(b"220 mx ESMTP\r\n")
    out = r.from_client(b"EHLO c.example\r\n" + b"NOOP\r\n" * 6)
    for chunk in chunks:
        actions = r.from_backend(chunk)
        out += actions
        if actions and isinstance(actions[-1], Stop):
            return merged(out), None
    return merged(out), (bytes(r._bline), list(r._reply))


@FUZZ
@given(data=st.data())
def test_smtp_backend_replies_whole_or_in_pieces(data: st.DataObject) -> None:
    """``from_backend`` cuts lines out of each read by position and keeps only the unread rest: the same
    actions, details and state (partial line, partial reply), however the stream is cut (one read, random
    reads, a byte at a time)."""
    stream = b"".join(data.draw(st.lists(_BACKEND_LINE, max_size=12)))
    whole = _backend_play([stream])
    assert _backend_play(random_splits(data, stream)) == whole
    assert _backend_play([stream[i:i + 1] for i in range(len(stream))]) == whole


def test_smtp_reply_over_the_bound_in_one_read() -> None:
    """A reply over ``MAX_REPLY`` that arrives in one read is stopped at the same line, with the same detail,
    as one that arrives line by line."""
    line = b"250-" + b"x" * 100 + b"\r\n"
    reply = line * (MAX_REPLY // len(line) + 2) + b"250 end\r\n"
    one, _ = _backend_play([reply])
    lines, _ = _backend_play([x + b"\n" for x in reply.split(b"\n")[:-1]])
    assert one == lines
    assert isinstance(one[-1], Stop) and one[-1].detail == f"reply over {MAX_REPLY} bytes"


# ---------------------------------------------------------------------------- IMAP EXTERNAL
_B64 = base64.b64encode(b"alice@example.test")
_IMAP_CMD = st.sampled_from([
    b"t1 AUTHENTICATE EXTERNAL", b"t1 AUTHENTICATE EXTERNAL =", b"t2 AUTHENTICATE EXTERNAL " + _B64,
    b"t3 authenticate external " + base64.b64encode(b"bob@example.test"), b"t4 AUTHENTICATE EXTERNAL !!",
    b"t5 AUTHENTICATE PLAIN", b"t6 LOGIN alice pw", b"t7 SELECT INBOX", b"t8 APPEND INBOX {5}",
    b"t9 APPEND INBOX {3+}", b"*", b"=", _B64, b"a b c d e", b"", b"+ x"])


@st.composite
def imap_client_segment(draw: st.DrawFn) -> bytes:
    parts = []
    for cmd in draw(st.lists(_IMAP_CMD, max_size=6)):
        parts.append(cmd + draw(st.sampled_from([b"\r\n", b"\n"])))
        if cmd.endswith(b"}"):
            parts.append(draw(st.binary(max_size=8)))   # literal bytes: never read as commands
    raw = b"".join(parts)
    return draw(st.one_of(st.just(raw), mutated(st.just(raw)), st.binary(max_size=200)))


_IMAP_BACKEND = st.sampled_from([b"t1 OK done\r\n", b"t2 NO [AUTHENTICATIONFAILED] no\r\n", b"t6 OK in\r\n",
                                 b"t5 BAD x\r\n", b"* OK x\r\n", b"junk\r\n"])


def _imap_play(script: list[tuple[str, list[bytes]]]) -> tuple[list[RelayAction], bool]:
    a = ImapExternal(decide=lambda z: decide(RULE, CARD, z), master_user="master", master_password="secret",
                     max_line=MAX_LINE)
    out: list[RelayAction] = []
    for side, chunks in script:
        for chunk in chunks:
            if side == "backend":
                a.backend_line(chunk)
                out += a.take_notices()
                continue
            actions = a.client_data(chunk)
            # Bounded while the session goes on (a Stop ends it, buffer and all).
            assert len(a._buf) <= MAX_LINE or (actions and isinstance(actions[-1], Stop))
            for i, x in enumerate(actions):
                assert isinstance(x, ToClient | ToBackend | Notice | Stop)
                assert not isinstance(x, Stop) or i == len(actions) - 1
                if isinstance(x, Notice):
                    assert "secret" not in repr(x.fields)   # the master password is never logged
            out += actions
            if actions and isinstance(actions[-1], Stop):
                return merged(out), a.logged_in
    return merged(out), a.logged_in


@FUZZ
@given(data=st.data())
def test_imap_external_chunking_and_bounds(data: st.DataObject) -> None:
    segments: list[tuple[str, bytes]] = []
    for _ in range(data.draw(st.integers(1, 5))):
        segments.append(("client", data.draw(imap_client_segment())))
        segments.append(("backend", data.draw(_IMAP_BACKEND)))
    whole = _imap_play([(side, [seg]) for side, seg in segments])
    split = _imap_play([(side, random_splits(data, seg) if side == "client" else [seg])
                        for side, seg in segments])
    assert split == whole


# ---------------------------------------------------------------------------- PROXY v2 out
_TEXT = st.text(max_size=300)


@FUZZ
@given(cn=st.none() | _TEXT, sni=st.none() | st.from_regex(r"[a-z0-9.-]{1,100}", fullmatch=True),
       send_cn=st.booleans(), crc=st.booleans(),
       identity=st.dictionaries(st.sampled_from(sorted(IDENTITY_TLVS)), _TEXT, max_size=len(IDENTITY_TLVS)),
       src=st.ip_addresses().map(str), port=st.integers(0, 0xFFFF))
def test_proxy_v2_header_out_parses_back_and_fits(cn: str | None, sni: str | None, send_cn: bool, crc: bool,
                                                   identity: dict[str, str], src: str, port: int) -> None:
    card = CardFacts(cn=cn, sig_alg="RSA-SHA256", key_alg="RSA2048") if cn is not None else None
    header = proxy_v2_header(src=(src, port), dst=("127.0.0.1", 143), sni=sni, tls_version="TLSv1.3",
                             cipher="TLS_AES_256_GCM_SHA384", card=card, send_cn=send_cn, identity=identity,
                             crc32c=crc)
    assert len(header) <= MAX_HEADER
    result = ProxyHeaderParser(require_crc32c=crc).feed(header + b"A1 NOOP\r\n")
    assert result is not None and result.rest == b"A1 NOOP\r\n" and result.consumed == len(header)
    assert result.src is not None and result.src[1] == port
    ssl_value = result.tlv(PP2_TYPE_SSL)
    assert ssl_value is not None
    info = parse_ssl_tlv(ssl_value)
    assert info["verify"] == (0 if card is not None else 1)
    assert info["cn"] == (cn if card is not None and send_cn else None)
    assert result.tlv(PP2_TYPE_AUTHORITY) == (sni.encode() if sni else None)
    for name, value in identity.items():
        got = result.tlv(IDENTITY_TLVS[name])
        # Present exactly as given, or left out for room; never cut.
        assert got is None or got == value.encode("utf-8")
