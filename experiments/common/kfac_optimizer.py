"""KFAC as a torch optimizer, built from the library's damped-KFAC machinery (``kronecker_factors``,
``damped_inverse_cholesky``, ``RunningKronecker``): the training experiments' second-order contender.

Per nn.Linear block X = [W | b] with gradient ∇X (out × in+1), KFAC's factors G = E[δδᵀ] and A = E[āāᵀ]
(``kronecker_factors``: δ at targets sampled from the model, on a curvature batch) are kept as moving
averages, G ← ρ G + (1 − ρ) G_batch (from the first batch), refreshed every ``stats_every`` steps; every
``invert_every`` steps they are re-inverted with factored damping (π as in ``damped_inverse_cholesky``):

.. math::

    \\Delta = (G + \\sqrt{\\gamma}\\pi I)^{-1}\\, \\nabla X\\, (A + \\sqrt{\\gamma}/\\pi\\, I)^{-1},
    \\qquad m \\leftarrow \\beta m + \\Delta, \\qquad X \\leftarrow X - \\eta\\, \\nu\\, m,

with ν = min(1, √(κ / (η² Σ_blocks ⟨Δ, ∇X⟩))) when ``kl_clip`` κ is given (Ba et al., 2017), else ν = 1.
Parameters outside nn.Linear modules take SGD with momentum on their gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from fishleg_core.kfac.running import RunningKronecker, safe_damped_inverse
from fishleg_core.kfac.start import kronecker_factors
from fishleg_core.likelihoods import Likelihood, resolve_likelihood


class KFAC(torch.optim.Optimizer):
    """KFAC with moving-average factors, periodic damped re-inversion, heavy-ball momentum and optional KL
    clipping (module docstring).

    Args:
        model: the network; its nn.Linear modules get Kronecker-factored preconditioning.
        likelihood: a ``Likelihood`` or a registered name, matching the training loss.
        lr: η.
        curvature_data: an endless iterator of curvature batches (input tensors, or tuples whose first
            entry is the inputs); the targets are sampled from the model.
        momentum: β.
        damping: γ.
        ema: ρ of the factors' moving averages.
        stats_every: steps between refreshes of the factors (the first step refreshes).
        invert_every: steps between damped re-inversions (the first step inverts).
        kl_clip: κ of the KL clipping, None for none.
        seed: seed of the generator of the sampled targets.

    Raises:
        ValueError: for a non-positive lr, damping, period, or ρ, β outside [0, 1).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood | str,
        lr: float,
        *,
        curvature_data: Iterator[Any],
        momentum: float = 0.9,
        damping: float = 1e-3,
        ema: float = 0.95,
        stats_every: int = 10,
        invert_every: int = 10,
        kl_clip: float | None = None,
        seed: int = 0,
    ) -> None:
        if not lr > 0 or not damping > 0:
            raise ValueError(f"KFAC: lr and damping must be positive, got lr={lr}, damping={damping}")
        if not (0 <= momentum < 1 and 0 <= ema < 1):
            raise ValueError(f"KFAC: momentum and ema must lie in [0, 1), got {momentum}, {ema}")
        if stats_every < 1 or invert_every < 1:
            raise ValueError(f"KFAC: stats_every and invert_every must be >= 1, got {stats_every}, {invert_every}")
        if kl_clip is not None and not kl_clip > 0:
            raise ValueError(f"KFAC: kl_clip must be positive or None, got {kl_clip}")
        super().__init__([p for p in model.parameters() if p.requires_grad], {"lr": lr, "momentum": momentum})
        self.model, self.likelihood = model, resolve_likelihood(likelihood)
        self.curvature_data = curvature_data
        self.damping, self.kl_clip = damping, kl_clip
        self.stats_every, self.invert_every = stats_every, invert_every
        self.generator = torch.Generator().manual_seed(seed)
        self.modules = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.weight.requires_grad
        }
        self.running = RunningKronecker(ema)
        self.inverses: dict[str, tuple[Tensor, Tensor]] = {}
        self.steps = 0
        self.failed_inversions = 0

    def _refresh_factors(self) -> None:
        batch = next(self.curvature_data)
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        with torch.enable_grad():  # step runs under no_grad; the factors need δ = ∂ℓ/∂s
            fresh = kronecker_factors(self.model, self.likelihood, inputs, 1, self.generator)
        self.running.update(fresh)

    def _invert(self) -> None:
        """The damped inverses of the factors; a block whose factors are not finite or not positive definite
        (a diverged run) keeps its previous inverses (counted in ``failed_inversions``)."""
        for name, factors in self.running.factors.items():
            pair = safe_damped_inverse(factors, self.damping)
            if pair is None:
                if name not in self.inverses:
                    raise torch.linalg.LinAlgError(f"KFAC: the first factors of {name!r} have no damped inverse")
                self.failed_inversions += 1
                continue
            left, right = pair
            self.inverses[name] = (left @ left.mT, right @ right.mT)

    def preconditioned(self) -> dict[Tensor, Tensor]:
        """Δ per parameter: the Kronecker-factored direction for nn.Linear weights and biases, the gradient
        for any other parameter (zeros where there is no gradient)."""
        directions: dict[Tensor, Tensor] = {}
        for name, module in self.modules.items():
            G_inv, A_inv = self.inverses[name]
            weight, bias = module.weight, module.bias
            grads = [_grad(weight)] + ([_grad(bias).unsqueeze(1)] if bias is not None else [])
            delta = G_inv @ torch.cat(grads, 1) @ A_inv
            directions[weight] = delta[:, : weight.shape[1]]
            if bias is not None:
                directions[bias] = delta[:, -1]
        for group in self.param_groups:
            for p in group["params"]:
                directions.setdefault(p, _grad(p))
        return directions

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One KFAC step from the gradients in ``.grad`` (refreshing and re-inverting the factors when due)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.steps % self.stats_every == 0:
            self._refresh_factors()
        if self.steps % self.invert_every == 0:
            self._invert()
        directions = self.preconditioned()
        for group in self.param_groups:
            nu = 1.0
            if self.kl_clip is not None:
                vg = sum(float((directions[p] * _grad(p)).sum()) for p in group["params"]) * group["lr"] ** 2
                nu = min(1.0, math.sqrt(self.kl_clip / vg)) if vg > 0 else 1.0
            for p in group["params"]:
                buffer = self.state[p].get("momentum_buffer")
                buffer = directions[p].clone() if buffer is None else buffer.mul_(group["momentum"]).add_(directions[p])
                self.state[p]["momentum_buffer"] = buffer
                p.add_(buffer, alpha=-group["lr"] * nu)
        self.steps += 1
        return loss


def _grad(p: Tensor) -> Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)
