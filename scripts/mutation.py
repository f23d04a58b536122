#!/usr/bin/env python3
"""Mutation testing of sniproxy's security-critical modules (decision record: docs/decisions/0004).

For each module: small AST changes (comparisons flipped or moved across the boundary, ``and``/``or``
swapped, conditions negated, ``not`` dropped, numeric/str/bytes constants changed, arithmetic operators
swapped, statements deleted, returned values replaced by ``None``), each applied to a temporary copy of
the package (never to the tree), and the unit tests that import the module run against it in a forked
child with a timeout. Only the tests that execute the mutated line run (a baseline run records, per
line, which tests reach it); a mutant on a line no test executes survives without a run.

A mutant is *killed* when a test fails (or errors), *timed out* when the run exceeds the timeout (counted
as killed: the mutant changed behaviour), *survived* otherwise. Score per module:
(killed + timed out) / (mutants - documented equivalents). Equivalent mutants are listed in
``tests/mutation-equivalents.txt``: ``module:line: mutation | reason`` (the mutation text as the report
prints it).

Run from the repository root with the project's Python::

    .venv/bin/python scripts/mutation.py                         # every security-critical module
    .venv/bin/python scripts/mutation.py --modules sniproxy/crl/index.py --report /tmp/m.md
    .venv/bin/python scripts/mutation.py --changed-since HEAD~1 --target 95 --max-seconds 600

Exit status: 0 all modules at or over ``--target``; 1 a module under it; 2 the time budget ran out
(the report then says which mutants were not run); 3 the unmutated tests fail (nothing is measured).
"""

from __future__ import annotations

import argparse
import ast
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The modules that decide who gets in and what reaches a backend (issue 11), in report order.
SECURITY_MODULES = (
    "sniproxy/tls/verify.py", "sniproxy/card/identity.py", "sniproxy/card/der.py", "sniproxy/card/names.py",
    "sniproxy/proto/pretls.py", "sniproxy/proto/imap.py", "sniproxy/proto/smtp_relay.py",
    "sniproxy/proto/imap_auth.py", "sniproxy/proto/imap_relay.py", "sniproxy/proto/smtp.py",
    "sniproxy/proto/linebuf.py",
    "sniproxy/proto/clienthello.py", "sniproxy/proto/proxy_protocol.py", "sniproxy/proto/proxy_wire.py",
    "sniproxy/proto/identity_out.py",
    "sniproxy/proto/http_body.py", "sniproxy/proto/http_backend.py", "sniproxy/proto/http_rewrite.py",
    "sniproxy/proto/http_server.py",
    "sniproxy/crl/validate.py", "sniproxy/crl/index.py", "sniproxy/crl/entries.py", "sniproxy/crl/state.py",
    "sniproxy/routing.py", "sniproxy/auth/login.py", "sniproxy/auth/sasl.py",
)
EQUIVALENTS = ROOT / "tests" / "mutation-equivalents.txt"
MUST_KILL = ROOT / "tests" / "mutation-must-kill.txt"
#: Unit tests that exercise a module through the classes built on it, without importing it themselves.
EXTRA_TESTS: dict[str, tuple[str, ...]] = {
    "sniproxy/proto/pretls.py": ("tests/unit/proto/test_imap.py", "tests/unit/proto/test_smtp.py",
                                 "tests/unit/proto/test_fuzz_pretls.py"),
    "sniproxy/proto/linebuf.py": ("tests/unit/proto/test_imap.py", "tests/unit/proto/test_smtp.py",
                                  "tests/unit/proto/test_imap_relay.py"),
    # The PROXY header wire constants, CRC32c and TLV splitter: read by the parser, tested through it.
    "sniproxy/proto/proxy_wire.py": ("tests/unit/proto/test_proxy_protocol.py",
                                     "tests/unit/proto/test_fuzz_proxy_protocol.py"),
    # The IMAP syntax (valid tag, literal marker) is read by the relay modules, tested through them.
    "sniproxy/proto/imap.py": ("tests/unit/proto/test_imap_auth.py", "tests/unit/proto/test_imap_relay.py"),
    "sniproxy/auth/sasl.py": ("tests/unit/proto/test_smtp_relay.py", "tests/unit/proto/test_imap_auth.py"),
    # The HTTPS client half: the body framing and the request checks are driven by the server's parser, and
    # most of their cases are written against it (a chunked body or a smuggling refusal from request bytes).
    "sniproxy/proto/http_body.py": ("tests/unit/proto/test_http_server.py",
                                    "tests/unit/proto/test_http_server_framing.py"),
    "sniproxy/proto/http_rewrite.py": ("tests/unit/proto/test_http_server.py",
                                       "tests/unit/proto/test_http_server_framing.py"),
}
#: Imported once in the parent so each forked child starts warm (never sniproxy: it comes from the copy).
_WARM = ("pytest", "_pytest.python", "hypothesis", "cryptography.x509", "cryptography.hazmat.primitives.hashes",
         "cryptography.hazmat.primitives.asymmetric.rsa", "cryptography.hazmat.primitives.asymmetric.ec",
         "OpenSSL.SSL", "OpenSSL.crypto", "yaml", "structlog", "h11", "asyncio", "pytest_asyncio")


