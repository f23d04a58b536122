"""The package's shape rules, read from the source (an AST scan of ``sniproxy/``: no import, no I/O
beyond reading the files).

Rules (issue 12):
- ``proto_layer``: ``sniproxy/proto/`` is sans-IO and sits at the bottom: it imports nothing from
  the config, routing, TLS, CRL, runtime and lifecycle layers or the drivers (it may import
  ``sniproxy.errors``, ``sniproxy.card``, ``sniproxy.auth`` and ``proto`` itself).
- ``demo_import``: nothing outside ``sniproxy/demo/`` imports ``sniproxy.demo``, except the CLI's
  ``demo`` command.
- ``private_import``: no module imports another module's ``_private`` names.
- ``module_size`` / ``function_size``: no module over 600 lines, no function over 60.
- ``exception_base``: every exception class derives from ``SniproxyError``.
- ``import_cycle``: no cycle among imports, those inside functions included (a deferred import hides a
  cycle, it does not break it); ``TYPE_CHECKING`` blocks excluded.

Each rule is a function of a scanned tree, so the ``test_rule_*_catches`` tests can run it over a
tiny synthetic tree that breaks it. ``KNOWN_VIOLATIONS`` lists what today's tree still breaks
because another change owns the fix; ``test_known_violations_are_still_needed`` fails once one is
fixed, so the list only ever shrinks.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
# Packages and modules ``sniproxy/proto/`` must not import (prefix match on the dotted name).
PROTO_BANNED = ("sniproxy.config", "sniproxy.routing", "sniproxy.tls", "sniproxy.crl", "sniproxy.runtime",
                "sniproxy.driver", "sniproxy.app", "sniproxy.lifecycle", "sniproxy.cli", "sniproxy.admin",
                "sniproxy.demo")
# Where ``sniproxy.demo`` may be imported from outside it: (module, enclosing function).
DEMO_ENTRY = {("sniproxy.cli", "cmd_demo")}
BASE_EXCEPTION = "sniproxy.errors.SniproxyError"

# rule -> {violation key: why it is still there}: a violation tolerated while the change that fixes it is in flight.
# Empty since issue 12 landed; the test below fails on an entry that is no longer needed.
KNOWN_VIOLATIONS: dict[str, dict[str, str]] = {
    "proto_layer": {},
    "private_import": {},
    "module_size": {},
    "function_size": {},
    "demo_import": {},
    "exception_base": {},
    "import_cycle": {},
}


# ------------------------------------------------------------------------------------------ scan
@dataclass(frozen=True, slots=True)
class Import:
    """One imported name: ``target`` the module it comes from, ``name`` the name (None: the module itself)."""

    target: str
    name: str | None
    line: int
    function: str | None      # the enclosing function, None at module level
    runtime: bool             # executed when the module is imported (module level, not TYPE_CHECKING)


@dataclass(slots=True)
class Module:
    """What the rules need of one module."""

    name: str
    path: Path
    lines: int
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)


def module_name(root: Path, path: Path) -> str:
    """``sniproxy/proto/smtp.py`` -> ``sniproxy.proto.smtp``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(mod: Module, known: set[str]) -> Iterator[Import]:
    """Every import of ``mod``, with where it sits (function, runtime or not)."""

    def walk(nodes: list[ast.stmt], function: str | None, runtime: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(alias.name, None, node.lineno, function, runtime)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = mod.name.split(".")
                    if not mod.path.name == "__init__.py":
                        package.pop()
                    package = package[:len(package) - node.level + 1]
                    base = ".".join([*package, base] if base else package)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known:
                        yield Import(sub, None, node.lineno, function, runtime)
                    else:
                        yield Import(base, alias.name, node.lineno, function, runtime)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from walk(node.body, node.name if function is None else function, False)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                yield from walk(node.body, function, False)
                yield from walk(node.orelse, function, runtime)
            else:
                # class bodies, try/with/if blocks: same function, same runtime-ness
                for child_field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, child_field, None)
                    if isinstance(children, list):
                        stmts = [c for c in children if isinstance(c, ast.stmt)]
                        handlers = [c for c in children if isinstance(c, ast.ExceptHandler)]
                        yield from walk(stmts, function, runtime)
                        for h in handlers:
                            yield from walk(h.body, function, runtime)

    yield from walk(mod.tree.body, None, True)


