"""The deep linear network: its Fisher in closed form (Bernacchia et al., 2018) against ``fisher_vp``."""

from __future__ import annotations

import pytest
import torch
from reference import flat

from experiments.deep_linear.task import build_deep_linear, half_squared_error, teacher_data
from fishleg_core import LIKELIHOODS, fisher_vp

DEPTH, WIDTH, SIGMA, BATCH = 4, 3, 0.5, 7


def chain(weights: list[torch.Tensor], width: int) -> torch.Tensor:
    """W_k ⋯ W_1 for weights = [W_1, ..., W_k]; the identity for an empty list."""
    product = torch.eye(width, dtype=torch.float64)
    for weight in weights:
        product = weight @ product
    return product


def closed_form_fisher(weights: list[torch.Tensor], inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """F for f(x) = W_L ⋯ W_1 x with y ~ N(f, σ² I), on the batch's second moment Σ = XᵀX / B.

    With A_l = W_L ⋯ W_{l+1} and P_l = W_{l−1} ⋯ W_1, ∂f/∂vec(W_l) = A_l ⊗ (P_l x)ᵀ (row-major vec), so the
    (l, m) block of F = E[JᵀJ]/σ² is (A_lᵀ A_m) ⊗ (P_l Σ P_mᵀ) / σ².
    """
    n = inputs.shape[1]
    second_moment = inputs.T @ inputs / inputs.shape[0]
    layers = range(len(weights))
    after = [chain(weights[i + 1 :], n) for i in layers]  # A_i
    before = [chain(weights[:i], n) for i in layers]  # P_i
    rows = [
        torch.cat([torch.kron(after[i].T @ after[j], before[i] @ second_moment @ before[j].T) for j in layers], dim=1)
        for i in layers
    ]
    return torch.cat(rows, dim=0) / sigma**2


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_exact_fisher_vector_product_matches_the_closed_form(damping):
    model = build_deep_linear(DEPTH, WIDTH, seed=1, dtype=torch.float64)
    inputs = torch.randn(BATCH, WIDTH, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    names = [name for name, _ in model.named_parameters()]
    vector = {name: torch.randn(WIDTH, WIDTH, dtype=torch.float64) for name in names}
    product = fisher_vp(model, LIKELIHOODS.build("gaussian", sigma=SIGMA), inputs, vector, damping=damping)
    dense = closed_form_fisher([p.detach() for p in model.parameters()], inputs, SIGMA)
    expected = dense @ flat(vector, names) + damping * flat(vector, names)
    torch.testing.assert_close(flat(product, names), expected, rtol=1e-10, atol=1e-12)


def test_the_teacher_sits_at_the_noise_floor():
    data = teacher_data(depth=3, width=5, n_train=20, n_test=4000, noise=0.01, seed=0)
    assert data.noise_floor == pytest.approx(0.5 * 0.01**2, rel=0.05)  # E ½‖σ₀ε‖²/n = ½ σ₀²
    student = build_deep_linear(3, 5, seed=0)
    assert half_squared_error(student, data.test_inputs, data.test_targets).item() > 100 * data.noise_floor
