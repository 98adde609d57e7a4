"""One decoded token of the recurrences as one compiled call (`recurrent_step.cpp`), for CPU decoding: the linear
recurrence and the delta rule (called from their `step.py`), and xlstm's stabilised mLSTM step.

A Python step (`kernels.*.step`) runs ~20 tensor ops a token, each costing microseconds of dispatch; the teacher's
attention runs its token as one fused call. The extension is compiled on first use with torch's C++ toolchain
(`torch.utils.cpp_extension.load`, ~25 s once per machine, cached by torch) and checked against the Python steps in
tests. Where it cannot be built (no compiler), or with DISTILL_BENCH_NATIVE=0, the Python steps run instead.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("recurrent_step.cpp")
_lock = threading.Lock()
_state: dict = {}


def enabled() -> bool:
    return os.environ.get("DISTILL_BENCH_NATIVE", "1") != "0"


def module():
    """The compiled extension, or None where it is disabled or cannot be built (warned once)."""
    if not enabled():
        return None
    with _lock:
        if "module" not in _state:
            try:
                from torch.utils.cpp_extension import load

                # the CPU's vector ISA in the name: torch caches builds by name, and a build for another CPU type
                # sharing the cache directory must not be loaded here
                isa = torch.backends.cpu.get_cpu_capability().lower()
                _state["module"] = load(f"distill_bench_recurrent_step_{isa}", [str(SOURCE)],
                                        extra_cflags=["-O3"], verbose=False)
            except Exception as error:  # noqa: BLE001 - any build failure means: run the Python step
                warnings.warn(f"kernels.native: the C++ decode step could not be built ({str(error).splitlines()[0]}); "
                              "decoding runs the Python step", RuntimeWarning, stacklevel=2)
                _state["module"] = None
        return _state["module"]


def one_token(q: torch.Tensor, initial_state, *tensors):
    """The extension where a call can take it: one token, on CPU, a state given, and no gradient to record (the
    extension has no backward; parameters keep `requires_grad` under no_grad, so grad mode decides); else None."""
    if q.shape[1] != 1 or q.device.type != "cpu" or initial_state is None:
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, initial_state, *tensors)):
        return None
    return module()
