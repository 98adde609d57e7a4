"""The claims table: the verdict rule on synthetic leaderboard rows (above, below, overlap; one run never decides)."""
import pytest

from bench.report import claims
from bench.report.claims import DIFFERS, NOT_MEASURABLE, REPRODUCED
from bench.report.leaderboard import CellValue

STAGES = "hidden_alignment+end_to_end"


def _rows(student, init, values, column="pct_recovered", stages=STAGES, width=None, flag=""):
    """One row per seed; `width` gives each a bootstrap interval of ± width."""
    rows = []
    for seed, value in enumerate(values):
        row = {"student": student, "init": init, "stages": stages, "seed": seed, column: value, "cell_flag": flag}
        if width is not None:
            row.update({f"{column}_lo": value - width, f"{column}_hi": value + width})
        rows.append(row)
    return rows


def _grid(scores: dict, init="qkv_copy", **kwargs):
    return [row for student, values in scores.items() for row in _rows(student, init, values, **kwargs)]


def _verdicts(rows):
    return {claim: finding.verdict for claim, finding in claims.findings(rows)}


def test_compare_needs_disjoint_intervals_and_a_single_run_never_decides():
    a, b = CellValue(60, 55, 65, "bootstrap", 2), CellValue(40, 35, 45, "bootstrap", 2)
    assert claims.compare(a, b) == "above" and claims.compare(b, a) == "below"
    assert claims.compare(a, CellValue(50, 45, 56, "seeds", 2)) == "overlap"
    assert claims.compare(a, CellValue(10, 10, 10, "one run", 1)) == "overlap"
    assert claims.compare(a, None) is None


@pytest.mark.parametrize("scores, verdict", [
    ({"xlstm": [80, 82], "gla": [78, 80], "metala": [79, 81], "mamba": [50, 52], "linear_attention": [10, 12]}, REPRODUCED),
    ({"xlstm": [80, 82], "gla": [40, 42], "metala": [79, 81], "mamba": [60, 62], "linear_attention": [10, 12]}, DIFFERS),
    ({"xlstm": [60, 82], "gla": [60, 80], "metala": [60, 81], "mamba": [55, 65], "linear_attention": [10, 12]},
     NOT_MEASURABLE),
    ({"xlstm": [80, 82], "gla": [78, 80], "mamba": [50, 52]}, NOT_MEASURABLE),  # no MetaLA runs
], ids=["separated", "reversed", "overlapping", "missing"])
def test_the_best_students_claim_follows_the_group_rule(scores, verdict):
    assert _verdicts(_grid(scores))["xLSTM, GLA and MetaLA are the best students"] == verdict


def test_runs_of_another_precision_or_budget_do_not_join_the_cells():
    scores = {"xlstm": [80, 82], "gla": [78, 80], "metala": [79, 81], "mamba": [50, 52], "linear_attention": [10, 12]}
    claim = "xLSTM, GLA and MetaLA are the best students"
    assert _verdicts(_grid(scores))[claim] == REPRODUCED
    swing = [{**row, "seed": 9} for row in _grid({"gla": [10, 11, 12], "mamba": [95, 96, 97]})]
    assert _verdicts(_grid(scores) + swing)[claim] != REPRODUCED  # as more seeds of the same setup they count
    for other in ({"dtype": "fp32"}, {"tokens": 5}):  # of another precision or budget they do not
        assert _verdicts(_grid(scores) + [{**row, **other} for row in swing])[claim] == REPRODUCED


def test_linear_attention_worst_and_at_zero_recall():
    rows = _grid({"gla": [50, 52], "mamba": [60, 61], "gated_deltanet": [55, 56], "linear_attention": [10, 12]})
    rows += _grid({"gla": [30, 40], "linear_attention": [0.0, 1.0], "gated_deltanet": [70, 80]}, column="pct_recall")
    verdicts = _verdicts(rows)
    assert verdicts["Plain linear attention is the worst student"] == REPRODUCED
    assert verdicts["Recall: plain linear attention at 0"] == REPRODUCED
    assert verdicts["Recall: gated DeltaNet far above GLA"] == REPRODUCED
    rows = _grid({"linear_attention": [20, 30]}, column="pct_recall")
    assert _verdicts(rows)["Recall: plain linear attention at 0"] == DIFFERS


def test_an_init_helps_when_more_than_half_the_students_show_it():
    random = _grid({"gla": [40, 41], "mamba": [40, 41], "xlstm": [40, 41]}, init="random")
    helps = _grid({"gla": [50, 51], "mamba": [50, 51], "xlstm": [30, 41]})  # xlstm overlaps
    finding = dict(claims.findings(random + helps))["QKV copy helps over a random init"]
    assert finding.verdict == REPRODUCED and finding.measured.startswith("2 of 3 students above, 0 below")
    hurts = _grid({"gla": [30, 31], "mamba": [30, 31], "xlstm": [50, 51]})
    finding = dict(claims.findings(random + hurts))["QKV copy helps over a random init"]
    assert finding.verdict == DIFFERS and "(gla, mamba)" in finding.measured
    mixed = _grid({"gla": [50, 51], "mamba": [30, 31], "xlstm": [40, 41]})
    assert _verdicts(random + mixed)["QKV copy helps over a random init"] == NOT_MEASURABLE


def test_hidden_alignment_needs_runs_without_it_and_must_be_the_most_reliable_gain():
    random = _grid({"gla": [40, 41], "mamba": [40, 41]}, init="random")
    with_hidden = _grid({"gla": [50, 51], "mamba": [50, 51]})
    assert _verdicts(random + with_hidden)["Hidden-state alignment is the most reliable gain"] == NOT_MEASURABLE
    without = _grid({"gla": [20, 21], "mamba": [20, 21]}, stages="end_to_end")
    finding = dict(claims.findings(random + with_hidden + without))["Hidden-state alignment is the most reliable gain"]
    assert finding.verdict == REPRODUCED and finding.measured.startswith("qkv_copy: 2 of 2 students above")
    without_better = _grid({"gla": [60, 61], "mamba": [60, 61]}, stages="end_to_end")
    assert _verdicts(random + with_hidden + without_better)["Hidden-state alignment is the most reliable gain"] == DIFFERS


def test_bootstrap_intervals_decide_where_seed_ranges_cannot():
    scores = {"xlstm": [60, 61], "gla": [60, 61], "metala": [60, 61], "mamba": [59, 60]}
    assert _verdicts(_grid(scores))["xLSTM, GLA and MetaLA are the best students"] == NOT_MEASURABLE  # ranges touch
    narrow = _grid({"xlstm": [70], "gla": [70], "metala": [70]}, width=1) + _grid({"mamba": [50]}, width=1)
    assert _verdicts(narrow)["xLSTM, GLA and MetaLA are the best students"] == REPRODUCED


def test_render_shows_every_claim_with_its_verdict_and_flags():
    rows = _grid({"xlstm": [80, 82], "gla": [78, 80], "metala": [79, 81], "mamba": [50, 52]}, flag="mixed commits")
    text = claims.render(rows, "leaderboard.csv")
    lines = text.splitlines()
    assert "† the seeds of a cell ran on different commits, a dirty tree or in different precisions (4 of 4 cells)" in lines[0]
    assert len(lines) == 4 + len(claims.findings(rows))
    assert "| xLSTM, GLA and MetaLA are the best students | xlstm† 81.0 [80.0, 82.0]" in text
    assert all(line.endswith(("**reproduced** |", "**differs** |", "**not measurable** |")) for line in lines[4:])
