"""The socket contract of contrib/systemd: p2pmetricsd started the way systemd starts it.

The units (contrib/systemd/p2pmetricsd.socket, p2pmetricsd-http.socket, p2pmetricsd.service)
promise that PID 1 owns the sockets and p2pmetricsd only inherits them:

* fd 3.. with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES naming them "ingest" (an AF_UNIX
  SOCK_DGRAM socket, already bound) and "http" (an AF_INET SOCK_STREAM socket, already
  listening); the daemon takes them by name and binds nothing of its own;
* the sockets outlive the daemon: across a restart clients keep sending, the kernel queues the
  datagrams, and no increment is lost or counted twice;
* Type=notify: READY=1 (and STATUS=) once serving, WATCHDOG=1 while WATCHDOG_USEC is set.

The tests create the sockets themselves (there is no systemd in the test environment) and
hand them over like PID 1 would. The last tests check the unit files with systemd-analyze.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import DAEMON_BIN, ROOT, parse_exposition
from wire import counter

CONTRIB = ROOT / "contrib"
UNITS = CONTRIB / "systemd"
SHUTDOWN_LINE = re.compile(r"p2pmetricsd: shutdown: datagrams_received=(\d+) samples_applied=(\d+)")
MAX_EXPOSURE = 2.0

needs_daemon = pytest.mark.skipif(not DAEMON_BIN.exists(), reason=f"{DAEMON_BIN} is not built")

# Runs in the child between fork and the daemon: moves the inherited sockets to fds 3 and 4 (in
# LISTEN_FDNAMES order) and sets LISTEN_PID to its own pid, which exec keeps.
SHIM = r"""
import os, sys
fds = [int(x) for x in os.environ.pop("_TEST_FDS").split(",")]
for i, fd in enumerate(fds):
    os.dup2(fd, 3 + i)          # dup2 leaves the new fd inheritable
for fd in fds:
    if fd >= 3 + len(fds):
        os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""


def counter_datagram(name: str, value: int) -> bytes:
    """One datagram: counter name += value (no labels)."""
    return counter(name, value)


# ---- systemd-style launch -------------------------------------------------------------------

