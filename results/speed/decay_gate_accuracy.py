"""The decay gate's accuracy: the compiled pass and the torch form in fp32 against float64, worst relative error over
120,029 values (100,000 normal draws × 6, a grid from −100 to 100, and edge values up to ±200), where the exact
value is a normal float, at three temperatures.

    python results/speed/decay_gate_accuracy.py
"""
import torch
import torch.nn.functional as F

from bench.provenance import header
from kernels.decay_gate import decay_gate

print(header())
x = torch.cat([torch.randn(100000, generator=torch.Generator().manual_seed(0)) * 6, torch.linspace(-100, 100, 20001),
               torch.tensor([0.0, 1e-8, -1e-8, 30, -30, 88, 90, 200, -200])])
for temperature in (1.0, 16.0, 3.0):
    exact_log = F.logsigmoid(x.double()) / temperature
    exact_complement = -torch.expm1(exact_log)
    with torch.no_grad():
        sides = {backend: decay_gate(x, temperature, complement=True, backend=backend) for backend in ("native", "torch")}
    for name, exact, index in (("log α", exact_log, 0), ("1 − α", exact_complement, 1)):
        normal = exact.abs() > 1e-30
        worst = {backend: ((out[index].double() - exact).abs()[normal] / exact.abs()[normal]).max().item()
                 for backend, out in sides.items()}
        print(f"τ = {temperature:4.1f}  {name}: worst relative error, compiled {worst['native']:.2e}, "
              f"torch fp32 {worst['torch']:.2e}")
