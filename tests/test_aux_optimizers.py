"""The contract of every auxiliary optimizer in AUX_OPTIMIZERS: finite, deterministic, exact resume in
FishLeg, non-finite updates skipped; and bad ``aux_optimizer=`` values named."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from test_reliability import LIKELIHOOD, assert_resume_is_bit_identical, assert_same, backward, snapshot

import fishleg_core as fl
import fishleg_core.auxiliary.update as auxiliary_update_module
from fishleg_core.qforms.positive import PositiveTensor, TriangularFactor
from fishleg_core.testing import AUX_OPTIMIZER_CHECKS, check_auxiliary_optimizer

CASES = [
    pytest.param("adam", id="adam"),
    pytest.param({"name": "adam", "betas": (0.5, 0.9)}, id="adam-options"),
    pytest.param({"name": "multiplicative", "momentum": 0.5}, id="multiplicative"),
]
"""Every registered optimizer, by name or with options; ``test_every_registered_optimizer_is_tested``
fails when one is missing."""


def with_lr(spec, lr: float) -> dict:
    """``spec`` as a mapping, with learning rate ``lr``."""
    return {"name": spec, "lr": lr} if isinstance(spec, str) else {**spec, "lr": lr}


def test_every_registered_optimizer_is_tested():
    names = {case.values[0] if isinstance(case.values[0], str) else case.values[0]["name"] for case in CASES}
    assert names == set(fl.AUX_OPTIMIZERS.names())


@pytest.mark.parametrize("spec", CASES)
@pytest.mark.parametrize("check", AUX_OPTIMIZER_CHECKS.values(), ids=AUX_OPTIMIZER_CHECKS.keys())
def test_auxiliary_optimizer_contract(spec, check):
    check(spec)


def uphill_sgd(params, lr=0.01):
    """Gradient ascent: A goes up."""
    return torch.optim.SGD(params, lr=lr, maximize=True)


def test_check_auxiliary_optimizer_names_the_failing_check():
    fl.AUX_OPTIMIZERS.register("uphill_sgd")(uphill_sgd)
    try:
        with pytest.raises(AssertionError, match="'uphill_sgd': check 'fit' failed: A does not go down"):
            check_auxiliary_optimizer("uphill_sgd")
    finally:
        fl.AUX_OPTIMIZERS.unregister("uphill_sgd")


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
            model,
            LIKELIHOOD,
            lr=0.1,
            q={"init_scale": 0.05 / 0.1},
            aux_every=1,
            seed=7,
            aux_optimizer=with_lr(spec, 0.01),
            aux_data=aux,
        )

    assert_resume_is_bit_identical(make, data, 4, tmp_path)


@pytest.mark.parametrize("spec", CASES)
def test_a_non_finite_auxiliary_update_leaves_lambda_and_optimizer_state_unchanged(spec, monkeypatch):
    model = tiny_mlp(2)
    x = random_inputs(MLP_INPUT, 8, seed=1)
    y = torch.randn(8, 2, dtype=torch.float64)
    optimizer = fl.FishLeg(model, LIKELIHOOD, lr=0.1, aux_every=1, aux_optimizer=with_lr(spec, 0.01))
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
    message = "auxiliary optimizer 'adam' takes no option 'momentum'; it takes: lr, betas, eps, weight_decay"
    with pytest.raises(ValueError, match=message):
        fl.build_aux_optimizer({"name": "adam", "momentum": 0.9}, tiny_mlp(2).parameters(), lr=0.1)
    with pytest.raises(fl.InvalidConfigError, match=f"invalid aux_optimizer: .*{message}"):
        fl.FishLeg(tiny_mlp(2), LIKELIHOOD, lr=0.1, aux_optimizer={"name": "adam", "momentum": 0.9})


def plain_sgd(params, lr, momentum=0.0):
    """An auxiliary optimizer that declares only its own options: no betas, no eps, no default rate."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


@pytest.fixture
def registered_plain_sgd():
    fl.AUX_OPTIMIZERS.register("plain_sgd")(plain_sgd)
    yield
    fl.AUX_OPTIMIZERS.unregister("plain_sgd")


@pytest.mark.usefixtures("registered_plain_sgd")
def test_a_new_optimizer_declares_only_its_own_options():
    optimizer = fl.FishLeg(
        tiny_mlp(2), LIKELIHOOD, lr=0.1, aux_optimizer={"name": "plain_sgd", "lr": 0.01, "momentum": 0.5}
    )
    assert isinstance(optimizer.auxiliary.optimizer, torch.optim.SGD)
    assert optimizer.auxiliary.optimizer.param_groups[0]["momentum"] == 0.5
    with pytest.raises(fl.InvalidConfigError, match="'plain_sgd' has no default for lr: give them in the spec"):
        fl.FishLeg(tiny_mlp(2), LIKELIHOOD, lr=0.1, aux_optimizer="plain_sgd")
    with pytest.raises(fl.InvalidConfigError, match="'plain_sgd' takes no option 'betas'; it takes: lr, momentum"):
        fl.FishLeg(tiny_mlp(2), LIKELIHOOD, lr=0.1, aux_optimizer={"name": "plain_sgd", "lr": 0.1, "betas": (0.9, 0.9)})


def test_adam_weight_decay_is_an_option_of_the_spec():
    optimizer = fl.FishLeg(tiny_mlp(2), LIKELIHOOD, lr=0.1, aux_optimizer={"name": "adam", "weight_decay": 1e-3})
    group = optimizer.auxiliary.optimizer.param_groups[0]
    assert (group["weight_decay"], group["lr"], group["betas"], group["eps"]) == (1e-3, 1e-4, (0.9, 0.999), 1e-8)


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
        q={"init_scale": init_scale},
        damping=0.1,
        aux_every=1,
        aux_weight_decay=weight_decay,
        aux_optimizer=with_lr(spec, 0.01),
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
            aux_weight_decay=weight_decay,
            aux_optimizer=with_lr(spec, 0.01),
            nonfinite="raise",
        )
    for _ in range(20):
        backward(model, optimizer, x, y)
        optimizer.step(aux_batch=x)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in optimizer.q.parameters())
    diagnostics = optimizer.diagnostics()
    assert diagnostics["aux_loss_floor"] is None and math.isfinite(diagnostics["last_aux_loss"])
