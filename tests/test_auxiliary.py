"""The auxiliary loss and its surrogate gradient (docs/design.md §1) against a dense Fisher."""

from __future__ import annotations

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from reference import flat, gaussian_fisher, trainable

import fishleg_core as fl

SIGMA, DAMPING = 0.8, 0.3


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("forms", [{"default": "kron"}, {"default": "ekfac"}, {"0": "kron_sum", "2": "diagonal"}])
def test_surrogate_gradient_equals_the_gradient_through_a_dense_fisher(forms):
    model = tiny_mlp(3)
    inputs = random_inputs(MLP_INPUT, 6)
    params = trainable(model)
    names = list(params)
    q = fl.build_model_q(model, forms, init_scale=0.5)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.2 * torch.randn_like(p))
    generator = torch.Generator().manual_seed(1)
    u = {n: torch.randn(p.shape, generator=generator) for n, p in params.items()}
    F = gaussian_fisher(model, inputs, SIGMA) + DAMPING * torch.eye(sum(p.numel() for p in params.values()))

    # reference: A(λ; u) = ½ (Qu)ᵀ F_γ (Qu) − uᵀ Q u, differentiated through the dense F_γ
    v = flat(q(u), names)
    u_flat = flat(u, names)
    A = 0.5 * v @ F @ v - u_flat @ v
    expected = torch.autograd.grad(A, list(q.parameters()))

    likelihood = fl.LIKELIHOODS.build("gaussian", sigma=SIGMA)
    loss = fl.auxiliary_loss(q, u, lambda w: fl.fisher_vp(model, likelihood, inputs, w, damping=DAMPING))
    got = torch.autograd.grad(loss.surrogate, list(q.parameters()))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.value, A.detach(), rtol=1e-12, atol=1e-12)
    assert not loss.value.requires_grad
