"""A run's own throughput sweep (`short_sweep` at the grid preset's lengths) with the heap as it comes against a steady
heap, each in a fresh process, alternating, one at a time.
    python results/speed/short_sweep_heap_ab.py STUDENT [pairs]          (driver)
    python results/speed/short_sweep_heap_ab.py STUDENT --one HEAP       (one side)"""
import json, subprocess, sys

student_name = sys.argv[1]
if "--one" in sys.argv:
    import torch
    import students
    from bench.data.teacher import EMBEDDED_TEACHER
    from bench.perf import throughput
    torch.set_num_threads(2)
    teacher = students.load_teacher(str(EMBEDDED_TEACHER))
    student = students.build_student(teacher, student_name, "qkv_copy", seed=0)
    sweep = throughput.short_sweep(teacher, student, (512, 1024, 2048), (256, 1024), heap=sys.argv[-1])
    print(json.dumps({"heap": sweep["heap"], "prefill_tok_s": sweep["prefill_tokens_per_s"],
                      "decode_ms": sweep["decode_ms_per_token"], "commit": sweep["machine"]["commit"]}))
else:
    from bench.provenance import header
    print(header())
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    for _ in range(pairs):
        for heap in ("default", "steady"):
            out = subprocess.run([sys.executable, __file__, student_name, "--one", heap], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            p = r["prefill_tok_s"]
            print(f"{r['heap']:8s} prefill tok/s at 2048: student {p['student']['2048']:8.0f} teacher "
                  f"{p['teacher']['2048']:8.0f} floor {p['floor']['2048']:8.0f}  student/floor "
                  f"{p['floor']['2048'] / p['student']['2048']:.3f}  teacher/student time "
                  f"{p['student']['2048'] / p['teacher']['2048']:.3f}", flush=True)
