"""Non-finite values never corrupt FishLeg's state; resume is exact for every Fisher method."""

from __future__ import annotations

import warnings

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp

import fishleg_core as fl
import fishleg_core.auxiliary.update as auxiliary_update_module
from fishleg_core.param_vectors import all_finite

LIKELIHOOD = fl.LIKELIHOODS.build("gaussian")


def snapshot(model, optimizer):
    """Everything FishLeg has learned: parameters, λ, Adam state of λ, momentum buffers, step count."""
    state = optimizer.state_dict()
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "q": {k: v.clone() for k, v in state["fishleg"]["q"].items()},
        "adam": state["fishleg"]["aux_optimizer"]["state"],
        "momentum": {k: v["momentum_buffer"].clone() for k, v in state["state"].items()},
        "steps": optimizer.steps,
    }


def assert_same(a, b, keys):
    for key in keys:
        if isinstance(a[key], list):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key
        elif isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            for k in a[key]:
                x, y = a[key][k], b[key][k]
                if isinstance(x, dict):
                    assert all(torch.equal(x[s], y[s]) for s in x), (key, k)
                else:
                    assert torch.equal(x, y), (key, k)
        else:
            assert a[key] == b[key], key


def trained(momentum_on="gradient", steps=3, **options):
    model = tiny_mlp(2)
    x = random_inputs(MLP_INPUT, 8, seed=1)
    y = torch.randn(8, 2, dtype=torch.float64)
    optimizer = fl.FishLeg(
        model,
        LIKELIHOOD,
        lr=0.1,
        aux_every=1,
        aux_optimizer={"name": "adam", "lr": 0.01},
        momentum_on=momentum_on,
        **options,
    )
    for _ in range(steps):
        backward(model, optimizer, x, y)
        optimizer.step(aux_batch=x)
    backward(model, optimizer, x, y)
    return model, optimizer, x, y


def backward(model, optimizer, x, y):
    optimizer.zero_grad()
    LIKELIHOOD.nll(model(x), y).backward()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("size", [1, 31, 100_003])
