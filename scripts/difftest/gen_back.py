"""Driver-level cases for drive_back.py: valid requests (identity fields to strip, bodies, pipelining) and the
backend responses of drive.py's cases.   python gen_back.py SANS_CASES.pkl OUT.pkl N"""
import os
import pickle
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drive  # noqa: E402

rng = random.Random(16017)
cases = pickle.load(open(sys.argv[1], "rb"))
MSG = b"mss-msg.mssante.fr"
resps = [b"".join(c[3]) for c in cases["backend"]]
def good():
    m = rng.choice([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE"])
    v = rng.choice([b"1.1"] * 5 + [b"1.0"])
    t = rng.choice([b"/x", b"/api/y", b"/a?b=c", b"https://" + MSG + b"/z", b"/"])
    h = m + b" " + t + b" HTTP/" + v + b"\r\n"
    if v == b"1.1" or rng.random() < 0.7:
        h += rng.choice([b"Host: " + MSG, b"host: " + MSG.upper() + b".", b"Host: " + MSG + b":443"]) + b"\r\n"
    for _ in range(rng.randrange(0, 5)):
        h += rng.choice(drive.IDENT_NAMES) + b": evil-" + bytes([rng.randrange(97, 123)]) + b"\r\n"
    if rng.random() < 0.3:
        h += rng.choice([b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Connection: x-forwarded-for\r\n",
                         b"Expect: 100-continue\r\n", b"Upgrade: websocket\r\nConnection: upgrade\r\n",
                         b"SOAPAction: urn:x\r\nContent-Type: text/xml\r\n", b"Content-Type: application/soap+xml\r\n",
                         b"TE: trailers\r\n", b"X-Ssl-Client-Cert: x\r\nX_SSL_CLIENT_CERT: y\r\n"])
    body = b""
    k = rng.random()
    if m in (b"POST", b"PUT") and k < 0.5:
        n = rng.choice([0, 1, 5, 100, 3000])
        h += b"Content-Length: %d\r\n" % n
        body = b"p" * n
    elif m in (b"POST", b"PUT") and v == b"1.1":
        h += b"Transfer-Encoding: chunked\r\n"
        body = b"".join(b"%x;e=1\r\n%s\r\n" % (n, b"q" * n) for n in [rng.randrange(1, 50) for _ in range(rng.randrange(0, 3))])
        body += b"0\r\n" + rng.choice([b"", b"X-T: 1\r\n"]) + b"\r\n"
    return h + b"\r\n" + body
out = []
errs = [None] * 30 + [ConnectionRefusedError(111, "Connection refused"), ValueError("bad port"), OSError("x")]
for i in range(int(sys.argv[3])):
    r = b"".join(good() for _ in range(rng.choice([1, 1, 1, 2, 3])))
    chunks = drive.splits(rng, r, rng.choice(["whole", "whole", "rand"]))
    rs = [drive.splits(rng, rng.choice(resps), rng.choice(["whole", "rand"])) + ([b"<EOF>"] if rng.random() < 0.2 else [])
          for _ in range(rng.randrange(1, 4))]
    out.append(("drv", chunks, rs, rng.choice(errs), rng.choice(["fort", "fort", "fort", None])))
GET = b"GET /x HTTP/1.1\r\nHost: " + MSG + b"\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nHost: " + MSG + b"\r\nContent-Length: 3\r\n\r\nabc"
out += [("hold", [GET], [], None, "fort"), ("hold", [POST], [], None, "fort")]   # connect timeout: 504
pickle.dump(out, open(sys.argv[2], "wb"))
print(len(out))
