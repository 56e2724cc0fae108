"""Likelihoods p(y | network outputs): batch NLL, sampling from the model and the output-space Hessian.

Importing this package registers the built-in likelihoods in ``LIKELIHOODS``.
"""

from fishleg_core.likelihoods.base import Likelihood
from fishleg_core.likelihoods.parametric import ParametricLikelihood, likelihood_parameters
from fishleg_core.likelihoods.registry import LIKELIHOODS, resolve_likelihood

# Registration order is the order of LIKELIHOODS.names().
from fishleg_core.likelihoods.gaussian import GaussianLikelihood  # isort: skip
from fishleg_core.likelihoods.bernoulli import BernoulliLikelihood  # isort: skip
from fishleg_core.likelihoods.categorical import CategoricalLikelihood  # isort: skip
from fishleg_core.likelihoods.poisson import PoissonLikelihood  # isort: skip
from fishleg_core.likelihoods.gaussian_learned import GaussianLearnedSigma  # isort: skip

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "resolve_likelihood",
    "GaussianLikelihood",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "PoissonLikelihood",
    "GaussianLearnedSigma",
    "ParametricLikelihood",
    "likelihood_parameters",
]
