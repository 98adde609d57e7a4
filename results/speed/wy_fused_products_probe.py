"""Probe: the delta rule's chunk form with its WY products merged into fewer, wider ones, against
`kernels.delta_rule.chunk.delta_rule_chunk` (same inputs, one process, calls alternating).

The chunk form runs nine (C × C)·(C × 64)-sized batched products per call. Three pairs share an operand:
(I + L)⁻¹ times [diag(βγ) k | diag(β) v], k_to_end times [w | u_free], attn times [w | u_free]; here each pair is
one product over the concatenated right operand (128 columns instead of 64), read back through slices.

    python results/speed/wy_fused_products_probe.py --rounds 25
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kernels.chunking import CHUNK, DENORMALS, exp_floored, from_chunks, masked_exp, to_chunks
from kernels.delta_rule.chunk import FLOOR, _MatrixCarry, chunk_size_for, delta_rule_chunk


def fused_delta_rule_chunk(q, k, v, beta, log_decay=None, scale=None, chunk_size=CHUNK):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    C = chunk_size_for(log_decay, chunk_size)
    N = max(1, -(-T // C))
    qc, kc, vc = (to_chunks(x.float(), N, C) for x in (q, k, v))
    bc = to_chunks(beta.float()[..., None], N, C)
    g = bc.new_zeros(N, B, H, C, 1) if log_decay is None else to_chunks(log_decay.float()[..., None], N, C)
    b = g.cumsum(dim=3)
    b_last = b[:, :, :, -1:]
    if bool((b_last >= -DENORMALS.safe_span).all()):
        mid = b_last / 2
        up = (b - mid).exp()
        k_down = kc * (mid - b).exp()
        L_t = (k_down @ (kc * (up * bc)).transpose(-1, -2)).triu_(1)
        attn = ((qc * up) @ k_down.transpose(-1, -2)).tril_()
    else:
        idx = torch.arange(C, device=qc.device)
        ratio_incl = masked_exp(b - b.transpose(-1, -2), idx[:, None] >= idx[None, :], FLOOR)
        L_t = (kc @ kc.transpose(-1, -2)) * ratio_incl.tril(-1).transpose(-1, -2) * bc.transpose(-1, -2)
        attn = (qc @ kc.transpose(-1, -2)) * ratio_incl
    eye = torch.eye(C, dtype=L_t.dtype).expand_as(L_t)
    inverse = torch.linalg.solve_triangular(L_t, eye, upper=True, left=False, unitriangular=True).transpose(-1, -2)
    gamma = exp_floored(b, FLOOR)
    wu = inverse @ torch.cat([(-bc * gamma) * kc, bc * vc], dim=-1)  # [w | u_free]
    k_to_end = (kc * exp_floored(b_last - b, FLOOR)).transpose(-1, -2)
    tk = k_to_end @ wu  # [transition | chunk_kv]
    aw = attn @ wu  # [attn w | attn u_free]
    transition = tk[..., :K].clone()
    transition.diagonal(dim1=-2, dim2=-1).add_(exp_floored(b_last.squeeze(-1), FLOOR))
    query_to_state = qc * gamma + aw[..., :K]
    states = _MatrixCarry.apply(transition.flatten(1, 2), tk[..., K:].flatten(1, 2), qc.new_zeros(B * H, K, V))
    states = states.view(N + 1, B, H, K, V)
    o = aw[..., K:].flatten(0, 2).baddbmm(query_to_state.flatten(0, 2), states[:N].flatten(0, 2))
    return from_chunks(o.view(N, B, H, C, V), T, scale, v.dtype)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    B, H, K = 1, 4, 64  # the embedded students' heads
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds; "
          "median ms per call and the median of per-round ratios fused / current")
    for T, train in ((2048, False), (16384, False), (2048, True)):
        q, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
        k = F.normalize(torch.randn(B, T, H, K), dim=-1)
        beta, log_decay = torch.rand(B, T, H), -0.1 * torch.rand(B, T, H)
        xs = [x.requires_grad_(train) for x in (q, k, v, beta, log_decay)]
        current = lambda: delta_rule_chunk(*xs[:4], log_decay=xs[4])[0]
        fused = lambda: fused_delta_rule_chunk(*xs[:4], log_decay=xs[4])
        diff = (current() - fused()).abs().max().item()
        times = {"current": [], "fused": []}
        with torch.enable_grad() if train else torch.inference_mode():
            for _ in range(args.rounds):
                for name, fn in (("current", current), ("fused", fused)):
                    start = time.perf_counter()
                    out = fn()
                    if train:
                        out.square().sum().backward()
                    times[name].append(time.perf_counter() - start)
        ratio = statistics.median(f / c for f, c in zip(times["fused"], times["current"]))
        print(f"T={T} {'forward+backward' if train else 'forward (inference)'}: current "
              f"{statistics.median(times['current']) * 1e3:.2f} ms, fused {statistics.median(times['fused']) * 1e3:.2f} ms, "
              f"fused/current {ratio:.3f}; max |output diff| {diff:.1e}")


if __name__ == "__main__":
    main()
