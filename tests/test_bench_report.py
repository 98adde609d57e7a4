"""Records → CSV → Markdown; concurrent rebuilds lose no rows; malformed records are reported, not dropped."""
import copy
import csv
import json
import multiprocessing

import numpy as np
import pytest

from bench.evaluation import items, recovery
from bench.report import leaderboard


def _record(name: str, student: str = "gla", seed: int = 0, cloze: float = 0.13, commit: str = "abc1234",
            init: str = "qkv_copy") -> dict:
    """A record as runs wrote them before per-item results: flat scores only."""
    return {
        "run": name, "settings": {"teachers": ["embedded"], "student": student, "init": init,
                                  "stages": ["hidden_alignment", "end_to_end"], "tokens": 1000, "seed": seed},
        "metrics": {"val_kl": 0.25, "val_ppl_student": 31.5, "val_ppl_teacher": 30.0},
        "evaluation": {"student": {"ppl": 70.0, "cloze_acc": cloze, "recall_mqar_256": 0.5, "recall_passkey_256": 1.0},
                       "teacher": {"ppl": 66.0, "cloze_acc": 0.14, "recall_mqar_256": 1.0, "recall_passkey_256": 1.0},
                       "recovered": {"ppl": 94.3, "avg": 20.0}},
        "throughput": {"prefill_tokens_per_s": {"student": {"2048": 1e4, "16384": 9e3}, "teacher": {"2048": 2e4}},
                       "decode_ms_per_token": {"student": {"32768": 2.0}, "teacher": {"32768": 31.0}},
                       "backend": {"student": "linear_recurrence:chunk"}},
        "params": {"student": 4_000_000, "teacher": 4_200_000}, "state_bytes_per_layer": [65536] * 4,
        "bf16": False, "seconds": 160.0, "date": "2026-11-26T00:00:00Z",
        "machine": {"device_name": "x86_64", "torch": "2.13.0", "commit": commit},
    }


def evaluated(rng, quality: float, recall_quality: float = 0.0, lengths=(256, 512, 1024)) -> dict:
    """An `evaluation` with items as runs write it: a teacher and a student of the given quality (0..1)."""
    def coins(n, p):
        return items.item_set((rng.random(n) < p).astype(int).tolist())

    def docs(p, per_doc):
        return items.item_set(rng.binomial(per_doc, min(1.0, max(0.0, p)), 20).tolist(), [per_doc] * 20)

    found = {"teacher": {}, "student": {}}
    for who, q, rq in (("teacher", 1.0, 1.0), ("student", quality, recall_quality)):
        nll = rng.normal(3.2 + (1 - q), 0.1, 30) * 255
        found[who]["ppl"] = items.item_set(nll.tolist(), [255] * 30)
        found[who]["cloze_acc"] = coins(1000, 0.2 * q)
        for n in lengths:
            found[who][f"recall_mqar_{n}"] = docs(0.01 + 0.98 * rq * (1.2 - n / 2048), 12)
            found[who][f"recall_passkey_{n}"] = docs(rq * (1.1 - n / 2048), 1)
    scores = {who: {name: items.statistic(s, recovery.lower_is_better(name)) for name, s in sets.items()}
              for who, sets in found.items()}
    return {"teacher": scores["teacher"], "student": scores["student"],
            "recovered": recovery.recovered(scores["student"], scores["teacher"]),
            "summary": recovery.summary(scores["student"], scores["teacher"], found["student"], found["teacher"]),
            "items": found, "eval_seed": 0}


def _write(results, record):
    (results / "runs").mkdir(parents=True, exist_ok=True)
    (results / "runs" / f"{record['run']}.json").write_text(json.dumps(record))


