"""CPU time per component over a run: the machine-independent half of a benchmark.

On a shared 2-core machine throughput depends on what else runs; the CPU seconds each
component spends per event do much less. Read from /proc (utime + stime of each
process), for our services (by recorded pid) and the cluster nodes (the JVMs whose
command line names `<run dir>/kafka-N/` or `<run dir>/cassandra-N/`, the run dir being
$PIPELINE_RUN_DIR or ./.run: another set of clusters beside them is not counted), plus the whole machine's
busy time from /proc/stat for the share the others took. The cluster JVMs also serve
other people's tests: their CPU rate in an idle window just before a run (we send
nothing) is subtracted as background, which is an estimate, not an exact split.

The JVMs' JIT compiler threads are counted apart, as component `jit`: compiling is a
warm-up cost of freshly started servers (it took 20-60% of their CPU in the first
minutes of traffic here), not a cost per event of the steady state.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infra.local.layout import resolve_run_dir

_TICK = os.sysconf("SC_CLK_TCK")


def _node_pattern() -> re.Pattern[str]:
    """Node JVMs of this process's run dir (absolute in their command lines)."""
    return re.compile(re.escape(str(resolve_run_dir())) + r"/((?:kafka|cassandra)-\d+)/")


def cluster_pids() -> dict[str, int]:
    """{'kafka-1': pid, 'cassandra-1': pid, ...} of the running local cluster nodes."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid=,args="], capture_output=True, text=True, timeout=5
        ).stdout
    except Exception:  # noqa: BLE001
        return {}
    found: dict[str, int] = {}
    node = _node_pattern()
    for line in out.splitlines():
        pid_text, _, args = line.strip().partition(" ")
        if "java" not in args:
            continue
        m = node.search(args)
        if m:
            found.setdefault(m.group(1), int(pid_text))
    return found


def process_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after the comm field: state(0) ... utime(11) stime(12)
    return (int(fields[11]) + int(fields[12])) / _TICK


def jit_cpu_s(pid: int) -> float:
    """CPU seconds of a JVM's JIT compiler threads (named "C1/C2 CompilerThreadN")."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if "CompilerThre" in name:
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / _TICK, total / _TICK


@dataclass
class Snapshot:
    at: float
    procs: dict[str, float]
    self_s: float
    machine: tuple[float, float]


def component(name: str) -> str:
    """'kafka-2' -> 'kafka', 'relay-decode-1' -> 'relay', 'jit-kafka-2' -> 'jit'."""
    return name.split("-", 1)[0]


# Components whose processes also serve other people's work on the shared clusters.
SHARED = ("kafka", "cassandra", "jit")


class CpuMeter:
    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self.pids = {n: p for n, p in pids.items() if p}
        self.background: dict[str, float] = {}  # CPU s per wall s of shared components
        self.background_sampled = False

    def sample_background_once(self) -> dict[str, float]:
        """The first call samples; later ones keep that sample. Sampled before any of our
        traffic, the window sees only other people's load; sampled between bursts it
        would also see our own servers' after-work (JIT, flushes, compaction) and
        subtract it from the run that caused it."""
        if not self.background_sampled:
            self.sample_background()
        return self.background

    def sample_background(self, seconds: float = 4.0) -> dict[str, float]:
        """CPU rate of the shared cluster JVMs while we send nothing (a measurement
        window, not a wait): subtracted from a run's share by `diff`."""
        a = self.snapshot()
        time.sleep(seconds)
        b = self.snapshot()
        wall = b.at - a.at
        rates: dict[str, float] = {}
        for n, v in b.procs.items():
            if n in a.procs and component(n) in SHARED:
                rates[component(n)] = rates.get(component(n), 0.0) + (v - a.procs[n]) / wall
        self.background = rates
        self.background_sampled = True
        return rates

    def snapshot(self) -> Snapshot:
        procs = {}
        for n, p in self.pids.items():
            v = process_cpu_s(p)
            if v is None:
                continue
            if component(n) in SHARED:
                jit = jit_cpu_s(p)
                procs[f"jit-{n}"] = jit
                v -= jit
            procs[n] = v
        t = os.times()
        return Snapshot(time.monotonic(), procs, t.user + t.system, machine_cpu_s())

    def diff(self, a: Snapshot, b: Snapshot, items: int) -> dict[str, Any]:
        wall = b.at - a.at
        by_comp: dict[str, float] = {}
        for n, v in b.procs.items():
            if n in a.procs:
                by_comp[component(n)] = by_comp.get(component(n), 0.0) + v - a.procs[n]
        by_comp["bench"] = b.self_s - a.self_s  # the publisher and probes in this process
        raw = dict(by_comp)
        for comp, rate in self.background.items():
            if comp in by_comp:
                by_comp[comp] = max(0.0, by_comp[comp] - rate * wall)
        busy = b.machine[0] - a.machine[0]
        total = b.machine[1] - a.machine[1]
        ours = sum(by_comp.values())
        return {
            "wall_s": round(wall, 2),
            "background_cpu_s_per_s": {k: round(v, 3) for k, v in self.background.items()},
            "cpu_s_before_background_subtraction": {k: round(v, 2) for k, v in sorted(raw.items())},
            "cpu_s": {k: round(v, 2) for k, v in sorted(by_comp.items())},
            "cpu_ms_per_item": {k: round(v / items * 1000, 3) for k, v in sorted(by_comp.items())}
            if items
            else {},
            "machine_busy_pct": round(busy / total * 100, 1) if total else None,
            "ours_pct_of_machine": round(ours / total * 100, 1) if total else None,
            "others_pct_of_machine": round(max(0.0, busy - ours) / total * 100, 1)
            if total
            else None,
        }
