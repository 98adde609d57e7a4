"""Token data: the embedded Shakespeare + recall mixture, or any `datasets` source, packed to a context.

Splits are disjoint by construction: the embedded corpus splits whole works (`corpus.split_works`) and
draws recall documents from split-specific seeds; other sources keep their own validation/test splits or,
lacking them, assign each document by a hash of its text (so even duplicates land in one split only).
Batches are a pure function of (seed, step, rank, world size), so a resumed or distributed run sees
exactly the batches an uninterrupted single-process run would.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import random
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from bench.data import corpus, recall
from bench.errors import CorpusError, DataError

EMBEDDED = "shakespeare"
EMBEDDED_RECALL_FRACTION = 0.25  # the embedded mixture's share of recall documents, unless told otherwise
SPLITS = ("train", "validation", "test")
# Recall documents are drawn from a stream per split; the offsets keep the streams apart.
_RECALL_SEED = {"train": 1_000, "validation": 2_000, "test": 3_000}
_HASH_SPLIT = {"validation": (0, 5), "test": (5, 10)}  # percent buckets; the rest is train
_FILE_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def eos_token_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no end-of-sequence token; set `eos_token` in its tokenizer_config.json")
    return tokenizer.eos_token_id


# ----------------------------------------------------------------------------------------------- sources
def _recall_documents(rng: random.Random, max_tokens: int) -> Iterator[str]:
    """Endless alternating MQAR and passkey documents of random size up to about `max_tokens`."""
    for index in itertools.count():
        kind = recall.KINDS[index % 2]
        # A 4k-token byte-level BPE spends ~8 tokens per MQAR pair and ~26 per passkey filler paragraph.
        # Sizes are log-uniform: many short documents, where copying is first learned, and some long ones.
        largest = max(2, max_tokens // 8) if kind == "mqar" else max(2, max_tokens // 26)
        size = round(math.exp(rng.uniform(math.log(2), math.log(largest))))
        yield recall.make_doc(kind, rng, size).text


def recall_texts(split: str, n_chars: int, max_tokens: int, seed: int = 0) -> list[str]:
    """Recall documents of one split, `n_chars` characters in all."""
    texts, total = [], 0
    for text in _recall_documents(random.Random(_RECALL_SEED[split] + seed), max_tokens):
        if total >= n_chars:
            break
        texts.append(text)
        total += len(text)
    return texts


def recall_blocks(tokenizer, seq_len: int, n_blocks: int, seed: int = 0) -> torch.Tensor:
    """(n_blocks, seq_len) blocks of fresh training recall documents only, each block opening a document.

    The stream is seeded apart from the mixture's splits; a block's last document is cut at the block end
    (it loses queries, never gains wrong ones).
    """
    eos = eos_token_id(tokenizer)
    documents = _recall_documents(random.Random(f"recall-pool-{seed}"), seq_len)
    blocks: list[list[int]] = []
    while len(blocks) < n_blocks:
        # Documents average ~seq_len / 4 tokens; tokenize many at once (the Rust tokenizer runs in parallel).
        ids = tokenizer(list(itertools.islice(documents, 8 * (n_blocks - len(blocks)) + 8)))["input_ids"]
        block: list[int] = []
        for doc in ids:
            block.extend(doc + [eos])
            if len(block) >= seq_len:
                blocks.append(block[:seq_len])
                block = []
                if len(blocks) == n_blocks:
                    break
    return torch.tensor(blocks, dtype=torch.long)


def embedded_texts(split: str, works_dir: Path | None = None) -> list[str]:
    """The Shakespeare works of one split (whole works), in name order."""
    works = corpus.load_works(works_dir)
    return [works[name] for name in corpus.split_works(list(works))[split]]


def _hash_bucket(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:8], 16) % 100


def _carved(text: str) -> str | None:
    """The held-out split a hash bucket assigns `text` to, or None for train."""
    bucket = _hash_bucket(text)
    return next((split for split, (low, high) in _HASH_SPLIT.items() if low <= bucket < high), None)


def _load_dataset(dataset: str, streaming: bool):
    import datasets  # imported here: only non-embedded sources need it

    path = Path(dataset).expanduser()
    looks_local = path.exists() or dataset.startswith((".", "/", "~")) or path.suffix in _FILE_BUILDERS
    if looks_local:
        if not path.exists():
            raise DataError(f"dataset path {dataset} does not exist; pass an existing file or directory, "
                            f"a hub dataset id, or {EMBEDDED!r}")
        files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.suffix in _FILE_BUILDERS)
        if not files:
            raise DataError(f"{dataset} holds no {'/'.join(sorted(_FILE_BUILDERS))} files")
        builders = {_FILE_BUILDERS[p.suffix] for p in files}
        if len(builders) > 1:
            raise DataError(f"{dataset} mixes file types {sorted(builders)}; keep one type per dataset")
        builder = builders.pop()
        if all(p.stat().st_size == 0 for p in files):
            raise DataError(f"{dataset} is empty; pass files that hold text")
        options = {"sample_by": "document" if len(files) > 1 else "paragraph"} if builder == "text" else {}
        try:
            with _quiet("datasets"):  # its parser logs a traceback; the error below says it in one line
                return datasets.load_dataset(builder, data_files=[str(p) for p in files], streaming=streaming,
                                             **options)
        except Exception as error:  # datasets wraps the parser's error; the user needs its cause in one line
            raise DataError(f"cannot read {dataset} as {builder} files ({_root_cause(error)}); pass UTF-8 text, "
                            f"JSON lines with a --text-field column, or parquet") from None
    try:
        return datasets.load_dataset(dataset, streaming=streaming)
    except Exception as error:  # datasets raises many types; the user needs one line either way
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"could not load dataset {dataset!r} ({message}); check the id, or pass a local "
                        f"path, or {EMBEDDED!r}") from None


@contextlib.contextmanager
def _quiet(logger: str):
    """Silence a library's logger for the block (our own error message reports what went wrong)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def dataset_texts(dataset: str, split: str, text_field: str = "text", streaming: bool = False) -> Iterator[str]:
    """Documents of one split of a hub dataset or local files, through `datasets`."""
    loaded = _load_dataset(dataset, streaming)
    if "train" not in loaded:
        raise DataError(f"dataset {dataset!r} has splits {list(loaded)} but no train split")
    # Held-out splits the dataset lacks are carved out of train by text hash; its own ones are used as given.
    carve = [name for name in _HASH_SPLIT if name not in loaded]
    own = split in loaded and split not in carve and split != "train"
    rows = loaded[split] if own else loaded["train"]
    columns = rows.column_names if rows.column_names is not None else [text_field]
    if text_field not in columns:
        raise DataError(f"dataset {dataset!r} has no column {text_field!r}; pass --text-field with one of "
                        f"{columns}")
    for row in rows:
        text = row[text_field]
        if not text:
            continue
        if own or (split == "train" and _carved(text) not in carve) or (split != "train" and _carved(text) == split):
            yield text


