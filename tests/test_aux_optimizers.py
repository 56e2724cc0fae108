"""The contract of every auxiliary optimizer in AUX_OPTIMIZERS: finite, deterministic, exact resume in
FishLeg, non-finite updates skipped; and bad ``aux_optimizer=`` values named."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from test_reliability import LIKELIHOOD, assert_resume_is_bit_identical, assert_same, backward, snapshot

import fishleg_core as fl
import fishleg_core.auxiliary.update as auxiliary_update_module
from fishleg_core.qforms.positive import PositiveTensor, TriangularFactor

CASES = [
    pytest.param("adam", id="adam"),
    pytest.param({"name": "adam", "betas": (0.5, 0.9)}, id="adam-options"),
    pytest.param({"name": "multiplicative", "momentum": 0.5}, id="multiplicative"),
]
"""Every registered optimizer, by name or with options; ``test_every_registered_optimizer_is_tested``
fails when one is missing."""


def test_every_registered_optimizer_is_tested():
    names = {case.values[0] if isinstance(case.values[0], str) else case.values[0]["name"] for case in CASES}
    assert names == set(fl.AUX_OPTIMIZERS.names())


def _fit(spec):
    model = tiny_mlp(2)
    q = fl.build_model_q(model, {"Linear": "kron"})
    inputs = random_inputs(MLP_INPUT, 16, seed=2)
    targets = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    batches = [(inputs[i : i + 4], targets[i : i + 4]) for i in range(0, 16, 4)]
    directions = fl.normalized_gradients(model, LIKELIHOOD, itertools.cycle(batches), factors_for=q)
    curvature = itertools.cycle([inputs[8:], inputs[:8]])
    fit = fl.fit_q(model, LIKELIHOOD, q, directions, curvature, 40, lr=0.02, damping=0.1, aux_optimizer=spec)
    return fit.curve, [p.detach().clone() for p in q.parameters()]


@pytest.mark.parametrize("spec", CASES)
def test_fit_is_finite_deterministic_and_learns(spec):
    curve, params = _fit(spec)
    again, params_again = _fit(spec)
    assert curve == again and all(torch.equal(a, b) for a, b in zip(params, params_again))
    assert all(torch.isfinite(torch.tensor(curve)))
    assert sum(curve[-5:]) < sum(curve[:5])  # A goes down


@pytest.mark.parametrize("spec", CASES)
def test_fishleg_resume_is_bit_identical(spec, tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(8, 4, generator=generator, dtype=torch.float64),
            torch.randn(8, 2, generator=generator, dtype=torch.float64),
        )
        for _ in range(8)
    ]
    aux = [torch.randn(8, 4, generator=generator, dtype=torch.float64) for _ in range(3)]

    def make():
        model = tiny_mlp(2)
        return model, fl.FishLeg(
            model, LIKELIHOOD, lr=0.1, sgd_lr=0.05, aux_lr=0.01, aux_every=1, seed=7, aux_optimizer=spec, aux_data=aux
        )

    assert_resume_is_bit_identical(make, data, 4, tmp_path)


@pytest.mark.parametrize("spec", CASES)
def test_a_non_finite_auxiliary_update_leaves_lambda_and_optimizer_state_unchanged(spec, monkeypatch):
    model = tiny_mlp(2)
    x = random_inputs(MLP_INPUT, 8, seed=1)
    y = torch.randn(8, 2, dtype=torch.float64)
    optimizer = fl.FishLeg(model, LIKELIHOOD, lr=0.1, aux_every=1, aux_lr=0.01, aux_optimizer=spec)
    for _ in range(2):
        backward(model, optimizer, x, y)
        optimizer.step(aux_batch=x)
    monkeypatch.setattr(
        auxiliary_update_module,
        "fisher_vp",
        lambda *args, **kwargs: {name: torch.full_like(v, float("nan")) for name, v in args[3].items()},
    )
    backward(model, optimizer, x, y)
    before = snapshot(model, optimizer)
    with pytest.warns(RuntimeWarning, match="non-finite values in the auxiliary update"):
        optimizer.step(aux_batch=x)
    assert_same(before, snapshot(model, optimizer), ["q", "adam"])


@pytest.mark.parametrize(
    "spec, message",
    [("sgd", "unknown auxiliary optimizer 'sgd'; known: adam"), ({"lr": 1}, "a mapping with a 'name' entry")],
)
def test_bad_aux_optimizer_is_named(spec, message):
    with pytest.raises(fl.InvalidConfigError, match=f"aux_optimizer.*{message}"):
        fl.FishLeg(tiny_mlp(2), LIKELIHOOD, lr=0.1, aux_optimizer=spec)
    with pytest.raises(ValueError, match=message):
        fl.build_aux_optimizer(spec, tiny_mlp(2).parameters(), lr=0.1)


def test_an_option_the_optimizer_does_not_take_is_named():
    with pytest.raises(TypeError, match="auxiliary optimizer 'adam': .*'momentum'.*it takes: params, lr, betas, eps"):
        fl.build_aux_optimizer({"name": "adam", "momentum": 0.9}, tiny_mlp(2).parameters(), lr=0.1)


def test_weight_decay_adds_the_gradient_of_half_w_times_the_squared_factor_values():
    """add_weight_decay's gradient is ∇_λ ½ w Σ ‖V‖² by autograd, V = the factor values (L, softplus(raw), p)."""
    model = tiny_mlp(2)
    q = fl.build_model_q(model, {"0": "kron", "2": "ekfac"})
    q.add_module("extra", fl.build_model_q(tiny_mlp(3), {"default": "diagonal"}))
    for p in q.parameters():
        p.grad = torch.zeros_like(p)
    fl.add_weight_decay(q, 0.3)
    values = []
    for module in q.modules():
        if isinstance(module, (TriangularFactor, PositiveTensor)):
            values.append(module())
    penalty = 0.15 * sum((v**2).sum() for v in values)
    expected = torch.autograd.grad(penalty, list(q.parameters()), allow_unused=True)
    for p, g in zip(q.parameters(), expected):
        torch.testing.assert_close(p.grad, torch.zeros_like(p) if g is None else g)


