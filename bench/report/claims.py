"""The reference study's claims beside what the grid measured: reproduced, differs or not measurable.

    python -m bench.report.claims [--results-dir results]

prints the table that `python -m bench.report.tables --write` renders into docs/results.md
(`<!-- table:claims -->`). It reads `leaderboard.csv` only.

A *cell* is one student and init (one stage list), its seeds together; on a column it has a mean and an
interval (`bench.report.leaderboard.cell_value`): the span of its seeds' 95% bootstrap intervals where every
seed has one, else the min–max over its seeds. The rule, in `compare`: cell A is *above* B when A's interval
lies wholly above B's, *below* when wholly below, and otherwise the two *overlap*; a single run without an
interval has no spread to judge by, so it never decides. From there:

- a claim that one group of cells ranks above another (the best students, the worst, one recall ordering) is
  *reproduced* when every cell of the first group is above every cell of the second, *differs* when some cell
  of the second is above some cell of the first, and is *not measurable* otherwise (or when a cell is missing);
- a claim that a change helps (an init, a stage) is judged per student, comparing the cells with and without
  it: *reproduced* when more than half the students measured show it above, *differs* when more than half
  show it below, *not measurable* otherwise (or with no student measured both ways);
- "at 0" holds when the whole interval lies at or below `AT_ZERO`, and differs when it lies wholly above.

Claims compare `pct_recovered` (the mean of the score families, `bench.evaluation.recovery`) at the `FOCUS`
init unless they name another column; recall claims compare the chance-corrected recall family.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.report.leaderboard import CellValue, cell_flag, cell_value, cells, interval_kind

REPRODUCED, DIFFERS, NOT_MEASURABLE = "reproduced", "differs", "not measurable"
FOCUS = "qkv_copy"  # the study's main init, where claims about architectures are read
AT_ZERO = 5.0  # % recall recovered at or below which a student counts as "at 0" (at chance)
SCORE, RECALL = "pct_recovered", "pct_recall"
HIDDEN = "hidden_alignment"


@dataclass(frozen=True)
class Finding:
    measured: str
    verdict: str
    share_above: float | None = None  # a change judged per student: the share of students measured above


def compare(a: CellValue | None, b: CellValue | None) -> str | None:
    """'above', 'below' or 'overlap' (None when a cell is missing); see the module docstring."""
    if a is None or b is None:
        return None
    if "one run" in (a.kind, b.kind):
        return "overlap"
    if a.lo > b.hi:
        return "above"
    if a.hi < b.lo:
        return "below"
    return "overlap"


def show(value: CellValue | None) -> str:
    if value is None:
        return "–"
    spread = "" if value.kind == "one run" else f" [{value.lo:.1f}, {value.hi:.1f}]"
    return f"{value.mean:.1f}{spread}"


# ----------------------------------------------------------------------------------------------- cells
class Grid:
    """The leaderboard rows as cells: (student, init, stages) -> rows, of the rows' most common precision and
    token budget only (runs of another are not more seeds of a cell, nor comparable with it)."""

    def __init__(self, rows: list[dict]):
        setup = lambda r: (str(r.get("dtype")), str(r.get("tokens")))  # noqa: E731
        counts = Counter(setup(r) for r in rows)
        main = max(counts, key=lambda found: (counts[found], found)) if counts else None
        rows = [r for r in rows if setup(r) == main]
        self.rows = rows
        self.by_cell = cells(rows, ("student", "init", "stages"))
        self.students = sorted({r["student"] for r in rows})

    def stages_of(self, student: str, init: str, with_hidden: bool = True) -> str | None:
        """The most common stage list of a student and init, with (or without) hidden-state alignment."""
        found = [(len(rows), stages) for (s, i, stages), rows in self.by_cell.items()
                 if s == student and i == init and (HIDDEN in str(stages).split("+")) == with_hidden]
        return max(found)[1] if found else None

    def value(self, student: str, init: str, column: str, with_hidden: bool = True) -> CellValue | None:
        stages = self.stages_of(student, init, with_hidden)
        return None if stages is None else cell_value(self.by_cell[(student, init, stages)], column)

    def flagged(self, student: str, init: str, with_hidden: bool = True) -> str:
        stages = self.stages_of(student, init, with_hidden)
        return "" if stages is None else cell_flag(self.by_cell[(student, init, stages)])


# ---------------------------------------------------------------------------------------------- rules
def group_above(grid: Grid, upper: list[str], lower: list[str], column: str, init: str = FOCUS) -> Finding:
    """`upper` students rank above `lower` ones on `column` (module docstring)."""
    values = {s: grid.value(s, init, column) for s in upper + lower}
    missing = [s for s, v in values.items() if v is None]
    if missing or not lower:
        return Finding(f"no {init} runs of {', '.join(missing) or 'the other students'}", NOT_MEASURABLE)
    label = lambda s: f"{s}{'†' if grid.flagged(s, init) else ''} {show(values[s])}"  # noqa: E731
    strongest = sorted(lower, key=lambda s: -values[s].mean)
    shown = (", ".join(map(label, upper)) + " vs " + ", ".join(map(label, strongest[:3]))
             + (f" and {len(lower) - 3} more" if len(lower) > 3 else ""))
    outcomes = {(u, w): compare(values[u], values[w]) for u in upper for w in lower}
    if all(o == "above" for o in outcomes.values()):
        return Finding(shown, REPRODUCED)
    against = [f"{w} above {u}" for (u, w), o in outcomes.items() if o == "below"]
    if against:
        return Finding(f"{shown}; {', '.join(against[:3])}{' …' if len(against) > 3 else ''}", DIFFERS)
    return Finding(f"{shown}; intervals overlap", NOT_MEASURABLE)


def tally(outcomes: dict[str, str | None]) -> Finding | None:
    """Majority verdict over per-student outcomes (None when no student was measured both ways)."""
    outcomes = {s: o for s, o in outcomes.items() if o is not None}
    if not outcomes:
        return None
    above, below = ([s for s, o in outcomes.items() if o == k] for k in ("above", "below"))
    n = len(outcomes)
    measured = (f"{len(above)} of {n} students above, {len(below)} below" + (f" ({', '.join(below)})" if below else "")
                + f", {n - len(above) - len(below)} overlap")
    verdict = REPRODUCED if len(above) > n / 2 else DIFFERS if len(below) > n / 2 else NOT_MEASURABLE
    return Finding(measured, verdict, len(above) / n)


def per_student(grid: Grid, treated: Callable[[str], CellValue | None], control: Callable[[str], CellValue | None],
                what: str) -> Finding:
    """A change helps: per student, the `treated` cell against the `control` cell (module docstring)."""
    found = tally({s: compare(treated(s), control(s)) for s in grid.students})
    return found or Finding(f"no student has runs {what}", NOT_MEASURABLE)


def at_zero(grid: Grid, student: str, column: str, init: str = FOCUS) -> Finding:
    value = grid.value(student, init, column)
    if value is None:
        return Finding(f"no {init} runs of {student}", NOT_MEASURABLE)
    shown = f"{student} {show(value)}"
    if value.kind != "one run" and value.hi <= AT_ZERO:
        return Finding(shown, REPRODUCED)
    if value.kind != "one run" and value.lo > AT_ZERO:
        return Finding(shown, DIFFERS)
    return Finding(f"{shown}; the interval reaches {AT_ZERO:g}", NOT_MEASURABLE)


def most_of_the_teacher(grid: Grid) -> Finding:
    """Each student's best init against 50% of the teacher, by the per-student rule."""
    inits = sorted({r["init"] for r in grid.rows})
    best = {s: max(filter(None, (grid.value(s, i, SCORE) for i in inits)), key=lambda v: v.mean, default=None)
            for s in grid.students}
    half = CellValue(50.0, 50.0, 50.0, "threshold", 0)
    found = tally({s: compare(value, half) for s, value in best.items()})
    if found is None:
        return Finding("no runs", NOT_MEASURABLE)
    top = max((s for s in best if best[s]), key=lambda s: best[s].mean)
    return Finding(f"best init against 50%: {found.measured}; highest {top} {show(best[top])}", found.verdict)