def test_records_become_documented_columns_and_a_sorted_markdown_table(tmp_path):
    _write(tmp_path, _record("a", "gla", cloze=0.10))
    _write(tmp_path, _record("b", "xlstm", cloze=0.14))
    rows = list(csv.DictReader(open(leaderboard.rebuild(tmp_path))))
    assert list(rows[0])[: len(leaderboard.COLUMNS)] == leaderboard.COLUMNS
    first = rows[0]
    assert first["run_id"] == "a" and float(first["recall_256"]) == 0.75 and first["recall_4096"] == ""
    assert float(first["prefill_tok_s_16384"]) == 9e3 and float(first["decode_ms_32768"]) == 2.0
    assert int(first["state_bytes"]) == 4 * 65536 and first["backend"] == "linear_recurrence:chunk"
    table = leaderboard.markdown(leaderboard.load_rows(tmp_path))
    lines = table.splitlines()
    assert lines[2].startswith("| xlstm") and lines[3].startswith("| gla")  # best recovery first


def test_what_else_ran_during_a_run_reaches_its_row_and_an_older_record_leaves_it_empty(tmp_path):
    _write(tmp_path, {**_record("a"), "activity": {"source": "/proc/stat", "cpus": 2, "others_share": 0.12,
                                                   "steal_share": 0.01, "this_process_share": 0.85}})
    _write(tmp_path, _record("b", "xlstm"))
    rows = {r["run_id"]: r for r in csv.DictReader(open(leaderboard.rebuild(tmp_path)))}
    assert (float(rows["a"]["others_share"]), float(rows["a"]["steal_share"])) == (0.12, 0.01)
    assert rows["b"]["others_share"] == rows["b"]["steal_share"] == ""


def test_an_old_record_without_items_gets_families_without_intervals(tmp_path):
    _write(tmp_path, _record("old", cloze=0.07))
    (r,) = leaderboard.load_rows(tmp_path)
    language, recall, cloze = 100 * 66 / 70, 100 * (0.49 / 0.99 + 1.0) / 2, 50.0
    assert r["pct_language"] == pytest.approx(language) and r["pct_recall"] == pytest.approx(recall)
    assert r["pct_cloze"] == pytest.approx(cloze) and r["pct_recovered"] == pytest.approx((language + recall + cloze) / 3)
    assert r["pct_recovered_lo"] is None and r["pct_language_hi"] is None and r["pct_lm_eval"] is None
    assert r["eval_seed"] == 0 and r[leaderboard.TIE_COLUMN] is not None  # old runs drew documents by training seed
    assert r["recovered_recall_mqar_256"] == pytest.approx(100 * 0.49 / 0.99)  # recomputed, not the stored 'recovered'


def test_a_record_with_items_carries_each_familys_interval(tmp_path):
    record = _record("new")
    record["evaluation"] = evaluated(np.random.default_rng(0), quality=0.9, recall_quality=0.5)
    _write(tmp_path, record)
    (r,) = list(csv.DictReader(open(leaderboard.rebuild(tmp_path))))
    for family in ("language", "recall", "cloze", "recovered"):
        lo, value, hi = (float(r[f"pct_{family}{end}"]) for end in ("_lo", "", "_hi"))
        assert lo < value < hi
    assert float(r["c_0.05"]) >= 0 and float(r["alpha_star"]) > 0 and r["eval_seed"] == "0"


def test_a_cell_whose_seeds_ran_on_different_commits_or_a_dirty_tree_is_flagged(tmp_path):
    _write(tmp_path, _record("clean0", "gla", seed=0, commit="aaa1111"))
    _write(tmp_path, _record("clean1", "gla", seed=1, commit="aaa1111"))
    _write(tmp_path, _record("mixed0", "xlstm", seed=0, commit="aaa1111"))
    _write(tmp_path, _record("mixed1", "xlstm", seed=1, commit="bbb2222-dirty"))
    _write(tmp_path, _record("dirty0", "mamba", seed=0, commit="ccc3333-dirty"))
    flags = {r["run_id"]: (r["cell_flag"], r["dirty"]) for r in csv.DictReader(open(leaderboard.rebuild(tmp_path)))}
    assert flags == {"clean0": ("", "False"), "clean1": ("", "False"),
                     "mixed0": ("mixed commits, dirty tree", "False"), "mixed1": ("mixed commits, dirty tree", "True"),
                     "dirty0": ("dirty tree", "True")}


