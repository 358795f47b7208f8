"""The lab's traffic generator: one stdlib-only process per namespace, driven by a JSON plan.

The lab runs this file by path inside a namespace (``ip netns exec NS python3 trafficgen.py
PLAN.json``). It binds the plan's listeners, makes the plan's connections and datagrams, touches
the plan's ``ready`` file, then holds everything open until ``lifetime`` seconds have passed.
``signal.alarm(lifetime)`` is a hard stop even if a thread hangs; every loop is bounded.

Example plan (the inside host of box 1):
    {"lifetime": 7200, "ready": "/run/natfleet-lab/ready/nflab-in1",
     "listen_tcp": [["198.18.1.10", 80]],
     "tcp_hold": [["198.18.1.10", "203.0.113.5", 443, 2]],
     "tcp_close": [["198.18.1.11", "203.0.113.5", 80, 2]],
     "tcp_half": [["198.18.1.12", "203.0.113.5", 80, 1]],
     "udp": [["198.18.1.10", "203.0.113.53", 53, 3]],
     "icmp": [["198.18.1.10", "203.0.113.9", 2]]}

A TCP client's first line tells the listener what to do when the client closes: ``close``
closes too (TIME_WAIT in conntrack), ``hold``/``half`` keep the socket (CLOSE_WAIT).
A ``fill`` plan instead sends one UDP datagram per (socket, port) pair and prints the count:
    {"fill": {"src": "198.18.1.10", "dst": "203.0.113.200", "flows": 1000,
              "ports": 1000, "first_port": 10000, "seconds_max": 60}}
"""

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

CONNECT_TRIES = 50  # x 0.1 s: listeners in other namespaces may still be starting
_KEEP = []  # sockets held open until the process ends
_LOCK = threading.Lock()


def _keep(sock):
    with _LOCK:
        _KEEP.append(sock)


def _serve_tcp_conn(conn):
    mode = b""
    conn.settimeout(None)
    try:
        while True:
            data = conn.recv(4096)
            if not data:  # the client closed its side
                if mode.startswith(b"close"):
                    conn.close()
                return  # hold/half: keep the socket, so conntrack shows CLOSE_WAIT
            if not mode:
                mode = data.strip()
            conn.sendall(b"ok\n")
    except OSError:
        conn.close()


def _listen_tcp(ip, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(128)
    _keep(srv)

    def accept_loop():
        while True:
            conn, _ = srv.accept()
            _keep(conn)
            threading.Thread(target=_serve_tcp_conn, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()


def _listen_udp(ip, port, answer):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, port))
    _keep(sock)

    def loop():
        while True:
            data, peer = sock.recvfrom(2048)
            if answer:
                sock.sendto(b"answer:" + data[:64], peer)

    threading.Thread(target=loop, daemon=True).start()


def _connect(src, dst, dport, mode):
    for _ in range(CONNECT_TRIES):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.bind((src, 0))
        try:
            sock.connect((dst, dport))
            sock.sendall(mode.encode() + b"\n")
            sock.recv(64)
            return sock
        except OSError:
            sock.close()
            time.sleep(0.1)
    raise SystemExit(f"trafficgen: cannot connect {src} -> {dst}:{dport}")


def _tcp(items, mode):
    for src, dst, dport, count in items:
        for _ in range(count):
            sock = _connect(src, dst, dport, mode)
            if mode == "close":
                sock.close()
            elif mode == "half":
                sock.shutdown(socket.SHUT_WR)
                _keep(sock)
            else:
                _keep(sock)


def _await_answer(sock):
    """Read one answer if it comes within the socket's timeout (some never do), then close."""
    with contextlib.suppress(socket.timeout):
        sock.recvfrom(2048)
    sock.close()


def _udp(items):
    for src, dst, dport, count in items:
        for n in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(0.5)
            sock.bind((src, 0))
            sock.sendto(b"query %d" % n, (dst, dport))
            _await_answer(sock)


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _icmp(items):
    ident = os.getpid() & 0xFF00
    for src, dst, count in items:
        for _ in range(count):
            ident = (ident + 1) & 0xFFFF
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            sock.settimeout(0.5)
            sock.bind((src, 0))
            header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
            payload = b"natfleet-lab"
            header = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1)
            sock.sendto(header + payload, (dst, 0))
            _await_answer(sock)


def fill(src, dst, flows, ports, first_port, seconds_max):
    """Send about ``flows`` datagrams, one per (socket, port); return how many were sent."""
    deadline = time.monotonic() + seconds_max
    sent = 0
    while sent < flows and time.monotonic() < deadline:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((src, 0))
        for port in range(first_port, first_port + min(ports, flows - sent)):
            try:
                sock.sendto(b"x", (dst, port))
            except OSError:  # ENOBUFS under load: skip, the count says what was sent
                continue
            sent += 1
        sock.close()
    return sent


def run(plan):
    """Carry out ``plan`` (see the module docstring); returns when its lifetime is over."""
    lifetime = int(plan.get("lifetime", 7200))
    signal.alarm(lifetime + 1)  # the hard stop: SIGALRM's default action ends the process
    if plan.get("fill"):
        spec = plan["fill"]
        print(
            fill(
                spec["src"],
                spec["dst"],
                int(spec["flows"]),
                int(spec["ports"]),
                int(spec["first_port"]),
                float(spec["seconds_max"]),
            )
        )
        return
    for ip, port in plan.get("listen_tcp", []):
        _listen_tcp(ip, port)
    for ip, port, answer in plan.get("listen_udp", []):
        _listen_udp(ip, port, answer)
    _tcp(plan.get("tcp_hold", []), "hold")
    _tcp(plan.get("tcp_close", []), "close")
    _tcp(plan.get("tcp_half", []), "half")
    _udp(plan.get("udp", []))
    _icmp(plan.get("icmp", []))
    if plan.get("ready"):
        with open(plan["ready"], "w") as handle:
            handle.write(f"{os.getpid()}\n")
    time.sleep(lifetime)


if __name__ == "__main__":
    with open(sys.argv[1]) as plan_file:
        run(json.load(plan_file))
