"""The auxiliary loss A(λ; u) = ½ (Qu)ᵀ F_γ (Qu) − uᵀ Q u and its gradient (paper Eq. 20-21, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from fishleg_core._validation import check_callable, check_mapping, check_type
from fishleg_core._vectors import ParamDict, detach, dot
from fishleg_core.model_q import LowRankFactors, ModelQ

DampedFisher = Callable[[ParamDict], ParamDict]
"""v ↦ F_γ v on some curvature minibatch, returning detached tensors."""


@dataclass(frozen=True)
class AuxiliaryLoss:
    """``surrogate.backward()`` leaves ∇_λ A in the QForms' ``.grad``; ``value`` is A itself, ``qu`` = Q u and
    ``fisher_qu`` = F_γ Q u, all detached."""

    surrogate: Tensor
    value: Tensor
    qu: ParamDict
    fisher_qu: ParamDict


def auxiliary_loss(
    q: ModelQ, u: Mapping[str, Tensor], damped_fisher: DampedFisher, u_factors: LowRankFactors | None = None
) -> AuxiliaryLoss:
    """A(λ; u) without differentiating through the Fisher-vector product.

    v = Q(λ) u (on the autograd tape), h = F_γ v.detach() (off the tape), surrogate s = ⟨v, (h − u).detach()⟩.
    Since ∇_λ A = (∂v/∂λ)ᵀ (F_γ v − u) for symmetric F_γ and Q, ∇_λ s = ∇_λ A; the value is ½⟨v, h⟩ − ⟨v, u⟩.

    Args:
        q: Q(λ) of the model.
        u: the direction, a dict of tensors keyed by parameter name (unit norm in FishLeg).
        damped_fisher: v ↦ F_γ v on dicts keyed like ``u`` (e.g. ``fisher_vp`` with ``damping=γ``).
        u_factors: low-rank factors of blocks of u, for the cheaper low-rank product Q·u.

    Returns:
        An ``AuxiliaryLoss``: ``surrogate`` to call ``backward()`` on, and the detached ``value`` A, Q u and
        F_γ Q u.

    Raises:
        TypeError: ``q`` is not a ``ModelQ``, ``u`` not a mapping or ``damped_fisher`` not callable (or it
            returns no mapping).
        ValueError: ``damped_fisher`` returns entries that do not match Q u.
    """
    check_type("q", q, ModelQ, "a ModelQ (see build_model_q)")
    check_mapping("u", u)
    check_callable("damped_fisher", damped_fisher)
    v = q(u, u_factors)
    qu = detach(v)
    h = damped_fisher(qu)
    check_mapping("the result of damped_fisher", h)
    missing = [name for name in v if name not in h]
    if missing:
        raise ValueError(f"damped_fisher returned no entry for the parameters {missing}")
    residual = {name: (h[name] - u[name]).detach() for name in v}
    value = (0.5 * dot(v, h) - dot(v, u)).detach()
    return AuxiliaryLoss(surrogate=dot(v, residual), value=value, qu=qu, fisher_qu=h)
