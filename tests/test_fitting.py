"""Fitting Q on frozen models against closed forms, and the exact probe evaluation."""

from __future__ import annotations

import itertools

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from reference import flat, gaussian_fisher, trainable, unflat
from torch import nn

import fishleg_core as fl

SIGMA, DAMPING = 0.5, 0.1


def random_directions(model, seed):
    """An endless stream of random unit vectors in parameter space."""
    generator = torch.Generator().manual_seed(seed)
    params = trainable(model)
    while True:
        u = {n: torch.randn(p.shape, generator=generator, dtype=p.dtype) for n, p in params.items()}
        yield fl.param_vectors.scale(u, 1 / fl.param_vectors.norm(u))


def cosine(steps):
    return lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)


def fit_and_evaluate(model, likelihood, q, inputs, steps, lr):
    fl.fit_q(
        model,
        likelihood,
        q,
        random_directions(model, 1),
        itertools.repeat(inputs),
        steps,
        lr=lr,
        damping=DAMPING,
        schedule=cosine(steps),
    )
    probes = list(itertools.islice(random_directions(model, 2), 8))
    return fl.ProbeEvaluator(model, likelihood, probes, inputs, DAMPING).evaluate(q)


def linear_gaussian_problem(covariance):
    """One bias-free Linear layer, Gaussian inputs whose empirical second moment is exactly ``covariance``,
    Gaussian likelihood: the damped Fisher is I ⊗ (Σ/σ² + γI) (row-major), a Kronecker product."""
    generator = torch.Generator().manual_seed(0)
    Z = torch.randn(200, 4, generator=generator)
    whitened = Z @ torch.linalg.inv(torch.linalg.cholesky(Z.T @ Z / len(Z))).T
    inputs = whitened @ torch.linalg.cholesky(covariance).T
    model = nn.Linear(4, 3, bias=False)
    return model, fl.LIKELIHOODS.build("gaussian", sigma=SIGMA), inputs


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("correlated", [True, False], ids=["correlated", "diagonal-covariance"])
def test_closed_form_linear_gaussian(correlated):
    covariance = torch.tensor([[1.0, 0.8, 0.3, 0.0], [0.8, 1.0, 0.5, 0.2], [0.3, 0.5, 1.0, 0.6], [0.0, 0.2, 0.6, 1.0]])
    if not correlated:
        covariance = torch.diag(torch.tensor([0.2, 0.5, 1.0, 2.0]))
    model, likelihood, inputs = linear_gaussian_problem(covariance)
    expected_fisher = torch.kron(torch.eye(3), covariance / SIGMA**2 + DAMPING * torch.eye(4))
    F = gaussian_fisher(model, inputs, SIGMA) + DAMPING * torch.eye(12)
    torch.testing.assert_close(F, expected_fisher)

    kron, diagonal = (
        fit_and_evaluate(model, likelihood, fl.build_model_q(model, {"Linear": form}), inputs, 1500, 0.05)
        for form in ("kron", "diagonal")
    )
    assert kron.mean_normalized_error < 0.05
    if correlated:
        assert diagonal.mean_normalized_error > 0.2
    else:
        assert diagonal.mean_normalized_error < 0.05


@pytest.mark.usefixtures("float64")
def test_closed_form_dense_q_converges_to_the_inverse_damped_fisher():
    model = tiny_mlp(2)
    likelihood = fl.LIKELIHOODS.build("gaussian", sigma=SIGMA)
    inputs = random_inputs(MLP_INPUT, 30)
    block = fl.joint_block(model)
    q = fl.ModelQ([fl.BlockQ(block, fl.QFORMS.build("dense", shape=block.shape, init_scale=0.5))])
    result = fit_and_evaluate(model, likelihood, q, inputs, 3000, 0.02)
    assert result.mean_normalized_error < 0.02


