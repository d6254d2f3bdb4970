"""Runs INSIDE a booted Debian 12 node (test_node.py), as a oneshot unit under systemd as PID 1.

Installs /root/p2pmetricsd.deb with apt and records what real systemd does with it into
/root/results.json (each step's facts, or its error); test_node.py asserts on them. Standard
library only: the node has Debian's python3 and no Swift toolchain.
"""
from __future__ import annotations

import glob
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import traceback
import urllib.request

TEST_LIB = "/usr/local/lib/p2p-test"  # wire.py and the Python client, laid out as in the source tree
sys.path.insert(0, TEST_LIB + "/Tests/integration")
from wire import counter  # noqa: E402

SOCK = "/run/p2pmetricsd/ingest.sock"
SCRAPE = "http://127.0.0.1:9478/metrics"
SERVICE = "p2pmetricsd.service"
SOCKETS = ["p2pmetricsd.socket", "p2pmetricsd-http.socket"]
RESULTS: dict = {}


def sh(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def prop(unit: str, name: str) -> str:
    return sh("systemctl", "show", unit, "-p", name, "--value").stdout.strip()


def scrape() -> str:
    with urllib.request.urlopen(SCRAPE, timeout=10) as r:
        return r.read().decode()


def value(name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", scrape(), re.M)
    return float(m.group(1)) if m else None


def wait_value(name: str, expected: float, labels: str = "", timeout: float = 20) -> float | None:
    deadline, v = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            v = value(name, labels)
        except OSError:
            v = None
        if v == expected:
            return v
        time.sleep(0.1)
    return v


def wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def send(data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, SOCK)


def snapshot() -> set[str]:
    """Every path under the places a package or a service could leave something."""
    skip = ("/var/lib/dpkg", "/var/log", "/var/cache", "/var/lib/apt", "/run/systemd", "/run/log", "/run/user",
            "/run/udev", "/run/dbus", "/run/lock", "/etc/.pwd.lock", "/etc/ld.so.cache", "/var/lib/systemd/random-seed",
            "/var/lib/systemd/timers", "/var/lib/systemd/catalog", "/run/mount", "/etc/group-", "/etc/gshadow-",
            "/etc/passwd-", "/etc/shadow-", "/root", "/var/tmp", "/tmp", "/usr/local/bin/p2p-send",
            "/usr/local/lib/p2p-test")
    found = set()
    for top in ("/etc", "/usr", "/var", "/run", "/opt", "/srv"):
        for dirpath, dirnames, filenames in os.walk(top):
            if dirpath.startswith(skip):
                dirnames[:] = []
                continue
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if not p.startswith(skip):
                    found.add(p)
    return found


def step(name: str):
    def wrap(fn):
        started = time.monotonic()
        install = RESULTS.get("install", {})
        try:
            if "error" in install or install.get("rc", 0) != 0:  # nothing to check: fail fast
                raise RuntimeError(f"skipped: the package did not install: {install}")
            RESULTS[name] = fn()
        except Exception:  # recorded: test_node.py fails with this traceback
            RESULTS[name] = {"error": traceback.format_exc()}
        RESULTS.setdefault("seconds", {})[name] = round(time.monotonic() - started, 1)
        with open("/root/results.json", "w") as f:
            json.dump(RESULTS, f, indent=1, sort_keys=True)
        return fn
    return wrap


SENDER = r'''#!/usr/bin/python3
# p2p-send NAME LABEL COUNT: COUNT blocking datagrams of one counter +1 (exit 13 when refused);
# COUNT 0: until the file /run/p2p-stop-sending exists.
import os, socket, sys
sys.path.insert(0, "/usr/local/lib/p2p-test/Tests/integration")
from wire import counter
name, label, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = counter(name, 1, {"cache_type": label} if label else None)
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    try:
        sent = 0
        while sent < count or (count == 0 and (sent % 64 or not os.path.exists("/run/p2p-stop-sending"))):
            s.sendto(data, "/run/p2pmetricsd/ingest.sock")
            sent += 1
    except PermissionError as e:
        print("refused:", e)
        sys.exit(13)
print("sent", sent)
'''


@step("environment")
def environment():
    with open("/usr/local/bin/p2p-send", "w") as f:
        f.write(SENDER)
    os.chmod("/usr/local/bin/p2p-send", 0o755)
    RESULTS["before"] = sorted(snapshot())
    return {"pid1": open("/proc/1/comm").read().strip(),
            "system_state": sh("systemctl", "is-system-running").stdout.strip(),
            "swift": shutil.which("swift") or "", "swift_runtime": glob.glob("/usr/lib/swift*") + glob.glob("/usr/share/swift*"),
            "debian": open("/etc/debian_version").read().strip()}


@step("install")
def install():
    # The README's command (apt resolves Depends: against the Debian archive index; the node has no network, nothing is fetched).
    r = subprocess.run(["apt", "install", "-y", "/root/p2pmetricsd.deb"], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    ldd = sh("ldd", "/usr/bin/p2pmetricsd").stdout
    return {"rc": r.returncode, "output": r.stdout + r.stderr, "ldd": ldd,
            "ldconfig": "libp2pmetrics.so.1" in sh("ldconfig", "-p").stdout,
            "version": sh("/usr/bin/p2pmetricsd", "--version").stdout.strip()}


@step("sockets")
def sockets():
    st = os.stat(SOCK)
    return {"active": {u: sh("systemctl", "is-active", u).stdout.strip() for u in SOCKETS + [SERVICE]},
            "enabled": {u: sh("systemctl", "is-enabled", u).stdout.strip() for u in SOCKETS},
            "owner": pwd.getpwuid(st.st_uid).pw_name, "group": grp.getgrgid(st.st_gid).gr_name,
            "mode": oct(stat.S_IMODE(st.st_mode)), "is_socket": stat.S_ISSOCK(st.st_mode),
            "qlen": int(open("/proc/sys/net/unix/max_dgram_qlen").read()),
            "group_line": sh("getent", "group", "p2pmetrics").stdout.strip(),
            # 127.0.0.1:9478 listening (state 0A) while the service has never run: PID 1's socket.
            "http_listen": any(line.split()[1:4:2] == ["0100007F:%04X" % 9478, "0A"]
                               for line in open("/proc/net/tcp").read().splitlines()[1:])}


@step("activation")
def activation():
    send(counter("p2p.image.downloads.total", 1))  # the first datagram starts the service
    active = wait_until(lambda: sh("systemctl", "is-active", SERVICE).stdout.strip() == "active", 30)
    downloads = wait_value("p2p_image_downloads_total", 1)
    pid = int(prop(SERVICE, "MainPID"))
    status = open(f"/proc/{pid}/status").read()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    journal = sh("journalctl", "-u", SERVICE, "-o", "cat", "--no-pager").stdout
    security = sh("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security)
    return {"active": active, "downloads": downloads, "uid": uid, "user": prop(SERVICE, "User"),
            "dynamic_user": prop(SERVICE, "DynamicUser"), "triggered_by": prop(SERVICE, "TriggeredBy"),
            "socket_fds": sum(1 for f in fds if f.startswith("socket:")),
            "journal": journal, "exposure": float(exposure.group(1)) if exposure else None,
            "security_tail": security[-400:],
            "exec_start": prop(SERVICE, "ExecStart"), "watchdog_usec": prop(SERVICE, "WatchdogUSec")}


@step("reload")
def reload():
    """`systemctl reload` (the unit's ExecReload=) sends SIGHUP: the same process goes on serving,
    and says in the journal what it did (the default unit has no --config to re-read)."""
    pid = int(prop(SERVICE, "MainPID"))
    r = sh("systemctl", "reload", SERVICE)
    line = "p2pmetricsd: SIGHUP: no configuration file (--config) to reload"
    logged = wait_until(lambda: line in sh("journalctl", "-u", SERVICE, "-o", "cat", "--no-pager").stdout, 20)
    return {"rc": r.returncode, "output": r.stdout + r.stderr, "logged": logged, "pid_before": pid,
            "pid_after": int(prop(SERVICE, "MainPID")), "active": sh("systemctl", "is-active", SERVICE).stdout.strip(),
            "downloads": value("p2p_image_downloads_total")}


@step("capp")
def capp():
    """A C program linked with -lp2pmetrics on the test machine runs here without LD_LIBRARY_PATH."""
    app = sh("/root/capp")
    return {"rc": app.returncode, "out": app.stdout + app.stderr,
            "hits": wait_value("p2p_cache_hits", 1, '{cache_type="capp"}')}


@step("group")
def group():
    common = ["systemd-run", "--wait", "--pipe", "--quiet", "-p", "DynamicUser=yes"]
    member = sh(*common, "-p", "SupplementaryGroups=p2pmetrics", "/usr/local/bin/p2p-send",
                "p2p.cache.hits", "member", "5")
    outsider = sh(*common, "/usr/local/bin/p2p-send", "p2p.cache.hits", "outsider", "1")
    # ... and a plain user outside the group, from a login shell's point of view.
    nobody = sh("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/local/bin/p2p-send",
                "p2p.cache.hits", "nobody", "1")
    return {"member_rc": member.returncode, "member_out": member.stdout + member.stderr,
            "outsider_rc": outsider.returncode, "outsider_out": outsider.stdout + outsider.stderr,
            "nobody_rc": nobody.returncode, "nobody_out": nobody.stdout + nobody.stderr,
            "nobody_hits": value("p2p_cache_hits", '{cache_type="nobody"}'),
            "member_hits": wait_value("p2p_cache_hits", 5, '{cache_type="member"}'),
            "outsider_hits": value("p2p_cache_hits", '{cache_type="outsider"}')}


@step("restart")
def restart():
    """A blocking sender keeps sending while systemctl restarts the service: nothing is lost."""
    pid_before = int(prop(SERVICE, "MainPID"))
    sender = subprocess.Popen(["/usr/local/bin/p2p-send", "p2p.chunks_transferred.total", "", "0"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    r = sh("systemctl", "restart", SERVICE)
    sending_through_restart = sender.poll() is None
    time.sleep(1)
    open("/run/p2p-stop-sending", "w").close()
    out, _ = sender.communicate(timeout=120)
    os.unlink("/run/p2p-stop-sending")
    sent = int(out.split()[-1])
    chunks = wait_value("p2p_chunks_transferred_total", sent, timeout=30)
    return {"restart_rc": r.returncode, "sender": out.strip(), "sender_rc": sender.returncode,
            "sent": sent, "chunks": chunks, "pid_before": pid_before, "pid_after": int(prop(SERVICE, "MainPID")),
            "sending_through_restart": sending_through_restart,
            "downloads_after_restart": value("p2p_image_downloads_total")}


@step("state")
def state():
    """Stopped, the service leaves its counters in the StateDirectory; the next datagram brings it
    back (socket activation again) with them."""
    r = sh("systemctl", "stop", SERVICE)
    files = glob.glob("/var/lib/private/p2pmetricsd/*")
    inactive = sh("systemctl", "is-active", SERVICE).stdout.strip()
    send(counter("p2p.image.downloads.total", 1))
    return {"stop_rc": r.returncode, "state_files": files, "inactive_after_stop": inactive,
            "downloads": wait_value("p2p_image_downloads_total", 2),
            "chunks": value("p2p_chunks_transferred_total"), "chunks_sent": RESULTS["restart"].get("sent"),
            "journal_restored": "restored counters from /var/lib/p2pmetricsd/counters.state" in
            sh("journalctl", "-u", SERVICE, "-o", "cat", "--no-pager").stdout}


@step("upgrade")
def upgrade():
    """Installing the package over itself (an upgrade): the sockets stay, the running service is
    restarted with the new binary, counters come back through the state file."""
    pid = int(prop(SERVICE, "MainPID"))
    downloads = value("p2p_image_downloads_total")
    r = sh("dpkg", "-i", "/root/p2pmetricsd.deb")
    active = wait_until(lambda: sh("systemctl", "is-active", SERVICE).stdout.strip() == "active", 30)
    return {"rc": r.returncode, "output": r.stdout + r.stderr, "active": active,
            "sockets": [sh("systemctl", "is-active", u).stdout.strip() for u in SOCKETS],
            "pid_before": pid, "pid_after": int(prop(SERVICE, "MainPID")),
            "downloads_before": downloads, "downloads_after": wait_value("p2p_image_downloads_total", downloads)}


@step("watchdog")
def watchdog():
    """A hung daemon (SIGSTOP) stops pinging; after WatchdogSec=30s systemd kills and restarts it."""
    pid = int(prop(SERVICE, "MainPID"))
    restarts = int(prop(SERVICE, "NRestarts"))
    os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    replaced = wait_until(lambda: prop(SERVICE, "MainPID") not in ("0", str(pid), ""), 120)
    seconds = round(time.monotonic() - started, 1)
    active = wait_until(lambda: sh("systemctl", "is-active", SERVICE).stdout.strip() == "active", 30)
    send(counter("p2p.image.downloads.total", 1))
    journal = sh("journalctl", "-u", SERVICE, "-o", "cat", "--no-pager").stdout
    return {"replaced": replaced, "seconds": seconds, "active": active, "old_pid_gone": not os.path.exists(f"/proc/{pid}"),
            "nrestarts_before": restarts, "nrestarts_after": int(prop(SERVICE, "NRestarts")),
            "watchdog_in_journal": "Watchdog timeout" in sh("journalctl", "--no-pager", "-o", "cat").stdout,
            "serving_lines": journal.count("p2pmetricsd 1"),
            "downloads_after": wait_value("p2p_image_downloads_total", 1)}


@step("purge")
def purge():
    r = sh("dpkg", "--purge", "p2pmetricsd")
    after = snapshot()
    before = set(RESULTS["before"])
    return {"rc": r.returncode, "output": r.stdout + r.stderr,
            "left_behind": sorted(after - before), "removed": sorted(before - after),
            "units": sh("systemctl", "list-units", "--all", "--no-legend", "p2pmetricsd*").stdout.strip(),
            "unit_files": sh("systemctl", "list-unit-files", "--no-legend", "p2pmetricsd*").stdout.strip(),
            "socket_exists": os.path.exists(SOCK),
            "group_kept": sh("getent", "group", "p2pmetrics").returncode == 0}


RESULTS.pop("before", None)
with open("/root/results.json", "w") as f:
    json.dump(RESULTS, f, indent=1, sort_keys=True)
