"""Command line: argv in, exit code out. The only module that exits.

Exit codes: 0 success, 1 runtime failure, 2 configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sniproxy import __version__
from sniproxy.errors import ConfigError, ConfigErrors


def _load(path: str) -> tuple[object, list[str]]:
    from sniproxy.config.load import load
    from sniproxy.tls.contexts import compile_snapshot

    loaded = load(Path(path))
    snapshot = compile_snapshot(loaded.config)
    return snapshot, list(loaded.warnings)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a config whole; print every error with file, line and key, and the warnings."""
    try:
        _, warnings = _load(args.config)
    except ConfigErrors as exc:
        for err in exc.errors:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.config}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Load, compile, then serve until SIGTERM/SIGINT."""
    from sniproxy import app
    from sniproxy.observability.log import configure, get_logger
    from sniproxy.tls.contexts import Snapshot

    try:
        snapshot, warnings = _load(args.config)
    except (ConfigErrors, ConfigError) as exc:
        errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        for err in errors:
            print(f"error: {err}", file=sys.stderr)
        return 2
    assert isinstance(snapshot, Snapshot)
    cfg = snapshot.config
    configure(cfg.log_level, cfg.log_format)
    log = get_logger("sniproxy.cli")
    for w in warnings:
        log.warning("config_warning", warning=w)
    with_crl = sorted(n for n, a in cfg.authorities.items() if a.enabled and a.crl_sources)
    if with_crl:
        # CRL fetching and checking is not implemented yet: say so on every start, never silently.
        log.warning("revocation_not_enforced", authorities=with_crl)
    workers = cfg.workers if cfg.workers is not None else (os.cpu_count() or 1)
    return app.run(snapshot, workers)


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo PKI, start built-in backends and the proxy, show real connections."""
    from sniproxy import demo

    return demo.main(Path(args.state_dir), serve=not args.no_serve, base_port=args.base_port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    p = argparse.ArgumentParser(prog="sniproxy", description=__doc__)
    p.add_argument("--version", action="version", version=f"sniproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="serve with a config file")
    r.add_argument("-c", "--config", required=True)
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("check", help="validate a config file, print errors and warnings")
    c.add_argument("-c", "--config", required=True)
    c.set_defaults(func=cmd_check)
    d = sub.add_parser("demo", help="run the self-contained demo on embedded defaults")
    d.add_argument("--state-dir", default="state/demo")
    d.add_argument("--base-port", type=int, default=18000)
    d.add_argument("--no-serve", action="store_true", help="run the scripted clients, print the table, exit")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sniproxy`` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
