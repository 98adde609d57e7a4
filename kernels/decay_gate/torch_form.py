"""The decay gate in torch ops: the reference, and the form that trains (autograd)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def decay_gate_torch(x, temperature=1.0, complement=False):
    log_decay = F.logsigmoid(x.float()) / temperature
    return (log_decay, -torch.expm1(log_decay)) if complement else log_decay
