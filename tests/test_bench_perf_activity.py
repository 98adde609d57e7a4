"""bench.perf.activity: what else ran on the benchmark's CPUs. /proc/stat parsing and shares on made-up readings,
then, on Linux, a spinning neighbour process seen as others' time and our own spin as ours."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.perf.activity import MachineActivity, cpu_times, describe, is_quiet, shares, validate_activity
from bench.report import tables

STAT = """cpu  900 0 300 5000 10 0 5 20 0 0
cpu0 100 0 50 1000 5 0 1 0 0 0
cpu1 200 10 100 2000 0 0 2 20 0 0
cpu2 600 0 150 2000 5 0 2 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_cpu_times_sum_the_lines_of_the_cpus_this_process_may_use():
    assert cpu_times(STAT, {0, 1}) == {"user": 300, "nice": 10, "system": 150, "idle": 3000, "iowait": 5, "irq": 0,
                                       "softirq": 3, "steal": 20}
    assert cpu_times(STAT, {2})["user"] == 600
    with pytest.raises(ValueError, match=r"\[7\]"):
        cpu_times(STAT, {0, 7})


def test_shares_split_the_cpus_time_between_this_process_others_and_steal():
    before = dict.fromkeys(("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), 0)
    # 2 CPUs for 1 s at 100 ticks/s: 200 ticks; 120 busy (we used 0.8 s), 60 idle, 20 stolen
    after = {**before, "user": 100, "system": 20, "idle": 60, "steal": 20}
    result = shares(before, after, own_seconds=0.8, ticks_per_second=100)
    assert result == {"this_process_share": 0.4, "others_share": 0.2, "steal_share": 0.1}
    assert shares(before, before, 0.0, 100)["others_share"] is None  # no time passed: nothing to say


def test_quiet_means_others_and_steal_each_within_five_percent():
    base = {"source": "/proc/stat", "cpus": 2, "this_process_share": 0.9, "others_share": 0.01, "steal_share": 0.0}
    assert is_quiet(base) and "(quiet)" in describe(base)
    assert not is_quiet({**base, "others_share": 0.3}) and "not quiet" in describe({**base, "others_share": 0.3})
    assert not is_quiet({**base, "steal_share": 0.06})
    assert is_quiet({"source": None}) is None and describe(None) == "machine activity not measured"


@pytest.mark.parametrize("bad", [None, {}, {"source": "/proc/stat", "cpus": 2, "others_share": 1.5},
                                 {"source": "/proc/stat", "cpus": 0, "others_share": 0.1}],
                         ids=["null", "no-source", "share-above-1", "no-cpus"])
def test_a_malformed_activity_record_is_rejected(bad):
    with pytest.raises(ValueError):
        validate_activity(bad)


def test_an_unreadable_proc_stat_gives_an_unmeasured_record(tmp_path):
    with MachineActivity(stat_path=tmp_path / "absent") as activity:
        pass
    assert activity.report() == {"source": None}
    validate_activity(activity.report())


def test_a_caption_says_what_else_ran_where_the_file_measured_it():
    doc = {"machine": {"device": "cpu", "device_name": "x", "torch": "2", "commit": "abc"}, "date": "2026-12-04"}
    assert "other processes" not in tables.caption("f.json", doc, "details")
    busy = {"source": "/proc/stat", "cpus": 2, "this_process_share": 0.5, "others_share": 0.42, "steal_share": 0.0}
    text = tables.caption("f.json", {**doc, "activity": busy}, "details")
    assert "other processes took 42.0% and steal 0.0% of the 2 CPUs' time while it ran (not quiet" in text


linux_only = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads Linux's /proc/stat")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@linux_only
def test_a_spinning_neighbour_shows_as_others_and_our_own_spin_as_ours():
    with MachineActivity() as ours:
        _spin(1.0)
    mine = ours.report()
    validate_activity(mine)
    cpus = mine["cpus"]
    assert mine["this_process_share"] >= 0.5 / cpus  # one busy thread: 1/cpus of the CPUs' time

    neighbour = subprocess.Popen([sys.executable, "-c", "import time\nprint('go', flush=True)\nend = time.time() + 30\n"
                                  "while time.time() < end: pass"], stdout=subprocess.PIPE, text=True)
    try:
        assert neighbour.stdout.readline().strip() == "go"
        with MachineActivity() as theirs:
            time.sleep(1.0)
    finally:
        neighbour.kill()
        neighbour.wait()
    busy = theirs.report()
    assert busy["others_share"] >= 0.5 / cpus and busy["this_process_share"] < 0.5 / cpus
