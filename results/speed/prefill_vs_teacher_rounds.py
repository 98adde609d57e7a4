"""Each student's prefill time over the teacher's, per round (the models take turns call by call, so a round's
calls are seconds apart), at every prefill length of a `bench.throughput` report: median and range over rounds.

    python results/speed/prefill_vs_teacher_rounds.py results/throughput_cpu_smollm2_135m_shape.json
"""
import json
import statistics
import sys

from bench.perf.ratios import per_round_ratios

doc = json.load(open(sys.argv[1]))
models, lengths = doc["models"], doc["settings"]["lengths"]
print(f"# {sys.argv[1]}: {doc['machine']['device_name']}, commit {doc['machine']['commit']}, {doc['date']}; "
      f"teacher {doc['teacher']['source']}")
print("# student / teacher prefill time per round: median [least, most]")
for name in doc["settings"]["students"]:
    cells = []
    for n in map(str, lengths):
        ratios = sorted(per_round_ratios(models[name]["prefill"][n], models["teacher"]["prefill"][n]))
        cells.append(f"{n}: {statistics.median(ratios):.2f} [{ratios[0]:.2f}, {ratios[-1]:.2f}]")
    print(f"{name:17s} " + "   ".join(cells))
