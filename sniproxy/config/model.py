"""The validated configuration, as frozen values.

``sniproxy.config.load`` turns one YAML file into a ``Config``; nothing here touches files or
OpenSSL. ``sniproxy.tls.contexts`` compiles a ``Config`` into a runtime ``Snapshot``.
Paths are absolute (resolved against the config file's folder at load time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from sniproxy.auth.login import LoginRule
from sniproxy.card.oids import CardType as CardType  # the card module's families, named by a flow's card_types


class Profile(StrEnum):
    """Which chains a deployment may trust.

    ``production`` never trusts a TEST chain (issuer CN starting with ``TEST``); ``test`` (a test or
    training platform) trusts only TEST chains and refuses production cards.
    """

    PRODUCTION = "production"
    TEST = "test"


class Protocol(StrEnum):
    """What a listener speaks before and around TLS."""

    IMAP = "imap"      # STARTTLS (RFC 3501/9051, RFC 2595)
    SMTP = "smtp"      # submission with STARTTLS (RFC 3207)
    IMAPS = "imaps"    # implicit TLS (RFC 8314)
    SMTPS = "smtps"    # implicit TLS (RFC 8314)
    TLS = "tls"        # TLS then raw TCP
    HTTPS = "https"    # TLS then HTTP/1.1 (mode http: parsed and rewritten; mode tcp: raw bytes)


class ClientAuth(StrEnum):
    """Client certificate mode of a flow."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