def test_a_cell_whose_seeds_ran_in_different_precisions_is_flagged(tmp_path):
    # records from before the identity held what `--dtype auto` resolved to share a config hash across machines
    for seed, bf16 in ((0, True), (1, False)):
        _write(tmp_path, {**_record(f"auto{seed}", "gla", seed=seed), "bf16": bf16})
    for seed in (0, 1):
        _write(tmp_path, {**_record(f"same{seed}", "mamba", seed=seed), "bf16": True})
    flags = {r["run_id"]: (r["cell_flag"], r["dtype"]) for r in csv.DictReader(open(leaderboard.rebuild(tmp_path)))}
    assert flags == {"auto0": ("mixed precision", "bf16"), "auto1": ("mixed precision", "fp32"),
                     "same0": ("", "bf16"), "same1": ("", "bf16")}


def test_a_cell_interval_spans_the_seeds_bootstrap_intervals_else_their_range():
    with_items = [{"x": 50.0, "x_lo": 45.0, "x_hi": 55.0}, {"x": 60.0, "x_lo": 52.0, "x_hi": 70.0}]
    assert leaderboard.cell_value(with_items, "x") == leaderboard.CellValue(55.0, 45.0, 70.0, "bootstrap", 2)
    without = [{"x": "50.0", "x_lo": ""}, {"x": "60.0", "x_lo": ""}]  # CSV cells are strings
    assert leaderboard.cell_value(without, "x") == leaderboard.CellValue(55.0, 50.0, 60.0, "seeds", 2)
    assert leaderboard.cell_value(without[:1], "x").kind == "one run"
    assert leaderboard.cell_value([{"x": ""}], "x") is None


def test_malformed_record_is_reported_by_name_and_the_rest_kept(tmp_path):
    _write(tmp_path, _record("good"))
    broken = copy.deepcopy(_record("broken"))
    del broken["metrics"]
    _write(tmp_path, broken)
    (tmp_path / "runs" / "torn.json").write_text('{"run": "torn", ')
    messages = []
    rows = list(csv.DictReader(open(leaderboard.rebuild(tmp_path, report=messages.append))))
    assert [r["run_id"] for r in rows] == ["good"]
    assert any("broken.json" in m for m in messages) and any("torn.json" in m for m in messages)


def _writer(args):
    results, index = args
    from pathlib import Path

    _write(Path(results), _record(f"run{index}", seed=index))
    leaderboard.rebuild(Path(results), report=lambda m: None)


def test_concurrent_writers_lose_no_rows(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_writer, [(str(tmp_path), i) for i in range(12)])
    # no rebuild here: the last writer's own rebuild, under the lock, must already hold every row
    rows = list(csv.DictReader(open(tmp_path / "leaderboard.csv")))
    assert sorted(r["run_id"] for r in rows) == sorted(f"run{i}" for i in range(12))


