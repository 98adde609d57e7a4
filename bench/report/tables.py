"""Markdown tables rendered from the files in `results/`, never typed.

    python -m bench.report.tables [--results-dir results] [--write]

Each table opens with a caption naming its source file and where it was measured (device, torch, commit,
date, or "date: not recorded" where the file holds none, with the bound its `date_bound` gives), and shows
only the columns the file holds. In README.md and docs/*.md a table lives between `<!-- table:NAME -->` and
`<!-- /table:NAME -->`: `--write` rewrites the text between the markers in place; without it the tables are
printed. A test checks that the committed documents hold exactly what this module renders from the committed
results.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from bench.errors import BenchError, fail
from bench.files import atomic_write_text
from bench.perf.activity import describe, is_quiet, quiet
from bench.perf.ratios import NOISE, paired_ratio

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^(<!-- table:(\S+?) -->\n)(.*?)^(<!-- /table:\2 -->)$", re.S | re.M)  # markers on lines of their own
OPENING = re.compile(r"^<!-- table:(\S+?) -->$", re.M)
INIT_ORDER = ("random", "qkv_copy", "matrix_mixing", "qkv_copy+matrix_mixing")


# ----------------------------------------------------------------------------------------------- cells
def num(x) -> str:
    """Three significant digits (whole numbers from 100 up); '–' where the file holds no value."""
    if x is None or x == "":
        return "–"
    x = float(x)
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def ms(seconds) -> str:
    return num(None if seconds is None else 1e3 * seconds)


def sci(x) -> str:
    return "–" if x is None else f"{x:.1e}"


def pct(x, scale: float = 100.0) -> str:
    """A percentage with one decimal, from a fraction (or from a percentage with scale=1)."""
    return "–" if x is None else f"{scale * x:.1f}%"


def size(n) -> str:
    if n is None:
        return "–"
    return f"{num(n / 2**20)} MiB" if n >= 2**20 else f"{num(n / 2**10)} KiB" if n >= 2**10 else f"{n} B"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def values(rows: list[dict], *keys) -> str:
    """The distinct values of `keys` across rows, e.g. 'B=1, H=4' or 'T=2048/8192'."""
    return ", ".join(f"{k}=" + "/".join(dict.fromkeys(str(r.get(k)) for r in rows)) for k in keys)


def caption(source: str, doc: dict, details: str) -> str:
    """The provenance line of a results document: its machine, and its date or else "date: not recorded", with the
    document's `date_bound` ({"after": time, "before": time, "evidence": why}) where it has one (files measured before
    the benchmark wrote dates, bounded from the repository's history), and what else ran on the machine meanwhile
    where the document measured it (`bench.perf.activity`)."""
    machine, date, date_bound = doc["machine"], doc.get("date"), doc.get("date_bound")
    when = f"date {date}" if date else "date: not recorded"
    if not date and date_bound:
        when += f" (measured between {date_bound['after']} and {date_bound['before']}: {date_bound['evidence']})"
    isa = f", {machine['cpu_capability']}" if machine.get("cpu_capability") else ""
    bf16 = {True: ", bf16 kernels", False: ", no bf16 kernels"}.get(machine.get("cpu_bf16_kernels"), "")
    activity = f"; {describe(doc['activity'])}" if "activity" in doc else ""  # files from before it was measured
    return (f"Source: `{source}` — {machine.get('device_name')} ({machine.get('device')}{isa}{bf16}), "
            f"torch {machine.get('torch')}, commit {machine.get('commit')}, {when}; {details}{activity}.")


# ----------------------------------------------------------------------------------------------- tables
def recurrence(doc: dict, source: str) -> str:
    """One row per (op, decay, T); the backends side by side as 'a / b' in each cell."""
    rows, peak = doc["rows"], doc.get("matmul_gflops")
    base = rows[0]["baseline"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    others = [b for b in backends if b != base]
    checked = [b for b in backends if b != "naive"]  # naive is the reference the others are checked against
    by = {(r["op"], r["decay"], r["T"], r["backend"]): r for r in rows}
    cases = list(dict.fromkeys((r["op"], r["decay"], r["T"]) for r in rows))
    gflops = (lambda g: "–" if g is None else f"{num(g)} ({100 * g / peak:.1f}%)") if peak else num
    spec = [("fwd ms", "fwd_s", backends, ms), ("f+b ms", "fwdbwd_s", backends, ms),
            ("× fwd", "speedup_fwd", others, num), ("× f+b", "speedup_fwdbwd", others, num),
            ("rel err", "rel_err", checked, sci),
            ("GFLOP/s fwd" + (" (% of matmul)" if peak else ""), "fwd_gflops", others, gflops),
            ("f+b peak GiB", "fwdbwd_peak_gib", backends, num)]
    spec = [s for s in spec if s[2] and any(s[1] in r for r in rows)]
    forms = any("form" in r for r in rows)
    header = ["op", "decay", "T"] + [f"{title} {' / '.join(names)}" for title, _, names, _ in spec] + ["form"] * forms
    body = []
    for case in cases:
        cells = [" / ".join(fmt(by.get((*case, b), {}).get(field)) for b in names) for _, field, names, fmt in spec]
        form = [next((by[(*case, b)]["form"] for b in backends if "form" in by.get((*case, b), {})), "")] * forms
        body.append([case[0], case[1], str(case[2])] + cells + form)
    details = (values(rows, "B", "H", "K", "V", "dtype") + f"; speed-ups over {base}"
               + (f"; matmul yardstick {num(peak)} GFLOP/s" if peak else ""))
    return caption(source, doc, details) + "\n\n" + markdown(header, body)


def distill_loss(doc: dict, source: str) -> str:
    rows = doc["rows"]
    spec = [("backend", "backend", str), ("chunk", "chunk", num), ("f+b ms", "fwdbwd_s", ms),
            ("× speed", "speedup", num), ("peak MiB", "peak_mib", num), ("× less memory", "memory_ratio", num),
            ("rel diff", "rel_diff", sci), ("correct", "correct", str)]
    spec = [s for s in spec if any(s[1] in r for r in rows)]
    body = [[fmt(r.get(field)) for _, field, fmt in spec] for r in rows]
    details = values(rows, "B", "T", "V", "D") + "; speed and memory relative to naive"
    return caption(source, doc, details) + "\n\n" + markdown([s[0] for s in spec], body)


def mixer_loss(doc: dict, source: str) -> str:
    rows = doc["rows"]
    spec = [("T", "T", str), ("backend", "backend", str), ("tile", "tile", num), ("f+b ms", "fwdbwd_s", ms),
            ("× speed", "speedup", num), ("peak MiB", "peak_mib", num), ("× less memory", "memory_ratio", num),
            ("rel diff", "rel_diff", sci), ("correct", "correct", str)]
    body = [[fmt(r.get(field)) for _, field, fmt in spec] for r in rows]
    details = values(rows, "B", "H", "Hkv", "K") + "; speed and memory relative to naive at the same T"
    return caption(source, doc, details) + "\n\n" + markdown([s[0] for s in spec], body)


def throughput(doc: dict, source: str) -> str:
    s, models = doc["settings"], doc["models"]
    floor = models["floor"]["prefill"]
    first, last = str(s["decode_contexts"][0]), str(s["decode_contexts"][-1])
    shortest, longest = str(s["lengths"][0]), str(s["lengths"][-1])
    counted = "matmul_flops" in floor.get(longest, {})  # reports from before the FLOP count lack it
    header = (["model"] + [f"prefill {n}: ms (× floor)" for n in s["lengths"]]
              + ([f"matmul FLOPs × floor {shortest} / {longest}"] if counted else [])
              + [f"train tok/s at {n}" for n in s["train_lengths"]]
              + [f"decode ms/token {first} → {last} (×)" if first != last else f"decode ms/token at {first}",
                 f"cache at {last}"])
    body = []
    for name in ["floor", "teacher", *s["students"]]:
        m = models[name]
        row = [name]
        for n in map(str, s["lengths"]):
            entry = m["prefill"].get(n, {})
            t, ratio = entry.get("median_s"), paired_ratio(entry, floor[n])
            row.append(f"{ms(t)} ({ratio:.2f})" if t else "–")
        if counted:
            flops = [m["prefill"].get(n, {}).get("matmul_flops") for n in (shortest, longest)]
            row.append(" / ".join(f"{f / floor[n]['matmul_flops']:.2f}" if f else "–"
                                  for f, n in zip(flops, (shortest, longest))))
        row += [num(m["train"].get(str(n), {}).get("tokens_per_s")) for n in s["train_lengths"]]
        a, b = (m["decode"].get(c, {}).get("ms_per_token") for c in (first, last))
        growth = paired_ratio(m["decode"].get(last), m["decode"].get(first), "ms_per_token")
        decode = (f"{num(a)} → {num(b)} ({growth:.2f}×)" if first != last else num(a)) if a and b else "–"
        row += [decode, size(m["decode"].get(last, {}).get("state_bytes"))]
        body.append(row)
    t = doc.get("teacher")  # the teacher's shape, which sets the floor's (files from before it was recorded lack it)
    shape = (f"teacher {t['source']}: {t['num_hidden_layers']} layers, width {t['hidden_size']}, "
             f"{t['num_attention_heads']} heads ({t['num_key_value_heads']} KV) of {t['head_dim']}, vocab "
             f"{t['vocab_size']}; " if t else "")
    logits = {"all": "every position's logits", "last": "the last position's logits only"}[s.get("prefill_logits", "all")]
    details = (f"{shape}{s['dtype']}, batch {s['batch_size']}, {s['threads']} threads, medians of {s['repeats']}; "
               f"a prefill forms {logits}; "
               + ("glibc's heap kept steady (no page faults from what ran before; bench.perf.heap); "
                  if s.get("heap") == "steady" else "")
               + "× floor: prefill time over the projections-only floor's (its runs right before and after, where the "
               "report keeps them), and decode (×): the last context's time "
               "over the first's, each the median of the ratios within a round where the report keeps them; "
               "matmul FLOPs: the products torch's FlopCounterMode counts (attention causal, recurrences in their "
               "torch chunk forms), over the floor's, "
               "the least a model's time can be at the floor's efficiency")
    return (caption(source, doc, details) + "\n\n" + markdown(header, body)
            + "\n\n" + throughput_targets(doc["targets"], s["students"]))


def throughput_summary(doc: dict, source: str) -> str:
    """The README's view of a throughput report: per student, prefill time over the floor's and the teacher's speed
    over the student's at 2,048 tokens (or the shortest length) and the longest, decode at the longest context against
    the teacher's, and the state a sequence carries there. Ratios as the full table reads them (per round)."""
    s, models = doc["settings"], doc["models"]
    lengths = [str(n) for n in dict.fromkeys([2048 if 2048 in s["lengths"] else s["lengths"][0], s["lengths"][-1]])]
    last = str(s["decode_contexts"][-1])
    floor, teacher = models["floor"]["prefill"], models["teacher"]

    def times(ratio: float | None) -> str:
        return "–" if ratio is None else f"{ratio:.2f}×"

    header = ["student", *(f"prefill {int(n):,}: × floor / teacher ÷ student" for n in lengths),
              f"decode at {int(last):,}: ms/token (teacher's)", f"state at {int(last):,} (teacher's cache)"]
    from bench.perf.throughput import CONTROL

    rows = []
    for name in s["students"]:
        m = models[name]
        row = [f"{name} (softmax control)" if name == CONTROL else name]
        row += [f"{times(paired_ratio(m['prefill'].get(n), floor.get(n)))} / "
                f"{times(paired_ratio(teacher['prefill'].get(n), m['prefill'].get(n)))}" for n in lengths]
        ms_token, theirs = m["decode"].get(last, {}).get("ms_per_token"), teacher["decode"].get(last, {})
        row.append(f"{num(ms_token)} ({num(theirs.get('ms_per_token'))})" if ms_token else "–")
        row.append(f"{size(m['decode'].get(last, {}).get('state_bytes'))} ({size(theirs.get('state_bytes'))})")
        rows.append(row)
    details = (f"{s['dtype']}, batch {s['batch_size']}, {s['threads']} threads, medians of {s['repeats']}"
               + (", glibc's heap kept steady" if s.get("heap") == "steady" else "") + " "
               "(× floor: time over the projections-only floor's; teacher ÷ student: the teacher's prefill time over "
               "the student's, above 1 where the student is faster); the full table and the targets' verdicts: "
               "docs/results.md#throughput-on-cpu")
    return caption(source, doc, details) + "\n\n" + markdown(header, rows)