# ---------------------------------------------------------------------------------------------- mutants
@dataclass(frozen=True)
class Mutant:
    """One change: where (``index`` of the node in ``ast.walk`` order) and what."""

    module: str
    line: int
    text: str          # human-readable, also the key of the equivalents file
    index: int
    kind: str
    arg: object = None
    stmt_line: int = 0     # first line of the innermost statement holding the change (what tracing sees run)
    in_function: bool = True   # False: module or class level, run at import, so every test may see it

    @property
    def key(self) -> str:
        return f"{self.module}:{self.line}: {self.text}"


_CMP_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_CMP_EDGE: dict[type[ast.cmpop], type[ast.cmpop]] = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
_CMP_TEXT = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
             ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_BIN_SWAP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult, ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd, ast.LShift: ast.RShift, ast.RShift: ast.LShift, ast.Mod: ast.Mult}
_BIN_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.BitAnd: "&", ast.BitOr: "|",
             ast.LShift: "<<", ast.RShift: ">>", ast.Mod: "%"}
_DELETABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Raise, ast.Break, ast.Continue,
              ast.If, ast.For, ast.While, ast.With, ast.Delete, ast.Try)


def _short(node: ast.AST, limit: int = 60) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, imports, ``if TYPE_CHECKING``, f-string parts."""
    skip: set[int] = set()

    def all_of(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                all_of(first)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            all_of(node.returns)
            for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                      node.args.kwarg):
                if a is not None:
                    all_of(a.annotation)
        elif isinstance(node, ast.AnnAssign):
            all_of(node.annotation)
            all_of(node.target)
        elif isinstance(node, ast.Import | ast.ImportFrom | ast.JoinedStr | ast.Assert | ast.Global | ast.Nonlocal):
            all_of(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            all_of(node)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                  for t in node.targets):
            all_of(node)
    return skip


def _no_mutate_lines(source: str) -> set[int]:
    return {i for i, line in enumerate(source.splitlines(), 1) if "pragma: no mutate" in line}


def _statements(tree: ast.Module) -> dict[int, tuple[int, bool]]:
    """id(node) -> (first line of its innermost statement, inside a function body)."""
    info: dict[int, tuple[int, bool]] = {}

    def visit(node: ast.AST, line: int, in_func: bool) -> None:
        if isinstance(node, ast.stmt):
            line = node.lineno
        info[id(node)] = (line, in_func)
        for child in ast.iter_child_nodes(node):
            inner = in_func or (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                                and child not in getattr(node, "decorator_list", ())
                                and child is not getattr(node, "args", None)
                                and child is not getattr(node, "returns", None))
            visit(child, line, inner)

    visit(tree, 0, False)
    return info


def generate(module: str, source: str) -> list[Mutant]:
    """Every mutant of ``source`` (the file ``module``), in a stable order."""
    tree = ast.parse(source)
    skip = _skipped_nodes(tree)
    quiet = _no_mutate_lines(source)
    where = _statements(tree)
    # A constant passed by keyword is named by it (``frozen=True`` and ``slots=True`` are different mutants).
    keyword = {id(k.value): k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords if k.arg}
    # A trailing ``return``/``return None`` deleted is the same function: never a mutant.
    tail = {id(f.body[-1]) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and isinstance(f.body[-1], ast.Return)
            and (f.body[-1].value is None or (isinstance(f.body[-1].value, ast.Constant)
                                              and f.body[-1].value.value is None))}
    out: list[Mutant] = []

    def add(node: ast.AST, index: int, kind: str, text: str, arg: object = None) -> None:
        line = getattr(node, "lineno", 0)
        stmt_line, in_func = where.get(id(node), (line, False))
        if line not in quiet:
            out.append(Mutant(module, line, text, index, kind, arg, stmt_line, in_func))

    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                a = _CMP_TEXT[type(op)]
                add(node, index, "cmp", f"`{_short(node)}`: {a} -> {_CMP_TEXT[_CMP_SWAP[type(op)]]}", (i, "swap"))
                if type(op) in _CMP_EDGE:
                    add(node, index, "cmp", f"`{_short(node)}`: {a} -> {_CMP_TEXT[_CMP_EDGE[type(op)]]}", (i, "edge"))
        elif isinstance(node, ast.BoolOp):
            a, b = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            add(node, index, "bool", f"`{_short(node)}`: {a} -> {b}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            add(node, index, "not", f"`{_short(node)}`: drop not")
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            add(node, index, "bin", f"`{_short(node)}`: {_BIN_TEXT[type(node.op)]} -> "
                                    f"{_BIN_TEXT[_BIN_SWAP[type(node.op)]]}")
        elif isinstance(node, ast.AugAssign) and type(node.op) in _BIN_SWAP:
            add(node, index, "aug", f"`{_short(node)}`: {_BIN_TEXT[type(node.op)]}= -> "
                                    f"{_BIN_TEXT[_BIN_SWAP[type(node.op)]]}=")
        elif isinstance(node, ast.Constant):
            v = node.value
            kw = f"{keyword[id(node)]}=" if id(node) in keyword else ""
            if isinstance(v, bool):
                add(node, index, "const", f"`{kw}{v}` -> `{kw}{not v}`", not v)
            elif isinstance(v, int):
                add(node, index, "const", f"`{kw}{v}` -> `{kw}{v + 1}`", v + 1)
            elif isinstance(v, str | bytes):
                new = ("XX" + v) if isinstance(v, str) else (b"XX" + v)
                add(node, index, "const", f"`{kw}{_short(node, 40)}` -> `{kw}{_short(ast.Constant(new), 40)}`", new)
        if isinstance(node, ast.If | ast.While | ast.IfExp) and not (
                isinstance(node.test, ast.Constant) and node.test.value is True):
            add(node, index, "negate", f"`{_short(node.test)}`: negated")
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            add(node, index, "return", f"`{_short(node)}` -> `return None`")
        for field_name in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field_name, None)
            if not isinstance(stmts, list):
                continue
            for pos, stmt in enumerate(stmts):
                if isinstance(stmt, _DELETABLE) and id(stmt) not in skip and id(stmt) not in tail:
                    add(stmt, index, "delete", f"delete `{_short(stmt)}`", (field_name, pos))
    return out


def apply(source: str, mutant: Mutant) -> str:
    """``source`` with ``mutant`` applied (as unparsed source: comments go, behaviour stays)."""
    tree = ast.parse(source)
    node = next(n for i, n in enumerate(ast.walk(tree)) if i == mutant.index)
    if mutant.kind == "cmp":
        assert isinstance(node, ast.Compare) and isinstance(mutant.arg, tuple)
        i, how = mutant.arg
        table = _CMP_SWAP if how == "swap" else _CMP_EDGE
        node.ops[i] = table[type(node.ops[i])]()
    elif mutant.kind == "bool":
        assert isinstance(node, ast.BoolOp)
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif mutant.kind in ("bin", "aug"):
        assert isinstance(node, ast.BinOp | ast.AugAssign)
        node.op = _BIN_SWAP[type(node.op)]()
    elif mutant.kind == "const":
        assert isinstance(node, ast.Constant)
        node.value = mutant.arg
    elif mutant.kind == "not":
        _replace(tree, node, node.operand)  # type: ignore[attr-defined]
    elif mutant.kind == "negate":
        assert isinstance(node, ast.If | ast.While | ast.IfExp)
        node.test = ast.UnaryOp(ast.Not(), node.test)
    elif mutant.kind == "return":
        assert isinstance(node, ast.Return)
        node.value = ast.Constant(None)
    elif mutant.kind == "delete":
        assert isinstance(mutant.arg, tuple)
        field_name, pos = mutant.arg
        getattr(node, field_name)[pos] = ast.Pass()
    return ast.unparse(ast.fix_missing_locations(tree))


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return
    raise ValueError("node not found")


# ---------------------------------------------------------------------------------------------- test runs
def dotted(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


def tests_for(module: str) -> list[str]:
    """The unit test files that import ``module`` (``from a.b import c``, ``import a.b.c``, ``from a.b.c import``)."""
    name = dotted(module)
    package, _, leaf = name.rpartition(".")
    pats = [re.compile(rf"^\s*from {re.escape(name)} import ", re.M),
            re.compile(rf"^\s*import {re.escape(name)}\b", re.M),
            re.compile(rf"^\s*from {re.escape(package)} import [^\n]*\b{leaf}\b", re.M)]
    found = []
    for path in sorted((ROOT / "tests" / "unit").rglob("test_*.py")):
        text = path.read_text()
        if any(p.search(text) for p in pats):
            found.append(str(path.relative_to(ROOT)))
    return found + [t for t in EXTRA_TESTS.get(module, ()) if t not in found]


class _Select:
    """pytest plugin for a child: keep only the chosen test ids; record the test running (for the tracer)."""

    def __init__(self, keep: set[str] | None) -> None:
        self.keep = keep
        self.current = "<import>"

    def pytest_collection_modifyitems(self, config: object, items: list[object]) -> None:
        if self.keep is not None:
            items[:] = [i for i in items if i.nodeid in self.keep]  # type: ignore[attr-defined]

    def pytest_runtest_setup(self, item: object) -> None:
        self.current = item.nodeid  # type: ignore[attr-defined]

    def pytest_configure(self, config: object) -> None:
        _cache_test_pki(Path(os.environ["SNIPROXY_MUTATION_PKI"]))


def _cache_test_pki(cache: Path) -> None:
    """Make ``sniproxy.demo.pki.build`` copy one PKI built once instead of generating ~30 RSA keys per run.

    Patched before collection, so the test modules' ``from sniproxy.demo.pki import build`` get the wrapper.
    """
    try:
        import sniproxy.demo.pki as testpki
    except ImportError:
        return
    original = testpki.build

    def build(dest: Path, *, now: object = None) -> object:
        if now is not None:
            return original(dest, now=now)
        if (cache / "manifest.json").is_file() and not (dest / "manifest.json").exists():
            shutil.copytree(cache, dest, dirs_exist_ok=True)
        pki = original(dest)
        if not (cache / "manifest.json").is_file():
            shutil.copytree(dest, cache, dirs_exist_ok=True)
        return pki

    testpki.build = build  # type: ignore[assignment]


def _child_pytest(work: Path, tests: list[str], keep: set[str] | None, trace_file: Path | None,
                  target: Path | None, stop_first: bool) -> int:
    """Run in the forked child: pytest on ``tests`` of the copy in ``work``; returns pytest's exit code."""
    os.chdir(work)
    sys.path.insert(0, str(work))
    sys.dont_write_bytecode = True
    # The baseline's output is kept (its failure is reported); a mutant's is not needed.
    sink = os.open(work / "baseline.log" if trace_file else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    import pytest

    plugin = _Select(keep)
    # Plain asserts and no anyio plugin: a child then starts in 0.2 s instead of 1 s (rewriting and anyio's
    # backend probe dominate); a failing plain assert fails the test all the same.
    args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:anyio", "--assert=plain", "--no-header",
            "-o", "addopts=", *tests]
    if stop_first:
        args.insert(0, "-x")
    if trace_file is None:
        return int(pytest.main(args, plugins=[plugin]))
    lines: dict[int, set[str]] = {}
    wanted = str(target)

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        if frame.f_code.co_filename != wanted:
            return None
        if event in ("line", "call"):
            lines.setdefault(frame.f_lineno, set()).add(plugin.current)
        return tracer

    import threading
    sys.settrace(tracer)
    threading.settrace(tracer)
    code = int(pytest.main(args, plugins=[plugin]))
    sys.settrace(None)
    import sniproxy
    trace_file.write_bytes(pickle.dumps((code, lines, sniproxy.__file__)))
    return code