# ----------------------------------------------------------------------------------------------- packing
def pack_blocks(texts: Iterable[str], tokenizer, seq_len: int, whole: Iterable[str] = (),
                max_blocks: int | None = None) -> torch.Tensor:
    """(N, seq_len) token blocks: `texts` joined by EOS into one stream; each `whole` document opens a block.

    Recall documents go in `whole` so no query is cut off from its keys (one longer than a block is
    dropped, never truncated): they open blocks, as many as keep their share of all tokens, and the
    stream fills the rest of each block.
    """
    eos = eos_token_id(tokenizer)
    whole_ids = tokenizer(list(whole))["input_ids"] if whole else []
    pending = [ids + [eos] for ids in reversed(whole_ids) if len(ids) < seq_len]

    def text_ids() -> Iterator[int]:
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == 64:
                for ids in tokenizer(batch)["input_ids"]:
                    yield from ids + [eos]
                batch = []
        for ids in tokenizer(batch)["input_ids"] if batch else []:
            yield from ids + [eos]

    stream: Iterator[int] = text_ids()
    share = 0.0
    if pending:  # whole documents come with the embedded corpus only, whose text is small enough to hold
        text = list(stream)
        whole_tokens = sum(map(len, pending))
        share, stream = whole_tokens / max(1, whole_tokens + len(text)), iter(text)
    blocks: list[list[int]] = []
    placed = 0  # whole-document tokens placed so far, kept near `share` of all tokens produced
    while max_blocks is None or len(blocks) < max_blocks:
        block: list[int] = []
        while pending and len(block) + len(pending[-1]) <= seq_len and placed + len(block) <= share * (len(blocks) + 1) * seq_len:
            block.extend(pending.pop())
        placed += len(block)
        block.extend(itertools.islice(stream, seq_len - len(block)))
        while pending and len(block) + len(pending[-1]) <= seq_len:  # the text ran out: whole docs fill
            placed += len(pending[-1])
            block.extend(pending.pop())
        if len(block) == seq_len:
            blocks.append(block)
        elif not pending:
            break  # the incomplete tail is dropped, never padded
    if not blocks:
        raise DataError(f"not enough text for one block of {seq_len} tokens; use a larger dataset or a "
                        f"shorter --seq-len")
    return torch.tensor(blocks, dtype=torch.long)


@dataclass
class DataSpec:
    """Where tokens come from; the same spec gives the same blocks."""

    dataset: str = EMBEDDED
    seq_len: int = 256
    recall_fraction: float | None = None  # share of the text that is recall documents; None: 0.25 embedded, else 0
    text_field: str = "text"
    streaming: bool = False
    max_blocks: int | None = None  # per split; required to bound a streaming source
    works_dir: str | None = None  # embedded texts directory (tests use a slice); None = the user cache


