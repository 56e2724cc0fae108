"""Q₀ of the A.6 study: the best identity multiple, then the rescaled damped-KFAC start of the library
(``fishleg_core.kfac.start``: its module docstring has the formulas) on every group of the form that takes it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

import fishleg_core as fl
from experiments.a6.config import StudyConfig
from experiments.a6.fit_schedule import best_identity_scale
from fishleg_core import ModelQ
from fishleg_core.kfac import (
    NoKroneckerStart,
    kfac_blocks,
    kfac_not_started,
    kfac_start,
    kronecker_factors,
    takes_kfac_start,
)
from fishleg_core.param_vectors import ParamDict


def supports_kfac_start(q: ModelQ, model: nn.Module) -> bool:
    """Whether every group of ``q`` (built on ``model``) whose blocks all have KFAC factors takes the
    damped-KFAC start (blocks without factors, such as normalisation layers, keep c·I in every form alike)."""
    with_factors = kfac_blocks(model)
    return all(
        takes_kfac_start(group) for group in q.groups if all(block.name in with_factors for block in group.blocks)
    )


def initial_q(
    build: Callable[[float], ModelQ],
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Tensor,
    monitor_set: tuple[list[ParamDict], list[Tensor]],
    kfac_seed: int,
) -> tuple[ModelQ, dict[str, Any]]:
    """Q₀ = ``build(init_scale)`` (a form on every block) at c·I, c the best identity multiple on the
    monitor's directions (each with its own F_γ), then, with ``config.init == "kfac"``, the rescaled
    damped-KFAC start on every group that takes it (factors from ``kfac_samples`` sampled targets per
    training input, drawn with ``kfac_seed``); the other groups (forms without a start, blocks without KFAC
    factors) stay at c·I and are listed under ``kfac_not_started``. Returns Q₀ and how it was made."""
    directions, curvature = monitor_set
    fishers = [partial(fl.fisher_vp, model, likelihood, x, method="exact", damping=config.damping) for x in curvature]
    init_scale = best_identity_scale(directions, [fisher(u) for fisher, u in zip(fishers, directions)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # random initial terms (kron_sum) are the same in every run
        q = build(init_scale)
    start: dict[str, Any] = {"init": "identity", "init_scale": init_scale}
    if config.init != "kfac":
        return q, start
    generator = torch.Generator().manual_seed(kfac_seed)
    factors = kronecker_factors(model, likelihood, train, config.kfac_samples, generator)
    try:
        scale, started = kfac_start(q, factors, config.damping, directions, fishers)
    except NoKroneckerStart:
        return q, {**start, "init_note": "c·I: no block of this form takes the damped-KFAC start"}
    start = {**start, "init": "kfac", "kfac_scale": scale}
    others = kfac_not_started(q, started)
    if others:
        start["kfac_not_started"] = others
    return q, start
