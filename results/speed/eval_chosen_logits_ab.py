"""A/B: a run's evaluation with the LM head formed at the scored positions only (`logits_to_keep`, the default)
against every position's logits (the path before it, kept for models without `logits_to_keep`), side by side in
one process, with the scores and per-item results compared for equality.

    python results/speed/eval_chosen_logits_ab.py [--students gla,rwkv] [--rounds 3] [--json out.json]

The grid preset's evaluation (`bench.distill.run`: seq_len 512, 32 held-out blocks, recall at 256/512/1024 with 20
documents per kind, 1,000 cloze passages) of the embedded teacher and fresh qkv_copy students, fp32 as a run
evaluates. Rounds alternate the two paths; prints each path's median seconds and the ratio.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoTokenizer

import students
from bench.data.teacher import EMBEDDED_TEACHER
from bench.evaluation import scoring, tasks
from bench.provenance import machine

parser = argparse.ArgumentParser()
parser.add_argument("--students", default="gla,rwkv,mamba")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--json")
args = parser.parse_args()

torch.manual_seed(0)
teacher = students.load_teacher(str(EMBEDDED_TEACHER))
tokenizer = AutoTokenizer.from_pretrained(str(EMBEDDED_TEACHER))
config = tasks.EvalConfig(dataset="shakespeare", seq_len=512, max_blocks=32, recall_lengths=(256, 512, 1024),
                          recall_docs=20)
chosen = scoring.forms_chosen_logits


def evaluate(model, path: str):
    scoring.forms_chosen_logits = chosen if path == "chosen" else (lambda model: False)
    start = time.perf_counter()
    scores, items = tasks.evaluate_with_items(model, tokenizer, config, progress=False)
    return time.perf_counter() - start, scores, items


info = machine()
print(f"# {info['device_name']} ({info.get('cpu_capability')}), torch {torch.__version__}, commit {info['commit']}, "
      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {torch.get_num_threads()} threads", flush=True)
models = {"teacher": teacher, **{name: students.build_student(teacher, name, "qkv_copy", seed=0)
                                 for name in args.students.split(",")}}
evaluate(teacher, "chosen")  # the test split's blocks and the first forward, outside the timings
rows = []
for name, model in models.items():
    seconds = {"full": [], "chosen": []}
    outputs = {}
    for round_ in range(args.rounds):
        for path in (("full", "chosen") if round_ % 2 == 0 else ("chosen", "full")):
            elapsed, scores, items = evaluate(model, path)
            seconds[path].append(elapsed)
            outputs[path] = (scores, items)
    same_scores = outputs["full"][0] == outputs["chosen"][0]
    same_items = json.dumps(outputs["full"][1], sort_keys=True) == json.dumps(outputs["chosen"][1], sort_keys=True)
    full, kept = statistics.median(seconds["full"]), statistics.median(seconds["chosen"])
    rows.append({"model": name, "full_s": seconds["full"], "chosen_s": seconds["chosen"], "ratio": full / kept,
                 "same_scores": same_scores, "same_items": same_items})
    print(f"{name:18s} every position {full:6.2f} s   scored positions {kept:6.2f} s   {full / kept:.2f}x   "
          f"scores equal {same_scores}, items equal {same_items}", flush=True)
if args.json:
    with open(args.json, "w") as f:
        json.dump({"machine": info, "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "config": vars(config), "rows": rows}, f, indent=1, default=str)
