"""Command line: argv in, exit code out. The only module that exits.

Exit codes: 0 success, 1 runtime failure, 2 configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from sniproxy import __version__
from sniproxy.errors import ConfigError, ConfigErrors

DESCRIPTION = """\
TLS front door for MSSanté IMAP, SMTP and HTTPS (SOAP web services): terminates STARTTLS and implicit TLS,
picks a flow (server certificate and accepted card authorities) by SNI, verifies the smart-card client
certificate against that flow's authorities and CRLs, and forwards plaintext to the unchanged backend
with the card's identity."""

EPILOG = """\
exit codes: 0 success, 1 runtime failure, 2 configuration error.
Start with `sniproxy check -c FILE`, then `sniproxy run -c FILE`; `sniproxy demo` shows it working with a
generated test PKI. Documentation: README.md and docs/ in the source repository."""


def _load(path: str) -> tuple[object, list[str]]:
    from sniproxy.config.load import load
    from sniproxy.runtime.snapshot import compile_snapshot

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
    """Load, compile, then serve until SIGTERM/SIGINT (SIGHUP reloads)."""
    import time

    from sniproxy import app
    from sniproxy.config.load import read_text
    from sniproxy.lifecycle.build import build
    from sniproxy.observability.log import configure, get_logger

    path = Path(args.config)
    try:
        text = read_text(path)
        built = build(path, text, 1, time.time())
    except (ConfigErrors, ConfigError) as exc:
        return _config_failed(exc)
    cfg = built.snapshot.config
    configure(cfg.log_level, cfg.log_format)
    log = get_logger("sniproxy.cli")
    for w in built.warnings:
        log.warning("config_warning", warning=w)
    unchecked = sorted(n for n, a in cfg.authorities.items() if a.enabled and not a.revocation_required)
    if unchecked:
        # Cards of these sets are never checked for revocation: say so on every start.
        log.warning("revocation_not_checked", authorities=unchecked)
    from sniproxy.cpus import available_cpus

    # `auto`: the CPUs this process may use (affinity, cgroup quota), not the node's core count
    workers = cfg.workers if cfg.workers is not None else available_cpus()
    return app.run(path, text, built, workers)


def cmd_reload(args: argparse.Namespace) -> int:
    """Signal the running instance (found by its pid file) to reload, and print its verdict."""
    import signal
    import time

    from sniproxy.config.load import load
    from sniproxy.lifecycle.pidfile import PidFile, read_pid, read_status, runtime_dir

    try:
        # Structure only: where the instance keeps its pid file. The instance validates the whole.
        config = load(Path(args.config), check_files=False).config
    except (ConfigErrors, ConfigError) as exc:
        return _config_failed(exc)
    pidfile = PidFile(runtime_dir(config))
    pid = read_pid(pidfile.path)
    if pid is None:
        print(f"error: no running sniproxy for {args.config} (no pid file {pidfile.path})", file=sys.stderr)
        return 1
    before = read_status(pidfile.status_path) or {}
    count = before.get("reloads_ok", 0) + before.get("reloads_failed", 0)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"error: sniproxy pid {pid} (from {pidfile.path}) is not running", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status = read_status(pidfile.status_path) or {}
        if status.get("reloads_ok", 0) + status.get("reloads_failed", 0) > count:
            last = status.get("last_reload") or {}
            if last.get("ok"):
                print(f"reloaded: generation {last.get('generation')}")
                return 0
            for err in last.get("errors", []):
                print(f"error: {err}", file=sys.stderr)
            print(f"refused: generation {last.get('generation')} still serving", file=sys.stderr)
            return 2
        time.sleep(0.05)
    print(f"error: sniproxy pid {pid} did not report the reload within {args.timeout:g}s", file=sys.stderr)
    return 1


def _crl_manager(path: str) -> tuple[Any, Any]:
    """Config, snapshot and a CRL manager loaded from the cache (no network)."""
    from sniproxy.config.load import load
    from sniproxy.crl.manager import CrlManager
    from sniproxy.crl.state import RevocationHolder
    from sniproxy.runtime.snapshot import compile_snapshot

    loaded = load(Path(path))
    holder = RevocationHolder()
    snapshot = compile_snapshot(loaded.config, revocation=holder)
    return snapshot, CrlManager(loaded.config, holder)


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(f"{row['url']}")
        for key, value in row.items():
            if key != "url" and value is not None:
                print(f"    {key}: {value}")


