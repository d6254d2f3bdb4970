"""A real Debian 12 node for the deployment tests: a root file system made by debootstrap
(no Swift toolchain in it), booted with systemd as PID 1 by systemd-nspawn.

The root file system is made once and cached under /var/cache/p2pmetricsd-test/, keyed on the
package list and the mirror; each test boots a copy. A test hands the node a script: a oneshot
unit runs it after boot and powers the node off, and the script's results come back through a
file in the copied tree.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("P2PM_ROOTFS_CACHE", "/var/cache/p2pmetricsd-test"))
SUITE = "bookworm"
# systemd as PID 1 and what p2pmetricsd's package needs at run time (Debian's libraries only),
# python3 for the test scripts inside, libnss-systemd so dynamic users have names.
PACKAGES = ["systemd", "systemd-sysv", "dbus", "libnss-systemd", "libuv1", "libsystemd0", "zlib1g",
            "libstdc++6", "libgcc-s1", "python3"]


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb.debian.org when none is found)."""
    for f in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(Path("/etc/apt/sources.list.d").glob("*")):
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        for m in re.finditer(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1)
            if uri.rstrip("/").endswith("/debian") and "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def rootfs() -> Path:
    """The cached Debian 12 tree, made with debootstrap on first use (2-3 minutes)."""
    mirror = debian_mirror()
    key = hashlib.sha256(" ".join([SUITE, mirror, *PACKAGES]).encode()).hexdigest()[:12]
    tree = CACHE / f"{SUITE}-{key}"
    if (tree / ".complete").exists():
        return tree
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{SUITE}-{key}.lock", "w") as lock:  # one debootstrap at a time per key
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (tree / ".complete").exists():
            _debootstrap(tree, key, mirror)
    return tree


def _debootstrap(tree: Path, key: str, mirror: str) -> None:
    partial = CACHE / f"{SUITE}-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    r = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                        SUITE, str(partial), mirror], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"debootstrap failed: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    # A node's identity is made at first boot; no getty on the console.
    (partial / "etc/machine-id").write_text("")
    (partial / "etc/hostname").write_text("p2pnode\n")
    (partial / "etc/systemd/system/console-getty.service").symlink_to("/dev/null")
    shutil.rmtree(partial / "var/cache/apt/archives", ignore_errors=True)
    (partial / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (partial / ".complete").write_text(key + "\n")
    shutil.rmtree(tree, ignore_errors=True)
    partial.rename(tree)


RUNNER_UNIT = """[Unit]
Description=p2pmetricsd deployment test script
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /root/node-test.py
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=append:/root/node-test.log
StandardError=append:/root/node-test.log
TimeoutStartSec={timeout}
[Install]
WantedBy=multi-user.target
"""


class Node:
    """A copy of the cached tree, booted by systemd-nspawn; `run` boots it until the script ends."""

    def __init__(self, work: Path, name: str = "p2pnode"):
        self.name = f"{name}-{os.getpid()}"  # machine names must not collide between test runs
        self.root = work / name
        # cp -a keeps owners, modes and links; reflinks where the file system has them.
        subprocess.run(["cp", "-a", "--reflink=auto", str(rootfs()), str(self.root)], check=True)
        (self.root / ".complete").unlink()
        self.proc: subprocess.Popen | None = None
        self.console = work / f"{name}.console.log"

    def put(self, path: str, data: bytes | str, mode: int = 0o644) -> Path:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)
        return target

    def run_script(self, script: str, timeout: float = 600) -> str:
        """Boots the node; the oneshot unit runs `script` (Python) and powers off. Returns its log."""
        self.put("/root/node-test.py", script, 0o755)
        self.put("/etc/systemd/system/node-test.service", RUNNER_UNIT.format(timeout=int(timeout)))
        wants = self.root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "node-test.service").symlink_to("/etc/systemd/system/node-test.service")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit", "--private-network",
             f"--machine={self.name}", "-D", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=open(self.console, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            self.proc.wait(timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"node {self.name} did not power off in time; console:\n"
                                 + self.console.read_text(errors="replace")[-4000:]
                                 + "\nscript log:\n" + self.log())
        return self.log()

    def log(self) -> str:
        f = self.root / "root/node-test.log"
        return f.read_text(errors="replace") if f.exists() else "(no script log)"

    def stop(self) -> None:
        """Stops the container (SIGTERM to nspawn powers the node off; then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