def scan(root: Path) -> dict[str, Module]:
    """Every module of the ``sniproxy`` package under ``root``, by dotted name."""
    paths = sorted((root / "sniproxy").rglob("*.py"))
    mods: dict[str, Module] = {}
    for path in paths:
        text = path.read_text(encoding="utf-8")
        name = module_name(root, path)
        mods[name] = Module(name, path, len(text.splitlines()), ast.parse(text, str(path)))
    known = set(mods)
    for mod in mods.values():
        mod.imports = list(_imports(mod, known))
    return mods


def _in(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# ------------------------------------------------------------------------------------------ rules
Rule = Callable[[dict[str, Module]], set[str]]


def proto_layer(mods: dict[str, Module]) -> set[str]:
    """``sniproxy.proto.*`` importing a banned layer: ``module -> target``."""
    return {f"{m.name} -> {i.target}" for m in mods.values() if _in(m.name, "sniproxy.proto")
            for i in m.imports if any(_in(i.target, b) for b in PROTO_BANNED)}


def demo_import(mods: dict[str, Module]) -> set[str]:
    """``sniproxy.demo`` imported from outside it, other than by the CLI's demo command."""
    return {f"{m.name} -> {i.target}" for m in mods.values() if not _in(m.name, "sniproxy.demo")
            for i in m.imports if _in(i.target, "sniproxy.demo") and (m.name, i.function) not in DEMO_ENTRY}


def private_import(mods: dict[str, Module]) -> set[str]:
    """``from sniproxy.x import _name`` in another module than ``sniproxy.x``."""
    return {f"{m.name} imports {i.target}.{i.name}" for m in mods.values() for i in m.imports
            if i.name is not None and i.name.startswith("_") and not i.name.startswith("__")
            and _in(i.target, "sniproxy") and i.target != m.name}


def module_size(mods: dict[str, Module]) -> set[str]:
    """Modules over ``MAX_MODULE_LINES``."""
    return {m.name for m in mods.values() if m.lines > MAX_MODULE_LINES}


def _functions(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield f"{prefix}.{child.name}", child
            yield from _functions(child, f"{prefix}.{child.name}")
        elif isinstance(child, ast.ClassDef):
            yield from _functions(child, f"{prefix}.{child.name}")
        else:
            yield from _functions(child, prefix)


def function_size(mods: dict[str, Module]) -> set[str]:
    """Functions (methods, nested functions) over ``MAX_FUNCTION_LINES``, decorators excluded."""
    out = set()
    for m in mods.values():
        for qualname, fn in _functions(m.tree, m.name):
            assert fn.end_lineno is not None
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES:
                out.add(qualname)
    return out


def _builtin_exception(name: str) -> bool:
    obj = getattr(builtins, name, None)
    return isinstance(obj, type) and issubclass(obj, BaseException)


def exception_base(mods: dict[str, Module]) -> set[str]:
    """Exception classes that do not derive from ``SniproxyError`` (through project classes)."""
    classes: dict[str, list[str]] = {}     # qualified class name -> qualified (or external) base names
    for m in mods.values():
        names = {i.name: f"{i.target}.{i.name}" for i in m.imports if i.name is not None}
        modules = {i.target.rsplit(".", 1)[-1]: i.target for i in m.imports if i.name is None}
        for node in ast.walk(m.tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = []
            for b in node.bases:
                text = ast.unparse(b)
                head, _, rest = text.partition(".")
                if not rest:
                    bases.append(names.get(text, f"{m.name}.{text}" if text not in dir(builtins) else text))
                else:
                    bases.append(f"{modules.get(head, names.get(head, head))}.{rest}")
            classes[f"{m.name}.{node.name}"] = bases

    def kind(name: str, seen: frozenset[str] = frozenset()) -> str:
        """``ok`` (under SniproxyError), ``exc`` (an exception outside it) or ``no`` (not an exception)."""
        if name == BASE_EXCEPTION:
            return "ok"
        if name in seen:
            return "no"
        if name in classes:
            kinds = {kind(b, seen | {name}) for b in classes[name]}
            return "ok" if "ok" in kinds else "exc" if "exc" in kinds else "no"
        last = name.rsplit(".", 1)[-1]
        # A builtin, or another library's exception (SSL.Error, httpx.HTTPError): named as exceptions are.
        if _builtin_exception(last) or last.endswith(("Error", "Exception")):
            return "exc"
        return "no"

    return {name for name in classes if name != BASE_EXCEPTION and kind(name) == "exc"}


def import_cycle(mods: dict[str, Module]) -> set[str]:
    """Cycles among imports that run, at import or in a function (one entry per strongly connected component)."""
    graph = {m.name: sorted({i.target for i in m.imports
                             if (i.runtime or i.function is not None) and i.target in mods and i.target != m.name})
             for m in mods.values()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: set[str] = set()

    def connect(v: str) -> None:   # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(" <-> ".join(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


RULES: dict[str, Rule] = {"proto_layer": proto_layer, "demo_import": demo_import,
                          "private_import": private_import, "module_size": module_size,
                          "function_size": function_size, "exception_base": exception_base,
                          "import_cycle": import_cycle}


# ------------------------------------------------------------------------------------------ the tree
@pytest.fixture(scope="module")
def tree() -> dict[str, Module]:
    return scan(REPO)


def test_the_scan_sees_the_package(tree: dict[str, Module]) -> None:
    # A scan that found nothing would pass every rule.
    assert {"sniproxy.errors", "sniproxy.proto.smtp", "sniproxy.cli", "sniproxy.demo.run"} <= set(tree)
    assert any(i.target == "sniproxy.errors" for i in tree["sniproxy.proto.linebuf"].imports)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_holds_on_the_package(tree: dict[str, Module], rule: str) -> None:
    new = RULES[rule](tree) - set(KNOWN_VIOLATIONS.get(rule, {}))
    assert not new, f"{rule}: {sorted(new)}"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_known_violations_are_still_needed(tree: dict[str, Module], rule: str) -> None:
    gone = set(KNOWN_VIOLATIONS.get(rule, {})) - RULES[rule](tree)
    assert not gone, f"{rule}: fixed, remove from KNOWN_VIOLATIONS: {sorted(gone)}"


def test_every_rule_has_an_allowlist_entry() -> None:
    assert set(KNOWN_VIOLATIONS) == set(RULES)


def test_errors_with_one_reason_say_so() -> None:
    from sniproxy.errors import Reason, SniproxyError
    from sniproxy.proto.clienthello import ClientHelloError
    from sniproxy.proto.http_backend import RequestError
    from sniproxy.proto.linebuf import LineTooLong
    from sniproxy.proto.proxy_protocol import ProxyHeaderError

    assert ClientHelloError.REASON is Reason.BAD_CLIENT_HELLO
    assert LineTooLong.REASON is Reason.LINE_TOO_LONG
    assert ProxyHeaderError.REASON is Reason.BAD_PROXY_HEADER
    assert RequestError.REASON is Reason.BAD_REQUEST
    assert SniproxyError.REASON is None


def test_value_errors_stay_value_errors() -> None:
    # Callers catch them as ValueError: the new base must not take that away.
    from sniproxy.auth.sasl import SaslError
    from sniproxy.demo.backend_base import DeliveryRefused
    from sniproxy.errors import SniproxyError

    for cls in (SaslError, DeliveryRefused):
        assert issubclass(cls, SniproxyError) and issubclass(cls, ValueError)


# ------------------------------------------------------------------------------------------ each rule bites
def _synthetic(tmp_path: Path, files: dict[str, str]) -> dict[str, Module]:
    base = {"sniproxy/__init__.py": "", "sniproxy/errors.py": "class SniproxyError(Exception):\n    pass\n"}
    for rel, text in {**base, **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in {p.parent for p in tmp_path.rglob("*.py")}:
        (pkg / "__init__.py").touch()
    return scan(tmp_path)


def test_rule_proto_layer_catches(tmp_path: Path) -> None:
    mods = _synthetic(tmp_path, {
        "sniproxy/config/model.py": "X = 1\n",
        "sniproxy/tls/verify.py": "Y = 1\n",
        "sniproxy/proto/ok.py": "from sniproxy.errors import SniproxyError\nfrom sniproxy.proto import ok\n",
        "sniproxy/proto/bad.py": "from sniproxy.config.model import X\n",
        "sniproxy/proto/late.py": "def f():\n    from sniproxy.tls import verify\n    return verify\n",
    })
    assert proto_layer(mods) == {"sniproxy.proto.bad -> sniproxy.config.model",
                                 "sniproxy.proto.late -> sniproxy.tls.verify"}


def test_rule_demo_import_catches(tmp_path: Path) -> None:
    mods = _synthetic(tmp_path, {
        "sniproxy/demo/run.py": "def main():\n    pass\n",
        "sniproxy/cli.py": "def cmd_demo():\n    from sniproxy.demo import run\n    return run\n",
        "sniproxy/app.py": "from sniproxy.demo.run import main\n",
    })
    assert demo_import(mods) == {"sniproxy.app -> sniproxy.demo.run"}


def test_rule_private_import_catches(tmp_path: Path) -> None:
    mods = _synthetic(tmp_path, {
        "sniproxy/a.py": "_SECRET = 1\nPUBLIC = 2\n",
        "sniproxy/b.py": "from sniproxy.a import PUBLIC, _SECRET\n",
        "sniproxy/c.py": "from sniproxy.a import PUBLIC\nfrom os import _exit\n",
    })
    assert private_import(mods) == {"sniproxy.b imports sniproxy.a._SECRET"}


def test_rule_sizes_catch(tmp_path: Path) -> None:
    def body(n: int, indent: str) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(n))

    mods = _synthetic(tmp_path, {
        "sniproxy/big.py": "X = 1\n" * (MAX_MODULE_LINES + 1),
        "sniproxy/edge.py": "X = 1\n" * MAX_MODULE_LINES,
        # the def line plus MAX_FUNCTION_LINES: one over; the def line plus one less: exactly the limit
        "sniproxy/fns.py": ("class C:\n    def long(self):\n" + body(MAX_FUNCTION_LINES, " " * 8)
                            + "def fine():\n" + body(MAX_FUNCTION_LINES - 1, " " * 4)),
    })
    assert module_size(mods) == {"sniproxy.big"}
    assert function_size(mods) == {"sniproxy.fns.C.long"}


def test_rule_exception_base_catches(tmp_path: Path) -> None:
    mods = _synthetic(tmp_path, {
        "sniproxy/a.py": ("from sniproxy.errors import SniproxyError\n"
                          "class Good(SniproxyError):\n    pass\n"
                          "class AlsoGood(Good, ValueError):\n    pass\n"
                          "class Bad(ValueError):\n    pass\n"
                          "class NotAnError:\n    pass\n"),
        "sniproxy/b.py": ("from sniproxy.a import Bad\nfrom OpenSSL import SSL\n"
                          "class Worse(Bad):\n    pass\n"
                          "class Lib(SSL.Error):\n    pass\n"),
    })
    assert exception_base(mods) == {"sniproxy.a.Bad", "sniproxy.b.Worse", "sniproxy.b.Lib"}


def test_rule_import_cycle_catches(tmp_path: Path) -> None:
    mods = _synthetic(tmp_path, {
        "sniproxy/crl/entries.py": "from sniproxy.crl.validate import CrlRejected\n",
        "sniproxy/crl/validate.py": "from sniproxy.crl import entries\nclass CrlRejected(Exception):\n    pass\n",
        # hidden by a function-level import: still a cycle (the deferral only hides it)
        "sniproxy/a.py": "def f():\n    from sniproxy import b\n    return b\n",
        "sniproxy/b.py": "from sniproxy import a\n",
        # only for type checking: never imported at run time, no cycle
        "sniproxy/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sniproxy import d\n",
        "sniproxy/d.py": "from sniproxy import c\n",
    })
    assert import_cycle(mods) == {"sniproxy.crl.entries <-> sniproxy.crl.validate", "sniproxy.a <-> sniproxy.b"}
