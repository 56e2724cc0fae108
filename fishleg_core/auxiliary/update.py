"""The auxiliary update of FishLeg: one optimiser step on λ for A(λ; u) (paper Algorithm 1, lines 5-8)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fishleg_core._vectors import ParamDict, trainable_parameters
from fishleg_core.auxiliary.loss import auxiliary_loss
from fishleg_core.auxiliary.optimizers import AuxOptimizerSpec, add_weight_decay, build_aux_optimizer
from fishleg_core.fisher import fisher_vp
from fishleg_core.fisher.functional import Inputs, ModelCall, OutputFn, describe_tensor
from fishleg_core.likelihoods import Likelihood
from fishleg_core.model_q import LowRankFactors, ModelQ
from fishleg_core.optim.diagnostics import QMonitor
from fishleg_core.optim.nonfinite import NonFiniteGuard


class AuxiliaryUpdate:
    """λ ← ``optimizer`` step (Adam by default, see ``AUX_OPTIMIZERS``) on ∇_λ A(λ; u),
    A(λ; u) = ½ (Q u)ᵀ F_γ (Q u) − uᵀ Q u, with F_γ v = F v + γ v by
    ``fisher_method`` on an auxiliary minibatch; with ``weight_decay`` w > 0 the gradient is that of
    A + ½ w Σ ‖V‖² (``add_weight_decay``: V the factor values λ stands for; the paper's weight decay on λ).

    Owns the optimiser of λ and the generator of sampling Fisher methods. Under DDP
    (``distributed=True``) the gradients of λ are averaged across ranks before the step, so λ stays
    identical on every rank. ``output_fn`` selects the output tensor of models returning tuples or dicts.
    A non-finite loss or gradient leaves λ and its optimiser state untouched (``guard``). ``monitor``
    records the health of Q at every update that passes the guard.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood,
        q: ModelQ,
        *,
        optimizer: AuxOptimizerSpec = "adam",
        damping: float,
        weight_decay: float = 0.0,
        fisher_method: str,
        generator: torch.Generator,
        guard: NonFiniteGuard,
        distributed: bool = False,
        output_fn: OutputFn | None = None,
        monitor: QMonitor | None = None,
    ) -> None:
        self.model, self.likelihood, self.q = model, likelihood, q
        self.damping, self.weight_decay, self.fisher_method = damping, weight_decay, fisher_method
        self.generator, self.guard, self.distributed, self.monitor = generator, guard, distributed, monitor
        self.output_fn = output_fn
        self.optimizer = build_aux_optimizer(optimizer, q)
        self.last_loss: Tensor | None = None
        self._lambda = list(q.named_parameters())  # fixed with Q; walking its modules at every step costs

    def step(self, u: ParamDict, u_factors: LowRankFactors, inputs: Inputs, targets: Tensor | None) -> Tensor:
        """One step at the unit direction ``u`` (``u_factors``: low-rank factors of its blocks) with F_γ on
        the batch (``inputs``, ``targets``); returns A(λ; u) before the step."""

        def damped_fisher(v: ParamDict) -> ParamDict:
            # parameters outside Q (a fallback optimizer's) stay fixed: the Fisher's block on Q's parameters
            others = {
                name: torch.zeros_like(p) for name, p in trainable_parameters(self.model).items() if name not in v
            }
            product = fisher_vp(
                self.model,
                self.likelihood,
                inputs,
                {**v, **others},
                method=self.fisher_method,
                damping=self.damping,
                generator=self.generator,
                targets=targets,
                output_fn=self.output_fn,
            )
            return {name: product[name] for name in v} if others else product

        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            try:
                loss = auxiliary_loss(self.q, u, damped_fisher, u_factors)
            except (TypeError, ValueError, RuntimeError) as error:
                raise type(error)(_in_context(error, inputs, targets)) from error
            loss.surrogate.backward()
        grads = {name: p.grad for name, p in self._lambda if p.grad is not None}
        if self.distributed:
            average_across_ranks(list(grads.values()))
        checked = {"auxiliary loss": loss.value, **grads}
        if self.guard.check("auxiliary update", checked, "λ and its Adam state are left unchanged"):
            add_weight_decay(self.q, self.weight_decay)
            self.optimizer.step()
            if self.monitor is not None:
                self.monitor.record(u, loss.qu, loss.fisher_qu, loss.value)
        self.last_loss = loss.value
        return loss.value

    def state_dict(self) -> dict[str, Any]:
        """λ, its optimiser's state and the generator's state."""
        return {
            "q": self.q.state_dict(),
            "aux_optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q.load_state_dict(state["q"])
        self.optimizer.load_state_dict(state["aux_optimizer"])
        self.generator.set_state(state["generator"])


def _in_context(error: Exception, inputs: Inputs, targets: Tensor | None) -> str:
    """The message of an error raised by the Fisher-vector product on an auxiliary batch, with where the
    batch came from and what it held."""
    held = (inputs.describe() if isinstance(inputs, ModelCall) else f"inputs {describe_tensor(inputs)}") + (
        "" if targets is None else f", targets {describe_tensor(targets)}"
    )
    return (
        f"FishLeg: the Fisher-vector product on the auxiliary batch (from aux_data or step(aux_batch=...); "
        f"{held}) failed: {error}. A batch is an input tensor, a tuple (inputs, targets), inputs first, or a "
        "mapping of keyword inputs (batch_fn= maps any other batch)"
    )


def average_across_ranks(tensors: list[Tensor]) -> None:
    """In place, the mean of each tensor over the ranks of the default process group (one all-reduce)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    for t, piece in zip(tensors, torch.split(flat, [t.numel() for t in tensors])):
        t.copy_(piece.view_as(t))
