"""The process edge under attack: stray signals, shutdown under load, takeovers of the socket
path, hostile state files, supplementary groups, big configs, CLI and config errors, addresses.

Each test is an attack (or a user's mistake) written down with its exact expectation. Tests that
play "another user" run the daemon through `setpriv` with an otherwise unused uid; they need root.
"""
from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import DAEMON_BIN, free_port, parse_exposition, start_daemon
from wire import counter, datagram

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play another user")

# An unused uid/gid per worktree run, so parallel runs on one machine never share /tmp paths.
OTHER_UID = 40000 + os.getpid() % 20000


def run_cli(*args, timeout=20, prefix=(), env=None):
    return subprocess.run([*prefix, str(DAEMON_BIN), *args], capture_output=True, timeout=timeout,
                          text=True, env=env)


def as_user(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    return lines[0]


def scrape(port: int, host: str = "127.0.0.1") -> dict:
    h = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{h}:{port}/metrics", timeout=10) as r:
        return parse_exposition(r.read().decode())


def wait_serving(proc, port: int, log: Path, host: str = "127.0.0.1", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"p2pmetricsd exited with {proc.returncode}: {log.read_text()}")
        try:
            scrape(port, host)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("not serving in time: " + log.read_text())


def stop(proc) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def shared_dir(mode: int):
    """A fresh directory under /tmp that another uid can reach, with the given mode; removed after."""
    d = Path(tempfile.mkdtemp(prefix="p2pm-edge-"))
    os.chmod(d, mode)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def serving(log: Path, *args: str, prefix=(), env=None, host: str = "127.0.0.1"):
    """Runs the daemon with `args` (which must include `--listen HOST:PORT`) until the block ends;
    yields the port. The daemon must exit 0 on SIGTERM."""
    listen = args[args.index("--listen") + 1]
    port = int(listen.rsplit(":", 1)[1])
    proc = subprocess.Popen([*prefix, str(DAEMON_BIN), *args], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=env)
    try:
        wait_serving(proc, port, log, host=host)
        yield port
    finally:
        assert stop(proc) == 0


# MARK: signals


def wait_log(d, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in d.log_path.read_text():
        assert time.monotonic() < deadline, f"{text!r} not logged: {d.log_path.read_text()}"
        time.sleep(0.05)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM",
                                     "SIGPROF", "SIGXCPU", "SIGXFSZ", "SIGPWR", "SIGSTKFLT", "SIGIO",
                                     "SIGRTMIN+5", "SIGTERM"])
def test_terminating_signals_save_state_and_exit_cleanly(tmp_path, signame):
    state = tmp_path / "counters.state"
    d = start_daemon(tmp_path, "--state", str(state))
    d.send(counter("before.signal", 7))
    assert d.wait_for("before_signal", 7) == 7
    base, _, offset = signame.partition("+")
    d.proc.send_signal(getattr(signal, base) + int(offset or 0))
    assert d.proc.wait(timeout=15) == 0
    log = d.log_path.read_text()
    assert f"p2pmetricsd: {signame}: saving state and exiting" in log, log
    assert "p2pmetricsd: shutdown: datagrams_received=1 samples_applied=1" in log
    assert state.exists()
    d = start_daemon(tmp_path, "--state", str(state))
    try:
        assert d.value("before_signal") == 7
    finally:
        d.stop()


def test_sighup_reloads_allow_lists_limits_and_metric_entries(tmp_path):
    cfg = tmp_path / "reload.json"
    cfg.write_text(json.dumps({"allowed_uids": [12345], "limits": {"max_series_per_metric": 1}}))
    d = start_daemon(tmp_path, "--config", str(cfg))
    try:
        d.send(counter("early.peer", 1, {"peer": "a"}))  # root (uid 0) is not on the allow-list
        assert d.wait_for("p2pmetricsd_datagrams_rejected_total", 1, reason="unauthorized") == 1
        cfg.write_text(json.dumps({
            "allowed_uids": [0], "socket_mode": "0600",
            "limits": {"max_series_per_metric": 2, "max_http_connections": 5},
            "metrics": {"late.gauge": {"type": "gauge", "help": "Configured by a reload."}}}))
        d.proc.send_signal(signal.SIGHUP)
        wait_log(d, "SIGHUP: reloaded")
        for peer in "abc":
            d.send(counter("early.peer", 1, {"peer": peer}))
        assert d.wait_for("p2pmetricsd_samples_rejected_total", 1, reason="metric_series_limit") == 1
        assert sum(1 for (name, _) in d.scrape() if name == "early_peer") == 2
        d.send(counter("late.gauge", 1))  # a gauge by the reloaded entry: a counter add clashes
        assert d.wait_for("p2pmetricsd_samples_rejected_total", 1, reason="type_clash") == 1
        log = d.log_path.read_text()
        assert (f"p2pmetricsd: SIGHUP: reloaded {cfg}; kept until a restart: "
                f"limits.max_http_connections, socket_mode") in log, log

        cfg.write_text("{")  # a broken file changes nothing
        d.proc.send_signal(signal.SIGHUP)
        wait_log(d, "reload refused")
        assert (f"p2pmetricsd: SIGHUP: reload refused, the running configuration stays: "
                f"config file {cfg} is not valid JSON") in d.log_path.read_text()
        d.send(counter("after.refused.reload", 1))
        assert d.wait_for("after_refused_reload", 1) == 1
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0


