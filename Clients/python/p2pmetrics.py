"""p2pmetrics - pure-Python client of p2pmetricsd, the metrics sidecar of p2p VM image clusters.

Speaks wire protocol v1 (Clients/PROTOCOL.md) natively: no C library, no ctypes, Python >= 3.9,
standard library only. Byte for byte the encoder of the C and Swift clients (checked against
Clients/testdata/vectors.txt). Integers are exact to 2^64 (a 5 GiB byte count stays 5 GiB) and
floats are floats.

    import p2pmetrics
    m = p2pmetrics.Client()                  # socket: $P2PM_SOCKET, else /run/p2pmetricsd/ingest.sock
    m.record_image_import("microvm", True, 5 << 30)
    with m.transfer(labels={"peer": "node-7"}):
        download()
    m.counter_add("my.jobs.total", 1, {"queue": "fast"})

Delivery, the same guarantees as the C client's default mode (P2PM_BUFFERED):
* Calls append to a pending datagram (<= 8,192 bytes) and return. A background thread sends it
  at the latest LINGER seconds (5 ms) after its first sample; a full datagram is sent at once.
* When the sidecar's queue is full (the kernel's default net.unix.max_dgram_qlen is 10), the
  flusher keeps the samples and retries when there is room; a call whose samples do not fit
  waits for room up to `wait` seconds (default 0.05) before the full datagram is dropped. After
  such a timed-out wait (a stopped sidecar) calls stop waiting until a datagram gets through.
  An absent sidecar never makes a call wait. So no call takes longer than about 2 x `wait`.
* A dropped datagram is counted (stats), and the count travels in-band in the next datagram
  (p2pmetricsd_client_dropped_datagrams_total). A transfer's +1/-1 on p2p.transfers.active is
  never lost: when its datagram is dropped it is kept and added to a later datagram.
* Pending samples are sent by flush(), close(), when the client is garbage-collected, and at
  normal interpreter exit (atexit); after
  os.fork() the child starts with nothing pending (the parent sends its own).
Modes: mode="immediate" sends each call as its own datagram without waiting (returns False when it
was dropped); mode="blocking" sends each call at once, waiting up to `wait` for room.

Invalid input (names, labels, values; PROTOCOL.md 1.3-1.5) raises ValueError and sends nothing.
"""
from __future__ import annotations

import atexit
import errno
import math
import os
import re
import select
import socket
import struct
import threading
import time
import weakref
from contextlib import contextmanager

__all__ = ["Client", "Transfer", "uvarint", "DEFAULT_SOCKET", "MAX_DATAGRAM", "LINGER", "SEND_WAIT"]

DEFAULT_SOCKET = "/run/p2pmetricsd/ingest.sock"
SOCKET_ENV = "P2PM_SOCKET"
MAX_DATAGRAM = 8192
LINGER = 0.005          # longest time a sample waits in the pending datagram (buffered mode)
SEND_WAIT = 0.05        # default longest wait of a call for room in the sidecar's queue
RECONNECT = 0.1         # minimum interval between two connection attempts

_MAGIC, _SERIES, _DROPPED = 0xF5, 0x01, 0x02
_KINDS = {"counter": 1, "gauge_set": 2, "gauge_add": 3, "histogram": 4, "distinct": 5, "topk": 6}
_HDR = 12                # magic + dropped record (tag + 10-byte varint)
_CAP = MAX_DATAGRAM - _HDR
_MAX_SERIES = 4096
_DEBT_ROOM = 40          # room kept for the fold of undelivered transfer adds
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:.]{0,199}\Z")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
_ACTIVE = "p2p.transfers.active"
_GONE = {"ECONNREFUSED", "ENOTCONN", "ENOENT", "ECONNRESET", "EPIPE", "EDESTADDRREQ"}


