"""One decoded token of the recurrences as one compiled call (`recurrent_step.cpp`), for CPU decoding: the linear
recurrence and the delta rule (called from their `step.py`), and xlstm's stabilised mLSTM step; and a prompt's pass
through either recurrence as one call per layer (`sequence_forward.cpp`, the `native` backends of
`kernels.linear_recurrence` and `kernels.delta_rule`; the short convolution, a prompt or a decoded token; RWKV-6's
token shift's prompt pass, `kernels.ddlerp`; the read-out norm, `kernels.head_norm`; for training, the distillation
loss's per-row softmax work, `kernels.distill_loss`, and a frozen teacher's causal attention,
`kernels.causal_attention`).

A Python step (`kernels.*.step`) runs ~20 tensor ops a token, each costing microseconds of dispatch; the teacher's
attention runs its token as one fused call. The chunked torch forms build every chunk's matrices as batched
tensors, one memory pass each; the compiled pass keeps a head's state (and chunk) in cache through all of them. The
extension is compiled on first use with torch's C++ toolchain (`torch.utils.cpp_extension.load`, ~30 s once per
machine, cached by torch) and checked against the Python forms in tests. Where it cannot be built (no compiler), or
with DISTILL_BENCH_NATIVE=0, the Python forms run instead.
"""
from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("recurrent_step.cpp", "sequence_forward.cpp")]
# vector flags for the CPU capability torch dispatches to (it names the build, so a build is only loaded where it runs)
ISA_FLAGS = {"avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl",
                                                       "-mavx512dq"]}
_lock = threading.Lock()
_state: dict = {}


def enabled() -> bool:
    return os.environ.get("DISTILL_BENCH_NATIVE", "1") != "0" and not _state.get("off", 0)


@contextmanager
def disabled():
    """The torch forms for the duration, in this process (as DISTILL_BENCH_NATIVE=0): e.g. to count a pass's
    products, which a compiled call hides from torch's FLOP counter."""
    with _lock:
        _state["off"] = _state.get("off", 0) + 1
    try:
        yield
    finally:
        with _lock:
            _state["off"] -= 1


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
                # OpenMP as torch's own kernels, so at::parallel_for splits heads over its threads (the loaded
                # libgomp is torch's: same soname)
                _state["module"] = load(f"distill_bench_recurrent_step_{isa}", [str(s) for s in SOURCES],
                                        extra_cflags=["-O3", "-fopenmp", *ISA_FLAGS.get(isa, [])],
                                        extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as error:  # noqa: BLE001 - any build failure means: run the Python step
                warnings.warn(f"kernels.native: the C++ kernels could not be built ({str(error).splitlines()[0]}); "
                              "the Python forms run instead", RuntimeWarning, stacklevel=2)
                _state["module"] = None
        return _state["module"]


def records_gradient(*tensors) -> bool:
    """Whether autograd records this call (parameters keep `requires_grad` under no_grad, so grad mode decides)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def without_autograd(q: torch.Tensor, *tensors):
    """The extension where a call can take it: on CPU and no gradient to record (the extension has no backward);
    else None."""
    if q.device.type != "cpu" or records_gradient(q, *tensors):
        return None
    return module()


# the largest head state (K·V fp32 values, 32 KB) the token-by-token pass runs on: while it stays in L1 the scan is
# the fastest form on CPU (fewest operations); larger states take the chunked forms (results/speed)
SCAN_MAX_STATE = 8192


def scans(key_dim: int, value_dim: int) -> bool:
    """Whether a prompt's pass runs token by token (else chunk by chunk)."""
    return key_dim * value_dim <= SCAN_MAX_STATE


def one_token(q: torch.Tensor, initial_state, *tensors):
    """The extension for a decoded token: one token, a state given, and `without_autograd`; else None."""
    if q.shape[1] != 1 or initial_state is None:
        return None
    return without_autograd(q, initial_state, *tensors)
