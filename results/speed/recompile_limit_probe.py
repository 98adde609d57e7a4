"""Probe: does `bench.throughput --student all` (one process) reach dynamo's recompile limit in its training timings?

    python results/speed/recompile_limit_probe.py old   # dynamo's default limits (8 per function, 256 in all)
    python results/speed/recompile_limit_probe.py new   # kernels._inductor's

Each student in the throughput order, a fresh random-init student, one fp32 forward and backward at (1, 2048) as
`measure_side_by_side`'s training timing does; prints dynamo's graph counts after each and any limit warning.
"""
import sys
import time

import torch
from torch._dynamo.utils import counters

import kernels._inductor as inductor
import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.provenance import machine

if sys.argv[1:] == ["old"]:
    inductor.recompile_limits = lambda limit=8: {"recompile_limit": 8, "accumulated_recompile_limit": 256}
info = machine()
print(f"# {info['device_name']} ({info.get('cpu_capability')}), torch {torch.__version__}, commit {info['commit']}, "
      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; limits {sys.argv[1:]}", flush=True)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
ids = torch.randint(0, teacher.config.vocab_size, (1, 2048), generator=torch.Generator().manual_seed(0))
for name in ["mamba", "linear_attention", "rwkv", "retnet", "gla", "xlstm", "metala", "gated_deltanet"]:
    student = students.build_student(teacher, name, "random", seed=0).train()
    student(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
    print(f"{name:16s} graphs so far {counters['stats']['unique_graphs']}", flush=True)
