"""Whether taking Mamba-2's Δ·B and D·x into `linear_recurrence` (`key_scale`, `skip`) leaves training as it was: a
loss and its gradients through the embedded-shape mamba (2 × 300 tokens, the chunked torch form, which applies both
terms as torch ops around the recurrence), with the old featurize / finish_core (`mamba_ssd_terms_ab.py`) and the
new, in fp32 and under bf16 autocast; compared bit for bit.

    python results/speed/mamba_ssd_terms_training_check.py
"""
import torch
from mamba_ssd_terms_ab import featurize_old, finish_core_old

from bench.perf.throughput import embedded_shape_teacher
from bench.provenance import header
from students.mixers.mamba import Mamba2Mixer
from students.surgery import build_student

print(header())
torch.manual_seed(0)
model = build_student(embedded_shape_teacher(), "mamba", init="random", seed=0)
ids = torch.randint(0, model.config.vocab_size, (2, 300), generator=torch.Generator().manual_seed(0))
new = Mamba2Mixer.featurize, Mamba2Mixer.finish_core
for dtype in ("fp32", "bf16"):
    results = {}
    for side in ("old", "new"):
        Mamba2Mixer.featurize, Mamba2Mixer.finish_core = new if side == "new" else (featurize_old, finish_core_old)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(ids, use_cache=False).logits.float().logsumexp(-1).mean()
        loss.backward()
        results[side] = loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]
    (old_loss, old_grads), (new_loss, new_grads) = results["old"], results["new"]
    print(f"{dtype}: loss equal {old_loss == new_loss}; {len(new_grads)} gradients, all bit for bit equal "
          f"{all(torch.equal(a, b) for a, b in zip(old_grads, new_grads))}; largest difference "
          f"{max((a - b).abs().max().item() for a, b in zip(old_grads, new_grads)):.1e}")

