"""The IP address of a socket peer, as the client really has it (pure: no DNS, no socket).

Owns ``peer_ip``, the one reading of a peer's host string that trust lists, the relays (``smtp_relay``'s
``XCLIENT ADDR``) and the config (``config.names`` re-exports it) share. Lives in ``proto/`` because
``proto/`` imports nothing above it. Must not resolve names or touch sockets.
"""

from __future__ import annotations

import ipaddress


def peer_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a socket peer's host string, as the client really has it; None if not an IP.

    A zone id (``fe80::1%eth0``) is dropped, and an IPv4 peer seen through a dual-stack socket
    (``::ffff:a.b.c.d``) is its IPv4 address: trust lists and backends must see the same client either way.
    """
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
