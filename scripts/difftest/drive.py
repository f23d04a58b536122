"""Cross-build differential (decision 0016): the same transcripts through the sans-IO HTTP pieces, one build per
process, every output, event and exception printed in a canonical form (scripts/difftest.sh compares them).

    SEED=N DIFFTEST_TREE=TREE python drive.py gen CASES.pkl   (deterministic; TREE: where the unit tests' literals are read)
    PYTHONPATH=BUILD python drive.py run CASES.pkl > OUT      (PYTHONPATH picks the build: a compiled mirror or the sources)
"""
from __future__ import annotations

import ast
import dataclasses
import glob
import pickle
import random
import sys
import time

import os
SEED = int(os.environ.get("SEED", "1616"))


# ----------------------------------------------------------------------------------------------- generation
def _eval(node: ast.AST, env: dict) -> object:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, env), _eval(node.right, env)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Mult) and isinstance(b, int) and b < 100000:
            return a * b
        if isinstance(node.op, ast.Mod):
            return a % b
    if isinstance(node, (ast.Tuple, ast.List)):
        return type(node).__name__ == "Tuple" and tuple(_eval(e, env) for e in node.elts) or [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.Starred):
        raise ValueError
    raise ValueError


def test_literals(root: str) -> tuple[list[bytes], list[list[tuple[bytes, bytes]]]]:
    """Every bytes expression and every list of (bytes, bytes) pairs in the HTTP unit tests."""
    blobs: set[bytes] = set()
    hlists: list[list[tuple[bytes, bytes]]] = []
    files = sorted(glob.glob(root + "/tests/unit/proto/test_http*.py") + glob.glob(root + "/tests/unit/driver/test_http*.py"))
    for path in files:
        tree = ast.parse(open(path).read())
        env: dict = {}
        for st in tree.body:   # module constants (HOST = ...)
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
                try:
                    env[st.targets[0].id] = _eval(st.value, env)
                except Exception:
                    pass
        for node in ast.walk(tree):
            if not isinstance(node, ast.expr):
                continue
            try:
                v = _eval(node, env)
            except Exception:
                continue
            if isinstance(v, bytes) and v:
                blobs.add(v)
            elif isinstance(v, list) and v and all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, bytes) for x in p) for p in v):
                hlists.append(v)
    return sorted(blobs), hlists


BIG = [0, 1, 5, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**65, 10**30]


def cl_values() -> list[bytes]:
    out = [str(n).encode() for n in BIG]
    out += [b"00000000000000000005", b"0" * 40 + b"3", b"+5", b"-5", b"-0", b" 5", b"5 ", b"5,5", b"5, 6", b"5,", b",5",
            b"", b"0x5", b"5_0", b"1_0", b"\xd9\xa5", b"\xef\xbc\x95", b"5\t", b"\t5", b"5.0", b"1e3", b"five",
            b"99999999999999999999999999999999999999", b"18446744073709551616", b"18446744073709551615",
            b"9223372036854775808", b"9223372036854775807", b"0000000000000000000000009223372036854775808"]
    return out


def chunk_sizes() -> list[bytes]:
    out = [b"%x" % n for n in BIG if n < 2**70]
    out += [b"0000000000000005", b"00000000000000005", b"ffffffffffffffff", b"10000000000000000", b"FFFFFFFF",
            b"7fffffffffffffff", b"8000000000000000", b"+5", b"-5", b" 5", b"5 ", b"5\t", b"5;ext=1", b"5;", b"5 ;x",
            b"0x5", b"5_0", b"", b"g", b"5\x00", b"\xff", b"0;" + b"x" * 100]
    return out