def uvarint(n: int) -> bytes:
    """The unsigned LEB128 varint of n (PROTOCOL.md 1.1); also used by the integration tests."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(b: bytes) -> bytes:
    return uvarint(len(b)) + b


def _value(v) -> tuple[int, bytes]:
    """Canonical form of a value (PROTOCOL.md 3.1): uvarint, zigzag svarint, or f64."""
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, float) and math.isfinite(v) and v == math.floor(v):
        v = int(v) if -(2**63) <= v < 2**64 else v
    if isinstance(v, int):
        if 0 <= v < 2**64:
            return 0, uvarint(v)
        if -(2**63) <= v < 0:
            return 1, uvarint(((v << 1) ^ (v >> 63)) & (2**64 - 1))
        raise ValueError(f"integer out of range: {v}")
    return 2, struct.pack("<d", float(v))


def _series_key(name: str, labels) -> tuple:
    """Validates a name and label list; returns (name, ((key, value), ...)) as bytes."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"invalid metric name: {name!r}")
    exposed = name.replace(".", "_")
    if exposed.startswith("p2pmetricsd_"):
        raise ValueError(f"reserved metric name: {name!r}")
    items = tuple(labels.items() if isinstance(labels, dict) else labels or ())
    if len(items) > 16:
        raise ValueError("more than 16 labels")
    seen = set()
    out = []
    for k, v in items:
        if not isinstance(k, str) or not _LABEL.match(k) or k.startswith("__") or k in seen:
            raise ValueError(f"invalid or repeated label name: {k!r}")
        if not isinstance(v, str):
            raise ValueError(f"label value must be a str: {v!r}")
        vb = v.encode("utf-8")   # surrogates raise UnicodeEncodeError, a ValueError
        if len(vb) > 1024:
            raise ValueError("label value longer than 1,024 bytes")
        seen.add(k)
        out.append((k.encode(), vb))
    return name.encode(), tuple(out)


class _Sample:
    __slots__ = ("kind", "key", "form", "payload")

    def __init__(self, kind: str, name: str, labels, value=None, item: bytes | None = None):
        key = _series_key(name, labels)
        label_names = {k for k, _ in key[1]}
        if kind == "histogram" and b"le" in label_names:
            raise ValueError('a histogram may not have a label named "le"')
        if kind == "topk" and b"key" in label_names:
            raise ValueError('a top-K metric may not have a label named "key"')
        self.kind, self.key = _KINDS[kind], key
        if item is not None:
            self.form, self.payload = 3, _string(item)
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"value must be a number: {value!r}")
        if kind != "gauge_set" and isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"value must be finite: {value!r}")
        if kind == "counter" and value < 0:
            raise ValueError(f"a counter cannot go down: {value!r}")
        self.form, self.payload = _value(value)


class Transfer:
    """An active transfer (Client.start_transfer()): end() it once; ending again does nothing."""

    def __init__(self, client: "Client", labels):
        self._client, self._labels = client, labels
        self._start = time.monotonic()
        self._active = True
        _Sample("histogram", "p2p.transfer.duration", labels, 0.0)   # validate now
        client._submit([_Sample("gauge_add", _ACTIVE, None, 1)], active_delta=1)

    def end(self) -> bool:
        """p2p.transfers.active -= 1 and p2p.transfer.duration observes the elapsed seconds, in one
        datagram. Returns whether the datagram got through (immediate modes) or was buffered."""
        if not self._active:
            return True
        self._active = False
        secs = max(time.monotonic() - self._start, 0.0)
        return self._client._submit([
            _Sample("gauge_add", _ACTIVE, None, -1),
            _Sample("histogram", "p2p.transfer.duration", self._labels, secs)], active_delta=-1)


_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _flush_all_at_exit() -> None:
    for c in list(_clients):
        c.flush()


def _after_fork_in_child() -> None:
    for c in list(_clients):
        c._after_fork()


