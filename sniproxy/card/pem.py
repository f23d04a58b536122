"""Certificate PEM files: the one reader of CA and card certificate files, and the PEM text of a DER certificate.

Owns: reading a PEM file of certificates (every caller gets the same ``ConfigError`` naming the file) and
writing a DER certificate as PEM (for the HTTP identity headers) without parsing it again. Must not:
check what the certificates are (config/pemfiles.py does, at load) or build trust stores.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography import x509

from sniproxy.errors import ConfigError


def load_certs(data: bytes, path: Path | str) -> list[x509.Certificate]:
    """Every certificate of PEM ``data`` read from ``path``, in file order.

    Raises ``ConfigError`` naming ``path`` when there is none or one is malformed (the library's words
    follow, and the ``ValueError`` is the error's ``__cause__``).
    """
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"cannot read certificates: {exc}", file=str(path)) from exc


def read_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in file order. Raises ``ConfigError`` naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read certificates: {exc}", file=str(path)) from exc
    return load_certs(data, path)


def to_pem(der: bytes) -> str:
    """The PEM text of a DER certificate: 64-column base64 between the ``CERTIFICATE`` lines, as OpenSSL writes it.

    Built from the bytes directly: the verified chain is kept as DER, and parsing it again for each
    header would cost a certificate parse per profile and request.
    """
    b64 = base64.b64encode(der).decode("ascii")
    lines = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"
