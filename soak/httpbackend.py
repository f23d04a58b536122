"""The SOAP echo backend of the integration tests with two fault modes the soak switches on and off.

Run as ``python -m soak.httpbackend --port P --log FILE --mode-file M``. The mode is read from M at
every request (a file, so the soak process can flip it without talking to this one): ``ok``,
``slow S`` (every answer waits S seconds first) or ``500`` (every request answered 500 after its body
is read, so the connection stays usable as a real failing service's would).
"""

from __future__ import annotations

import argparse
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from tests.integration.httpbackend import Handler


class FaultyHandler(Handler):
    """``Handler`` behind a mode switch."""

    def _mode(self) -> list[str]:
        try:
            return Path(self.server.mode_file).read_text().split()  # type: ignore[attr-defined]
        except OSError:
            return ["ok"]

    def do_POST(self) -> None:
        mode = self._mode()
        if mode[:1] == ["slow"]:
            time.sleep(float(mode[1]) if len(mode) > 1 else 2.0)
        elif mode[:1] == ["500"]:
            self._record()
            for _ in self._body():
                pass
            data = b"injected fault\n"
            self.send_response(500)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_POST()


def main() -> None:
    """Serve until killed."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--mode-file", required=True)
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), FaultyHandler)
    srv.daemon_threads = True
    srv.log_path = args.log  # type: ignore[attr-defined]
    srv.mode_file = args.mode_file  # type: ignore[attr-defined]
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