atexit.register(_flush_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Client:
    """A connection to the sidecar. Thread-safe; see the module's documentation."""

    def __init__(self, socket_path: str | None = None, mode: str = "buffered",
                 wait: float = SEND_WAIT):
        if mode not in ("buffered", "immediate", "blocking"):
            raise ValueError(f"unknown mode: {mode!r}")
        self.path = socket_path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
        self.mode, self.wait = mode, (0.0 if mode == "immediate" else float(wait))
        self._lock = threading.Condition(threading.Lock())
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._connected = False
        self._last_try = None
        self._last_err = 0
        self._stalled = False
        self._closed = False
        self._batch_depth = 0
        self._pending_drops = 0
        self._debt = 0                  # p2p.transfers.active adds not delivered yet
        self._debt_try = 0.0
        self.stats = dict(sent_datagrams=0, sent_samples=0, dropped_datagrams=0,
                          dropped_samples=0, kept_samples=0, resent_adds=0, waits=0)
        self._reset()
        self._reconnect()
        self._flusher = None
        self._start_flusher()
        _clients.add(self)

    # ---- the generic API ----

    def counter_add(self, name: str, value, labels=None) -> bool:
        """Adds value (int exact to 2^64, or finite float >= 0) to the counter name{labels}."""
        return self._submit([_Sample("counter", name, labels, value)])

    def gauge_set(self, name: str, value, labels=None) -> bool:
        """Sets the gauge name{labels} (any value, NaN and infinities included)."""
        return self._submit([_Sample("gauge_set", name, labels, value)])

    def gauge_add(self, name: str, delta, labels=None) -> bool:
        """Adds delta (finite, may be negative) to the gauge name{labels}."""
        return self._submit([_Sample("gauge_add", name, labels, delta)])

    def histogram_observe(self, name: str, value, labels=None) -> bool:
        """Records one observation (finite) into the histogram name{labels}."""
        return self._submit([_Sample("histogram", name, labels, value)])

    def distinct_add(self, name: str, key: bytes | str, labels=None) -> bool:
        """Adds key (<= 1,024 bytes) to the distinct count name{labels} (HyperLogLog)."""
        item = key.encode() if isinstance(key, str) else bytes(key)
        if len(item) > 1024:
            raise ValueError("distinct key longer than 1,024 bytes")
        return self._submit([_Sample("distinct", name, labels, item=item)])

    def topk_add(self, name: str, key: str, labels=None) -> bool:
        """Counts one occurrence of key (1-128 bytes of UTF-8) in the top-K sketch name{labels}."""
        item = key.encode("utf-8")
        if not 1 <= len(item) <= 128:
            raise ValueError("top-K key must be 1-128 bytes")
        return self._submit([_Sample("topk", name, labels, item=item)])

    # ---- the seed's helpers (one datagram each; labels: extra labels on every sample) ----

    def record_image_import(self, artifact_type: str, success: bool, size_bytes: int,
                            labels=None) -> bool:
        own = [("artifact_type", artifact_type), *_pairs(labels)]
        s = [_Sample("counter", "p2p.image.imports.total", own, 1)]
        if not success:
            s.append(_Sample("counter", "p2p.image.imports.failed", own, 1))
        elif size_bytes:
            s.append(_Sample("counter", "p2p.bytes_transferred.total", own, size_bytes))
        return self._submit(s)

    def record_image_download(self, image_id, success: bool, duration_secs: float,
                              labels=None) -> bool:
        del image_id   # not a label: one series per image would be unbounded
        s = [_Sample("counter", "p2p.image.downloads.total", labels, 1)]
        if not success:
            s.append(_Sample("counter", "p2p.image.downloads.failed", labels, 1))
        s.append(_Sample("histogram", "p2p.transfer.duration", labels, duration_secs))
        return self._submit(s)

    def record_chunk_transfer(self, chunk_size: int, deduplicated: bool, labels=None,
                              chunk_hash: str | None = None) -> bool:
        if deduplicated:
            s = [_Sample("counter", "p2p.chunks_deduplicated.total", labels, 1)]
        else:
            s = [_Sample("counter", "p2p.chunks_transferred.total", labels, 1),
                 _Sample("counter", "p2p.bytes_transferred.total", labels, chunk_size)]
        if chunk_hash is not None:
            s.append(_Sample("distinct", "p2p.chunks.unique", None, item=chunk_hash.encode()))
        return self._submit(s)

    def record_chunk_request(self, chunk_hash: str) -> bool:
        return self.topk_add("p2p.chunks.requested", chunk_hash)

    def record_verification(self, success: bool, verification_type: str) -> bool:
        name = "p2p.verification.success" if success else "p2p.verification.failed"
        return self._submit([_Sample("counter", name, {"verification_type": verification_type}, 1)])

    def record_cache_access(self, hit: bool, cache_type: str) -> bool:
        name = "p2p.cache.hits" if hit else "p2p.cache.misses"
        return self._submit([_Sample("counter", name, {"cache_type": cache_type}, 1)])

    def start_transfer(self, labels=None) -> Transfer:
        """p2p.transfers.active += 1; labels go on the duration observed by Transfer.end()."""
        return Transfer(self, labels)

    @contextmanager
    def transfer(self, labels=None):
        """A transfer around a block: ended when the block returns or raises."""
        t = self.start_transfer(labels)
        try:
            yield t
        finally:
            t.end()

    # ---- sending control ----

    def set_mode(self, mode: str, wait: float = SEND_WAIT) -> None:
        """Switches to "buffered", "immediate" or "blocking" (see the module), sending what is
        pending first."""
        if mode not in ("buffered", "immediate", "blocking"):
            raise ValueError(f"unknown mode: {mode!r}")
        with self._lock:
            if not self._batch_depth:
                self._send_pending(self._call_wait(), keep=None)
            self.mode, self.wait, self._stalled = mode, (0.0 if mode == "immediate" else wait), False
            if mode == "buffered" and self._flusher is None:
                self._start_flusher()

    @contextmanager
    def batch(self):
        """Within the block, samples of every thread share datagrams and are sent when a datagram
        is full or when the (outermost) block ends; the flusher leaves them alone."""
        with self._lock:
            self._batch_depth += 1
        try:
            yield self
        finally:
            with self._lock:
                self._batch_depth -= 1
                if not self._batch_depth:
                    self._send_pending(self._call_wait(), keep=None)

    def flush(self) -> bool:
        """Sends what is pending (and any undelivered transfer adds). False: it was dropped."""
        with self._lock:
            ok = self._send_pending(self._call_wait(), keep=None)
            if self._debt:
                self._send_pending(self._call_wait(), keep="always")
            return ok

    def close(self) -> None:
        """Flushes, stops the flusher thread and closes the socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()
        self.flush()
        self._sock.close()
        _clients.discard(self)

    def __del__(self):
        # a client dropped without close() still sends what it holds
        try:
            self.close()
        except Exception:   # interpreter shutdown: the exit flush has run already
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- internals ----

    def _reset(self) -> None:
        self._records = bytearray()
        self._series: dict[tuple, int] = {}
        self._samples = 0
        self._active_pending = 0
        self._kept_pending = 0
        self._first_at = 0.0

    def _start_flusher(self) -> None:
        if self.mode == "buffered":
            self._flusher = threading.Thread(target=_flusher_main, args=(weakref.ref(self),),
                                             name="p2pmetrics-flusher", daemon=True)
            self._flusher.start()

    def _after_fork(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._reset()
        self._pending_drops = 0
        self._debt = 0
        self._flusher = None
        self._start_flusher()

    def _call_wait(self) -> float:
        if self.mode == "immediate" or (self.mode == "buffered" and self._stalled):
            return 0.0
        return self.wait

    def _encode(self, s: _Sample) -> bytes:
        index = self._series.get(s.key)
        rec = b""
        if index is None:
            index = len(self._series)
            name, labels = s.key
            rec = bytes([_SERIES]) + _string(name) + uvarint(len(labels)) + b"".join(
                _string(k) + _string(v) for k, v in labels)
        return rec + bytes([s.kind << 4 | s.form]) + uvarint(index) + s.payload

    def _append(self, group: list[_Sample], folding: bool = False) -> bool:
        """Appends all samples of a group, or none (False: they do not fit). While transfer adds
        wait to be resent, room for their fold is kept (`folding`: the fold itself)."""
        size, series = len(self._records), dict(self._series)
        keep = 0 if folding or not self._debt else _DEBT_ROOM
        for s in group:
            enc = self._encode(s)
            if (len(self._records) + len(enc) > _CAP - keep
                    or len(self._series) >= _MAX_SERIES - (1 if keep else 0)):
                self._records[size:] = b""
                self._series = series
                return False
            if s.key not in self._series:
                self._series[s.key] = len(self._series)
            self._records += enc
        return True

    def _submit(self, group: list[_Sample], active_delta: int = 0) -> bool:
        with self._lock:
            while not self._append(group):
                if not self._records:
                    raise ValueError("the samples of this call do not fit in one datagram")
                self._send_pending(self._call_wait(), keep=None)
            was_empty = self._samples == 0
            self._samples += len(group)
            if active_delta:
                self._active_pending += active_delta
                self._kept_pending += 1
            if self._batch_depth:
                return True
            if self.mode != "buffered":
                return self._send_pending(self._call_wait(), keep=None)
            if was_empty:
                self._first_at = time.monotonic()
                self._lock.notify()
            return True

    def _reconnect(self) -> int:
        now = time.monotonic()
        if self._last_try is not None and now - self._last_try < RECONNECT:
            return self._last_err or errno.ECONNREFUSED
        self._last_try = now
        try:
            self._sock.connect(self.path)
        except OSError as e:
            self._last_err = e.errno or errno.ECONNREFUSED
            return self._last_err
        self._connected, self._last_err = True, 0
        return 0

    def _transmit(self, data: bytes, wait: float) -> int:
        """Sends one datagram; waits up to `wait` s for room. 0, or an errno value."""
        if not self._connected and self._reconnect():
            return self._last_err
        deadline, retried = None, False
        while True:
            try:
                self._sock.send(data)
                return 0
            except InterruptedError:
                continue
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    if wait <= 0:
                        return errno.EAGAIN
                    deadline = now + wait
                    self.stats["waits"] += 1
                if now >= deadline:
                    return errno.EAGAIN
                p = select.poll()
                p.register(self._sock, select.POLLOUT)
                p.poll(max(1, math.ceil((deadline - now) * 1000)))
            except OSError as e:
                if errno.errorcode.get(e.errno) not in _GONE:
                    return e.errno or errno.EIO
                self._connected = False
                if retried or self._reconnect():
                    return e.errno
                retried = True

    def _send_pending(self, wait: float, keep) -> bool:
        """Sends the pending datagram (drop report first, undelivered transfer adds folded in).
        keep: None drops it on failure (counted); "full" keeps it when the queue is full;
        "always" keeps it on any failure (uncounted)."""
        if not self._records and not (self._debt and keep == "always"):
            return True
        size, series, debt = len(self._records), dict(self._series), self._debt
        folded = bool(debt) and self._append([_Sample("gauge_add", _ACTIVE, None, debt)], folding=True)
        head = bytes([_MAGIC]) + (bytes([_DROPPED]) + uvarint(self._pending_drops)
                                  if self._pending_drops else b"")
        err = self._transmit(head + bytes(self._records), wait)
        if err and (keep == "always" or (keep == "full" and err == errno.EAGAIN)):
            self._records[size:] = b""
            self._series = series
            return False
        st = self.stats
        if not err:
            self._pending_drops, self._stalled = 0, False
            self._debt -= debt if folded else 0
            st["sent_datagrams"] += 1
            st["sent_samples"] += self._samples
            st["resent_adds"] += int(folded)
        else:
            self._pending_drops += 1
            self._debt += self._active_pending
            st["dropped_datagrams"] += 1
            st["dropped_samples"] += self._samples - self._kept_pending
            st["kept_samples"] += self._kept_pending
            if err == errno.EAGAIN and wait > 0 and self.mode == "buffered":
                self._stalled = True
            if self._debt:
                self._lock.notify()
        self._reset()
        return not err


def _pairs(labels) -> list:
    return list(labels.items() if isinstance(labels, dict) else labels or ())


def _flusher_main(ref) -> None:
    """Sends the pending datagram LINGER after its first sample; keeps it while the queue is full;
    delivers undelivered transfer adds every RECONNECT seconds. Holds only a weak reference."""
    while True:
        c = ref()
        if c is None:
            return
        with c._lock:
            if c._closed:
                return
            now = time.monotonic()
            if c._records and not c._batch_depth:
                due = c._first_at + LINGER
                if now < due:
                    c._lock.wait(due - now)
                elif not c._send_pending(0, keep="full") and c._records:
                    c._lock.wait(LINGER)   # no room: try again shortly (calls go on meanwhile)
            elif c._debt and not c._records:
                if now - c._debt_try >= RECONNECT:
                    c._debt_try = now
                    c._send_pending(0, keep="always")
                else:
                    c._lock.wait(RECONNECT)
            else:
                c._lock.wait(1.0)
        del c
