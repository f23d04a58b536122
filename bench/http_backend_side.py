"""Micro-benchmark of the backend half of one HTTPS exchange: h11 client (before issue 16) vs BackendExchange.

One command: ``python bench/http_backend_side.py`` (a few seconds). For a small SOAP exchange (request head
with identity headers, 197-byte body, a 200 response with a 197-byte body) it times, in one process and
interleaved, the work the proxy does on the backend side per request: write the head and body, parse the
response into events. ``min`` of several repeats (the least disturbed by other jobs on a shared machine)
and the median are written to ``bench/results/http_backend_side.md``. With ``--callgrind`` it runs one
side N times for ``valgrind --tool=callgrind`` (instruction counts do not depend on the machine's load).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import timeit
from pathlib import Path

import h11

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sniproxy.proto.http_backend import BackendExchange, ResponseEnd  # noqa: E402

BODY = b"x" * 197
HEADERS = [(b"host", b"mss-msg-igcsante.mssante.fr"), (b"content-type", b"text/xml; charset=utf-8"),
           (b"soapaction", b'"urn:mss:Ping"'), (b"content-length", b"197"),
           (b"forwarded", b'for="127.0.0.1:40000";proto=https;host=mss-msg-igcsante.mssante.fr'),
           (b"x-forwarded-for", b"127.0.0.1"), (b"x-ssl-client-verify", b"SUCCESS"),
           (b"x-ssl-client-s-dn", b"CN=810009876543,SN=MARTIN,GN=ANNE,title=Medecin,C=FR"),
           (b"client-cert", b":" + b"A" * 1600 + b":")]
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: BaseHTTP/0.6 Python/3.11\r\nDate: Sun, 06 Dec 2026 19:00:00 GMT\r\n"
            b"Content-Type: text/xml; charset=utf-8\r\nContent-Length: 197\r\n\r\n" + b"y" * 197)


def with_h11() -> None:
    conn = h11.Connection(h11.CLIENT)
    out = conn.send(h11.Request(method=b"POST", target=b"/echo", headers=HEADERS, http_version=b"1.1",
                                _parsed=True))
    out += conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage())   # type: ignore[operator]
    conn.receive_data(RESPONSE)
    while True:
        event = conn.next_event()
        if type(event) is h11.EndOfMessage:
            break
    assert conn.our_state is h11.DONE and conn.their_state is h11.DONE


def with_llhttp() -> None:
    ex = BackendExchange()
    out = ex.request(b"POST", b"/echo", HEADERS, chunked=False) + ex.body(BODY) + ex.end()
    events = ex.receive_data(RESPONSE)
    assert isinstance(events[-1], ResponseEnd) and events[-1].reusable and out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--callgrind", choices=("h11", "llhttp"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http_backend_side.md")
    args = ap.parse_args()
    if args.callgrind:
        fn = with_h11 if args.callgrind == "h11" else with_llhttp
        for _ in range(args.number):
            fn()
        return 0
    times: dict[str, list[float]] = {"h11": [], "llhttp": []}
    for _ in range(args.repeat):   # interleaved: both sides see the same machine
        for name, fn in (("h11", with_h11), ("llhttp", with_llhttp)):
            times[name].append(timeit.timeit(fn, number=args.number) / args.number * 1e6)
    load = os.getloadavg()[0]
    lines = ["# Backend half of one small HTTPS exchange: h11 client vs BackendExchange (llhttp)", "",
             f"`python bench/http_backend_side.py`, {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
             f"Python {platform.python_version()}, h11 {h11.__version__}, load average {load:.2f}, "
             f"{args.repeat} interleaved repeats of {args.number} exchanges.", "",
             "| side | min us/exchange | median us/exchange |", "|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} |")
    ratio = min(times["h11"]) / min(times["llhttp"])
    lines += ["", f"h11 / llhttp (min): {ratio:.1f}x"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
