"""Optimisers of the auxiliary parameters λ, and their registry ``AUX_OPTIMIZERS``.

A registered factory takes the parameters λ (or, with a ``parameter_groups(q)`` attribute, the parameter groups
it makes of Q), the learning rate and its own keyword options, and returns a
``torch.optim.Optimizer`` whose ``step`` bumps the parameters' version counters (the cached L and
M = L Lᵀ of the triangular factors rely on them; see ``TriangularFactor``). ``aux_optimizer=`` arguments
name one (``"adam"``) or give its options too (``{"name": "adam", "betas": (0.9, 0.99)}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import torch
from pydantic import AfterValidator
from torch import nn

from fishleg_core.registry import Registry, named_options

AuxOptimizerFactory = Callable[..., torch.optim.Optimizer]
"""(params, lr, **options) -> an optimizer of λ."""

AuxOptimizerSpec = str | Mapping[str, Any]
"""A registered name, or a mapping {"name": ..., **options}."""

AUX_OPTIMIZERS: Registry[AuxOptimizerFactory] = Registry("auxiliary optimizer")


@AUX_OPTIMIZERS.register("adam")
class AuxiliaryAdam(torch.optim.Adam):
    """torch's Adam for λ, with its fused kernel where the device has one (on CPU about 5× faster than the
    foreach kernel for the millions of entries of large triangular factors), else the foreach kernel.

    ``weight_decay`` w adds w·λ to the gradient of λ (torch's Adam, coupled L2), pulling the raw parameters
    λ towards 0; the paper's MNIST autoencoder uses w = 1e-3 with no damping.

    The fused kernel writes the parameters without bumping their version counters, on which the cached
    L and M = L Lᵀ of the triangular factors rely (``TriangularFactor``): ``step`` bumps them.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        entries: list[Any] = list(params)
        tensors = [p for entry in entries for p in (entry["params"] if isinstance(entry, dict) else [entry])]
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
        super().__init__(
            entries,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            fused=fused or None,
            foreach=None if fused else True,
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]  # overloads
        loss = super().step(closure)
        torch.autograd.graph.increment_version([p for group in self.param_groups for p in group["params"]])
        return loss


def split_spec(spec: AuxOptimizerSpec, argument: str = "aux_optimizer") -> tuple[str, dict[str, Any]]:
    """(name, options) of an ``aux_optimizer=`` value; a malformed one or an unknown name raises an error
    that names ``argument``."""
    parsed = named_options(spec, "name")
    if parsed is None:
        raise ValueError(f"{argument} must be a registered name or a mapping with a 'name' entry, got {spec!r}")
    name, options = parsed
    if name not in AUX_OPTIMIZERS:
        known = ", ".join(AUX_OPTIMIZERS.names())
        raise ValueError(f"{argument}: unknown auxiliary optimizer {name!r}; known: {known}")
    return name, options


def _registered(spec: str | dict[str, Any]) -> str | dict[str, Any]:
    split_spec(spec, "aux_optimizer")
    return spec


RegisteredAuxOptimizer = Annotated[str | dict[str, Any], AfterValidator(_registered)]
"""A pydantic field type: an ``aux_optimizer`` value checked against ``AUX_OPTIMIZERS`` (``split_spec``)."""


def build_aux_optimizer(
    spec: AuxOptimizerSpec, params: nn.Module | Iterable[nn.Parameter], lr: float, **defaults: Any
) -> torch.optim.Optimizer:
    """The optimizer ``spec`` names on ``params`` at learning rate ``lr``; ``defaults`` are options (such as
    Adam's ``betas``) that ``spec``'s own options override. ``params``: the module holding λ (Q), or its
    parameters; given the module, a factory with a ``parameter_groups(module)`` attribute gets those groups
    (e.g. one per triangular factor), any other its parameters."""
    name, options = split_spec(spec)
    if isinstance(params, nn.Module):
        grouping = getattr(AUX_OPTIMIZERS.get(name), "parameter_groups", None)
        params = grouping(params) if grouping is not None else params.parameters()
    return AUX_OPTIMIZERS.build(name, params=params, lr=lr, **{**defaults, **options})
