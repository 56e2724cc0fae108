"""FishLeg's ``refresh``: running KFAC factors against an explicit EMA of dense factors, the refreshed Q against
the damped KFAC inverse (float64), exact resume from a checkpoint, and the option's errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp

import fishleg_core as fl
from fishleg_core.kfac.running import RunningKronecker
from fishleg_core.kfac.start import KroneckerFactors, NoKroneckerStart, kronecker_factors

LIKELIHOOD = fl.LIKELIHOODS.build("bernoulli")
DAMPING = 0.3


def _aux_batches(n: int = 4) -> list[torch.Tensor]:
    return [random_inputs(MLP_INPUT, 6, seed=10 + i) for i in range(n)]


def _fishleg(model, refresh, form="ekfac", aux_every=0, **options):
    return fl.FishLeg(
        model,
        LIKELIHOOD,
        lr=0.05,
        damping=DAMPING,
        q={"forms": {"default": form}},
        aux_every=aux_every,
        aux_data=_aux_batches(),
        refresh=refresh,
        seed=3,
        **options,
    )


def _train(model, optimizer, steps, start=0):
    for step in range(start, start + steps):
        x = random_inputs(MLP_INPUT, 8, seed=100 + step)
        targets = torch.sigmoid(x[:, :3])
        optimizer.zero_grad()
        LIKELIHOOD.nll(model(x), targets).backward()
        optimizer.step()


def _dense_input_factor(model, x):
    """A of the first layer by hand: the mean of ā āᵀ, ā = [x, 1]."""
    bar = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return bar.T @ bar / len(x)


def test_running_factors_are_the_explicit_moving_average_of_the_batch_factors():
    model = tiny_mlp(3)
    batches = _aux_batches(3)
    generator = torch.Generator().manual_seed(0)
    fresh = [kronecker_factors(model, LIKELIHOOD, x, 2, generator) for x in batches]
    running = RunningKronecker(0.7)
    for factors in fresh:
        running.update(factors)
    for name in fresh[0]:
        for side in ("G", "A"):
            values = [getattr(f[name], side) for f in fresh]
            expected = 0.7 * (0.7 * values[0] + 0.3 * values[1]) + 0.3 * values[2]
            torch.testing.assert_close(getattr(running.factors[name], side), expected, rtol=1e-12, atol=1e-14)
    explicit_A = 0.7 * (0.7 * _dense_input_factor(model, batches[0]) + 0.3 * _dense_input_factor(model, batches[1]))
    explicit_A = explicit_A + 0.3 * _dense_input_factor(model, batches[2])
    torch.testing.assert_close(running.factors["0"].A, explicit_A, rtol=1e-12, atol=1e-14)


def test_fishleg_keeps_the_moving_average_of_its_auxiliary_batches_factors():
    """Statistics every 2 steps from the auxiliary stream, at the parameters of that step, with the refresh's
    own generator."""
    model = tiny_mlp(3)
    optimizer = _fishleg(model, {"every": 4, "decay": 0.6, "stats_every": 2})
    replay = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3 + 1)
    expected: dict[str, KroneckerFactors] = {}
    for step in range(5):
        if step % 2 == 0:
            replay.load_state_dict(model.state_dict())
            fresh = kronecker_factors(replay, LIKELIHOOD, _aux_batches()[step // 2], 1, generator)
            expected = {
                name: f
                if name not in expected
                else KroneckerFactors(G=0.6 * expected[name].G + 0.4 * f.G, A=0.6 * expected[name].A + 0.4 * f.A)
                for name, f in fresh.items()
            }
        _train(model, optimizer, 1, start=step)
    assert optimizer.refresh is not None and optimizer.refresh.refreshes == 2  # steps 0 and 4
    for name, factors in expected.items():
        torch.testing.assert_close(optimizer.refresh.running.factors[name].G, factors.G, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(optimizer.refresh.running.factors[name].A, factors.A, rtol=1e-12, atol=1e-14)


def _damped_kfac_inverse(factors: KroneckerFactors, damping: float) -> torch.Tensor:
    """(G + √γπI)⁻¹ ⊗ (A + √γ/πI)⁻¹ by explicit inverses, π² = (tr G / dim G) / (tr A / dim A)."""
    G, A = factors.G, factors.A
    pi = math.sqrt((G.trace() / len(G)) / (A.trace() / len(A)))
    root = math.sqrt(damping)
    left = torch.linalg.inv(G + root * pi * torch.eye(len(G), dtype=G.dtype))
    right = torch.linalg.inv(A + root / pi * torch.eye(len(A), dtype=A.dtype))
    return torch.kron(left, right)


@pytest.mark.parametrize("form", ["ekfac", "kron"])
def test_a_refresh_sets_q_to_the_damped_kfac_inverse_of_the_running_factors(form):
    model = tiny_mlp(3)
    optimizer = _fishleg(model, {"every": 3, "decay": 0.5, "damping": DAMPING}, form=form, aux_every=1)
    _train(model, optimizer, 4)  # refreshed at steps 0 and 3, each before that step's auxiliary update
    refresh = optimizer.refresh
    assert refresh is not None
    refresh.refresh()
    for group in optimizer.q.groups:
        expected = _damped_kfac_inverse(refresh.running.factors[group.block.name], DAMPING)
        torch.testing.assert_close(group.form.to_dense(), expected, rtol=1e-9, atol=1e-12)


def test_keep_rotates_the_learned_ekfac_scales_into_the_new_basis():
    """scales="keep": Q = diag(a) K diag(b²) Kᵀ diag(a) with K = C_G ⊗ C_A the new Cholesky factors and a, b² as
    the auxiliary loss left them."""
    model = tiny_mlp(3)
    optimizer = _fishleg(model, {"every": 2, "damping": DAMPING, "scales": "keep"}, aux_every=1)
    _train(model, optimizer, 2)  # λ learned at steps 0 and 1: A and B² away from 1
    refresh = optimizer.refresh
    assert refresh is not None
    forms = [group.form for group in optimizer.q.groups]
    learned = [(form.A().clone(), form.B2().clone()) for form in forms]
    assert not torch.allclose(learned[0][0], torch.ones_like(learned[0][0]))
    refresh.refresh()
    for group, form, (a, b2) in zip(optimizer.q.groups, forms, learned):
        torch.testing.assert_close(form.A(), a, rtol=1e-12, atol=0)
        factors = refresh.running.factors[group.block.name]
        left, right = fl.kfac.damped_inverse_cholesky(factors, DAMPING)
        K = torch.kron(left, right)
        diagonal_a = a.reshape(-1, 1)
        expected = (diagonal_a * K) @ (b2.reshape(-1, 1) * (K.T * diagonal_a.T))
        torch.testing.assert_close(form.to_dense(), expected, rtol=1e-9, atol=1e-12)


def test_training_with_refresh_resumes_bit_identically_from_a_checkpoint():
    options = {"every": 2, "decay": 0.8, "damping": DAMPING}
    model = tiny_mlp(3)
    optimizer = _fishleg(model, options, aux_every=1)
    _train(model, optimizer, 3)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    _train(model, optimizer, 4, start=3)

    resumed_model = tiny_mlp(3, seed=5)
    resumed = _fishleg(resumed_model, options, aux_every=1)
    resumed_model.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    _train(resumed_model, resumed, 4, start=3)
    for name, p in model.state_dict().items():
        assert torch.equal(p, resumed_model.state_dict()[name]), name
    for name, t in optimizer.q.state_dict().items():
        assert torch.equal(t, resumed.q.state_dict()[name]), name


@pytest.mark.parametrize(
    ("refresh", "error", "message"),
    [
        ({"every": 0}, ValueError, "every"),
        ({"decay": 0.9}, ValueError, "every"),
        ({"every": 5, "decay": 1.0}, ValueError, "decay"),
        ({"every": 5, "damping": -1.0}, ValueError, "damping"),
        ({"every": 5, "scales": "rotate"}, ValueError, "scales"),
        ({"every": 5, "period": 3}, ValueError, "period"),
        ("every 5", TypeError, "mapping"),
    ],
)
def test_bad_refresh_options_raise_clear_errors(refresh, error, message):
    with pytest.raises(error, match=message):
        _fishleg(tiny_mlp(3), refresh)


def test_refresh_needs_a_form_with_a_kfac_start_and_the_model_output():
    with pytest.raises(NoKroneckerStart, match="no group of Q takes a KFAC refresh"):
        _fishleg(tiny_mlp(3), {"every": 5}, form="dense")
    with pytest.raises(ValueError, match="output_fn must be None"):
        _fishleg(tiny_mlp(3), {"every": 5}, output_fn=lambda out: out)
