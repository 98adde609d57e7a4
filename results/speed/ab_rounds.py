"""The timing loops the A/B probes here share: the two sides of one change timed in one process, `use(side)`
switching to a side before each of its calls, the sides' order alternating by round, so a slow spell of the host
lands on both (`decode_conv_ab.py` has the first form of the decode loop).

- `prefill_rounds`: whole no-gradient prefills (batch 1, use_cache=False, as bench.throughput), the floor timed
  right before each call; `times_floor` the median of a side's per-round ratios to it.
- `filled_decoder`, `same_tokens`, `decode_rounds`: ms a decoded token after a context filled by 2,048-token
  chunks (as bench.throughput fills it), 32 tokens a call, a reference decoder (the teacher's) in the same rounds;
  `decode_sides` the three for one model's two sides.
- `paired`: the per-round old / new ratios' median and quartiles, as text.
- `call_rounds`: one call (a mixer on its input, say) timed side by side, for a change too small to see through a
  whole prefill's round-to-round spread.
"""
import statistics
import time

import torch

from bench.perf.throughput import _Decoder
from students.modeling import _CACHE_FIELD

SIDES = ("old", "new")


def in_turn(round_: int, names):
    """The round's order: as given in even rounds, reversed in odd ones."""
    names = list(names)
    return names if round_ % 2 == 0 else names[::-1]


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def prefill_rounds(model, floor, ids, use, rounds: int, sides=SIDES) -> dict[str, list[float]]:
    """Seconds by round for each side and for the floor right before it ("floor_" + side); one warm-up round
    first, dropped."""
    times = {key: [] for side in sides for key in (side, f"floor_{side}")}
    with torch.no_grad():
        for round_ in range(rounds + 1):
            for side in in_turn(round_, sides):
                use(side)
                floor_s, model_s = timed(floor, ids, use_cache=False), timed(model, ids, use_cache=False)
                if round_:
                    times[f"floor_{side}"].append(floor_s)
                    times[side].append(model_s)
    return times


def call_rounds(fn, args, use, rounds: int, sides=SIDES) -> dict[str, list[float]]:
    """Seconds by round of fn(*args) for each side (no gradient); one warm-up round first, dropped."""
    times = {side: [] for side in sides}
    with torch.no_grad():
        for round_ in range(rounds + 1):
            for side in in_turn(round_, sides):
                use(side)
                seconds = timed(fn, *args)
                if round_:
                    times[side].append(seconds)
    return times


def times_floor(times: dict, side: str) -> float:
    return statistics.median(t / f for t, f in zip(times[side], times[f"floor_{side}"]))


def paired(old, new) -> str:
    ratios = [o / n for o, n in zip(old, new)]
    q = statistics.quantiles(ratios, n=4)
    return f"old / new per round {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})"


def filled_decoder(model, ids, chunk: int = 2048, steps: int = 32) -> _Decoder:
    """A decoder of `steps` tokens from `model`'s own cache filled with `ids` (call under no_grad)."""
    cache = None
    for start in range(0, ids.shape[1], chunk):
        cache = getattr(model(ids[:, start:start + chunk], use_cache=True, **{_CACHE_FIELD: cache}), _CACHE_FIELD)
    return _Decoder(model, cache, ids[:, -1:], steps)


def same_tokens(decoders: dict, use, steps: int = 16) -> bool:
    """Whether each side's decoder gives the same token after `steps` greedy steps."""
    tokens = []
    for side, decoder in decoders.items():
        use(side)
        decoder.restart()
        decoder.run(steps)
        tokens.append(decoder.token)
    return all(torch.equal(tokens[0], t) for t in tokens[1:])


def decode_rounds(decoders: dict, reference: _Decoder, use, rounds: int) -> dict[str, list[float]]:
    """Seconds a decoded token by round for each side and for `reference` ("reference"), each call started warm
    (`warm_restart`)."""
    calls = {**decoders, "reference": reference}
    times = {name: [] for name in calls}
    for round_ in range(rounds):
        for name in in_turn(round_, calls):
            if name != "reference":
                use(name)
            calls[name].warm_restart()
            times[name].append(timed(calls[name]) / calls[name].steps)
    return times


def decode_sides(model, reference: _Decoder, ids, use, rounds: int, sides=SIDES) -> tuple[bool, dict[str, list[float]]]:
    """Each side's decoder filled with `ids`, whether they give the same 16th token, and `decode_rounds` over them
    with `reference` (call under no_grad)."""
    decoders = {}
    for side in sides:
        use(side)
        decoders[side] = filled_decoder(model, ids)
    return same_tokens(decoders, use), decode_rounds(decoders, reference, use, rounds)
