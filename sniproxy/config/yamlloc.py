"""YAML parsing that remembers where every key and list item was written.

Owns: turning YAML text into plain Python values (``LocDict``, ``LocList``, scalars) with 1-based
line numbers, using only PyYAML's ``SafeLoader`` (no arbitrary object construction). Duplicate
mapping keys, which PyYAML silently collapses, are recorded so the caller can report them.
Must not: validate the schema or touch any file other than the text it is given.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

PLACEHOLDER_TAG = "!fill"


class LocDict(dict[Any, Any]):
    """A mapping that knows the line of itself and of each key (1-based)."""

    __slots__ = ("duplicates", "key_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.duplicates: list[tuple[Any, int]] = []

    def line_of(self, key: Any) -> int:
        """Line of ``key`` if present, else the line of the mapping itself."""
        return self.key_lines.get(key, self.line)


class LocList(list[Any]):
    """A sequence that knows the line of itself and of each item (1-based)."""

    __slots__ = ("item_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []

    def line_of(self, index: int) -> int:
        """Line of item ``index``, else the line of the sequence itself."""
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return self.line


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class LocatingLoader(yaml.SafeLoader):
    """``SafeLoader`` whose mappings and sequences are ``LocDict`` / ``LocList``.

    ``!fill VALUE`` marks a placeholder the operator still has to fill (shipped configs use it for values only the
    operator knows): it loads as the plain ``VALUE`` and its line is recorded in ``placeholders``.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.placeholders: list[int] = []

    def construct_placeholder(self, node: Node) -> Any:
        """The untagged value of a ``!fill`` node; its line goes to ``placeholders``."""
        self.placeholders.append(_line(node))
        # A copy with the tag the node would have had untagged: constructing the node itself again would be
        # taken for a recursive structure.
        plain: Node
        if isinstance(node, MappingNode):
            plain = MappingNode("tag:yaml.org,2002:map", node.value, node.start_mark, node.end_mark)
        elif isinstance(node, SequenceNode):
            plain = SequenceNode("tag:yaml.org,2002:seq", node.value, node.start_mark, node.end_mark)
        else:
            assert isinstance(node, ScalarNode)
            tag = self.resolve(ScalarNode, node.value, (node.style is None, False))  # type: ignore[no-untyped-call]
            plain = ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)
        return self.construct_object(plain, deep=True)

    def construct_loc_map(self, node: MappingNode) -> Any:
        """Build a ``LocDict``; yields first so recursive structures (anchors) still work."""
        data = LocDict(_line(node))
        yield data
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError as exc:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found unhashable key", key_node.start_mark) from exc
            value = self.construct_object(value_node, deep=True)
            if key in data:
                data.duplicates.append((key, _line(key_node)))
            else:
                data.key_lines[key] = _line(key_node)
            data[key] = value

    def construct_loc_seq(self, node: SequenceNode) -> Any:
        """Build a ``LocList`` with each item's line."""
        data = LocList(_line(node))
        yield data
        for child in node.value:
            data.item_lines.append(_line(child))
            data.append(self.construct_object(child, deep=True))


LocatingLoader.add_constructor("tag:yaml.org,2002:map", LocatingLoader.construct_loc_map)
LocatingLoader.add_constructor("tag:yaml.org,2002:seq", LocatingLoader.construct_loc_seq)
LocatingLoader.add_constructor(PLACEHOLDER_TAG, LocatingLoader.construct_placeholder)


def parse(text: str) -> Any:
    """Parse one YAML document with ``LocatingLoader``; raises ``yaml.YAMLError`` on bad syntax."""
    return parse_with_placeholders(text)[0]


def parse_with_placeholders(text: str) -> tuple[Any, list[int]]:
    """Like ``parse``, plus the lines of the ``!fill`` placeholders, in document order."""
    loader = LocatingLoader(text)
    try:
        return loader.get_single_data(), sorted(loader.placeholders)
    finally:
        loader.dispose()


def key_paths_by_line(data: Any, path: str = "") -> dict[int, str]:
    """Line -> key path (``a.b[2].c``) of every mapping key and list item; the deepest path wins a line."""
    found: dict[int, str] = {}
    if isinstance(data, LocDict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            found[data.line_of(key)] = sub
            found.update(key_paths_by_line(value, sub))
    elif isinstance(data, LocList):
        for i, value in enumerate(data):
            sub = f"{path}[{i}]"
            found[data.line_of(i)] = sub
            found.update(key_paths_by_line(value, sub))
    return found