def target_name(key: str) -> str:
    """A target of `bench.perf.throughput.check_targets` in a few words ('prefill ≤ 1.3× floor'), its key otherwise."""
    if within := re.match(r"prefill_within_([\d.]+)x_floor", key):
        return f"prefill ≤ {within.group(1)}× floor"
    short = {"prefill_faster": "prefill faster than teacher", "decode_flat": "decode flat",
             "decode_no_slower": "decode ≤ teacher's"}
    return next((text for prefix, text in short.items() if key.startswith(prefix)), key.replace("_", " "))


def machine_label(machine: dict) -> str:
    """A CPU in a few words: 'Intel Xeon, AVX512, bf16' from its name, instruction set and bf16 kernels."""
    name = " ".join(re.sub(r"\((R|TM)\)|\bProcessor\b|\bCPU\b", " ", machine.get("device_name") or "?").split())
    isa = f", {machine['cpu_capability']}" if machine.get("cpu_capability") else ""
    return name + isa + (", bf16" if machine.get("cpu_bf16_kernels") else "")


def throughput_machine_types(docs: list[tuple[dict, str]]) -> str:
    """The same throughput benchmark on each machine type side by side: per model and report, prefill time over the
    floor's at 2,048 and 16,384 tokens (per-round medians) and the speed targets the run did not find met."""
    from bench.perf.throughput import CONTROL

    lengths = [str(n) for n in (2048, 16384)]
    names = list(dict.fromkeys(n for doc, _ in docs for n in ("teacher", *doc["settings"]["students"])))

    def verdicts(doc: dict, name: str) -> str:
        judged = {key: value[name] for key, value in doc["targets"].items()
                  if isinstance(value, dict) and value.get(name) is not None}
        if not judged:
            return ""
        open_ = [f"{target_name(key)} {'**not met**' if value is False else value}"
                 for key, value in judged.items() if value is not True]
        return " — " + ("; ".join(open_) if open_ else "all met")

    rows = []
    for name in names:
        row = [f"{name} (softmax control)" if name == CONTROL else name]
        for doc, _ in docs:
            if name not in doc["models"]:
                row.append("–")
                continue
            floor, prefill = doc["models"]["floor"]["prefill"], doc["models"][name]["prefill"]
            ratios = [paired_ratio(prefill.get(n), floor.get(n)) for n in lengths]
            row.append(" / ".join("–" if r is None else f"{r:.2f}" for r in ratios) + verdicts(doc, name))
        rows.append(row)
    calm = {True: "quiet", False: "not quiet", None: "activity not measured"}
    sources = "; ".join(f"`{source}` ({machine_label(doc['machine'])}: commit {doc['machine'].get('commit')}, "
                        f"{doc.get('date') or 'date: not recorded'}, {calm[is_quiet(doc.get('activity'))]})"
                        for doc, source in docs)
    return (f"Sources: {sources}. A cell: prefill time over the floor's at 2,048 / 16,384 tokens (the median of the "
            "per-round ratios), then the speed targets the run judged for that student (`bench.perf.throughput."
            "check_targets`): all met, or the ones not met (within noise: the rounds' quartiles fall either side of "
            "the limit). Each file's full table and caption follow.\n\n"
            + markdown(["model", *(machine_label(doc["machine"]) for doc, _ in docs)], rows))


