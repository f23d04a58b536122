"""The connection driver: a front half shared by every listener, one back half per listener mode.

- ``shared``: phase names, buffer limits, the worker-wide counters, live set, drain flag, observers.
- ``halves``: the two interfaces, ``FrontHalf`` (what a back half may use) and ``BackHalf`` (what
  the front calls).
- ``front``: ``ClientConnection``, the asyncio Protocol of every client socket: accept and
  admission, PROXY header in, pre-TLS dialog, ClientHello and flow, handshake and card, drain hooks,
  the end of every connection.
- ``mail``: the byte-relay back half (IMAP, SMTP, raw TCP): backend connect, identity preamble,
  relays of ``proto/``.
- ``http``, ``http_pool``: the HTTP back half (``https`` in mode ``http``) and its backend pools.
- ``event``: the one ``connection`` event.

Must not: be imported by ``proto/``, ``tls/`` or ``config/`` (the driver sits on top of them).
"""
