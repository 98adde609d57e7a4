"""Probe: the filing day's (a36f2c6) fp32 end_to_end step with and without flushing denormals
(`torch.set_flush_denormal`), alternating in one process, medians of 4 after a warm-up each; batch 8 x 512, qkv_copy.

    python results/speed/baseline_flush_probe.py REPO_AT_a36f2c6 mamba,rwkv,retnet
"""
import statistics, sys, time, torch
REPO = sys.argv[1]
sys.path.insert(0, REPO)
import students
from bench import stages as stage_lib
from pathlib import Path
torch.set_num_threads(2)
torch.manual_seed(0)
teacher = students.load_teacher(str(Path(REPO) / "bench/embedded/teacher"))
batch = torch.randint(0, teacher.config.vocab_size, (8, 512))
for name in sys.argv[2].split(","):
    student = students.build_student(teacher, name, "qkv_copy", seed=0)
    module = stage_lib.StageModule(stage_lib.STAGES["end_to_end"], student, [teacher], stage_lib.StageOptions())
    params = module.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-6)
    times = {False: [], True: []}
    for r in range(5):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            s = time.perf_counter()
            loss, _ = module(batch); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            if r: times[flush].append(time.perf_counter() - s)
    torch.set_flush_denormal(False)
    print(name, "no flush %.3f s, flush %.3f s" % (statistics.median(times[False]), statistics.median(times[True])), flush=True)
