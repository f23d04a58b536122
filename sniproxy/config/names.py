"""Syntax of the names and addresses a config holds: IP:port, hostnames, SNI patterns, object names.

Owns: pure string checks that return a value or raise ``ValueError`` with a message fit for a
config error. Must not: resolve names (no DNS) or touch sockets.
"""

from __future__ import annotations

import ipaddress
import re

from sniproxy.config.model import Address

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_object_name(name: str, what: str) -> str:
    """A listener, flow or authority-set name: letters, digits, ``_ . -``, at most 64 characters.

    Names end up in logs and metric labels, so they stay plain.
    """
    if not _OBJECT_NAME.match(name):
        raise ValueError(f"invalid {what} name {name!r} (letters, digits, '_', '.', '-'; "
                         "starting with a letter or digit; at most 64 characters)")
    return name


def check_hostname(name: str) -> str:
    """A DNS hostname (LDH labels, no trailing dot, not an IP literal); returned lower-cased."""
    lowered = name.lower()
    if lowered.endswith("."):
        raise ValueError(f"invalid hostname {name!r}: no trailing dot")
    if len(lowered) > 253:
        raise ValueError(f"invalid hostname {name!r}: longer than 253 characters")
    labels = lowered.split(".")
    bad = [label for label in labels if not _LABEL.match(label)]
    if bad:
        raise ValueError(f"invalid hostname {name!r}: bad label {bad[0]!r} (letters, digits, '-')")
    try:
        ipaddress.ip_address(lowered)
    except ValueError:
        return lowered
    raise ValueError(f"invalid hostname {name!r}: an IP address is not a host name")


def check_sni_pattern(name: str) -> str:
    """An SNI route name: a hostname or ``*.`` + hostname (one leftmost wildcard label); lower-cased."""
    if name.startswith("*."):
        rest = check_hostname(name[2:])
        if "." not in rest:
            raise ValueError(f"invalid SNI pattern {name!r}: a wildcard needs at least two labels after '*.'")
        return "*." + rest
    if "*" in name:
        raise ValueError(f"invalid SNI pattern {name!r}: '*' only as the whole leftmost label ('*.')")
    return check_hostname(name)


def parse_address(text: str, *, allow_localhost: bool = False) -> Address:
    """Parse ``IPv4:port``, ``[IPv6]:port`` (or ``localhost:port`` when allowed) into an ``Address``.

    The host is normalised (``[0:0::1]`` -> ``::1``); the port must be 1-65535.
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid address {text!r}: expected [IPv6]:port")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"invalid address {text!r}: {host!r} is not an IPv6 address") from None
        if ip.version != 6:
            raise ValueError(f"invalid address {text!r}: brackets are for IPv6 only")
        norm = str(ip)
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {text!r}: expected HOST:PORT (IPv4:port or [IPv6]:port)")
        if ":" in host:
            raise ValueError(f"invalid address {text!r}: write an IPv6 address as [IPv6]:port")
        if allow_localhost and host.lower() == "localhost":
            norm = "localhost"
        else:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                extra = " or localhost" if allow_localhost else ""
                raise ValueError(
                    f"invalid address {text!r}: {host!r} is not an IPv4 address{extra}") from None
            norm = str(ip)
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"invalid address {text!r}: port {port!r} is not a number")
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"invalid address {text!r}: port {number} is out of range 1-65535")
    return Address(norm, number)


def binds_overlap(a: Address, b: Address) -> bool:
    """True when two bind addresses cannot both be bound: same port and the same host, or one is
    the wildcard (``0.0.0.0`` / ``::``) of the other's family. ``0.0.0.0`` and ``::`` together are
    allowed (the listener binds IPv6 sockets with IPV6_V6ONLY)."""
    if a.port != b.port:
        return False
    if a.host == b.host:
        return True
    try:
        ia, ib = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    except ValueError:
        return False
    return ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified)