def distill_speed(doc: dict, source: str) -> str:
    """One row per student and stage: tokens/s of one optimiser step on the old path (eager fp32) and the default,
    their ratio, and each mode's achieved share of the matmul yardstick timed in the row's own rounds."""
    s, yard, spread = doc["settings"], doc["yardstick_gflops"], doc.get("yardstick_gflops_range")
    yard_text = {mode: f"{yard[mode]:.0f}" + (f" ({spread[mode][0]:.0f}–{spread[mode][1]:.0f} over the rows)"
                                              if spread else "") for mode in ("eager fp32", "default")}
    precision = "bf16 autocast" if doc["default_bf16"] else "fp32"
    requested = s.get("dtype", "auto")  # the new path is the run's default only under --dtype auto
    new_path = "default" if requested == "auto" else f"--dtype {requested}"
    header = ["student", "stage", "eager fp32 tok/s", f"{new_path} ({precision}) tok/s", "× eager fp32",
              "GFLOP/step", f"% of matmul yardstick fp32 / {new_path}"]
    rows = [[r["student"], r["stage"], num(r["eager fp32_tok_s"]), num(r["default_tok_s"]), f"{r['speedup']:.2f}",
             num(r["gflop_per_step"]), f"{r['eager fp32_pct_yardstick']:.0f}% / {r['default_pct_yardstick']:.0f}%"]
            for r in doc["rows"]]
    details = (f"batch {s['batch']} × {s['seq_len']} tokens, medians of {s['repeats']} interleaved steps (teacher "
               f"forward, student forward and backward, AdamW); matmul yardstick fp32 {yard_text['eager fp32']}, "
               f"{new_path} {yard_text['default']} GFLOP/s")
    return caption(source, doc, details) + "\n\n" + markdown(header, rows)


