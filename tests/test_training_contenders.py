"""The contenders built for the training experiments: KFAC against a dense Kronecker reference, KL clipping,
PSGD's update-probability schedule as FishLeg phases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fishleg_core as fl
from experiments.common.kfac_optimizer import KFAC
from experiments.common.step_control import KLClipped, psgd_schedule
from fishleg_core.kfac.start import kronecker_factors
from fishleg_core.optim.config import aux_due

LIKELIHOOD = fl.LIKELIHOODS.build("bernoulli")


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def constant(batch):
    while True:
        yield batch


def test_kfac_step_is_the_damped_kronecker_inverse_times_the_gradient():
    model, damping, lr = tiny_model(), 0.1, 0.5
    x = torch.rand(6, 3, dtype=torch.float64)
    curvature = torch.rand(5, 3, dtype=torch.float64)
    optimizer = KFAC(model, LIKELIHOOD, lr, curvature_data=constant(curvature), damping=damping, momentum=0.0, seed=3)
    factors = kronecker_factors(model, LIKELIHOOD, curvature, 1, torch.Generator().manual_seed(3))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    LIKELIHOOD.nll(model(x), (x > 0.5).double()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    optimizer.step()
    for index in ("0", "2"):
        G, A = factors[index].G, factors[index].A
        pi = math.sqrt((G.trace() / len(G)) / (A.trace() / len(A)))
        dense = torch.kron(
            torch.linalg.inv(G + math.sqrt(damping) * pi * torch.eye(len(G), dtype=G.dtype)),
            torch.linalg.inv(A + math.sqrt(damping) / pi * torch.eye(len(A), dtype=A.dtype)),
        )  # row-major vec of [W | b]
        gradient = torch.cat([grads[f"{index}.weight"], grads[f"{index}.bias"].unsqueeze(1)], 1)
        expected = -lr * (dense @ gradient.reshape(-1)).reshape(gradient.shape)
        weight, bias = (
            dict(model.named_parameters())[f"{index}.weight"],
            dict(model.named_parameters())[f"{index}.bias"],
        )
        torch.testing.assert_close(weight.detach() - before[f"{index}.weight"], expected[:, :-1])
        torch.testing.assert_close(bias.detach() - before[f"{index}.bias"], expected[:, -1])


def test_kfac_factors_are_moving_averages_refreshed_every_few_steps():
    model = tiny_model()
    batches = iter([torch.rand(5, 3, dtype=torch.float64) for _ in range(3)])
    optimizer = KFAC(model, LIKELIHOOD, 1e-3, curvature_data=batches, ema=0.5, stats_every=2, invert_every=4)
    x = torch.rand(6, 3, dtype=torch.float64)
    seen = []
    for _ in range(3):
        optimizer.zero_grad()
        LIKELIHOOD.nll(model(x), x).backward()
        optimizer.step()
        seen.append(optimizer.running.factors["0"].A.clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])  # refreshed at steps 0 and 2
    assert len(list(batches)) == 1  # two of the three curvature batches were drawn
    with pytest.raises(ValueError, match="damping must be positive"):
        KFAC(model, LIKELIHOOD, 0.1, curvature_data=batches, damping=0.0)


def test_kl_clipping_rescales_a_large_step_and_keeps_a_small_one():
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    lr, kl_clip = 0.1, 1e-4
    optimizer = KLClipped(torch.optim.SGD(model.parameters(), lr=lr), kl_clip)
    model.weight.grad = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    optimizer.step()
    nu = math.sqrt(kl_clip / (lr**2 * 25.0))  # predicted KL: η² ‖g‖² for SGD
    torch.testing.assert_close(
        model.weight.detach(),
        torch.tensor([[1.0, -2.0]], dtype=torch.float64) - nu * lr * torch.tensor([[3.0, 4.0]], dtype=torch.float64),
    )
    assert optimizer.last_scale == pytest.approx(nu)
    model.weight.grad = torch.tensor([[1e-3, 0.0]], dtype=torch.float64)
    start = model.weight.detach().clone()
    optimizer.step()
    assert optimizer.last_scale == 1.0
    torch.testing.assert_close(model.weight.detach(), start - lr * torch.tensor([[1e-3, 0.0]], dtype=torch.float64))


def test_psgd_schedule_phases_follow_the_update_probability():
    assert psgd_schedule(10, flat_start=2, decay=math.log(2), min_prob=0.25) == ((0, 1), (3, 2), (4, 4))
    config = fl.FishLegConfig(lr=0.1, aux_every=psgd_schedule(10, flat_start=2, decay=math.log(2), min_prob=0.25))
    assert [step for step in range(10) if aux_due(config.aux_every, step)] == [0, 1, 2, 3, 4, 8]


def test_kfac_keeps_its_inverses_when_the_factors_break():
    model = tiny_model()
    optimizer = KFAC(model, LIKELIHOOD, 1e-3, curvature_data=constant(torch.rand(5, 3, dtype=torch.float64)))
    LIKELIHOOD.nll(model(torch.rand(6, 3, dtype=torch.float64)), torch.zeros(6, 3, dtype=torch.float64)).backward()
    optimizer.step()
    kept = optimizer.inverses["0"]
    factors = optimizer.running.factors["0"]
    optimizer.running.factors["0"] = type(factors)(G=factors.G * float("nan"), A=factors.A)
    optimizer._invert()
    assert optimizer.inverses["0"] is kept and optimizer.failed_inversions == 1
