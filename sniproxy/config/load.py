"""Load one YAML config file into a validated ``Config``, reporting every problem at once.

Owns: the YAML parse, the top-level keys, the order the sections are read in (authority sets, flows,
listeners, cutovers, admin: each reader gets what the earlier ones found) and the cross-section
checks. Each section's schema is in its own module: ``globalconf``, ``authorityconf``, ``flowconf``,
``listenerconf``, ``backendconf``, ``httpconf``, ``cutoverconf`` (documented in ``docs/config.md``);
the PEM files named are checked through ``pemfiles``. Relative paths resolve against the
config file's folder; there is no environment-variable or ``~`` expansion.
Must not: build TLS contexts, open sockets, or exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sniproxy.config.authorityconf import AuthorityReader
from sniproxy.config.cutoverconf import read_cutovers
from sniproxy.config.fields import Report, Section
from sniproxy.config.flowconf import FlowReader
from sniproxy.config.globalconf import (
    read_admin,
    read_crl_settings,
    read_drain,
    read_limits,
    read_log,
    read_reload,
    read_workers,
)
from sniproxy.config.listenerconf import ListenerReader
from sniproxy.config.model import Config, Profile
from sniproxy.config.pemfiles import Files
from sniproxy.config.yamlloc import PLACEHOLDER_TAG, LocDict, key_paths_by_line, parse_with_placeholders
from sniproxy.errors import ConfigError, ConfigErrors

TOP_KEYS = ("profile", "workers", "log", "state_dir", "crl", "limits", "secret_files", "authorities", "flows",
            "listeners", "drain", "cutover", "reload", "admin")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A validated configuration and the warnings found while loading it."""

    config: Config
    warnings: tuple[str, ...]


def read_text(path: Path) -> str:
    """The config file's text (what a reload validates once and hands to every worker)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors([ConfigError(f"cannot read config file: {exc}", file=str(path))]) from exc


def load(path: Path, *, check_files: bool = True, text: str | None = None) -> Loaded:
    """Read, validate and map the YAML config at ``path``.

    Raises ``ConfigErrors`` holding every ``ConfigError`` found (file, line, key path). With
    ``check_files=False`` the PEM files named by the config are not opened (structure only).
    ``text``: the file's content already read (a reload compiles in every worker exactly the text
    the supervisor validated, even if the file changes meanwhile); relative paths still resolve
    against ``path``'s folder.
    """
    path = Path(path)
    report = Report(path)
    if text is None:
        text = read_text(path)
    try:
        data, placeholders = parse_with_placeholders(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigErrors([ConfigError(f"YAML syntax: {message}", file=str(path),
                                        line=mark.line + 1 if mark else None)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigErrors([ConfigError(f"YAML syntax: {exc}", file=str(path))]) from exc
    if data is None:
        raise ConfigErrors([ConfigError("the config file is empty", file=str(path))])
    _warn_placeholders(report, text, data, placeholders)
    base_dir = path.resolve().parent
    top = Section.of(report, data, "", 1, base_dir)
    config = None
    if top is not None:
        config = _Builder(report, top, path.resolve(), Files(report) if check_files else None).build()
    if report.errors or config is None:
        raise ConfigErrors(report.errors)
    return Loaded(config, tuple(report.warnings))


def _warn_placeholders(report: Report, text: str, data: Any, lines: list[int]) -> None:
    """One warning per ``!fill`` value: a placeholder of a shipped config the operator has not filled yet."""
    if not lines:
        return
    paths = key_paths_by_line(data)
    source = text.splitlines()
    for line in lines:
        # the comment on the placeholder's line says what to put there
        _, hash_, comment = source[line - 1].partition(PLACEHOLDER_TAG)[2].partition(" #")
        hint = f": {comment.strip()}" if hash_ and comment.strip() else ""
        report.warn(line, paths.get(line), f"placeholder still to fill{hint} (then remove `{PLACEHOLDER_TAG}`)")


class _Builder:
    """Reads the top-level sections in dependency order: authorities, flows, listeners."""

    def __init__(self, report: Report, top: Section, source: Path, files: Files | None) -> None:
        self.r = report
        self.top = top
        self.source = source
        self.files = files

    def build(self) -> Config | None:
        """The whole ``Config``, or ``None`` when an error was reported."""
        top = self.top
        top.check_keys(TOP_KEYS)
        read_profile = top.enum("profile", Profile, required=True)
        profile = read_profile if isinstance(read_profile, Profile) else None
        workers = read_workers(top)
        # before any key file is read
        self.r.strict_secrets = top.choice("secret_files", ("strict", "warn"), "strict") == "strict"
        level, fmt = read_log(top)
        state_dir = top.string("state_dir", None)
        state_path = top.resolve(state_dir) if isinstance(state_dir, str) else None
        crl = read_crl_settings(top, state_path)
        limits = read_limits(top)
        drain = read_drain(top)
        watch = read_reload(top)
        authorities = AuthorityReader(self.r, self.files)
        authorities.read(top)
        with_crl = sorted(n for n, a in authorities.authorities.items() if a.enabled and a.revocation_required)
        if with_crl and crl.cache_dir is None:
            top.error("state_dir", f"authority sets {', '.join(with_crl)} name CRL sources: set `state_dir` "
                                   "or `crl.cache_dir` (the CRL cache that survives a restart)")
        flows = FlowReader(self.r, self.files, profile, authorities)
        flows.read(top)
        listener_reader = ListenerReader(self.r, flows.names)
        listeners = listener_reader.read(top)
        cutovers = read_cutovers(self.r, top, flows.flows, listeners, self.files, flows.server_files)
        admin = read_admin(top, listener_reader.binds)
        for name in sorted(flows.names - listener_reader.used_flows):
            top.report.warn(self._flows_section_line(name), f"flows.{name}", "flow used by no listener")
        if self.r.errors or profile is None:
            return None
        return Config(
            source=self.source, profile=profile, authorities=authorities.authorities, flows=flows.flows,
            listeners=tuple(listeners), workers=workers, log_level=level, log_format=fmt,
            state_dir=state_path, crl=crl, limits=limits, drain_timeout=drain, cutover=cutovers,
            reload_watch=watch, admin=admin,
        )

    def _flows_section_line(self, name: str) -> int:
        flows = self.top.data.get("flows")
        return flows.line_of(name) if isinstance(flows, LocDict) else self.top.line("flows")


__all__ = ["Loaded", "load", "read_text"]
