"""``!fill`` placeholders: a shipped config's values only the operator knows load as plain values, with a warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from sniproxy.config.load import load
from sniproxy.config.yamlloc import LocDict, LocList, key_paths_by_line, parse_with_placeholders
from sniproxy.errors import ConfigErrors


def test_fill_loads_the_plain_value_of_every_node_kind() -> None:
    data, lines = parse_with_placeholders(
        "a: !fill 3\n"
        "b: !fill \"127.0.0.1:1\"\n"
        "c: !fill []\n"
        "d: !fill {x: 1}\n"
        "e: !fill true\n"
        "f: 4\n")
    assert data == {"a": 3, "b": "127.0.0.1:1", "c": [], "d": {"x": 1}, "e": True, "f": 4}
    assert isinstance(data["c"], LocList) and isinstance(data["d"], LocDict) and data["d"].line == 4
    assert lines == [1, 2, 3, 4, 5]


def test_fill_with_anchor_and_alias() -> None:
    data, lines = parse_with_placeholders("a: &x !fill [1, 2]\nb: *x\n")
    assert data["a"] == data["b"] == [1, 2]
    assert lines == [1]


def test_key_paths_by_line_names_the_deepest_key() -> None:
    data, _ = parse_with_placeholders("top:\n  items:\n    - name: a\n      v: 1\n    - 2\n")
    paths = key_paths_by_line(data)
    assert paths[1] == "top" and paths[2] == "top.items" and paths[3] == "top.items[0].name"
    assert paths[4] == "top.items[0].v" and paths[5] == "top.items[1]"


CONFIG = """\
profile: test
flows:
  f: {certificate: missing.pem, key: missing.pem, client_auth: none}
listeners:
  - name: l
    bind: "127.0.0.1:1143"
    protocol: imap
    backend: !fill "127.0.0.1:10143"   # the Dovecot address
    flow: f
"""


def test_one_warning_per_placeholder_with_its_line_key_and_hint(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    loaded = load(path, check_files=False)
    assert loaded.config.listeners[0].backend.address.port == 10143
    assert list(loaded.warnings) == [
        f"{path}:8: listeners[0].backend: placeholder still to fill: the Dovecot address (then remove `!fill`)"]
    path.write_text(CONFIG.replace('!fill "127.0.0.1:10143"   # the Dovecot address', '"127.0.0.1:10143"'))
    assert load(path, check_files=False).warnings == ()


def test_a_placeholder_with_a_wrong_value_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace('"127.0.0.1:10143"', '"nowhere"'))
    with pytest.raises(ConfigErrors) as info:
        load(path, check_files=False)
    assert [e.key for e in info.value.errors] == ["listeners[0].backend"]


def test_other_tags_stay_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace("!fill", "!!python/object:os.system"))
    with pytest.raises(ConfigErrors, match="YAML syntax"):
        load(path, check_files=False)