def hidden_alignment(grid: Grid, rivals: dict[str, Finding]) -> Finding:
    """Per student and init, runs with the hidden_alignment stage against the same init without it; "most
    reliable" also needs its share of students above to be at least that of every rival change."""
    measured = []
    for init in sorted({r["init"] for r in grid.rows}):
        found = tally({s: compare(grid.value(s, init, SCORE, True), grid.value(s, init, SCORE, False))
                       for s in grid.students})
        if found is not None:
            measured.append((init, found))
    if not measured:
        return Finding("no runs without the hidden_alignment stage", NOT_MEASURABLE)
    init, found = max(measured, key=lambda m: m[1].share_above)
    beaten = [name for name, rival in rivals.items()
              if rival.share_above is not None and rival.share_above > found.share_above]
    verdict = DIFFERS if beaten and found.verdict != NOT_MEASURABLE else found.verdict
    return Finding(f"{init}: {found.measured}" + (f"; {', '.join(beaten)} above more often" if beaten else ""),
                   verdict, found.share_above)


# ---------------------------------------------------------------------------------------------- claims
def findings(rows: list[dict]) -> list[tuple[str, Finding]]:
    """Each claim of the study (Haller et al. 2025, arXiv 2504.14366) beside what `rows` measured."""
    grid = Grid(rows)
    others = lambda keep: [s for s in grid.students if s not in keep]  # noqa: E731
    best = ["xlstm", "gla", "metala"]
    qkv = per_student(grid, lambda s: grid.value(s, "qkv_copy", SCORE), lambda s: grid.value(s, "random", SCORE),
                      "with qkv_copy and random")
    mm = per_student(grid, lambda s: grid.value(s, "qkv_copy+matrix_mixing", SCORE),
                        lambda s: grid.value(s, "qkv_copy", SCORE), "with qkv_copy+matrix_mixing and qkv_copy")
    hidden = hidden_alignment(grid, {"QKV copy": qkv, "matrix mixing": mm})
    return [
        ("Students recover most of the teacher", most_of_the_teacher(grid)),
        ("xLSTM, GLA and MetaLA are the best students", group_above(grid, best, others(best), SCORE)),
        ("Plain linear attention is the worst student",
         group_above(grid, others(["linear_attention"]), ["linear_attention"], SCORE)),
        ("QKV copy helps over a random init", qkv),
        ("Matrix mixing on top of QKV copy helps", mm),
        ("Hidden-state alignment is the most reliable gain", hidden),
        ("Recall: gated DeltaNet far above GLA", group_above(grid, ["gated_deltanet"], ["gla"], RECALL)),
        ("Recall: plain linear attention at 0", at_zero(grid, "linear_attention", RECALL)),
    ]