def test_configured_name_clashes_are_logged_at_start_and_on_reload(tmp_path):
    """A configured metric whose exposed names clash with another's (here the catalog histogram
    `p2p.transfer.duration`'s `_bucket` series) never gets a family: one log line each says so,
    at start and after a SIGHUP reload, so the operator is not left guessing."""
    line = "p2pmetricsd: config: metric {} clashes with the exposed names of another metric; its samples are refused (name_clash)"
    cfg = tmp_path / "clash.json"
    cfg.write_text(json.dumps({"metrics": {"p2p.transfer.duration.bucket": {"type": "gauge"}}}))
    d = start_daemon(tmp_path, "--config", str(cfg))
    try:
        wait_log(d, "clashes with")
        assert line.format("p2p.transfer.duration.bucket") in d.log_path.read_text().splitlines()
        d.send(datagram([("gauge_set", "p2p.transfer.duration.bucket", 1, {})]))  # what its entry says it is
        assert d.wait_for("p2pmetricsd_samples_rejected_total", 1, reason="name_clash") == 1
        cfg.write_text(json.dumps({"metrics": {"p2p.transfer.duration.bucket": {"type": "gauge"},
                                               "p2p.transfer.duration.count": {"type": "counter"},
                                               "fine.gauge": {"type": "gauge"}}}))
        d.proc.send_signal(signal.SIGHUP)
        wait_log(d, "SIGHUP: reloaded")
        lines = d.log_path.read_text().splitlines()
        after = lines[next(i for i, l in enumerate(lines) if "SIGHUP: reloaded" in l) + 1:]
        deadline = time.monotonic() + 10
        while len(after) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            lines = d.log_path.read_text().splitlines()
            after = lines[next(i for i, l in enumerate(lines) if "SIGHUP: reloaded" in l) + 1:]
        assert after == [line.format("p2p.transfer.duration.bucket"), line.format("p2p.transfer.duration.count")]
        assert sum(1 for l in lines if l.startswith("p2pmetricsd: config: metric ")) == 3  # one at start, two after the reload
    finally:
        assert d.stop() == 0


def test_sighup_without_a_config_file_is_logged_and_changes_nothing(tmp_path):
    d = start_daemon(tmp_path)
    try:
        d.send(counter("survives.hup", 1))
        assert d.wait_for("survives_hup", 1) == 1
        d.proc.send_signal(signal.SIGHUP)
        wait_log(d, "SIGHUP")
        d.send(counter("survives.hup", 1))
        assert d.wait_for("survives_hup", 2) == 2
        assert "p2pmetricsd: SIGHUP: no configuration file (--config) to reload" in d.log_path.read_text()
    finally:
        assert d.stop() == 0


def _flood(path: str, results, index: int) -> None:
    """Blocking sends until the daemon stops accepting; reports how many the kernel accepted."""
    accepted = 0
    failure = ""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                s.sendto(counter("flood", 1), path)
                accepted += 1
            except OSError as e:
                failure = errno.errorcode.get(e.errno, str(e))
                break
    results[index] = (accepted, failure)


