"""Typed readers over located YAML values, collecting every problem instead of stopping.

Owns: the ``Report`` (errors and warnings, each with file, line and key path) and ``Section``, a view
of one YAML mapping that reads typed fields, rejects unknown keys and reports wrong types and enum
values where they were written. Must not: know the sniproxy schema (that is ``load.py``) or read files.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from sniproxy.config.names import check_object_name
from sniproxy.config.yamlloc import LocDict, LocList
from sniproxy.errors import ConfigError

E = TypeVar("E", bound=StrEnum)

#: Returned by a reader when the value is absent or wrong (the error is already reported).
MISSING: Any = object()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def join(path: str, key: object) -> str:
    """Key path of ``key`` under ``path`` (``flows`` + ``2bis`` -> ``flows.2bis``)."""
    return f"{path}.{key}" if path else str(key)


class Report:
    """Errors and warnings found in one config file."""

    def __init__(self, file: Path) -> None:
        self.file = str(file)
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []
        # `secret_files: strict` (default): a key or password file readable by group or others is an
        # error; `warn` makes it a warning (Kubernetes secrets mounted with a group-readable mode).
        self.strict_secrets = True

    def error(self, line: int | None, key: str | None, message: str) -> None:
        """Record an error at ``line`` under ``key``."""
        self.errors.append(ConfigError(message, file=self.file, line=line, key=key or None))

    def warn(self, line: int | None, key: str | None, message: str) -> None:
        """Record a warning, formatted like an error (``FILE:LINE: KEY: message``)."""
        self.warnings.append(str(ConfigError(message, file=self.file, line=line, key=key or None)))

    def exposed_secret(self, line: int | None, key: str | None, path: Path, mode: int) -> None:
        """A secret file readable by group or others: an error, or a warning under ``secret_files: warn``."""
        message = (f"{path} is readable by group or others (mode {mode:04o}): chmod 600 it, or set "
                   "`secret_files: warn` when a secret mount needs it")
        (self.error if self.strict_secrets else self.warn)(line, key, message)


class Section:
    """One YAML mapping at a key path, read field by field."""

    def __init__(self, report: Report, data: LocDict, path: str, base_dir: Path, line: int | None = None
                 ) -> None:
        self.report = report
        self.data = data
        self.path = path
        self.base_dir = base_dir
        # where the section was introduced (its key or list item), not where its first key sits
        self.start = data.line if line is None else line

    @classmethod
    def of(cls, report: Report, value: Any, path: str, line: int, base_dir: Path) -> Section | None:
        """A ``Section`` over ``value`` if it is a mapping; else report and return ``None``."""
        if not isinstance(value, LocDict):
            report.error(line, path, f"expected a mapping, got {_type_name(value)}")
            return None
        return cls(report, value, path, base_dir, line)

    # -- locating ------------------------------------------------------------------------------
    def key(self, key: object) -> str:
        """Key path of a field of this section."""
        return join(self.path, key)

    def line(self, key: object | None = None) -> int:
        """Line of ``key`` (or of the section when absent or ``None``)."""
        if key is None or key not in self.data.key_lines:
            return self.start
        return self.data.key_lines[key]

    def error(self, key: object | None, message: str) -> None:
        """Report an error at field ``key`` (or at the section)."""
        self.report.error(self.line(key), self.path if key is None else self.key(key), message)

    def warn(self, key: object | None, message: str) -> None:
        """Report a warning at field ``key`` (or at the section)."""
        self.report.warn(self.line(key), self.path if key is None else self.key(key), message)

    def check_keys(self, allowed: Collection[str]) -> None:
        """Report unknown keys (with the allowed list) and duplicated keys."""
        for key in self.data:
            if key not in allowed:
                self.error(key, f"unknown key {key!r} (allowed: {', '.join(allowed)})")
        self.check_duplicates()

    def check_duplicates(self) -> None:
        """Report keys written twice in this mapping (YAML would keep the last one silently)."""
        for key, line in self.data.duplicates:
            self.report.error(line, self.key(key), f"duplicate key (first at line {self.data.line_of(key)})")

    def items(self) -> Iterator[tuple[str, Any, int]]:
        """``(key, value, line)`` of a name -> value mapping; non-string keys are reported and skipped."""
        self.check_duplicates()
        for key, value in self.data.items():
            if not isinstance(key, str):
                self.error(key, f"name must be a string, got {_type_name(key)} {key!r}")
                continue
            yield key, value, self.data.line_of(key)

    def named_objects(self, what: str) -> Iterator[tuple[str, Section | None]]:
        """Each ``name: {mapping}`` of a section of named objects (authority sets, flows).

        A bad name is reported but still yielded, so that what refers to it is not reported again; the
        value is a ``Section``, or None when it is not a mapping (reported).
        """
        for name, value, line in self.items():
            try:
                check_object_name(name, what)
            except ValueError as exc:
                self.error(name, str(exc))
            yield name, Section.of(self.report, value, self.key(name), line, self.base_dir)

    # -- typed readers -------------------------------------------------------------------------
    def raw(self, key: str, *, required: bool = False) -> Any:
        """The value of ``key`` or ``MISSING`` (reported when required)."""
        if key in self.data:
            return self.data[key]
        if required:
            self.error(None, f"missing required key {key!r}")
        return MISSING

    def section(self, key: str, *, required: bool = False) -> Section | None:
        """A nested mapping, or ``None`` when absent or not a mapping."""
        value = self.raw(key, required=required)
        if value is MISSING:
            return None
        return Section.of(self.report, value, self.key(key), self.line(key), self.base_dir)

    def _typed(self, key: str, default: Any, required: bool, types: tuple[type, ...], what: str) -> Any:
        value = self.raw(key, required=required)
        if value is MISSING:
            return default
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            self.error(key, f"expected {what}, got {_type_name(value)} {value!r}")
            return MISSING
        return value

    def string(self, key: str, default: Any = MISSING, *, required: bool = False) -> Any:
        """A non-empty string."""
        value = self._typed(key, default, required, (str,), "a string")
        if isinstance(value, str) and not value.strip() and key in self.data:
            self.error(key, "must not be empty")
            return MISSING
        return value

    def boolean(self, key: str, default: Any = MISSING, *, required: bool = False) -> Any:
        """``true`` or ``false``."""
        return self._typed(key, default, required, (bool,), "true or false")

    def integer(self, key: str, default: Any = MISSING, *, minimum: int | None = None,
                maximum: int | None = None, required: bool = False) -> Any:
        """An integer within ``[minimum, maximum]``."""
        value = self._typed(key, default, required, (int,), "an integer")
        if isinstance(value, int) and key in self.data:
            if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
                self.error(key, f"{value} is out of range ({minimum if minimum is not None else '-inf'}"
                                f"..{maximum if maximum is not None else 'inf'})")
                return MISSING
        return value

    def seconds(self, key: str, default: float) -> float:
        """A positive number of seconds (integer or decimal)."""
        value = self._typed(key, default, False, (int, float), "a number of seconds")
        if value is MISSING:
            return default
        if key in self.data and not value > 0:
            self.error(key, f"must be greater than 0, got {value!r}")
            return default
        return float(value)

    def duration(self, key: str, default: float) -> float:
        """A positive duration: a number of seconds, or a string such as ``90s``, ``15m``, ``6h``, ``2d``."""
        value = self._typed(key, default, False, (int, float, str), "a duration")
        if value is MISSING or key not in self.data:
            return default
        seconds = parse_duration(value)
        if seconds is None or not 0 < seconds < float("inf"):
            self.error(key, f"expected a positive duration (seconds, or 90s / 15m / 6h / 2d), got {value!r}")
            return default
        return seconds

    def enum(self, key: str, cls: type[E], default: Any = MISSING, *, required: bool = False) -> Any:
        """One of the values of the string enum ``cls``."""
        value = self._typed(key, default, required, (str,), "a string")
        if key not in self.data or value is MISSING:
            return value
        try:
            return cls(value)
        except ValueError:
            self.error(key, f"invalid value {value!r} (allowed: {', '.join(m.value for m in cls)})")
            return MISSING

    def choice(self, key: str, allowed: Collection[str], default: str) -> str:
        """One of ``allowed`` strings."""
        value = self._typed(key, default, False, (str,), "a string")
        if value is MISSING:
            return default
        if value not in allowed:
            self.error(key, f"invalid value {value!r} (allowed: {', '.join(allowed)})")
            return default
        return str(value)

    def list_of(self, key: str, *, required: bool = False, scalar_ok: bool = False
                ) -> list[tuple[Any, int, str]] | None:
        """Items of a list as ``(value, line, key path)``; a lone scalar is taken as a one-item
        list when ``scalar_ok``. ``None`` when absent or not a list."""
        value = self.raw(key, required=required)
        if value is MISSING:
            return None
        if value is None and not required:  # `crl:` written with nothing after it
            return []
        if isinstance(value, LocList):
            return [(v, value.line_of(i), f"{self.key(key)}[{i}]") for i, v in enumerate(value)]
        if scalar_ok and not isinstance(value, (dict, list)):
            return [(value, self.line(key), self.key(key))]
        self.error(key, f"expected a list, got {_type_name(value)}")
        return None

    def strings(self, key: str, *, required: bool = False) -> list[tuple[str, int, str]] | None:
        """A list of non-empty strings as ``(value, line, key path)``; bad items are reported."""
        items = self.list_of(key, required=required)
        if items is None:
            return None
        out = []
        for value, line, path in items:
            if not isinstance(value, str) or not value.strip():
                self.report.error(line, path,
                                  f"expected a non-empty string, got {_type_name(value)} {value!r}")
                continue
            out.append((value, line, path))
        return out

    def resolve(self, value: str) -> Path:
        """A path from the config, made absolute against the config file's folder (no ``~`` or
        environment expansion)."""
        return Path(os.path.normpath(self.base_dir / value))


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float | None:
    """Seconds from a number or a ``<number><s|m|h|d>`` string; None when unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        unit = _UNITS.get(text[-1:], None)
        number = text[:-1] if unit is not None else text
        try:
            return float(number) * (unit or 1.0)
        except ValueError:
            return None
    return None
