"""Inputs and comparisons shared by the kernel tests: every backend against the fp32 loop (`naive`),
outputs, final state and the gradient of every input."""
import torch
import torch.nn.functional as F

from tests.helpers import assert_close

B, H, K, V = 2, 2, 12, 10
LENGTHS = [1, 63, 100, 257]


def lr_inputs(T, decay, bonus, init, strong=False):
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    if decay == "none":
        log_decay = None
    elif decay == "head":
        log_decay = F.logsigmoid(torch.randn(B, T, H) + 2)
    else:
        # RWKV-6 style w = −exp(·): strong decays reach −20 per step and more.
        log_decay = -torch.exp(torch.randn(B, T, H, K) * (1.5 if strong else 1.0))
    inputs = dict(q=q, k=k, v=v, log_decay=log_decay,
                  bonus=torch.randn(H, K) if bonus else None,
                  initial_state=torch.randn(B, H, K, V) if init else None)
    return {name: t.requires_grad_() if t is not None else None for name, t in inputs.items()}


def run_with_grads(fn, inputs, **kwargs):
    o, state = fn(**inputs, output_final_state=True, **kwargs)
    torch.manual_seed(1)
    loss = (o * torch.randn(o.shape)).sum() + (state * torch.randn(state.shape)).sum()
    tensors = {n: t for n, t in inputs.items() if t is not None and t.requires_grad}
    grads = torch.autograd.grad(loss, list(tensors.values()))
    return o, state, dict(zip(tensors, grads))


def compare(fn, inputs, backend, tol=2e-4):
    o_ref, s_ref, g_ref = run_with_grads(fn, inputs, backend="naive")
    o, s, g = run_with_grads(fn, inputs, backend=backend)
    assert_close(o, o_ref, tol, "output")
    assert_close(s, s_ref, tol, "final state")
    for name in g_ref:
        assert_close(g[name], g_ref[name], tol, f"grad {name}")


def delta_inputs(T, decay, init):
    q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
    inputs = dict(q=q, k=k, v=v, beta=torch.rand(B, T, H),
                  log_decay=F.logsigmoid(torch.randn(B, T, H) + 2) if decay else None,
                  initial_state=torch.randn(B, H, K, V) if init else None)
    return {name: t.requires_grad_() if t is not None else None for name, t in inputs.items()}
