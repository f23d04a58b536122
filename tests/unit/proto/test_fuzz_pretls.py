"""Fuzzing the pre-TLS dialogs (``ImapPreTls``, ``SmtpPreTls``) and the line buffer under them.

Properties, for any input and any chunking of it:
- only the documented outcomes: ``Send`` actions then at most one final ``StartTls`` or ``Stop``
  (never an exception, never a ``Send`` after the final action, nothing at all once finished);
- memory bounded by the configured limits: the line buffer never holds more than ``max_line + 1``
  bytes beyond the chunk just fed, and at most ``max_commands`` commands are answered;
- chunking-invariant: whole, byte by byte and random splits give the same bytes and final action, with
  one deliberate exception: bytes arriving in the same read as ``STARTTLS`` are an injection
  (CVE-2011-0411 class), so a chunk boundary right after the STARTTLS line decides TLS vs injection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from hypothesis import event, given
from hypothesis import strategies as st

from sniproxy.errors import Reason
from sniproxy.proto.actions import Action, Send, StartTls, Stop
from sniproxy.proto.imap import ImapPreTls
from sniproxy.proto.linebuf import LineBuffer, LineTooLong
from sniproxy.proto.smtp import SmtpPreTls
from tests.unit.fuzzkit import FUZZ, bytewise, mutated, random_splits

Dialog = ImapPreTls | SmtpPreTls
MAX_LINE, MAX_COMMANDS = 96, 10
INJECTION = Stop(Reason.STARTTLS_INJECTION, "data after STARTTLS")
FINALS = (StartTls(), Stop(Reason.LINE_TOO_LONG), Stop(Reason.TOO_MANY_COMMANDS), Stop(Reason.CLIENT_QUIT),
          INJECTION)

# ---------------------------------------------------------------------------- inputs
_EOL = st.sampled_from([b"\r\n", b"\n", b"\r\r\n"])
_ATOM = st.binary(min_size=0, max_size=12).filter(lambda b: b"\n" not in b)
_IMAP_VERBS = [b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"LOGIN", b"AUTHENTICATE", b"SELECT", b"ID",
               b"starttls", b"Capability", b"STARTTLS", b"NOOP"]
_SMTP_VERBS = [b"EHLO", b"HELO", b"NOOP", b"RSET", b"QUIT", b"STARTTLS", b"MAIL", b"RCPT", b"AUTH", b"DATA",
               b"BDAT", b"ehlo", b"StartTLS", b"VRFY", b"STARTTLS", b"EHLO"]
_TAGS = st.sampled_from([b"a", b"A1", b"tag.with.dots", b"9", b"a", b"b2",       # valid tags, more often
                         b"*", b"+", b"a(b", b"", b"\x00"])


@st.composite
def imap_line(draw: st.DrawFn) -> bytes:
    tag, verb = draw(_TAGS), draw(st.sampled_from(_IMAP_VERBS))
    args = draw(st.one_of(st.just(b""), st.just(b""), _ATOM.map(lambda a: b" " + a)))
    return tag + b" " + verb + args + draw(_EOL)


@st.composite
def smtp_line(draw: st.DrawFn) -> bytes:
    verb = draw(st.sampled_from(_SMTP_VERBS))
    args = draw(st.one_of(st.just(b""), st.just(b" "), _ATOM.map(lambda a: b" " + a)))
    return verb + args + draw(_EOL)


def _session(line: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A client session: mostly grammar-shaped lines, now and then raw noise or a too-long line
    (weighted so that every ending, STARTTLS included, is common: see ``event`` statistics)."""
    kind = st.integers(0, 19)
    piece = kind.flatmap(lambda k: st.just(b"x" * (MAX_LINE + 5) + b"\r\n") if k == 0
                         else st.binary(max_size=40) if k == 1 else line)
    return st.lists(piece, max_size=12).map(b"".join)


SESSIONS: dict[str, tuple[Callable[[], Dialog], st.SearchStrategy[bytes]]] = {
    "imap": (lambda: ImapPreTls("imap.example", max_line=MAX_LINE, max_commands=MAX_COMMANDS),
             _session(imap_line())),
    "smtp": (lambda: SmtpPreTls("smtp.example", max_line=MAX_LINE, max_commands=MAX_COMMANDS),
             _session(smtp_line())),
}


