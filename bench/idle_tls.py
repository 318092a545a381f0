#!/usr/bin/env python3
"""Open N keep-alive TLS connections to a loopback gateway and hold them idle.

Used by `cargo xtask bench` (memory section). Each connection completes a TLS handshake,
sends one HTTP/1.1 request (keep-alive) and reads the response; then all stay open, idle.
Prints "READY <ok> <failed>" when done, then holds until stdin closes or --hold seconds.

    idle_tls.py --port 9443 --conns 10000 --path /plain/idle --hold 120
"""
import argparse
import resource
import socket
import ssl
import sys
import time
import select


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--path", default="/plain/idle")
    ap.add_argument("--hold", type=float, default=120.0)
    ap.add_argument("--budget", type=float, default=180.0, help="max seconds to open them all")
    a = ap.parse_args()
    if not a.host.startswith("127.") and a.host != "localhost":
        sys.exit("loopback only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.conns + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    req = ("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (a.path, a.host)).encode()
    held, failed = [], 0
    deadline = time.time() + a.budget
    for _ in range(a.conns):
        if time.time() > deadline:
            failed += a.conns - len(held) - failed
            break
        try:
            raw = socket.create_connection((a.host, a.port), timeout=5)
            s = ctx.wrap_socket(raw, server_hostname=a.host)
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
            held.append(s)
        except (OSError, ssl.SSLError):
            failed += 1
    print("READY %d %d" % (len(held), failed), flush=True)
    # Hold until stdin closes or the hold time is over.
    end = time.time() + a.hold
    while time.time() < end:
        r, _, _ = select.select([sys.stdin], [], [], 0.5)
        if r and not sys.stdin.readline():
            break
    alive = 0
    for s in held:
        try:
            s.setblocking(False)
            try:
                d = s.recv(1)
                if d:
                    alive += 1
            except (BlockingIOError, ssl.SSLWantReadError):
                alive += 1
        except OSError:
            pass
        s.close()
    print("CLOSED alive=%d" % alive, flush=True)


if __name__ == "__main__":
    main()
