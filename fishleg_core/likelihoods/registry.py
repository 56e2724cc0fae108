"""The registry of likelihoods: ``LIKELIHOODS.build(name, **options)``."""

from __future__ import annotations

from fishleg_core.likelihoods.base import Likelihood
from fishleg_core.registry import Registry

LIKELIHOODS: Registry = Registry("likelihood")


def resolve_likelihood(likelihood: Likelihood | str) -> Likelihood:
    """A ``Likelihood`` instance as is, or a registered name built with its default options."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, str):
        return LIKELIHOODS.build(likelihood)
    raise TypeError(f"likelihood must be a Likelihood or a registered name; got {type(likelihood).__name__}")
