"""Optimisers of the auxiliary parameters λ."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


class AuxiliaryAdam(torch.optim.Adam):
    """torch's Adam for λ, with its fused kernel where the device has one (on CPU about 5× faster than the
    foreach kernel for the millions of entries of large triangular factors), else the foreach kernel.

    The fused kernel writes the parameters without bumping their version counters, on which the cached
    L and M = L Lᵀ of the triangular factors rely (``TriangularFactor``): ``step`` bumps them.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float], eps: float = 1e-8):
        params = list(params)
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=None if fused else True)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = super().step(closure)
        torch.autograd.graph.increment_version([p for group in self.param_groups for p in group["params"]])
        return loss
