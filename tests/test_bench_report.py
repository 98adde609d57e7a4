"""Records → CSV → Markdown; concurrent rebuilds lose no rows; malformed records are reported, not dropped."""
import copy
import csv
import json
import multiprocessing

import pytest

from bench.report import leaderboard


def _record(name: str, student: str = "gla", seed: int = 0, recovered: float = 90.0) -> dict:
    return {
        "run": name, "settings": {"teachers": ["embedded"], "student": student, "init": "qkv_copy",
                                  "stages": ["hidden_alignment", "end_to_end"], "tokens": 1000, "seed": seed},
        "metrics": {"val_kl": 0.25, "val_ppl_student": 31.5, "val_ppl_teacher": 30.0},
        "evaluation": {"student": {"ppl": 70.0, "cloze_acc": 0.13, "recall_mqar_256": 0.5, "recall_passkey_256": 1.0},
                       "teacher": {"ppl": 66.0, "cloze_acc": 0.14, "recall_mqar_256": 1.0, "recall_passkey_256": 1.0},
                       "recovered": {"ppl": 94.3, "avg": recovered}},
        "throughput": {"prefill_tokens_per_s": {"student": {"2048": 1e4, "16384": 9e3}, "teacher": {"2048": 2e4}},
                       "decode_ms_per_token": {"student": {"32768": 2.0}, "teacher": {"32768": 31.0}},
                       "backend": {"student": "linear_recurrence:chunk"}},
        "params": {"student": 4_000_000, "teacher": 4_200_000}, "state_bytes_per_layer": [65536] * 4,
        "bf16": False, "seconds": 160.0, "date": "2026-11-26T00:00:00Z",
        "machine": {"device_name": "x86_64", "torch": "2.13.0", "commit": "abc1234"},
    }


def _write(results, record):
    (results / "runs").mkdir(parents=True, exist_ok=True)
    (results / "runs" / f"{record['run']}.json").write_text(json.dumps(record))


def test_records_become_documented_columns_and_a_sorted_markdown_table(tmp_path):
    _write(tmp_path, _record("a", "gla", recovered=80.0))
    _write(tmp_path, _record("b", "xlstm", recovered=95.0))
    rows = list(csv.DictReader(open(leaderboard.rebuild(tmp_path))))
    assert list(rows[0])[: len(leaderboard.COLUMNS)] == leaderboard.COLUMNS
    first = rows[0]
    assert first["run_id"] == "a" and float(first["recall_256"]) == 0.75 and first["recall_4096"] == ""
    assert float(first["prefill_tok_s_16384"]) == 9e3 and float(first["decode_ms_32768"]) == 2.0
    assert int(first["state_bytes"]) == 4 * 65536 and first["backend"] == "linear_recurrence:chunk"
    table = leaderboard.markdown(leaderboard.load_rows(tmp_path))
    lines = table.splitlines()
    assert lines[2].startswith("| xlstm") and lines[3].startswith("| gla")  # best recovery first


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


@pytest.mark.slow
def test_figures_are_drawn_from_records_and_reports_only(tmp_path):
    from bench.report import figures

    for index, (student, init) in enumerate([("gla", "random"), ("gla", "qkv_copy"), ("xlstm", "qkv_copy")]):
        record = _record(f"r{index}", student, seed=index % 2)
        record["settings"]["init"] = init
        record["stages"] = [{"stage": "hidden_alignment", "losses": [0.5, 0.3]},
                            {"stage": "end_to_end", "losses": [2.0, 1.5, 1.2]}]
        _write(tmp_path, record)
    report = {"machine": {"device_name": "cpu", "torch_threads": 2}, "settings": {"dtype": "float32"},
              "models": {name: {"prefill": {"2048": {"median_s": 0.1 * k}, "16384": {"median_s": 0.9 * k}},
                                "decode": {"1024": {"ms_per_token": 1.0 * k}, "32768": {"ms_per_token": 1.1 * k}}}
                         for k, name in enumerate(["floor", "teacher", "gla"], 1)}}
    (tmp_path / "throughput_cpu.json").write_text(json.dumps(report))
    (tmp_path / "runs" / "list.json").write_text("[1, 2]")  # valid JSON, not a record: skipped by name
    (tmp_path / "runs" / "partial.json").write_text('{"run": "x", "settings": 3}')
    paths = figures.draw_all(tmp_path)
    assert {p.name for p in paths} == {"recovery_by_architecture.png", "init_ablation.png", "stage_loss_curves.png",
                                       "recall_vs_length.png", "score_vs_throughput.png", "prefill_vs_length.png",
                                       "decode_vs_context.png"}
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert figures.main(["--results-dir", str(tmp_path / "missing")]) == 2
