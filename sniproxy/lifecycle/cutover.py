"""Scheduled cutovers: which entries of the ``cutover`` list are in force at an instant.

Declarative: the config in force at time ``t`` is the base config with every entry whose
instant is ``<= t`` applied, in order. So a past entry is in force at start, an entry removed
by a reload before its instant never happens, and a later entry (the rollback) undoes an
earlier one. Pure: no clock, no files (compilation reads the files later).
"""

from __future__ import annotations

import dataclasses

from sniproxy.config.model import Config, Cutover


def in_force(config: Config, as_of: float) -> tuple[Config, tuple[Cutover, ...]]:
    """``config`` with the entries due at ``as_of`` applied, and those entries."""
    due = tuple(c for c in config.cutover if c.at <= as_of)
    if not due:
        return config, ()
    flows = dict(config.flows)
    listeners = list(config.listeners)
    for c in due:
        if c.flow is not None and c.flow in flows and c.certificate is not None and c.key is not None:
            flows[c.flow] = dataclasses.replace(flows[c.flow], certificate=c.certificate, key=c.key)
        elif c.listener is not None and c.default_flow is not None:
            listeners = [dataclasses.replace(ls, default_flow=c.default_flow) if ls.name == c.listener else ls
                         for ls in listeners]
    return dataclasses.replace(config, flows=flows, listeners=tuple(listeners)), due


def next_instant(config: Config, as_of: float) -> float | None:
    """The first entry instant after ``as_of`` (when the next new snapshot is due), if any."""
    later = [c.at for c in config.cutover if c.at > as_of]
    return min(later) if later else None