def test_sigterm_under_a_blocking_flood_loses_nothing_the_kernel_accepted(tmp_path):
    state = tmp_path / "counters.state"
    d = start_daemon(tmp_path, "--state", str(state))
    ctx = multiprocessing.get_context("fork")
    results = ctx.Manager().dict()
    senders = [ctx.Process(target=_flood, args=(d.socket_path, results, i)) for i in range(4)]
    for p in senders:
        p.start()
    time.sleep(1.5)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
    for p in senders:
        p.join(30)
    accepted = sum(results[i][0] for i in range(4))
    failures = {results[i][1] for i in range(4)}
    # Senders learn at once that the daemon stopped accepting (shutdown(SHUT_RD) → EPIPE), or find
    # the socket closed or removed; none of them times out against a queue nobody reads.
    assert failures <= {"EPIPE", "ECONNREFUSED", "ENOENT"}, failures
    log = d.log_path.read_text()
    assert f"datagrams_received={accepted} samples_applied={accepted}" in log, (accepted, log)
    print(f"flood: {accepted} datagrams accepted by the kernel from 4 blocking senders, all applied and saved")
    d = start_daemon(tmp_path, "--state", str(state))
    try:
        assert d.value("flood") == accepted
    finally:
        d.stop()


def test_self_bound_socket_file_is_removed_on_exit(tmp_path):
    d = start_daemon(tmp_path)
    assert stat.S_ISSOCK(os.lstat(d.socket_path).st_mode)
    assert d.stop() == 0
    assert not os.path.lexists(d.socket_path)


def test_a_daemon_that_fails_to_start_leaves_no_socket_file(tmp_path):
    sock = tmp_path / "ingest.sock"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line(run_cli("--socket", str(sock), "--listen", f"127.0.0.1:{port}"))
    assert line == f"p2pmetricsd: cannot listen on 127.0.0.1:{port}: address already in use"
    assert not os.path.lexists(sock)


def test_a_replaced_socket_file_is_not_removed_on_exit(tmp_path):
    """Only the file this daemon bound is removed: a successor's socket at the path stays."""
    d = start_daemon(tmp_path)
    os.unlink(d.socket_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as successor:
        successor.bind(d.socket_path)
        assert d.stop() == 0
        assert stat.S_ISSOCK(os.lstat(d.socket_path).st_mode)


# MARK: CLI, config errors and addresses


def test_config_errors_are_one_line_naming_file_key_and_reason(tmp_path):
    port = str(free_port())
    common = ["--socket", str(tmp_path / "c.sock"), "--listen", f"127.0.0.1:{port}"]
    missing = tmp_path / "missing.json"
    assert one_line(run_cli("--config", str(missing), *common)) == \
        f"p2pmetricsd: cannot read config file {missing}: No such file or directory"
    assert one_line(run_cli("--config", str(tmp_path), *common)) == \
        f"p2pmetricsd: cannot read config file {tmp_path}: not a regular file (a directory)"
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    assert one_line(run_cli("--config", str(fifo), *common, timeout=10)) == \
        f"p2pmetricsd: cannot read config file {fifo}: not a regular file (a FIFO)"
    bad = tmp_path / "bad.json"
    for content, message in [
        ({"state_file": ""}, "state_file must not be empty"),
        ({"socket": ""}, "socket must not be empty"),
        ({"listen": "nonsense"}, "listen: bad address 'nonsense': expected HOST:PORT, [IPV6]:PORT or :PORT"),
        ({"udp": "localhost:70000"}, "udp: bad address 'localhost:70000': the port must be a number from 0 to 65535"),
        ({"limits": {"max_series": "many"}}, "limits.max_series must be a whole number from 1 to 100000000"),
    ]:
        bad.write_text(json.dumps(content))
        line = one_line(run_cli("--config", str(bad), *common))
        assert line == f"p2pmetricsd: config file {bad}: {message}", line
    assert not (tmp_path / "c.sock").exists()  # nothing was bound for a bad configuration
    assert one_line(run_cli("--state", "", *common)) == "p2pmetricsd: bad --state: the path must not be empty"


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_listen_and_udp_accept_names_brackets_and_any_address(tmp_path):
    spellings = [("localhost:{p}", "127.0.0.1"), (":{p}", "127.0.0.1"), ("127.0.0.1:{p}", "127.0.0.1")]
    if has_ipv6_loopback():
        spellings.append(("[::1]:{p}", "::1"))
    for spelling, scrape_host in spellings:
        port = free_port()
        udp_port = free_port()
        udp = spelling.replace("[::1]", "[::]").format(p=udp_port)  # [::]: IPv4 too
        with serving(tmp_path / "addr.log", "--socket", str(tmp_path / "a.sock"), "--listen", spelling.format(p=port),
                     "--udp", udp, host=scrape_host):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"over.udp:3|c", ("127.0.0.1", udp_port))
            deadline = time.monotonic() + 10
            while scrape(port, scrape_host).get(("over_udp", frozenset())) != 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert scrape(port, scrape_host).get(("over_udp", frozenset())) == 3, spelling


