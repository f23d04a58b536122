"""Config text to runtime snapshot, the one way the supervisor and every worker do it.

Owns: load (exactly as ``sniproxy check``), the cutovers in force at an instant, compile; and
the wording of the errors a refused reload or a failed bind reports. Must not: touch sockets
or the event loop (it runs in an executor thread, off the loop).
"""

from __future__ import annotations

import base64
import pickle
from dataclasses import dataclass
from pathlib import Path

from sniproxy.config.load import load
from sniproxy.config.model import Address, Config, Cutover
from sniproxy.crl.state import RevocationHolder
from sniproxy.errors import ConfigError, ConfigErrors
from sniproxy.lifecycle.cutover import in_force, next_instant
from sniproxy.runtime.snapshot import Snapshot, compile_snapshot


@dataclass(frozen=True, slots=True)
class Built:
    """A compiled snapshot, its load warnings and where it stands in the cutover schedule."""

    config: Config                      # as validated, cutovers not applied (what workers get)
    snapshot: Snapshot
    warnings: tuple[str, ...]
    applied: tuple[Cutover, ...]        # cutover entries in force in this snapshot
    next_cutover: float | None          # the next entry's instant (epoch seconds), if any


def build(source: Path, text: str, generation: int, as_of: float,
          revocation: RevocationHolder | None = None) -> Built:
    """Load ``text`` (as the file at ``source``), apply the cutovers due at ``as_of``, compile.

    Raises ``ConfigErrors`` / ``ConfigError`` exactly as ``sniproxy check`` reports them.
    """
    loaded = load(source, text=text)
    return compile_at(loaded.config, loaded.warnings, generation, as_of, revocation)


def compile_at(config: Config, warnings: tuple[str, ...], generation: int, as_of: float,
               revocation: RevocationHolder | None = None) -> Built:
    """Compile an already validated config with the cutovers due at ``as_of`` applied.

    What a worker does with the config the supervisor validated: the loader's checks (RSA key
    validation is its slowest part) run once per reload, not once per process.
    """
    effective, applied = in_force(config, as_of)
    snapshot = compile_snapshot(effective, generation, revocation)
    return Built(config, snapshot, warnings, applied, next_instant(config, as_of))


def pack(config: Config) -> str:
    """A validated config for the control channel (between our own processes only)."""
    return base64.b64encode(pickle.dumps(config)).decode()


def unpack(data: str) -> Config:
    """The config ``pack`` sent (the channel is a socketpair with our own supervisor: trusted)."""
    config = pickle.loads(base64.b64decode(data))  # noqa: S301 - from our own supervisor only
    assert isinstance(config, Config)
    return config


def error_lines(exc: ConfigErrors | ConfigError) -> tuple[str, ...]:
    """``file:line: key.path: message`` lines, as ``sniproxy check`` prints them (without ``error:``)."""
    errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    return tuple(str(e) for e in errors)


def bind_error(config: Config, addr: Address, exc: OSError) -> str:
    """A failed bind, naming the address, its listener and the config line that asked for it."""
    for index, ls in enumerate(config.listeners):
        for i, a in enumerate(ls.binds):
            if a == addr:
                line = ls.bind_lines[i] if i < len(ls.bind_lines) else None
                key = f"listeners[{index}].bind" + (f"[{i}]" if len(ls.binds) > 1 else "")
                return str(ConfigError(f"cannot listen on {addr} (listener {ls.name}): "
                                       f"{exc.strerror or exc}", file=str(config.source), line=line, key=key))
    return f"cannot listen on {addr}: {exc.strerror or exc}"


def addresses(config: Config) -> dict[Address, str]:
    """Every bind address of the config and its listener's name."""
    return {a: ls.name for ls in config.listeners for a in ls.binds}
