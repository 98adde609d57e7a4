"""The kernel benchmark runs end to end on tiny shapes, checks each backend before timing it, and refuses
to print a speed-up for a backend whose outputs or gradients are wrong."""
import json

import torch

from bench.perf import distill_loss_bench, mixer_loss_bench
from bench.perf import kernel_bench as bench_kernels
from kernels.linear_recurrence import BACKENDS, linear_recurrence_chunk


def test_recurrence_suite_checks_then_times_every_backend(tmp_path):
    out = tmp_path / "k.json"
    assert bench_kernels.main(["--lengths", "40", "--cases", "linear_recurrence:channel,delta_rule:head",
                               "--backends", "naive,chunk,triton", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["matmul_gflops"] > 0
    rows = {(r["op"], r["backend"]): r for r in result["rows"]}
    assert set(rows) == {("linear_recurrence", b) for b in ("naive", "chunk", "triton")} | \
        {("delta_rule", "naive"), ("delta_rule", "chunk")}  # no Triton delta rule: no row, no claim
    for row in rows.values():
        assert row["correct"] and row["fwd_s"] > 0 and row["speedup_fwd"] > 0


def test_a_wrong_backend_gets_no_speedup(monkeypatch):
    def off_by_one_percent(*args, **kwargs):
        o, state = linear_recurrence_chunk(*args, **kwargs)
        return o * 1.01, state

    monkeypatch.setitem(BACKENDS, "broken", off_by_one_percent)
    rows = bench_kernels.bench_case("linear_recurrence", "head", 1, 40, 2, 16, ["naive", "broken"], "naive",
                                    "cpu", torch.float32, repeats=1)
    broken = next(r for r in rows if r["backend"] == "broken")
    assert not broken["correct"] and broken["rel_err"] > 5e-3
    assert broken["speedup_fwd"] is None and broken["speedup_fwdbwd"] is None


def test_loss_suites_agree_with_the_materialised_losses():
    distill = distill_loss_bench.run("cpu", quick=True)
    mixer = mixer_loss_bench.run("cpu", quick=True)
    assert {r["backend"] for r in distill} == {"naive", "chunk"} and all(r["correct"] for r in distill)
    assert {r["backend"] for r in mixer} == {"naive", "tiled"} and all(r["correct"] for r in mixer)
    assert all(r["peak_mib"] is not None and r["fwdbwd_s"] > 0 for r in distill + mixer)


def _base_checkout(tmp_path, name: str, appended: str):
    """A copy of this tree's kernels whose linear-recurrence chunk form is replaced by `appended` code."""
    import shutil
    from pathlib import Path

    base = tmp_path / name
    shutil.copytree(Path(__file__).resolve().parents[1] / "kernels", base / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    chunk = base / "kernels" / "linear_recurrence" / "chunk.py"
    chunk.write_text(chunk.read_text() + appended)
    return base


def test_ab_loads_the_base_checkouts_own_code_and_refuses_to_time_different_outputs(tmp_path, capsys):
    from pathlib import Path

    from bench.perf import kernel_ab

    slow_but_equal = _base_checkout(tmp_path, "naive", """
from kernels.linear_recurrence.naive import linear_recurrence_naive
def linear_recurrence_chunk(q, k, v, chunk_size=None, **kwargs):
    return linear_recurrence_naive(q, k, v, **kwargs)
""")
    assert kernel_ab.main(["--base-dir", str(slow_but_equal), "--cases", "lr:channel:70", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| base" in line]
    assert len(rows) == 1 and float(rows[0].split("|")[-1]) < 1e-4  # the loop's outputs equal the chunk form's
    wrong = _base_checkout(tmp_path, "wrong", """
_right = linear_recurrence_chunk
def linear_recurrence_chunk(*args, **kwargs):
    o, state = _right(*args, **kwargs)
    return o * 1.01, state
""")
    assert kernel_ab.main(["--base-dir", str(wrong), "--cases", "lr:head:70,dr:head:70", "--repeats", "1"]) == 1
    out = capsys.readouterr().out
    assert "outputs differ" in out and out.count("| base") == 1  # only the unchanged delta rule is timed
    import importlib

    ours = importlib.import_module("kernels.linear_recurrence.chunk")  # ours put back, unchanged
    assert ours.__file__.startswith(str(Path(__file__).resolve().parents[1])) and hasattr(ours, "chunk_forms")
    assert kernel_ab.main(["--base-dir", str(tmp_path / "empty"), "--repeats", "1"]) == 2
    assert "no kernels" in capsys.readouterr().err
