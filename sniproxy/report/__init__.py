"""Migration readiness report over ``connection`` events: who still needs the 2BIS flow, who sends no SNI.

Modules: ``reader`` (JSON lines in), ``classify`` (card PKI, no-SNI), ``aggregate`` (bounded-memory figures),
``render`` (table, csv, json), ``svg`` and ``html`` (the page), ``live`` (the same page from a running proxy).
"""
