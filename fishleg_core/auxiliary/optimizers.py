"""Optimisers of the auxiliary parameters λ, and their registry ``AUX_OPTIMIZERS``.

A registered factory takes the parameters λ (or, with a ``parameter_groups(q)`` attribute, the parameter groups
it makes of Q) and its own keyword options, ``lr`` among them, and returns a ``torch.optim.Optimizer`` whose
``step`` bumps the parameters' version counters (the cached L and M = L Lᵀ of the triangular factors rely on
them; see ``TriangularFactor``). Its signature is its contract: the options it declares, with their defaults,
are the options an ``aux_optimizer=`` spec may give, nothing else. A spec names one (``"adam"``: its default
options) or gives options too (``{"name": "adam", "lr": 1e-3, "betas": (0.9, 0.99)}``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import torch
from pydantic import AfterValidator
from torch import nn

from fishleg_core.qforms.positive import PositiveTensor, TriangularFactor, positive
from fishleg_core.registry import Registry, named_options

AuxOptimizerFactory = Callable[..., torch.optim.Optimizer]
"""(params, **options) -> an optimizer of λ; its keyword parameters are the options a spec may give."""

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
        lr: float = 1e-4,
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
    accepted = aux_optimizer_options(name)
    unknown = sorted(set(options) - set(accepted))
    takes_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(AUX_OPTIMIZERS.get(name)).parameters.values())
    if unknown and not takes_any:
        raise ValueError(
            f"{argument}: auxiliary optimizer {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted)}"
        )
    return name, options


def aux_optimizer_options(name: str) -> dict[str, Any]:
    """The options of the registered auxiliary optimizer ``name`` with their defaults (``inspect.Parameter.empty``
    where it has none): the keyword parameters of its factory, less ``params``."""
    signature = inspect.signature(AUX_OPTIMIZERS.get(name))
    return {p.name: p.default for p in signature.parameters.values() if p.name != "params" and p.kind != p.VAR_KEYWORD}


def _complete(spec: str | dict[str, Any]) -> str | dict[str, Any]:
    name, options = split_spec(spec, "aux_optimizer")
    missing = [option for option, default in aux_optimizer_options(name).items() if default is inspect.Parameter.empty]
    if [option for option in missing if option not in options]:
        raise ValueError(f"auxiliary optimizer {name!r} has no default for {', '.join(missing)}: give them in the spec")
    return spec


RegisteredAuxOptimizer = Annotated[str | dict[str, Any], AfterValidator(_complete)]
"""A pydantic field type: an ``aux_optimizer`` spec that builds on its own: a registered name whose options the
factory takes (``split_spec``), every option without a default given."""


def build_aux_optimizer(
    spec: AuxOptimizerSpec, params: nn.Module | Iterable[nn.Parameter], lr: float | None = None, **defaults: Any
) -> torch.optim.Optimizer:
    """The optimizer that ``spec`` names, on ``params``.

    Args:
        spec: a name in ``AUX_OPTIMIZERS`` (its default options) or ``{"name": ..., **options}``.
        params: the module holding λ (Q), or its parameters; given the module, a factory with a
            ``parameter_groups(module)`` attribute gets those groups (e.g. one per triangular factor), any other
            its parameters.
        lr: the learning rate unless ``spec`` gives one; None: the factory's default.
        **defaults: further options (such as Adam's ``betas``) that ``spec``'s own options override.

    Returns:
        The optimizer of λ.

    Raises:
        ValueError: ``spec`` is malformed, names an unknown optimizer or an option its factory does not take
            (the message lists the options it takes), or the factory rejects an option's value.
    """
    name, options = split_spec(spec)
    if isinstance(params, nn.Module):
        grouping = getattr(AUX_OPTIMIZERS.get(name), "parameter_groups", None)
        params = grouping(params) if grouping is not None else params.parameters()
    given = {**defaults, **({} if lr is None else {"lr": lr}), **options}
    try:
        return AUX_OPTIMIZERS.build(name, params=params, **given)
    except ValueError as error:
        if str(error).startswith("auxiliary optimizer"):
            raise
        raise ValueError(f"aux_optimizer {name!r}: {error}") from error


@torch.no_grad()
def add_weight_decay(q: nn.Module, weight_decay: float) -> None:
    """Add ∇_λ of R(λ) = ½ w Σ ‖V‖²_F to the gradients λ has, w = ``weight_decay``, V the values λ stands
    for: each ``TriangularFactor``'s L (its diagonal softplus(d), not d), each ``PositiveTensor``'s
    softplus(raw), any other parameter itself. R pulls Q towards 0, like the paper's weight decay on its
    unconstrained Kronecker factors (Q = LᵀL ⊗ RᵀR); decaying the softplus pre-images towards 0 would
    instead pull every diagonal towards log 2. Parameters without a gradient (not in this update) are left
    alone. Works for every registered auxiliary optimizer: it changes the gradient, not the step rule."""
    if weight_decay == 0:
        return
    done: set[int] = set()
    for module in q.modules():
        if isinstance(module, TriangularFactor):
            pairs = [(module.diag, True), (module.off, False)]
        elif isinstance(module, PositiveTensor):
            pairs = [(module.raw, True)]
        else:
            continue
        for p, through_softplus in pairs:
            done.add(id(p))
            if p.grad is not None:
                # d/dx ½ softplus(x)² = softplus(x) · sigmoid(x)
                value = positive(p) * torch.sigmoid(p) if through_softplus else p
                p.grad.add_(value, alpha=weight_decay)
    for p in q.parameters():
        if id(p) not in done and p.grad is not None:
            p.grad.add_(p, alpha=weight_decay)