class Sockets:
    """The two sockets PID 1 would create for the units, owned by the test (they outlive daemons)."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "run"
        self.dir.mkdir()
        self.ingest_path = str(self.dir / "ingest.sock")
        self.ingest = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ingest.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)   # PassCredentials=yes
        self.ingest.bind(self.ingest_path)
        self.http = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.http.bind(("127.0.0.1", 0))
        self.http.listen(128)
        self.port = self.http.getsockname()[1]

    def fd(self, name: str) -> int:
        return {"ingest": self.ingest, "http": self.http}[name].fileno()

    def inode(self, name: str) -> int:
        return os.fstat(self.fd(name)).st_ino

    def close(self):
        self.ingest.close()
        self.http.close()


class Activated:
    """A p2pmetricsd process started with inherited sockets (LISTEN_FDS) and no --socket/--listen."""

    def __init__(self, socks: Sockets, log: Path, order=("ingest", "http"), env_extra: dict | None = None,
                 args: tuple[str, ...] = ()):
        self.socks = socks
        self.log = log
        # Park the sockets on high fds first, so that moving them to 3 and 4 cannot clobber one.
        high = [fcntl.fcntl(socks.fd(n), fcntl.F_DUPFD_CLOEXEC, 100) for n in order]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
        env.update({"LISTEN_FDS": str(len(order)), "LISTEN_FDNAMES": ":".join(order),
                    "_TEST_FDS": ",".join(map(str, high))})
        env.update(env_extra or {})
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", SHIM, str(DAEMON_BIN), *args],
                                         pass_fds=high, env=env, stdout=subprocess.DEVNULL,
                                         stderr=open(log, "ab"))
        finally:
            for fd in high:
                os.close(fd)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.socks.port}/metrics"

    def scrape(self) -> dict:
        with urllib.request.urlopen(self.url(), timeout=10) as r:
            assert r.status == 200
            return parse_exposition(r.read().decode())

    def wait_serving(self, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"p2pmetricsd exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                return self.scrape()
            except OSError:
                time.sleep(0.05)
        raise AssertionError("p2pmetricsd did not serve /metrics on the inherited socket: " + self.log.read_text())

    def value(self, name: str) -> float | None:
        return self.scrape().get((name, frozenset()))

    def wait_value(self, name: str, expected: float, timeout: float = 20.0) -> float | None:
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.value(name)
            if v == expected:
                return v
            time.sleep(0.05)
        return v

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("p2pmetricsd did not exit within 15s of SIGTERM")
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sockets(tmp_path):
    s = Sockets(tmp_path)
    yield s
    s.close()


@pytest.fixture
def launched():
    """Collects started daemons and kills whatever is still running at the end."""
    procs: list[Activated] = []
    yield procs
    for p in procs:
        p.kill()


def shutdown_counts(log: Path, occurrence: int = -1) -> tuple[int, int]:
    lines = SHUTDOWN_LINE.findall(log.read_text(errors="replace"))
    assert lines, f"no 'p2pmetricsd: shutdown: datagrams_received=N samples_applied=M' line in: {log.read_text()}"
    dg, applied = lines[occurrence]
    return int(dg), int(applied)


def sender(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.settimeout(60)  # blocking sends (a full queue waits), but never forever
    s.connect(path)
    return s


# ---- /proc: which sockets does the daemon hold? ---------------------------------------------

def _socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            out.add(int(m.group(1)))
    return out


def _inet_inodes(pid: int, table: str, state: str | None) -> set[int]:
    out = set()
    try:
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
    except FileNotFoundError:
        return out
    for line in lines:
        f = line.split()
        if state is None or f[3] == state:
            out.add(int(f[9]))
    return out


def _bound_unix_inodes(pid: int) -> dict[int, str]:
    out = {}
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8:
            out[int(f[6])] = f[7]
    return out


# ---- tests ------------------------------------------------------------------------------------

@needs_daemon
@pytest.mark.parametrize("order", [("ingest", "http"), ("http", "ingest")], ids=["ingest:http", "http:ingest"])
def test_serves_on_inherited_sockets_and_binds_nothing(tmp_path, sockets, launched, order):
    """Started with LISTEN_FDS only (no --socket/--listen), in either fd order: the daemon picks the
    sockets by name, serves /metrics and ingests on them, and opens no listener of its own."""
    before = sorted(os.listdir(sockets.dir))
    default_sock_existed = os.path.exists("/run/p2pmetricsd/ingest.sock")

    d = Activated(sockets, tmp_path / "daemon.log", order=order)
    launched.append(d)
    d.wait_serving()

    with sender(sockets.ingest_path) as s:
        s.send(counter_datagram("p2p.image.downloads.total", 3))
    assert d.wait_value("p2p_image_downloads_total", 3) == 3

    pid = d.proc.pid
    held = _socket_inodes(pid)
    assert sockets.inode("ingest") in held and sockets.inode("http") in held
    tcp_listeners = (_inet_inodes(pid, "tcp", "0A") | _inet_inodes(pid, "tcp6", "0A")) & held
    assert tcp_listeners == {sockets.inode("http")}, "the daemon listens on a TCP socket of its own"
    udp = (_inet_inodes(pid, "udp", None) | _inet_inodes(pid, "udp6", None)) & held
    assert udp == set(), "the daemon opened a UDP socket"
    bound_unix = {ino: path for ino, path in _bound_unix_inodes(pid).items() if ino in held}
    assert set(bound_unix) <= {sockets.inode("ingest")}, f"the daemon bound Unix sockets of its own: {bound_unix}"

    assert sorted(os.listdir(sockets.dir)) == before, "the daemon created files next to the inherited socket"
    if not default_sock_existed:
        assert not os.path.exists("/run/p2pmetricsd/ingest.sock"), "the daemon bound the default socket path"
    assert d.terminate() == 0


@needs_daemon
def test_sigterm_drains_the_queued_datagrams(tmp_path, sockets, launched):
    """Datagrams already queued on the ingest socket when SIGTERM arrives are applied by the
    exiting daemon, and it reports them in its shutdown line."""
    d = Activated(sockets, tmp_path / "daemon.log")
    launched.append(d)
    d.wait_serving()
    n = 50
    with sender(sockets.ingest_path) as s:
        for _ in range(n):
            s.send(counter_datagram("sa.drain.total", 1))
    assert d.wait_value("sa_drain_total", n) == n

    # Freeze the daemon, fill the kernel queue to the brim, then SIGTERM and thaw it.
    os.kill(d.proc.pid, signal.SIGSTOP)
    queued = 0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.connect(sockets.ingest_path)
            while queued < 100_000:
                try:
                    s.send(counter_datagram("sa.drain.total", 1))
                except BlockingIOError:
                    break
                queued += 1
        assert queued > 0
        os.kill(d.proc.pid, signal.SIGTERM)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    assert d.terminate() == 0
    received, applied = shutdown_counts(d.log)
    print(f"queued while stopped: {queued}; shutdown line: datagrams_received={received} samples_applied={applied}")
    assert (received, applied) == (n + queued, n + queued)


@needs_daemon
def test_restart_loses_nothing(tmp_path, sockets, launched):
    """N increments before a restart, M sent by a blocking client while the daemon stops and
    restarts (the kernel queues them, a full queue makes the sender wait), K after: the old
    daemon's shutdown count plus the new daemon's counter is exactly N + M + K."""
    N, M, K = 200, 400, 100
    name, exposed = "sa.restart.total", "sa_restart_total"
    log1, log2 = tmp_path / "daemon1.log", tmp_path / "daemon2.log"

    d1 = Activated(sockets, log1)
    launched.append(d1)
    d1.wait_serving()
    with sender(sockets.ingest_path) as s:
        for _ in range(N):
            s.send(counter_datagram(name, 1))
    assert d1.wait_value(exposed, N) == N

    sent = {"n": 0, "error": None}

    def send_m():
        try:
            with sender(sockets.ingest_path) as s:
                for _ in range(M):
                    s.send(counter_datagram(name, 1))
                    sent["n"] += 1
        except Exception as e:  # surfaced by the main thread
            sent["error"] = e

    t = threading.Thread(target=send_m, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while sent["n"] < M // 4 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.001)
    assert d1.terminate() == 0          # mid-stream: the old daemon drains and exits
    old_received, old_applied = shutdown_counts(log1)
    assert old_received == old_applied
    assert old_applied >= N
    time.sleep(0.5)                     # daemon down: the sender fills the queue and waits
    blocked_at = sent["n"]

    d2 = Activated(sockets, log2)
    launched.append(d2)
    d2.wait_serving()
    t.join(timeout=60)
    assert not t.is_alive(), "the sender is still blocked after the restart"
    assert sent["error"] is None, sent["error"]
    assert sent["n"] == M
    with sender(sockets.ingest_path) as s:
        for _ in range(K):
            s.send(counter_datagram(name, 1))

    expected_new = N + M + K - old_applied
    new_final = d2.wait_value(exposed, expected_new)
    print(f"old daemon applied {old_applied} (its shutdown line); the blocked sender had sent {blocked_at}/{M} "
          f"when the new daemon started; new daemon counted {new_final}; N+M+K={N + M + K}")
    assert old_applied + (new_final or 0) == N + M + K
    assert d2.terminate() == 0
    assert shutdown_counts(log2) == (expected_new, expected_new)


@needs_daemon
def test_datagrams_queued_before_start_keep_their_credentials(tmp_path, sockets, launched):
    """PassCredentials=yes: the socket has SO_PASSCRED from its creation, so datagrams that wait in
    the queue while no daemon runs still carry the sender's credentials, and a daemon with a uid
    allow-list accepts them."""
    assert "\nPassCredentials=yes\n" in (UNITS / "p2pmetricsd.socket").read_text()
    n = 8
    with sender(sockets.ingest_path) as s:
        for _ in range(n):
            s.send(counter_datagram("sa.queued.total", 1))
    config = tmp_path / "config.json"
    config.write_text('{"allowed_uids": [%d]}' % os.getuid())
    d = Activated(sockets, tmp_path / "daemon.log", args=("--config", str(config)))
    launched.append(d)
    d.wait_serving()
    assert d.wait_value("sa_queued_total", n) == n
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(counter_datagram("sa.queued.total", 1), sockets.ingest_path)
    assert d.wait_value("sa_queued_total", n + 1) == n + 1
    assert d.terminate() == 0


@needs_daemon
def test_sd_notify_ready_status_and_watchdog(tmp_path, sockets, launched):
    """Type=notify and WatchdogSec=: READY=1 and a STATUS= once serving, WATCHDOG=1 repeatedly,
    STOPPING=1 when it stops (the only sd_notify test)."""
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        n.bind(notify_path)
        n.settimeout(0.2)
        d = Activated(sockets, tmp_path / "daemon.log",
                      env_extra={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"})
        launched.append(d)
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                seen.extend(n.recv(65536).decode(errors="replace").splitlines())
            except socket.timeout:
                pass
            if "READY=1" in seen and seen.count("WATCHDOG=1") >= 2 and any(x.startswith("STATUS=") for x in seen):
                break
            if d.proc.poll() is not None:
                break
        print("notifications:", seen)
        assert "READY=1" in seen
        status = next(x for x in seen if x.startswith("STATUS="))
        assert status.startswith("STATUS=0 series, 0 samples applied"), status
        assert seen.count("WATCHDOG=1") >= 2, "no periodic WATCHDOG=1 with WATCHDOG_USEC=1s"
        d.wait_serving()
        assert d.terminate() == 0
        after: list[str] = []
        try:
            while True:
                after.extend(n.recv(65536).decode(errors="replace").splitlines())
        except OSError:  # socket.timeout included: nothing more was sent
            pass
        assert "STOPPING=1" in after


# ---- the unit files ---------------------------------------------------------------------------

def _units_copy(tmp_path: Path) -> Path:
    """The units, with ExecStart= pointing at a binary that exists (verify checks it does)."""
    out = tmp_path / "units"
    out.mkdir()
    exe = str(DAEMON_BIN) if DAEMON_BIN.exists() else shutil.which("true")
    for f in UNITS.iterdir():
        text = f.read_text()
        if f.suffix == ".service":
            assert "ExecStart=/usr/local/bin/p2pmetricsd " in text
            text = text.replace("ExecStart=/usr/local/bin/p2pmetricsd ", f"ExecStart={exe} ")
        (out / f.name).write_text(text)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_clean(tmp_path):
    units = _units_copy(tmp_path)
    names = ["p2pmetricsd.socket", "p2pmetricsd-http.socket", "p2pmetricsd.service"]
    r = subprocess.run(["systemd-analyze", "verify", *names], cwd=units,
                       capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    print(out or "systemd-analyze verify: clean")
    assert r.returncode == 0, out
    assert not [line for line in out.splitlines() if "p2pmetricsd" in line], out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_security_exposure(tmp_path):
    units = _units_copy(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        "./p2pmetricsd.service"], cwd=units, capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for p2pmetricsd\.service: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    print(f"systemd-analyze security --offline=true p2pmetricsd.service: exposure {exposure} {m.group(2)}")
    for line in r.stdout.splitlines():
        if line.startswith("✗"):
            print("  " + line.rstrip())
    assert exposure <= MAX_EXPOSURE
    readme = (CONTRIB / "README.md").read_text()
    assert f"Overall exposure level for p2pmetricsd.service: {exposure:.1f}" in readme, \
        "contrib/README.md does not state the current exposure figure"
