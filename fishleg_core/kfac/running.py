"""Running KFAC statistics, and a Q whose Kronecker part is refreshed from them while FishLeg trains.

``RunningKronecker`` keeps the exponential moving averages of each block's KFAC factors (``kronecker_factors``
on a batch, KFAC's G = E[δδᵀ] at targets sampled from the model and A = E[āāᵀ]):

.. math::

    G \\leftarrow \\beta G + (1 - \\beta) G_{batch}, \\qquad A \\leftarrow \\beta A + (1 - \\beta) A_{batch},

the first batch taken as it is. ``KFACRefresh`` (FishLeg's ``refresh`` option) updates them every
``stats_every`` steps from an auxiliary batch and, every ``every`` steps, sets each group of Q that has a KFAC
start to the damped inverse of the averages through its ``set_kronecker``:

.. math::

    Q \\leftarrow (G + \\sqrt{\\gamma}\\pi I)^{-1} \\otimes (A + \\sqrt{\\gamma}/\\pi\\, I)^{-1}

(``damped_inverse_cholesky``), with ``scales="reset"``; with ``scales="keep"`` the forms' learned scales on
the Kronecker part (``QForm.kronecker_scales``: ``ekfac``'s A and B²) stay as FishLeg's auxiliary loss left
them, applied in the new basis. Between refreshes the auxiliary loss trains Q as usual: SOAP's idea (a basis
from running statistics), with scales learned by FishLeg's auxiliary loss instead of estimated by Adam.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from fishleg_core._validation import validate
from fishleg_core.kfac.start import KroneckerFactors, damped_inverse_cholesky, kronecker_factors
from fishleg_core.likelihoods import Likelihood
from fishleg_core.model_q import ModelQ
from fishleg_core.qforms.base import QForm


class RefreshOptions(BaseModel):
    """FishLeg's ``refresh`` option: ``every`` (steps between refreshes of Q, the first step included),
    ``decay`` (β of the factors' moving averages, in [0, 1)), ``damping`` (γ >= 0 of the damped inverse),
    ``stats_every`` (steps between updates of the averages, the first step included), ``scales`` ("reset"
    or "keep" the forms' learned scales) and ``samples`` (targets drawn per input for G)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: Annotated[int, Field(ge=1)]
    decay: Annotated[float, Field(ge=0, lt=1)] = 0.95
    damping: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-3
    stats_every: Annotated[int, Field(ge=1)] = 1
    scales: Literal["reset", "keep"] = "reset"
    samples: Annotated[int, Field(ge=1)] = 1


def refresh_options(spec: RefreshOptions | Mapping[str, Any]) -> RefreshOptions:
    """``spec`` validated (a mapping of ``RefreshOptions``' fields, ``every`` required).

    Raises:
        InvalidConfigError: a field is unknown, missing or out of range (one line per field).
        TypeError: ``spec`` is neither ``RefreshOptions`` nor a mapping.
    """
    if isinstance(spec, RefreshOptions):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"FishLeg refresh must be a mapping of options or None, got {type(spec).__name__}")
    return validate(RefreshOptions, "FishLeg refresh", spec)


class RunningKronecker:
    """The moving averages of each block's KFAC factors, by block name (module docstring)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.factors: dict[str, KroneckerFactors] = {}

    def update(self, fresh: Mapping[str, KroneckerFactors]) -> None:
        """F ← β F + (1 − β) F_batch for each factor of ``fresh`` (a block seen first takes F_batch)."""
        weight = 1 - self.decay
        for name, new in fresh.items():
            old = self.factors.get(name)
            self.factors[name] = (
                new if old is None else KroneckerFactors(G=old.G.lerp(new.G, weight), A=old.A.lerp(new.A, weight))
            )

    def state_dict(self) -> dict[str, Any]:
        return {"factors": {name: (f.G.clone(), f.A.clone()) for name, f in self.factors.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.factors = {name: KroneckerFactors(G=G.clone(), A=A.clone()) for name, (G, A) in state["factors"].items()}


def safe_damped_inverse(factors: KroneckerFactors, damping: float) -> tuple[Tensor, Tensor] | None:
    """``damped_inverse_cholesky(factors, damping)``, or None where the factors are not finite or a damped
    factor is not positive definite (a diverged run)."""
    if not (torch.isfinite(factors.G).all() and torch.isfinite(factors.A).all()):
        return None
    try:
        return damped_inverse_cholesky(factors, damping)
    except torch.linalg.LinAlgError:
        return None


class KFACRefresh:
    """Running KFAC factors of ``model`` and the refresh of ``q``'s Kronecker part from them (module
    docstring); ``step`` is called by FishLeg at each step with that step's auxiliary inputs.

    ``refreshes`` counts the refreshes made, ``failed`` the groups a refresh left as they were (factors not
    finite or not positive definite)."""

    def __init__(
        self, q: ModelQ, model: nn.Module, likelihood: Likelihood, options: RefreshOptions, generator: torch.Generator
    ) -> None:
        self.q, self.model, self.likelihood, self.options = q, model, likelihood, options
        self.generator = generator
        self.running = RunningKronecker(options.decay)
        self.refreshes = 0
        self.failed = 0

    def statistics_due(self, step: int) -> bool:
        return step % self.options.stats_every == 0

    def step(self, step: int, inputs: Tensor | None) -> None:
        """Update the averages from ``inputs`` (a batch of model inputs; given when ``statistics_due``),
        then refresh Q when ``step`` is a multiple of ``every`` and averages exist."""
        if inputs is not None:
            with torch.enable_grad():
                fresh = kronecker_factors(self.model, self.likelihood, inputs, self.options.samples, self.generator)
            self.running.update(fresh)
        if step % self.options.every == 0 and self.running.factors:
            self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Set every group of Q with factors for all its blocks (and a ``set_kronecker``) to the damped
        inverse of the running factors, keeping or resetting the forms' learned scales."""
        factors, damping = self.running.factors, self.options.damping
        for group in self.q.groups:
            if not all(block.name in factors for block in group.blocks):
                continue
            inverses = [safe_damped_inverse(factors[block.name], damping) for block in group.blocks]
            pairs = [pair for pair in inverses if pair is not None]
            if len(pairs) < len(inverses):
                self.failed += 1
                continue
            like = next(group.parameters())
            kept = _scales(group) if self.options.scales == "keep" else {}
            group.set_kronecker([(left.to(like), right.to(like)) for left, right in pairs])
            for module, state in kept.items():
                module.load_state_dict(state)
        self.refreshes += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.running.state_dict(),
            "generator": self.generator.get_state(),
            "refreshes": self.refreshes,
            "failed": self.failed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.running.load_state_dict(state)
        self.generator.set_state(state["generator"])
        self.refreshes, self.failed = state["refreshes"], state["failed"]


def _scales(group: nn.Module) -> dict[nn.Module, dict[str, Tensor]]:
    """The state of the scale modules (``QForm.kronecker_scales``) of every form in ``group``, copied."""
    kept = {}
    for module in group.modules():
        if isinstance(module, QForm):
            for name in module.kronecker_scales:
                scales = module.get_submodule(name)
                kept[scales] = {key: value.clone() for key, value in scales.state_dict().items()}
    return kept
