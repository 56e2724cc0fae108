"""A likelihood with parameters (``GaussianLearnedSigma``): its Fisher in (θ, σ) against a dense reference,
its own Q block, and its training by FishLeg with the model."""

from __future__ import annotations

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from reference import flat

import fishleg_core as fl

SIGMA = 0.3


def _setting(outputs=3, batch=6):
    model = tiny_mlp(outputs)
    likelihood = fl.GaussianLearnedSigma(SIGMA, dtype=torch.float64)
    inputs = random_inputs(MLP_INPUT, batch, seed=4)
    names = [name for name, _ in model.named_parameters()] + ["likelihood.sigma"]
    return model, likelihood, inputs, names


def dense_fisher_from_kl(model, inputs, sigma):
    """F = ∇²_(θ,σ) KL(p(·|θ₀, σ₀) ‖ p(·|θ, σ)) at (θ₀, σ₀), averaged over the batch, with the Gaussian KL in
    closed form, Σ_k [log(σ/σ₀) + (σ₀² + (f_k − f₀_k)²)/(2σ²) − ½]: an autograd reference that shares no
    formula with the library's."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    sizes = [p.numel() for p in params.values()]
    theta0 = torch.cat([p.reshape(-1) for p in params.values()] + [torch.tensor([sigma], dtype=torch.float64)])
    with torch.no_grad():
        f0 = model(inputs)

    def kl(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta[:-1], sizes)
        current = {name: piece.reshape(p.shape) for (name, p), piece in zip(params.items(), pieces)}
        f = torch.func.functional_call(model, current, (inputs,))
        s = theta[-1]
        terms = torch.log(s / sigma) + (sigma**2 + (f - f0) ** 2) / (2 * s**2) - 0.5
        return terms.sum() / inputs.shape[0]

    return torch.autograd.functional.hessian(kl, theta0)


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_fisher_vp_including_sigma_matches_the_dense_fisher(damping):
    model, likelihood, inputs, names = _setting()
    generator = torch.Generator().manual_seed(5)
    shapes = {name: p.shape for name, p in model.named_parameters()} | {"likelihood.sigma": torch.Size([])}
    vector = {name: torch.randn(shape, generator=generator, dtype=torch.float64) for name, shape in shapes.items()}
    product = fl.fisher_vp(model, likelihood, inputs, vector, damping=damping)
    dense = dense_fisher_from_kl(model, inputs, SIGMA)
    v = flat(vector, names)
    torch.testing.assert_close(flat(product, names), dense @ v + damping * v, rtol=1e-10, atol=1e-12)


def test_sigma_block_of_the_fisher_is_2d_over_sigma_squared():
    model, likelihood, inputs, _ = _setting(outputs=3)
    zero = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    product = fl.fisher_vp(model, likelihood, inputs, {**zero, "likelihood.sigma": torch.tensor(1.0).double()})
    assert product["likelihood.sigma"].item() == pytest.approx(2 * 3 / SIGMA**2, rel=1e-12)
    assert all(product[name].abs().max().item() == 0 for name in zero)  # F_θσ = 0


def test_sampling_fisher_methods_refuse_likelihood_parameters():
    model, likelihood, inputs, _ = _setting()
    vector = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    vector["likelihood.sigma"] = torch.tensor(1.0, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="method 'sampled' has no Fisher for the parameters"):
        fl.fisher_vp(model, likelihood, inputs, vector, method="sampled")


def test_fishleg_gives_sigma_its_own_q_block_and_trains_it_within_its_bounds():
    """A teacher of the model's class with noise 0.05: σ, started at 0.3, learns towards the residual scale;
    a lower bound of 0.2 holds it there. Q₀ = 0.025·I as in the paper (η Q₀ = 1e-3): from Q₀ = 0.1·I the
    first steps on σ overshoot (its curvature 2D/σ² grows as σ falls) and σ sits at its upper bound a while."""
    teacher, data_noise = tiny_mlp(2, seed=1), 0.05
    inputs = random_inputs(MLP_INPUT, 64, seed=2)
    with torch.no_grad():
        targets = teacher(inputs) + data_noise * torch.randn(64, 2, dtype=torch.float64)
    finals = {}
    for lower in (1e-4, 0.2):
        model = tiny_mlp(2, seed=1)  # starts at the teacher: only σ has much to learn
        likelihood = fl.GaussianLearnedSigma(SIGMA, min_sigma=lower, dtype=torch.float64)
        optimizer = fl.FishLeg(
            model,
            likelihood,
            lr=0.04,
            q={"init_scale": 0.025},
            damping=0.0,
            aux_weight_decay=1e-4,
            aux_every=1,
            aux_optimizer={"name": "adam", "lr": 1e-3},
            aux_data=[inputs],
        )
        assert "likelihood.sigma" in optimizer.q.param_names
        for _ in range(300):
            optimizer.zero_grad()
            likelihood.nll(model(inputs), targets).backward()
            optimizer.step()
            assert lower <= likelihood.sigma.item() <= 1.0
        finals[lower] = likelihood.sigma.item()
    assert 0.02 < finals[1e-4] < 0.06 and finals[0.2] == pytest.approx(0.2)


def test_bounds_are_checked():
    with pytest.raises(ValueError, match=r"sigma=2 must lie in \[min_sigma, max_sigma\]"):
        fl.GaussianLearnedSigma(2.0)