def test_cli_prints_the_table_and_refuses_a_missing_results_dir(tmp_path, capsys):
    _write(tmp_path, _record("a"))
    assert leaderboard.main(["--results-dir", str(tmp_path)]) == 0
    assert "| gla | qkv_copy |" in capsys.readouterr().out
    assert leaderboard.main(["--results-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def synthetic_grid(results, students=("gla", "xlstm", "linear_attention", "gated_deltanet", "mamba"),
                   inits=("random", "qkv_copy", "qkv_copy+matrix_mixing"), seeds=(0, 1)):
    """Records with items for a small grid: quality by student and init, one cell on two commits."""
    rng = np.random.default_rng(0)
    for s_index, student in enumerate(students):
        for i_index, init in enumerate(inits):
            for seed in seeds:
                quality = 0.5 + 0.08 * s_index + 0.05 * i_index
                record = _record(f"{student}-{init}-{seed}", student, seed, init=init,
                                 commit="bbb2222" if (student, init, seed) == ("gla", "qkv_copy", 1) else "aaa1111")
                record["settings"]["stages"] = (["matrix_mixing"] if "matrix" in init else []) + \
                    ["hidden_alignment", "end_to_end"]
                record["evaluation"] = evaluated(rng, quality, recall_quality=0.1 * s_index)
                record["stages"] = [{"stage": name, "losses": (base / (1 + quality * np.arange(steps) / 10)
                                                               * rng.uniform(0.95, 1.05, steps)).tolist()}
                                    for name, base, steps in (("matrix_mixing", 50.0, 3), ("hidden_alignment", 0.4, 5),
                                                              ("end_to_end", 6.0, 40))
                                    if name in record["settings"]["stages"]]
                _write(results, record)


@pytest.mark.slow
def test_figures_are_drawn_from_records_and_reports_only(tmp_path):
    from bench.report import figures

    synthetic_grid(tmp_path, students=("gla", "xlstm"), inits=("random", "qkv_copy"))
    _write(tmp_path, _record("old-format", "mamba"))  # a record without items is drawn without intervals
    report = {"machine": {"device_name": "cpu", "torch_threads": 2}, "settings": {"dtype": "float32"},
              "models": {name: {"prefill": {"2048": {"median_s": 0.1 * k}, "16384": {"median_s": 0.9 * k}},
                                "decode": {"1024": {"ms_per_token": 1.0 * k}, "32768": {"ms_per_token": 1.1 * k}}}
                         for k, name in enumerate(["floor", "teacher", "gla"], 1)}}
    (tmp_path / "throughput_cpu.json").write_text(json.dumps(report))
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "passkey_haller2025.json").write_text(json.dumps(
        {"setting": "published", "passkey": {"gla": {"512": 10.6, "1024": 1.0}}}))
    (tmp_path / "runs" / "list.json").write_text("[1, 2]")  # valid JSON, not a record: skipped by name
    (tmp_path / "runs" / "partial.json").write_text('{"run": "x", "settings": 3}')
    paths = figures.draw_all(tmp_path)
    assert {p.name for p in paths} == {"recovery_by_family.png", "init_ablation.png", "stage_loss_curves.png",
                                       "recall_vs_length.png", "score_vs_throughput.png", "prefill_vs_length.png",
                                       "decode_vs_context.png"}
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert figures.main(["--results-dir", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_committed_figures_are_what_the_committed_results_draw(tmp_path):
    """Pixel for pixel (the PNG's compression and metadata aside), under the matplotlib CI pins: a figure left stale
    after its results changed fails."""
    import re
    from pathlib import Path

    import matplotlib
    import matplotlib.image

    from bench.report import figures

    root = Path(__file__).resolve().parents[1]
    pinned = re.search(r"^matplotlib==(\S+)$", (root / "constraints.txt").read_text(), re.M).group(1)
    if matplotlib.__version__ != pinned:
        pytest.skip(f"figures are drawn with matplotlib {pinned} (constraints.txt), this is {matplotlib.__version__}")
    results = root / "results"
    for source in [results / "runs", results / "reference", *results.glob("throughput_*.json")]:
        (tmp_path / source.name).symlink_to(source)
    drawn = figures.draw_all(tmp_path)
    committed = results / "figures"
    assert sorted(path.name for path in drawn) == sorted(path.name for path in committed.glob("*.png"))
    stale = [path.name for path in drawn
             if not np.array_equal(matplotlib.image.imread(path), matplotlib.image.imread(committed / path.name))]
    assert not stale, f"{', '.join(stale)} differ from what results/ draws: python -m bench.figures"


def test_speed_figures_give_each_machine_types_report_its_own_titled_panel(tmp_path, monkeypatch):
    from bench.report import figures

    def report(device, commit, scale, models):
        return {"machine": {"device_name": device, "cpu_capability": "AVX2", "torch_threads": 2, "commit": commit},
                "settings": {"dtype": "float32"}, "date": "2026-12-05T00:00:00Z",
                "models": {name: {"prefill": {"2048": {"median_s": 0.1 * k * scale}},
                                  "decode": {"1024": {"ms_per_token": 1.0 * k * scale}}}
                           for k, name in enumerate(models, 1)}}

    xeon = report("Xeon", "aaa1111", 1.0, ["floor", "teacher", "gla"])
    xeon["settings"]["heap"] = "steady"  # timed with glibc's heap kept steady: the title says so
    (tmp_path / "throughput_cpu.json").write_text(json.dumps(xeon))
    # the other machine's file has one model more, sorting before gla: gla keeps its colour all the same
    (tmp_path / "throughput_cpu_avx2.json").write_text(json.dumps(
        report("EPYC", "bbb2222", 2.0, ["floor", "teacher", "gla", "attention"])))
    # a run at another teacher shape (--teacher-shape): named in its title, on a y axis of its own
    wide = report("Xeon", "ccc3333", 20.0, ["floor", "teacher", "gla"])
    wide["teacher"] = {"num_hidden_layers": 30, "hidden_size": 576}
    (tmp_path / "throughput_cpu_wide.json").write_text(json.dumps(wide))
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    reports = figures._throughput_reports(tmp_path)
    figures.prefill_vs_length(reports, tmp_path)
    figures.decode_vs_context(reports, tmp_path)
    for fig in drawn:
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title().split(" ")[0] for ax in panels] == ["Xeon", "EPYC", "Xeon"]
        assert all("commit" in ax.get_title() for ax in panels)
        assert "teacher 30 layers × width 576" in panels[2].get_title() and "teacher" not in panels[0].get_title()
        assert ["steady heap" in ax.get_title() for ax in panels] == [True, False, False]
        shared = panels[0].get_shared_y_axes()
        assert shared.joined(panels[0], panels[1]) and not shared.joined(panels[0], panels[2])
        assert [ax.get_ylabel() != "" for ax in panels] == [True, False, True]
        legend = panels[-1].get_legend()  # one legend, beside the last panel
        panels = panels[:2]
        assert [len(ax.get_lines()) for ax in panels] == [3, 4]
        colors = [{line.get_label(): line.get_color() for line in ax.get_lines()} for ax in panels]
        assert all(colors[1][name] == color for name, color in colors[0].items())
        assert sorted(text.get_text() for text in legend.get_texts()) == \
            ["attention", "floor", "gla", "teacher"]
    first = [ax for ax in drawn[0].axes if ax.get_title()]  # each machine's times are its own
    times = [{line.get_label(): line.get_ydata()[0] for line in ax.get_lines()} for ax in first]
    assert times[1]["gla"] == pytest.approx(2 * times[0]["gla"])
    # below the prefill times, each student's time over its floor's (not the teacher's or the softmax control's), on
    # one shared y axis, beside the 1.3× target; decode has no second row
    ratios = [ax for ax in drawn[0].axes if not ax.get_title()]
    assert len(ratios) == 3 and not [ax for ax in drawn[1].axes if not ax.get_title()]
    curves = [{line.get_label(): list(line.get_ydata()) for line in ax.get_lines() if not line.get_label().startswith("_")}
              for ax in ratios]
    assert curves == [{"gla": [pytest.approx(3.0)]}] * 3  # gla 0.3 s over the floor's 0.1 s, at every scale
    assert all({1.0, 1.3} <= {line.get_ydata()[0] for line in ax.get_lines()} for ax in ratios)
    assert ratios[0].get_shared_y_axes().joined(ratios[0], ratios[2])
    for fig in drawn:
        figures.plt.close(fig)


def test_score_against_speed_puts_a_students_inits_in_one_column(tmp_path, monkeypatch):
    """The speed axis is the architecture's (the side-by-side run's ratio to the teacher at its longest length),
    so every init of a student shares it; without a report, each run's own ratio at the longest common length."""
    from bench.report import figures

    synthetic_grid(tmp_path, students=("gla", "xlstm"), inits=("random", "qkv_copy"))
    _write(tmp_path, {**_record("ablation", "gla", init="random"), "settings": {  # another recipe: not a cell's seed
        **_record("ablation", "gla", init="random")["settings"], "stages": ["end_to_end"]}})
    rows = leaderboard.load_rows(tmp_path)
    seconds = {"floor": 0.5, "teacher": 2.0, "gla": 0.8, "xlstm": 1.0}
    report = {"machine": {"device_name": "EPYC", "torch_threads": 2, "commit": "abc1234"},
              "settings": {"dtype": "float32", "batch_size": 1}, "date": "2026-12-06T00:00:00Z",
              "models": {name: {"prefill": {"2048": {"median_s": s / 8}, "16384": {"median_s": s}}}
                         for name, s in seconds.items()}}
    length, speedups = figures._report_speedups(report)
    assert length == 16384 and speedups["gla"][0] == pytest.approx(2.5) and speedups["floor"][0] == pytest.approx(4.0)
    # the records' sweeps: student 1e4 and teacher 2e4 tokens/s at 2,048; 16,384 has no teacher time
    assert figures._run_speedups(leaderboard.primary_rows(rows)) == (2048, {"gla": (0.5, 0.5, 0.5),
                                                                           "xlstm": (0.5, 0.5, 0.5)})
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    wide = {**report, "teacher": {"num_hidden_layers": 30, "hidden_size": 576}}  # not the grid's teacher's shape
    figures.score_vs_throughput(rows, [report, wide], tmp_path)
    assert len([ax for ax in drawn[0].axes if ax.get_title()]) == 1  # the grid's scores only beside its shape's speed
    figures.score_vs_throughput(rows, [], tmp_path)
    by_cell = leaderboard.cells(leaderboard.primary_rows(rows))
    means = sorted(round(leaderboard.cell_value(members, "pct_recovered").mean, 6) for members in by_cell.values())
    for fig, expected_x in zip(drawn, ({"gla": 2.5, "xlstm": 2.0}, {"gla": 0.5, "xlstm": 0.5})):
        ax = fig.axes[0]
        points = [(line.get_color(), line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines
                  if line.get_marker() in ("o", "s")]
        assert sorted(round(y, 6) for _, _, y in points) == means  # one point per cell, the ablation left out
        colors = figures._student_colors(expected_x)
        for student, x in expected_x.items():
            assert [px for c, px, _ in points if c == colors[student]] == pytest.approx([x, x])
    rows[0].update({key: None for key in rows[0] if "prefill_tok_s" in key})  # one run without a sweep
    assert figures._run_speedups(leaderboard.primary_rows(rows))[0] == 2048
    for row in rows:  # runs without a throughput sweep and no report: no speed to draw against
        row.update({key: None for key in row if "prefill_tok_s" in key})
    assert figures.score_vs_throughput(rows, [], tmp_path) is None


def test_figures_of_records_draw_the_tables_cells_without_ablation_runs(tmp_path, monkeypatch):
    """The loss and recall figures aggregate a cell's seeds as the tables do: a run of the same student and init
    with another recipe (an ablation grid's) is not one more seed of the cell."""
    from bench.report import figures

    synthetic_grid(tmp_path, students=("gla",), inits=("qkv_copy",), seeds=(0, 1))
    ablation = _record("gla-no-hidden-0", "gla", init="qkv_copy")
    ablation["settings"]["stages"] = ["end_to_end"]
    ablation["stages"] = [{"stage": "end_to_end", "losses": [99.0] * 7}]
    _write(tmp_path, ablation)
    seen = {}
    monkeypatch.setattr(figures, "stage_loss_curves",
                        lambda records, flags, out: seen.setdefault("losses", records) and out / "a.png")
    monkeypatch.setattr(figures, "recall_vs_length",
                        lambda records, reference, flags, out: seen.setdefault("recall", records) and out / "b.png")
    figures.draw_all(tmp_path)
    for name in ("losses", "recall"):
        assert sorted(r["run"] for r in seen[name]) == ["gla-qkv_copy-0", "gla-qkv_copy-1"]
    rows = leaderboard.load_rows(tmp_path)
    assert len(figures.cell_records(figures._records(tmp_path), rows)) == 2 and len(rows) == 3
