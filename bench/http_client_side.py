"""The client half of one small HTTPS exchange: h11 (as until issue 16) vs ``ClientSide`` (llhttp + our framing).

``python bench/http_client_side.py`` (about 20 s). For one small SOAP exchange (a POST with its
197-byte body, pipelined behind nothing; a 200 response with a 197-byte body) it times, in one
process and interleaved, the work the proxy does on the client side per request: delimit and check
the head, parse it, frame the body, write the response head, body and end. ``h11`` is the code this
replaced (the raw checks, then a fresh ``h11.Connection`` per request; kept here, reduced to the
calls the proxy made, so the comparison stays runnable); ``llhttp`` is ``http_server.ClientSide``.
``min`` of several repeats (the least disturbed by other jobs on a shared machine) and the median
are written to ``bench/results/http_client_side.md``. With ``--callgrind`` it runs one side N
times for ``valgrind --tool=callgrind`` (instruction counts do not depend on the machine's load).
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

from sniproxy.proto.http_rewrite import check_framing, check_head  # noqa: E402
from sniproxy.proto.http_server import ClientSide, RequestEnded, RequestStarted  # noqa: E402

BODY = b"x" * 197
REQUEST = (b"POST /echo HTTP/1.1\r\nHost: mss-msg-igcsante.mssante.fr\r\nContent-Type: text/xml; charset=utf-8\r\n"
           b"SOAPAction: \"urn:mss:Ping\"\r\nContent-Length: 197\r\nUser-Agent: bench\r\n\r\n" + BODY)
RESPONSE_HEADERS = [(b"Server", b"BaseHTTP/0.6 Python/3.11"), (b"Date", b"Sun, 06 Dec 2026 19:00:00 GMT"),
                    (b"Content-Type", b"text/xml; charset=utf-8"), (b"Content-Length", b"197")]
RESPONSE_BODY = b"y" * 197


def with_h11() -> None:
    """What ``ClientSide`` did per request until issue 16 (f0f6dc3), minus its buffering."""
    end = REQUEST.find(b"\r\n\r\n")
    head, rest = REQUEST[:end + 4], REQUEST[end + 4:]
    check_head(head, 8192)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=32768)
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    headers = list(event.headers.raw_items())
    check_framing(headers)
    started = [(n.lower(), v) for n, v in headers]
    conn.receive_data(rest)
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            break
    out = conn.send(h11.Response(status_code=200, headers=RESPONSE_HEADERS, reason=b"OK")) or b""
    out += conn.send(h11.Data(data=RESPONSE_BODY)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    assert conn.our_state is h11.DONE and conn.their_state is h11.DONE and started and body and out


def make_llhttp() -> ClientSide:
    return ClientSide()


def with_llhttp(side: ClientSide) -> None:
    events = side.receive_data(REQUEST)
    assert isinstance(events[0], RequestStarted) and isinstance(events[-1], RequestEnded)
    out = side.response(200, RESPONSE_HEADERS, b"OK") + side.body(RESPONSE_BODY)
    end, keep = side.end()
    assert keep and out and not end
    side.next_request()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--callgrind", choices=("h11", "llhttp"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http_client_side.md")
    args = ap.parse_args()
    side = make_llhttp()
    sides = {"h11": with_h11, "llhttp": lambda: with_llhttp(side)}
    if args.callgrind:
        fn = sides[args.callgrind]
        for _ in range(args.number):
            fn()
        return 0
    times: dict[str, list[float]] = {"h11": [], "llhttp": []}
    for _ in range(args.repeat):   # interleaved: both sides see the same machine
        for name, fn in sides.items():
            times[name].append(timeit.timeit(fn, number=args.number) / args.number * 1e6)
    load = os.getloadavg()[0]
    lines = ["# Client half of one small HTTPS exchange: h11 server vs ClientSide (llhttp + own framing)", "",
             f"`python bench/http_client_side.py`, {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
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
