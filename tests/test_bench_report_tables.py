"""Tables come from results files: rendered rows and provenance, one error line for a bad file, and the
committed README and docs hold exactly what the committed results render (a typed or stale table fails)."""
import csv
import json

import pytest

from bench.errors import BenchError
from bench.report import tables

MACHINE = {"device": "cpu", "device_name": "x86_64", "torch": "2.13.0+cpu", "commit": "abc1234"}


def _kernel_row(backend, fwd_s, fwdbwd_s, **extra):
    return {"op": "linear_recurrence", "decay": "head", "T": 64, "B": 1, "H": 2, "K": 8, "V": 8, "dtype": "float32",
            "backend": backend, "baseline": "naive", "fwd_s": fwd_s, "fwdbwd_s": fwdbwd_s, "correct": True, **extra}


def _write_results(directory):
    (directory / "kernels_cpu.json").write_text(json.dumps({"machine": MACHINE, "matmul_gflops": 100.0, "rows": [
        _kernel_row("naive", 0.010, 0.040, rel_err=0.0, fwd_gflops=5.0, speedup_fwd=1.0, speedup_fwdbwd=1.0),
        _kernel_row("chunk", 0.001, 0.002, rel_err=1e-6, fwd_gflops=50.0, speedup_fwd=10.0, speedup_fwdbwd=20.0,
                    form="C=64, all of chunks factored")]}))
    (directory / "kernels_h100_distill_loss.json").write_text(json.dumps({"machine": MACHINE, "rows": [
        {"backend": "chunk", "chunk": 256, "B": 1, "T": 16, "V": 32, "D": 8, "fwdbwd_s": 0.02, "peak_mib": 353.0,
         "memory_ratio": 7.5, "rel_diff": 7e-8}]}))
    (directory / "kernels_h100_mixer_loss.json").write_text(json.dumps({"machine": MACHINE, "rows": [
        {"backend": "tiled", "tile": 32, "B": 1, "H": 4, "Hkv": 2, "K": 8, "T": 64, "fwdbwd_s": 0.0913, "speedup": 0.101,
         "peak_mib": 28.76, "memory_ratio": 13.53, "rel_diff": 8.2e-8, "correct": True}]}))
    models = {name: {"prefill": {"2048": {"median_s": seconds}}, "train": {"2048": {"tokens_per_s": 4000.0}},
                     "decode": {"1024": {"ms_per_token": 2.0}, "32768": {"ms_per_token": 3.0, "state_bytes": state}}}
              for name, seconds, state in (("floor", 0.1, 0), ("teacher", 0.2, 2**27), ("gla", 0.15, 262144))}
    (directory / "throughput_cpu.json").write_text(json.dumps({"machine": MACHINE, "models": models, "settings": {
        "lengths": [2048], "train_lengths": [2048], "decode_contexts": [1024, 32768], "students": ["gla"],
        "dtype": "float32", "batch_size": 1, "threads": 2, "repeats": 3},
        "targets": {"prefill_within_1.3x_floor_at_2048_and_16384": {"gla": False},
                    "decode_no_slower_than_teacher_at_1024": {"gla": None}, "teacher_decode_grows": True}}))
    with open(directory / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["student", "init", "stages", "seed", "val_kl", "pct_language", "pct_recall",
                                         "pct_cloze", "pct_recovered", "pct_recovered_lo", "pct_recovered_hi", "c_0.05",
                                         "alpha_star", "cell_flag", "device", "dtype", "torch", "commit", "date",
                                         "tokens", "seconds"])
        writer.writeheader()
        common = dict(stages="hidden_alignment+end_to_end", device="x86_64", dtype="bf16", torch="2.13.0+cpu", tokens=1000,
                      seconds=600)
        for seed, kl, day, pct in ((0, 0.4, "2026-11-26T00:00:00Z", 50.0), (1, 0.6, "2026-11-27T00:00:00Z", 52.0)):
            writer.writerow(dict(student="gla", init="qkv_copy", seed=seed, val_kl=kl, pct_language=90.0, pct_recall=10.0,
                                 pct_cloze=50.0, pct_recovered=pct, **{"c_0.05": 0.25}, alpha_star=0.9, commit="abc1234",
                                 date=day, **common))
        writer.writerow(dict(student="gla", init="random", seed=0, val_kl=1.0, commit="abc1234",
                             date="2026-11-26T00:00:00Z", **common))
        for seed, commit in ((0, "abc1234"), (1, "def5678-dirty")):  # a flagged cell, with bootstrap intervals
            writer.writerow(dict(student="xlstm", init="qkv_copy", seed=seed, val_kl=0.3, pct_recovered=60.0,
                                 pct_recovered_lo=55.0, pct_recovered_hi=66.0 + seed, commit=commit,
                                 cell_flag="mixed commits, dirty tree", date="2026-11-26T00:00:00Z", **common))


