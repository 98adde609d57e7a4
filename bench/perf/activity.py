"""What else ran on this process's CPUs while a benchmark timed: the share of their time that other processes and
the hypervisor (steal) took, so a reader can tell a quiet run's numbers from a busy one's.

    with MachineActivity() as activity:
        ... timed work ...
    activity.report()  # {"source": "/proc/stat", "cpus": 2, "others_share": 0.01, "steal_share": 0.0, ...}

Read from Linux's /proc/stat, on the CPUs this process may run on (its affinity), against this process's own CPU
time (all its threads); `source` is None where /proc/stat cannot be read. Paired ratios measured in one round
(`bench.perf.timing.time_round_robin`) share a slow spell; absolute times from a busy run do not compare with
another run's.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
QUIET_SHARE = 0.05  # at most this share of the CPUs' time taken by others (or by steal) counts as quiet
# /proc/stat's per-CPU columns (guest time is already counted in user, so it is not read)
_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_BUSY = ("user", "nice", "system", "irq", "softirq")
_CPU_LINE = re.compile(r"cpu(\d+)\s+(.*)")


def cpu_times(text: str, cpus: set[int]) -> dict[str, int]:
    """The columns of /proc/stat's `cpuN` lines summed over `cpus` (clock ticks). Raises ValueError if a CPU of
    `cpus` has no line."""
    totals = dict.fromkeys(_COLUMNS, 0)
    seen = set()
    for line in text.splitlines():
        match = _CPU_LINE.match(line)
        if not match or int(match[1]) not in cpus:
            continue
        seen.add(int(match[1]))
        for column, value in zip(_COLUMNS, match[2].split()):
            totals[column] += int(value)
    if seen != cpus:
        raise ValueError(f"/proc/stat has no line for CPUs {sorted(cpus - seen)}")
    return totals


def shares(before: dict[str, int], after: dict[str, int], own_seconds: float, ticks_per_second: float) -> dict:
    """This process's, other processes' and the hypervisor's (steal) shares of the CPUs' time between two
    `cpu_times` readings, given this process's CPU seconds over the same interval."""
    delta = {column: after[column] - before[column] for column in _COLUMNS}
    total = sum(delta.values())
    if total <= 0:
        return {"this_process_share": None, "others_share": None, "steal_share": None}
    busy_seconds = sum(delta[column] for column in _BUSY) / ticks_per_second
    total_seconds = total / ticks_per_second
    return {"this_process_share": round(min(1.0, own_seconds / total_seconds), 4),
            "others_share": round(max(0.0, busy_seconds - own_seconds) / total_seconds, 4),
            "steal_share": round(delta["steal"] / total, 4)}


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


class MachineActivity:
    """Reads /proc/stat and this process's CPU time at `start()` and `stop()` (or entry and exit of a `with`
    block); `report()` after it. In a multi-process run the other processes (ranks) count as others."""

    def __init__(self, stat_path: Path = PROC_STAT):
        self.stat_path = stat_path
        self.cpus = _affinity()
        self._result: dict | None = None

    def _read(self) -> dict[str, int] | None:
        try:
            return cpu_times(self.stat_path.read_text(), self.cpus)
        except (OSError, ValueError):
            return None

    def start(self) -> "MachineActivity":
        try:
            self._load = os.getloadavg()[0]
        except (AttributeError, OSError):
            self._load = None
        self._stat, self._own, self._wall = self._read(), time.process_time(), time.monotonic()
        return self

    def stop(self) -> "MachineActivity":
        stat, own, wall = self._read(), time.process_time(), time.monotonic()
        if self._stat is None or stat is None:
            self._result = {"source": None}
        else:
            self._result = {"source": str(self.stat_path), "cpus": len(self.cpus),
                            "wall_s": round(wall - self._wall, 3), "load_average_1m_before": self._load,
                            **shares(self._stat, stat, own - self._own, os.sysconf("SC_CLK_TCK"))}
        return self

    def __enter__(self) -> "MachineActivity":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def report(self) -> dict:
        if self._result is None:
            raise RuntimeError("MachineActivity.report() is read after the block it measured")
        return self._result


def quiet(others_share: float, steal_share: float) -> bool:
    """Others and steal each took at most QUIET_SHARE of the CPUs' time."""
    return others_share <= QUIET_SHARE and steal_share <= QUIET_SHARE


def is_quiet(activity: dict | None) -> bool | None:
    """`quiet` for one `MachineActivity.report()`; None where it was not measured."""
    if not activity or activity.get("source") is None or activity.get("others_share") is None:
        return None
    return quiet(activity["others_share"], activity["steal_share"])


def describe(activity: dict | None) -> str:
    """One line for a benchmark's output or a table's caption."""
    quiet = is_quiet(activity)
    if quiet is None:
        return "machine activity not measured"
    text = (f"other processes took {100 * activity['others_share']:.1f}% and steal {100 * activity['steal_share']:.1f}% "
            f"of the {activity['cpus']} CPUs' time while it ran")
    return text + (" (quiet)" if quiet else f" (not quiet: above {100 * QUIET_SHARE:.0f}%)")


def validate_activity(activity) -> None:
    """Raise ValueError unless `activity` is what `MachineActivity.report()` writes."""
    if not isinstance(activity, dict) or "source" not in activity:
        raise ValueError("expected an object with a 'source'")
    if activity["source"] is None:
        return
    for key in ("this_process_share", "others_share", "steal_share"):
        value = activity.get(key)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"{key} must be a share between 0 and 1 or null, got {value!r}")
    if not isinstance(activity.get("cpus"), int) or activity["cpus"] < 1:
        raise ValueError(f"cpus must be a positive integer, got {activity.get('cpus')!r}")
