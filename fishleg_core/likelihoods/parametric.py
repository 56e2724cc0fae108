"""Likelihoods with trainable parameters φ, p(y | f, φ), which FishLeg trains with the model's parameters."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

from torch import Tensor, nn

from fishleg_core.likelihoods.base import Likelihood

PREFIX = "likelihood."
"""The parameters of a likelihood appear in FishLeg's vectors as ``"likelihood.<name>"``."""


class ParametricLikelihood(Likelihood, nn.Module):
    """A likelihood p(y | f, φ) whose parameters φ are the ``nn.Parameter`` s of this module.

    Its Fisher in (f, φ) per example is the output-space block of the model's Fisher: with J = ∂f/∂θ,
    F = (1/B) Σ_b [[J_bᵀ H_ff J_b, J_bᵀ H_fφ], [H_φf J_b, H_φφ]], H the Fisher of p(y | f_b, φ) in (f, φ).
    Subclasses implement, besides the hooks of ``Likelihood`` (``_hessian_vp`` is H_ff):

    - ``_joint_hessian_vp(outputs, vector, params_vector)``: (H_ff v + H_fφ w per example,
      Σ_b (H_φf v_b + H_φφ w) by parameter name) for v = ``vector``, w = ``params_vector``;
    - optionally ``constrain_()``: project φ back into its domain after an optimizer step.
    """

    def __init__(self) -> None:
        nn.Module.__init__(self)

    def joint_hessian_vp(
        self, outputs: Tensor, vector: Tensor, params_vector: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """H (v, w) with H the per-example Fisher of p(y | f, φ) in (f, φ): the output part per example (shaped
        like ``outputs``) and the parameters' part summed over the batch (by the names of ``named_parameters``)."""
        self._check_outputs(outputs)
        if not isinstance(vector, Tensor) or vector.shape != outputs.shape:
            raise ValueError(f"{self!r}.joint_hessian_vp: vector must have the outputs' shape {tuple(outputs.shape)}")
        names = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(params_vector) != names:
            raise ValueError(
                f"{self!r}.joint_hessian_vp: params_vector must hold exactly {sorted(names)}; "
                f"got {sorted(params_vector)}"
            )
        return self._joint_hessian_vp(outputs, vector, params_vector)

    @abstractmethod
    def _joint_hessian_vp(
        self, outputs: Tensor, vector: Tensor, params_vector: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``joint_hessian_vp`` on checked arguments."""

    def constrain_(self) -> None:
        """Project the parameters back into their domain (in place, no autograd); nothing by default."""


def likelihood_parameters(likelihood: Likelihood) -> dict[str, nn.Parameter]:
    """The trainable parameters of a ``ParametricLikelihood`` as ``{"likelihood.<name>": parameter}``; {} for
    any other likelihood."""
    if not isinstance(likelihood, ParametricLikelihood):
        return {}
    return {PREFIX + name: p for name, p in likelihood.named_parameters() if p.requires_grad}


def split_vector(likelihood: Likelihood, vector: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the model's entries, the likelihood's entries by its own parameter names) of a FishLeg vector."""
    own = likelihood_parameters(likelihood)
    model_part = {name: t for name, t in vector.items() if name not in own}
    likelihood_part = {name[len(PREFIX) :]: vector[name] for name in own if name in vector}
    return model_part, likelihood_part
