"""`python -m bench.figures`: the study's figures, redrawn from local results only (never runs a model).

Reads `results/runs/*.json` (run records), `results/throughput_*.json` (benchmark reports) and
`results/reference/*.json` (published numbers, drawn beside ours and labelled with their setting), and
writes PNGs into `results/figures/`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from bench.files import atomic_directory  # noqa: E402
from bench.report.leaderboard import load_rows, row  # noqa: E402

INIT_ORDER = ("random", "qkv_copy", "matrix_mixing", "qkv_copy+matrix_mixing")
# tab10 without its grey, which marks the floor; black marks the teacher.
plt.rcParams["axes.prop_cycle"] = matplotlib.cycler(color=[c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]
                                                    + ["#7b4173", "#637939"])


def _records(results: Path) -> list[dict]:
    """The run records the leaderboard accepts; any other file is reported by name and skipped, as there."""
    records = []
    for path in sorted((results / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            row(record)  # the leaderboard's shape check
            if not isinstance(record.get("stages", []), list):
                raise TypeError("'stages' is not a list")
            records.append(record)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            print(f"skipped malformed record {path.name}: {type(error).__name__}: {error}", file=sys.stderr)
    return records


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _grouped_bars(ax, values: dict[tuple[str, str], list[float]], ylabel: str) -> None:
    """Bars per (student, init): mean over seeds, whiskers at min and max."""
    students = sorted({s for s, _ in values})
    inits = [i for i in INIT_ORDER if any(k[1] == i for k in values)]
    width = 0.8 / max(1, len(inits))
    for j, init in enumerate(inits):
        xs, means, low, high = [], [], [], []
        for i, student in enumerate(students):
            seeds = values.get((student, init))
            if seeds:
                mean = statistics.mean(seeds)
                xs.append(i + j * width)
                means.append(mean)
                low.append(mean - min(seeds))
                high.append(max(seeds) - mean)
        ax.bar(xs, means, width, yerr=[low, high], capsize=3, label=init)
    ax.set_xticks([i + width * (len(inits) - 1) / 2 for i in range(len(students))], students, rotation=30)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def recovery_by_architecture(rows, out: Path) -> Path:
    values = defaultdict(list)
    for r in rows:
        if isinstance(r.get("pct_recovered"), (int, float)):
            values[(r["student"], r["init"])].append(r["pct_recovered"])
    fig, ax = plt.subplots(figsize=(9, 4))
    _grouped_bars(ax, values, "% of teacher recovered (mean over seeds, min–max)")
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_title("Recovery by architecture and init")
    _save(fig, out / "recovery_by_architecture.png")
    return out / "recovery_by_architecture.png"


def init_ablation(rows, out: Path) -> Path:
    values = defaultdict(list)
    for r in rows:
        values[(r["student"], r["init"])].append(r["val_kl"])
    fig, ax = plt.subplots(figsize=(9, 4))
    _grouped_bars(ax, values, "validation KL(teacher ‖ student), lower is better")
    ax.set_title("Init ablation")
    _save(fig, out / "init_ablation.png")
    return out / "init_ablation.png"


def stage_loss_curves(records, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for record in records:
        label = f"{record['settings']['student']} / {record['settings']['init']} / s{record['settings']['seed']}"
        for ax, stage_names in zip(axes, (("matrix_mixing", "hidden_alignment"), ("end_to_end", "multi_teacher",
                                                                                  "attention_transfer"))):
            for stage in record["stages"]:
                if stage["stage"] in stage_names and stage["losses"]:
                    ax.plot(range(1, len(stage["losses"]) + 1), stage["losses"], lw=0.8,
                            label=f"{label} ({stage['stage']})")
    axes[0].set_title("Alignment stages")
    axes[1].set_title("End-to-end distillation")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        if ax.lines and len(ax.lines) <= 12:
            ax.legend(fontsize=6)
    _save(fig, out / "stage_loss_curves.png")
    return out / "stage_loss_curves.png"


def _throughput_reports(results: Path) -> list[dict]:
    reports = []
    for path in sorted(results.glob("throughput_*.json")):
        report = json.loads(path.read_text())
        if "models" in report:
            reports.append(report)
    return reports


def _style(name: str) -> dict:
    if name == "teacher":
        return {"color": "black", "lw": 2.2}
    if name == "floor":
        return {"color": "grey", "ls": "--"}
    return {}


def prefill_vs_length(reports, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    for report in reports:
        for name, model in sorted(report["models"].items()):
            lengths = sorted(model["prefill"], key=int)
            ax.plot([int(n) for n in lengths], [model["prefill"][n]["median_s"] for n in lengths], marker="o",
                    label=name, **_style(name))
        machine = report["machine"]
        ax.set_title(f"Prefill time, batch 1 ({machine['device_name']}, {machine['torch_threads']} threads, "
                     f"{report['settings']['dtype']})", fontsize=9)
    ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="seconds")
    ax.legend(fontsize=7)
    _save(fig, out / "prefill_vs_length.png")
    return out / "prefill_vs_length.png"


def decode_vs_context(reports, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    for report in reports:
        for name, model in sorted(report["models"].items()):
            contexts = sorted(model["decode"], key=int)
            ax.plot([int(n) for n in contexts], [model["decode"][n]["ms_per_token"] for n in contexts], marker="o",
                    label=name, **_style(name))
    ax.set(xscale="log", xlabel="context (tokens)", ylabel="ms per decoded token")
    ax.set_title("Decode latency vs context (KV cache vs recurrent state)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, out / "decode_vs_context.png")
    return out / "decode_vs_context.png"


def recall_vs_length(records, reference: dict | None, out: Path) -> Path:
    ours: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        evaluation = record.get("evaluation") or {}
        for who, scores in (("teacher", evaluation.get("teacher", {})),
                            (record["settings"]["student"], evaluation.get("student", {}))):
            for key, value in scores.items():
                if key.startswith("recall_passkey_"):
                    ours[who][int(key.rsplit("_", 1)[-1])].append(value)
    panels = 2 if reference else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for name, by_length in sorted(ours.items()):
        lengths = sorted(by_length)
        axes[0][0].plot(lengths, [100 * statistics.mean(by_length[n]) for n in lengths], marker="o", label=name,
                        **_style(name))
    axes[0][0].set(xscale="log", xlabel="document length (tokens)", ylabel="passkey accuracy (%)",
                   title="Ours (local runs)", ylim=(-2, 102))
    axes[0][0].legend(fontsize=7)
    if reference:
        ax = axes[0][1]
        for name, points in sorted(reference["passkey"].items()):
            lengths = sorted(points, key=int)
            ax.plot([int(n) for n in lengths], [points[n] for n in lengths], marker="s", label=name)
        ax.set(xscale="log", xlabel="document length (tokens)", ylabel="passkey accuracy (%)")
        ax.set_title(reference["setting"], fontsize=8)
        ax.legend(fontsize=7)
    _save(fig, out / "recall_vs_length.png")
    return out / "recall_vs_length.png"


def score_vs_throughput(records, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 5))
    for record in records:
        prefill = (record.get("throughput") or {}).get("prefill_tokens_per_s", {}).get("student") or {}
        recovered = ((record.get("evaluation") or {}).get("recovered") or {}).get("avg")
        if prefill and isinstance(recovered, (int, float)):
            longest = max(prefill, key=int)
            ax.scatter(prefill[longest], recovered, s=25)
            ax.annotate(f"{record['settings']['student']}/{record['settings']['init']}", (prefill[longest], recovered),
                        fontsize=6)
    ax.set(xlabel="student prefill tokens/s (longest length of the run's sweep)", ylabel="% of teacher recovered",
           title="Score vs throughput")
    _save(fig, out / "score_vs_throughput.png")
    return out / "score_vs_throughput.png"


def draw_all(results: Path) -> list[Path]:
    """Every figure the data allows; returns the files written (atomically, as one directory)."""
    results = Path(results)
    records = _records(results)
    rows = load_rows(results, report=lambda message: print(message, file=sys.stderr))
    reports = _throughput_reports(results)
    reference_path = results / "reference" / "passkey_haller2025.json"
    reference = json.loads(reference_path.read_text()) if reference_path.exists() else None
    written = []
    with atomic_directory(results / "figures") as staging:
        if rows:
            written += [recovery_by_architecture(rows, staging), init_ablation(rows, staging)]
        if records:
            written += [stage_loss_curves(records, staging), recall_vs_length(records, reference, staging),
                        score_vs_throughput(records, staging)]
        if reports:
            written += [prefill_vs_length(reports, staging), decode_vs_context(reports, staging)]
    return [results / "figures" / path.name for path in written]


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m bench.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"error: {args.results_dir} does not exist; run `python -m bench.run` first", file=sys.stderr)
        return 2
    paths = draw_all(args.results_dir)
    if not paths:
        print(f"error: no run records or throughput reports under {args.results_dir}", file=sys.stderr)
        return 2
    for path in paths:
        print(path.relative_to(args.results_dir.parent) if args.results_dir.parent in path.parents else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