def _grid_activity(rows: list[dict]) -> str:
    """The most that other processes and steal took of a run's CPU time, over the runs whose records measured it."""
    measured = [r for r in rows if r.get("others_share") not in (None, "")]
    if not measured:
        return ""
    others, steal = (max(float(r[key] or 0) for r in measured) for key in ("others_share", "steal_share"))
    return (f"; other processes took at most {100 * others:.1f}% and steal {100 * steal:.1f}% of a run's CPU time "
            f"({len(measured)} of {len(rows)} runs measured{'' if quiet(others, steal) else '; not quiet'})")


def throughput_targets(targets: dict, students: list[str]) -> str:
    """The benchmark's own verdicts (`bench.perf.throughput.check_targets`): one column per target judged per
    student (yes / no / within noise / – where not measured), then the targets judged once."""
    verdict = {True: "yes", False: "**no**", None: "–", NOISE: NOISE}
    per_student = {name: value for name, value in targets.items() if isinstance(value, dict)}
    judged = [n for n in students if any(n in v for v in per_student.values())]
    rows = [[name] + [verdict[per_student[t].get(name)] for t in per_student] for name in judged]
    table = markdown(["target met by"] + [t.replace("_", " ") for t in per_student], rows)
    once = "; ".join(f"{name.replace('_', ' ')}: {verdict[value]}" for name, value in targets.items()
                     if not isinstance(value, dict))
    return table + (f"\n\n{once}." if once else "")


