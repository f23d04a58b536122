"""``reload.watch``: notice that the config file, or a certificate, key or CA file it names, changed.

For deployments where files change under the process (a Kubernetes ConfigMap or Secret volume swaps its
files in place): polled, because inotify misses the symlink swap those volumes do. A fingerprint is the
SHA-256 of every watched file's content (an unreadable file counts as its error), so touching a file
without changing it triggers nothing. Runs in a thread; the files are small.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sniproxy.config.model import Config


def watched_files(config: Config) -> list[Path]:
    """The config file and every certificate, key and CA file it names, in a stable order."""
    paths: list[Path] = [config.source]
    for aset in config.authorities.values():
        paths += [*aset.roots, *aset.intermediates]
    for flow in config.flows.values():
        paths += [flow.certificate, flow.key]
    for c in config.cutover:
        paths += [p for p in (c.certificate, c.key) if p is not None]
    return list(dict.fromkeys(paths))


def fingerprint(paths: list[Path], known: dict[Path, bytes] | None = None) -> str:
    """One digest over the content of ``paths`` (``known``: contents already read, e.g. the config
    text the running config was built from, so an edit made while it was compiling is not missed)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path).encode() + b"\0")
        try:
            h.update(known[path] if known and path in known else path.read_bytes())
        except OSError as exc:
            h.update(f"unreadable: {exc.errno}".encode())
        h.update(b"\0")
    return h.hexdigest()
