"""Load-time checks of the PEM files a config names: certificates, keys, chains, expiry, modes.

Owns: reading each file once (cached by path; certificates are parsed by ``sniproxy.card.load_certs``),
and the checks ``load()`` applies to trust
material and server chains, reported through ``fields.Report`` at the key that named the file.
Must not: build OpenSSL contexts (that is ``sniproxy.tls.contexts``) or decide anything at runtime.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from sniproxy.card import is_test_issuer, load_certs
from sniproxy.config.fields import Report
from sniproxy.errors import ConfigError

# Keys already parsed and validated in this process, by content digest: the RSA consistency check
# costs about 50 ms a key, and a running proxy re-validates the same keys on every reload.
_KEYS: dict[bytes, PrivateKeyTypes] = {}
_KEYS_MAX = 64

#: A server certificate expiring sooner than this gives a warning.
EXPIRY_WARNING = dt.timedelta(days=30)


def describe(cert: x509.Certificate) -> str:
    """A short human name for a certificate: its subject DN (RFC 4514)."""
    return cert.subject.rfc4514_string() or "<empty subject>"


def looks_test(cert: x509.Certificate) -> bool:
    """True when a CA's subject says TEST, by the rule the card check applies to a card's issuer
    (``sniproxy.card.is_test_issuer``): CN starting with the word ``TEST``, or the word ``TEST`` in O/OU
    (IGC Santé ``CN=TEST AC ...``, ``OU=IGC-SANTE TEST``; IGC CPS ``O=GIP-CPS-TEST``). One rule, so an
    authority set's inferred profile and its cards' issuers never disagree."""
    return is_test_issuer(cert.subject)


def is_ca(cert: x509.Certificate) -> bool:
    """True when the certificate has basicConstraints with CA=true."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


class Files:
    """Reads and caches the PEM files of one config, reporting problems at the naming key."""

    def __init__(self, report: Report, now: dt.datetime | None = None) -> None:
        self.report = report
        self.now = now or dt.datetime.now(dt.UTC)
        self._certs: dict[Path, list[x509.Certificate] | None] = {}

    def _read(self, path: Path, line: int, key: str) -> bytes | None:
        try:
            if not path.exists():
                self.report.error(line, key, f"file not found: {path}")
                return None
            if not path.is_file():
                self.report.error(line, key, f"not a regular file: {path}")
                return None
            return path.read_bytes()
        except OSError as exc:
            self.report.error(line, key, f"cannot read {path}: {exc.strerror or exc}")
            return None

    def certs(self, path: Path, line: int, key: str) -> list[x509.Certificate] | None:
        """Every certificate of a PEM file (file order), or ``None`` (reported) if unreadable."""
        if path in self._certs:
            cached = self._certs[path]
            if cached is None:  # report again at this key, so every user of the file is told
                self.report.error(line, key, f"unusable certificate file: {path}")
            return cached
        data = self._read(path, line, key)
        certs: list[x509.Certificate] | None = None
        if data is not None:
            try:
                certs = load_certs(data, path)
            except ConfigError as exc:   # reported at the key, in this module's words, with the library's
                self.report.error(line, key, f"not a PEM certificate file: {path} ({exc.__cause__})")
        self._certs[path] = certs
        return certs

    def ca_certs(self, path: Path, line: int, key: str) -> list[x509.Certificate] | None:
        """Certificates of a trust file; each must be a CA (basicConstraints CA=true)."""
        certs = self.certs(path, line, key)
        for cert in certs or ():
            if not is_ca(cert):
                self.report.error(line, key, f"{path}: {describe(cert)} is not a CA certificate "
                                             "(basicConstraints CA=true missing)")
        return certs

    def private_key(self, path: Path, line: int, key: str) -> PrivateKeyTypes | None:
        """The unencrypted PEM private key of a file, or ``None`` (reported). Refuses (or, under
        ``secret_files: warn``, warns about) a file readable by group or others."""
        data = self._read(path, line, key)
        if data is None:
            return None
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            self.report.exposed_secret(line, key, path, stat.S_IMODE(mode))
        digest = hashlib.sha256(data).digest()
        cached = _KEYS.get(digest)
        if cached is not None:
            return cached
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            self.report.error(line, key, f"{path}: encrypted private keys are not supported")
        except (ValueError, UnicodeError) as exc:
            self.report.error(line, key, f"not a PEM private key: {path} ({exc})")
        else:
            if len(_KEYS) >= _KEYS_MAX:
                _KEYS.pop(next(iter(_KEYS)))
            _KEYS[digest] = loaded
            return loaded
        return None

    def check_server_chain(self, certs: list[x509.Certificate], path: Path, line: int, key: str) -> None:
        """Each certificate must be issued by the next (name and signature); warn on a lone leaf
        that is not self-issued; error on an expired certificate, warn within 30 days."""
        for i in range(len(certs) - 1):
            child, parent = certs[i], certs[i + 1]
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature) as exc:
                why = "issuer name differs" if child.issuer != parent.subject else f"signature: {exc!r}"
                self.report.error(line, key, f"{path}: chain broken: certificate {i + 1} "
                                             f"({describe(child)}) is not issued by certificate {i + 2} "
                                             f"({describe(parent)}): {why}")
        if len(certs) == 1 and certs[0].issuer != certs[0].subject:
            self.report.warn(line, key, f"{path} holds only the leaf; its issuer "
                                        f"{certs[0].issuer.rfc4514_string()} is not sent to clients")
        for i, cert in enumerate(certs):
            end = cert.not_valid_after_utc
            what = f"{path}: certificate {i + 1} ({describe(cert)})"
            if end <= self.now:
                self.report.error(line, key, f"{what} expired on {end:%Y-%m-%d %H:%M}Z")
            elif end - self.now < EXPIRY_WARNING:
                self.report.warn(line, key, f"{what} expires on {end:%Y-%m-%d %H:%M}Z, "
                                            f"in {(end - self.now).days} days")
            elif cert.not_valid_before_utc > self.now:
                self.report.warn(line, key, f"{what} is not valid before "
                                            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z")

    def check_key_matches(self, private_key: PrivateKeyTypes, leaf: x509.Certificate,
                          cert_path: Path, line: int, key: str) -> None:
        """The key's public half must be the leaf certificate's public key."""
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if private_key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            self.report.error(line, key, f"private key does not match the certificate {cert_path} "
                                         f"({describe(leaf)})")


def distribution_points(certs: list[x509.Certificate]) -> list[str]:
    """The http(s)/ldap(s) CRL distribution point URIs written in ``certs``, in order, without repeats."""
    urls: list[str] = []
    for cert in certs:
        try:
            cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            continue
        for dp in cdp:
            for name in dp.full_name or ():
                if isinstance(name, x509.UniformResourceIdentifier):
                    scheme = name.value.partition("://")[0].lower()
                    if scheme in ("http", "https", "ldap", "ldaps") and name.value not in urls:
                        urls.append(name.value)
    return urls
