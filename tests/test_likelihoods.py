"""The shared likelihood test-suite: every registered likelihood runs through every test of the contract.

Adding a likelihood to the suite is one line in LIKELIHOOD_CASES.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fishleg_core.likelihoods import LIKELIHOODS, Likelihood, resolve_likelihood
from fishleg_core.registry import UnknownNameError

# (registered name, options): one line per likelihood.
LIKELIHOOD_CASES = [
    pytest.param("gaussian", {"sigma": 0.7}, id="gaussian"),
    pytest.param("bernoulli", {}, id="bernoulli"),
    pytest.param("categorical", {}, id="categorical"),
    pytest.param("poisson", {}, id="poisson"),
    pytest.param("gaussian_learned_sigma", {"sigma": 0.7, "dtype": torch.float64}, id="gaussian_learned_sigma"),
]

# Outputs (B, 4) and (B, 3, 2): the second has an extra dim after the class dim for categorical.
OUTPUT_SHAPES = [(5, 4), (5, 3, 2)]


def test_every_registered_likelihood_is_in_the_suite():
    assert {case.values[0] for case in LIKELIHOOD_CASES} == set(LIKELIHOODS.names())


def random_outputs(shape, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_(requires_grad)


def draw(likelihood, outputs, seed=1):
    return likelihood.sample(outputs, torch.Generator().manual_seed(seed))


def per_example_scores(likelihood, outputs, targets):
    """∇_f ℓ_b for every example b: the gradient of B·L, since L is the mean of separable terms."""
    outputs = outputs.detach().requires_grad_(True)
    (scores,) = torch.autograd.grad(likelihood.nll(outputs, targets) * outputs.shape[0], outputs)
    return scores


@pytest.mark.parametrize("name,options", LIKELIHOOD_CASES)
@pytest.mark.parametrize("shape", OUTPUT_SHAPES, ids=str)
class TestLikelihoodContract:
    def test_nll_is_the_batch_mean_of_per_example_nlls(self, name, options, shape):
        likelihood = LIKELIHOODS.build(name, **options)
        outputs = random_outputs(shape)
        targets = draw(likelihood, outputs)
        per_example = [likelihood.nll(outputs[b : b + 1], targets[b : b + 1]) for b in range(shape[0])]
        torch.testing.assert_close(likelihood.nll(outputs, targets), torch.stack(per_example).mean())

    def test_hessian_vp_matches_autograd_hessian_of_per_example_nll(self, name, options, shape):
        likelihood = LIKELIHOODS.build(name, **options)
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

    def test_sample_has_zero_mean_score_and_covariance_H(self, name, options, shape):
        """Samples y ~ p(y|f) satisfy E[∇_f ℓ] = 0 and E[(∇_f ℓ · v) ∇_f ℓ] = H v (Fisher identities).

        For these canonical-link likelihoods ∇_f ℓ = E[y] − y, so the first identity says the samples have
        the right mean; the second checks their spread. Statistics: N independent draws per example, each
        coordinate's sample mean must lie within 5 standard errors (sd estimated from the N draws) of its
        expectation; with a fixed seed the test is deterministic.
        """
        likelihood = LIKELIHOODS.build(name, **options)
        N, B = 20_000, 3
        outputs = random_outputs((B, *shape[1:]))
        repeated = outputs.repeat(N, *([1] * (len(shape) - 1)))
        scores = per_example_scores(likelihood, repeated, draw(likelihood, repeated)).reshape(N, *outputs.shape)
        vector = random_outputs(outputs.shape, seed=2)
        flat_dims = tuple(range(2, scores.dim()))
        weighted = (scores * vector).sum(dim=flat_dims, keepdim=True) * scores

        expectations = [(scores, torch.zeros_like(outputs)), (weighted, likelihood.hessian_vp(outputs, vector))]
        for draws, expected in expectations:
            standard_error = draws.std(dim=0) / math.sqrt(N)
            assert (standard_error > 0).all()
            assert ((draws.mean(dim=0) - expected).abs() < 5 * standard_error).all()

    def test_sample_shape_generator_and_no_grad(self, name, options, shape):
        likelihood = LIKELIHOODS.build(name, **options)
        outputs = random_outputs(shape, requires_grad=True)
        rng_state = torch.get_rng_state()
        first, second = draw(likelihood, outputs, seed=3), draw(likelihood, outputs, seed=3)
        assert torch.equal(torch.get_rng_state(), rng_state)
        assert torch.equal(first, second)
        assert first.shape == likelihood.target_shape(outputs) and not first.requires_grad
        assert torch.isfinite(likelihood.nll(outputs, first))

    def test_targets_of_the_wrong_shape_are_rejected(self, name, options, shape):
        likelihood = LIKELIHOODS.build(name, **options)
        outputs = random_outputs(shape)
        targets = draw(likelihood, outputs)
        with pytest.raises(ValueError, match="targets of shape .* do not match outputs of shape"):
            likelihood.nll(outputs, targets[:-1])

    def test_vector_of_the_wrong_shape_is_rejected(self, name, options, shape):
        likelihood = LIKELIHOODS.build(name, **options)
        with pytest.raises(ValueError, match="vector must have the outputs' shape"):
            likelihood.hessian_vp(random_outputs(shape), random_outputs(shape[:-1]))

    def test_non_float_outputs_are_rejected(self, name, options, shape):
        likelihood = LIKELIHOODS.build(name, **options)
        with pytest.raises(TypeError, match="outputs must be a floating-point tensor"):
            likelihood.sample(torch.zeros(shape, dtype=torch.long))


def test_gaussian_nll_is_the_normal_log_density():
    outputs, targets = random_outputs((5, 3, 2)), random_outputs((5, 3, 2), seed=1)
    for sigma in [1.0, 0.3]:
        expected = -torch.distributions.Normal(outputs, sigma).log_prob(targets).sum() / 5
        torch.testing.assert_close(LIKELIHOODS.build("gaussian", sigma=sigma).nll(outputs, targets), expected)
    assert LIKELIHOODS.build("gaussian").sigma == 1.0


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.inf, "1"])
def test_gaussian_sigma_must_be_positive(sigma):
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        LIKELIHOODS.build("gaussian", sigma=sigma)


def test_bernoulli_nll_is_binary_cross_entropy_with_grey_level_targets():
    outputs = random_outputs((5, 3, 2))
    targets = torch.rand((5, 3, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = F.binary_cross_entropy_with_logits(outputs, targets, reduction="sum") / 5
    torch.testing.assert_close(LIKELIHOODS.build("bernoulli").nll(outputs, targets), expected)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_bernoulli_targets_outside_unit_interval_are_rejected(bad):
    targets = torch.full((5, 3), 0.5, dtype=torch.float64)
    targets[2, 1] = bad
    with pytest.raises(ValueError, match=r"targets must be real values in \[0, 1\]"):
        LIKELIHOODS.build("bernoulli").nll(random_outputs((5, 3)), targets)


@pytest.mark.parametrize("shape", [(5, 4), (5, 4, 3, 2)], ids=str)
def test_categorical_nll_is_cross_entropy_summed_over_extra_dims(shape):
    outputs = random_outputs(shape)
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(shape[1], shape[:1] + shape[2:], generator=generator)
    expected = F.cross_entropy(outputs, targets, reduction="sum") / shape[0]
    torch.testing.assert_close(LIKELIHOODS.build("categorical").nll(outputs, targets), expected)
    if len(shape) == 2:
        torch.testing.assert_close(expected, F.cross_entropy(outputs, targets))


def test_categorical_rejects_bad_targets_and_outputs():
    categorical = LIKELIHOODS.build("categorical")
    outputs = random_outputs((5, 4))
    with pytest.raises(TypeError, match="targets must be integer class indices; got dtype torch.float64"):
        categorical.nll(outputs, torch.zeros(5, dtype=torch.float64))
    for bad in [-1, 4]:
        with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\] for 4 classes"):
            categorical.nll(outputs, torch.tensor([0, 1, bad, 2, 3]))
    with pytest.raises(ValueError, match=r"expected targets of shape \(5,\)"):
        categorical.nll(outputs, torch.zeros(5, 4, dtype=torch.long))
    needs_2d = r"needs outputs of shape \(B, C, \*extra\) \(at least 2 dims\); got shape \(5,\)"
    with pytest.raises(ValueError, match=needs_2d):
        categorical.sample(random_outputs((5,)))


def test_resolve_likelihood():
    bernoulli = LIKELIHOODS.build("bernoulli")
    assert resolve_likelihood(bernoulli) is bernoulli
    assert isinstance(resolve_likelihood("categorical"), Likelihood)
    with pytest.raises(UnknownNameError, match="unknown likelihood 'no_such_likelihood'; known: .*bernoulli"):
        resolve_likelihood("no_such_likelihood")
    with pytest.raises(TypeError, match="likelihood must be a Likelihood or a registered name"):
        resolve_likelihood(3)
