"""The contract of every auxiliary optimizer in AUX_OPTIMIZERS: finite, deterministic, exact resume in
FishLeg, non-finite updates skipped; and bad ``aux_optimizer=`` values named."""

from __future__ import annotations

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from test_reliability import LIKELIHOOD, assert_resume_is_bit_identical, assert_same, backward, snapshot

import fishleg_core as fl
import fishleg_core.auxiliary.update as auxiliary_update_module
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
