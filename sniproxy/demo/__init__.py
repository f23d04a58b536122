"""The demo kit: ``sniproxy demo``, its plaintext backends, and the look-alike PKI and CRLs.

Owns: everything that exists to show or test sniproxy rather than to run it: the look-alike IGC CPS /
IGC Santé PKI built in code (``pki``), CRLs signed with it (``crls``), the demo's configuration
(``conf``), its in-memory IMAP and SMTP backends and the demo driver (``run``). Must not: be imported by
the product (``sniproxy/`` outside ``demo/`` and the CLI's ``demo`` command); an import-layer test
enforces it.
"""
