"""Ratios between two timings taken in the same round robin (`bench.perf.timing.time_round_robin`), and the
targets' verdicts on them. Pure Python (no torch), so the report tables share them."""
from __future__ import annotations

import statistics

NOISE = "within noise"  # a verdict that the rounds of one run do not settle (`judge`)
TIMES_OF = {"median_s": "times_s", "ms_per_token": "times_ms"}  # a timing's median -> its per-round times
# ... and the round robin's anchor's runs either side of each of those (`time_round_robin(anchor=...)`)
ANCHOR_TIMES_OF = {"median_s": "anchor_times_s", "ms_per_token": "anchor_times_ms"}


def per_round_ratios(entry: dict, reference: dict, field: str = "median_s") -> list[float] | None:
    """entry / reference round by round (the i-th times of both were taken in the same round), or None when either
    lacks its per-round times (reports from before they were kept). Where the reference was the round robin's
    anchor, entry is divided by the anchor's runs on either side of it (`anchor_times_s` / `anchor_times_ms`),
    not by its round's."""
    ours, theirs = entry.get(TIMES_OF[field]), reference.get(TIMES_OF[field])
    anchored = ANCHOR_TIMES_OF[field]
    if reference.get("anchor") and entry.get(anchored):
        theirs = entry[anchored]
    elif entry.get("anchor") and reference.get(anchored):
        ours = reference[anchored]
    if not ours or not theirs or len(ours) != len(theirs):
        return None
    return [a / b for a, b in zip(ours, theirs)]


def paired_ratio(entry: dict | None, reference: dict | None, field: str = "median_s") -> float | None:
    """entry / reference: the median of the per-round ratios, which the machine's drift between rounds does not
    move; the ratio of the medians for entries without per-round times; None when either was not measured."""
    if not entry or not reference or not entry.get(field) or not reference.get(field):
        return None
    per_round = per_round_ratios(entry, reference, field)
    return statistics.median(per_round) if per_round else entry[field] / reference[field]


def judge(entry: dict | None, reference: dict | None, limit: float, field: str = "median_s"):
    """Whether entry / reference ≤ limit: True when it holds in the upper quartile of the per-round ratios, False
    when it fails in the lower quartile, `NOISE` in between; on the medians alone (True / False) for entries
    without per-round times; None when either was not measured. The machine's speed drifts by tens of per cent
    over minutes, and a ratio within that drift of its limit is reported as such rather than as whichever side
    one median fell."""
    if not entry or not reference or not entry.get(field) or not reference.get(field):
        return None
    per_round = per_round_ratios(entry, reference, field)
    if not per_round:
        return entry[field] / reference[field] <= limit
    lower, _, upper = (statistics.quantiles(per_round, n=4, method="inclusive") if len(per_round) > 1
                       else per_round * 3)
    return True if upper <= limit else False if lower > limit else NOISE


def all_of(verdicts) -> bool | str | None:
    """One verdict from several: None when none was judged, False if any fails, else `NOISE` if any is, else True."""
    verdicts = [v for v in verdicts if v is not None]
    if not verdicts:
        return None
    return False if False in verdicts else NOISE if NOISE in verdicts else True
