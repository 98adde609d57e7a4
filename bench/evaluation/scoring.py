"""Scoring primitives shared by every evaluation: batched, right-padded, mask-free forward passes.

Sequences are right-padded and run without an attention mask, which is exact for any causal model (a
position never reads later ones), so recurrent students, which refuse padded masks, batch as well as the
teacher. `score_continuations` is lm-eval's `loglikelihood`; `sliding_window_nll` is Hugging Face's
"Perplexity of fixed-length models" recipe.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from bench.data.packing import eos_token_id
from bench.errors import EvalError


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first, each group ≤ batch_size sequences and ≤ max_batch_tokens when padded."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def forms_chosen_logits(model) -> bool:
    """Does `model.forward` take transformers' `logits_to_keep` (the LM head at chosen positions only)?"""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def padded_logits(model, sequences: Sequence[Sequence[int]], pad_id: int,
                  positions: Sequence[int] | None = None) -> torch.Tensor:
    """(B, T, V) fp32 logits of right-padded sequences, no attention mask (exact for causal models). With
    `positions` (sorted, distinct), (B, len(positions), V): those positions' logits, the LM head formed at them
    alone where the model takes `logits_to_keep` (at the embedded teacher's width the head is a quarter of a
    forward, and a recall or cloze score reads a few positions)."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    device = model_device(model)
    if positions is None:
        return model(input_ids=ids.to(device)).logits.float()
    kept = torch.as_tensor(list(positions), dtype=torch.long, device=device)
    if forms_chosen_logits(model):
        logits = model(input_ids=ids.to(device), logits_to_keep=kept).logits
        # A forward may take the argument and still form every position (remote code): then pick the columns here.
        return (logits if logits.shape[1] == len(kept) else logits[:, kept]).float()
    return model(input_ids=ids.to(device)).logits[:, kept].float()


def position_columns(wanted: Sequence[Sequence[int]]) -> tuple[list[int], dict[int, int]]:
    """(the sorted union of each row's wanted positions, position -> its column in that union)."""
    union = sorted(set().union(*map(set, wanted)))
    return union, {position: column for column, position in enumerate(union)}



def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id(tokenizer)


@torch.no_grad()
def score_continuations(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                        batch_size: int = 8, max_length: int | None = None, max_batch_tokens: int = 16_384,
                        progress: bool = False, desc: str = "scoring") -> list[tuple[float, bool]]:
    """(log p(continuation | context), continuation is the greedy output) per (context ids, continuation ids).

    The definition of lm-eval's `loglikelihood`; inputs longer than `max_length` keep their last tokens.
    """
    model.eval()
    inputs, n_scored = [], []
    for context, continuation in requests:
        if not continuation:
            raise EvalError("an empty continuation cannot be scored; give every request a target")
        if max_length is not None and len(continuation) > max_length:
            raise EvalError(f"a continuation of {len(continuation)} tokens exceeds the model's {max_length}-token "
                            f"context; shorten the targets or raise max_length")
        whole = list(context) + list(continuation)
        inputs.append(whole[-(max_length + 1):][:-1] if max_length is not None else whole[:-1])
        n_scored.append(len(continuation))
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    batches = length_batches([len(x) for x in inputs], batch_size, max_batch_tokens)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        positions, column = position_columns([range(len(inputs[i]) - n_scored[i], len(inputs[i])) for i in batch])
        logits = padded_logits(model, [inputs[i] for i in batch], pad_id, positions)
        for row, index in enumerate(batch):
            length, n = len(inputs[index]), n_scored[index]
            scored = torch.log_softmax(logits[row, [column[p] for p in range(length - n, length)]], dim=-1)
            targets = torch.as_tensor(list(requests[index][1]), device=scored.device)
            logprob = scored.gather(-1, targets[:, None]).double().sum().item()
            results[index] = (logprob, bool((scored.argmax(-1) == targets).all()))
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------- perplexity
def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, stop, score_from): feed ids[start:stop] and score the predictions at positions
    [score_from, stop), i.e. targets ids[score_from + 1 : stop + 1]. Over all windows the targets 1..n-1
    are scored exactly once; every window but a short text's only one is `window` tokens long."""
    if not 1 <= stride <= window:
        raise EvalError(f"stride {stride} must lie in 1..window ({window})")
    windows, scored_until = [], 0
    while scored_until < n_tokens - 1:
        stop = min(scored_until + (window if not windows else stride), n_tokens - 1)
        windows.append((max(0, stop - window), stop, scored_until))
        scored_until = stop
    return windows


@torch.no_grad()
def window_nlls(model, ids: torch.Tensor, window: int, stride: int, batch_size: int = 8,
                progress: bool = False) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, tokens scored) per sliding window of a 1-D token stream."""
    model.eval()
    ids = ids.flatten().cpu()
    windows = sliding_windows(len(ids), window, stride)
    out = []
    for first in tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress, leave=False):
        group = windows[first:first + batch_size]
        positions, column = position_columns([range(score_from - start, stop - start) for start, stop, score_from in group])
        logits = padded_logits(model, [ids[start:stop].tolist() for start, stop, _ in group], 0, positions)
        for row, (start, stop, score_from) in enumerate(group):
            scored = [column[p] for p in range(score_from - start, stop - start)]
            predictions = torch.log_softmax(logits[row, scored], dim=-1)
            targets = ids[score_from + 1:stop + 1].to(predictions.device)
            out.append((-predictions.gather(-1, targets[:, None]).double().sum().item(), len(targets)))
    return out


def sliding_window_nll(model, ids: torch.Tensor, window: int, stride: int, batch_size: int = 8,
                       progress: bool = False) -> tuple[float, int]:
    """(summed negative log-likelihood, number of tokens scored) of a 1-D token stream."""
    windows = window_nlls(model, ids, window, stride, batch_size, progress)
    return sum(nll for nll, _ in windows), sum(count for _, count in windows)


def perplexity(model, ids: torch.Tensor, window: int, stride: int | None = None, batch_size: int = 8,
               progress: bool = False) -> float:
    """exp(mean next-token NLL) over a token stream, sliding window of `window` tokens (stride window // 2)."""
    total, count = sliding_window_nll(model, ids, window, stride or max(1, window // 2), batch_size, progress)
    return math.exp(total / count)


def context_limit(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def check_model_path(path: str) -> None:
    """A path that looks local must be a save_pretrained directory (anything else is taken as a hub id)."""
    local = Path(path).expanduser()
    if (local.exists() or path.startswith((".", "/", "~"))) and not local.is_dir():
        raise EvalError(f"model directory {path} does not exist; pass a directory written by save_pretrained "
                        f"or a hub id")
    if local.is_dir() and not (local / "config.json").exists():
        raise EvalError(f"{path} holds no config.json; pass a directory written by save_pretrained")


def load_model(path: str, tokenizer_path: str | None = None, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) from a save_pretrained directory or hub id; `import students` registers students."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import students  # noqa: F401  (registers StudentForCausalLM with AutoModelForCausalLM)

    check_model_path(path)
    if not hasattr(torch, dtype):
        raise EvalError(f"unknown --dtype {dtype!r}; use float32, bfloat16 or float16")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    except (OSError, ValueError) as error:
        raise EvalError(f"cannot load a tokenizer from {tokenizer_path or path} ({str(error).splitlines()[0]}); "
                        f"pass --tokenizer with the teacher's directory") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # missing, truncated, mismatched weights
        raise EvalError(f"cannot load model {path} ({str(error).splitlines()[0]}); pass a directory written by "
                        f"save_pretrained or a hub id") from None
    return model.to(device).eval(), tokenizer


