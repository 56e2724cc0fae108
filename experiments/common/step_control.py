"""Step-size control around any optimizer, and PSGD's schedule of preconditioner-update probabilities as a
FishLeg ``aux_every`` schedule: the FishLeg variants of the autoencoder training experiment."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


class KLClipped(torch.optim.Optimizer):
    """KL clipping (Ba et al., 2017) of another optimizer's step: with Δθ the inner step and g the gradient,
    the predicted KL of the step is ½ ΔθᵀFΔθ ≈ ½ η ⟨g, −Δθ⟩ for a natural-gradient step Δθ = −η Q g, and the
    step is rescaled to θ + ν Δθ, ν = min(1, √(κ / (η ⟨g, −Δθ⟩))) (KFAC's rule with η²⟨Qg, g⟩ = η⟨g, −Δθ⟩).
    The inner optimizer's state (its momentum buffer) is kept as it made it.

    Args:
        inner: the optimizer whose steps are clipped (one parameter group).
        kl_clip: κ > 0.

    Raises:
        ValueError: for κ ≤ 0 or an inner optimizer with several parameter groups.
    """

    def __init__(self, inner: torch.optim.Optimizer, kl_clip: float) -> None:
        if not kl_clip > 0:
            raise ValueError(f"KLClipped: kl_clip must be positive, got {kl_clip}")
        if len(inner.param_groups) != 1:
            raise ValueError(
                f"KLClipped: the inner optimizer must have one parameter group, has {len(inner.param_groups)}"
            )
        self.inner, self.kl_clip = inner, kl_clip
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.defaults = inner.defaults
        self.last_scale = 1.0

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """The inner step, rescaled by ν (``last_scale``)."""
        params = self.param_groups[0]["params"]
        before = [p.detach().clone() for p in params]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        loss = self.inner.step(closure)  # type: ignore[arg-type]  # Optimizer.step's overloads
        lr = self.param_groups[0]["lr"]
        steps = torch._foreach_sub([p.detach() for p in params], before)
        predicted = -lr * sum(float((g * s).sum()) for g, s in zip(grads, steps))
        self.last_scale = min(1.0, math.sqrt(self.kl_clip / predicted)) if predicted > 0 else 1.0
        if self.last_scale < 1.0:
            for p, start, step in zip(params, before, steps):
                p.copy_(start.add_(step, alpha=self.last_scale))
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none)


def psgd_schedule(
    iterations: int, *, flat_start: int = 500, decay: float = 0.001, min_prob: float = 0.03
) -> tuple[tuple[int, int], ...]:
    """PSGD's update probability p(n) = clamp(exp(−decay·(n − flat_start)), min_prob, 1) (kron-torch's
    ``precond_update_prob_schedule``) made deterministic for FishLeg: phases (first step, period) with the
    period round(1 / p(n)), a new phase wherever the period changes, up to ``iterations``."""
    phases: list[tuple[int, int]] = []
    for n in range(iterations):
        p = min(1.0, max(min_prob, math.exp(-decay * (n - flat_start))))
        period = max(1, round(1 / p))
        if not phases or phases[-1][1] != period:
            phases.append((n, period))
    return tuple(phases)