def test_bad_addresses_are_refused_before_anything_is_bound(tmp_path):
    sock = tmp_path / "never.sock"
    port = free_port()
    for flag, value, reason in [
        ("--listen", "localhost", "expected HOST:PORT, [IPV6]:PORT or :PORT"),
        ("--listen", "localhost:99999", "the port must be a number from 0 to 65535"),
        ("--listen", "[::1:9478", "expected HOST:PORT, [IPV6]:PORT or :PORT"),
        ("--listen", "no-such-host.invalid:9478", "cannot resolve no-such-host.invalid"),
        ("--udp", "::1:8125", "an IPv6 address must be in brackets, e.g. [::1]:8125"),
    ]:
        args = ["--socket", str(sock), "--listen", f"127.0.0.1:{port}", flag, value]
        line = one_line(run_cli(*args))
        assert line.startswith(f"p2pmetricsd: bad {flag} address '{value}': {reason}"), line
        assert not sock.exists()


# MARK: paths and takeovers


def _default_dir_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "P2PM_SOCKET")}
    return env


@needs_root
def test_default_directory_of_another_owner_or_writable_by_others_is_refused(tmp_path):
    uid = OTHER_UID
    directory = Path(f"/tmp/p2pmetricsd-{uid}")
    port = free_port()
    try:
        # Pre-created 0777 by another user (here: root).
        directory.mkdir(mode=0o777)
        os.chmod(directory, 0o777)
        line = one_line(run_cli("--listen", f"127.0.0.1:{port}", prefix=as_user(uid), env=_default_dir_env()))
        assert line == f"p2pmetricsd: refusing socket directory {directory}: owned by uid 0, not {uid}", line
        assert os.listdir(directory) == []
        # Owned by the user but writable by others.
        os.chown(directory, uid, uid)
        line = one_line(run_cli("--listen", f"127.0.0.1:{port}", prefix=as_user(uid), env=_default_dir_env()))
        assert line == f"p2pmetricsd: refusing socket directory {directory}: writable by group or others (mode 0777)", line
        # A symlink planted at the path is not followed.
        directory.rmdir()
        with shared_dir(0o777) as target:
            directory.symlink_to(target)
            line = one_line(run_cli("--listen", f"127.0.0.1:{port}", prefix=as_user(uid), env=_default_dir_env()))
            assert line == f"p2pmetricsd: refusing socket directory {directory}: a symbolic link, not a directory", line
            assert os.listdir(target) == []
            directory.unlink()
        # Absent: created 0700, owned by the user, and served.
        with serving(tmp_path / "own.log", "--listen", f"127.0.0.1:{port}", prefix=as_user(uid), env=_default_dir_env()):
            st = os.lstat(directory)
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == uid and st.st_mode & 0o777 == 0o700
            assert stat.S_ISSOCK(os.lstat(directory / "ingest.sock").st_mode)
        assert os.listdir(directory) == []  # the socket file went with the daemon
    finally:
        if directory.is_symlink():
            directory.unlink()
        shutil.rmtree(directory, ignore_errors=True)


@needs_root
def test_a_live_socket_is_never_taken_over_on_an_ambiguous_probe(tmp_path):
    with shared_dir(0o777) as shared:  # world-writable, not sticky: anyone may unlink in it
        path = shared / "ingest.sock"
        with serving(tmp_path / "owner.log", "--socket", str(path), "--listen", f"127.0.0.1:{free_port()}") as port:
            inode = os.lstat(path).st_ino
            # Another user's daemon: its probe gets EACCES (0660 root socket) — ambiguous, not stale.
            line = one_line(run_cli("--socket", str(path), "--listen", f"127.0.0.1:{free_port()}",
                                    prefix=as_user(OTHER_UID)))
            assert line == (f"p2pmetricsd: cannot bind the ingest socket {path}: cannot tell whether another "
                            f"process serves it (probe: Permission denied); remove it if it is stale"), line
            assert os.lstat(path).st_ino == inode
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(counter("owner.alive", 1), str(path))
            deadline = time.monotonic() + 10
            while scrape(port).get(("owner_alive", frozenset())) != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert scrape(port).get(("owner_alive", frozenset())) == 1
        assert (f"p2pmetricsd: warning: {shared} is writable by everyone without the sticky bit: any local "
                f"user can replace the ingest socket") in (tmp_path / "owner.log").read_text()
        # A stale socket file of another user (root's, mode 0666 so the probe reaches it) is not
        # ours to replace either.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(path))
        os.chmod(path, 0o666)
        line = one_line(run_cli("--socket", str(path), "--listen", f"127.0.0.1:{free_port()}",
                                prefix=as_user(OTHER_UID)))
        assert line == (f"p2pmetricsd: cannot bind the ingest socket {path}: cannot tell whether another "
                        f"process serves it (owned by uid 0); remove it if it is stale"), line
        # Our own stale socket is replaced.
        with serving(tmp_path / "again.log", "--socket", str(path), "--listen", f"127.0.0.1:{free_port()}"):
            assert os.lstat(path).st_uid == 0


