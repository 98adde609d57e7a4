"""Shared test set-up: offline hubs, determinism, and NaN-poisoned torch.empty."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Without a GPU, Triton kernels run in Triton's interpreter; it must be chosen before triton is imported.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

_real_empty = torch.empty
_real_empty_like = torch.empty_like


def _poisoned_empty(*args, **kwargs):
    out = _real_empty(*args, **kwargs)
    if out.is_floating_point():
        out.fill_(float("nan"))
    return out


def _poisoned_empty_like(*args, **kwargs):
    out = _real_empty_like(*args, **kwargs)
    if out.is_floating_point():
        out.fill_(float("nan"))
    return out


@pytest.fixture(autouse=True)
def poison_uninitialised_memory(monkeypatch):
    """A kernel that leaves part of an output unwritten fails loudly instead of passing by luck."""
    monkeypatch.setattr(torch, "empty", _poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", _poisoned_empty_like)
    torch.manual_seed(0)
    yield


@pytest.fixture
def compiled_calls(monkeypatch):
    """The names of the C++ extension's functions looked up from here on, in order: `kernels.native.module()` returns
    the extension behind a recorder (None where it cannot be built). Clear the list to start counting again."""
    from kernels import native

    compiled, calls = native.module(), []

    class Recording:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(compiled, name)

    monkeypatch.setattr(native, "module", lambda: Recording() if compiled is not None else None)
    return calls


_WORDS = ("thou art the king and queen of all my love sweet lord good night fair lady what say you "
          "the time is out of joint o that this too too solid flesh would melt now is the winter of "
          "our discontent made glorious summer by this sun of york friends romans countrymen lend me "
          "your ears i come to bury caesar not to praise him").split()


def write_works(directory, n_works: int = 6, words_per_work: int = 1500, seed: int = 0):
    """Play-like `*_gut.txt` files (speaker lines of words drawn by seed): a stand-in corpus slice."""
    import random
    from pathlib import Path

    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(n_works):
        lines = [f"THE TRAGEDY OF WORK {index}\n"]
        words = 0
        while words < words_per_work:
            n = rng.randint(4, 14)
            lines.append(f"{rng.choice(['Ham.', 'Hor.', 'King.', 'Queen.'])}\n"
                         + " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + ".\n")
            words += n
        (directory / f"work_{index}_gut.txt").write_text("\n".join(lines))
    return directory


@pytest.fixture(scope="session")
def works_dir(tmp_path_factory):
    return write_works(tmp_path_factory.mktemp("works"))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, works_dir):
    """A tokenizer + Llama teacher pretrained by `bench.teacher` on the stand-in slice (seconds)."""
    from bench.data.teacher import TeacherRecipe, pretrain

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    pretrain(out, TeacherRecipe.tiny(), works_dir=str(works_dir), log=lambda *_: None)
    return out