# ---------------------------------------------------------------------------- the runner
def run(dialog: Dialog, chunks: Iterable[bytes]) -> tuple[bytes, Action | None, int]:
    """Feed ``chunks``; (bytes sent, the final action or None, bytes fed when it came).

    Asserts the invariants that hold at every step: action shapes, buffer bound, nothing after the end.
    """
    sent, final, fed = bytearray(), None, 0
    for chunk in chunks:
        actions = dialog.receive_data(chunk)
        if final is not None:
            assert actions == [], "a finished dialog must ignore input"
            continue
        fed += len(chunk)
        # The line buffer holds at most the unterminated tail (max_line + 1) plus this chunk's lines.
        assert len(dialog._lines) <= MAX_LINE + 1 + len(chunk)
        for i, action in enumerate(actions):
            if isinstance(action, Send):
                assert action.data, "an empty Send"
                assert i == len(actions) - 1 or isinstance(actions[i + 1], StartTls | Stop), actions
                sent += action.data
            else:
                assert action in FINALS, action
                assert i == len(actions) - 1, "nothing may follow the final action"
                final = action
        assert dialog.finished is (final is not None)
    return bytes(sent), final, fed


def _replies(sent: bytes) -> int:
    return sent.count(b"\n")


@FUZZ
@given(proto=st.sampled_from(sorted(SESSIONS)), data=st.data())
def test_dialog_chunking_and_bounds(proto: str, data: st.DataObject) -> None:
    factory, sessions = SESSIONS[proto]
    payload = data.draw(st.one_of(sessions, mutated(sessions), st.binary(max_size=300)))
    chunks = random_splits(data, payload)
    whole = run(factory(), [payload])
    byte = run(factory(), bytewise(payload))
    split = run(factory(), chunks)
    # Replies are bounded: one short reply per command (an EHLO is 4 lines), at most max_commands of them.
    assert _replies(byte[0]) <= 4 * MAX_COMMANDS + 2
    event(f"final: {byte[1]!r}")   # --hypothesis-show-statistics shows that every ending is reached
    if byte[1] != StartTls():
        # No STARTTLS reached: the chunking cannot matter at all.
        assert whole[:2] == byte[:2] == split[:2]
        return
    # Byte by byte, nothing can follow STARTTLS in its read: TLS starts after exactly ``at`` bytes.
    at = byte[2]
    assert byte[0].endswith(b" OK Begin TLS negotiation now\r\n" if proto == "imap"
                            else b"220 2.0.0 Ready to start TLS\r\n")
    before_ok = byte[0][:byte[0].rfind(b"\n", 0, len(byte[0]) - 1) + 1]
    for outcome, used in ((whole, [payload]), (split, chunks)):
        ends = {sum(len(c) for c in used[:i + 1]) for i in range(len(used))}
        event("STARTTLS alone in its read" if at in ends else "data in the STARTTLS read")
        if at in ends:
            # A read ended right after the STARTTLS line: TLS starts, exactly as byte by byte.
            assert outcome[:2] == byte[:2]
        else:
            # Something came in the same read as STARTTLS: refused, and what was answered before is unchanged.
            assert outcome[1] == INJECTION
            assert outcome[0].startswith(before_ok)


@FUZZ
@given(proto=st.sampled_from(sorted(SESSIONS)), n=st.integers(MAX_COMMANDS + 1, 40))
def test_command_budget_holds_however_commands_arrive(proto: str, n: int) -> None:
    factory, _ = SESSIONS[proto]
    payload = b"NOOP\r\n" if proto == "smtp" else b"t NOOP\r\n"
    for chunks in ([payload * n], bytewise(payload * n)):
        sent, final, _ = run(factory(), chunks)
        assert final == Stop(Reason.TOO_MANY_COMMANDS)
        assert _replies(sent) == MAX_COMMANDS + 1   # one reply per allowed command, then the closing one


# ---------------------------------------------------------------------------- the line buffer alone
@FUZZ
@given(max_line=st.integers(1, 64), data=st.data())
def test_linebuffer_random_splits(max_line: int, data: st.DataObject) -> None:
    """Lines come out identical for any chunking; ``pending`` is exactly the unread tail; bounded."""
    payload = data.draw(st.one_of(st.binary(max_size=400),
                                  st.lists(st.binary(max_size=max_line + 3).map(lambda b: b + b"\n")).map(b"".join)))

    def drain(chunks: list[bytes]) -> tuple[list[bytes], bool, bytes]:
        buf = LineBuffer(max_line)
        lines: list[bytes] = []
        for chunk in chunks:
            buf.feed(chunk)
            assert len(buf) <= max_line + 1 + len(chunk)
            while True:
                try:
                    line = buf.next_line()
                except LineTooLong:
                    return lines, True, b""
                if line is None:
                    break
                assert line.endswith(b"\n") and len(line) <= max_line
                lines.append(line)
        return lines, False, buf.pending()

    whole = drain([payload])
    assert drain(bytewise(payload)) == whole
    assert drain(random_splits(data, payload)) == whole
    lines, too_long, pending = whole
    consumed = b"".join(lines)
    assert payload.startswith(consumed)
    if not too_long:
        assert pending == payload[len(consumed):]
