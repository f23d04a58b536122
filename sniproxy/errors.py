"""Stable outcome reasons and the project's error tree.

A ``Reason`` is the one word that logs, metrics and tests use to say why a connection ended.
Values are part of the public interface: never rename one, only add.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Reason(StrEnum):
    """Why a connection ended (or ``OK`` when it ended normally)."""

    OK = "ok"
    # client certificate verification (TLS layer)
    UNKNOWN_CA = "unknown_ca"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_USAGE = "wrong_usage"
    TEST_CHAIN = "test_chain"
    PRODUCTION_CHAIN = "production_chain"
    TEST_CARD = "test_card"
    CARD_TYPE = "card_type"
    NO_CLIENT_CERT = "no_client_cert"
    BAD_CERTIFICATE = "bad_certificate"
    CHAIN_TOO_DEEP = "chain_too_deep"
    SELF_SIGNED = "self_signed"
    WEAK_SIGNATURE = "weak_signature"   # a certificate of the card chain signed with SHA-1 (or weaker)
    WEAK_KEY = "weak_key"               # a card chain key under RSA 2048 / EC 256 bits
    REVOKED = "revoked"
    CRL_STALE = "crl_stale"
    CRL_MISSING = "crl_missing"
    # TLS handshake, not about the card
    HANDSHAKE_FAILED = "handshake_failed"
    BAD_CLIENT_HELLO = "bad_client_hello"
    UNKNOWN_SNI = "unknown_sni"
    # pre-TLS dialog
    STARTTLS_INJECTION = "starttls_injection"
    LINE_TOO_LONG = "line_too_long"
    TOO_MANY_COMMANDS = "too_many_commands"
    CLIENT_QUIT = "client_quit"
    # PROXY protocol in front of the client (docs/config.md, proxy_protocol_from)
    UNTRUSTED_PROXY_HEADER = "untrusted_proxy_header"   # a PROXY header from an address not trusted
    BAD_PROXY_HEADER = "bad_proxy_header"               # a trusted peer sent no or a malformed header
    # after TLS, the client broke the protocol the proxy speaks with it
    CLIENT_PROTOCOL = "client_protocol"
    # HTTPS listeners in mode http (docs/https.md): the request that ended the connection
    BAD_REQUEST = "bad_request"                         # 400: ambiguous framing, oversize or invalid head
    MISDIRECTED_REQUEST = "misdirected_request"         # 421: Host names another flow than the SNI chose
    CARD_REQUIRED = "card_required"                     # 403: no card (client_auth optional) on a card path
    BACKEND_TIMEOUT = "backend_timeout"                 # 504: no response head within response_timeout
    # backend
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_REFUSED = "backend_refused"
    BACKEND_PROTOCOL = "backend_protocol"
    # admission limits (config `limits`), checked at accept: shed load rather than queue it
    TOO_MANY_CONNECTIONS = "too_many_connections"   # max_connections of this worker reached
    TOO_MANY_FROM_IP = "too_many_from_ip"           # max_per_ip or max_pending_per_ip for the client address
    TOO_MANY_HANDSHAKES = "too_many_handshakes"     # max_pending connections not yet relaying
    # transport
    TIMEOUT = "timeout"
    CLIENT_CLOSED = "client_closed"
    CLIENT_RESET = "client_reset"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal_error"


class SniproxyError(Exception):
    """Base of every error sniproxy raises on purpose (tests/unit/test_layers.py keeps it so).

    ``REASON``: the outcome a connection ends with when this error ends it, for the errors that have
    one fixed ``Reason``; ``None`` for errors that never end a connection (a config error, a refused
    CRL) or whose reason varies per instance (``TlsFailure.reason``).
    """

    REASON: ClassVar[Reason | None] = None


class ConfigError(SniproxyError):
    """A configuration problem, located in a file at a line, under a key path.

    ``str()`` gives ``FILE:LINE: KEY.PATH: message``, which is what ``sniproxy check`` prints.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line is not None else "") + ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigErrors(SniproxyError):
    """Several configuration errors found in one pass (a config is checked whole, not stopped early)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
