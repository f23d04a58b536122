"""Which build of the HTTP half is running: compiled with mypyc (decision 0016) or the interpreted sources."""

from __future__ import annotations

import importlib
import importlib.machinery

#: the modules scripts/build-compiled.sh compiles (tests/unit/test_compiled.py holds the two lists equal)
COMPILED_MODULES = (
    "sniproxy.proto.http_backend",
    "sniproxy.proto.http_body",
    "sniproxy.proto.http_rewrite",
    "sniproxy.proto.http_server",
    "sniproxy.driver.http",
    "sniproxy.driver.http_pool",
)


def http_build() -> str:
    """``compiled`` when every module of the HTTP half loads from an extension, ``interpreted`` when none does,
    else ``mixed`` (a broken build: the worker's ``ready`` event shows it so an operator can see it)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    compiled = sum(str(getattr(importlib.import_module(m), "__file__", "") or "").endswith(suffixes)
                   for m in COMPILED_MODULES)
    if compiled == len(COMPILED_MODULES):
        return "compiled"
    return "interpreted" if compiled == 0 else "mixed"
