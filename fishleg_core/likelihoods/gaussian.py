"""Gaussian likelihood with fixed standard deviation σ; the outputs are the means."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fishleg_core._validation import check_number
from fishleg_core.likelihoods.base import Likelihood
from fishleg_core.likelihoods.registry import LIKELIHOODS


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(Likelihood):
    """y ~ N(f, σ² I): ℓ = Σ_k [(y_k − f_k)² / (2σ²) + log σ + ½ log 2π], normalising constant included.

    H = I / σ²; ``sigma`` (default 1.0) is fixed, not learned.
    """

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = check_number("sigma", sigma, 0.0)

    def _nll_terms(self, outputs: Tensor, targets: Tensor) -> Tensor:
        z = (targets.to(outputs.dtype) - outputs) / self.sigma
        return 0.5 * z**2 + (math.log(self.sigma) + 0.5 * math.log(2 * math.pi))

    def _sample(self, outputs: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
        return outputs + self.sigma * noise

    def _hessian_vp(self, outputs: Tensor, vector: Tensor) -> Tensor:
        return vector / self.sigma**2

    def __repr__(self) -> str:
        return f"GaussianLikelihood(sigma={self.sigma:g})"
