"""What the decode A/B probes beside this file share (`xlstm_decode_ab.py`, `decode_stack_check_ab.py`,
`native_step_ab.py`): one step's logits under each variant, and whole-model decode timed with the two variants
alternating per round (new first in even rounds), every call warm-started from the same cache."""
import contextlib
import statistics
import time

from students.modeling import _CACHE_FIELD

MODES = ("old", "new")


def step_logits(decoder, use, scope=contextlib.nullcontext):
    """One decoded token's logits from the decoder's cache under each variant (`use(mode)` switches)."""
    logits = {}
    for mode in MODES:
        use(mode)
        decoder.restart()
        with scope():
            logits[mode] = decoder.model(decoder.first_token, use_cache=True, **{_CACHE_FIELD: decoder.cache}).logits
    decoder.restart()
    return logits


def time_alternating(decoders: dict, use, rounds: int) -> dict:
    """{(name, mode): ms per token of each round}; within a round each decoder runs old and new back to back."""
    times = {(name, mode): [] for name in decoders for mode in MODES}
    for r in range(rounds):
        for name, decoder in decoders.items():
            for mode in (MODES if r % 2 else MODES[::-1]):
                use(mode)
                decoder.warm_restart()
                start = time.perf_counter()
                decoder()
                times[name, mode].append((time.perf_counter() - start) / decoder.steps * 1e3)
    return times


def ratio_summary(old: list, new: list) -> str:
    ratios = sorted(a / b for a, b in zip(old, new))
    return f"old/new per round median {statistics.median(ratios):.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}]"
