"""Gaussian likelihood with a learned standard deviation σ (the paper's Figure 1 and FACES settings)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fishleg_core._validation import check_number
from fishleg_core.likelihoods.parametric import ParametricLikelihood
from fishleg_core.likelihoods.registry import LIKELIHOODS


@LIKELIHOODS.register("gaussian_learned_sigma")
class GaussianLearnedSigma(ParametricLikelihood):
    """y ~ N(f, σ² I) with σ a parameter: ℓ = Σ_k [(y_k − f_k)²/(2σ²) + log σ + ½ log 2π] (D outputs k).

    σ starts at ``sigma`` and ``constrain_`` clamps it to [``min_sigma``, ``max_sigma``] (the paper: 0.1 in
    [1e-4, 1]). The Fisher of (f, σ) per example is H_ff = I/σ², H_fσ = 0 (odd moments of y − f vanish),
    H_σσ = E[(D/σ − ‖y − f‖²/σ³)²] = 2D/σ².

    Args:
        sigma: the initial σ.
        min_sigma, max_sigma: the bounds ``constrain_`` keeps σ in.
        dtype, device: of the parameter σ (default: torch's default dtype, CPU).

    Raises:
        ValueError: for a non-positive σ or bounds that do not hold it.
    """

    def __init__(
        self,
        sigma: float = 0.1,
        min_sigma: float = 1e-4,
        max_sigma: float = 1.0,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        sigma = check_number("sigma", sigma, 0.0)
        self.min_sigma = check_number("min_sigma", min_sigma, 0.0)
        self.max_sigma = check_number("max_sigma", max_sigma, 0.0)
        if not self.min_sigma <= sigma <= self.max_sigma:
            raise ValueError(
                f"GaussianLearnedSigma: sigma={sigma:g} must lie in [min_sigma, max_sigma] = "
                f"[{self.min_sigma:g}, {self.max_sigma:g}]"
            )
        self.sigma = nn.Parameter(torch.tensor(sigma, dtype=dtype, device=device))

    def _nll_terms(self, outputs: Tensor, targets: Tensor) -> Tensor:
        sigma = self.sigma.to(outputs.dtype)
        z = (targets.to(outputs.dtype) - outputs) / sigma
        return 0.5 * z**2 + (torch.log(sigma) + 0.5 * math.log(2 * math.pi))

    def _sample(self, outputs: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
        return outputs + self.sigma.detach().to(outputs.dtype) * noise

    def _hessian_vp(self, outputs: Tensor, vector: Tensor) -> Tensor:
        return vector / self.sigma.detach().to(outputs.dtype) ** 2

    def _joint_hessian_vp(
        self, outputs: Tensor, vector: Tensor, params_vector: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        sigma = self.sigma.detach()
        outputs_per_example = outputs[0].numel()
        h_sigma = outputs.shape[0] * 2 * outputs_per_example / sigma**2 * params_vector["sigma"]
        return self._hessian_vp(outputs, vector), {"sigma": h_sigma}

    @torch.no_grad()
    def constrain_(self) -> None:
        """σ ← clamp(σ, min_sigma, max_sigma)."""
        self.sigma.clamp_(self.min_sigma, self.max_sigma)

    def __repr__(self) -> str:
        return f"GaussianLearnedSigma(sigma={self.sigma.item():g}, bounds=[{self.min_sigma:g}, {self.max_sigma:g}])"