def _fork(work: Path, tests: list[str], keep: set[str] | None, trace_file: Path | None = None,
          target: Path | None = None, stop_first: bool = True) -> int:
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.setpgid(0, 0)
            code = _child_pytest(work, tests, keep, trace_file, target, stop_first)
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None when it ran over ``timeout`` (its process group is killed)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- in-session mutants
def _functions(module: object) -> dict[str, object]:
    """qualname -> function object, for the module's functions and the methods of its classes."""
    out: dict[str, object] = {}
    name = getattr(module, "__name__", "")

    def add(obj: object, qual: str) -> None:
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
        if isinstance(obj, property):
            for part, fn in (("fget", obj.fget), ("fset", obj.fset), ("fdel", obj.fdel)):
                if fn is not None:
                    out[f"{qual}.{part}"] = fn
            return
        if hasattr(obj, "__code__") and getattr(obj, "__module__", None) == name:
            out[qual] = obj

    def walk(ns: dict[str, object], prefix: str) -> None:
        for key, obj in list(ns.items()):
            if isinstance(obj, type) and obj.__module__ == name and obj.__qualname__ == prefix + key:
                walk(dict(vars(obj)), prefix + key + ".")
            else:
                add(obj, prefix + key)

    walk(dict(vars(module)), "")  # type: ignore[arg-type]
    return out


