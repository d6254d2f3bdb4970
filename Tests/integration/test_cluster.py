"""A cluster: three nodes, each in a network namespace of its own with a veth link to a hub
namespace (10.77.N.0/24 exists only inside these namespaces), each running p2pmetricsd fed the
seed-shaped scenario of test_contrib.py through the C client. In the hub, one real Prometheus
scrapes the three nodes; beside it a central Prometheus with the remote-write receiver gets the
same samples from a Prometheus agent on every node (contrib/prometheus/agent.yml, central.yml).

Proven on both: every seed query, recording rule, alert expression and dashboard panel evaluates,
summed across nodes, to exactly the totals the workloads sent (check_scenario_everywhere); a
daemon restarting with its state file produces no counter reset and no increase (without it, the
same query sees the reset); a node taken
down makes its P2PMetricsdDown alert fire (the test copy of the alert rules has `for: 5s`
instead of 5m, nothing else changed).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import DAEMON_BIN
from test_contrib import (PROM_DIR, PROMETHEUS, RULE_FILES, Prometheus, check_scenario_everywhere, load_client,
                          pre_create_series, run_scenario, scalar, by, close)

NODES = 3
COUNTERS = ["p2p_image_imports_total", "p2p_image_imports_failed", "p2p_image_downloads_total",
            "p2p_image_downloads_failed", "p2p_chunks_transferred_total", "p2p_chunks_deduplicated_total",
            "p2p_bytes_transferred_total", "p2p_verification_success", "p2p_verification_failed",
            "p2p_cache_hits", "p2p_cache_misses"]


# The seed guide's queries 1-4 as written (5 is not valid PromQL: its corrected form is a recording rule).
GUIDE_1 = "rate(p2p_image_downloads_total[5m]) - rate(p2p_image_downloads_failed[5m])"
GUIDE_2 = "p2p_chunks_deduplicated_total / (p2p_chunks_transferred_total + p2p_chunks_deduplicated_total)"
GUIDE_3 = "rate(p2p_bytes_transferred_total[5m]) / 1048576"
GUIDE_4 = "p2p_cache_hits / (p2p_cache_hits + p2p_cache_misses)"


def send_datagram(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(data, path)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Namespaces:
    """hub + node1..nodeN network namespaces, a veth pair hub<->node each; removed by close()."""

    def __init__(self, count: int):
        tag = f"p2pm{os.getpid()}"
        self.hub = f"{tag}-hub"
        self.nodes = [f"{tag}-n{i}" for i in range(1, count + 1)]
        self.made: list[str] = []
        try:
            for ns in [self.hub, *self.nodes]:
                ip("netns", "add", ns)
                self.made.append(ns)
                ip("-n", ns, "link", "set", "lo", "up")
            for i, ns in enumerate(self.nodes, start=1):
                ip("-n", self.hub, "link", "add", f"vh{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("-n", self.hub, "addr", "add", f"10.77.{i}.1/24", "dev", f"vh{i}")
                ip("-n", ns, "addr", "add", f"10.77.{i}.2/24", "dev", "eth0")
                ip("-n", self.hub, "link", "set", f"vh{i}", "up")
                ip("-n", ns, "link", "set", "eth0", "up")
        except Exception:
            self.close()
            raise

    @staticmethod
    def node_address(i: int) -> str:
        return f"10.77.{i}.2:9478"

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()


def ns_http(ns: str, url: str, form: dict | None = None, timeout: float = 10) -> str:
    """GET (or POST a form) inside a namespace, with curl; the body, or raises OSError."""
    cmd = ["ip", "netns", "exec", ns, "curl", "-sS", "--fail-with-body", "--max-time", str(timeout), url]
    for k, v in (form or {}).items():
        cmd += ["--data-urlencode", f"{k}={v}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
    if r.returncode not in (0, 22):
        raise OSError(f"curl {url} in {ns}: {r.returncode} {r.stderr.strip()}")
    return r.stdout


class NodeDaemon:
    def __init__(self, tmp: Path, ns: str, index: int):
        self.ns, self.index = ns, index
        self.socket_path = str(tmp / f"node{index}.sock")
        self.state = str(tmp / f"node{index}.state")
        self.log = tmp / f"node{index}.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, str(DAEMON_BIN), "--socket", self.socket_path,
             "--listen", "0.0.0.0:9478", "--state", self.state],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                ns_http(self.ns, "http://127.0.0.1:9478/-/healthy", timeout=2)
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"node {self.index} did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HubPrometheus(Prometheus):
    """A real Prometheus in a namespace; the API through curl in that namespace."""

    def __init__(self, tmp: Path, ns: str, name: str, cfg: dict, port: int, *flags: str):
        self.ns, self.port = ns, port
        (tmp / name).mkdir()
        conf = tmp / name / "prometheus.yml"
        conf.write_text(yaml.safe_dump(cfg))
        self.log = tmp / name / "prometheus.log"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PROMETHEUS, f"--config.file={conf}", f"--web.listen-address=0.0.0.0:{port}",
             "--log.level=warn", *flags],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus {name} exited: {self.log.read_text()}")
            try:
                if "Ready" in ns_http(ns, f"http://127.0.0.1:{port}/-/ready", timeout=3):
                    return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"prometheus {name} did not become ready: {self.log.read_text()}")

    def api(self, path: str, **params) -> dict:
        return json.loads(ns_http(self.ns, f"http://127.0.0.1:{self.port}/api/v1/{path}", form=params or None))


def rule_files_for_the_cluster(tmp: Path) -> list[str]:
    """The contrib rule files; in the alert copy P2PMetricsdDown waits 5s instead of 5m."""
    alerts = yaml.safe_load(RULE_FILES[1].read_text())
    down = [r for g in alerts["groups"] for r in g["rules"] if r.get("alert") == "P2PMetricsdDown"]
    assert len(down) == 1 and down[0]["for"] == "5m"
    down[0]["for"] = "5s"
    copy = tmp / "p2p-alerts.for5s.rules.yml"
    copy.write_text(yaml.safe_dump(alerts))
    return [str(RULE_FILES[0]), str(copy)]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed")
@pytest.mark.skipif(not DAEMON_BIN.exists(), reason=f"{DAEMON_BIN} is not built")
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_three_node_cluster_direct_and_through_agents(tmp_path, c_build):
    started = time.monotonic()
    lib = load_client(c_build)
    rules = rule_files_for_the_cluster(tmp_path)
    nets = Namespaces(NODES)
    daemons: list[NodeDaemon] = []
    proms: list[HubPrometheus] = []
    try:
        for i, ns in enumerate(nets.nodes, start=1):
            daemons.append(NodeDaemon(tmp_path, ns, i))
            send_datagram(daemons[-1].socket_path, pre_create_series())
        # Every series exists (at 0) before any scrape: the rates' ratios are then exact.
        for d in daemons:
            deadline = time.monotonic() + 10
            while "p2p_transfer_duration_count 1" not in ns_http(d.ns, "http://127.0.0.1:9478/metrics"):
                assert time.monotonic() < deadline, "pre-created series never showed"
                time.sleep(0.05)

        # The central receiver, then one agent per node (contrib/prometheus/agent.yml).
        central_cfg = yaml.safe_load((PROM_DIR / "central.yml").read_text())
        central_cfg["global"]["evaluation_interval"] = "1s"
        central_cfg["rule_files"] = rules
        central = HubPrometheus(tmp_path, nets.hub, "central", central_cfg, 9091, "--web.enable-remote-write-receiver",
                                f"--storage.tsdb.path={tmp_path / 'central' / 'tsdb'}")
        proms.append(central)
        agent_template = (PROM_DIR / "agent.yml").read_text()
        for i, ns in enumerate(nets.nodes, start=1):
            cfg = yaml.safe_load(agent_template.replace("NODE_NAME", nets.node_address(i))
                                 .replace("CENTRAL_HOST:9090", f"10.77.{i}.1:9091"))
            cfg["global"]["scrape_interval"] = "1s"
            cfg["scrape_configs"][0].update(scrape_interval="1s", scrape_timeout="1s")
            cfg["remote_write"][0]["queue_config"]["batch_send_deadline"] = "1s"
            proms.append(HubPrometheus(tmp_path, ns, f"agent{i}", cfg, 9095, "--enable-feature=agent",
                                       f"--storage.agent.path={tmp_path / f'agent{i}' / 'wal'}"))
        # The direct one: contrib/prometheus/scrape.yml with the three nodes as targets.
        direct_cfg = yaml.safe_load((PROM_DIR / "scrape.yml").read_text())
        job = direct_cfg["scrape_configs"][0]
        job.update(scrape_interval="1s", scrape_timeout="1s",
                   static_configs=[{"targets": [nets.node_address(i) for i in range(1, NODES + 1)]}])
        direct_cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        direct_cfg["rule_files"] = rules
        direct = HubPrometheus(tmp_path, nets.hub, "direct", direct_cfg, 9090,
                               f"--storage.tsdb.path={tmp_path / 'direct' / 'tsdb'}")
        proms.append(direct)
        for prom in (direct, central):
            res = prom.wait('count(count_over_time(up{job="p2pmetricsd"}[1m]) >= 3)', lambda r: scalar(r) == NODES, 60)
            assert scalar(res) == NODES, f"{prom.log}: not every node is scraped"

        # The workload: the seed-shaped scenario on every node.
        for d in daemons:
            run_scenario(lib, d.socket_path)
        print(f"\ncluster up and fed in {time.monotonic() - started:.0f} s")

        for name, prom in (("direct", direct), ("central", central)):
            check_scenario_everywhere(prom, nodes=NODES)
            series = scalar(prom.query('count({job="p2pmetricsd", __name__=~"p2p_.*"})'))
            print(f"{name}: every rule, alert and panel exact over {NODES} nodes, {series:.0f} p2p_ series")
            # The seed guide's queries as written give per-node series; summed across nodes:
            assert prom.query(GUIDE_2) == {frozenset({("instance", nets.node_address(i)), ("job", "p2pmetricsd")}): 0.25
                                           for i in range(1, NODES + 1)}
            assert close(scalar(prom.query("sum(p2p_chunks_deduplicated_total) / (sum(p2p_chunks_transferred_total)"
                                           " + sum(p2p_chunks_deduplicated_total))")), 0.25)
            assert by("cache_type", prom.query(
                "sum by (cache_type) (p2p_cache_hits) / (sum by (cache_type) (p2p_cache_hits)"
                " + sum by (cache_type) (p2p_cache_misses))")) == {"chunk": 0.75, "vm_image": 0.25}
            assert sorted(prom.query(GUIDE_4).values()) == [0.25] * NODES + [0.75] * NODES
            for guide_rate in (GUIDE_1, GUIDE_3):
                assert all(v > 0 for v in prom.query(f"sum({guide_rate})").values())
        totals = {c: scalar(direct.query(f"sum({c})")) for c in COUNTERS}
        print("cluster totals:", totals)

        # A daemon restarting with its state file: no reset, no increase, same totals.
        node2 = nets.node_address(2)
        restart_at = time.time()
        daemons[1].stop()
        daemons[1].start()
        for prom in (direct, central):
            prom.wait(f'timestamp(up{{instance="{node2}"}}) > {restart_at + 3}', lambda r: bool(r), 30)
            for c in COUNTERS:
                resets = scalar(prom.query(f'sum(resets({c}{{instance="{node2}"}}[1m]))'))
                increase = scalar(prom.query(f'sum(increase({c}{{instance="{node2}"}}[5s]))'))
                assert (resets, increase) == (0, 0), f"{c} across a restart with state: resets {resets}, increase {increase}"
                assert scalar(prom.query(f"sum({c})")) == totals[c], c

        # Control: the same restart without the state file is a reset that the same query sees.
        node1 = nets.node_address(1)
        daemons[0].stop()
        os.unlink(daemons[0].state)
        restart_at = time.time()
        daemons[0].start()
        send_datagram(daemons[0].socket_path, pre_create_series())
        direct.wait(f'timestamp(up{{instance="{node1}"}}) > {restart_at + 3}', lambda r: bool(r), 30)
        assert scalar(direct.query(f'sum(resets(p2p_image_downloads_total{{instance="{node1}"}}[1m]))')) == 1

        # A node taken down: its P2PMetricsdDown fires, for that node only.
        node3 = nets.node_address(3)
        daemons[2].stop()
        for name, prom in (("direct", direct), ("central", central)):
            def firing(prom=prom):
                alerts = prom.api("alerts")["data"]["alerts"]
                return [a["labels"]["instance"] for a in alerts
                        if a["labels"]["alertname"] == "P2PMetricsdDown" and a["state"] == "firing"]
            deadline = time.monotonic() + 60
            while firing() != [node3] and time.monotonic() < deadline:
                time.sleep(0.5)
            assert firing() == [node3], f"{name}: {prom.api('alerts')}"
        print(f"cluster test took {time.monotonic() - started:.0f} s")
    finally:
        for p in reversed(proms):
            p.stop()
        for d in daemons:
            d.stop()
        nets.close()
