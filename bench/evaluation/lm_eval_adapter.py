"""lm-eval model adapter: any HF causal LM or student directory as `--model distill-bench`.

    python -m bench.evaluation.lm_eval_adapter --model distill-bench --model_args pretrained=DIR --tasks standard

runs lm-eval's own CLI (same flags) with this adapter registered; `lm_eval` alone cannot see it, since
lm-eval discovers models only by import. From Python: `DistillBenchLM(model=..., tokenizer=...)` or
`lm_eval.simple_evaluate(model="distill-bench", model_args={"pretrained": DIR}, ...)` after importing this
module. Scores come from `bench.evaluation.scoring.score_continuations`, the same code as the built-in metrics:
requests are sorted by length and right-padded without an attention mask, exact for causal models,
so recurrent students (which refuse padded masks) batch too. Generation runs one request at a time.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from bench.data.packing import eos_token_id
from bench.errors import EvalError
from bench.evaluation.scoring import context_limit, load_model, model_device, pad_token_id, score_continuations

NAME = "distill-bench"
# The zero-shot set of Haller et al. 2025 (arXiv 2504.14366) and of SmolLM2 / MOHAWK comparisons.
STANDARD_TASKS = ("lambada_openai", "arc_easy", "arc_challenge", "hellaswag", "openbookqa", "piqa", "winogrande")


@register_model(NAME)
class DistillBenchLM(TemplateLM):
    """`pretrained`: directory or hub id (students load through `import students`), or pass `model` and
    `tokenizer` objects. `max_length` defaults to config.max_position_embeddings (the teacher's context)."""

    def __init__(self, pretrained: str | None = None, model=None, tokenizer=None, batch_size: int | str = 8,
                 max_length: int | None = None, device: str | None = None, dtype: str = "float32",
                 max_batch_tokens: int = 16_384, max_gen_toks: int = 256, **unused):
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ValueError(f"the {NAME} model needs model_args pretrained=DIR (a directory or hub id)")
            if device and device.startswith("cuda") and not torch.cuda.is_available():
                logging.getLogger(__name__).warning("device %s is not available; running on cpu", device)
                device = "cpu"  # lm-eval's CLI asks for cuda:0 unless told otherwise
            model, loaded_tokenizer = load_model(pretrained, tokenizer if isinstance(tokenizer, str)
                                                            else None, dtype, device)
            tokenizer = loaded_tokenizer
        elif tokenizer is None:
            raise ValueError("pass the tokenizer together with the model")
        self.model, self.tokenizer = model.eval(), tokenizer
        self._device = model_device(model)
        # "auto" has no meaning here: requests are grouped by length under max_batch_tokens instead.
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_gen_toks = int(max_gen_toks)
        limit = context_limit(model)
        self._max_length = int(max_length) if max_length else (limit or 2048)

    @property
    def eot_token_id(self) -> int:
        return eos_token_id(self.tokenizer)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "tokenizer").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer(string, add_special_tokens=bool(add_special_tokens))["input_ids"]

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = score_continuations(
            self.model, [(context, continuation) for _, context, continuation in requests],
            pad_token_id(self.tokenizer), self.batch_size, self.max_length, self.max_batch_tokens,
            progress=not disable_tqdm, desc="loglikelihood")
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood in disjoint windows of max_length (lm-eval's rolling definition)."""
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            for window in map(make_disjoint_window, get_rolling_token_windows(
                    self.tok_encode(text), self.prefix_token_id, self.max_length, context_len=1)):
                windows.append(window)
                owners.append(index)
        scored = score_continuations(
            self.model, windows, pad_token_id(self.tokenizer), self.batch_size, self.max_length,
            self.max_batch_tokens, progress=not disable_tqdm, desc="loglikelihood_rolling")
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scored):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation cut at the first stop string (default: the end-of-text token's text)."""
        outputs = []
        for request in tqdm(requests, desc="generate_until", disable=disable_tqdm, leave=False):
            context, options = request.args
            options = dict(options or {})
            until = options.pop("until", None) or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(options.pop("max_gen_toks", self.max_gen_toks))
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.prefix_token_id]
            input_ids = torch.tensor([ids], device=self._device)
            generated = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                            max_new_tokens=max_new, do_sample=False,
                                            pad_token_id=pad_token_id(self.tokenizer),
                                            eos_token_id=self.eot_token_id)
            text = self.tok_decode(generated[0, len(ids):].tolist())
            for stop in until:
                text = text.split(stop)[0] if stop else text
            self.cache_hook.add_partial("generate_until", request.args, text)
            outputs.append(text)
        return outputs


