"""KFAC's step controls around any optimizer (``QuadraticControl``): the rescaling α* and the 2-D momentum
solve, and the Levenberg-Marquardt ratio ρ, against a dense Fisher in float64; setting FishLeg's damping."""

from __future__ import annotations

import math

import pytest
import torch
from reference import flat, gaussian_fisher, trainable
from torch import nn

import fishleg_core as fl
from experiments.common.kfac_optimizer import KFAC
from experiments.common.step_control import QuadraticControl, damping_of, set_damping

LIKELIHOOD = fl.LIKELIHOODS.build("gaussian")


class DampedSGD(torch.optim.SGD):
    """SGD with a damping attribute for the controls to read and set."""

    damping = 0.3


def loss_fn(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return LIKELIHOOD.nll(model(inputs), targets)


def tiny_problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)


def controlled_steps(model, inputs, targets, steps, **options):
    """``steps`` controlled SGD steps on one batch; per step: θ before, g, the SGD step Δ, the step taken."""
    inner = DampedSGD(model.parameters(), lr=0.2)
    control = QuadraticControl(inner, model, LIKELIHOOD, loss_fn, **options)
    batches = control.watch(iter([(inputs, targets)] * steps))
    names = list(trainable(model))
    record = []
    for x, y in batches:
        theta = flat(trainable(model), names).detach().clone()
        control.zero_grad()
        loss_fn(model, x, y).backward()
        g = flat({n: p.grad for n, p in trainable(model).items()}, names).clone()
        control.step()
        record.append((theta, g, -0.2 * g, flat(trainable(model), names).detach() - theta))
    return control, record


def test_rescaling_is_the_minimiser_of_the_quadratic_model_along_the_step():
    model, x, y = tiny_problem()
    control, [(theta, g, delta, taken)] = controlled_steps(model, x, y, 1, rescale="step")
    model_at_start, _, _ = tiny_problem()  # the same weights: F at θ
    C = gaussian_fisher(model_at_start, x, 1.0) + 0.3 * torch.eye(len(g), dtype=torch.float64)
    alpha = -(g @ delta) / (delta @ C @ delta)
    torch.testing.assert_close(taken, alpha * delta)
    assert control.last_scale == pytest.approx(float(alpha))


def test_momentum_rescaling_solves_the_two_dimensional_quadratic_model():
    model, x, y = tiny_problem()
    _, [(_, _, _, first), (theta, g, delta, taken)] = controlled_steps(model, x, y, 2, rescale="momentum")
    at_theta, _, _ = tiny_problem()
    with torch.no_grad():
        for p, value in zip(at_theta.parameters(), torch.split(theta, [p.numel() for p in at_theta.parameters()])):
            p.copy_(value.reshape(p.shape))
    C = gaussian_fisher(at_theta, x, 1.0) + 0.3 * torch.eye(len(g), dtype=torch.float64)
    D = torch.stack([delta, first], 1)
    coefficients = torch.linalg.solve(D.T @ C @ D, -D.T @ g)
    torch.testing.assert_close(taken, D @ coefficients)


def test_levenberg_marquardt_ratio_and_damping_update():
    model, x, y = tiny_problem()
    control, [(theta, g, delta, taken)] = controlled_steps(model, x, y, 1, lm_every=1)
    at_theta, _, _ = tiny_problem()
    F = gaussian_fisher(at_theta, x, 1.0)
    with torch.no_grad():
        start = float(loss_fn(at_theta, x, y))
    after = float(loss_fn(model, x, y))
    rho = (after - start) / (0.5 * delta @ F @ delta + g @ delta)
    torch.testing.assert_close(taken, delta)  # no rescaling: the step is the inner one
    assert control.last_rho == pytest.approx(float(rho), rel=1e-10)
    omega = 19 / 20
    expected = 0.3 / omega if rho < 0.25 else 0.3 * omega if rho > 0.75 else 0.3
    assert damping_of(control.inner) == pytest.approx(expected)


def test_levenberg_marquardt_raises_the_damping_after_a_step_that_overshoots():
    model, x, y = tiny_problem()
    inner = DampedSGD(model.parameters(), lr=50.0)  # far past the minimum along −g
    control = QuadraticControl(inner, model, LIKELIHOOD, loss_fn, lm_every=2, omega=0.5)
    for step, batch in enumerate(control.watch(iter([(x, y)] * 3))):
        control.zero_grad()
        loss_fn(model, *batch).backward()
        control.step()
        if step == 0:
            assert control.last_rho < 0.25 and damping_of(inner) == pytest.approx(0.6)
    assert damping_of(inner) == pytest.approx(1.2)  # checked at steps 0 and 2 only


def test_set_damping_reaches_fishleg_auxiliary_loss_and_kfac():
    model, x, _ = tiny_problem()
    fishleg = fl.FishLeg(model, LIKELIHOOD, lr=0.1, damping=1.0, aux_data=[x])
    set_damping(fishleg, 0.25)
    assert damping_of(fishleg) == 0.25 and fishleg.auxiliary.damping == 0.25 and fishleg.monitor.damping == 0.25
    with pytest.raises(ValueError, match="damping must be a finite number"):
        fishleg.set_damping(-1.0)
    kfac = KFAC(model, LIKELIHOOD, 0.1, curvature_data=iter([x] * 2), damping=2.0)
    set_damping(kfac, 0.5)
    assert kfac.damping == 0.5


def test_quadratic_control_rejects_bad_input():
    model, _, _ = tiny_problem()
    sgd = DampedSGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="choose rescale"):
        QuadraticControl(sgd, model, LIKELIHOOD, loss_fn)
    with pytest.raises(ValueError, match="rescale must be"):
        QuadraticControl(sgd, model, LIKELIHOOD, loss_fn, rescale="line")
    with pytest.raises(ValueError, match="lm_every"):
        QuadraticControl(sgd, model, LIKELIHOOD, loss_fn, lm_every=0)
    with pytest.raises(ValueError, match="omega"):
        QuadraticControl(sgd, model, LIKELIHOOD, loss_fn, lm_every=1, omega=1.5)
    with pytest.raises(TypeError, match="no damping"):
        QuadraticControl(torch.optim.SGD(model.parameters(), lr=0.1), model, LIKELIHOOD, loss_fn, rescale="step")
    undamped = fl.FishLeg(model, LIKELIHOOD, lr=0.1, damping=0.0, aux_weight_decay=1e-3, aux_data=[torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="positive starting damping"):
        QuadraticControl(undamped, model, LIKELIHOOD, loss_fn, lm_every=5)
    control = QuadraticControl(sgd, model, LIKELIHOOD, loss_fn, rescale="step")
    with pytest.raises(RuntimeError, match="watch"):
        control.step()
    assert math.isnan(control.last_rho)
