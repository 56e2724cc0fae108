"""The deep linear network: its Fisher in closed form (Bernacchia et al., 2018) against ``fisher_vp``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from reference import flat

from experiments.deep_linear import experiment as deep_linear
from experiments.deep_linear.task import build_deep_linear, half_squared_error, teacher_data
from fishleg_core import LIKELIHOODS, build_model_q, fisher_vp, kfac_warm_start

DEPTH, WIDTH, SIGMA, BATCH = 4, 3, 0.5, 7


def chain(weights: list[torch.Tensor], width: int) -> torch.Tensor:
    """W_k ⋯ W_1 for weights = [W_1, ..., W_k]; the identity for an empty list."""
    product = torch.eye(width, dtype=torch.float64)
    for weight in weights:
        product = weight @ product
    return product


def closed_form_fisher(weights: list[torch.Tensor], inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """F for f(x) = W_L ⋯ W_1 x with y ~ N(f, σ² I), on the batch's second moment Σ = XᵀX / B.

    With A_l = W_L ⋯ W_{l+1} and P_l = W_{l−1} ⋯ W_1, ∂f/∂vec(W_l) = A_l ⊗ (P_l x)ᵀ (row-major vec), so the
    (l, m) block of F = E[JᵀJ]/σ² is (A_lᵀ A_m) ⊗ (P_l Σ P_mᵀ) / σ².
    """
    n = inputs.shape[1]
    second_moment = inputs.T @ inputs / inputs.shape[0]
    layers = range(len(weights))
    after = [chain(weights[i + 1 :], n) for i in layers]  # A_i
    before = [chain(weights[:i], n) for i in layers]  # P_i
    rows = [
        torch.cat([torch.kron(after[i].T @ after[j], before[i] @ second_moment @ before[j].T) for j in layers], dim=1)
        for i in layers
    ]
    return torch.cat(rows, dim=0) / sigma**2


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_exact_fisher_vector_product_matches_the_closed_form(damping):
    model = build_deep_linear(DEPTH, WIDTH, seed=1, dtype=torch.float64)
    inputs = torch.randn(BATCH, WIDTH, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    names = [name for name, _ in model.named_parameters()]
    vector = {name: torch.randn(WIDTH, WIDTH, dtype=torch.float64) for name in names}
    product = fisher_vp(model, LIKELIHOODS.build("gaussian", sigma=SIGMA), inputs, vector, damping=damping)
    dense = closed_form_fisher([p.detach() for p in model.parameters()], inputs, SIGMA)
    expected = dense @ flat(vector, names) + damping * flat(vector, names)
    torch.testing.assert_close(flat(product, names), expected, rtol=1e-10, atol=1e-12)


def test_the_teacher_sits_at_the_noise_floor():
    data = teacher_data(depth=3, width=5, n_train=20, n_test=4000, noise=0.01, seed=0)
    assert data.noise_floor == pytest.approx(0.5 * 0.01**2, rel=0.05)  # E ½‖σ₀ε‖²/n = ½ σ₀²
    student = build_deep_linear(3, 5, seed=0)
    assert half_squared_error(student, data.test_inputs, data.test_targets).item() > 100 * data.noise_floor


def test_the_default_configuration_is_the_papers_and_the_earlier_one_is_named():
    paper = deep_linear.configuration()
    assert (paper.sigma, paper.sigma_bounds, paper.damping, paper.aux_weight_decay) == (0.1, (1e-4, 1.0), 0.0, 1e-4)
    assert (paper.aux_optimizer, paper.aux_lr, paper.aux_eps, paper.sgd_ref_lr / paper.lr) == (
        "adam",
        1e-3,
        1e-4,
        0.025,
    )
    earlier = deep_linear.configuration("multiplicative-damped")
    assert (earlier.sigma, earlier.damping, earlier.aux_optimizer, earlier.sgd_ref_lr / earlier.lr) == (
        None,
        1e-3,
        "multiplicative",
        1.0,
    )
    with pytest.raises(ValueError, match="unknown deep-linear variant 'nope'"):
        deep_linear.configuration("nope")


@pytest.mark.parametrize("name", deep_linear.OPTIMIZERS)
def test_every_optimizer_trains_the_learned_sigma_and_keeps_it_in_its_bounds(name):
    """The residuals are of order 1 ≫ σ = 0.1, so the NLL drives σ up: above 0.1 within [1e-4, 1], and held
    at an upper bound of 0.1."""
    finals = []
    for bounds in ((1e-4, 1.0), (1e-4, 0.1)):
        config = replace(deep_linear.configuration(quick=True), sigma_bounds=bounds)
        data = teacher_data(config.depth, config.width, 40, 20, config.noise, seed=0)
        model = build_deep_linear(config.depth, config.width, seed=0)
        likelihood = deep_linear.likelihood_for(config)
        optimizer = deep_linear.contender(
            name, model, likelihood, config, deep_linear.minibatch_inputs(data, 40, 1), data
        )
        loss_fn = deep_linear.loss_for(likelihood)
        for _ in range(3):
            optimizer.zero_grad()
            loss_fn(model, data.train_inputs, data.train_targets).backward()
            optimizer.step()
        finals.append(likelihood.sigma.item())
    assert 0.1 < finals[0] <= 1.0 and finals[1] == pytest.approx(0.1, rel=1e-6)


def test_both_configurations_run_a_seed():
    for variant in deep_linear.VARIANTS:
        config = deep_linear.configuration(variant, quick=True)
        result = deep_linear.run_seed(config, n_train=40, iterations=4, seed=0)
        for name in deep_linear.OPTIMIZERS:
            curve = result[name]["curve"]
            assert curve["iteration"][-1] == 4 and all(v is not None for v in curve["test_loss"])
            assert ("sigma" in curve) == (config.sigma is not None)


def test_the_kfac_refresh_restarts_q_from_the_current_network():
    """After T = 2 steps Q is the damped KFAC start of the network as it is then, on the refresh stream's first
    minibatches; without a KFAC damping the refresh is refused."""
    config = replace(deep_linear.configuration("fixed-sigma-kfac", quick=True), kfac_refresh_every=2)
    data = teacher_data(config.depth, config.width, 40, 20, config.noise, seed=0)
    model = build_deep_linear(config.depth, config.width, seed=0)
    likelihood = deep_linear.likelihood_for(config)
    optimizer = deep_linear.contender(
        "fishleg", model, likelihood, config, deep_linear.minibatch_inputs(data, 40, 1), data
    )
    started = {k: v.clone() for k, v in optimizer.q.state_dict().items()}
    for step in range(2):
        if step == 1:
            before = {k: v.clone() for k, v in optimizer.q.state_dict().items()}
        optimizer.zero_grad()
        half_squared_error(model, data.train_inputs, data.train_targets).backward()
        optimizer.step()
    expected = build_model_q(model, init_scale=config.sgd_ref_lr / config.lr)
    batches = deep_linear.minibatch_pairs(data, config.batch, seed=98)
    start = [next(batches) for _ in range(deep_linear.KFAC_START_BATCHES)]
    kfac_warm_start(expected, model, likelihood, start, damping=config.kfac_start_damping)
    refreshed = optimizer.q.state_dict()
    assert any(not torch.equal(started[k], before[k]) for k in started)  # λ learned in between
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(refreshed[key], value)
    with pytest.raises(ValueError, match="kfac_refresh_every needs kfac_start_damping"):
        deep_linear.contender("fishleg", model, likelihood, replace(config, kfac_start_damping=None), iter(()), data)


def test_the_kfac_start_takes_a_learned_sigma_and_leaves_its_block():
    """The paper's learned σ with ``kfac_start_damping``: the layers start from KFAC, σ's block stays at c·I."""
    config = replace(deep_linear.configuration("paper", quick=True), kfac_start_damping=1e-3)
    data = teacher_data(config.depth, config.width, 40, 20, config.noise, seed=0)
    model = build_deep_linear(config.depth, config.width, seed=0)
    likelihood = deep_linear.likelihood_for(config)
    plain = deep_linear.fishleg_q(model, likelihood, replace(config, kfac_start_damping=None), data)
    started = deep_linear.fishleg_q(model, likelihood, config, data)
    sigma_keys = [key for key in plain.state_dict() if "likelihood" in key]
    assert sigma_keys
    for key, value in started.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key]) == (key in sigma_keys)


def test_an_unknown_regime_is_refused(capsys):
    with pytest.raises(SystemExit):
        deep_linear.main(["--quick", "--regimes", "small,huge"])
    assert "unknown regime(s) huge; known: large, small" in capsys.readouterr().err