def cmd_crl(args: argparse.Namespace) -> int:
    """``crl status`` (what is cached and in force) and ``crl fetch`` (fetch, validate, store now)."""
    import asyncio

    from sniproxy.observability.log import configure

    configure("warning" if args.crl_command == "status" else "info", "console")
    try:
        _, manager = _crl_manager(args.config)
    except (ConfigErrors, ConfigError) as exc:
        return _config_failed(exc)
    if not manager.specs:
        print("no authority set names CRL sources")
        return 0

    async def go() -> dict[str, str]:
        try:
            await manager.load_cache()
            return await manager.refresh_all() if args.crl_command == "fetch" else {}
        finally:
            manager.close()

    results = asyncio.run(go())
    _print_rows(manager.report(), args.json)
    problems = manager.problems()
    for p in problems:
        print(f"not ready: {p}", file=sys.stderr)
    if args.crl_command == "fetch":
        failed = {u: r for u, r in results.items() if r not in ("updated", "unchanged", "not_modified")}
        for url, result in failed.items():
            print(f"fetch failed: {url}: {result}", file=sys.stderr)
        return 1 if failed else 0
    return 1 if problems else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Tell, for every flow, whether a card certificate would be accepted and why not."""
    import asyncio
    from datetime import UTC, datetime

    from sniproxy.card import read_certs
    from sniproxy.observability.log import configure
    from sniproxy.tls.checkcard import verify_card

    configure("warning", "console")
    try:
        snapshot, manager = _crl_manager(args.config)
    except (ConfigErrors, ConfigError) as exc:
        return _config_failed(exc)
    try:
        certs = read_certs(Path(args.card))
        for extra in args.chain or []:
            certs += read_certs(Path(extra))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)   # "cannot read certificates: <why>", as it always said
        return 2
    when = datetime.fromisoformat(args.at) if args.at else datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    manager.clock = when.timestamp

    async def go() -> None:
        try:
            await manager.load_cache()
            if args.fetch:
                await manager.refresh_all()
        finally:
            manager.close()

    asyncio.run(go())
    verdicts = [verify_card(rt, certs[0], certs[1:], when) for rt in snapshot.flows.values()]
    if args.json:
        print(json.dumps([_as_dict(v) for v in verdicts], indent=2))
    else:
        for v in verdicts:
            word = "ACCEPTED" if v.accepted else "REFUSED"
            print(f"{v.flow}: {word} reason={v.reason}" + (f" authority={v.authority}" if v.authority else ""))
            if v.detail:
                print(f"    {v.detail}")
            for g in v.crl_grace:
                print(f"    accepted within CRL grace: {g}")
    return 0 if any(v.accepted for v in verdicts) else 1


def _as_dict(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__}


def _config_failed(exc: ConfigErrors | ConfigError) -> int:
    errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    return 2


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate the demo PKI, start built-in backends and the proxy, show real connections."""
    from sniproxy.demo import run as demo

    return demo.main(Path(args.state_dir), serve=not args.no_serve, base_port=args.base_port)


def cmd_report(args: argparse.Namespace) -> int:
    """Migration readiness report over ``connection`` events (see docs/migration.md)."""
    from sniproxy.report.main import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    p = argparse.ArgumentParser(prog="sniproxy", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"sniproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="serve with a config file")
    r.add_argument("-c", "--config", required=True)
    r.set_defaults(func=cmd_run)
    rl = sub.add_parser("reload", help="make the running instance reload its config (as SIGHUP does)")
    rl.add_argument("-c", "--config", required=True)
    rl.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the verdict")
    rl.set_defaults(func=cmd_reload)
    c = sub.add_parser("check", help="validate a config file, print errors and warnings")
    c.add_argument("-c", "--config", required=True)
    c.set_defaults(func=cmd_check)
    k = sub.add_parser("crl", help="CRL cache: status, fetch now")
    ksub = k.add_subparsers(dest="crl_command", required=True)
    for verb, text in (("status", "per source: CRL in force, dates, entries, last fetch (exit 1 when not ready)"),
                       ("fetch", "fetch, validate and store every source now (exit 1 if any fails)")):
        kp = ksub.add_parser(verb, help=text)
        kp.add_argument("-c", "--config", required=True)
        kp.add_argument("--json", action="store_true")
        kp.set_defaults(func=cmd_crl)
    v = sub.add_parser("verify", help="would this card be accepted, on every flow, and why not")
    v.add_argument("-c", "--config", required=True)
    v.add_argument("card", help="PEM file: the card certificate (and optionally its chain after it)")
    v.add_argument("--chain", action="append", help="PEM file of intermediates the client would send")
    v.add_argument("--at", help="ISO 8601 time to verify at (default: now)")
    v.add_argument("--fetch", action="store_true", help="refresh the CRLs first (default: cache only)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)
    d = sub.add_parser("demo", help="run the self-contained demo on embedded defaults")
    d.add_argument("--state-dir", default="state/demo")
    d.add_argument("--base-port", type=int, default=18000)
    d.add_argument("--no-serve", action="store_true", help="run the scripted clients, print the table, exit")
    d.set_defaults(func=cmd_demo)
    from sniproxy.report.main import add_arguments

    rp = sub.add_parser("report", help="migration readiness: who is still on 2bis or without SNI, card PKI mix")
    add_arguments(rp)
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sniproxy`` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