def grid(rows: list[dict], source: str) -> str:
    """Validation KL per student and init (mean ± half the range over seeds), and, at one init, the score
    families, % recovered with its interval, and C_α / α* (`bench.evaluation.recovery`)."""
    from bench.report.leaderboard import TIE_COLUMN, cell_flag, cell_value, cells, interval_kind, primary_rows

    rows = primary_rows(rows)  # ablation runs (another stage list) are the claims table's, not a cell's seeds
    runs = cells(rows)

    def mean(student, init, key):
        value = cell_value(runs.get((student, init), []), key)
        return None if value is None else value.mean

    most_seeds = max((len(cell) for cell in runs.values()), default=0)

    def spread(student, init):
        """mean ± half the range; `(n=k)` where the cell has fewer seeds than the fullest (one seed: no ±)."""
        found = [float(r["val_kl"]) for r in runs.get((student, init), [])]
        if not found:
            return "–"
        text = f"{sum(found) / len(found):.3f}" + (f" ± {(max(found) - min(found)) / 2:.3f}" if len(found) > 1 else "")
        return text + (f" (n={len(found)})" if len(found) < most_seeds else "")

    def recovered(student, init):
        value = cell_value(runs.get((student, init), []), "pct_recovered")
        if value is None:
            return "–"
        return f"{value.mean:.1f}%" + ("" if value.kind == "one run" else f" [{value.lo:.1f}, {value.hi:.1f}]")

    inits = sorted({r["init"] for r in rows}, key=lambda i: INIT_ORDER.index(i) if i in INIT_ORDER else len(INIT_ORDER))
    focus = "qkv_copy" if "qkv_copy" in inits else inits[0]
    students = sorted(dict.fromkeys(r["student"] for r in rows), key=lambda st: mean(st, focus, "val_kl") or float("inf"))
    header = (["student"] + [f"val KL {i}" for i in inits]
              + [f"{name} ({focus})" for name in ("language", "recall", "cloze", "% recovered")]
              + [f"C_{TIE_COLUMN[2:]} / α* ({focus})"])
    body = []
    for st in students:
        flagged = any(cell_flag(runs.get((st, i), [])) for i in inits)
        families = [pct(mean(st, focus, f"pct_{family}"), 1) for family in ("language", "recall", "cloze")]
        tie, star = mean(st, focus, TIE_COLUMN), mean(st, focus, "alpha_star")
        body.append([st + (" †" if flagged else "")] + [spread(st, i) for i in inits] + families
                    + [recovered(st, focus), f"{num(tie)} / {num(star)}"])
    distinct = lambda key: ", ".join(sorted({r[key] for r in rows}))
    dates = sorted(r["date"] for r in rows if r.get("date"))
    uneven = any(len(cell) < most_seeds for cell in runs.values())
    minutes = {}  # the grid's wall time, from each run's own `seconds` (a run, its evaluation and throughput)
    for r in rows:
        if r.get("seconds") not in (None, ""):
            minutes[r["seed"]] = minutes.get(r["seed"], 0.0) + float(r["seconds"]) / 60
    wall = (f"; run time {sum(minutes.values()) / 60:.1f} h in all (" + ", ".join(
        f"seed {seed} {m:.0f} min" for seed, m in sorted(minutes.items())) + ")") if minutes else ""
    wall += _grid_activity(rows)
    details = (f"{len(rows)} runs, devices {distinct('device')}, torch {distinct('torch')}, commits {distinct('commit')}, "
               + (f"dates {dates[0]} … {dates[-1]}" if dates else "date: not recorded") + wall
               + f"; tokens {distinct('tokens')}, precision {distinct('dtype')}, seeds {distinct('seed')}; "
               "val KL: mean ± half the range over seeds"
               + (f", (n=k): a cell with k of {most_seeds} seeds" if uneven else "") + "; "
               f"families and C/α*: mean over seeds; % recovered: mean [{interval_kind(rows)}]"
               + ("; † seeds on different commits, a dirty tree or in different precisions"
                  if any(r.get("cell_flag") for r in rows) else ""))
    return f"Source: `{source}` — {details}.\n\n" + markdown(header, body)


def claims(rows: list[dict], source: str) -> str:
    from bench.report import claims as claims_lib

    return claims_lib.render(rows, source)


