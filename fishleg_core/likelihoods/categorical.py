"""Categorical likelihood on logits of shape (B, C, *extra); integer class targets of shape (B, *extra)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import cross_entropy

from fishleg_core.likelihoods.base import Likelihood
from fishleg_core.likelihoods.registry import LIKELIHOODS


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(Likelihood):
    """p = softmax(f) over dim 1: ℓ = −Σ_extra log p_y; H v = p ⊙ v − p (pᵀv) over the class dim."""

    min_output_dims = 2
    output_layout = "(B, C, *extra)"

    def target_shape(self, outputs: Tensor) -> torch.Size:
        return outputs.shape[:1] + outputs.shape[2:]

    def _check_target_values(self, outputs: Tensor, targets: Tensor) -> None:
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"{self!r}: targets must be integer class indices; got dtype {targets.dtype}")
        classes = outputs.shape[1]
        if bool(((targets < 0) | (targets >= classes)).any()):
            raise ValueError(f"{self!r}: class indices must lie in [0, {classes - 1}] for {classes} classes")

    def _nll_terms(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(outputs, targets.long(), reduction="none")

    def _sample(self, outputs: Tensor, generator: torch.Generator | None) -> Tensor:
        probs = torch.softmax(outputs, dim=1).movedim(1, -1)
        draws = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return draws.reshape(probs.shape[:-1])

    def _hessian_vp(self, outputs: Tensor, vector: Tensor) -> Tensor:
        p = torch.softmax(outputs, dim=1)
        pv = p * vector
        return pv - p * pv.sum(dim=1, keepdim=True)