IDENT_NAMES = [b"X-Forwarded-For", b"x-forwarded-for", b"X_FORWARDED_FOR", b"x_Forwarded-for", b"Forwarded",
               b"FORWARDED", b"X-SSL-Client-Cert", b"ssl_client_cert", b"SSL-Client-Cert", b"X-Client-DN",
               b"x-client-dn", b"X-Client-Verify", b"$WSCC", b"$wsra", b"WL-Proxy-Client-IP", b"wl_proxy_ssl",
               b"X-Amzn-Mtls-Clientcert", b"Client-Cert", b"client_cert_chain", b"X-Real-IP", b"x-arr-clientcert",
               b"X-MSS-IdNat-PS", b"x_mss_profession", b"X-Forwarded-Client-Cert", b"x-ssl-client-s-dn",
               b"X-Forwarded-Host", b"X-Forwarded-Proto", b"x-forwarded-", b"X-Custom-Id", b"x_custom_id"]

ODD_VALUES = [b"a\x00b", b"a\rb", b"a\nb", b"\xff\xfe", b"caf\xc3\xa9", b"a\x7fb", b"a\tb", b" a ", b"\t", b"",
              b"a" * 9000, b"x\x0bb", b"\x1b[31m"]


def chunks(rng: random.Random, fill: bytes, unparsable: int, cap: int) -> list[bytes]:
    """0 to 2 chunks: a hostile size (30%) or a small hex one, and up to ``cap`` bytes of ``fill`` (the size's
    value, or ``unparsable`` when the size is not hex)."""
    out = []
    for _ in range(rng.randrange(0, 3)):
        size = rng.choice(chunk_sizes()) if rng.random() < 0.3 else b"%x" % rng.randrange(1, 20)
        try:
            n = int(size.split(b";")[0].strip(), 16)
        except ValueError:
            n = unparsable
        out.append(size + b"\r\n" + fill * min(n, cap) + b"\r\n")
    return out