def split_texts(spec: DataSpec, split: str) -> tuple[list[str] | Iterator[str], list[str]]:
    """(stream texts, whole documents) of one split."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if spec.dataset != EMBEDDED:
        return dataset_texts(spec.dataset, split, spec.text_field, spec.streaming), []
    texts = embedded_texts(split, Path(spec.works_dir) if spec.works_dir else None)
    n_chars = sum(map(len, texts))
    fraction = min(max(EMBEDDED_RECALL_FRACTION if spec.recall_fraction is None else spec.recall_fraction, 0.0), 0.9)
    recall_chars = int(n_chars * fraction / (1 - fraction))
    return texts, recall_texts(split, recall_chars, spec.seq_len) if recall_chars else []


# The embedded corpus's blocks by (spec, split, tokenizer): the runs of one `bench.sweep` process share them (its
# training split at the grid's 0.75 recall share takes ~6 s to generate and tokenise, ~6% of a grid run).
_EMBEDDED_BLOCKS: dict[tuple, torch.Tensor] = {}
_EMBEDDED_BLOCKS_KEPT = 8


def _tokenizer_fingerprint(tokenizer) -> str | None:
    """sha256 of a fast tokenizer's serialised vocabulary, merges and settings; None for a slow one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    special = (tokenizer.eos_token_id, tokenizer.bos_token_id)
    return hashlib.sha256((backend.to_str() + repr(special)).encode()).hexdigest()


def _works_state(works_dir: str | None) -> tuple:
    """The embedded texts a spec reads: their directory and each file's name, size and modification time."""
    directory = Path(works_dir) if works_dir else corpus.shakespeare_dir()
    return str(directory.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                           for p in sorted(directory.glob(corpus.TEXTS_GLOB)))


def load_blocks(spec: DataSpec, tokenizer, split: str) -> torch.Tensor:
    """(N, seq_len) blocks of one split. The embedded corpus carries its recall documents inside its blocks;
    another dataset gets `recall_fraction` of its blocks as recall-only blocks (a stream of their own per split).
    The embedded corpus's blocks are kept for the process's next call with the same spec, split, tokenizer and
    texts (a copy is returned: the caller may change it)."""
    fingerprint = _tokenizer_fingerprint(tokenizer) if spec.dataset == EMBEDDED else None
    if fingerprint is None:
        return _load_blocks(spec, tokenizer, split)
    key = (astuple(spec), split, fingerprint, _works_state(spec.works_dir))
    if key not in _EMBEDDED_BLOCKS:
        blocks = _load_blocks(spec, tokenizer, split)
        while len(_EMBEDDED_BLOCKS) >= _EMBEDDED_BLOCKS_KEPT:
            _EMBEDDED_BLOCKS.pop(next(iter(_EMBEDDED_BLOCKS)))
        _EMBEDDED_BLOCKS[key] = blocks
    return _EMBEDDED_BLOCKS[key].clone()


def _load_blocks(spec: DataSpec, tokenizer, split: str) -> torch.Tensor:
    if spec.streaming and spec.max_blocks is None:
        raise DataError("a streaming dataset needs --max-blocks to bound how much is read")
    texts, whole = split_texts(spec, split)
    try:
        with _quiet("datasets"):
            blocks = pack_blocks(texts, tokenizer, spec.seq_len, whole, spec.max_blocks)
        if spec.dataset != EMBEDDED and spec.recall_fraction:
            fraction = min(spec.recall_fraction, 0.9)
            n_recall = max(1, round(len(blocks) * fraction / (1 - fraction)))
            blocks = torch.cat([blocks, recall_blocks(tokenizer, spec.seq_len, n_recall, seed=_RECALL_SEED[split])])
        return blocks
    except (DataError, CorpusError):
        raise
    except Exception as error:  # a streamed source fails while it is read, deep inside datasets or pyarrow
        raise DataError(f"cannot read the {split} split of {spec.dataset} ({_root_cause(error)}); check the "
                        f"files or the dataset id") from None


class Batches:
    """Global batch `step` of a block tensor: epoch-wise permutation seeded by (seed, epoch)."""

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int):
        if batch_size > len(blocks):
            raise DataError(f"batch size {batch_size} exceeds the {len(blocks)} blocks of this split; "
                            f"lower --batch-size or --seq-len")
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self.steps_per_epoch = len(blocks) // batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.blocks), generator=generator)

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Rows [rank::world_size] of the global batch, so ranks together see exactly the global batch."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        rows = self._order(epoch)[offset * self.batch_size:(offset + 1) * self.batch_size]
        return self.blocks[rows[rank::world_size]]


def check_compatible(tokenizer, model_config, seq_len: int) -> None:
    """One clear line when the tokenizer or the context does not fit the model."""
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise DataError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}; "
                        f"use the tokenizer saved with the model")
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise DataError(f"--seq-len {seq_len} is longer than the model's context of {limit} tokens; "
                        f"use --seq-len {limit} or less")


# --------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """Byte-level BPE (GPT-2 style pre-tokenisation) as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[special], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=special, eos_token=special,
                                   unk_token=special, model_max_length=1_000_000)