# MARK: state file


def test_a_planted_tmp_symlink_is_not_followed(tmp_path):
    state = tmp_path / "counters.state"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "counters.state.tmp").symlink_to(victim)
    d = start_daemon(tmp_path, "--state", str(state))
    d.send(counter("saved", 4))
    assert d.wait_for("saved", 4) == 4
    assert d.stop() == 0
    assert victim.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("counters.state.tmp")] == ["counters.state.tmp"]
    d = start_daemon(tmp_path, "--state", str(state))
    try:
        assert d.value("saved") == 4
    finally:
        d.stop()


@needs_root
@pytest.mark.parametrize("kind", ["fifo", "chardev", "symlink", "directory"])
def test_a_state_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    state = tmp_path / "counters.state"
    what = {"fifo": "a FIFO", "chardev": "a character device", "symlink": "a symbolic link",
            "directory": "a directory"}[kind]
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "chardev":
        os.mknod(state, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_text("x")
        state.symlink_to(tmp_path / "elsewhere")
    else:
        state.mkdir()
    before = os.lstat(state)
    line = one_line(run_cli("--state", str(state), "--socket", str(tmp_path / "s.sock"),
                            "--listen", f"127.0.0.1:{free_port()}", timeout=10))
    assert line == f"p2pmetricsd: state file {state}: not a regular file ({what})", line
    after = os.lstat(state)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert not (tmp_path / "counters.state.corrupt").exists()


@needs_root
def test_a_state_directory_the_daemon_cannot_write_is_refused_so_a_crash_cannot_bring_back_old_totals(tmp_path):
    """Read-only state directory: the consumed file could not be removed, and a SIGKILL later
    would restore its old totals. The daemon refuses to start instead (one line)."""
    with shared_dir(0o755) as shared, shared_dir(0o777) as sock_dir:  # shared: read-only for the other user
        state = shared / "counters.state"
        d = start_daemon(tmp_path, "--state", str(state))
        d.send(counter("old.total", 100))
        assert d.wait_for("old_total", 100) == 100
        d.stop()
        os.chmod(state, 0o644)
        line = one_line(run_cli("--state", str(state), "--socket", str(sock_dir / "s.sock"),
                                "--listen", f"127.0.0.1:{free_port()}", prefix=as_user(OTHER_UID)))
        assert line == (f"p2pmetricsd: state file {state}: cannot write in its directory {shared} "
                        f"(Permission denied)"), line
        assert state.exists()  # untouched: the next daemon that can consume it restores it
        assert os.listdir(sock_dir) == []  # refused before anything was bound


def test_restore_into_a_stricter_configuration_logs_what_was_refused_by_reason(tmp_path):
    state = tmp_path / "counters.state"
    d = start_daemon(tmp_path, "--state", str(state))
    for peer in ("a", "b", "c"):
        d.send(counter("per.peer", 1, {"peer": peer}))
    d.send(counter("other", 5))
    assert d.wait_for("other", 5) == 5
    assert d.stop() == 0
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"limits": {"max_series_per_metric": 1},
                                  "metrics": {"other": {"type": "gauge"}}}))
    d = start_daemon(tmp_path, "--state", str(state), "--config", str(strict))
    try:
        assert sum(1 for (name, _) in d.scrape() if name == "per_peer") == 1
    finally:
        d.stop()
    assert (f"p2pmetricsd: restored counters from {state}: 1 samples restored, 3 refused "
            f"(metric_series_limit 2, type_clash 1)") in d.log_path.read_text()