def gen_requests(rng: random.Random, blobs: list[bytes]) -> list[bytes]:
    reqs: list[bytes] = []
    # (a) the tests' own request-looking literals
    for b in blobs:
        if b"HTTP/" in b[:200] and not b.startswith(b"HTTP/"):
            reqs.append(b)
    # (b) generated
    methods = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"DELETE", b"get", b"G\xe9T", b"PRI", b"TRACE"]
    targets = [b"/", b"/ws?a=1", b"http://h.example/x", b"https://h.example:443/x", b"https://other.example/",
               b"https://u@h.example/", b"http://h.example/#f", b"h.example:443", b"*", b"/a%2e%2e/b", b"//x",
               b"/\xff", b"/a b", b"HTTPS://H.EXAMPLE/", b"http://[::1]:8080/", b"/admin/..;/x"]
    versions = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 "]
    hosts = [b"Host: h.example\r\n", b"host: H.EXAMPLE.\r\n", b"Host: h.example:443\r\n", b"Host: [::1]\r\n",
             b"Host: a,b\r\n", b"Host: u@h\r\n", b"Host:\r\n", b"Host: h.example\r\nHost: h.example\r\n",
             b"HOST: other.example\r\n", b"", b"Host : h.example\r\n", b"Host: h.example:99999\r\n"]
    for _ in range(1500):
        m = rng.choice(methods)
        line = m + b" " + rng.choice(targets) + (b" " + rng.choice(versions) if rng.random() < 0.97 else b"")
        if rng.random() < 0.7:
            line = m + b" " + rng.choice(targets[:4]) + b" " + rng.choice(versions[:2])
        head = line + b"\r\n" + rng.choice(hosts if rng.random() < 0.4 else hosts[:1])
        body = b""
        kind = rng.random()
        if kind < 0.3:
            cl = rng.choice(cl_values())
            head += b"Content-Length: " + cl + b"\r\n"
            if rng.random() < 0.2:
                head += rng.choice([b"Content-Length: ", b"content-length: ", b"CONTENT-LENGTH:"]) + rng.choice(cl_values()) + b"\r\n"
            body = b"x" * rng.choice([0, 1, 5, 3, 10, 100])
        elif kind < 0.6:
            te = rng.choice([b"chunked", b"Chunked", b"chunked, chunked", b"gzip, chunked", b"chunked ", b"identity",
                             b"chunked\x00", b" chunked", b"chunked,", b",chunked", b"x-chunked"])
            head += rng.choice([b"Transfer-Encoding: ", b"transfer-encoding: ", b"Transfer_Encoding: "]) + te + b"\r\n"
            if rng.random() < 0.15:
                head += b"Content-Length: 5\r\n"
            if rng.random() < 0.1:
                head += b"Transfer-Encoding: chunked\r\n"
            parts = chunks(rng, b"d", 3, 30)
            tr = rng.choice([b"", b"", b"X-T: 1\r\n", b"X-T: 1\r\n Y\r\n", b"X-T:\x00\r\n", b"X-T 1\r\n",
                             b"X-T: 1\n", b"Content-Length: 5\r\n", b"X-Forwarded-For: 1.2.3.4\r\n"])
            body = b"".join(parts) + b"0\r\n" + tr + b"\r\n"
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5])):
            r = rng.random()
            if r < 0.45:
                head += rng.choice(IDENT_NAMES) + rng.choice([b": ", b":", b": \t"]) + b"evil\r\n"
            elif r < 0.6:
                head += b"Connection: " + rng.choice([b"close", b"keep-alive", b"close, x-forwarded-for", b"content-length",
                                                      b"host", b"upgrade", b"x-ssl-client-cert", b"Transfer-Encoding",
                                                      b"te, close", b"CLOSE"]) + b"\r\n"
            elif r < 0.7:
                head += rng.choice([b"Upgrade: websocket\r\n", b"Expect: 100-continue\r\n", b"TE: trailers\r\n",
                                    b"Proxy-Connection: keep-alive\r\n", b"Keep-Alive: 5\r\n", b"Trailer: X-T\r\n"])
            elif r < 0.85:
                head += b"X-V: " + rng.choice(ODD_VALUES) + b"\r\n"
            else:
                head += rng.choice([b" folded\r\n", b"\tfolded\r\n", b"X-N\x00: 1\r\n", b": empty\r\n", b"X N: 1\r\n",
                                    b"X-\xff: 1\r\n", b"SOAPAction: x\r\n", b"Content-Type: application/soap+xml\r\n",
                                    b"Content-Type: text/xml; charset=utf-8\r\n", b"X-A: 1\n", b"X-A: 1\r\r\n",
                                    b"X-A: 1\rX-B: 2\r\n"])
        if rng.random() < 0.03:
            head += b"".join(b"X-H%d: v\r\n" % i for i in range(rng.choice([100, 300, 1000])))
        req = head + b"\r\n" + body
        if rng.random() < 0.1:
            req = b"\r\n" + req
        reqs.append(req)
    return reqs