class UnknownSni(StrEnum):
    """What a listener does with an SNI it has no route for."""

    DEFAULT = "default"   # use the default flow
    REJECT = "reject"     # fatal alert unrecognized_name


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port; ``host`` is an IP literal or ``localhost`` (IPv6 without brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AuthoritySet:
    """Named trust material: the CAs a card must chain to. ``test`` is true for TEST chains."""

    name: str
    roots: tuple[Path, ...]
    intermediates: tuple[Path, ...] = ()
    test: bool = False
    enabled: bool = True
    crl_sources: tuple[str, ...] = ()            # URLs (http, https, ldap, ldaps) or absolute file paths
    crl_check: str = "chain"                     # "chain": card and intermediates; "leaf": the card only
    crl_grace: float | None = None               # None: fail-closed once nextUpdate has passed
    crl_from_certificates: bool = False          # the CAs' own distribution points were added to the sources

    @property
    def revocation_required(self) -> bool:
        """Cards of this set are checked against CRLs (and refused when none is in force).

        Asking for the certificates' distribution points counts even when they named none: the
        operator asked for revocation, so the set fails closed rather than silently unchecked.
        """
        return bool(self.crl_sources) or self.crl_from_certificates


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """TLS parameters of a flow. Defaults follow the ANSSI recommendations (TLS 1.2+, ECDHE + AEAD)."""

    min_version: str = "1.2"                    # "1.2" or "1.3"
    ciphers: str = (
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    )
    groups: str = "X25519:P-256:P-384"
    session_tickets: bool = False
    # TLS 1.3 suites (all AEAD), strongest first as the ANSSI guide orders them.
    ciphersuites: str = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
    # Signature algorithms for both directions (server key exchange and the card's CertificateVerify):
    # no SHA-1, no MD5. RSA PKCS#1 v1.5 stays for TLS 1.2 cards, which sign with it.
    sigalgs: str = (
        "ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512:ed25519:"
        "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:"
        "rsa_pss_pss_sha256:rsa_pss_pss_sha384:rsa_pss_pss_sha512:"
        "RSA+SHA256:RSA+SHA384:RSA+SHA512"
    )


@dataclass(frozen=True, slots=True)
class Flow:
    """A TLS profile: server chain and key, accepted client authorities, client-auth mode, TLS policy."""

    name: str
    certificate: Path                            # PEM: leaf first, then intermediates
    key: Path
    client_auth: ClientAuth = ClientAuth.REQUIRED
    authorities: tuple[str, ...] = ()            # names of AuthoritySet
    card_types: tuple[CardType, ...] = ()        # empty: any card type
    refuse_test_cards: bool | None = None        # None: follow the profile (refuse on production)
    verify_depth: int = 4
    tls: TlsPolicy = field(default_factory=TlsPolicy)


@dataclass(frozen=True, slots=True)
class Route:
    """SNI names (exact or ``*.`` wildcard, lower-case) that select a flow on a listener."""

    flow: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-phase limits in seconds."""

    pretls: float = 60.0        # whole pre-TLS dialog
    handshake: float = 15.0
    connect: float = 5.0        # backend connect + greeting
    idle: float = 1800.0        # no byte either way (IMAP IDLE lasts long)


class Identity(StrEnum):
    """How the verified card identity travels to the backend."""

    NONE = "none"            # nothing: the backend sees the proxy's address and no identity
    PROXY_V2 = "proxy-v2"    # a PROXY v2 header with SSL TLVs (Dovecot haproxy = yes listeners)
    XCLIENT = "xclient"      # SMTP XCLIENT ADDR/PORT/HELO, then LOGIN= (Postfix)


@dataclass(frozen=True, slots=True)
class ProxyV2Options:
    """What the PROXY v2 header carries besides addresses, SSL flags, version and cipher."""

    send_cn: bool = True          # PP2_SUBTYPE_SSL_CN: Dovecot's auth_ssl_username_from_cert uses it
    identity_tlvs: bool = False   # the full card identity in application TLVs 0xE0-0xEF
    crc32c: bool = False          # a PP2_TYPE_CRC32C checksum


@dataclass(frozen=True, slots=True)
class ProxyLogin:
    """Proxy-side SASL EXTERNAL: the mailbox rule, and the master login used for IMAP.

    ``master_password`` is a secret: it is excluded from ``repr`` so it never reaches a log.
    """

    rule: LoginRule
    master_user: str | None = None
    master_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Backend:
    """Where plaintext goes, and how the verified identity travels there."""

    address: Address
    identity: Identity = Identity.NONE
    proxy_v2: ProxyV2Options = field(default_factory=ProxyV2Options)
    login: ProxyLogin | None = None


class HttpMode(StrEnum):
    """What an ``https`` listener does with the bytes after TLS."""

    HTTP = "http"     # parse (llhttp, strict), strip client identity headers, add the card's, re-frame
    TCP = "tcp"       # raw bytes (identity only by PROXY v2, if the backend asks for it)


class HeaderProfile(StrEnum):
    """A family of identity headers added to each request (docs/https.md)."""

    FORWARDED = "forwarded"   # Forwarded (RFC 7239) + X-Forwarded-For/-Proto/-Host
    NGINX = "nginx"           # X-SSL-Client-Verify/-S-DN/-I-DN/-Serial/-Cert (URL-encoded PEM)
    TOMCAT = "tomcat"         # SSLValve: ssl_client_cert, ssl_cipher, ssl_session_id, ssl_cipher_usekeysize
    ENVOY = "envoy"           # X-Forwarded-Client-Cert
    RFC9440 = "rfc9440"       # Client-Cert, Client-Cert-Chain (structured-field byte sequences)
    CARD = "card"             # the normalized card identity under ``HttpOptions.card_headers`` names


#: Default names of the normalized card identity headers (identity field -> header name).
DEFAULT_CARD_HEADERS: dict[str, str] = {
    "idnat_ps": "X-MSS-IdNat-PS",
    "idnat_struct": "X-MSS-IdNat-Struct",
    "profession": "X-MSS-Profession",
    "authority": "X-MSS-Authority",
    "card_type_name": "X-MSS-Card-Type",
}


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """The ``http`` section of an ``https`` listener."""

    mode: HttpMode = HttpMode.HTTP
    headers: tuple[HeaderProfile, ...] = (HeaderProfile.FORWARDED, HeaderProfile.NGINX, HeaderProfile.CARD)
    card_headers: tuple[tuple[str, str], ...] = tuple(DEFAULT_CARD_HEADERS.items())
    strip: tuple[str, ...] = ()                   # more header names (or ``prefix*``) removed from requests
    # With client_auth optional: path prefixes that need a card (403 without one). Fail closed: all.
    card_required_paths: tuple[str, ...] = ("/",)
    max_request_line: int = 8192                  # bytes, request line alone
    max_header_bytes: int = 32768                 # bytes, request line + header block
    response_timeout: float = 60.0                # request sent -> response head received (else 504)
    pool_max_idle: int = 8                        # idle backend connections kept per backend
    pool_idle_timeout: float = 30.0               # an idle backend connection older than this is closed


@dataclass(frozen=True, slots=True)
class Listener:
    """An address set and a protocol, with either one flow or SNI routes and a default."""

    name: str
    binds: tuple[Address, ...]
    protocol: Protocol
    backend: Backend
    routes: tuple[Route, ...] = ()
    default_flow: str | None = None               # the flow for no SNI / unknown SNI (or the single flow)
    unknown_sni: UnknownSni = UnknownSni.DEFAULT
    hostname: str = "sniproxy"                    # name used in greetings before TLS
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_line: int = 8192                          # pre-TLS command line limit, bytes
    max_pretls_commands: int = 32
    # Peers (L4 load balancers) that must open with a PROXY v1/v2 header; everyone else must not.
    proxy_protocol_from: tuple[IPv4Network | IPv6Network, ...] = ()
    http: HttpOptions | None = None               # ``https`` listeners only
    bind_lines: tuple[int, ...] = ()              # config line of each ``binds`` item (bind errors name it)


@dataclass(frozen=True, slots=True)
class Limits:
    """Admission limits of one worker process (the ``limits`` top-level section).

    Per process: with ``workers: N`` the whole service admits N times these. A client behind a
    hospital NAT shares its address with hundreds of users, so the per-address limit on established
    connections is high; the per-address limit on connections still in their handshake is low, as
    that is where a slowloris or a handshake flood sits.
    """

    max_connections: int = 10000        # every connection, any phase
    max_per_ip: int = 1000              # connections from one client address, any phase
    max_pending: int = 1000             # connections not yet relaying (pre-TLS, handshake, backend connect)
    max_pending_per_ip: int = 64        # the same, from one client address


@dataclass(frozen=True, slots=True)
class CrlSettings:
    """How CRLs are fetched and kept (the ``crl`` top-level section)."""

    cache_dir: Path | None = None                # default: <state_dir>/crl
    refresh_max: float = 3600.0                  # longest wait between two fetches of a source
    retry_min: float = 30.0                      # first retry delay after a failure (doubles up to refresh_max)
    timeout: float = 30.0                        # whole fetch of one source, connect to last byte
    max_bytes: int = 256 * 1024 * 1024           # a CRL body larger than this is refused


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """The admin endpoint (the ``admin`` top-level section): plain HTTP, never on a client port."""

    bind: Address
    line: int | None = field(default=None, compare=False)   # of ``admin.bind``, for a bind failure


@dataclass(frozen=True, slots=True)
class Cutover:
    """A scheduled change (the ``cutover`` list): at ``at``, a flow's certificate and key switch, or
    a listener's ``default_flow`` (the no-SNI flow) does. Applied by the running proxy by itself."""

    at: float                                    # epoch seconds (written as an RFC 3339 instant)
    at_text: str                                 # as written, for logs
    line: int                                    # config line of the entry
    flow: str | None = None
    certificate: Path | None = None
    key: Path | None = None
    listener: str | None = None
    default_flow: str | None = None

    def describe(self) -> str:
        """One line for logs: what the entry changes."""
        if self.flow is not None:
            return f"flow {self.flow} certificate -> {self.certificate}"
        return f"listener {self.listener} default_flow -> {self.default_flow}"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration (before TLS compilation)."""

    source: Path
    profile: Profile
    authorities: dict[str, AuthoritySet]
    flows: dict[str, Flow]
    listeners: tuple[Listener, ...]
    workers: int | None = 1                       # None means "auto": one per core
    log_level: str = "info"
    log_format: str = "auto"                      # auto (json unless a TTY), json, console
    state_dir: Path | None = None
    crl: CrlSettings = field(default_factory=CrlSettings)
    limits: Limits = field(default_factory=Limits)
    drain_timeout: float = 25.0                   # SIGTERM: longest wait for connections (under k8s' 30 s grace)
    cutover: tuple[Cutover, ...] = ()             # in instant order (stable for equal instants)
    reload_watch: float | None = None             # reload.watch: poll interval (s) of the files, None = off
    admin: AdminSettings | None = None            # None: no admin endpoint
