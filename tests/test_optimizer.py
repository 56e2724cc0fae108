"""The FishLeg optimizer (docs/design.md §7)."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from torch import nn

import fishleg_core as fl
from fishleg_core.optim.fishleg import NOT_HYPERPARAMETERS
from fishleg_core.qforms.positive import TriangularFactor


def regression_problem(seed=0, n=64, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, *MLP_INPUT, generator=generator, dtype=dtype)
    teacher = tiny_mlp(2, seed=seed + 100, dtype=dtype)
    with torch.no_grad():
        targets = teacher(inputs) + 0.1 * torch.randn(n, 2, generator=generator, dtype=dtype)
    return inputs, targets


def batches(inputs, targets, size, seed):
    """An endless, seeded stream of minibatches."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randperm(len(inputs), generator=generator)[:size]
        yield inputs[idx], targets[idx]


def train(model, optimizer, data, steps, likelihood):
    losses = []
    for _ in range(steps):
        inputs, targets = next(data)
        optimizer.zero_grad()
        loss = likelihood.nll(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.usefixtures("float64")
def test_without_auxiliary_updates_fishleg_is_sgd_with_momentum():
    inputs, targets = regression_problem()
    likelihood = fl.LIKELIHOODS.build("gaussian", sigma=1.0)
    model, reference = tiny_mlp(2), tiny_mlp(2)
    sgd_lr, beta = 0.05, 0.9
    optimizer = fl.FishLeg(model, likelihood, lr=0.7, q={"init_scale": sgd_lr / 0.7}, momentum=beta, aux_every=0)
    train(model, optimizer, batches(inputs, targets, 16, 0), 25, likelihood)

    # Algorithm 1's convention: ḡ ← βḡ + (1 − β) g from ḡ = 0, then θ ← θ − η_SGDm ḡ.
    buffers = [torch.zeros_like(p) for p in reference.parameters()]
    data = batches(inputs, targets, 16, 0)
    for _ in range(25):
        x, y = next(data)
        reference.zero_grad()
        likelihood.nll(reference(x), y).backward()
        with torch.no_grad():
            for p, b in zip(reference.parameters(), buffers):
                b.mul_(beta).add_(p.grad, alpha=1 - beta)
                p.sub_(sgd_lr * b)
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, r, rtol=0, atol=1e-6)


@pytest.mark.parametrize("momentum_on", ["gradient", "update"])
def test_fishleg_lowers_the_training_loss(momentum_on):
    inputs, targets = regression_problem(dtype=torch.float32)
    likelihood = fl.LIKELIHOODS.build("gaussian", sigma=1.0)
    model = tiny_mlp(2, dtype=torch.float32)
    aux_inputs = [inputs[i : i + 16] for i in range(0, 64, 16)]
    optimizer = fl.FishLeg(
        model,
        likelihood,
        lr=0.1,
        q={"init_scale": 0.05 / 0.1},
        aux_optimizer={"name": "adam", "lr": 0.01},
        aux_every=1,
        damping=0.1,
        momentum_on=momentum_on,
        aux_data=aux_inputs,
    )

    def squared_error():  # the NLL minus its constant, times σ²
        with torch.no_grad():
            return ((model(inputs) - targets) ** 2).sum(1).mean().item()

    start = squared_error()
    train(model, optimizer, batches(inputs, targets, 16, 1), 150, likelihood)
    assert squared_error() < 0.5 * start
    assert optimizer.last_aux_loss is not None and torch.isfinite(optimizer.last_aux_loss)


@pytest.mark.parametrize("method", ["exact", "sampled"])
def test_save_load_continue_is_identical_to_an_uninterrupted_run(method, tmp_path):
    inputs, targets = regression_problem()
    likelihood = fl.LIKELIHOODS.build("gaussian", sigma=1.0)
    aux_inputs = [inputs[i : i + 16] for i in range(0, 64, 16)]
    options = dict(
        lr=0.1,
        q={"init_scale": 0.05 / 0.1, "forms": {"Linear": "kron_sum"}},
        aux_optimizer={"name": "adam", "lr": 0.01},
        aux_every=2,
        fisher_method=method,
        seed=3,
    )

    def make():
        torch.manual_seed(0)
        model = tiny_mlp(2)
        return model, fl.FishLeg(model, likelihood, **options)

    data = list(itertools.islice(batches(inputs, targets, 16, 2), 10))

    def run(model, optimizer, steps):
        for step in steps:
            x, y = data[step]
            optimizer.zero_grad()
            likelihood.nll(model(x), y).backward()
            optimizer.step(aux_batch=aux_inputs[step % 4])

    model, optimizer = make()
    run(model, optimizer, range(6))
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")
    run(model, optimizer, range(6, 10))
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, optimizer = make()
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    run(model, optimizer, range(6, 10))
    for p, expected in zip(model.parameters(), uninterrupted):
        assert torch.equal(p, expected)


def test_state_dict_carries_the_auxiliary_parameters_and_their_adam_state():
    model = tiny_mlp(2, dtype=torch.float32)
    optimizer = fl.FishLeg(model, "gaussian", lr=0.1, aux_every=1)
    x = random_inputs(MLP_INPUT, 8, dtype=torch.float32)
    model(x).sum().backward()
    optimizer.step(aux_batch=x)
    state = optimizer.state_dict()["fishleg"]
    assert set(state["q"]) == set(optimizer.q.state_dict())
    assert len(state["aux_optimizer"]["state"]) == len(list(optimizer.q.parameters()))
    assert state["steps"] == 1


