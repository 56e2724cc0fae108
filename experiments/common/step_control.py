"""Step-size and damping control around any optimizer (KL clipping; KFAC's quadratic-model rescaling and
Levenberg-Marquardt damping), and PSGD's schedule of preconditioner-update probabilities as a FishLeg
``aux_every`` schedule: the FishLeg and KFAC variants of the autoencoder training experiment."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

import fishleg_core as fl
from fishleg_core.fisher import fisher_vp
from fishleg_core.likelihoods import Likelihood, resolve_likelihood


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


Batch = tuple[Tensor, Tensor]
Rescale = Literal["step", "momentum"]


def damping_of(optimizer: torch.optim.Optimizer) -> float:
    """γ of a ``FishLeg`` (its ``damping``: Q learns (F + γI)⁻¹) or of an optimizer with a ``damping``
    attribute (``KFAC``: its factored damping).

    Raises:
        TypeError: the optimizer has no damping."""
    if isinstance(optimizer, fl.FishLeg):
        return float(optimizer.config.damping)
    if isinstance(getattr(optimizer, "damping", None), (int, float)):
        return float(optimizer.damping)  # type: ignore[attr-defined]
    raise TypeError(f"{type(optimizer).__name__} has no damping to control")


def set_damping(optimizer: torch.optim.Optimizer, damping: float) -> None:
    """Set γ mid-run (``damping_of``). FishLeg's auxiliary loss A(λ; u) = ½ uᵀQ(F + γI)Qu − uᵀQu then aims
    λ at the new (F + γI)⁻¹ from its next update on; KFAC's takes effect at its next re-inversion."""
    if isinstance(optimizer, fl.FishLeg):
        optimizer.set_damping(damping)
    else:
        damping_of(optimizer)  # raises for an optimizer without damping
        optimizer.damping = damping  # type: ignore[attr-defined]


