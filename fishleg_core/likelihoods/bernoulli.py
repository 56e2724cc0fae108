"""Bernoulli likelihood on logits; targets in [0, 1] (grey-level intensities allowed)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import binary_cross_entropy_with_logits

from fishleg_core.likelihoods.base import Likelihood
from fishleg_core.likelihoods.registry import LIKELIHOODS


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """p = sigmoid(f): ℓ = −Σ_k [y_k log p_k + (1 − y_k) log(1 − p_k)]; H = diag(p (1 − p))."""

    def _check_target_values(self, outputs: Tensor, targets: Tensor) -> None:
        if targets.is_complex() or not bool(((targets >= 0) & (targets <= 1)).all()):
            raise ValueError(f"{self!r}: targets must be real values in [0, 1]")

    def _nll_terms(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), reduction="none")

    def _sample(self, outputs: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.bernoulli(torch.sigmoid(outputs), generator=generator)

    def _hessian_vp(self, outputs: Tensor, vector: Tensor) -> Tensor:
        p = torch.sigmoid(outputs)
        return p * (1 - p) * vector
