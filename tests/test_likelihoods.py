"""The shared likelihood test-suite: every registered likelihood runs through every check of the public contract
(``fishleg_core.testing.check_likelihood``), plus the exact densities of the built-in ones.

Adding a likelihood to the suite is one line in LIKELIHOOD_CASES.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fishleg_core.likelihoods import LIKELIHOODS, Likelihood, resolve_likelihood
from fishleg_core.registry import UnknownNameError
from fishleg_core.testing import check_likelihood
from fishleg_core.testing.likelihoods import LIKELIHOOD_CHECKS, random_outputs

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


@pytest.mark.parametrize("name,options", LIKELIHOOD_CASES)
@pytest.mark.parametrize("shape", OUTPUT_SHAPES, ids=str)
@pytest.mark.parametrize("check", LIKELIHOOD_CHECKS.values(), ids=LIKELIHOOD_CHECKS.keys())
def test_likelihood_contract(name, options, shape, check):
    check(LIKELIHOODS.build(name, **options), shape)


class SignFlippedHessian(Likelihood):
    """A Gaussian whose hessian_vp has the wrong sign: the checker must name the check it fails."""

    def _nll_terms(self, outputs, targets):
        return 0.5 * (outputs - targets) ** 2

    def _sample(self, outputs, generator):
        return outputs + torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype)

    def _hessian_vp(self, outputs, vector):
        return -vector


def test_check_likelihood_names_the_failing_check():
    with pytest.raises(AssertionError, match="check 'hessian_vp matches autograd' failed"):
        check_likelihood(SignFlippedHessian())


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