def test_an_aux_every_schedule_updates_lambda_at_the_steps_it_names(monkeypatch):
    model = tiny_mlp(2, dtype=torch.float32)
    x = random_inputs(MLP_INPUT, 8, dtype=torch.float32)
    optimizer = fl.FishLeg(model, "gaussian", lr=0.1, aux_every=((0, 1), (3, 4), (9, 0)), aux_data=[x])
    updated = []
    step = optimizer.auxiliary.step
    monkeypatch.setattr(optimizer.auxiliary, "step", lambda *a: updated.append(optimizer.steps) or step(*a))
    caching = []
    for _ in range(14):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
        caching.append({m.cache_gram for m in optimizer.q.modules() if isinstance(m, TriangularFactor)})
    assert updated == [0, 1, 2, 3, 7]  # every step, then every 4th from step 3, then none from step 9
    assert caching == [{False}] * 3 + [{True}] * 11  # Gram matrices cached where λ serves several steps


def test_lr_schedulers_drive_the_step_size():
    model = tiny_mlp(1, dtype=torch.float32)
    optimizer = fl.FishLeg(model, "gaussian", lr=1.0, aux_every=0, momentum=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x = random_inputs(MLP_INPUT, 4, dtype=torch.float32)
    for lr in [1.0, 0.5]:
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        model(x).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        scheduler.step()
        for p, b, g in zip(model.parameters(), before, grads):
            torch.testing.assert_close(p, b - lr * g)


# ---------------------------------------------------------------------------------------- bad input


def test_an_auxiliary_update_without_auxiliary_data_is_a_clear_error():
    model = tiny_mlp(2, dtype=torch.float32)
    optimizer = fl.FishLeg(model, "gaussian", lr=0.1)
    model(random_inputs(MLP_INPUT, 4, dtype=torch.float32)).sum().backward()
    with pytest.raises(RuntimeError, match="auxiliary update is due at step 0 .* pass aux_data="):
        optimizer.step()


def test_an_exhausted_iterator_of_auxiliary_data_is_a_clear_error():
    model = tiny_mlp(2, dtype=torch.float32)
    x = random_inputs(MLP_INPUT, 4, dtype=torch.float32)
    optimizer = fl.FishLeg(model, "gaussian", lr=0.1, aux_every=1, aux_data=iter([x]))
    for expected_error in [False, True]:
        model(x).sum().backward()
        if expected_error:
            with pytest.raises(RuntimeError, match="aux_data yields no batches"):
                optimizer.step()
        else:
            optimizer.step()


def test_a_likelihood_that_does_not_fit_the_outputs_is_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))  # outputs of shape (B,)
    optimizer = fl.FishLeg(model, "categorical", lr=0.1, aux_every=1)
    x = random_inputs(MLP_INPUT, 4, dtype=torch.float32)
    model(x).sum().backward()
    with pytest.raises(ValueError, match=r"CategoricalLikelihood\(\) needs outputs of shape \(B, C, \*extra\)"):
        optimizer.step(aux_batch=x)


@pytest.mark.parametrize(
    "options,field",
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum_on": "q"}, "momentum_on"),
        ({"damping": -0.1}, "damping"),
        ({"aux_every": -1}, "aux_every"),
        ({"aux_every": ((1, 2),)}, "aux_every"),  # a schedule must start at step 0
        ({"aux_every": ((0, 1), (5, 2), (5, 10))}, "aux_every"),  # first steps must increase
        ({"aux_every": ((0, 1), (5, -2))}, "aux_every"),
        ({"fisher_method": "empirical-ish"}, "fisher_method"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"aux_optimizer": {"name": "adam", "betas": 0.9, "lr": 0.1, "eps": 1.0, "nesterov": True}}, "aux_optimizer"),
    ],
)
def test_invalid_hyperparameters_name_the_field(options, field):
    options = {"lr": 0.1, **options}
    with pytest.raises(fl.InvalidConfigError, match=f"FishLeg: invalid {field}"):
        fl.FishLeg(tiny_mlp(2, dtype=torch.float32), "gaussian", **options)


def test_a_misspelt_argument_is_named():
    with pytest.raises(TypeError, match="unexpected keyword argument 'dampign'"):
        fl.FishLeg(tiny_mlp(2, dtype=torch.float32), "gaussian", lr=0.1, dampign=1.0)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "adam", "lr": -1.0}, "aux_optimizer 'adam': Invalid learning rate: -1.0"),
        ({"name": "adam", "betas": (0.9, 1.0)}, "aux_optimizer 'adam': Invalid beta parameter at index 1: 1.0"),
        ({"name": "multiplicative", "lr": 1.5}, "lr \\(the relative step\\) must be in \\(0, 1\\)"),
    ],
)
def test_an_invalid_option_of_the_auxiliary_optimizer_is_named_by_its_factory(spec, message):
    with pytest.raises(ValueError, match=message):
        fl.FishLeg(tiny_mlp(2), "gaussian", lr=0.1, aux_optimizer=spec)


def test_the_config_is_the_signature():
    """FishLegConfig has a field per hyperparameter of the signature, with its default and its constraints."""
    parameters = inspect.signature(fl.FishLeg).parameters
    hyperparameters = [name for name in parameters if name not in NOT_HYPERPARAMETERS]
    assert list(fl.FishLegConfig.model_fields) == hyperparameters
    assert fl.FishLegConfig(lr=0.5).momentum == parameters["momentum"].default
