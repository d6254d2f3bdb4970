"""The configuration schema is written once, in contrib/p2pmetricsd.example.json, and checked here.

(a) The built daemon starts and serves with that file as its --config (paths and addresses
    overridden by flags). (b) Every key the README's Configuration table documents is in the
file and every key of the file is in that table; the file's keys are exactly the keys the
decoder knows (as its unknown-key error lists them); and a key the decoder does not know is
refused with one line naming it. The file's values are checked against the code's defaults by
`ExampleConfigurationTests` (swift test).
"""
from __future__ import annotations

import json
import re
import subprocess

from conftest import DAEMON_BIN, ROOT, free_port, start_daemon
from wire import counter, datagram

EXAMPLE = ROOT / "contrib" / "p2pmetricsd.example.json"
README = ROOT / "README.md"


def file_keys(doc: dict) -> set[str]:
    """Dotted keys of a configuration document's values (`limits.max_series`); a metric's name
    becomes `<name>`."""
    keys = set()
    for key, value in doc.items():
        if key == "limits":
            keys |= {f"limits.{k}" for k in value}
        elif key == "metrics":
            for entry in value.values():
                keys |= {f"metrics.<name>.{k}" for k in entry}
        else:
            keys.add(key)
    return keys


def readme_keys() -> set[str]:
    """The keys named in the first column of the README's Configuration table."""
    text = README.read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    keys = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            keys |= set(re.findall(r"`([^`]+)`", first))
    assert keys, "the README's Configuration section has no key table"
    return keys


def run_config(tmp_path, doc: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return subprocess.run(
        [str(DAEMON_BIN), "--config", str(path), "--socket", str(tmp_path / "s.sock"),
         "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=20)


def refusal(tmp_path, doc: dict) -> str:
    """The one line the daemon refuses `doc` with."""
    r = run_config(tmp_path, doc)
    assert r.returncode != 0, r
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def known(line: str) -> set[str]:
    m = re.search(r"\(known: ([^)]*)\)$", line)
    assert m, line
    return set(m.group(1).split(", "))


def test_the_example_file_starts_a_daemon_that_serves(tmp_path):
    state = tmp_path / "counters.state"
    d = start_daemon(tmp_path, "--config", str(EXAMPLE), "--state", str(state),
                     "--udp", f"127.0.0.1:{free_port()}", "--otlp", f"127.0.0.1:{free_port()}")
    try:
        d.send(counter("p2p.image.downloads.total", 1))
        d.send(datagram([("histogram_observe", "p2p.transfer.duration", 42.5, {})]))
        assert d.wait_for("p2p_image_downloads_total", 1) == 1
        assert d.wait_for("p2p_transfer_duration_count", 1) == 1
        text = d.scrape_text()
        # The file's values are in force: its memory budget, and its restatement of the
        # catalog's transfer-duration entry (help and buckets up to 600 s).
        assert "p2pmetricsd_series_memory_limit_bytes 134217728" in text
        assert "# HELP p2p_transfer_duration Duration of P2P transfers in seconds." in text
        assert d.value("p2p_transfer_duration_bucket", le="60") == 1
        assert d.value("p2p_transfer_duration_bucket", le="600") == 1
    finally:
        assert d.stop() == 0
    assert state.exists()  # --state won over the file's state_file


def test_readme_documents_exactly_the_files_keys():
    documented, written = readme_keys(), file_keys(json.loads(EXAMPLE.read_text()))
    assert documented - written == set(), "documented in README.md but missing from the example file"
    assert written - documented == set(), "in the example file but not documented in README.md"


def test_the_files_keys_are_exactly_the_decoders(tmp_path):
    doc = json.loads(EXAMPLE.read_text())
    top = known(refusal(tmp_path, {"no_such_key": 1}))
    limits = known(refusal(tmp_path, {"limits": {"no_such_key": 1}}))
    metric = known(refusal(tmp_path, {"metrics": {"x.y": {"type": "gauge", "no_such_key": 1}}}))
    assert set(doc) == top
    assert set(doc["limits"]) == limits
    assert set().union(*(set(e) for e in doc["metrics"].values())) == metric


def test_an_unknown_key_is_refused_in_one_line_naming_it(tmp_path):
    doc = json.loads(EXAMPLE.read_text())
    for where, mutate, name in [
        ("top level", lambda c: c.update(listen_adress="127.0.0.1:1"), "listen_adress"),
        ("limits", lambda c: c["limits"].update(max_seris=5), "limits.max_seris"),
        ("a metric entry", lambda c: c["metrics"]["p2p.transfers.active"].update(ttl=5),
         "metrics.p2p.transfers.active.ttl"),
    ]:
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        line = refusal(tmp_path, bad)
        assert line.startswith(f"p2pmetricsd: config file {tmp_path / 'config.json'}: unknown key {name} (known: "), \
            (where, line)
    assert not (tmp_path / "s.sock").exists()  # nothing was bound
