"""Forms that span layers in the A.6 study: building them by name, and how much of (Qu)ᵀF_γ(Qu) lies
between layers.

For v = Qu split by layer, v = Σ_l v_l, the curvature term of the auxiliary loss splits as

    vᵀ F_γ v = Σ_l v_lᵀ F_γ v_l  (within layers)  +  Σ_{l ≠ m} v_lᵀ F v_m  (between layers).

A block-diagonal Q is fitted without any handle on the between-layer part (it shapes each v_l alone);
a coupled form such as ``tridiag_kron`` can steer it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import fishleg_core as fl
from fishleg_core.coupled import adjacent_linear_chains
from fishleg_core.param_vectors import ParamDict

MULTI_BLOCK_FORMS = tuple(name for name in fl.COUPLED_FORMS.names() if name != "block")
"""Coupled forms the study can fit by name: one group over each chain of adjacent linear layers."""


def study_form_names() -> list[str]:
    """Every form name the study accepts: the QForms (one per block) and the coupled forms."""
    return [*fl.QFORMS.names(), *MULTI_BLOCK_FORMS]


def build_study_q(model: nn.Module, name: str, init_scale: float = 1.0, **options: Any) -> fl.ModelQ:
    """Q of form ``name`` (with ``options``): a QForm on every block, or a coupled form over each chain of
    adjacent linear layers (``kron`` on blocks outside chains)."""
    if name not in MULTI_BLOCK_FORMS:
        return fl.build_model_q(model, {"default": {"form": name, **options}}, init_scale=init_scale)
    chains = adjacent_linear_chains(fl.map_blocks(model))
    groups = [{"blocks": [block.name for block in chain], "form": name, **options} for chain in chains]
    return fl.build_model_q(model, {"default": "kron"}, init_scale=init_scale, coupled=groups)


@torch.no_grad()
def layer_split(evaluator: fl.ProbeEvaluator, q: Callable[[ParamDict], ParamDict]) -> dict[str, float]:
    """Means over the evaluator's probes of vᵀF_γv (v = Qu), of its within-layer part Σ_l v_lᵀF_γv_l and of
    its between-layer part (the rest), with the between-layer share of the total. Layers: the model's blocks.
    Each quadratic form by ``damped_quadratic`` (forward passes carrying J v alone)."""
    blocks = fl.map_blocks(evaluator.model)
    totals, withins = [], []
    for u in evaluator.probes:
        v = q(u)
        within = 0.0
        for block in blocks:
            v_l = {name: t if name in block.param_names else torch.zeros_like(t) for name, t in v.items()}
            within += evaluator.damped_quadratic(v_l).item()
        totals.append(evaluator.damped_quadratic(v).item())
        withins.append(within)
    total, within = statistics.fmean(totals), statistics.fmean(withins)
    return {"total": total, "within": within, "between": total - within, "between_share": (total - within) / total}