SHORT = {"matrix_mixing": "matrix", "attention_output": "attn-out", "hidden_alignment": "hidden", "end_to_end": "e2e"}


def research(records: list[dict], source: str) -> str:
    """One row per run record of a study: what it tried (student, init, precision, recall share, stage steps,
    tokens) beside its wall time, validation KL and recall against the teacher's at each length."""
    records = sorted(records, key=lambda r: r.get("date", ""))
    lengths = sorted({int(k.rsplit("_", 1)[1]) for r in records for k in r["evaluation"].get("student", {})
                      if k.startswith("recall_mqar_")})
    rows = []
    for r in records:
        s, ev = r["settings"], r["evaluation"]
        student, teacher = ev.get("student", {}), ev.get("teacher", {})
        steps = ", ".join(f"{SHORT.get(p['name'], p['name'])} {p['steps']}" for p in r["plans"])
        plateau = {st["stage"]: st.get("plateau", {}).get("plateaued") for st in r["stages"]}
        recall = [f"{pct(student.get(f'recall_{kind}_{n}'))} / {pct(teacher.get(f'recall_{kind}_{n}'))}"
                  for kind in ("mqar", "passkey") for n in lengths]
        rows.append([s["student"] + ("+keep" + ",".join(map(str, r["keep_attention"])) if r.get("keep_attention") else ""),
                     s["init"], "bf16" if r.get("bf16") else "fp32", f"{s['data'].get('recall_fraction')}",
                     steps, f"{s['tokens']:,}", str(s["seed"]), f"{r['seconds'] / 60:.1f}",
                     f"{r['metrics']['val_kl']:.3f}", *recall,
                     ", ".join(name for name, flat in plateau.items() if flat) or "–"])
    header = (["student", "init", "dtype", "recall share", "steps per stage", "tokens", "seed", "minutes", "val KL"]
              + [f"{kind} {n} student / teacher" for kind in ("MQAR", "passkey") for n in lengths]
              + ["plateaued stages"])
    machines = {(r["machine"].get("device_name"), r["machine"].get("torch"), r["machine"].get("commit")) for r in records}
    dates = sorted(r.get("date", "") for r in records)
    where = "; ".join(f"{d}, torch {t}, commit {c}" for d, t, c in sorted(machines, key=str))
    return (f"Source: `{source}` — {len(records)} runs on {where}; dates {dates[0]} … {dates[-1]}; recall: "
            f"teacher-forced accuracy on held-out documents, student / teacher.\n\n" + markdown(header, rows))


def hybrid(records: list[dict], source: str) -> str:
    """The layer ranking that chose each hybrid's kept attention (validation KL with only that layer replaced,
    arXiv 2512.20569), then each full run, pure or hybrid: its recall against the teacher's and what keeping
    attention costs in prefill speed and per-sequence state at the longest measured context."""
    ranking_runs = {name for r in records for name in (r.get("keep_ranking") or {}).get("runs", [])}
    runs = sorted((r for r in records if r["run"] not in ranking_runs), key=lambda r: r.get("date", ""))
    rankings = {(r["settings"]["student"], tuple(r["keep_ranking"]["val_kl_with_only_this_layer_replaced"])): r
                for r in runs if r.get("keep_ranking")}
    # Recall of each ranking run's student (bench.evaluate), where measured: what the KL ranking does not see.
    folder = Path(source) if Path(source).is_absolute() else ROOT / source
    files = sorted((folder.parent / "layer_recall").glob("*.json"))
    layer_recall = {d["run"]: d for d in (json.loads(f.read_text()) for f in files)}
    text = []
    for (student, kls), r in rankings.items():
        header = ["student", "measure", *[f"layer {i} replaced" for i in range(len(kls))], "kept"]
        kept = ",".join(map(str, r["keep_ranking"]["kept"]))
        rows = [[student, "val KL", *[f"{kl:.3f}" for kl in kls], kept]]
        scored = [layer_recall.get(name, {}).get("scores", {}) for name in r["keep_ranking"]["runs"]]
        for n in sorted({int(k.rsplit("_", 1)[1]) for sc in scored for k in sc if k.startswith("recall_mqar_")}):
            rows.append([student, f"MQAR {n}", *[pct(sc.get(f"recall_mqar_{n}")) for sc in scored], kept])
        text.append(markdown(header, rows))
    rows = []
    for r in runs:
        ev, tp = r["evaluation"], r.get("throughput") or {}
        student, teacher = ev.get("student", {}), ev.get("teacher", {})
        lengths = sorted(int(k.rsplit("_", 1)[1]) for k in student if k.startswith("recall_mqar_"))
        recall = [f"{pct(student[f'recall_mqar_{n}'])} / {pct(teacher[f'recall_mqar_{n}'])} "
                  f"({pct(student[f'recall_mqar_{n}'] / teacher[f'recall_mqar_{n}'])})" for n in lengths]
        prefill = tp.get("prefill_tokens_per_s", {})
        longest = max(prefill.get("student", {}), key=int)
        context = max(tp.get("state_bytes_per_sequence", {}), key=int)
        kept = "+keep" + ",".join(map(str, r["keep_attention"])) if r.get("keep_attention") else ""
        chosen_by = (r["settings"].get("keep") or {}).get("select")
        kept += f" (--select {chosen_by})" if chosen_by else ""
        rows.append([r["settings"]["student"] + kept, f"{r['settings']['tokens']:,}", f"{r['metrics']['val_kl']:.3f}", *recall,
                     f"{prefill['student'][longest]:,.0f} / {prefill['teacher'][longest]:,.0f} ({longest})",
                     f"{size(tp['state_bytes_per_sequence'][context])} / "
                     f"{size(tp['kv_cache_bytes_per_sequence'][context])} ({context})"])
    header = (["student", "tokens", "val KL"] + [f"MQAR {n} student / teacher (share)" for n in lengths]
              + ["prefill tok/s student / teacher (tokens)", "state / teacher KV per sequence (context)"])
    machines = {(r["machine"].get("device_name"), r["machine"].get("commit")) for r in records}
    where = "; ".join(f"{d}, commit {c}" for d, c in sorted(machines, key=str))
    return (f"Source: `{source}` — {len(records)} records ({len(records) - len(runs)} of them ranking runs) on {where}; "
            f"dates {min(r.get('date', '') for r in records)} … {max(r.get('date', '') for r in records)}; fp32 "
            f"batch-1 speeds measured inside each run"
            + (f"; MQAR of the ranking runs' students: `{Path(source).parent / 'layer_recall'}` (bench.evaluate, "
               f"{min(d['date'] for d in layer_recall.values())})" if layer_recall else "")
            + ".\n\n" + "\n\n".join(text + [markdown(header, rows)]))