def splits(rng: random.Random, data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    if mode.startswith("at"):
        i = int(mode[2:])
        return [data[:i], data[i:]]
    k = rng.randrange(1, 6)
    pts = sorted(rng.randrange(0, len(data) + 1) for _ in range(k))
    out, prev = [], 0
    for p in pts + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


RESP_PLANS = [
    (200, [(b"content-length", b"5")], b"OK", [b"hello"]),
    (200, [], b"OK", [b"abc", b"", b"de"]),
    (204, [(b"content-length", b"5")], b"No Content", [b""]),
    (304, [], b"", []),
    (200, [(b"transfer-encoding", b"chunked")], b"OK", [b"x" * 10]),
    (200, [(b"transfer-encoding", b"gzip, chunked")], b"OK", []),
    (200, [(b"content-length", b"18446744073709551616")], b"OK", [b"x"]),
    (200, [(b"content-length", b"5, 5")], b"OK", [b"hello"]),
    (200, [(b"content-length", b"-1")], b"OK", [b"hello"]),
    (200, [(b"content-length", b"1_0")], b"OK", [b"hello"]),
    (200, [(b"content-length", b"abc")], b"OK", []),
    (200, [(b"connection", b"close")], b"\xffodd", [b"z"]),
    (200, [(b"Host", b"h"), (b"x", b"y")], b"bad\r\nreason", []),
    (200, [(b"content-length", b"2")], b"OK", [b"abc"]),
    (200, [(b"content-length", b"9")], b"OK", [b"abc"]),
    (500, [(b"connection", b"keep-alive, close")], b"Internal", [b"err"]),
]


def gen(out_path: str) -> None:
    rng = random.Random(SEED)
    blobs, hlists = test_literals(os.environ.get("DIFFTEST_TREE", "."))
    reqs = gen_requests(rng, blobs)
    cases: dict[str, list] = {"client": [], "backend": [], "chunked": [], "rewrite": [], "response": []}
    # ---- client transcripts
    for req in reqs:
        modes = ["whole", "rand", "rand"]
        if len(req) <= 400:
            modes.append("bytes")
        for mode in modes:
            cases["client"].append((splits(rng, req, mode), rng.randrange(len(RESP_PLANS)), 8192, 32768))
    # pipelining: 2-4 requests concatenated
    for _ in range(1500):
        data = b"".join(rng.choice(reqs) for _ in range(rng.randrange(2, 5)))
        cases["client"].append((splits(rng, data, rng.choice(["whole", "rand"])), rng.randrange(len(RESP_PLANS)), 8192, 32768))
    # every split point of the tests' short attack inputs
    short = [b for b in blobs if b"HTTP/1" in b[:100] and not b.startswith(b"HTTP/") and len(b) <= 160][:120]
    for b in short:
        for i in range(len(b) + 1):
            cases["client"].append((splits(rng, b, "at%d" % i), 0, 8192, 32768))
    # small limits
    for req in reqs[:400]:
        cases["client"].append(([req], 1, 256, 1024))
    # huge heads
    for n in (8191, 8192, 8193, 9000, 32700, 32768, 33000):
        cases["client"].append(([b"GET /" + b"a" * n + b" HTTP/1.1\r\nHost: h\r\n\r\n"], 0, 8192, 32768))
        cases["client"].append(([b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * n + b"\r\n\r\n"], 0, 8192, 32768))
    # ---- chunked bodies straight into ChunkedBody
    for _ in range(3000):
        parts = []
        for _ in range(rng.randrange(0, 4)):
            size = rng.choice(chunk_sizes()) if rng.random() < 0.5 else b"%x" % rng.randrange(1, 40)
            data = b"d" * rng.choice([0, 1, 3, 5, 16, 40])
            end = rng.choice([b"\r\n", b"\r\n", b"\n", b"\r", b"", b"\r\n\r\n", b"x\r\n"])
            parts.append(size + rng.choice([b"\r\n", b"\r\n", b"\n", b"\r"]) + data + end)
        tr = rng.choice([b"", b"X-T: 1\r\n", b"X-T: 1\r\n Y\r\n", b"X-T:\x00\r\n", b"bad\r\n", b"X: \xff\r\n"])
        body = b"".join(parts) + rng.choice([b"0\r\n", b"0;x\r\n", b"00000\r\n", b"0\n"]) + tr + b"\r\n" + rng.choice([b"", b"GET / HTTP/1.1\r\n"])
        cases["chunked"].append((splits(rng, body, rng.choice(["whole", "rand", "bytes"])), rng.choice([64, 32768])))
    for b in blobs:
        if len(b) < 300:
            cases["chunked"].append(([b], 32768))
    # ---- backend responses
    resps: list[bytes] = [b for b in blobs if b.startswith(b"HTTP/")]
    status_lines = [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.1 999 X",
                    b"HTTP/1.1 000 X", b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/2 200 OK", b"HTTP/1.1 200 \xff\x80",
                    b"HTTP/1.1 200 a\x00b", b"HTTP/1.1 200 a\tb", b"ICY 200 OK", b"HTTP/1.1 101 Switching",
                    b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early", b"HTTP/1.1 199 X", b"HTTP/1.1 204 No Content",
                    b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 404 Not Found", b"HTTP/1.1  200 OK", b"HTTP/1.1 -200 OK",
                    b"HTTP/1.1 65536 OK", b"HTTP/1.1 4294967496 OK", b"HTTP/01.1 200 OK", b"HTTP/1.1 200 OK\r"]
    for _ in range(2500):
        parts = []
        if rng.random() < 0.2:
            parts.append(rng.choice([b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early\r\nLink: x\r\n\r\n",
                                     b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n"]))
        line = rng.choice(status_lines) if rng.random() < 0.4 else b"HTTP/1.1 200 OK"
        head = line + b"\r\n"
        body = b""
        k = rng.random()
        if k < 0.4:
            cl = rng.choice(cl_values()) if rng.random() < 0.4 else str(rng.randrange(0, 12)).encode()
            head += b"Content-Length: " + cl + b"\r\n"
            if rng.random() < 0.1:
                head += b"Content-Length: " + rng.choice([cl, b"7"]) + b"\r\n"
            body = b"b" * rng.choice([0, 3, 5, 11, 20])
        elif k < 0.75:
            head += b"Transfer-Encoding: " + rng.choice([b"chunked", b"Chunked", b"gzip, chunked", b"chunked, gzip",
                                                         b"identity", b"chunked, chunked"]) + b"\r\n"
            if rng.random() < 0.1:
                head += b"Content-Length: 3\r\n"
            ch = chunks(rng, b"c", 2, 25)
            body = b"".join(ch) + b"0\r\n" + rng.choice([b"", b"X-T: 1\r\n", b"Content-Length: 99\r\n"]) + b"\r\n"
        for _ in range(rng.choice([0, 1, 2])):
            head += rng.choice([b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Connection: content-length\r\n",
                                b"Keep-Alive: 5\r\n", b"Upgrade: h2c\r\n", b"Host: evil\r\n", b"X-V: a\x00b\r\n",
                                b"X-V: \xff\r\n", b" fold\r\n", b"X-A: 1\n", b"Set-Cookie: a=b\r\n", b"X-Forwarded-For: 1\r\n",
                                b"Trailer: X-T\r\n", b"Proxy-Authenticate: x\r\n"])
        resp = b"".join(parts) + head + b"\r\n" + body
        if rng.random() < 0.15:
            resp += rng.choice([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"garbage", b"\r\n"])
        resps.append(resp)
    for resp in resps:
        method = rng.choice([b"GET", b"GET", b"HEAD", b"POST"])
        v11 = rng.random() < 0.85
        req_kind = rng.choice(["none", "cl", "chunked"])
        for mode in (["whole", "rand"] + (["bytes"] if len(resp) < 300 else [])):
            cases["backend"].append((method, v11, req_kind, splits(rng, resp, mode), rng.random() < 0.6))
    # ---- rewrite: header lists (tests' own + generated) and heads
    names = [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-Ok", b"SOAPAction",
             b"Content-Type", b"Keep-Alive", b"TE", b"Upgrade", b"x-y"] + IDENT_NAMES
    vals = [b"h.example", b"5", b"chunked", b"close", b"x-forwarded-for, close", b"host", b"content-length", b"",
            b" 5 ", b"5, 5", b"5, 6", b"application/soap+xml; x", b"text/xml", b"[::1]:80", b"a@b", b"h:1:2",
            b"H.EXAMPLE.", b"keep-alive"] + cl_values()[:12] + ODD_VALUES[:10]
    for _ in range(3000):
        hl = [(rng.choice(names), rng.choice(vals)) for _ in range(rng.randrange(0, 7))]
        hlists.append(hl)
    tgt = [b"/", b"/api", b"/API/x", b"/public", b"/a/../api", b"/%61pi", b"/a;b", b"http://h.example/api",
           b"https://other.example/", b"https://u@h/", b"http://h.example#x", b"*", b"h.example:443", b"//api",
           b"/api?x=1", b"\\api", b"/\xff", b"HTTP://H.EXAMPLE/", b"http://[::1]/", b"https://h.example:99/api"]
    for hl in hlists:
        cases["rewrite"].append((hl, rng.choice(tgt), rng.random() < 0.5))
    heads = [b for b in blobs if b"\r\n" in b or b"\n" in b] + reqs
    for h in heads:
        cases["rewrite"].append(("head", h, rng.choice([16, 256, 8192])))
    # ---- ClientSide.response called directly with hostile header lists
    for _ in range(2000):
        hl = [(rng.choice(names[:6] + [b"X-Z"]), rng.choice(vals)) for _ in range(rng.randrange(0, 5))]
        cases["response"].append((rng.choice([100, 103, 200, 204, 304, 404, 500, 999]), hl,
                                  rng.choice([b"OK", b"", b"Fine", b"a\x00", b"\xff", b"a\r\nb", b"\t"]),
                                  rng.choice([b"GET", b"HEAD", b"POST"]), rng.random() < 0.8,
                                  [b"x" * rng.randrange(0, 7) for _ in range(rng.randrange(0, 3))]))
    with open(out_path, "wb") as f:
        pickle.dump(cases, f)
    print({k: len(v) for k, v in cases.items()}, file=sys.stderr)


# ----------------------------------------------------------------------------------------------- running
def canon(x: object) -> str:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return type(x).__name__ + "(" + ",".join(f"{f.name}={canon(getattr(x, f.name))}" for f in dataclasses.fields(x)) + ")"
    if isinstance(x, (list, tuple)):
        return ("[" if isinstance(x, list) else "(") + ",".join(canon(i) for i in x) + ("]" if isinstance(x, list) else ")")
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return repr(tuple(x))
    return repr(x)


def exc(e: BaseException) -> str:
    return f"EXC {type(e).__module__}.{type(e).__name__}: {e}"


def run(path: str) -> None:
    from sniproxy.compiled import http_build
    from sniproxy.proto import http_rewrite as rw
    from sniproxy.proto.http_backend import BackendExchange, field_block
    from sniproxy.proto.http_body import ChunkedBody
    from sniproxy.proto.http_server import ClientSide, RequestStarted, BodyReceived, RequestEnded

    print("# build", http_build(), file=sys.stderr)
    cases = pickle.load(open(path, "rb"))
    lim = int(os.environ.get("LIMIT", "0"))
    if lim:
        cases = {k: v[:lim] for k, v in cases.items()}
    rules = rw.StripRules.build(["X-MSS-IdNat-PS", "x_mss_profession"], ["X-Custom-Id", "x-tenant-*"])

    class R:
        exact = {"h.example": "flow-a", "other.example": "flow-b"}
        wildcards = {"wild.example": "flow-b"}

    p = print
    t0 = time.monotonic()

    # --- client
    for n, (chunks, plan, mline, mhead) in enumerate(cases["client"]):
        out: list[str] = []
        cs = ClientSide(mline, mhead)
        ex = None
        cycles = 0

        def handle(evs: list) -> None:
            nonlocal ex
            out.append(canon(evs))
            for e in evs:
                if type(e) is RequestStarted:
                    try:
                        out.append("framing " + canon(tuple(rw.check_framing(e.headers, lowered=True))))
                        out.append("host " + canon(rw.request_host(e.target, e.headers)))
                        h, removed = rw.forwarded_fields(e.headers, rules)
                        out.append("fwd " + canon(h) + " %d" % removed)
                        out.append("card " + canon(rw.needs_card(e.target, ["/api", "/admin/"])))
                        out.append("soap " + canon(rw.soap_version(e.headers)))
                        rw.check_fields(h)
                        if e.chunked:
                            h.append((b"transfer-encoding", b"chunked"))
                        ex = BackendExchange()
                        out.append("req " + canon(ex.request_parts(e.method, e.target, h, chunked=e.chunked, block=b"x-id: 1\r\n")))
                    except Exception as err:
                        out.append(exc(err))
                        ex = None
                elif type(e) is BodyReceived and ex is not None:
                    try:
                        out.append("bb " + canon(ex.body(e.data)))
                    except Exception as err:
                        out.append(exc(err))
                elif type(e) is RequestEnded and ex is not None:
                    try:
                        out.append("be " + canon(ex.end()))
                    except Exception as err:
                        out.append(exc(err))

        def respond() -> bool:
            nonlocal cycles
            while cs.waiting and cycles < 12:
                cycles += 1
                status, hdrs, reason, bodies = RESP_PLANS[(plan + cycles) % len(RESP_PLANS)]
                out.append(canon(cs.informational(100, [])))
                out.append(canon(cs.response(status, list(hdrs), reason)))
                for b in bodies:
                    out.append(canon(cs.body(b)))
                out.append(canon(cs.end()))
                handle(cs.next_request())
            return True

        try:
            for c in chunks:
                handle(cs.receive_data(c))
                respond()
            handle(cs.receive_data(b""))
            respond()
            out.append(f"state {cs.requests} {cs.buffered} {cs.waiting}")
            out.append(canon(cs.error(400, "bad <x> & y", "1.2")))
        except Exception as err:
            out.append(exc(err))
        p("client", n, " | ".join(out))
    p("# client done", file=sys.stderr)

    # --- chunked
    for n, (chunks, limit) in enumerate(cases["chunked"]):
        out = []
        cb = ChunkedBody(limit)
        try:
            for c in chunks:
                pieces, done = cb.feed(c)
                out.append(canon((pieces, done, cb.buffered)))
                if done:
                    out.append("rest " + canon(cb.rest()))
                    break
        except Exception as err:
            out.append(exc(err))
        p("chunked", n, " | ".join(out))

    # --- backend
    for n, (method, v11, req_kind, chunks, eof) in enumerate(cases["backend"]):
        out = []
        try:
            cs = ClientSide()
            req = method + b" / HTTP/1." + (b"1" if v11 else b"0") + b"\r\nHost: h.example\r\n"
            req += {"none": b"", "cl": b"Content-Length: 3\r\n", "chunked": b"Transfer-Encoding: chunked\r\n"}[req_kind if v11 else ("cl" if req_kind == "cl" else "none")]
            req += b"\r\n" + {"none": b"", "cl": b"abc", "chunked": b"3\r\nabc\r\n0\r\n\r\n"}[req_kind if v11 else ("cl" if req_kind == "cl" else "none")]
            evs = cs.receive_data(req)
            started = evs[0]
            ex = BackendExchange()
            hdrs = list(started.headers)
            out.append(canon(ex.request_parts(started.method, started.target, hdrs, chunked=started.chunked, block=b"")))
            for e in evs[1:]:
                if type(e) is BodyReceived:
                    out.append(canon(ex.body(e.data)))
                elif type(e) is RequestEnded:
                    out.append(canon(ex.end()))
            ended = False
            for c in chunks + ([b""] if eof else []):
                bevs = ex.receive_data(c)
                out.append(canon(bevs))
                for be in bevs:   # as driver/http.py does it
                    if ended:
                        break
                    kind = type(be).__name__
                    try:
                        if kind == "ResponseHead":
                            hh = rw.without_hop_by_hop(be.headers, strict=False)
                            out.append("ch " + canon(cs.response(be.status, hh, be.reason)))
                        elif kind == "ResponseBody":
                            out.append("cb " + canon(cs.body(be.data)))
                        elif kind == "ResponseEnd":
                            out.append("ce " + canon(cs.end()))
                            ended = True
                        elif kind == "Informational":
                            if be.status in (100, 103):
                                out.append("ci " + canon(cs.informational(be.status, [])))
                    except Exception as err:
                        out.append(exc(err))
                        ended = True
            out.append(canon(ex.receive_data(b"more")))
        except Exception as err:
            out.append(exc(err))
        p("backend", n, " | ".join(out))
    p("# backend done", file=sys.stderr)

    # --- rewrite
    from sniproxy.card.identity import CardIdentity, Layout, UnreadableCard
    import datetime
    hostile = ["CN=a\r\nX-Evil: 1", "é\x00", "OU=x,O=\"y\"", "a" * 300, "", "\\", "caf\u00e9 \u202e"]
    cards: list = [None, UnreadableCard(error="ValueError")]
    for s in hostile:
        kw = {}
        for f in dataclasses.fields(CardIdentity):
            t = str(f.type)
            if f.name == "facts":
                continue
            if "Layout" in t:
                kw[f.name] = list(Layout)[0]
            elif "datetime" in t:
                kw[f.name] = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
            elif t.startswith("int"):
                kw[f.name] = 5
            elif t == "bool":
                kw[f.name] = False
            else:
                kw[f.name] = s
        cards.append(CardIdentity(**kw))
    for n, case in enumerate(cases["rewrite"]):
        out = []
        if case[0] == "head":
            _, raw, mline = case
            try:
                rw.check_head(raw, mline)
                out.append("ok")
            except Exception as err:
                out.append(exc(err))
            p("head", n, " | ".join(out))
            continue
        hl, target, lowered = case
        if lowered:
            hl = [(a.lower(), b) for a, b in hl]
        for name, fn in [
            ("framing", lambda: tuple(rw.check_framing(hl, lowered=lowered))),
            ("hop", lambda: rw.without_hop_by_hop(hl)),
            ("hop-resp", lambda: rw.without_hop_by_hop(hl, strict=False)),
            ("strip", lambda: rw.strip_identity(hl, rules)),
            ("fwd", lambda: rw.forwarded_fields(hl, rules) if lowered else None),
            ("host", lambda: rw.request_host(target, hl)),
            ("hostof", lambda: [rw.host_of(v) for _, v in hl]),
            ("mis", lambda: [rw.misdirected(rw.host_of(v), R(), "flow-a") for _, v in hl]),
            ("card", lambda: rw.needs_card(target, ["/api", "/ADMIN/", "/", ""][n % 3:])),
            ("soap", lambda: rw.soap_version(hl)),
            ("fields", lambda: rw.check_fields(hl)),
            ("block", lambda: field_block(hl)),
            ("err", lambda: rw.error_response(400 + n % 200, target.decode("latin-1"), [None, "1.1", "1.2"][n % 3])),
            ("reason", lambda: rw.reason_phrase(400 + n % 200)),
        ]:
            try:
                out.append(name + " " + canon(fn()))
            except Exception as err:
                out.append(name + " " + exc(err))
        if n % 10 == 0:
            host = [None, "h.example", "a b", "[::1]", "é"][n % 5]
            ip = ["192.0.2.1", "2001:db8::1", "::ffff:1.2.3.4"][n % 3]
            chain = [(), (b"\x30\x03\x02\x01\x01",), (b"\x30\x00", b"\x30\x01\x00")][n % 3]
            card = cards[(n // 10) % len(cards)]
            facts = rw.TlsFacts(client_ip=ip, client_port=n, host=host, tls_version="TLSv1.3", cipher="X\r\nY",
                                cipher_bits=[None, 256][n % 2], session_id=["", "ab"][n % 2], chain_der=chain, card=card)
            try:
                ih = rw.identity_headers(list(rw.PROFILES), facts, [("idnat_ps", "X-MSS-IdNat-PS"), ("subject", "X-S")])
                out.append("id " + canon(ih))
                rw.check_fields(ih)
                out.append("idblock " + canon(field_block(ih)))
            except Exception as err:
                out.append("id " + exc(err))
        p("rewrite", n, " | ".join(out))

    # --- response() directly
    for n, (status, hl, reason, method, v11, bodies) in enumerate(cases["response"]):
        out = []
        cs = ClientSide()
        try:
            cs.receive_data(method + b" / HTTP/1." + (b"1" if v11 else b"0") + b"\r\nHost: h\r\n\r\n")
            out.append(canon(cs.response(status, list(hl), reason)))
            for b in bodies:
                out.append(canon(cs.body(b)))
            out.append(canon(cs.end()))
            out.append(canon(cs.next_request()))
        except Exception as err:
            out.append(exc(err))
        p("response", n, " | ".join(out))
    print("# done in %.1f s" % (time.monotonic() - t0), file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2])
    else:
        run(sys.argv[2])
