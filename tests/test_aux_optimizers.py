"""The contract of every auxiliary optimizer in AUX_OPTIMIZERS: finite, deterministic, exact resume in
FishLeg, non-finite updates skipped; and bad ``aux_optimizer=`` values named."""

from __future__ import annotations

import itertools

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from test_reliability import LIKELIHOOD, assert_resume_is_bit_identical, assert_same, backward, snapshot

import fishleg_core as fl
import fishleg_core.auxiliary.update as auxiliary_update_module

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