def _exec_source(text: str, module: object) -> dict[str, object]:
    """``text`` run as a twin of ``module`` (same name, so classes and functions say they belong to it)."""
    ns: dict[str, object] = {"__name__": module.__name__, "__file__": module.__file__,
                             "__package__": module.__package__, "__builtins__": __builtins__}
    exec(compile(text, str(module.__file__), "exec"), ns)  # noqa: S102 (our own mutant)
    twin = type(sys)("twin")
    twin.__dict__.update(ns)
    return _functions(twin)


class _Session:
    """pytest plugin run in one child per module: the baseline with line tracing, then every mutant that
    only changes function bodies, each in a grandchild forked from this warm session (modules imported,
    session fixtures set up): the mutated functions' code objects are swapped in place, the tests that
    reach the mutated statement run, the grandchild exits 1 on a failure."""

    def __init__(self, module: str, source: str, mutants: list[Mutant], jobs: int, deadline: float,
                 timeout_factor: float) -> None:
        self.module, self.source, self.mutants = module, source, mutants
        self.jobs, self.deadline, self.timeout_factor = jobs, deadline, timeout_factor
        self.current = "<import>"
        self.lines: dict[int, set[str]] = {}
        self.durations: dict[str, float] = {}
        self.baseline_failed: list[str] = []
        self.fast: dict[int, tuple[str, float]] = {}   # position in ``mutants`` -> status, seconds

    def pytest_configure(self, config: object) -> None:
        _cache_test_pki(Path(os.environ["SNIPROXY_MUTATION_PKI"]))

    def tracer(self, frame, event, arg):  # type: ignore[no-untyped-def]
        if frame.f_code.co_filename != self.wanted:
            return None
        if event in ("line", "call"):
            self.lines.setdefault(frame.f_lineno, set()).add(self.current)
        return self.tracer

    def pytest_runtestloop(self, session: object) -> bool:
        from _pytest.runner import runtestprotocol

        items = list(session.items)  # type: ignore[attr-defined]
        for i, item in enumerate(items):
            self.current = item.nodeid
            t0 = time.monotonic()
            nxt = items[i + 1] if i + 1 < len(items) else items[0]
            reports = runtestprotocol(item, nextitem=nxt, log=False)
            self.durations[item.nodeid] = time.monotonic() - t0
            if any(r.failed for r in reports):
                self.baseline_failed.append(item.nodeid)
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
        if self.baseline_failed:
            return True
        target = sys.modules[dotted(self.module)]
        originals = _functions(target)
        plain = _exec_source(ast.unparse(ast.parse(self.source)), target)
        by_id = {i.nodeid: i for i in items}
        running: dict[int, tuple[int, float, float]] = {}
        queue = list(enumerate(self.mutants))
        while queue or running:
            while queue and len(running) < self.jobs and time.monotonic() < self.deadline:
                pos, m = queue.pop(0)
                reached = self.lines.get(m.stmt_line, set())
                if not m.in_function or not reached or "<import>" in reached:
                    continue          # left to the caller (fresh process, or uncovered)
                try:
                    mutated = _exec_source(apply(self.source, m), target)
                    swaps = [(originals[q], fn.__code__) for q, fn in mutated.items()  # type: ignore[attr-defined]
                             if q in originals and q in plain
                             and fn.__code__ != plain[q].__code__]  # type: ignore[attr-defined]
                except Exception:  # noqa: S112 (reported: the mutant then runs in a fresh process)
                    continue          # cannot run as a twin (the mutant fails at import): fresh process
                chosen = [by_id[n] for n in sorted(reached) if n in by_id]
                budget = 5.0 + self.timeout_factor * sum(self.durations.get(i.nodeid, 1.0) for i in chosen)
                pid = os.fork()
                if pid == 0:
                    code = 70
                    try:
                        os.setpgid(0, 0)
                        sink = os.open(os.devnull, os.O_WRONLY)
                        os.dup2(sink, 1)
                        os.dup2(sink, 2)
                        for fn, new in swaps:
                            fn.__code__ = new  # type: ignore[attr-defined]
                        code = 0
                        for j, item in enumerate(chosen):
                            nxt = chosen[j + 1] if j + 1 < len(chosen) else item
                            if any(r.failed for r in runtestprotocol(item, nextitem=nxt, log=False)):
                                code = 1
                                break
                    finally:
                        os._exit(code)
                running[pid] = (pos, time.monotonic(), budget)
            if not running:
                break
            now = time.monotonic()
            reaped = False
            for cpid, (pos, started, budget) in list(running.items()):
                # Only our own grandchildren: tests start processes of their own (the CRL helper).
                done, status = os.waitpid(cpid, os.WNOHANG)
                if done:
                    running.pop(cpid)
                    code = os.waitstatus_to_exitcode(status)
                    self.fast[pos] = ("survived" if code == 0 else "killed", now - started)
                    reaped = True
                elif now - started > budget:
                    try:
                        os.killpg(cpid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    os.waitpid(cpid, 0)
                    running.pop(cpid)
                    self.fast[pos] = ("timeout", now - started)
            if not reaped:
                time.sleep(0.01)
        return True


def _session_child(work: Path, tests: list[str], module: str, source: str, mutants: list[Mutant], jobs: int,
                   deadline: float, timeout_factor: float, out: Path) -> int:
    os.chdir(work)
    sys.path.insert(0, str(work))
    sys.dont_write_bytecode = True
    sink = os.open(work / "baseline.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    import pytest

    plugin = _Session(module, source, mutants, jobs, deadline, timeout_factor)
    plugin.wanted = str(work / module)  # type: ignore[attr-defined]
    sys.settrace(plugin.tracer)
    threading.settrace(plugin.tracer)
    code = int(pytest.main(["-q", "-s", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:anyio",
                            "--assert=plain", "--no-header", "-o", "addopts=", *tests], plugins=[plugin]))
    sys.settrace(None)
    import sniproxy
    out.write_bytes(pickle.dumps({"code": code, "lines": plugin.lines, "failed": plugin.baseline_failed,
                                  "fast": plugin.fast, "imported": sniproxy.__file__}))
    return 0


# ---------------------------------------------------------------------------------------------- one module
@dataclass
class Result:
    mutant: Mutant
    status: str        # killed | timeout | survived | uncovered | equivalent | not run
    seconds: float = 0.0


@dataclass
class ModuleRun:
    module: str
    tests: list[str]
    results: list[Result] = field(default_factory=list)
    baseline_seconds: float = 0.0
    error: str = ""

    def count(self, *status: str) -> int:
        return sum(r.status in status for r in self.results)

    @property
    def scored(self) -> int:
        return len(self.results) - self.count("equivalent")

    @property
    def score(self) -> float:
        done = self.count("killed", "timeout")
        return 100.0 * done / self.scored if self.scored else 100.0


def load_equivalents(path: Path) -> dict[str, str]:
    """``module:line: mutation`` -> reason, from the equivalents file (``#`` comments, blank lines ignored)."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, reason = line.rpartition(" | ")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{n}: expected 'module:line: mutation | reason'")
        out[key.strip()] = reason.strip()
    return out


def load_must_kill(path: Path) -> list[tuple[str, str, str]]:
    """(module, mutation, why) from the must-kill file: ``module: mutation | why``."""
    out = []
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, sep, why = line.rpartition(" | ")
        module, colon, text = head.partition(": ")
        if not sep or not colon:
            raise SystemExit(f"{path}:{n}: expected 'module: mutation | why'")
        out.append((module.strip(), text.strip(), why.strip()))
    return out


def must_kill_problems(runs: list[ModuleRun], entries: list[tuple[str, str, str]]) -> tuple[list[str], list[str]]:
    """(pinned mutants that were not killed, pinned entries matching no mutant of a module that ran)."""
    failed, stale = [], []
    for run in runs:
        for module, text, why in entries:
            if module != run.module or run.error:
                continue
            hits = [r for r in run.results if r.mutant.text == text]
            if not hits:
                stale.append(f"{module}: {text}")
            failed += [f"{r.mutant.key} ({r.status}): {why}" for r in hits if r.status not in ("killed", "timeout")]
    return failed, stale


def make_copy(dest: Path) -> Path:
    """A copy of the working tree (the tests read conf/ and tests/data/) under ``dest``: no git, venv, bytecode."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.pyc", ".hypothesis", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        "state", "corpus", "findings", ".cache", "*.egg-info"))
    return dest


