"""The damped-KFAC start of the A.6 study against dense algebra, for every form that takes one, and the
constant-rate certificate."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp

import fishleg_core as fl
from experiments.a6.certificate import continuation_certificate
from experiments.a6.config import StudyConfig
from experiments.a6.fit_schedule import training_streams
from fishleg_core.kfac.start import NoKroneckerStart, damped_inverse_cholesky, kfac_start, kronecker_factors
from fishleg_core.param_vectors import dot
from fishleg_core.qforms.positive import TriangularFactor

DAMPING = 0.3


def _setting():
    model = tiny_mlp(3)
    likelihood = fl.LIKELIHOODS.build("bernoulli")
    inputs = random_inputs(MLP_INPUT, 16)
    factors = kronecker_factors(model, likelihood, inputs, 2, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    directions = [
        {name: torch.randn(p.shape, generator=generator, dtype=p.dtype) for name, p in params.items()} for _ in range(3)
    ]
    batches = [random_inputs(MLP_INPUT, 8, seed=s) for s in (2, 3, 4)]
    fishers = [lambda v, x=x: fl.fisher_vp(model, likelihood, x, v, "exact", DAMPING) for x in batches]
    return model, factors, directions, fishers


def _dense_kfac_start(factors, block):
    """(G + √γπI)⁻¹ ⊗ (A + √γ/πI)⁻¹ by explicit inverses, π² = (tr G / dim G) / (tr A / dim A)."""
    G, A = factors[block].G, factors[block].A
    pi = math.sqrt((G.trace() / len(G)) / (A.trace() / len(A)))
    root = math.sqrt(DAMPING)
    left = torch.linalg.inv(G + root * pi * torch.eye(len(G), dtype=G.dtype))
    right = torch.linalg.inv(A + root / pi * torch.eye(len(A), dtype=A.dtype))
    return torch.kron(left, right)


@pytest.mark.parametrize("form", ["kron", "ekfac", "kron_sum", "diagonal"])
def test_kfac_start_is_the_rescaled_damped_kfac_inverse(form):
    model, factors, directions, fishers = _setting()
    torch.manual_seed(0)
    q = fl.build_model_q(model, {"default": form}, init_scale=0.7)
    s, started = kfac_start(q, factors, DAMPING, directions, fishers)
    assert started == [group.block.name for group in q.groups]
    for group in q.groups:
        expected = s * _dense_kfac_start(factors, group.block.name)
        dense = group.form.to_dense()
        if form == "diagonal":
            expected = torch.diag(expected.diagonal())
        if form == "kron_sum":  # term 1 is the start; the small random terms stay as built
            torch.testing.assert_close(dense, expected, atol=0.01 * 0.7, rtol=0.0)
        else:
            torch.testing.assert_close(dense, expected)

    def mean_aux(c):
        products = [{k: c * v for k, v in q(u).items()} for u in directions]
        return sum(0.5 * dot(qu, f(qu)) - dot(u, qu) for u, qu, f in zip(directions, products, fishers)) / 3

    # s is the best scalar multiple on the training directions
    assert mean_aux(1.0) < min(mean_aux(0.98), mean_aux(1.02))


def test_factored_damping_keeps_the_product_of_the_dampings():
    _, factors, _, _ = _setting()
    for f in factors.values():
        C_G, C_A = damped_inverse_cholesky(f, DAMPING)
        shift_G = torch.linalg.inv(C_G @ C_G.mT) - f.G
        shift_A = torch.linalg.inv(C_A @ C_A.mT) - f.A
        # each inverse is of the factor plus a multiple of I, and the two multiples multiply to γ
        torch.testing.assert_close(shift_G, shift_G[0, 0] * torch.eye(len(f.G), dtype=f.G.dtype))
        torch.testing.assert_close(shift_A, shift_A[0, 0] * torch.eye(len(f.A), dtype=f.A.dtype))
        assert (shift_G[0, 0] * shift_A[0, 0]).item() == pytest.approx(DAMPING)


def test_forms_without_a_kronecker_start_are_refused():
    model, factors, directions, fishers = _setting()
    q = fl.build_model_q(model, {"default": "dense"})
    before = copy.deepcopy(q.state_dict())
    assert "dense" in fl.QFORMS
    with pytest.raises(NoKroneckerStart, match="no group of q takes a KFAC start"):
        kfac_start(q, factors, DAMPING, directions, fishers)
    torch.testing.assert_close(q.state_dict(), before)


def _mean_aux(q, directions, fishers, c=1.0):
    products = [{k: c * v for k, v in q(u).items()} for u in directions]
    return sum(0.5 * dot(qu, f(qu)) - dot(u, qu) for u, qu, f in zip(directions, products, fishers)) / len(fishers)


def test_a_partial_start_leaves_the_other_groups_and_rescales_only_the_started_ones():
    model, factors, directions, fishers = _setting()
    q = fl.build_model_q(model, {"default": "kron", "2": "dense"}, init_scale=0.7)
    dense_before = copy.deepcopy(q.by_blocks["2"].state_dict())
    s, started = kfac_start(q, factors, DAMPING, directions, fishers)
    assert "2" not in started and len(started) == len(q.groups) - 1
    for key, value in q.by_blocks["2"].state_dict().items():
        torch.testing.assert_close(value, dense_before[key])
    # s minimises the mean auxiliary loss along the started groups' direction, the dense block held fixed
    kron_blocks = [q.by_blocks[name] for name in started]
    base = _mean_aux(q, directions, fishers)
    for factor in (0.98, 1.02):
        moved = copy.deepcopy(q)
        for name in started:
            group = moved.by_blocks[name]
            group.form.L.assign_(group.form.L() * factor**0.25)
            group.form.R.assign_(group.form.R() * factor**0.25)
        assert _mean_aux(moved, directions, fishers) > base
    assert s > 0 and kron_blocks


def test_tridiag_kron_takes_the_start_on_its_diagonal_blocks_with_a_small_coupling():
    model, factors, directions, fishers = _setting()
    torch.manual_seed(0)
    q = fl.build_model_q(model, {"default": "kron"}, init_scale=0.7, couple="adjacent")
    (group,) = [g for g in q.groups if isinstance(g, fl.TridiagKronQ)]
    s, started = kfac_start(q, factors, DAMPING, directions, fishers)
    assert "+".join(block.name for block in group.blocks) in started
    for i, block in enumerate(group.blocks):
        left, right = damped_inverse_cholesky(factors[block.name], DAMPING)
        torch.testing.assert_close(group.L[i](), left * s**0.25)
        torch.testing.assert_close(group.R[i](), right * s**0.25)
    for i, (C, D) in enumerate(zip(group.C, group.D)):  # coupling small against the block it feeds
        for coupling, factor in ((C, group.L[i + 1]()), (D, group.R[i + 1]())):
            ratio = torch.linalg.matrix_norm(coupling, ord=2) / torch.linalg.matrix_norm(factor, ord=2)
            assert ratio.item() == pytest.approx(group.coupling_init**0.5)


def test_kfac_warm_start_is_kfac_start_on_the_batches_and_feeds_fishleg():
    model = tiny_mlp(4)
    likelihood = fl.LIKELIHOODS.build("bernoulli")
    batches = [(x, torch.sigmoid(x)) for x in (random_inputs(MLP_INPUT, 16, seed=s) for s in (5, 6))]
    q = fl.build_model_q(model, {"default": "kron"})
    by_hand = copy.deepcopy(q)
    s, started = fl.kfac_warm_start(q, model, likelihood, batches, damping=DAMPING, samples=2)
    # the same by the lower-level calls: factors on all inputs, directions and F_γ per batch
    inputs = torch.cat([x for x, _ in batches])
    factors = kronecker_factors(model, likelihood, inputs, 2, torch.Generator().manual_seed(0))
    directions = list(fl.normalized_gradients(model, likelihood, batches))
    fishers = [lambda v, x=x: fl.fisher_vp(model, likelihood, x, v, "exact", DAMPING) for x, _ in batches]
    assert kfac_start(by_hand, factors, DAMPING, directions, fishers) == (s, started)
    torch.testing.assert_close(q.state_dict(), by_hand.state_dict())
    optimizer = fl.FishLeg(model, likelihood, lr=0.1, damping=DAMPING, q=q, aux_data=batches)
    model.zero_grad()
    likelihood.nll(model(batches[0][0]), batches[0][1]).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="at least one"):
        fl.kfac_warm_start(q, model, likelihood, [], damping=DAMPING)


def test_kfac_warm_start_leaves_a_learned_sigma_block_and_fits_the_scale_with_it(float64):
    model = tiny_mlp(3)
    likelihood = fl.GaussianLearnedSigma(0.5)
    batches = [(x, torch.tanh(x[:, :3])) for x in (random_inputs(MLP_INPUT, 16, seed=s) for s in (5, 6))]
    q = fl.build_model_q(model, {"default": "kron"}, init_scale=0.7, likelihood=likelihood)
    sigma_group = q.groups[-1]
    assert [block.name for block in sigma_group.blocks] == ["likelihood.sigma"]
    sigma_before = copy.deepcopy(sigma_group.state_dict())
    by_hand = copy.deepcopy(q)
    s, started = fl.kfac_warm_start(q, model, likelihood, batches, damping=DAMPING, samples=2)
    assert started == ["0", "2"]
    assert fl.kfac_not_started(q, started) == ["likelihood.sigma"]
    torch.testing.assert_close(sigma_group.state_dict(), sigma_before, rtol=0.0, atol=0.0)
    inputs = torch.cat([x for x, _ in batches])
    factors = kronecker_factors(model, likelihood, inputs, 2, torch.Generator().manual_seed(0))
    for group in q.groups[:-1]:
        torch.testing.assert_close(group.form.to_dense(), s * _dense_kfac_start(factors, group.block.name))
    # the scale is fitted on directions in (θ, σ), with F_γ in (θ, σ) and σ's Q part as it stays
    directions = list(fl.normalized_gradients(model, likelihood, batches, with_likelihood=True))
    assert all("likelihood.sigma" in u for u in directions)
    fishers = [lambda v, x=x: fl.fisher_vp(model, likelihood, x, v, "exact", DAMPING) for x, _ in batches]
    assert kfac_start(by_hand, factors, DAMPING, directions, fishers) == (s, started) and s > 0


def test_triangular_factor_assign():
    L = torch.tensor([[2.0, 9.0], [0.5, 0.25]], dtype=torch.float64)
    factor = TriangularFactor(torch.eye(2, dtype=torch.float64))
    factor.assign_(L)
    torch.testing.assert_close(factor(), L.tril())
    with pytest.raises(ValueError, match="positive diagonal"):
        factor.assign_(-L)
    with pytest.raises(ValueError, match="2×2 matrix"):
        factor.assign_(torch.eye(3, dtype=torch.float64))


def _certificate_setting():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4)).double()  # autoencoder
    likelihood = fl.LIKELIHOODS.build("bernoulli")
    generator = torch.Generator().manual_seed(0)
    train, heldout = (torch.rand(n, 4, generator=generator, dtype=torch.float64) for n in (64, 32))
    probes = list(fl.normalized_gradients(model, likelihood, [(heldout[:8], heldout[:8]), (heldout[8:16],) * 2]))
    evaluator = fl.ProbeEvaluator(model, likelihood, probes, heldout[16:], DAMPING)
    config = StudyConfig(
        forms=("dense",),
        n_train=64,
        batch_size=8,
        curvature_batch=8,
        damping=DAMPING,
        aux_lr=0.02,
        certificate_steps=300,
        certificate_lr_factor=1.0,
    )
    return model, likelihood, train, evaluator, config


def test_the_certificate_refuses_a_fit_that_has_not_converged():
    model, likelihood, train, evaluator, config = _certificate_setting()
    q = fl.build_model_q(model, {"default": "dense"}, init_scale=0.1)  # not fitted at all
    fitted = evaluator.evaluate(q).mean_aux_loss
    certificate = continuation_certificate("dense", q, fitted, config, model, likelihood, train, evaluator)
    assert not certificate["certified"] and certificate["relative_gain"] > 0.1
    assert certificate["heldout_aux_loss_continued"] < fitted == certificate["heldout_aux_loss_fit"]
    assert evaluator.evaluate(q).mean_aux_loss == fitted  # the fitted Q itself is left as it was
    # the continuation of the continuation has (almost) nothing left to gain: certified
    continued = copy.deepcopy(q)
    stream, batches = training_streams(model, likelihood, train, 8, 8, 99, continued)
    fl.fit_q(model, likelihood, continued, stream, batches, 1500, lr=0.02, damping=DAMPING)
    stream.close()
    fitted = evaluator.evaluate(continued).mean_aux_loss
    certificate = continuation_certificate(
        "dense",
        continued,
        fitted,
        config.model_copy(update={"certificate_lr_factor": 0.1}),
        model,
        likelihood,
        train,
        evaluator,
    )
    assert certificate["certified"], certificate


def test_the_repeat_certificate_runs_the_fits_own_schedule_again():
    model, likelihood, train, evaluator, config = _certificate_setting()
    config = config.model_copy(update={"certificate_schedule": "repeat", "steps": 40, "decay_fraction": 0.5})
    q = fl.build_model_q(model, {"default": "dense"}, init_scale=0.1)  # not fitted at all
    fitted = evaluator.evaluate(q).mean_aux_loss
    certificate = continuation_certificate("dense", q, fitted, config, model, likelihood, train, evaluator)
    assert (
        certificate["schedule"] == "repeat" and certificate["steps"] == 40 and certificate["lr"] == config.lr("dense")
    )
    assert not certificate["certified"] and certificate["relative_gain"] > 0.1
    assert evaluator.evaluate(q).mean_aux_loss == fitted  # the fitted Q itself is left as it was


def test_kfac_warm_start_with_damping_zero_on_singular_factors_is_finite():
    """γ = 0 (the paper's setting) with 3 inputs for layers of 5 inputs: A is singular, the jitter keeps it
    invertible, and FishLeg then takes finite steps."""
    model = tiny_mlp(4)
    likelihood = fl.LIKELIHOODS.build("bernoulli")
    batches = [(x, torch.sigmoid(x)) for x in (random_inputs(MLP_INPUT, 3, seed=s) for s in (5, 6))]
    factors = kronecker_factors(model, likelihood, batches[0][0], 1, torch.Generator().manual_seed(0))
    assert torch.linalg.matrix_rank(factors["2"].A).item() < factors["2"].A.shape[0]
    for left, right in [damped_inverse_cholesky(f, 0.0) for f in factors.values()]:
        assert torch.isfinite(left).all() and torch.isfinite(right).all()
    q = fl.build_model_q(model, {"default": "kron"})
    s, _ = fl.kfac_warm_start(q, model, likelihood, batches, damping=0.0)
    assert s > 0 and all(torch.isfinite(p).all() for p in q.parameters())
    optimizer = fl.FishLeg(model, likelihood, lr=0.01, damping=0.0, aux_weight_decay=1e-3, q=q, aux_data=batches)
    model.zero_grad()
    likelihood.nll(model(batches[0][0]), batches[0][1]).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_damped_inverse_cholesky_of_zero_factors_is_finite():
    zero = fl.KroneckerFactors(G=torch.zeros(3, 3, dtype=torch.float64), A=torch.eye(2, dtype=torch.float64))
    for damping in (0.0, 0.3):
        left, right = damped_inverse_cholesky(zero, damping)
        assert torch.isfinite(left).all() and torch.isfinite(right).all()
