"""fused_distillation_loss: kl_weight·τ²·KL(teacher‖student) per token + ce_weight·CE, from hidden states.

The logits are formed from the student's hidden states and LM-head weight chunk by chunk, so the full
(B, T, V) logits never exist (naive.py states the equation; chunk.py and triton.py compute it).
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from kernels._backend import pick_backend
from kernels.distill_loss.chunk import chunk_math_native, chunk_math_torch, distill_loss_chunk
from kernels.distill_loss.naive import distill_loss_naive


def _distill_loss_triton(*args, **kwargs):
    from kernels.distill_loss.triton import chunk_math_triton  # imported on first use: triton is optional
    return distill_loss_chunk(*args, chunk_math=chunk_math_triton, **kwargs)


# native: the chunked form with each chunk's softmax work as one compiled pass per row where it applies (CPU, τ = 1)
BACKENDS = {"naive": distill_loss_naive, "chunk": functools.partial(distill_loss_chunk, chunk_math=chunk_math_torch),
            "native": functools.partial(distill_loss_chunk, chunk_math=chunk_math_native)}
if importlib.util.find_spec("triton") is not None:
    BACKENDS["triton"] = _distill_loss_triton


# Elements per chunk of logits, whatever the vocabulary: 64 MiB of fp32 on a GPU; 4 MiB on a CPU, where a chunk's
# half-dozen softmax passes then run in cache (the loss forward+backward 1.75× faster at V = 4096 than at 64 MiB).
CHUNK_LOGITS = {"cpu": 2**20, "other": 2**24}


def default_chunk_size(vocab_size: int, device: torch.device | str | None = None) -> int:
    """Tokens per chunk: a power of two keeping one chunk of fp32 logits near `CHUNK_LOGITS` for the device
    (on a GPU 256 tokens at V = 49152; on a CPU 256 at V = 4096), at least 16."""
    kind = "cpu" if torch.device(device or "cpu").type == "cpu" else "other"
    return 1 << max(4, (CHUNK_LOGITS[kind] // vocab_size).bit_length() - 1)


def fused_distillation_loss(student_hidden, student_weight, input_ids, *, teacher_logits=None, teacher_hidden=None,
                            teacher_weight=None, temperature=1.0, kl_weight=1.0, ce_weight=0.0, chunk_size=None,
                            matmul_dtype=torch.float32, backend="auto") -> tuple[torch.Tensor, dict[str, float]]:
    """kl_weight · τ² · mean_{b,t} KL(softmax(z_t/τ) ‖ softmax(s_t/τ)) + ce_weight · mean next-token CE(s),
    with s = student_hidden @ student_weightᵀ (Hinton et al. 2015 τ² scaling; per-token KL, not batchmean).

    student_hidden: (B, T, D) after the final norm; student_weight: (V, D), the LM head; input_ids: (B, T).
    Teacher: teacher_logits (B, T, V), or teacher_hidden (B, T, Dt) with teacher_weight (V, Dt); no gradient
    flows to the teacher. chunk_size: tokens per chunk (default: `default_chunk_size(V, device)`). matmul_dtype: the
    logit products' dtype in the chunked forms (bf16 halves their cost; softmax and sums stay fp32). Returns
    (loss, {"kl": τ²·KL, "ce": CE}), equal to the materialised loss of `naive.py`
    on the materialised logits. Backends: naive, chunk (torch), native (chunk with a compiled per-row pass on
    CPU at τ = 1, else torch's), triton; auto = triton on CUDA, else native.
    """
    op = "fused_distillation_loss"
    if student_hidden.dim() != 3 or student_weight.dim() != 2 or student_weight.shape[1] != student_hidden.shape[2]:
        raise ValueError(f"{op}: expected student_hidden (B, T, D) and student_weight (V, D), got "
                         f"{tuple(student_hidden.shape)} and {tuple(student_weight.shape)}")
    B, T, _ = student_hidden.shape
    V = student_weight.shape[0]
    if tuple(input_ids.shape) != (B, T):
        raise ValueError(f"{op}: input_ids must be (B, T) = {(B, T)}, got {tuple(input_ids.shape)}")
    if (teacher_logits is None) == (teacher_hidden is None and teacher_weight is None):
        raise ValueError(f"{op}: pass either teacher_logits or teacher_hidden with teacher_weight")
    if teacher_logits is not None and tuple(teacher_logits.shape) != (B, T, V):
        raise ValueError(f"{op}: teacher_logits must be (B, T, V) = {(B, T, V)}, got {tuple(teacher_logits.shape)}")
    if teacher_logits is None and (teacher_hidden is None or teacher_weight is None or teacher_hidden.dim() != 3
                                   or tuple(teacher_hidden.shape[:2]) != (B, T) or teacher_weight.dim() != 2
                                   or tuple(teacher_weight.shape) != (V, teacher_hidden.shape[-1])):
        raise ValueError(f"{op}: teacher_hidden must be (B, T, Dt) with B, T = {(B, T)} and teacher_weight (V, Dt) "
                         f"with V = {V}, got {None if teacher_hidden is None else tuple(teacher_hidden.shape)} and "
                         f"{None if teacher_weight is None else tuple(teacher_weight.shape)}")
    chunk_size = default_chunk_size(V, student_hidden.device) if chunk_size is None else chunk_size
    if matmul_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"{op}: matmul_dtype must be float32, bfloat16 or float16, got {matmul_dtype}")
    if chunk_size < 1 or temperature <= 0:
        raise ValueError(f"{op}: chunk_size must be ≥ 1 and temperature > 0, got {chunk_size} and {temperature}")
    fn = pick_backend(backend, BACKENDS, student_hidden.device, op)
    return fn(student_hidden, student_weight, input_ids, teacher_logits=teacher_logits, teacher_hidden=teacher_hidden,
              teacher_weight=teacher_weight, temperature=temperature, kl_weight=kl_weight, ce_weight=ce_weight,
              chunk_size=chunk_size, matmul_dtype=matmul_dtype)
