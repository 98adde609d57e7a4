"""RWKV-6's token shift and decay for training: the torch form compiled by inductor (`torch.compile`), so its
forward's and backward's elementwise passes run fused. Autograd runs the torch form's backward op by op, and on a
CPU with bf16 products that backward is the largest part of rwkv's training step
(results/speed/speed_probes_2026-12-05.md).

One compilation per input shape and autocast state (seconds, once per process: a training run's batches share one
shape). It is used only where a gradient is recorded and the call has at least `MIN_TOKENS` tokens (training
batches; not evaluation's or the tests' many small shapes). With DISTILL_BENCH_COMPILE=0, or where compilation
fails (warned once), the torch form runs.
"""
from __future__ import annotations

import os
import warnings

import torch

from kernels.ddlerp.torch_form import ddlerp_torch

MIN_TOKENS = 2048  # batch × time: below it compiling costs more than it saves
_state: dict = {}


def enabled() -> bool:
    return os.environ.get("DISTILL_BENCH_COMPILE", "1") != "0" and not _state.get("failed", False)


def ddlerp_inductor(x, previous, maa_x, maa_w1, maa, maa_w2, time_decay, decay_w1, decay_w2):
    args = (x, previous, maa_x, maa_w1, maa, maa_w2, time_decay, decay_w1, decay_w2)
    if not enabled() or x.shape[0] * x.shape[1] < MIN_TOKENS:
        return ddlerp_torch(*args)
    if "compiled" not in _state:
        _state["compiled"] = torch.compile(ddlerp_torch, dynamic=False)
    try:
        return _state["compiled"](*args)
    except Exception as error:  # noqa: BLE001 - no compiler, an inductor limitation: the torch form runs
        _state["failed"] = True
        warnings.warn(f"kernels.ddlerp: the token shift could not be compiled for training ({str(error).splitlines()[0]}); "
                      "the torch form runs instead", RuntimeWarning, stacklevel=2)
        return ddlerp_torch(*args)