def dense_setting():
    """A small Gaussian MLP (float64), its dense F_γ on 10 inputs, and 3 random probe directions."""
    model = tiny_mlp(2)
    likelihood = fl.LIKELIHOODS.build("gaussian", sigma=SIGMA)
    inputs = random_inputs(MLP_INPUT, 10)
    params = trainable(model)
    F = gaussian_fisher(model, inputs, SIGMA) + DAMPING * torch.eye(sum(p.numel() for p in params.values()))
    probes = list(itertools.islice(random_directions(model, 3), 3))
    return model, likelihood, inputs, params, list(params), F, probes


@pytest.mark.usefixtures("float64")
def test_probe_evaluation_against_dense_linear_algebra():
    model, likelihood, inputs, params, names, F, probes = dense_setting()
    evaluator = fl.ProbeEvaluator(model, likelihood, probes, inputs, DAMPING, chunk_size=4)
    q = fl.build_model_q(model, init_scale=0.3)
    result = evaluator.evaluate(q)
    Q = q.to_dense().detach()
    for i, u in enumerate(probes):
        u = flat(u, names)
        x = torch.linalg.solve(F, u)
        v = Q @ u
        A, A_star = 0.5 * v @ F @ v - u @ v, -0.5 * u @ x
        assert result.aux_loss[i] == pytest.approx(A.item(), rel=1e-10)
        assert result.optimal_aux_loss[i] == pytest.approx(A_star.item(), rel=1e-8)
        assert result.normalized_error[i] == pytest.approx(((A - A_star) / -A_star).sqrt().item(), rel=1e-6)
        assert result.aux_loss[i] >= result.optimal_aux_loss[i]

    def exact_inverse(u):
        return unflat(torch.linalg.solve(F, flat(u, names)), params)

    assert max(evaluator.evaluate(exact_inverse).normalized_error) < 1e-6


@pytest.mark.usefixtures("float64")
def test_preconditioned_conjugate_gradients_solve_the_same_system_in_fewer_iterations():
    model, likelihood, inputs, params, names, F, probes = dense_setting()
    plain = fl.ProbeEvaluator(model, likelihood, probes, inputs, DAMPING)
    P = torch.linalg.inv(F + 0.1 * torch.diag(F.diagonal()))  # a symmetric positive-definite P ≈ F_γ⁻¹
    preconditioned = fl.ProbeEvaluator(
        model, likelihood, probes, inputs, DAMPING, preconditioner=lambda u: unflat(P @ flat(u, names), params)
    )
    for x, y, u in zip(plain.solutions, preconditioned.solutions, probes):
        expected = torch.linalg.solve(F, flat(u, names))
        torch.testing.assert_close(flat(x, names), expected, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(flat(y, names), expected, rtol=1e-8, atol=1e-10)
    assert len(preconditioned.cg_iterations) == len(plain.cg_iterations) == 3
    assert sum(preconditioned.cg_iterations) < sum(plain.cg_iterations)
    with pytest.raises(TypeError, match="preconditioner"):
        fl.ProbeEvaluator(model, likelihood, probes, inputs, DAMPING, preconditioner="kfac")


@pytest.mark.usefixtures("float64")
def test_solutions_given_to_the_evaluator_skip_conjugate_gradients():
    model, likelihood, inputs, params, names, F, probes = dense_setting()
    solved = fl.ProbeEvaluator(model, likelihood, probes, inputs, DAMPING)
    reused = fl.ProbeEvaluator(model, likelihood, probes, inputs, DAMPING, solutions=solved.solutions)
    q = fl.build_model_q(model, init_scale=0.3)
    assert reused.evaluate(q) == solved.evaluate(q)
    assert reused.cg_iterations == [] and len(solved.cg_iterations) == len(probes)
    with pytest.raises(ValueError, match="solutions: 1 given for 3 probes"):
        fl.ProbeEvaluator(model, likelihood, probes, inputs, DAMPING, solutions=solved.solutions[:1])
    wrong = [{name: x[name][..., :1] for name in x} for x in solved.solutions]
    with pytest.raises(ValueError, match=r"solutions\[0\]"):
        fl.ProbeEvaluator(model, likelihood, probes, inputs, DAMPING, solutions=wrong)