def test_all_finite_finds_one_bad_entry_anywhere(dtype, bad, size):
    for position in (0, size // 2, size - 1):
        tensors = {
            "empty": torch.empty(0, dtype=dtype),
            "finite": torch.full((3,), 3e38).to(dtype),
            "x": torch.randn(size).to(dtype),
        }
        assert all_finite(tensors)
        tensors["x"][position] = bad
        assert not all_finite(tensors), (position, tensors["x"][position])
    assert all_finite({})


@pytest.mark.parametrize("momentum_on", ["gradient", "update"])
def test_a_non_finite_gradient_skips_the_step_and_changes_nothing(momentum_on):
    model, optimizer, x, _ = trained(momentum_on)
    model[0].weight.grad[1, 2] = float("nan")
    before = snapshot(model, optimizer)
    with pytest.warns(RuntimeWarning, match=r"non-finite values in the gradient \(0.weight\); the step is skipped"):
        optimizer.step(aux_batch=x)
    assert_same(before, snapshot(model, optimizer), ["params", "q", "adam", "momentum", "steps"])
    model[2].bias.grad[0] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        optimizer.step(aux_batch=x)
    assert optimizer.nonfinite.skipped == {"gradient": 2}
    assert optimizer.state_dict()["fishleg"]["skipped"] == {"gradient": 2}


@pytest.mark.parametrize("where", ["fisher", "aux_inputs"])
def test_a_non_finite_auxiliary_update_leaves_lambda_and_adam_state_unchanged(where, monkeypatch):
    model, optimizer, x, _ = trained()
    if where == "fisher":

        def nan_fisher(*args, **kwargs):
            return {name: torch.full_like(v, float("nan")) for name, v in args[3].items()}

        monkeypatch.setattr(auxiliary_update_module, "fisher_vp", nan_fisher)
        aux = x
    else:
        aux = x.clone()
        aux[0, 0] = float("nan")
    before = snapshot(model, optimizer)
    with pytest.warns(RuntimeWarning, match="non-finite values in the auxiliary update .* λ and its Adam state"):
        optimizer.step(aux_batch=aux)
    after = snapshot(model, optimizer)
    assert_same(before, after, ["q", "adam"])
    assert optimizer.nonfinite.skipped == {"auxiliary update": 1}
    assert not all(torch.equal(a, b) for a, b in zip(before["params"], after["params"]))  # θ still stepped


def test_nonfinite_raise_turns_skips_into_errors():
    model, optimizer, x, _ = trained(nonfinite="raise")
    model[0].bias.grad[0] = float("nan")
    before = snapshot(model, optimizer)
    with pytest.raises(FloatingPointError, match=r"non-finite values in the gradient \(0.bias\)"):
        optimizer.step(aux_batch=x)
    assert_same(before, snapshot(model, optimizer), ["params", "q", "adam", "momentum", "steps"])
    model[0].bias.grad[0] = 0.0
    aux = x.clone()
    aux[1, 1] = float("inf")
    with pytest.raises(FloatingPointError, match="auxiliary update"):
        optimizer.step(aux_batch=aux)
    assert_same(before, snapshot(model, optimizer), ["params", "q", "adam", "momentum", "steps"])


def test_an_error_in_the_auxiliary_update_changes_nothing():
    model, optimizer, x, _ = trained()
    before = snapshot(model, optimizer)
    with pytest.raises(TypeError, match="an auxiliary batch must be an input tensor"):
        optimizer.step(aux_batch="not a batch")
    with pytest.raises(RuntimeError, match="no auxiliary batch is available"):
        optimizer.step()
    assert_same(before, snapshot(model, optimizer), ["params", "q", "adam", "momentum", "steps"])


@pytest.mark.parametrize("aux_every", [2, ((0, 1), (4, 3))], ids=["every2", "schedule"])
@pytest.mark.parametrize("method", fl.FISHER_METHODS.names())
@pytest.mark.parametrize("momentum_on", ["gradient", "update"])
def test_resume_is_bit_identical_for_every_fisher_method(method, momentum_on, aux_every, tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = [
        (
            torch.randn(8, 4, generator=generator, dtype=torch.float64),
            torch.randn(8, 2, generator=generator, dtype=torch.float64),
        )
        for _ in range(10)
    ]
    aux = [
        (
            torch.randn(8, 4, generator=generator, dtype=torch.float64),  # (inputs, targets): every method
            torch.randn(8, 2, generator=generator, dtype=torch.float64),
        )
        for _ in range(3)
    ]

    def make():
        model = tiny_mlp(2)
        return model, fl.FishLeg(
            model,
            LIKELIHOOD,
            lr=0.1,
            q={"init_scale": 0.05 / 0.1, "forms": {"Linear": "kron_sum"}},
            aux_optimizer={"name": "adam", "lr": 0.01},
            aux_every=aux_every,
            seed=7,
            fisher_method=method,
            momentum_on=momentum_on,
            aux_data=aux,
        )

    assert_resume_is_bit_identical(make, data, 6, tmp_path)


def assert_resume_is_bit_identical(make, data, split, tmp_path):
    """Training on ``data`` with the FishLeg that ``make()`` builds, saved after ``split`` batches and resumed,
    gives exactly the parameters of an uninterrupted run."""

    def run(model, optimizer, batches):
        for x, y in batches:
            backward(model, optimizer, x, y)
            optimizer.step()

    model, optimizer = make()
    run(model, optimizer, data[:split])
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "checkpoint.pt")
    run(model, optimizer, data[split:])
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, optimizer = make()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    run(model, optimizer, data[split:])
    for p, expected in zip(model.parameters(), uninterrupted):
        assert torch.equal(p, expected)
