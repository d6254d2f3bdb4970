"""A strict reader of the daemon's two exposition formats, for tests that must prove a scrape
valid whatever was sent: every family declared once (one HELP, one TYPE), families contiguous,
every sample named as its family's type allows, no sample (name and label set) twice, and, in
OpenMetrics, `# EOF` last and no counter, histogram sum or count NaN or negative. promtool and a real Prometheus check the same scrapes; this one also
reads OpenMetrics (promtool reads only the text format) and says exactly what broke."""
from __future__ import annotations

import re
import subprocess

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_VALUE = re.compile(r'^([+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]Inf|NaN)$')

_SUFFIXES = {
    "counter": ("",), "gauge": ("",), "unknown": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
_OM_SUFFIXES = dict(_SUFFIXES, counter=("_total", "_created"), histogram=("_bucket", "_sum", "_count", "_created"))


def problems(text: str, openmetrics: bool) -> list[str]:
    """Everything that makes `text` an invalid exposition (empty when it is valid)."""
    out: list[str] = []
    lines = text.split("\n")
    if openmetrics:
        if lines[-1] != "" or lines[-2] != "# EOF":
            out.append("no final # EOF")
        else:
            lines = lines[:-2]
    elif lines and lines[-1] == "":
        lines = lines[:-1]
    declared: dict[str, str] = {}
    helped: set[str] = set()
    finished: set[str] = set()
    current: str | None = None
    samples: set[tuple[str, frozenset]] = set()
    suffixes = _OM_SUFFIXES if openmetrics else _SUFFIXES
    for line in lines:
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            name = parts[2]
            if name != current:
                if current is not None:
                    finished.add(current)
                if name in finished:
                    out.append(f"family {name} not contiguous")
                current = name
            if parts[1] == "HELP":
                if name in helped:
                    out.append(f"second HELP for {name}")
                helped.add(name)
            else:
                if name in declared:
                    out.append(f"second TYPE for {name}")
                declared[name] = parts[3]
            continue
        if line.startswith("#") or (not openmetrics and line == ""):
            continue
        m = _SAMPLE.match(line)
        if not m:
            out.append(f"unparsable line {line!r}")
            continue
        name, labels, value = m.groups()
        if not _VALUE.match(value):
            out.append(f"bad value in {line!r}")
        family_type = declared.get(current or "")
        if family_type is None or not any(name == current + s for s in suffixes.get(family_type, ("",))):
            out.append(f"sample {name} outside its family (current: {current} {family_type})")
        if openmetrics and family_type in ("counter", "histogram") and name != current + "_bucket":
            if value == "NaN" or value.startswith("-"):
                out.append(f"OpenMetrics {family_type} value must not be NaN or negative: {line!r}")
        key = (name, frozenset(_LABEL.findall(labels or "")))
        if key in samples:
            out.append(f"duplicate sample {line!r}")
        samples.add(key)
    return out


def promtool_problems(text: str) -> list[str]:
    """promtool's parse errors on a text-format scrape (its lint findings, exit code 3, are about
    naming style, e.g. the seed's counters without `_total`: they do not make a scrape fail)."""
    r = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
    if r.returncode in (0, 3):
        return []
    return [f"promtool exit {r.returncode}"] + (r.stdout + r.stderr).decode().splitlines()
