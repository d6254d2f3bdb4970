"""Hostile and unusual HTTP clients, and ingest under scrape load (issues 14 and 19).

Each attack is reproduced against the built daemon with its exact expectation. Figures that depend
on the shared machine (drop ratios, latencies) are printed and asserted only with generous bounds.
"""
from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import socket
import threading
import time

from conftest import parse_exposition, start_daemon
from wire import counter


def config(tmp_path, **content) -> str:
    path = tmp_path / "http-config.json"
    path.write_text(json.dumps(content))
    return str(path)


def fill(daemon, n: int, name: str = "p2p.bytes_transferred.total") -> None:
    """n counter series with long-ish labels (blocking sends: all of them arrive)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(counter(name, i + 1, {"peer": f"peer-{i:06d}", "zone": "z" * 40}), daemon.socket_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and daemon.value("p2pmetricsd_series") != n:
        time.sleep(0.05)
    assert daemon.value("p2pmetricsd_series") == n


def read_all(s: socket.socket, timeout: float = 30) -> bytes:
    s.settimeout(timeout)
    raw = b""
    while chunk := s.recv(1 << 20):
        raw += chunk
    return raw


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        assert sep, "chunked body cut before its last chunk"
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return out
        out, rest = out + rest[:size], rest[size + 2:]


def decode_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Status line, headers (lower-case names) and the exact body: a response whose framing says
    it is incomplete fails the assertion instead of looking complete."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, "no complete head"
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), f"{len(body)} of {headers['content-length']} bytes"
    elif headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    else:
        raise AssertionError(f"body without a length or chunked framing: {lines[0]} {headers}")
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return lines[0], headers, body


def test_oversized_datagram_counts_its_real_size(daemon):
    big = counter("c", 1) + b"\x10\x00\x01" * 33_333  # 100,000-odd bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.sendto(big, daemon.socket_path)
        s.sendto(counter("c", 1), daemon.socket_path)
    assert daemon.wait_for("c", 1) == 1
    assert daemon.value("p2pmetricsd_datagrams_rejected_total", reason="oversized") == 1
    assert daemon.value("p2pmetricsd_bytes_received_total") == len(big) + len(counter("c", 1))


def test_half_closed_request_gets_the_whole_response(daemon):
    fill(daemon, 20_000)
    full = daemon.scrape_text().encode()
    assert len(full) > 1_000_000
    for version in (b"1.1", b"1.0"):
        with socket.create_connection(("127.0.0.1", daemon.port)) as s:
            s.sendall(b"GET /metrics HTTP/" + version + b"\r\nHost: x\r\n\r\n")
            s.shutdown(socket.SHUT_WR)  # what some clients do once their request is out
            status, headers, body = decode_response(read_all(s))
        assert status.endswith("200 OK")
        m = parse_exposition(body.decode())
        assert sum(1 for (name, _) in m if name == "p2p_bytes_transferred_total") == 20_000
        assert m[("p2p_bytes_transferred_total", frozenset({"peer": "peer-019999", "zone": "z" * 40}.items()))] == 20_000


def test_http_1_0_bodies_are_delimited_and_never_chunked(daemon):
    fill(daemon, 20_000)
    for accept_encoding in (b"", b"Accept-Encoding: gzip\r\n"):
        with socket.create_connection(("127.0.0.1", daemon.port)) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n" + accept_encoding + b"\r\n")
            raw = read_all(s)
        status, headers, body = decode_response(raw)
        assert status == "HTTP/1.0 200 OK"
        assert "transfer-encoding" not in headers
        assert "content-length" in headers  # a cut body can never look complete
        assert len(body) > 1_000_000 and body.endswith(b"\n")
        assert sum(1 for line in body.splitlines() if line.startswith(b"p2p_bytes_transferred_total{")) == 20_000
    # Keep-alive under 1.0: the same connection answers a second request after a full body.
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        s.settimeout(30)
        for _ in range(2):
            s.sendall(b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            raw = b""
            while b"\r\n\r\n" not in raw:
                raw += s.recv(65536)
            head = raw.partition(b"\r\n\r\n")[0].decode().lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            while len(raw.partition(b"\r\n\r\n")[2]) < length:
                raw += s.recv(1 << 20)
            assert len(raw.partition(b"\r\n\r\n")[2]) == length