# name: (file in the results directory, renderer, the command that writes the file)
TABLES = {
    "kernels_cpu": ("kernels_cpu.json", recurrence, "python -m bench.perf.kernel_bench --json results/kernels_cpu.json"),
    "kernels_h100_recurrence": ("kernels_h100_recurrence.json", recurrence, "bash bench/perf/gpu_kernels.sh OUT_DIR"),
    "kernels_h100_distill_loss": ("kernels_h100_distill_loss.json", distill_loss, "bash bench/perf/gpu_kernels.sh OUT_DIR"),
    "kernels_h100_mixer_loss": ("kernels_h100_mixer_loss.json", mixer_loss, "bash bench/perf/gpu_kernels.sh OUT_DIR"),
    "throughput_cpu": ("throughput_cpu.json", throughput,
                       "python -m bench.throughput --student all --repeats 11 --threads 2 --json results/throughput_cpu.json"),
    "throughput_summary": ("throughput_cpu.json", throughput_summary,
                           "python -m bench.throughput --student all --repeats 11 --threads 2 "
                           "--json results/throughput_cpu.json"),
    "throughput_cpu_avx2": ("throughput_cpu_avx2.json", throughput,
                            "python -m bench.throughput --student all --repeats 11 --threads 2 "
                            "--json results/throughput_cpu_avx2.json"),
    "throughput_cpu_epyc_avx512": ("throughput_cpu_epyc_avx512.json", throughput,
                                   "python -m bench.throughput --student all --repeats 11 --threads 2 "
                                   "--json results/throughput_cpu_epyc_avx512.json"),
    "throughput_machine_types": (("throughput_cpu.json", "throughput_cpu_avx2.json", "throughput_cpu_epyc_avx512.json"),
                                 throughput_machine_types,
                                 "python -m bench.throughput --student all --repeats 11 --threads 2 --json FILE, "
                                 "one FILE per machine type"),
    "throughput_cpu_smollm2_135m_shape": (
        "throughput_cpu_smollm2_135m_shape.json", throughput,
        "python -m bench.throughput --student all --teacher-shape smollm2-135m --lengths 1024,2048,4096 "
        "--train-lengths 512 --decode-contexts 1024,8192 --repeats 5 --threads 2 "
        "--json results/throughput_cpu_smollm2_135m_shape.json"),
    "throughput_cpu_last_logits": (
        "speed/throughput_cpu_last_logits.json", throughput,
        "python -m bench.throughput --student all --prefill-logits last --train-lengths 512 --decode-contexts 1024 "
        "--repeats 11 --threads 2 --json results/speed/throughput_cpu_last_logits.json"),
    "throughput_cpu_default_heap": (
        "speed/throughput_runs/throughput_cpu_3beabfb.json", throughput,
        "python -m bench.throughput --student all --repeats 11 --threads 2 --heap default "
        "--json results/speed/throughput_runs/throughput_cpu_3beabfb.json"),
    "distill_speed_cpu": ("speed/distill_speed_cpu.json", distill_speed,
                          "python -m bench.perf.distill_speed --json results/speed/distill_speed_cpu.json"),
    "distill_speed_cpu_avx2": ("speed/distill_speed_cpu_avx2.json", distill_speed,
                               "python -m bench.perf.distill_speed --stages end_to_end --repeats 4 "
                               "--json results/speed/distill_speed_cpu_avx2.json"),
    "distill_speed_cpu_epyc_avx512": ("speed/distill_speed_cpu_epyc_avx512.json", distill_speed,
                                      "python -m bench.perf.distill_speed "
                                      "--json results/speed/distill_speed_cpu_epyc_avx512.json"),
    "distill_speed_cpu_avx512_software_bf16": (
        "speed/distill_speed_cpu_avx512_software_bf16.json", distill_speed,
        "python -m bench.perf.distill_speed --stages end_to_end --repeats 4 --dtype bf16 "
        "--json results/speed/distill_speed_cpu_avx512_software_bf16.json"),
    "grid": ("leaderboard.csv", grid, "python -m bench.sweep --grid paper, then python -m bench.leaderboard"),
    "claims": ("leaderboard.csv", claims, "python -m bench.sweep --grid paper, then python -m bench.leaderboard"),
    "recall_research": ("research/recall/runs", research, "python -m bench.run ... --results-dir results/research/recall"),
    "hybrid_research": ("research/hybrid/runs", hybrid,
                        "python -m bench.run ... --keep-attention-count 1 --select kl --results-dir results/research/hybrid"),
}


