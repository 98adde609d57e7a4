"""Small assertions shared by the tests."""
import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4, name: str = "") -> None:
    """Max abs error relative to the reference's max magnitude (robust for values near zero)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = (actual.double() - expected.double()).abs().max().item()
    ref = expected.double().abs().max().item()
    assert err <= tol * max(ref, 1.0), f"{name}: max abs error {err:.3g} vs reference magnitude {ref:.3g}"
