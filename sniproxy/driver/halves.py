"""The interface between the front half of a connection and its back half, in both directions.

Owns: ``FrontHalf``, all a back half may use of the front (``driver.front.ClientConnection``), and
``BackHalf``, all the front calls on a back half (``driver.mail.MailBack``, ``driver.http.HttpBack``).
mypy holds both sides to them; and ``FINISHED``, the do-nothing back half a finished connection
keeps. Must not: hold other code; a back half needing more of the front grows ``FrontHalf`` here, in
plain sight, rather than reaching into the front's private state.
"""

from __future__ import annotations

from typing import Any, Protocol

from sniproxy.card import CardIdentity, UnreadableCard
from sniproxy.config.model import Listener
from sniproxy.config.model import Protocol as Speaks
from sniproxy.errors import Reason
from sniproxy.proto.imap import imap_unavailable
from sniproxy.runtime.snapshot import ListenerRuntime
from sniproxy.tls.session import TlsSession


class FrontHalf(Protocol):
    """The client side of one connection, as its back half sees it.

    The facts are read-only and settled before ``BackHalf.start``: the flow and TLS session, the
    card's identity fields, the real client and local addresses. ``last_io`` is the one field a back
    half writes: the idle timer (the front's) counts backend traffic as activity too.
    """

    last_io: float

    @property
    def id(self) -> int:
        """The connection number of the log events."""

    @property
    def peer(self) -> str:
        """The client as ``host:port`` (the one a trusted balancer's header named, if any)."""

    @property
    def lr(self) -> ListenerRuntime:
        """The listener and its routes, from the snapshot pinned at accept."""

    @property
    def flow(self) -> str | None:
        """The flow the ClientHello chose."""

    @property
    def sni(self) -> str | None:
        """The server name the client asked for."""

    @property
    def tls(self) -> TlsSession | None:
        """The established TLS session."""

    @property
    def card(self) -> CardIdentity | UnreadableCard | None:
        """The verified card, read once at the end of the handshake; None without a card."""

    @property
    def client_addr(self) -> tuple[str, int]:
        """The real client."""

    @property
    def local_addr(self) -> tuple[str, int]:
        """Where the client connected to."""

    @property
    def client_eof(self) -> bool:
        """The client half-closed before the back half started relaying."""

    def send_plain(self, data: bytes) -> None:
        """Encrypt ``data`` to the client (a TLS failure finishes the connection)."""

    def pause_client_reading(self) -> None:
        """Stop reading from the client."""

    def resume_client_reading(self) -> None:
        """Read from the client again."""

    def await_backend(self) -> None:
        """Enter ``backend_connect``: client plaintext is held until ``enter_relay``."""

    def enter_relay(self) -> None:
        """Enter ``relay``: client plaintext goes to ``BackHalf.client_data`` from now on."""

    def take_pending(self) -> bytes:
        """The client plaintext held before ``enter_relay`` (then forgotten)."""

    def goodbye(self) -> None:
        """End for a drain, with the listener protocol's goodbye."""

    def finish(self, reason: Reason, detail: str = "") -> None:
        """End the connection (idempotent): calls ``BackHalf.finish``, logs the one event."""


class BackHalf(Protocol):
    """What serves a connection after its card check, one kind per listener mode.

    Created at accept (its event fields belong to every event of its listener), started once the
    handshake is done. Every call comes from the front half, on the event loop.
    """

    def start(self) -> None:
        """The card is verified: begin (``FrontHalf.await_backend`` or ``enter_relay``)."""

    def client_data(self, data: bytes) -> None:
        """Client plaintext, in the ``relay`` phase."""

    def client_eof(self) -> bool:
        """The client half-closed in the ``relay`` phase; False: the front closes now."""

    def pause_writing(self) -> None:
        """The client's write buffer is full: stop reading from the backend."""

    def resume_writing(self) -> None:
        """The client's write buffer drained: read from the backend again."""

    def drain_begin(self) -> None:
        """The worker started draining while this connection relays."""

    def backend_timeout(self) -> None:
        """The backend did not answer within the phase's timeout: end the connection, telling the client."""

    def finish(self) -> None:
        """The connection is ending: cancel timers and tasks, close the backend side."""

    def event_fields(self) -> dict[str, Any]:
        """This half's fields of the ``connection`` event."""


class Finished:
    """The back half of a finished connection: transport callbacks that come after the end land here.

    ``finish`` puts it in place of the real back half so that the two halves no longer point at
    each other: a finished connection is then freed by reference counting at once, buffers and TLS
    session included, instead of waiting in a reference cycle for the next full garbage collection
    (the hour-long soak's Python heap rose and fell by about 10,000 blocks a worker that way).
    """

    __slots__ = ()

    def start(self) -> None:
        """Never started again."""

    def client_data(self, data: bytes) -> None:
        """Nothing is relayed any more."""

    def client_eof(self) -> bool:
        """Nothing to half-close."""
        return False

    def pause_writing(self) -> None:
        """No backend to pause."""

    def resume_writing(self) -> None:
        """No backend to resume."""

    def drain_begin(self) -> None:
        """Already ended."""

    def backend_timeout(self) -> None:
        """Already ended."""

    def finish(self) -> None:
        """Already finished."""

    def event_fields(self) -> dict[str, Any]:
        """The event was logged by the real back half."""
        return {}


FINISHED = Finished()   # stateless: one for every finished connection
# The listener protocols whose back half relays raw bytes (``MailBack`` with no mail relay), unless served as HTTP.
RAW_PROTOCOLS = (Speaks.TLS, Speaks.HTTPS)


def no_plaintext(data: bytes) -> None:
    """Where client plaintext goes before the hand-over (none can be decrypted yet) and after the end."""


def refusal(listener: Listener) -> bytes:
    """What a connection refused at accept is told (``limits``), on a STARTTLS listener only; else b""."""
    if listener.protocol is Speaks.IMAP:
        return imap_unavailable("Too many connections, try again later")
    if listener.protocol is Speaks.SMTP:
        return f"421 4.7.0 {listener.hostname} Too many connections, try again later\r\n".encode()
    return b""


def farewell(listener: Listener) -> bytes:
    """What a drain says before closing (``FrontHalf.goodbye``), in the listener's protocol; b"" if nothing.

    IMAP ``* BYE [UNAVAILABLE]`` (RFC 9051 §7.1.5: the client reconnects), SMTP ``421 4.3.2`` (RFC 3463:
    system not accepting messages).
    """
    if listener.protocol in (Speaks.IMAP, Speaks.IMAPS):
        return imap_unavailable("Server shutting down, please reconnect")
    if listener.protocol in (Speaks.SMTP, Speaks.SMTPS):
        return f"421 4.3.2 {listener.hostname} Service shutting down, try again later\r\n".encode()
    return b""
