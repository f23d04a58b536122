"""Fuzzing the backend->client IMAP filter (``ImapBackendFilter``; SMTP replies go through ``SmtpRelay``).

Properties, for any backend bytes and any chunking of them:
- only ``ToClient`` then at most one ``Stop`` (backend_refused / backend_protocol), nothing after it,
  never an exception;
- memory bounded by ``max_line``: one partial line (and, for SMTP, one held reply line);
- chunking-invariant: whole, byte by byte and random splits send the same bytes and the same close;
- the rewrite only removes: without capability lists the stream passes unchanged (minus the consumed
  greeting), with them no ``STARTTLS``/``LOGINDISABLED`` survives in a capability list, and the
  output is never longer than the input.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from hypothesis import given
from hypothesis import strategies as st

from sniproxy.errors import Reason
from sniproxy.proto.imap_relay import ImapBackendFilter
from sniproxy.proto.relay import RelayAction, Stop, ToClient
from tests.unit.fuzzkit import FUZZ, bytewise, mutated, random_splits

Filter = ImapBackendFilter
MAX_LINE = 80
CLOSES = (Reason.BACKEND_REFUSED, Reason.BACKEND_PROTOCOL)

# ---------------------------------------------------------------------------- inputs
_EOL = st.sampled_from([b"\r\n", b"\n"])
_CAPS = st.lists(st.sampled_from([b"IMAP4rev1", b"STARTTLS", b"starttls", b"LOGINDISABLED", b"IDLE",
                                  b"AUTH=PLAIN", b"SASL-IR", b"LITERAL+", b"XSTARTTLS", b"STARTTLSX"]), max_size=6)


@st.composite
def imap_line(draw: st.DrawFn) -> bytes:
    caps = b" ".join(draw(_CAPS))
    form = draw(st.sampled_from(["untagged", "code", "fetch", "literal", "cont", "noise"]))
    if form == "untagged":
        body = b"* CAPABILITY " + caps
    elif form == "code":
        body = draw(st.sampled_from([b"a1", b"*", b"x"])) + b" OK [CAPABILITY " + caps + b"] done"
    elif form == "fetch":
        body = b"* 1 FETCH (FLAGS (\\Seen))"
    elif form == "literal":
        # The literal's bytes follow the line: they may look like anything, capability lines included.
        n = draw(st.integers(0, 30))
        return b"* 2 FETCH (BODY[] {" + str(n).encode() + b"}\r\n" + draw(st.binary(min_size=n, max_size=n)) + b")\r\n"
    elif form == "cont":
        body = b"+ go ahead"
    else:
        body = draw(st.binary(max_size=MAX_LINE + 20)).replace(b"\n", b"")
    return body + draw(_EOL)


@st.composite
def smtp_line(draw: st.DrawFn) -> bytes:
    code = draw(st.sampled_from([b"250", b"220", b"354", b"550", b"421", b"999", b"25"]))
    sep = draw(st.sampled_from([b"-", b" ", b""]))
    text = draw(st.sampled_from([b"STARTTLS", b"starttls", b" STARTTLS ", b"PIPELINING", b"SIZE 1000",
                                 b"mx.example", b"", b"STARTTLSX"]))
    return code + sep + text + draw(_EOL)


def _stream(greeting: bytes, line: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    body = st.lists(line, max_size=14).map(b"".join)
    return st.tuples(st.sampled_from([greeting, greeting, b"* BYE no\r\n", b"554 no\r\n", b"220-multi\r\n",
                                      b"garbage\r\n", b""]), body).map(b"".join)


STREAMS: dict[str, tuple[Callable[[bool], Filter], st.SearchStrategy[bytes], bytes]] = {
    "imap": (lambda consume: ImapBackendFilter(consume_greeting=consume, max_line=MAX_LINE),
             _stream(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n", imap_line()),
             b"* OK ready\r\n"),
}


# ---------------------------------------------------------------------------- the runner
def run(f: Filter, chunks: Iterable[bytes]) -> tuple[bytes, RelayAction | None]:
    """Feed ``chunks``; (bytes sent, the Stop or None), checking the per-step invariants."""
    sent, close = bytearray(), None
    for chunk in chunks:
        actions = f.receive_data(chunk)
        if close is not None:
            assert actions == [], "a closed filter must ignore input"
            continue
        assert len(f._line) <= MAX_LINE
        # At most one ToClient, then at most one Stop.
        assert len(actions) <= 2
        for i, action in enumerate(actions):
            if isinstance(action, ToClient):
                assert i == 0 and action.data
                sent += action.data
            else:
                assert isinstance(action, Stop) and action.reason in CLOSES and i == len(actions) - 1, actions
                close = action
    return bytes(sent), close


@FUZZ
@given(proto=st.sampled_from(sorted(STREAMS)), consume=st.booleans(), data=st.data())
def test_filter_chunking_and_bounds(proto: str, consume: bool, data: st.DataObject) -> None:
    factory, streams, _ = STREAMS[proto]
    payload = data.draw(st.one_of(streams, mutated(streams), st.binary(max_size=300)))
    whole = run(factory(consume), [payload])
    assert run(factory(consume), bytewise(payload)) == whole
    assert run(factory(consume), random_splits(data, payload)) == whole
    assert len(whole[0]) <= len(payload)


@FUZZ
@given(proto=st.sampled_from(sorted(STREAMS)), data=st.data())
def test_filter_passes_non_capability_traffic_unchanged(proto: str, data: st.DataObject) -> None:
    """With a plain greeting and no capability keyword anywhere, the stream is passed through as is."""
    factory, _, greeting = STREAMS[proto]
    body = data.draw(st.binary(max_size=400))
    if b"CAPABILITY" in body.upper() or b"STARTTLS" in body.upper():
        body = body.upper().replace(b"CAPABILITY", b"CAPA").replace(b"STARTTLS", b"START")
    chunks = random_splits(data, greeting + body)
    sent, close = run(factory(True), chunks)
    assert close is None
    assert body.startswith(sent)
    rest = body[len(sent):]
    if proto == "imap":
        # Only the unterminated last line waits (for its LF, to be classified).
        assert b"\n" not in rest and len(rest) <= MAX_LINE
    else:
        # SMTP also holds back the last "ddd-" line of a reply until it knows it is not followed by STARTTLS.
        assert rest.count(b"\n") <= 1 and len(rest) <= 2 * MAX_LINE


@FUZZ
@given(proto=st.sampled_from(sorted(STREAMS)), data=st.data())
def test_filter_never_lets_starttls_through(proto: str, data: st.DataObject) -> None:
    """Grammar-shaped traffic without literals: no STARTTLS/LOGINDISABLED capability reaches the client."""
    factory, _, greeting = STREAMS[proto]
    if proto == "imap":
        line = imap_line().filter(lambda b: b"{" not in b and len(b) <= MAX_LINE and b"\n" not in b[:-1])
    else:
        line = smtp_line()
    # Every SMTP reply ends on a "ddd " line so nothing is held back at the end.
    lines = data.draw(st.lists(line, max_size=12))
    payload = greeting + b"".join(lines) + (b"250 end\r\n" if proto == "smtp" else b"")
    sent, close = run(factory(True), random_splits(data, payload))
    if close is not None:
        return
    first_of_reply = True
    for out_line in sent.splitlines():
        if proto == "imap":
            if out_line.upper().startswith(b"* CAPABILITY") or b"[CAPABILITY" in out_line.upper():
                atoms = out_line.replace(b"]", b" ").upper().split()
                assert b"STARTTLS" not in atoms and b"LOGINDISABLED" not in atoms, out_line
            continue
        is_reply = re.match(rb"[2-5][0-9][0-9](?:[ -]|$)", out_line) is not None
        # The first line of a reply is its text (the EHLO domain), not a keyword: only later lines are EHLO
        # keywords (RFC 5321 4.1.1.1), and those must never offer STARTTLS on the TLS side.
        if is_reply and not first_of_reply:
            assert out_line[4:].strip().upper() != b"STARTTLS", out_line
        first_of_reply = not is_reply or out_line[3:4] != b"-"