def test_an_ablation_run_of_the_same_student_and_init_stays_out_of_the_grid_cell(tmp_path):
    from bench.report.leaderboard import primary_rows

    _write_results(tmp_path)
    before = tables.render("grid", tmp_path)
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ablation = dict(rows[0], stages="attention_output+end_to_end", seed="0", val_kl="9.0", commit="abc1234-dirty",
                    cell_flag="dirty tree", pct_recovered="1.0")
    with open(tmp_path / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [ablation])
    assert ablation not in primary_rows(rows + [ablation]) and len(primary_rows(rows + [ablation])) == len(rows)
    assert tables.render("grid", tmp_path) == before  # no extra seed, no flag, no 9.0 in the mean


@pytest.mark.parametrize("other", [{"dtype": "fp32"}, {"tokens": "2000"}], ids=["precision", "budget"])
def test_a_run_of_another_precision_or_budget_is_not_another_seed_of_the_cell(tmp_path, other):
    _write_results(tmp_path)
    before = tables.render("grid", tmp_path)
    with open(tmp_path / "leaderboard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    extra = dict(rows[0], seed="2", val_kl="9.0", pct_recovered="1.0", **other)
    with open(tmp_path / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [extra])
    assert tables.render("grid", tmp_path) == before


def test_distill_speed_rows_show_both_paths_their_ratio_and_the_yardstick(tmp_path):
    row = {"student": "gla", "stage": "end_to_end", "eager fp32_tok_s": 2500.0, "default_tok_s": 4000.0,
           "speedup": 1.6, "gflop_per_step": 148.5, "eager fp32_pct_yardstick": 63.2, "default_pct_yardstick": 38.9}
    (tmp_path / "speed").mkdir()
    (tmp_path / "speed" / "distill_speed_cpu.json").write_text(json.dumps({
        "machine": MACHINE, "date": "2026-12-01T00:00:00Z", "default_bf16": True, "rows": [row],
        "settings": {"batch": 8, "seq_len": 512, "repeats": 5},
        "yardstick_gflops": {"eager fp32": 150.0, "default": 400.0}}))
    caption, _, header, _, line = tables.render("distill_speed_cpu", tmp_path).splitlines()
    assert "batch 8 × 512 tokens" in caption and "yardstick fp32 150, default 400 GFLOP/s" in caption
    assert header.startswith("| student | stage | eager fp32 tok/s | default (bf16 autocast) tok/s | × eager fp32")
    assert line == "| gla | end_to_end | 2500 | 4000 | 1.60 | 148 | 63% / 39% |"
    doc = json.loads((tmp_path / "speed" / "distill_speed_cpu.json").read_text())
    doc["yardstick_gflops_range"] = {"eager fp32": [120.0, 170.0], "default": [310.0, 455.0]}
    (tmp_path / "speed" / "distill_speed_cpu.json").write_text(json.dumps(doc))
    caption = tables.render("distill_speed_cpu", tmp_path).splitlines()[0]
    assert ("yardstick fp32 150 (120–170 over the rows), default 400 (310–455 over the rows) GFLOP/s" in caption)


def test_recurrence_rows_put_backends_side_by_side_under_a_provenance_caption(tmp_path):
    _write_results(tmp_path)
    text = tables.render("kernels_cpu", tmp_path)
    caption, _, header, _, row = text.splitlines()
    assert "x86_64 (cpu), torch 2.13.0+cpu, commit abc1234, date: not recorded" in caption
    assert "B=1, H=2, K=8, V=8" in caption and "speed-ups over naive" in caption
    assert "fwd ms naive / chunk" in header and "peak GiB" not in header  # no memory column in the file: none shown
    assert row == ("| linear_recurrence | head | 64 | 10 / 1 | 40 / 2 | 10 | 20 | 1.0e-06 | 50 (50.0%) "
                   "| C=64, all of chunks factored |")


def test_a_caption_names_the_cpu_features_where_the_file_has_them():
    doc = {"machine": {**MACHINE, "device_name": "AMD EPYC", "cpu_capability": "AVX2", "cpu_bf16_kernels": False},
           "date": "2026-12-02T00:00:00Z"}
    assert "AMD EPYC (cpu, AVX2, no bf16 kernels), torch" in tables.caption("f.json", doc, "d")
    assert "x86_64 (cpu), torch" in tables.caption("f.json", {"machine": MACHINE}, "d")  # older files: as they were


def test_loss_throughput_and_grid_tables_show_what_their_files_hold(tmp_path):
    _write_results(tmp_path)
    loss = tables.render("kernels_h100_distill_loss", tmp_path).splitlines()
    assert loss[2] == "| backend | chunk | f+b ms | peak MiB | × less memory | rel diff |"  # no speed-up, no `correct`
    assert loss[4] == "| chunk | 256 | 20 | 353 | 7.5 | 7.0e-08 |"
    mixer = tables.render("kernels_h100_mixer_loss", tmp_path).splitlines()
    assert mixer[0].endswith("B=1, H=4, Hkv=2, K=8; speed and memory relative to naive at the same T.")
    assert mixer[2:] == ["| T | backend | tile | f+b ms | × speed | peak MiB | × less memory | rel diff | correct |",
                         "|---|---|---|---|---|---|---|---|---|",
                         "| 64 | tiled | 32 | 91.3 | 0.101 | 28.8 | 13.5 | 8.2e-08 | True |"]
    throughput = tables.render("throughput_cpu", tmp_path).splitlines()
    assert throughput[4:] == ["| floor | 100 (1.00) | 4000 | 2 → 3 (1.50×) | 0 B |",
                              "| teacher | 200 (2.00) | 4000 | 2 → 3 (1.50×) | 128 MiB |",
                              "| gla | 150 (1.50) | 4000 | 2 → 3 (1.50×) | 256 KiB |", "",
                              "| target met by | prefill within 1.3x floor at 2048 and 16384 "
                              "| decode no slower than teacher at 1024 |", "|---|---|---|", "| gla | **no** | – |", "",
                              "teacher decode grows: yes."]
    assert "commit abc1234, date: not recorded; float32" in throughput[0]  # no teacher recorded: none said
    assert "threads, medians of 3; a prefill forms every position's logits;" in throughput[0]  # files before the flag
    summary = tables.render("throughput_summary", tmp_path).splitlines()  # the README's view of the same file
    assert summary[2:] == ["| student | prefill 2,048: × floor / teacher ÷ student | decode at 32,768: ms/token "
                           "(teacher's) | state at 32,768 (teacher's cache) |", "|---|---|---|---|",
                           "| gla | 1.50× / 1.33× | 3 (3) | 256 KiB (128 MiB) |"]
    doc = json.loads((tmp_path / "throughput_cpu.json").read_text())  # a report with the FLOP count
    doc["teacher"] = {"source": "embedded", "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 4096}
    for name, flops in (("floor", 10e9), ("teacher", 9e9), ("gla", 11.5e9)):
        doc["models"][name]["prefill"]["2048"]["matmul_flops"] = flops
    doc["models"]["gla"]["prefill"]["2048"]["times_s"] = [0.15, 0.6, 0.6]  # per round, beside the floor's
    doc["models"]["floor"]["prefill"]["2048"]["times_s"] = [0.1, 0.3, 0.3]  # paired 1.5, 2, 2: shown 2.00, not 1.50
    doc["models"]["teacher"]["decode"]["1024"]["times_ms"] = [2.0, 1.0, 3.0]  # per round 2, 3, 1: 2.00, not 3 / 2
    doc["models"]["teacher"]["decode"]["32768"]["times_ms"] = [4.0, 3.0, 3.0]
    (tmp_path / "throughput_cpu.json").write_text(json.dumps(doc))
    counted = tables.render("throughput_cpu", tmp_path).splitlines()
    assert "| matmul FLOPs × floor 2048 / 2048 |" in counted[2]
    assert "; teacher embedded: 4 layers, width 256, 4 heads (2 KV) of 64, vocab 4096; float32, batch 1" in counted[0]
    doc["settings"]["prefill_logits"] = "last"
    (tmp_path / "throughput_cpu.json").write_text(json.dumps(doc))
    assert "a prefill forms the last position's logits only;" in tables.render("throughput_cpu", tmp_path)
    assert "heap kept steady" not in tables.render("throughput_cpu", tmp_path)
    doc["settings"]["heap"] = "steady"
    (tmp_path / "throughput_cpu.json").write_text(json.dumps(doc))
    assert "logits only; glibc's heap kept steady (no page faults" in tables.render("throughput_cpu", tmp_path)
    assert "medians of 3, glibc's heap kept steady (× floor" in tables.render("throughput_summary", tmp_path)
    doc["settings"]["decode_contexts"] = [1024]  # one context: its time, no growth against itself
    (tmp_path / "throughput_cpu.json").write_text(json.dumps(doc))
    one = tables.render("throughput_cpu", tmp_path).splitlines()
    assert one[2].endswith("| decode ms/token at 1024 | cache at 1024 |") and one[4].endswith("| 4000 | 2 | – |")
    assert counted[5] == "| teacher | 200 (2.00) | 0.90 / 0.90 | 4000 | 2 → 3 (2.00×) | 128 MiB |"
    assert counted[6] == "| gla | 150 (2.00) | 1.15 / 1.15 | 4000 | 2 → 3 (1.50×) | 256 KiB |"
    grid = tables.render("grid", tmp_path).splitlines()
    assert "5 runs" in grid[0] and "dates 2026-11-26T00:00:00Z … 2026-11-27T00:00:00Z" in grid[0]
    assert "† seeds on different commits, a dirty tree or in different precisions" in grid[0]
    assert "run time 0.8 h in all (seed 0 30 min, seed 1 20 min)" in grid[0]  # summed from the runs' seconds
    assert grid[2].startswith("| student | val KL random | val KL qkv_copy | language (qkv_copy) | recall (qkv_copy)")
    assert grid[4] == "| xlstm † | – | 0.300 ± 0.000 | – | – | – | 60.0% [55.0, 67.0] | – / – |"  # bootstrap span
    assert grid[5] == "| gla | 1.000 (n=1) | 0.500 ± 0.100 | 90.0% | 10.0% | 50.0% | 51.0% [50.0, 52.0] | 0.25 / 0.9 |"
    assert "(n=k): a cell with k of 2 seeds" in grid[0]  # one seed has no spread: shown as such, not as ± 0
    assert "other processes" not in grid[0]  # no run measured what else ran: nothing said
    claims = tables.render("claims", tmp_path).splitlines()
    assert claims[2] == "| the study's claim | measured here | verdict |" and len(claims) == 4 + 8


def test_the_machine_types_table_puts_each_reports_ratios_and_open_targets_side_by_side(tmp_path):
    _write_results(tmp_path)
    base = json.loads((tmp_path / "throughput_cpu.json").read_text())
    for name, device, isa, bf16, gla_s, verdict in (
            ("throughput_cpu.json", "Intel(R) Xeon(R) Processor", "AVX512", True, 0.12, True),
            ("throughput_cpu_avx2.json", "AMD EPYC", "AVX2", False, 0.13, "within noise"),
            ("throughput_cpu_epyc_avx512.json", "AMD EPYC", "AVX512", True, 0.14, False)):
        doc = json.loads(json.dumps(base))
        doc["machine"] = {**MACHINE, "device_name": device, "cpu_capability": isa, "cpu_bf16_kernels": bf16}
        doc["settings"]["lengths"] = [2048, 16384]
        for model, seconds, longer in (("floor", 0.1, 10), ("teacher", 0.3, 10), ("gla", gla_s, 10.5)):
            doc["models"][model]["prefill"] = {"2048": {"median_s": seconds}, "16384": {"median_s": longer * seconds}}
        doc["targets"]["prefill_within_1.3x_floor_at_2048_and_16384"] = {"gla": verdict}
        doc["targets"]["decode_no_slower_than_teacher_at_1024"] = {"gla": True}
        (tmp_path / name).write_text(json.dumps(doc))
    lines = tables.render("throughput_machine_types", tmp_path).splitlines()
    assert lines[0].startswith("Sources: `" + str(tmp_path / "throughput_cpu.json") + "` (Intel Xeon, AVX512, bf16: "
                               "commit abc1234, date: not recorded, activity not measured); ")
    assert "(AMD EPYC, AVX2: commit" in lines[0] and "(AMD EPYC, AVX512, bf16: commit" in lines[0]
    assert lines[2:] == ["| model | Intel Xeon, AVX512, bf16 | AMD EPYC, AVX2 | AMD EPYC, AVX512, bf16 |",
                         "|---|---|---|---|",
                         "| teacher | 3.00 / 3.00 | 3.00 / 3.00 | 3.00 / 3.00 |",
                         "| gla | 1.20 / 1.26 — all met | 1.30 / 1.36 — prefill ≤ 1.3× floor within noise "
                         "| 1.40 / 1.47 — prefill ≤ 1.3× floor **not met** |"]
    (tmp_path / "throughput_cpu_avx2.json").unlink()  # one of the files missing: one error naming it
    with pytest.raises(BenchError, match=r"throughput_cpu_avx2\.json: cannot read"):
        tables.render("throughput_machine_types", tmp_path)


def test_the_grid_caption_says_the_most_other_processes_took_of_a_runs_cpu_time(tmp_path):
    _write_results(tmp_path)
    path = tmp_path / "leaderboard.csv"
    rows = list(csv.DictReader(open(path)))
    for row, share in zip(rows, ("0.01", "0.12", "")):
        row.update(others_share=share, steal_share="0.0" if share else "")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    caption = tables.render("grid", tmp_path).splitlines()[0]
    assert "other processes took at most 12.0% and steal 0.0% of a run's CPU time (2 of 5 runs measured; not quiet)" in caption


def test_a_recorded_date_is_shown_and_a_missing_one_is_never_invented(tmp_path):
    _write_results(tmp_path)
    doc = json.loads((tmp_path / "kernels_cpu.json").read_text())
    doc["date"] = "2026-11-27"
    (tmp_path / "kernels_cpu.json").write_text(json.dumps(doc))
    assert "date 2026-11-27;" in tables.render("kernels_cpu", tmp_path)
    assert "date: not recorded;" in tables.render("kernels_h100_distill_loss", tmp_path)
    # a file measured before dates were written may carry a bound from the repository's history; shown as a bound
    loss = json.loads((tmp_path / "kernels_h100_distill_loss.json").read_text())
    loss["date_bound"] = {"after": "2026-11-26T16:15Z", "before": "2026-11-26T16:51Z", "evidence": "commit dates"}
    (tmp_path / "kernels_h100_distill_loss.json").write_text(json.dumps(loss))
    assert ("date: not recorded (measured between 2026-11-26T16:15Z and 2026-11-26T16:51Z: commit dates);"
            in tables.render("kernels_h100_distill_loss", tmp_path))
    doc["date_bound"] = loss["date_bound"]  # a recorded date wins over a bound
    (tmp_path / "kernels_cpu.json").write_text(json.dumps(doc))
    rendered = tables.render("kernels_cpu", tmp_path)
    assert "date 2026-11-27;" in rendered and "between" not in rendered


@pytest.mark.parametrize("content", [None, "{", '{"machine": {}}'], ids=["missing", "not-json", "no-rows"])
def test_a_missing_or_malformed_file_is_one_error_line_and_exit_code_2(tmp_path, capsys, content):
    _write_results(tmp_path)
    target = tmp_path / "kernels_cpu.json"
    target.unlink() if content is None else target.write_text(content)
    assert tables.main(["--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "kernels_cpu.json" in err


def test_rewrite_replaces_only_the_text_between_markers_and_refuses_unknown_or_unclosed_ones():
    text = "intro\n<!-- table:a -->\nstale 1.23\n<!-- /table:a -->\nrest\n"
    assert tables.rewrite(text, {"a": "fresh"}, "doc") == "intro\n<!-- table:a -->\n\nfresh\n\n<!-- /table:a -->\nrest\n"
    with pytest.raises(BenchError, match="unknown table 'b'"):
        tables.rewrite(text.replace("table:a", "table:b"), {"a": "fresh"}, "doc")
    with pytest.raises(BenchError, match="lack a matching"):
        tables.rewrite("<!-- table:a -->\nno end\n", {"a": "fresh"}, "doc")


def test_committed_readme_and_docs_hold_exactly_what_the_committed_results_render():
    rendered = tables.render_all(tables.ROOT / "results")
    used = set()
    for path in tables.documents():
        text = path.read_text()
        assert tables.rewrite(text, rendered, path.name) == text, f"{path.name} is stale: python -m bench.report.tables --write"
        used |= set(tables.OPENING.findall(text))
    assert used == set(tables.TABLES), "every table appears in README.md or docs/*.md"


def _hybrid_record(run, keep=None, ranking=None, kl=0.5, mqar=(0.5, 0.25), state=1000, date="2026-12-01T00:00:00Z"):
    speeds = {"student": {"1024": 900.0, "2048": 800.0}, "teacher": {"1024": 700.0, "2048": 600.0}}
    return {"run": run, "date": date, "machine": MACHINE, "settings": {"student": "gla", "tokens": 3000},
            "keep_attention": keep, "keep_ranking": ranking, "metrics": {"val_kl": kl},
            "evaluation": {"student": {"recall_mqar_256": mqar[0], "recall_mqar_512": mqar[1]},
                           "teacher": {"recall_mqar_256": 1.0, "recall_mqar_512": 0.5}},
            "throughput": {"prefill_tokens_per_s": speeds, "state_bytes_per_sequence": {"256": 10, "1024": state},
                           "kv_cache_bytes_per_sequence": {"256": 100, "1024": 4096}}}


def test_hybrid_table_shows_the_layer_ranking_then_each_full_run_with_its_recall_share_and_costs(tmp_path):
    runs = tmp_path / "research" / "hybrid" / "runs"
    runs.mkdir(parents=True)
    ranking = {"kept": [1], "runs": ["rank0", "rank1"], "val_kl_with_only_this_layer_replaced": [0.2, 0.9]}
    records = [_hybrid_record("rank0", keep=[1]), _hybrid_record("rank1", keep=[0]),
               _hybrid_record("pure", kl=1.0, mqar=(0.0, 0.0), state=512, date="2026-11-30T00:00:00Z"),
               _hybrid_record("hybrid", keep=[1], ranking=ranking, kl=0.25, state=2048)]
    for record in records:
        (runs / f"{record['run']}.json").write_text(json.dumps(record))
    (runs.parent / "layer_recall").mkdir()
    (runs.parent / "layer_recall" / "rank1.json").write_text(json.dumps(  # only one ranking student scored
        {"run": "rank1", "date": "2026-12-02T00:00:00Z", "scores": {"recall_mqar_256": 0.75}}))
    lines = tables.render("hybrid_research", tmp_path).splitlines()
    assert "4 records (2 of them ranking runs)" in lines[0] and "(bench.evaluate, 2026-12-02T00:00:00Z)" in lines[0]
    assert lines[2:6] == ["| student | measure | layer 0 replaced | layer 1 replaced | kept |", "|---|---|---|---|---|",
                          "| gla | val KL | 0.200 | 0.900 | 1 |", "| gla | MQAR 256 | – | 75.0% | 1 |"]
    assert lines[-2:] == [  # ranking runs are not rows; the pure run first (older); shares are student / teacher
        "| gla | 3,000 | 1.000 | 0.0% / 100.0% (0.0%) | 0.0% / 50.0% (0.0%) | 800 / 600 (2048) | 512 B / 4 KiB (1024) |",
        "| gla+keep1 | 3,000 | 0.250 | 50.0% / 100.0% (50.0%) | 25.0% / 50.0% (50.0%) | 800 / 600 (2048) "
        "| 2 KiB / 4 KiB (1024) |"]
