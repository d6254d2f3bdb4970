"""The package on a real node: a clean Debian 12 booted with systemd as PID 1 (systemd-nspawn),
no Swift toolchain inside. dpkg installs `make deb`'s package; node_checks.py records what
systemd does with it, this file asserts it: sockets made by PID 1 with the documented owner,
group and mode; socket activation by the first datagram with both named fds; the dynamic user
and the hardening (systemd-analyze security <= 1.0); the group gate; a restart under a blocking
sender losing nothing; counters kept in the StateDirectory; the watchdog; the journal; purge."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import C_DIR, ROOT
from node import Node
from test_deploy import VERSION, deb_package  # noqa: F401  (session fixture: make deb)

HERE = Path(__file__).parent
NEEDS = [t for t in ("systemd-nspawn", "debootstrap", "dpkg-deb") if shutil.which(t) is None]


@pytest.fixture(scope="module")
def node_results(deb_package, tmp_path_factory, c_build):
    work = tmp_path_factory.mktemp("node")
    node = Node(work)
    try:
        node.put("/root/p2pmetricsd.deb", deb_package.read_bytes())
        # wire.py (raw datagrams) and the Python client it borrows from, as laid out in the tree.
        node.put("/usr/local/lib/p2p-test/Tests/integration/wire.py", (HERE / "wire.py").read_text())
        node.put("/usr/local/lib/p2p-test/Clients/python/p2pmetrics.py", (ROOT / "Clients/python/p2pmetrics.py").read_text())
        # A C program linked the way the README says (pkg-config --libs p2pmetrics), run in the node
        # without LD_LIBRARY_PATH: the package's library must be in the loader cache.
        src = work / "capp.c"
        src.write_text('#include <p2pmetrics.h>\n#include <stdio.h>\n'
                       'int main(void) { int r = p2pm_record_cache_access(NULL, true, "capp");\n'
                       '  int f = p2pm_flush(NULL); printf("%s %d %d\\n", P2PM_VERSION, r, f); return r || f; }\n')
        subprocess.run(["cc", str(src), f"-I{C_DIR}", f"-L{c_build}", "-lp2pmetrics", "-o", str(work / "capp")],
                       check=True)
        node.put("/root/capp", (work / "capp").read_bytes(), 0o755)
        log = node.run_script((HERE / "node_checks.py").read_text(), timeout=400)
        results_file = node.root / "root/results.json"
        assert results_file.exists(), "no results from the node; script log:\n" + log
        results = json.loads(results_file.read_text())
        results["_log"] = log
        print("\nnode step seconds:", results.get("seconds"))
        yield results
    finally:
        node.remove()


def facts(results: dict, step: str) -> dict:
    r = results.get(step)
    assert r is not None, f"step {step} did not run: {results.get('_log')}"
    assert "error" not in r, f"step {step} failed inside the node:\n{r['error']}"
    return r


pytestmark = [pytest.mark.skipif(bool(NEEDS), reason=f"missing {NEEDS} (make deps installs them)"),
              pytest.mark.skipif(os.geteuid() != 0, reason="booting a node needs root")]


def test_node_is_debian_under_systemd_without_swift(node_results):
    env = facts(node_results, "environment")
    assert env["pid1"] == "systemd"
    assert env["system_state"] in ("running", "starting"), env
    assert env["debian"].startswith("12")
    assert env["swift"] == "" and env["swift_runtime"] == []


def test_apt_installs_and_the_daemon_runs_with_debian_libraries_only(node_results):
    r = facts(node_results, "install")
    assert r["rc"] == 0, r["output"]
    assert r["version"] == VERSION
    assert "not found" not in r["ldd"] and "swift" not in r["ldd"].lower(), r["ldd"]
    assert r["ldconfig"], "libp2pmetrics.so.1 not in the loader cache after install"
    c = facts(node_results, "capp")
    assert (c["rc"], c["out"], c["hits"]) == (0, f"{VERSION} 0 0\n", 1)


def test_pid1_creates_the_sockets_with_the_documented_owner_group_and_mode(node_results):
    s = facts(node_results, "sockets")
    assert s["active"] == {"p2pmetricsd.socket": "active", "p2pmetricsd-http.socket": "active",
                           "p2pmetricsd.service": "inactive"}
    assert s["enabled"] == {"p2pmetricsd.socket": "enabled", "p2pmetricsd-http.socket": "enabled"}
    assert (s["owner"], s["group"], s["mode"], s["is_socket"]) == ("root", "p2pmetrics", "0o660", True)
    assert s["http_listen"], "nothing listens on 127.0.0.1:9478"
    assert s["qlen"] == 1024  # the sysctl.d drop-in, applied by postinst before the socket existed
    assert s["group_line"].startswith("p2pmetrics:x:")


def test_first_datagram_starts_the_hardened_service_as_a_dynamic_user(node_results):
    a = facts(node_results, "activation")
    assert a["active"] and a["downloads"] == 1
    assert a["dynamic_user"] == "yes" and a["user"] == "p2pmetricsd"
    assert 61184 <= a["uid"] <= 65519, a["uid"]  # systemd's dynamic user range
    assert set(a["triggered_by"].split()) == {"p2pmetricsd.socket", "p2pmetricsd-http.socket"}
    assert a["socket_fds"] >= 2
    assert f"p2pmetricsd {VERSION}: serving (ingest from systemd, http from systemd)" in a["journal"]
    assert "path=/usr/bin/p2pmetricsd" in a["exec_start"]
    assert a["exposure"] is not None and a["exposure"] <= 1.0, a["security_tail"]
    print(f"\nsystemd-analyze security p2pmetricsd.service inside the node: {a['exposure']}")


def test_systemctl_reload_sends_sighup_to_the_running_daemon(node_results):
    r = facts(node_results, "reload")
    assert r["rc"] == 0, r["output"]
    assert r["logged"], "no SIGHUP line in the journal after systemctl reload"
    assert r["pid_after"] == r["pid_before"] and r["active"] == "active"
    assert r["downloads"] == 1  # the same process, its counters intact


def test_only_the_p2pmetrics_group_can_send(node_results):
    g = facts(node_results, "group")
    assert g["member_rc"] == 0, g["member_out"]
    assert g["outsider_rc"] != 0 and "refused" in g["outsider_out"], g["outsider_out"]
    assert g["nobody_rc"] == 13 and "refused" in g["nobody_out"], g["nobody_out"]
    assert g["member_hits"] == 5 and g["outsider_hits"] is None and g["nobody_hits"] is None


def test_systemctl_restart_under_a_blocking_sender_loses_nothing(node_results):
    r = facts(node_results, "restart")
    assert r["restart_rc"] == 0 and r["sender_rc"] == 0 and r["sent"] > 1000, r
    assert r["sending_through_restart"], "the sender finished before the restart: the test proved nothing"
    assert r["pid_after"] != r["pid_before"]
    assert r["chunks"] == r["sent"], f"lost {r['sent'] - (r['chunks'] or 0)} of {r['sent']}"
    print(f"\nrestart under a blocking sender: {r['sent']} sent, {r['chunks']:.0f} counted")
    assert r["downloads_after_restart"] == 1  # through the state file


def test_counters_survive_a_stop_through_the_state_directory(node_results):
    s = facts(node_results, "state")
    assert s["stop_rc"] == 0 and s["inactive_after_stop"] == "inactive"
    assert s["state_files"] == ["/var/lib/private/p2pmetricsd/counters.state"]
    assert s["downloads"] == 2 and s["chunks"] == s["chunks_sent"]
    assert s["journal_restored"]


def test_upgrade_restarts_the_service_and_keeps_the_counters(node_results):
    u = facts(node_results, "upgrade")
    assert u["rc"] == 0, u["output"]
    assert u["active"] and u["sockets"] == ["active", "active"]
    assert u["pid_after"] != u["pid_before"]
    assert u["downloads_before"] == 2 and u["downloads_after"] == 2


def test_a_hung_daemon_is_killed_by_the_watchdog_and_restarted(node_results):
    w = facts(node_results, "watchdog")
    assert w["replaced"] and w["active"] and w["old_pid_gone"], w
    assert w["nrestarts_after"] == w["nrestarts_before"] + 1
    assert w["watchdog_in_journal"]
    assert 25 <= w["seconds"] <= 100, w["seconds"]  # WatchdogSec=30s, generous margin
    # A crash leaves no snapshot: counters restart from zero, never from older totals.
    assert w["downloads_after"] == 1
    print(f"\nwatchdog: hung daemon replaced after {w['seconds']} s")


def test_purge_leaves_nothing_behind(node_results):
    p = facts(node_results, "purge")
    assert p["rc"] == 0, p["output"]
    assert p["left_behind"] == [] and p["removed"] == [], p
    assert p["units"] == "" and p["unit_files"] == ""
    assert not p["socket_exists"]
    # Debian practice: system groups stay on purge (files elsewhere may still carry the gid).
    assert p["group_kept"]
