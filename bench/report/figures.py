"""`python -m bench.figures`: the study's figures, redrawn from local results only (never runs a model).

Reads `results/runs/*.json` (run records), `results/throughput_*.json` (benchmark reports) and
`results/reference/*.json` (published numbers, drawn beside ours and labelled with their setting), and
writes PNGs into `results/figures/`. Seeds of a cell (a student and init) are aggregated as in the tables
(`bench.report.leaderboard.cell_value`); a cell whose seeds ran on different commits or on a dirty tree is
hatched (bars) or marked † (panel titles, legends).
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
import matplotlib.ticker  # noqa: E402

from bench.evaluation.recovery import FAMILIES  # noqa: E402
from bench.files import atomic_directory  # noqa: E402
from bench.report.leaderboard import cell_flag, cell_value, cells, load_rows, primary_rows, row  # noqa: E402

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


FLAG_NOTE = "hatched / †: seeds ran on different commits, a dirty tree or in different precisions"
STAGE_ORDER = ("matrix_mixing", "attention_output", "attention_transfer", "hidden_alignment", "end_to_end",
               "multi_teacher")


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight": no label is ever cut at the edge
    plt.close(fig)


def _inits(rows) -> list[str]:
    present = {r["init"] for r in rows}
    return [i for i in INIT_ORDER if i in present] + sorted(present - set(INIT_ORDER))


def _init_colors(inits) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {init: cycle[i % len(cycle)] for i, init in enumerate(inits)}


def _bars(ax, rows, column: str, students: list[str], inits: list[str], scale: float = 1.0) -> None:
    """Horizontal bars per (student, init): the mean over seeds, whiskers at the cell's interval
    (`cell_value`: bootstrap 95% spanning the seeds, else min–max over seeds); flagged cells hatched."""
    by_cell, colors = cells(primary_rows(rows)), _init_colors(inits)
    height = 0.8 / max(1, len(inits))
    for j, init in enumerate(inits):
        for i, student in enumerate(students):
            members = by_cell.get((student, init), [])
            value = cell_value(members, column)
            if value is None:
                continue
            y = i - 0.4 + height * (j + 0.5)
            ax.barh(y, scale * value.mean, height, color=colors[init], hatch="///" if cell_flag(members) else None,
                    edgecolor="white", linewidth=0)
            ax.plot(scale * value.mean, y, marker="|", ms=height * 18, color=colors[init])  # a bar at 0 stays visible
            if value.kind != "one run":
                ax.errorbar(scale * value.mean, y, xerr=[[scale * (value.mean - value.lo)], [scale * (value.hi - value.mean)]],
                            fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_yticks(range(len(students)), students)
    ax.set_ylim(len(students) - 0.5, -0.5)  # first student on top
    ax.grid(axis="x", lw=0.3, alpha=0.6)


def _init_legend(fig, inits, flagged: bool) -> None:
    from matplotlib.patches import Patch

    colors = _init_colors(inits)
    handles = [Patch(color=colors[i], label=i) for i in inits]
    if flagged:
        handles.append(Patch(facecolor="lightgrey", hatch="///", edgecolor="white", label=FLAG_NOTE))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))


def recovery_by_family(rows, out: Path) -> Path:
    """One panel per score family and one for % recovered: % of the teacher per student and init."""
    columns = [(f"pct_{family}", family.replace("_", "-")) for family in FAMILIES
               if any(r.get(f"pct_{family}") is not None for r in rows)] + [("pct_recovered", "% recovered (mean of families)")]
    inits = _inits(rows)
    overall = {s: cell_value([r for r in rows if r["student"] == s], "pct_recovered") for s in {r["student"] for r in rows}}
    students = sorted(overall, key=lambda s: -(overall[s].mean if overall[s] else -1))
    height = 0.21 * len(students) * max(1, len(inits)) + 2
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns) + 1.2, height), sharey=True, squeeze=False)
    for ax, (column, title) in zip(axes[0], columns):
        _bars(ax, rows, column, students, inits)
        ax.axvline(100, color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("% of the teacher")
    fig.suptitle("Recovery per score family (mean over seeds; whiskers: 95% bootstrap interval, else seed range)",
                 fontsize=10)
    fig.tight_layout()
    _init_legend(fig, inits, any(r.get("cell_flag") for r in rows))
    _save(fig, out / "recovery_by_family.png")
    return out / "recovery_by_family.png"


def init_ablation(rows, out: Path) -> Path:
    inits = _inits(rows)
    kl = {s: cell_value([r for r in rows if r["student"] == s], "val_kl") for s in {r["student"] for r in rows}}
    students = sorted(kl, key=lambda s: kl[s].mean if kl[s] else float("inf"))
    fig, ax = plt.subplots(figsize=(7, 0.21 * len(students) * max(1, len(inits)) + 1.8))
    _bars(ax, rows, "val_kl", students, inits)
    ax.set_xlabel("validation KL(teacher ‖ student), lower is better")
    ax.set_title("Init ablation (mean over seeds, whiskers min–max)", fontsize=10)
    fig.tight_layout()
    _init_legend(fig, inits, any(r.get("cell_flag") for r in rows))
    _save(fig, out / "init_ablation.png")
    return out / "init_ablation.png"


def _student_colors(students) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {student: cycle[i % len(cycle)] for i, student in enumerate(sorted(students))}


def stage_loss_curves(records, flags: dict, out: Path) -> Path:
    """One panel per stage (rows) and init (columns): per student the median loss over seeds, band min–max."""
    curves: dict[tuple[str, str], dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        settings = record["settings"]
        for stage in record.get("stages") or []:
            if stage.get("losses"):
                curves[(stage["stage"], settings["init"])][settings["student"]].append(stage["losses"])
    stages = sorted({s for s, _ in curves}, key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER))
    inits = [i for i in INIT_ORDER if any(k[1] == i for k in curves)] + \
        sorted({i for _, i in curves} - set(INIT_ORDER))
    colors = _student_colors({student for by in curves.values() for student in by})
    fig, axes = plt.subplots(len(stages), len(inits), figsize=(4.2 * len(inits) + 1.5, 3.0 * len(stages)),
                             squeeze=False)
    for r, stage in enumerate(stages):
        for c, init in enumerate(inits):
            ax = axes[r][c]
            by_student = curves.get((stage, init))
            if not by_student:
                ax.set_axis_off()
                continue
            for student, seeds in sorted(by_student.items()):
                n = min(map(len, seeds))
                stack = [[seed[k] for seed in seeds] for k in range(n)]
                steps = range(1, n + 1)
                ax.plot(steps, [statistics.median(v) for v in stack], color=colors[student], lw=1.0)
                if len(seeds) > 1:
                    ax.fill_between(steps, [min(v) for v in stack], [max(v) for v in stack], color=colors[student],
                                    alpha=0.2, lw=0)
            shown = [v for seeds in by_student.values() for seed in seeds for v in seed]
            if min(shown) > 0 and max(shown) / min(shown) > 10:  # log where losses span decades, else plain ticks
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter())
                ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False,
                                                                            minor_thresholds=(2, 0.5)))
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_title(f"{stage} · {init}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("loss", fontsize=8)
            ax.tick_params(which="both", labelsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[s], label=s + (" †" if any(flags.get((s, i)) for i in inits) else ""))
               for s in sorted(colors)]
    fig.suptitle("Stage losses: median over seeds, band min–max" + ("  († " + FLAG_NOTE.split(": ")[1] + ")"
                                                                   if any(flags.values()) else ""), fontsize=10)
    fig.tight_layout()
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    _save(fig, out / "stage_loss_curves.png")
    return out / "stage_loss_curves.png"


def cell_records(records: list[dict], rows: list[dict]) -> list[dict]:
    """The records of the tables' cells (`primary_rows`): a student and init's seeds of one recipe, without the
    ablation runs of the same student and init (e.g. the `no_hidden` grid), which are not more seeds of it."""
    ids = {r["run_id"] for r in primary_rows(rows)}
    return [record for record in records if record["run"] in ids]


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


def _teacher_shape(report: dict) -> tuple[int, int] | None:
    """(layers, width) of the teacher a throughput report timed; None for reports from before it was recorded."""
    teacher = report.get("teacher")
    return (teacher["num_hidden_layers"], teacher["hidden_size"]) if teacher else None


def _is_grid_teacher_shape(report: dict) -> bool:
    """Whether a report timed the embedded teacher's shape, the grid's (reports without a teacher record did)."""
    from bench.data.teacher import TeacherRecipe

    recipe = TeacherRecipe()
    return _teacher_shape(report) in (None, (recipe.num_layers, recipe.hidden_size))


def _heap_note(report: dict) -> str:
    """A title's note that the run kept glibc's heap steady (`bench.perf.heap`); reports before it did not."""
    return ", steady heap" if report["settings"].get("heap") == "steady" else ""


def _machine_panels(reports, title: str, ylabel: str, ratio_ylabel: str | None = None):
    """One panel per report (each machine type's run), side by side, titled by its machine and teacher shape; the
    panels of one teacher shape share their y axis (another shape's times are of another scale). With
    `ratio_ylabel`, a second row of panels below, one per report, sharing one y axis (ratios are of one scale)."""
    rows = 2 if ratio_ylabel else 1
    fig, axes = plt.subplots(rows, len(reports), figsize=(6 * len(reports) + 1, 5 + 3.5 * (rows - 1)), squeeze=False,
                             gridspec_kw={"height_ratios": [5, 3.5][:rows]})
    first_of_shape: dict = {}
    for ax, report in zip(axes[0], reports):
        machine, shape = report["machine"], _teacher_shape(report)
        teacher = f", teacher {shape[0]} layers × width {shape[1]}" if shape else ""
        ax.set_title(f"{machine['device_name']} ({machine.get('cpu_capability', '?')}), {machine['torch_threads']} "
                     f"threads, {report['settings']['dtype']}{_heap_note(report)}\ncommit {machine.get('commit', '?')}, "
                     f"{report.get('date', '')[:10]}{teacher}", fontsize=9)
        if shape in first_of_shape:
            ax.sharey(first_of_shape[shape])
            ax.tick_params(labelleft=False)
        else:
            first_of_shape[shape] = ax
            ax.set_ylabel(ylabel)
    if ratio_ylabel:
        axes[1][0].set_ylabel(ratio_ylabel)
        for above, ax in zip(axes[0], axes[1]):
            ax.sharex(above)
        for ax in axes[1][1:]:
            ax.sharey(axes[1][0])
            ax.tick_params(labelleft=False)
    fig.suptitle(title, fontsize=10)
    return fig, axes


def _model_lines(axes, reports, points: str, value) -> None:
    """Each report's models in its panel, a model in one colour in every panel; one legend for all panels."""
    colors = _student_colors({name for report in reports for name in report["models"]} - {"teacher", "floor"})
    for ax, report in zip(axes, reports):
        for name, model in sorted(report["models"].items()):
            xs = sorted(model[points], key=int)
            ax.plot([int(x) for x in xs], [value(model[points][x]) for x in xs], marker="o", label=name,
                    **(_style(name) or {"color": colors[name]}))
    lines = {line.get_label(): line for ax in axes for line in ax.get_lines()}
    axes[-1].legend([lines[name] for name in sorted(lines)], sorted(lines), fontsize=7, loc="upper left",
                    bbox_to_anchor=(1.01, 1))


def prefill_vs_length(reports, out: Path) -> Path:
    """Prefill time against length (top), and below it each student's time over the floor's (the median of the
    per-round ratios, as the tables read them) beside the speed target's 1.3×."""
    from bench.perf.ratios import paired_ratio
    from bench.perf.throughput import CONTROL, FLOOR_TARGET

    fig, axes = _machine_panels(reports, "Prefill time (top) and each student's time over the projections-only floor's "
                                "(bottom), batch 1", "seconds", ratio_ylabel="time over the floor's")
    _model_lines(axes[0], reports, "prefill", lambda cell: cell["median_s"])
    colors = _student_colors({name for report in reports for name in report["models"]} - {"teacher", "floor"})
    for ax, report in zip(axes[1], reports):
        floor = report["models"]["floor"]["prefill"]
        for name, model in sorted(report["models"].items()):
            if name in ("teacher", "floor", CONTROL):
                continue
            lengths = sorted((n for n in model["prefill"] if n in floor), key=int)
            ax.plot([int(n) for n in lengths], [paired_ratio(model["prefill"][n], floor[n]) for n in lengths],
                    marker="o", color=colors[name], label=name)
        ax.axhline(1.0, **_style("floor"))
        ax.axhline(FLOOR_TARGET[0], color="black", ls=":", lw=1)
        ax.annotate(f"target {FLOOR_TARGET[0]}× floor", (1.0, FLOOR_TARGET[0]), xycoords=("axes fraction", "data"),
                    xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8)
        ax.set(xscale="log", xlabel="sequence length (tokens)")
    for ax in axes[0]:
        ax.set(xscale="log", yscale="log")
    _save(fig, out / "prefill_vs_length.png")
    return out / "prefill_vs_length.png"


def decode_vs_context(reports, out: Path) -> Path:
    fig, axes = _machine_panels(reports, "Decode latency vs context (KV cache vs recurrent state)",
                                "ms per decoded token")
    _model_lines(axes[0], reports, "decode", lambda cell: cell["ms_per_token"])
    for ax in axes[0]:
        ax.set(xscale="log", xlabel="context (tokens)")
    _save(fig, out / "decode_vs_context.png")
    return out / "decode_vs_context.png"


def recall_vs_length(records, reference: dict | None, flags: dict, out: Path) -> Path:
    """Passkey accuracy vs document length, one panel per student: a line per init (mean over seeds, band
    min–max), the teacher dashed, and the published curve dotted where `reference` has the student."""
    ours: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    teacher: dict[int, list[float]] = defaultdict(list)
    for record in records:
        evaluation = record.get("evaluation") or {}
        settings = record["settings"]
        for who, scores in (("teacher", evaluation.get("teacher", {})), ("student", evaluation.get("student", {}))):
            for key, value in scores.items():
                if key.startswith("recall_passkey_"):
                    length = int(key.rsplit("_", 1)[-1])
                    (teacher[length] if who == "teacher" else ours[settings["student"]][settings["init"]][length]).append(value)
    published = (reference or {}).get("passkey", {})
    students = sorted(ours)
    inits = [i for i in INIT_ORDER if any(i in ours[s] for s in students)] + \
        sorted({i for s in students for i in ours[s]} - set(INIT_ORDER))
    colors = _init_colors(inits)
    ncols = min(4, max(1, len(students)))
    nrows = max(1, -(-len(students) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.7 * nrows + 0.8), sharex=True, sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(students):]:
        ax.set_axis_off()
    lengths_t = sorted(teacher)
    for ax, student in zip(axes.flat, students):
        for init in inits:
            by_length = ours[student].get(init)
            if not by_length:
                continue
            lengths = sorted(by_length)
            ax.plot(lengths, [100 * statistics.mean(by_length[n]) for n in lengths], marker="o", ms=3,
                    color=colors[init], lw=1.2)
            if any(len(by_length[n]) > 1 for n in lengths):
                ax.fill_between(lengths, [100 * min(by_length[n]) for n in lengths],
                                [100 * max(by_length[n]) for n in lengths], color=colors[init], alpha=0.2, lw=0)
        if lengths_t:
            ax.plot(lengths_t, [100 * statistics.mean(teacher[n]) for n in lengths_t], color="black", ls="--", lw=1.2)
        if student in published:
            points = published[student]
            keys = sorted(points, key=int)
            ax.plot([int(n) for n in keys], [points[n] for n in keys], color="grey", ls=":", marker="s", ms=3, lw=1.2)
        flagged = any(flags.get((student, init)) for init in inits)
        ax.set_title(student + (" †" if flagged else ""), fontsize=10)
        ax.set_xscale("log", base=2)
        ticks = sorted(set(lengths_t) | {int(n) for points in published.values() for n in points}
                       | {n for by_init in ours.values() for by in by_init.values() for n in by})
        ax.set_xticks(ticks, [f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n) for n in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_ylim(-4, 104)
        ax.grid(lw=0.3, alpha=0.6)
    for ax in axes[-1]:
        ax.set_xlabel("document length (tokens)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("passkey accuracy (%)", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[i], marker="o", ms=3, label=f"ours, {i}") for i in inits]
    handles.append(Line2D([], [], color="black", ls="--", label="teacher"))
    if published:
        handles.append(Line2D([], [], color="grey", ls=":", marker="s", ms=3,
                              label=(reference or {}).get("setting", "published")))
    fig.suptitle("Passkey retrieval vs length (ours: mean over seeds, band min–max)"
                 + (f"; † {FLAG_NOTE.split(': ')[1]}" if any(flags.values()) else ""), fontsize=10)
    fig.tight_layout()
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.06 if nrows > 1 else -0.12))
    _save(fig, out / "recall_vs_length.png")
    return out / "recall_vs_length.png"


def _report_speedups(report: dict) -> tuple[int, dict[str, tuple[float, float, float]]] | None:
    """Each model's prefill speed over the teacher's at the report's longest length (the ratio of their median
    times, timed side by side), or None where the report has no teacher."""
    teacher = report["models"].get("teacher", {}).get("prefill", {})
    if not teacher:
        return None
    n = str(max(int(length) for length in teacher))
    return int(n), {name: (teacher[n]["median_s"] / model["prefill"][n]["median_s"],) * 3
                    for name, model in report["models"].items() if n in model.get("prefill", {})}


def _run_speedups(rows) -> tuple[int, dict[str, tuple[float, float, float]]] | None:
    """Without a throughput report: per student, its prefill tokens/s over the teacher's within each run (the
    run's own short sweep, both timed in it), at the longest length every such run has; median, min, max over runs."""
    swept = []  # (row, the lengths it timed both at); a run with --skip-throughput has none
    for r in rows:
        have = {int(key.removeprefix("teacher_prefill_tok_s_")) for key, value in r.items()
                if key.startswith("teacher_prefill_tok_s_") and value and r.get(key.removeprefix("teacher_"))}
        if have:
            swept.append((r, have))
    lengths = set.intersection(*(have for _, have in swept)) if swept else set()
    if not lengths:
        return None
    n = max(lengths)
    ratios: dict[str, list[float]] = defaultdict(list)
    for r, _ in swept:
        ratios[r["student"]].append(r[f"prefill_tok_s_{n}"] / r[f"teacher_prefill_tok_s_{n}"])
    return n, {s: (statistics.median(v), min(v), max(v)) for s, v in ratios.items()}


def score_vs_throughput(rows, reports, out: Path) -> Path | None:
    """Quality against speed: per student and init (the cells of the tables), % recovered, mean over seeds,
    against the student's prefill speed over the teacher's at the longest length, one panel per throughput
    report of the grid's teacher shape (each machine type's side-by-side run); with no report, from the runs' own
    sweeps. Speed is the architecture's, so a student's inits stand in one column. Colour: student; marker: init."""
    rows = primary_rows(rows)
    by_cell = cells(rows)
    # the grid's students were distilled from the embedded teacher: their scores stand beside its shape's speeds only
    sources = [(report, found) for report in reports if _is_grid_teacher_shape(report) and (found := _report_speedups(report))]
    if not sources:
        found = _run_speedups(rows)
        sources = [(None, found)] if found else []
    if not sources:  # no speed measured anywhere (runs with --skip-throughput and no report)
        return None
    colors = _student_colors({student for student, _ in by_cell})
    inits = _inits(rows)
    markers = dict(zip(inits, "os^Dvp"))
    fig, axes = plt.subplots(1, len(sources), figsize=(5.5 * len(sources) + 1.5, 5), sharey=True, squeeze=False)
    for ax, (report, (length, speedups)) in zip(axes[0], sources):
        for (student, init), members in sorted(by_cell.items()):
            value = cell_value(members, "pct_recovered")
            if value is None or student not in speedups:
                continue
            x, lo, hi = speedups[student]
            ax.errorbar(x, value.mean, xerr=[[x - lo], [hi - x]] if hi > lo else None, fmt=markers.get(init, "o"),
                        color=colors[student], ms=6, elinewidth=0.6, capsize=2)
        if "floor" in speedups:  # the projections alone: as fast as a student can be
            ax.axvline(speedups["floor"][0], color="grey", lw=1.0, ls=":")
            ax.text(speedups["floor"][0], 1.01, "floor", transform=ax.get_xaxis_transform(), fontsize=7,
                    ha="center", va="bottom", color="grey")
        if report is None:
            ax.set_title(f"from each run's own sweep: the ratio within the run at {length:,} tokens\n"
                         "(median over runs, whiskers min–max)", fontsize=9)
        else:
            machine = report["machine"]
            ax.set_title(f"{machine['device_name']} ({machine.get('cpu_capability', '?')}), {machine['torch_threads']} "
                         f"threads, {report['settings']['dtype']}, batch {report['settings'].get('batch_size', 1)}"
                         f"{_heap_note(report)}\n"
                         f"commit {machine.get('commit', '?')}, {report.get('date', '')[:10]}", fontsize=9)
        ax.set_xlabel(f"prefill speed at {length:,} tokens, × the teacher's (the teacher: 1)")
        ax.grid(lw=0.3, alpha=0.6)
    axes[0][0].set_ylabel("% of teacher recovered (mean of families, mean over seeds)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=colors[s], label=s) for s in sorted(colors)]
    handles += [Line2D([], [], ls="", marker=markers.get(i, "o"), color="grey", label=i) for i in inits]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.suptitle("Quality against prefill speed (batch 1): the scores from the runs, the speed from each machine's "
                 "side-by-side throughput run" if sources[0][0] else "Quality against prefill speed (batch 1)", fontsize=10)
    fig.tight_layout()
    _save(fig, out / "score_vs_throughput.png")
    return out / "score_vs_throughput.png"


def draw_all(results: Path) -> list[Path]:
    """Every figure the data allows; returns the files written (atomically, as one directory)."""
    results = Path(results)
    records = _records(results)
    rows = primary_rows(load_rows(results, report=lambda message: print(message, file=sys.stderr)))  # the cells
    reports = _throughput_reports(results)
    reference_path = results / "reference" / "passkey_haller2025.json"
    reference = json.loads(reference_path.read_text()) if reference_path.exists() else None
    flags = {key: cell_flag(members) for key, members in cells(rows).items()}
    written = []
    with atomic_directory(results / "figures") as staging:
        if rows:
            written += [recovery_by_family(rows, staging), init_ablation(rows, staging)]
            if speed := score_vs_throughput(rows, reports, staging):
                written.append(speed)
        if records := cell_records(records, rows):
            written += [stage_loss_curves(records, flags, staging), recall_vs_length(records, reference, flags, staging)]
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