def _load(path: Path):
    """A results file's contents: rows of a CSV, a JSON document, or the JSON run records of a directory."""
    if path.is_dir():
        data = [json.loads(p.read_text()) for p in sorted(path.glob("*.json"))]
        if not data:
            raise ValueError("no run records")
        return data
    text = path.read_text()
    return list(csv.DictReader(text.splitlines())) if path.suffix == ".csv" else json.loads(text)


def render(name: str, results_dir: Path) -> str:
    """One table from its file, or from its files (a tuple in `TABLES`: the renderer takes [(document, source)])."""
    filenames, renderer, command = TABLES[name]
    paths = [Path(results_dir) / f for f in (filenames if isinstance(filenames, tuple) else (filenames,))]
    sources = [str(p.resolve().relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p) for p in paths]
    where = ", ".join(map(str, paths))
    try:
        data = [_load(path) for path in paths]
        if isinstance(filenames, tuple):
            return renderer(list(zip(data, sources)))
        return renderer(data[0], sources[0])
    except OSError as error:  # names the one file that could not be read
        raise BenchError(f"{error.filename}: cannot read ({error.strerror}); `{command}` writes it") from None
    except (ValueError, KeyError, TypeError, IndexError, ZeroDivisionError, AttributeError) as error:
        raise BenchError(f"{where}: malformed for table {name!r} ({type(error).__name__}: {error}); "
                         f"`{command}` rewrites it") from None


def render_all(results_dir: Path) -> dict[str, str]:
    return {name: render(name, results_dir) for name in TABLES}


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def rewrite(text: str, tables: dict[str, str], where: str) -> str:
    """`text` with the text between each pair of table markers replaced by that table."""
    opened = OPENING.findall(text)
    closed = [m.group(2) for m in MARKER.finditer(text)]
    if opened != closed:
        raise BenchError(f"{where}: table markers {sorted(set(opened) - set(closed))} lack a matching `<!-- /table:NAME -->`")
    for name in opened:
        if name not in tables:
            raise BenchError(f"{where}: unknown table {name!r}; known: {', '.join(tables)}")
    return MARKER.sub(lambda m: f"{m.group(1)}\n{tables[m.group(2)]}\n\n{m.group(4)}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results")
    parser.add_argument("--write", action="store_true", help="rewrite the tables between markers in README.md and docs/*.md")
    args = parser.parse_args(argv)
    try:
        tables = render_all(args.results_dir)
        if not args.write:
            print("\n\n".join(f"<!-- table:{n} -->\n\n{t}\n\n<!-- /table:{n} -->" for n, t in tables.items()))
            return 0
        texts = {path: path.read_text() for path in documents()}
        new = {path: rewrite(text, tables, str(path.relative_to(ROOT))) for path, text in texts.items()}  # all or none
        for path in [path for path in texts if new[path] != texts[path]]:
            atomic_write_text(path, new[path])
            print(f"rewrote {path.relative_to(ROOT)}")
    except BenchError as error:
        return fail(error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
