"""The Likelihood contract as a public test helper: ``check_likelihood(likelihood)`` runs every check on an
instance and raises ``AssertionError`` naming the check that failed.

A likelihood in one's own file passes the package's own contract with::

    from fishleg_core.testing import check_likelihood
    check_likelihood(MyLikelihood(scale=2.0))

The checks run in float64 on random outputs of ``shape`` (default (5, 4); (5, 3, 2) also checks an extra
dimension after the class dimension), against references built without the likelihood's own products:

- the NLL is the batch mean of per-example NLLs;
- ``hessian_vp`` equals the autograd Hessian of each example's NLL in its outputs times the vector;
- samples have zero mean score E[∇_f ℓ] = 0 and score covariance E[(∇_f ℓ·v) ∇_f ℓ] = H v (the Fisher
  identities), each coordinate within 5 standard errors over 20,000 draws per example;
- ``sample`` draws targets of ``target_shape``, without a graph, reproducibly from its generator and
  without touching the global RNG, with a finite NLL;
- targets or vectors of the wrong shape and non-float outputs are rejected with errors that say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from fishleg_core.likelihoods import Likelihood
from fishleg_core.testing._assertions import raises, run_check

SHAPE = (5, 4)

LikelihoodCheck = Callable[[Likelihood, tuple[int, ...]], None]


def check_likelihood(likelihood: Likelihood, shape: tuple[int, ...] = SHAPE) -> None:
    """Run every check of ``LIKELIHOOD_CHECKS`` on ``likelihood`` with outputs of ``shape`` (B, ...).

    Args:
        likelihood: the instance to check.
        shape: the shape of the random outputs, B ≥ 2 examples first.

    Raises:
        AssertionError: a check failed (or the likelihood's own code raised inside it); the message names the
            likelihood and the check.
    """
    for label, check in LIKELIHOOD_CHECKS.items():
        run_check(f"likelihood {likelihood!r}", label, check, likelihood, shape)


def random_outputs(shape: tuple[int, ...], seed: int = 0, requires_grad: bool = False) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_(requires_grad)


def draw(likelihood: Likelihood, outputs: Tensor, seed: int = 1) -> Tensor:
    return likelihood.sample(outputs, torch.Generator().manual_seed(seed))


def per_example_scores(likelihood: Likelihood, outputs: Tensor, targets: Tensor) -> Tensor:
    """∇_f ℓ_b for every example b: the gradient of B·L, since L is the mean of separable terms."""
    outputs = outputs.detach().requires_grad_(True)
    (scores,) = torch.autograd.grad(likelihood.nll(outputs, targets) * outputs.shape[0], outputs)
    return scores


def check_nll_is_a_batch_mean(likelihood: Likelihood, shape: tuple[int, ...]) -> None:
    outputs = random_outputs(shape)
    targets = draw(likelihood, outputs)
    per_example = [likelihood.nll(outputs[b : b + 1], targets[b : b + 1]) for b in range(shape[0])]
    torch.testing.assert_close(likelihood.nll(outputs, targets), torch.stack(per_example).mean())


def check_hessian_vp_matches_autograd(likelihood: Likelihood, shape: tuple[int, ...]) -> None:
    outputs = random_outputs(shape)
    targets = draw(likelihood, outputs)
    vector = random_outputs(shape, seed=2)
    hv = likelihood.hessian_vp(outputs, vector)
    n = math.prod(shape[1:])
    for b in range(shape[0]):
        H = torch.autograd.functional.hessian(
            lambda f, b=b: likelihood.nll(f[None], targets[b : b + 1]), outputs[b]
        ).reshape(n, n)
        torch.testing.assert_close(hv[b].reshape(-1), H @ vector[b].reshape(-1), rtol=1e-12, atol=1e-12)


def check_samples_satisfy_the_fisher_identities(likelihood: Likelihood, shape: tuple[int, ...]) -> None:
    """E[∇_f ℓ] = 0 and E[(∇_f ℓ · v) ∇_f ℓ] = H v over N draws for each of 3 examples: each coordinate's sample
    mean lies within 5 standard errors (sd estimated from the N draws) of its expectation; deterministic."""
    N, B = 20_000, 3
    outputs = random_outputs((B, *shape[1:]))
    repeated = outputs.repeat(N, *([1] * (len(shape) - 1)))
    scores = per_example_scores(likelihood, repeated, draw(likelihood, repeated)).reshape(N, *outputs.shape)
    vector = random_outputs(outputs.shape, seed=2)
    flat_dims = tuple(range(2, scores.dim()))
    weighted = (scores * vector).sum(dim=flat_dims, keepdim=True) * scores
    expectations = [(scores, torch.zeros_like(outputs)), (weighted, likelihood.hessian_vp(outputs, vector))]
    for label, (draws, expected) in zip(["E[score] = 0", "E[(score·v) score] = Hv"], expectations):
        standard_error = draws.std(dim=0) / math.sqrt(N)
        assert (standard_error > 0).all(), f"{label}: the samples do not vary"
        assert ((draws.mean(dim=0) - expected).abs() < 5 * standard_error).all(), label


def check_sample_shape_generator_and_no_grad(likelihood: Likelihood, shape: tuple[int, ...]) -> None:
    outputs = random_outputs(shape, requires_grad=True)
    rng_state = torch.get_rng_state()
    first, second = draw(likelihood, outputs, seed=3), draw(likelihood, outputs, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state), "sample touched the global RNG"
    assert torch.equal(first, second), "the same generator seed drew different targets"
    assert first.shape == likelihood.target_shape(outputs), "samples do not have target_shape"
    assert not first.requires_grad, "samples carry a graph"
    assert torch.isfinite(likelihood.nll(outputs, first)), "the NLL of a sample is not finite"


def check_wrong_target_shape(likelihood: Likelihood, shape: tuple[int, ...]) -> None:
    outputs = random_outputs(shape)
    targets = draw(likelihood, outputs)
    raises(
        ValueError,
        "targets of shape .* do not match outputs of shape",
        lambda: likelihood.nll(outputs, targets[:-1]),
    )


def check_wrong_vector_shape(likelihood: Likelihood, shape: tuple[int, ...]) -> None:
    raises(
        ValueError,
        "vector must have the outputs' shape",
        lambda: likelihood.hessian_vp(random_outputs(shape), random_outputs(shape[:-1])),
    )


def check_non_float_outputs(likelihood: Likelihood, shape: tuple[int, ...]) -> None:
    raises(
        TypeError,
        "outputs must be a floating-point tensor",
        lambda: likelihood.sample(torch.zeros(shape, dtype=torch.long)),
    )


LIKELIHOOD_CHECKS: dict[str, LikelihoodCheck] = {
    "nll is a batch mean": check_nll_is_a_batch_mean,
    "hessian_vp matches autograd": check_hessian_vp_matches_autograd,
    "Fisher identities of samples": check_samples_satisfy_the_fisher_identities,
    "sample shape, generator, no grad": check_sample_shape_generator_and_no_grad,
    "wrong target shape": check_wrong_target_shape,
    "wrong vector shape": check_wrong_vector_shape,
    "non-float outputs": check_non_float_outputs,
}
"""The contract, check by check: ``LIKELIHOOD_CHECKS[label](likelihood, shape)``."""
