"""Shared test set-up: offline hubs, determinism, and NaN-poisoned torch.empty."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

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
