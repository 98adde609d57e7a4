"""A torch form compiled by inductor (`torch.compile`) for training on CPU: its forward's and backward's
elementwise passes run fused, where autograd would run them op by op (kernels whose compiled C++ passes have no
backward: `ddlerp`, `head_norm`; results/speed/speed_probes_2026-12-05.md).

One compilation per input shape and autocast state (seconds, once per process: a training run's batches share one
shape). Every student, shape and autocast state is an entry of the one form's cache, so its limit is raised past
dynamo's 8: at 8 the later calls ran the torch form, and a run's result depended on the runs before it in its process
(`bench.sweep` runs a grid in one). Used where the caller records a gradient and a call has at least `min_tokens`
tokens (training batches; not the tests' many small shapes). With DISTILL_BENCH_COMPILE=0, or where compilation fails
(warned once), the torch form runs.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

MIN_TOKENS = 2048  # batch × time: below it compiling costs more than it saves
RECOMPILE_LIMIT = 1024  # compiled entries per form; a 72-run grid of eight students makes a few dozen


def recompile_limits(limit: int = RECOMPILE_LIMIT) -> dict[str, int]:
    """dynamo's per-function and whole-process recompile limits raised to `limit` (their names before torch 2.6:
    cache_size_limit, accumulated_cache_size_limit)."""
    config = torch._dynamo.config
    names = (("recompile_limit", "accumulated_recompile_limit") if hasattr(config, "recompile_limit")
             else ("cache_size_limit", "accumulated_cache_size_limit"))
    return {name: max(limit, getattr(config, name)) for name in names}


class CompiledForTraining:
    """`form(*args)`, compiled for calls of at least `min_tokens` tokens (`tokens(*args)`); `what` names it in the
    warning."""

    def __init__(self, form: Callable, what: str, tokens: Callable, min_tokens: int = MIN_TOKENS,
                 backend: str | Callable = "inductor"):
        self.form, self.what, self.tokens, self.min_tokens, self.backend = form, what, tokens, min_tokens, backend
        self.compiled: Callable | None = None
        self.limits: dict[str, int] = {}
        self.failed = False

    def enabled(self) -> bool:
        return os.environ.get("DISTILL_BENCH_COMPILE", "1") != "0" and not self.failed

    def __call__(self, *args):
        if not self.enabled() or self.tokens(*args) < self.min_tokens:
            return self.form(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.form, dynamic=False, backend=self.backend)
            self.limits = recompile_limits()  # once, not on every call
        try:
            with torch._dynamo.config.patch(**self.limits):
                return self.compiled(*args)
        except Exception as error:  # noqa: BLE001 - no compiler, an inductor limitation: the torch form runs
            self.failed = True
            warnings.warn(f"kernels: {self.what} could not be compiled for training ({str(error).splitlines()[0]}); "
                          "the torch form runs instead", RuntimeWarning, stacklevel=2)
            return self.form(*args)