# MARK: supplementary groups


def _send_with_groups(path: str, groups: list[int], data: bytes, release) -> None:
    os.setgroups(groups)
    os.setgid(34567)  # the primary group is not on the allow-list (nor is uid 0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, path)
    release.wait(20)  # stay alive until the daemon has read our groups


@needs_root
def test_allowed_gids_honours_supplementary_groups(tmp_path):
    cfg = tmp_path / "allow.json"
    cfg.write_text(json.dumps({"allowed_gids": [23456]}))
    d = start_daemon(tmp_path, "--config", str(cfg))
    ctx = multiprocessing.get_context("fork")
    try:
        for groups, name, admitted in [([45678, 23456], "via.supplementary", True), ([45678], "not.member", False)]:
            release = ctx.Event()
            p = ctx.Process(target=_send_with_groups, args=(d.socket_path, groups, counter(name, 1), release))
            p.start()
            if admitted:
                assert d.wait_for(name.replace(".", "_"), 1) == 1
            else:
                assert d.wait_for("p2pmetricsd_datagrams_rejected_total", 1, reason="unauthorized") == 1
                assert d.value(name.replace(".", "_")) is None
            release.set()
            p.join(10)
            assert p.exitcode == 0
    finally:
        d.stop()


# MARK: config size


def test_ten_thousand_config_metric_entries_start_and_apply(tmp_path):
    n = 10_000
    cfg = tmp_path / "big.json"
    cfg.write_text(json.dumps({"metrics": {f"cfg.m{i}": {"type": "counter" if i % 2 else "gauge",
                                                           "help": f"Entry {i}."} for i in range(n)}}))
    started = time.monotonic()
    d = start_daemon(tmp_path, "--config", str(cfg))
    elapsed = time.monotonic() - started
    try:
        d.send(counter(f"cfg.m{n - 1}", 3))
        d.send(counter("cfg.m0", 1))  # a gauge by configuration: a counter add clashes
        assert d.wait_for(f"cfg_m{n - 1}", 3) == 3
        assert d.wait_for("p2pmetricsd_samples_rejected_total", 1, reason="type_clash") == 1
        assert f"# HELP cfg_m{n - 1} Entry {n - 1}.\n" in d.scrape_text()
    finally:
        d.stop()
    print(f"config with {n} metric entries: serving after {elapsed:.2f} s")
    assert elapsed < 60  # generous: the quadratic loader took 21.5 s; linear is well under 1 s


def write_state_file(path: Path, series: int) -> None:
    """A valid state file of `series` counters `big.c{i="N"} = N + 1`, written directly in the
    documented layout (magic, length, CRC-32, length-prefixed datagrams)."""
    import struct
    import zlib
    from wire import series as series_record, uvarint
    payload = bytearray()
    i = 0
    while i < series:
        d = bytearray(b"\xf5")
        n = 0
        while i < series and len(d) < 60_000:
            d += series_record("big.c", {"i": str(i)}) + b"\x10" + uvarint(n) + uvarint(i + 1)
            i += 1
            n += 1
        payload += struct.pack("<I", len(d)) + d
    path.write_bytes(b"P2PMSNP1" + struct.pack("<QI", len(payload), zlib.crc32(payload)) + payload)


def test_sigterm_during_a_long_restore_still_saves_the_state(tmp_path):
    """The state file is consumed before its totals are applied: a SIGTERM then must not kill the
    process (default action) with the totals only in memory."""
    state = tmp_path / "counters.state"
    n = 50_000  # about a second of restore (debug build) after the file is consumed
    cfg = tmp_path / "limits.json"
    cfg.write_text(json.dumps({"limits": {"max_series": n + 10, "max_series_per_metric": n + 10}}))
    write_state_file(state, n)
    log = tmp_path / "restore.log"
    proc = subprocess.Popen([str(DAEMON_BIN), "--socket", str(tmp_path / "s.sock"), "--listen",
                             f"127.0.0.1:{free_port()}", "--state", str(state), "--config", str(cfg)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while state.exists():  # consumed: the restore is being applied now
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert "SIGTERM: saving state and exiting" in log.read_text()
    d = start_daemon(tmp_path, "--state", str(state), "--config", str(cfg))
    d.stop()
    assert f"restored counters from {state}: {n} samples restored, 0 refused\n" in d.log_path.read_text()
