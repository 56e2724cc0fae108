"""Poisson likelihood on log-rates; targets are non-negative counts."""

from __future__ import annotations

import torch
from torch import Tensor

from fishleg_core.likelihoods.base import Likelihood
from fishleg_core.likelihoods.registry import LIKELIHOODS


@LIKELIHOODS.register("poisson")
class PoissonLikelihood(Likelihood):
    """y ~ Poisson(λ = exp(f)): ℓ = Σ_k [exp(f_k) − y_k f_k + log y_k!]; H = diag(exp(f))."""

    def _check_target_values(self, outputs: Tensor, targets: Tensor) -> None:
        if not bool(((targets >= 0) & (targets == targets.round())).all()):
            raise ValueError(f"{self!r}: targets must be non-negative integer counts")

    def _nll_terms(self, outputs: Tensor, targets: Tensor) -> Tensor:
        y = targets.to(outputs.dtype)
        return outputs.exp() - y * outputs + torch.lgamma(y + 1)

    def _sample(self, outputs: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.poisson(outputs.exp(), generator=generator)

    def _hessian_vp(self, outputs: Tensor, vector: Tensor) -> Tensor:
        return outputs.exp() * vector
