"""Soak and faults (issue 17): a bounded run of mixed real traffic through ``sniproxy run`` (``workers: 2``)
in front of real Dovecot, Postfix, an HTTP backend, a CRL HTTP server and slapd, with faults injected on a
schedule, and a report of what was refused, lost, leaked or slowed. ``python -m soak --minutes N``."""