def resolve_tasks(tasks: Sequence[str] | str) -> list[str]:
    """Task names; `standard` expands to STANDARD_TASKS."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    resolved: list[str] = []
    for name in (n.strip() for n in names if n.strip()):
        resolved += list(STANDARD_TASKS) if name == "standard" else [name]
    return list(dict.fromkeys(resolved))


def flat_scores(results: dict) -> dict[str, float]:
    """`lm_<task>_<metric>` from lm-eval's results ("acc,none" -> acc; standard errors dropped)."""
    scores = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")
            # Metrics are "name,filter"; keys without a filter ("alias", "sample_len") describe the run.
            if not comma or "_stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            suffix = "" if filter_name in ("none", "") else f"_{filter_name}"
            scores[f"lm_{task}_{metric}{suffix}"] = float(value)
    return scores


def sample_items(results: dict, scores: dict[str, float]) -> dict[str, dict]:
    """Item sets (`bench.evaluation.items`) of the flat scores from lm-eval's logged samples, one item per
    document in document order: accuracies as they are, `perplexity` as −log-likelihood and
    `word_perplexity` / `byte_perplexity` as (−log-likelihood, words / bytes). Metrics of another form (e.g.
    bits_per_byte, generated text) get none, and so no interval."""
    from bench.evaluation.items import item_set

    columns: dict[str, list[tuple[int, float, float]]] = {}
    for task, samples in (results.get("samples") or {}).items():
        for sample in samples:
            filter_name = sample.get("filter", "none")
            suffix = "" if filter_name in ("none", "") else f"_{filter_name}"
            for metric in sample.get("metrics", []):
                name, value = f"lm_{task}_{metric}{suffix}", sample.get(metric)
                if metric.endswith("perplexity") and isinstance(value, (list, tuple)) and len(value) == 2:
                    item = (-float(value[0]), float(value[1]))
                elif metric == "perplexity" and isinstance(value, (int, float)):
                    item = (-float(value), 1.0)
                elif isinstance(value, (int, float, bool)) and not metric.endswith("perplexity"):
                    item = (float(value), 1.0)
                else:
                    continue
                columns.setdefault(name, []).append((sample["doc_id"], *item))
    out = {}
    for name, rows in columns.items():
        if name in scores:
            rows.sort(key=lambda row: row[0])
            weights = [w for _, _, w in rows]
            out[name] = item_set([v for _, v, _ in rows], None if all(w == 1.0 for w in weights) else weights)
    return out


def task_manager(tasks: Sequence[str], include_path: str | None = None, include_defaults: bool = True):
    """lm-eval's TaskManager over its own tasks (unless `include_defaults=False`) and `include_path`,
    after checking that every task name is known (one clear line otherwise)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    known = set(manager.all_tasks)
    unknown = [name for name in resolve_tasks(tasks) if name not in known]
    if unknown:
        raise EvalError(f"unknown lm-eval task(s) {', '.join(unknown)}; list them with `lm-eval ls tasks` "
                                   f"or put a task YAML in the include path")
    return manager


def run_lm_eval(model, tokenizer, tasks: Sequence[str], batch_size: int = 8, limit: int | None = None,
                seed: int = 0, include_path: str | None = None, max_batch_tokens: int = 16_384,
                include_defaults: bool = True, log_samples: bool = False,
                manager=None) -> tuple[dict[str, float], dict]:
    """(flat scores, lm-eval's full results) of `model` on `tasks` (zero-shot), seeded by `seed`."""
    from lm_eval import simple_evaluate

    lm = DistillBenchLM(model=model, tokenizer=tokenizer, batch_size=batch_size, max_batch_tokens=max_batch_tokens)
    manager = manager or task_manager(tasks, include_path, include_defaults)
    results = simple_evaluate(model=lm, tasks=resolve_tasks(tasks), task_manager=manager, limit=limit,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed, log_samples=log_samples, bootstrap_iters=0)
    return flat_scores(results), results


def main() -> None:
    """lm-eval's CLI with `distill-bench` registered; `--tasks standard` expands to the zero-shot set."""
    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv[1:]
    for index, arg in enumerate(argv[:-1]):
        if arg == "--tasks":
            argv[index + 1] = ",".join(resolve_tasks(argv[index + 1]))
    sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