class QuadraticControl(torch.optim.Optimizer):
    """KFAC's step controls (Martens & Grosse, 2015) around another optimizer's step Δ = θ' − θ, with g the
    minibatch gradient in ``.grad``, F the Fisher on the current minibatch (``fisher_vp``, exact) and γ
    the inner optimizer's damping (``damping_of``):

    - ``rescale="step"`` (§6.4): the step becomes α*Δ, α* = −gᵀΔ / (Δᵀ(F + γI)Δ), the minimiser of the
      quadratic model along Δ; ``rescale="momentum"`` (§7): α*Δ + μ*δ₀ with δ₀ the previous step, (α*, μ*)
      solving [ΔᵀCΔ ΔᵀCδ₀; δ₀ᵀCΔ δ₀ᵀCδ₀] (α, μ)ᵀ = −(gᵀΔ, gᵀδ₀)ᵀ with C = F + γI (α*Δ on the first step,
      or where that system is singular); a step whose quadratic form is not positive stays as it is.
    - ``lm_every=T₁`` (§6.5, Levenberg-Marquardt damping): every T₁ steps, with δ the step taken,
      ρ = (L(θ + δ) − L(θ)) / M(δ), M(δ) = ½ δᵀFδ + gᵀδ (ρ = −∞ when M(δ) ≥ 0), and γ ← γ·ω if ρ < ¼,
      γ ← γ/ω if ρ > ¾, ω = ``omega`` (default (19/20)^T₁); γ is set in the inner optimizer (``set_damping``).

    The batches must pass through ``watch`` so that the current minibatch is known. The inner optimizer's
    state (its momentum buffer) is kept as it made it. ``last_scale``: α* of the last step (1 without
    rescaling); ``last_rho``: the last ρ.

    Args:
        inner: the optimizer whose steps are controlled.
        model: the network it trains.
        likelihood: a ``Likelihood`` or a registered name, matching ``loss_fn``.
        loss_fn: L = loss_fn(model, inputs, targets), the training loss.
        rescale: None, "step" or "momentum".
        lm_every: T₁, None for a fixed damping.
        omega: ω of the damping updates, in (0, 1).

    Raises:
        ValueError: neither control chosen, an unknown ``rescale``, T₁ < 1, ω outside (0, 1), or a zero
            damping with Levenberg-Marquardt updates (γ·ω of 0 stays 0).
        TypeError: the inner optimizer has no damping (``damping_of``).
    """

    def __init__(
        self,
        inner: torch.optim.Optimizer,
        model: nn.Module,
        likelihood: Likelihood | str,
        loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
        *,
        rescale: Rescale | None = None,
        lm_every: int | None = None,
        omega: float | None = None,
    ) -> None:
        if rescale is None and lm_every is None:
            raise ValueError("QuadraticControl: choose rescale ('step' or 'momentum') and/or lm_every")
        if rescale not in (None, "step", "momentum"):
            raise ValueError(f"QuadraticControl: rescale must be None, 'step' or 'momentum', got {rescale!r}")
        if lm_every is not None and lm_every < 1:
            raise ValueError(f"QuadraticControl: lm_every must be >= 1, got {lm_every}")
        omega = (19 / 20) ** (lm_every or 1) if omega is None else omega
        if not 0 < omega < 1:
            raise ValueError(f"QuadraticControl: omega must lie in (0, 1), got {omega}")
        if lm_every is not None and not damping_of(inner) > 0:
            raise ValueError("QuadraticControl: Levenberg-Marquardt damping needs a positive starting damping")
        damping_of(inner)  # raises TypeError for an optimizer without damping
        self.inner, self.model, self.loss_fn = inner, model, loss_fn
        self.likelihood = resolve_likelihood(likelihood)
        self.rescale, self.lm_every, self.omega = rescale, lm_every, omega
        self.param_groups = inner.param_groups
        self.state = inner.state
        self.defaults = inner.defaults
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.batch: Batch | None = None
        self.previous: dict[str, Tensor] | None = None
        self.steps = 0
        self.last_scale, self.last_rho = 1.0, math.nan

    def watch(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """``batches`` unchanged, each remembered as the current minibatch."""
        for batch in batches:
            self.batch = batch
            yield batch

    def _fisher(self, inputs: Tensor, vector: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.enable_grad():
            return fisher_vp(self.model, self.likelihood, inputs, vector)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """The inner step, rescaled and / or followed by a damping update (class docstring)."""
        if self.batch is None:
            raise RuntimeError("QuadraticControl: no current minibatch; feed the batches through watch()")
        inputs, targets = self.batch
        before = {name: p.detach().clone() for name, p in self.params.items()}
        grad = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in self.params.items()}
        loss = self.inner.step(closure)  # type: ignore[arg-type]  # Optimizer.step's overloads
        delta = {name: p.detach() - before[name] for name, p in self.params.items()}
        for name, p in self.params.items():  # back to θ: F, g and L(θ) are taken there
            p.copy_(before[name])
        gamma = damping_of(self.inner)
        check = self.lm_every is not None and self.steps % self.lm_every == 0
        step, f_step = delta, None
        if self.rescale is not None:
            directions = [delta] + ([self.previous] if self.rescale == "momentum" and self.previous else [])
            products = [self._fisher(inputs, d) for d in directions]
            coefficients = quadratic_minimiser(grad, directions, products, gamma)
            if coefficients is not None:
                step, f_step = _combination(coefficients, directions), _combination(coefficients, products)
                self.last_scale = coefficients[0]
            else:
                f_step = products[0]
        start = model_change = math.nan
        if check:
            f_step = f_step if f_step is not None else self._fisher(inputs, step)
            model_change = 0.5 * _dot(step, f_step) + _dot(grad, step)
            start = float(self.loss_fn(self.model, inputs, targets))
        for name, p in self.params.items():
            p.add_(step[name])
        if check:
            after = float(self.loss_fn(self.model, inputs, targets))
            self.last_rho = (after - start) / model_change if model_change < 0 else -math.inf
            if self.last_rho < 0.25:
                set_damping(self.inner, gamma / self.omega)
            elif self.last_rho > 0.75:
                set_damping(self.inner, gamma * self.omega)
        self.previous = step
        self.steps += 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none)


def quadratic_minimiser(
    grad: dict[str, Tensor], directions: list[dict[str, Tensor]], products: list[dict[str, Tensor]], damping: float
) -> list[float] | None:
    """The coefficients c minimising M(Σ cᵢ dᵢ) = ½ cᵀ(DᵀCD)c + (Dᵀg)ᵀc, C = F + γI, over one or two
    directions dᵢ with products Fdᵢ: c = −(DᵀCD)⁻¹ Dᵀg; the first direction alone where the 2 × 2 system
    is singular or not positive definite; None where dᵀCd ≤ 0 for it."""
    gram = torch.tensor(
        [[_dot(d, fe) + damping * _dot(d, e) for e, fe in zip(directions, products)] for d in directions],
        dtype=torch.float64,
    )
    rhs = -torch.tensor([_dot(grad, d) for d in directions], dtype=torch.float64)
    if len(directions) == 2 and torch.linalg.det(gram) > 1e-12 * gram[0, 0] * gram[1, 1] and gram[1, 1] > 0:
        return torch.linalg.solve(gram, rhs).tolist()
    if not gram[0, 0] > 0:
        return None
    return [float(rhs[0] / gram[0, 0])] + [0.0] * (len(directions) - 1)


def _dot(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return sum(float((a[name].double() * b[name].double()).sum()) for name in a)


def _combination(coefficients: list[float], vectors: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {name: sum(c * v[name] for c, v in zip(coefficients, vectors)) for name in vectors[0]}  # type: ignore[misc]