def render(rows: list[dict], source: str) -> str:
    """The claims table with its caption (the `claims` table of bench.report.tables)."""
    from bench.report.tables import markdown

    flagged = {(r["student"], r["init"], r.get("stages")) for r in rows if r.get("cell_flag")}
    body = [[claim, finding.measured, f"**{finding.verdict}**"] for claim, finding in findings(rows)]
    caption = (f"Source: `{source}` — {len(rows)} runs; `{SCORE}` (and `{RECALL}`) in %, mean [interval] at init "
               f"{FOCUS}, intervals: {interval_kind(rows)}; a difference counts when the intervals do not overlap "
               f"(rule: `bench/report/claims.py`)"
               + (f"; † the seeds of a cell ran on different commits, a dirty tree or in different precisions "
                  f"({len(flagged)} of {len(cells(rows, ('student', 'init', 'stages')))} cells)" if flagged else "")
               + ".")
    return caption + "\n\n" + markdown(["the study's claim", "measured here", "verdict"], body)


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m bench.report.claims", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args(argv)
    path = args.results_dir / "leaderboard.csv"
    if not path.exists():
        print(f"error: {path} does not exist; run `python -m bench.leaderboard` first", file=sys.stderr)
        return 2
    print(render(list(csv.DictReader(path.open())), str(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
