"""Probe: the compiled teacher attention against sdpa inside the real training loop (`bench.run`, grid preset, the
end_to_end stage alone on the run's own data, 41 steps), switched step by step in one process: the teacher's
attention runs the compiled call on even steps and torch's sdpa (as before it) on odd ones; prints the median of
each side's logged tokens/s (the first step left out). Separate processes differ by more than the change here.

    python results/speed/teacher_attention_loop_ab.py linear_attention,retnet,xlstm
"""
import glob
import json
import shutil
import statistics
import sys
import tempfile
import time

import students.teacher_attention as teacher_attention
from bench.distill.run import main
from bench.provenance import header
from kernels.causal_attention.torch_form import causal_attention_torch

calls = {"n": 0}
compiled = teacher_attention.causal_attention


def alternating(q, k, v, scale=None, backend="auto"):
    teacher_forward = calls["n"] // 4  # the embedded teacher's four layers, one forward a step
    calls["n"] += 1
    return compiled(q, k, v, scale=scale, backend=backend) if teacher_forward % 2 == 0 else \
        causal_attention_torch(q, k, v, scale)


teacher_attention.causal_attention = alternating
print(header())
print(time.strftime("started %Y-%m-%dT%H:%M:%SZ", time.gmtime()))
for name in sys.argv[1].split(","):
    folder = tempfile.mkdtemp()
    calls["n"] = 0
    try:
        main(["--student", name, "--init", "qkv_copy", "--preset", "grid", "--stages", "end_to_end", "--stop-after",
              "41", "--checkpoint-every", "1000", "--no-progress", "--skip-eval", "--skip-throughput",
              "--results-dir", f"{folder}/results", "--output-dir", f"{folder}/runs"])
    except SystemExit:
        pass
    log = glob.glob(f"{folder}/runs/*/log.jsonl")[0]
    rows = [json.loads(line) for line in open(log) if '"tokens_per_s"' in line][1:]
    shutil.rmtree(folder)
    sides = {side: [r["tokens_per_s"] for r in rows if r["step"] % 2 == parity]
             for side, parity in (("compiled", 0), ("sdpa", 1))}
    c, s = statistics.median(sides["compiled"]), statistics.median(sides["sdpa"])
    print(f"{name:16s} end_to_end tok/s, {len(sides['compiled'])} + {len(sides['sdpa'])} steps: compiled {c:,.0f}, "
          f"sdpa {s:,.0f}, {c / s:.3f}x")
print(time.strftime("ended %Y-%m-%dT%H:%M:%SZ", time.gmtime()))
