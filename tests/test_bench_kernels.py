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


def test_ab_timing_against_a_checkout_runs_and_rejects_a_bad_directory(tmp_path, capsys):
    from pathlib import Path

    from bench.perf import kernel_ab as kernels_ab

    repo = Path(__file__).resolve().parents[1]
    assert kernels_ab.main(["--base-dir", str(repo), "--cases", "lr:channel:70,dr:head:70", "--repeats", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "| base" in line]
    assert len(lines) == 2 and all(float(line.split("|")[-1]) < 1e-6 for line in lines)  # the same code
    assert kernels_ab.main(["--base-dir", str(tmp_path), "--repeats", "1"]) == 2
    assert "no kernels" in capsys.readouterr().err
