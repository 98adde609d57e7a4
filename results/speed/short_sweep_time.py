"""Probe: wall time of one run's throughput sweep (`bench.perf.throughput.short_sweep` at the grid preset's lengths)
in the checkout at REPO, in a fresh process, for comparing commits (issue 19: a grid run's time outside training).

    python results/speed/short_sweep_time.py REPO STUDENT [profile]

Run one process per side, alternating, one at a time; `profile` adds cProfile's top 30 by cumulative time.
"""
import cProfile
import io
import json
import pstats
import sys
import time

repo, student_name, prof = sys.argv[1], sys.argv[2], len(sys.argv) > 3
sys.path.insert(0, repo)
import torch  # noqa: E402

import students  # noqa: E402
from bench.data.teacher import EMBEDDED_TEACHER  # noqa: E402
from bench.perf import throughput as T  # noqa: E402

torch.set_num_threads(2)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
student = students.build_student(teacher, student_name, "qkv_copy", seed=0)
pr = cProfile.Profile() if prof else None
t = time.perf_counter()
if pr:
    pr.enable()
T.short_sweep(teacher, student, (512, 1024, 2048), (256, 1024))
if pr:
    pr.disable()
wall = time.perf_counter() - t
print(json.dumps({"repo": repo, "student": student_name, "short_sweep_s": round(wall, 2)}))
if pr:
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("cumulative").print_stats(30)
    print(out.getvalue()[:6000])
