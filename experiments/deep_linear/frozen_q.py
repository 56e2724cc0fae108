"""Figure 1B: the auxiliary loss of the live Q against copies of Q frozen every few hundred iterations."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

import fishleg_core as fl
from fishleg_core.param_vectors import norm, scale


class FrozenQMonitor:
    """At each call, A(Q; u) = ½ (Qu)ᵀ F_γ (Qu) − uᵀ Q u for the optimizer's live Q and for every frozen copy,
    on one direction u = g/‖g‖ (g: the gradient of a fresh training minibatch from ``probes``) and the exact
    F_γ on the fixed ``fisher_inputs``; a copy of Q is frozen at every multiple of ``freeze_every``.

    ``records``: ``{"iteration": [...], "live": [...], "frozen": {freeze iteration: [[iteration, A], ...]}}``.
    """

    def __init__(
        self,
        optimizer: fl.FishLeg,
        loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor],
        probes: Iterator[tuple[Tensor, Tensor]],
        fisher_inputs: Tensor,
        freeze_every: int,
    ) -> None:
        self.optimizer, self.loss_fn, self.probes = optimizer, loss_fn, probes
        self.fisher_inputs, self.freeze_every = fisher_inputs, freeze_every
        self.frozen: dict[int, fl.ModelQ] = {}
        self.records: dict = {"iteration": [], "live": [], "frozen": {}}

    def __call__(self, iteration: int) -> None:
        if iteration > 0 and iteration % self.freeze_every == 0:
            self.frozen[iteration] = copy.deepcopy(self.optimizer.q)
            self.records["frozen"][iteration] = []
        u = self._direction()
        model = self.optimizer.model
        damping = self.optimizer.config.damping

        def damped_fisher(v):
            return fl.fisher_vp(model, self.optimizer.likelihood, self.fisher_inputs, v, damping=damping)

        with torch.no_grad():
            self.records["iteration"].append(iteration)
            self.records["live"].append(fl.auxiliary_loss(self.optimizer.q, u, damped_fisher).value.item())
            for frozen_at, q in self.frozen.items():
                value = fl.auxiliary_loss(q, u, damped_fisher).value.item()
                self.records["frozen"][frozen_at].append([iteration, value])

    def _direction(self) -> dict[str, Tensor]:
        model = self.optimizer.model
        inputs, targets = next(self.probes)
        parameters = dict(model.named_parameters())
        with torch.enable_grad():
            gradient = torch.autograd.grad(self.loss_fn(model, inputs, targets), list(parameters.values()))
        g = dict(zip(parameters, gradient))
        return scale(g, 1.0 / norm(g))