def run_module(module: str, works: list[Path], equivalents: dict[str, str], deadline: float,
               timeout_factor: float) -> ModuleRun:
    """Every mutant of ``module`` against its unit tests, ``len(works)`` children at a time."""
    run = ModuleRun(module, tests_for(module))
    if not run.tests:
        run.error = "no unit test imports this module"
        return run
    source = (ROOT / module).read_text()
    mutants = generate(module, source)
    trace = works[0] / "session.pickle"
    todo = [m for m in mutants if m.key not in equivalents]
    run.results += [Result(m, "equivalent") for m in mutants if m.key in equivalents]
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.setpgid(0, 0)
            code = _session_child(works[0], run.tests, module, source, todo, len(works), deadline,
                                  timeout_factor, trace)
        finally:
            os._exit(code)
    code = _wait(pid, max(60.0, deadline - time.monotonic() + 60))
    run.baseline_seconds = time.monotonic() - t0
    got = pickle.loads(trace.read_bytes()) if code == 0 and trace.exists() else None  # noqa: S301 (our own child wrote it)
    if got is None or got["failed"] or got["code"] not in (0, 5):
        log = (works[0] / "baseline.log").read_text(errors="replace")[-3000:]
        failed = got["failed"] if got else []
        run.error = (f"the unit tests fail without any mutant (exit {code}): {' '.join(run.tests)} {failed}"
                     f"\n\n```\n{log}\n```")
        return run
    lines, imported = got["lines"], got["imported"]
    if not str(imported).startswith(str(works[0])):
        run.error = f"the tests imported sniproxy from {imported}, not from the copy"
        return run
    timeout = max(10.0, timeout_factor * run.baseline_seconds)
    pending: list[tuple[Mutant, set[str] | None]] = []
    for pos, m in enumerate(todo):
        if pos in got["fast"]:
            status_text, secs = got["fast"][pos]
            run.results.append(Result(m, status_text, secs))
            continue
        reached = lines.get(m.stmt_line, set())
        if not reached:
            run.results.append(Result(m, "uncovered"))
            continue
        # A statement run at import (module or class level, defaults) may change what every test sees.
        pending.append((m, reached if m.in_function and "<import>" not in reached else None))
    running: dict[int, tuple[Mutant, Path, float]] = {}
    free = list(works)
    while pending or running:
        while pending and free and time.monotonic() < deadline:
            m, keep = pending.pop(0)
            work = free.pop()
            target = work / module
            target.write_text(apply(source, m))
            files = run.tests if keep is None else sorted({k.split("::", 1)[0] for k in keep} - {"<import>"})
            running[_fork(work, files, keep)] = (m, work, time.monotonic())
        if not running:
            break      # out of time: the rest is reported as not run
        pid, status = os.waitpid(-1, os.WNOHANG)
        now = time.monotonic()
        finished: list[tuple[int, int | None]] = []
        if pid:
            finished.append((pid, os.waitstatus_to_exitcode(status)))
        for cpid, (_, _, started) in list(running.items()):
            if cpid != pid and now - started > timeout:
                try:
                    os.killpg(cpid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(cpid, 0)
                finished.append((cpid, None))
        for cpid, code in finished:
            m, work, started = running.pop(cpid)
            (work / module).write_text(source)
            free.append(work)
            status_text = "timeout" if code is None else ("survived" if code == 0 else "killed")
            if code == 5:      # no test collected: nothing checked the mutant
                status_text = "survived"
            run.results.append(Result(m, status_text, now - started))
            if len(run.results) % 50 == 0:
                print(f"  {module}: {len(run.results)}/{len(mutants)}", file=sys.stderr, flush=True)
        if not finished:
            time.sleep(0.02)
    for m, _ in pending:
        run.results.append(Result(m, "not run"))
    order = {id(m): i for i, m in enumerate(mutants)}
    run.results.sort(key=lambda r: order[id(r.mutant)])
    return run


# ---------------------------------------------------------------------------------------------- report
def commit_stamp() -> str:
    """The commit the run's copy is made from, and whether the tree differed from it."""
    return (f"`{_git('rev-parse', '--short', 'HEAD')}`"
            f"{' with uncommitted changes' if _git('status', '--porcelain', '--untracked-files=no') else ''}")


def report(runs: list[ModuleRun], command: str, target: float, seconds: float, unused: list[str],
           pinned: tuple[list[str], list[str]] = ([], []), at: str | None = None) -> str:
    """The markdown report; ``at`` is the commit stamp taken when the copy was made (a long run outlives HEAD)."""
    out = ["# Mutation testing report", "",
           f"Produced by `{command}` (scripts/mutation.py; method in docs/decisions/0006-mutation-testing.md),",
           f"in {seconds:.0f} s, at commit {at or commit_stamp()}.",
           "",
           "Score = (killed + timed out) / (mutants - equivalent). *Uncovered*: survivors on a line no unit test of "
           "the module executes (counted as survived). Equivalent mutants are listed with their reason in "
           "`tests/mutation-equivalents.txt`.", "",
           f"| module | mutants | killed | timed out | survived | uncovered | equivalent | not run | score | "
           f">= {target:g}% |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r.error:
            out.append(f"| `{r.module}` | - | - | - | - | - | - | - | error | no |")
            continue
        ok = "yes" if r.score >= target and not r.count("not run") else "**no**"
        out.append(f"| `{r.module}` | {len(r.results)} | {r.count('killed')} | {r.count('timeout')} | "
                   f"{r.count('survived')} | {r.count('uncovered')} | {r.count('equivalent')} | "
                   f"{r.count('not run')} | {r.score:.1f}% | {ok} |")
    for r in runs:
        out += ["", f"## `{r.module}`", ""]
        if r.error:
            out.append(f"Error: {r.error}")
            continue
        out.append(f"Tests: {', '.join(f'`{t}`' for t in r.tests)} (baseline run with line tracing "
                   f"{r.baseline_seconds:.1f} s).")
        left = sorted((x for x in r.results if x.status in ("survived", "uncovered", "not run")),
                      key=lambda x: x.mutant.line)
        if not left:
            out.append("\nNo survivor.")
            continue
        out += ["", "| line | status | mutation |", "|---|---|---|"]
        for x in left:
            text = x.mutant.text.replace("|", "\\|")
            out.append(f"| {x.mutant.line} | {x.status} | {text} |")
    failed, stale = pinned
    if failed:
        out += ["", "## Must-kill mutants that survived (tests/mutation-must-kill.txt): the run fails", ""]
        out += [f"- `{k}`" for k in failed]
    if stale:
        out += ["", "## Must-kill entries matching no mutant (stale: the code changed)", ""]
        out += [f"- `{k}`" for k in stale]
    if unused:
        out += ["", "## Equivalents not matched (stale entries: the code moved or changed)", ""]
        out += [f"- `{k}`" for k in unused]
    return "\n".join(out) + "\n"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def changed_modules(rev: str, candidates: tuple[str, ...]) -> list[str]:
    """The ``candidates`` changed between ``rev`` and the working tree, or whose unit tests changed (a test
    removed or weakened lowers the module's protection as surely as a change to the module)."""
    names = set(subprocess.run(["git", "diff", "--name-only", rev, "--"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split())
    config = {"tests/mutation-equivalents.txt", "tests/mutation-must-kill.txt", "scripts/mutation.py"}
    if names & config:
        return list(candidates)
    return [m for m in candidates if m in names or names.intersection(tests_for(m))]


def _warm() -> None:
    import importlib

    for name in _WARM:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", metavar="PATH", help="files to mutate (default: the security list)")
    parser.add_argument("--changed-since", metavar="REV", help="only the listed modules changed since this git rev")
    parser.add_argument("--target", type=float, default=95.0, help="minimum score per module, in %% (default 95)")
    parser.add_argument("--max-seconds", type=float, default=7200.0, help="time budget for the whole run")
    parser.add_argument("--jobs", type=int, default=1, help="children at a time (default 1)")
    parser.add_argument("--timeout-factor", type=float, default=3.0,
                        help="per-mutant timeout as a multiple of the baseline run (at least 10 s)")
    parser.add_argument("--report", type=Path, default=None, help="markdown report (default: print it)")
    parser.add_argument("--equivalents", type=Path, default=EQUIVALENTS)
    parser.add_argument("--must-kill", type=Path, default=MUST_KILL,
                        help="mutants that must be killed whatever the score (default tests/mutation-must-kill.txt)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.max_seconds
    modules = list(args.modules or SECURITY_MODULES)
    if args.changed_since:
        modules = changed_modules(args.changed_since, tuple(modules))
    for m in modules:
        if not (ROOT / m).is_file():
            parser.error(f"no such module: {m}")
    equivalents = load_equivalents(args.equivalents)
    _warm()
    runs: list[ModuleRun] = []
    with tempfile.TemporaryDirectory(prefix="sniproxy-mutation-") as tmp:
        os.environ["SNIPROXY_MUTATION_PKI"] = str(Path(tmp) / "pki-cache")
        at = commit_stamp()     # before the copy: HEAD may move while a long run goes on
        works = [make_copy(Path(tmp) / f"w{i}") for i in range(max(1, args.jobs))]
        for m in modules:
            run = run_module(m, works, equivalents, deadline, args.timeout_factor)
            runs.append(run)
            if args.report:   # after every module: a long run shows its first results early
                args.report.write_text(report(runs, "(in progress)", args.target, time.monotonic() - started, [],
                                                at=at))
            print(f"{m}: {len(run.results)} mutants, score {run.score:.1f}%"
                  f"{' ERROR ' + run.error if run.error else ''}", file=sys.stderr, flush=True)
    used = {r.mutant.key for run in runs for r in run.results if r.status == "equivalent"}
    unused = [k for k in equivalents if k not in used and k.split(":", 1)[0] in modules]
    command = "python scripts/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    must_kill = load_must_kill(args.must_kill)
    pinned = must_kill_problems(runs, must_kill)
    text = report(runs, command.strip(), args.target, time.monotonic() - started, unused, pinned, at=at)
    if args.report:
        args.report.write_text(text)
    else:
        print(text)
    if not modules:
        print("no security-critical module changed: nothing to mutate", file=sys.stderr)
        return 0
    if any(r.error and "fail without" in r.error for r in runs):
        return 3
    # A pinned survivor is a finding whatever else happened (even when the budget ran out later).
    pinned_survivors = [r for run in runs for r in run.results if r.status in ("survived", "uncovered")
                        and any(m == run.module and t == r.mutant.text for m, t, _ in must_kill)]
    if pinned_survivors:
        print("must-kill mutants survived:\n  " + "\n  ".join(pinned[0]), file=sys.stderr)
        return 1
    if any(r.count("not run") for r in runs):
        return 2
    if pinned[0]:
        print("must-kill mutants not run:\n  " + "\n  ".join(pinned[0]), file=sys.stderr)
        return 1
    return 0 if all(not r.error and r.score >= args.target for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