def test_weight_decay_skips_parameters_without_a_gradient():
    q = fl.build_model_q(tiny_mlp(2), {"default": "kron"})
    fl.add_weight_decay(q, 1.0)
    assert all(p.grad is None for p in q.parameters())


def _trained_q_trace(spec, weight_decay, init_scale=0.01):
    model = tiny_mlp(2)
    x = random_inputs(MLP_INPUT, 8, seed=1)
    y = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    optimizer = fl.FishLeg(
        model,
        LIKELIHOOD,
        lr=1e-9,  # θ stays put: only λ moves
        init_scale=init_scale,
        damping=0.1,
        aux_every=1,
        aux_lr=0.01,
        aux_weight_decay=weight_decay,
        aux_optimizer=spec,
    )
    for _ in range(30):
        backward(model, optimizer, x, y)
        optimizer.step(aux_batch=x)
    assert all(torch.isfinite(p).all() for p in optimizer.q.parameters())
    return optimizer.q.to_dense().trace().item()


@pytest.mark.parametrize("spec", CASES)
def test_weight_decay_on_lambda_pulls_q_towards_zero(spec):
    """With a strong decay Q ends smaller than without, from a small start (0.01·I) where a decay of the
    softplus pre-images towards 0 would instead grow the diagonals towards log 2."""
    assert _trained_q_trace(spec, 50.0) < 0.5 * _trained_q_trace(spec, 0.0)


@pytest.mark.parametrize("spec", CASES)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_damping_zero_gives_finite_steps(spec, weight_decay):
    """γ = 0 (the paper's setting) on a model with more parameters than the auxiliary batch has outputs."""
    model = tiny_mlp(2)
    x = random_inputs(MLP_INPUT, 3, seed=1)
    y = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if weight_decay == 0 else "error")  # the warning is for no decay only
        optimizer = fl.FishLeg(
            model,
            LIKELIHOOD,
            lr=0.05,
            damping=0.0,
            aux_every=1,
            aux_lr=0.01,
            aux_weight_decay=weight_decay,
            aux_optimizer=spec,
            nonfinite="raise",
        )
    for _ in range(20):
        backward(model, optimizer, x, y)
        optimizer.step(aux_batch=x)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in optimizer.q.parameters())
    diagnostics = optimizer.diagnostics()
    assert diagnostics["aux_loss_floor"] is None and math.isfinite(diagnostics["last_aux_loss"])
