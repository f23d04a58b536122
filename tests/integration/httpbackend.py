"""A small SOAP echo service, the real HTTP backend behind the proxy in tests and benchmarks.

Run as ``python -m tests.integration.httpbackend --port P --log FILE`` (a child process: the proxy
under test never shares an interpreter with it). It speaks HTTP/1.1 with keep-alive (the stdlib
``http.server``, threaded), answers ``Expect: 100-continue``, and appends one JSON line per request
head it receives to FILE, so a test can prove a request never reached it.

- ``POST /echo``: the request body back, same Content-Type.
- ``POST`` anything else: a JSON report: method, path, headers as received (list, in order), body
  length and SHA-256 (the body is read in 64 KiB pieces, CL or chunked: never held whole).
- ``GET /download?size=N``: N bytes of a repeating pattern, chunked (``&cl=1``: with Content-Length).
- ``GET /slow?delay=S``: waits S seconds, then reports.
- ``GET`` anything else: the JSON report.
This module must not import the package under test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes(range(256)) * 256   # 64 KiB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # head and body are two writes: no 40 ms delayed-ACK stall
    server_version = "soap-echo/1"
    log_lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> None:
        line = json.dumps({"method": self.command, "path": self.path, "headers": list(self.headers.items())})
        with self.log_lock, open(self.server.log_path, "a") as fh:  # type: ignore[attr-defined]
            fh.write(line + "\n")

    def _body(self) -> Any:
        """Yield the request body in pieces (Content-Length or chunked)."""
        te = self.headers.get("Transfer-Encoding", "")
        if te.lower() == "chunked":
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, 65536))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
                self.rfile.readline(16)
        else:
            left = int(self.headers.get("Content-Length", "0") or 0)
            while left:
                piece = self.rfile.read(min(left, 65536))
                if not piece:
                    return
                left -= len(piece)
                yield piece

    def _report(self, extra: dict[str, Any] | None = None) -> None:
        h = hashlib.sha256()
        n = 0
        for piece in self._body():
            h.update(piece)
            n += len(piece)
        report = {"method": self.command, "path": self.path, "headers": list(self.headers.items()),
                  "body_length": n, "body_sha256": h.hexdigest(), **(extra or {})}
        data = json.dumps(report).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        self._record()
        if urlsplit(self.path).path == "/echo":
            body = b"".join(self._body())
            self.send_response(200)
            self.send_header("Content-Type", self.headers.get("Content-Type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._report()

    def do_PUT(self) -> None:
        self.do_POST()

    def do_GET(self) -> None:
        self._record()
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        if url.path == "/download":
            size = int(q.get("size", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if q.get("cl"):
                self.send_header("Content-Length", str(size))
                self.end_headers()
                left = size
                while left:
                    piece = PATTERN[:min(left, len(PATTERN))]
                    self.wfile.write(piece)
                    left -= len(piece)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            left = size
            while left:
                piece = PATTERN[:min(left, len(PATTERN))]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                left -= len(piece)
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/slow":
            time.sleep(float(q.get("delay", ["1"])[0]))
        self._report()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    srv.log_path = args.log  # type: ignore[attr-defined]
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
