"""The FishLeg optimizer (paper Algorithm 1 with the practical details of its section 4.4)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from fishleg_core.aux_optimizers import AuxiliaryAdam
from fishleg_core.auxiliary import auxiliary_loss
from fishleg_core.checks import check_callable, validate
from fishleg_core.fisher import fisher_vp
from fishleg_core.gradient_factors import GradientFactors
from fishleg_core.layers.form_choice import FormChoices
from fishleg_core.likelihoods import Likelihood, resolve_likelihood
from fishleg_core.model_q import LowRankFactors, ModelQ, build_model_q
from fishleg_core.optim.aux_data import CyclicBatches, batch_inputs
from fishleg_core.optim.config import FishLegConfig
from fishleg_core.optim.nonfinite import NonFiniteGuard
from fishleg_core.vectors import ParamDict, norm, scale, trainable_parameters


class FishLeg(torch.optim.Optimizer):
    """Natural-gradient descent with a learned inverse Fisher Q(λ).

    Each ``step()`` (after ``loss.backward()``), with the default ``momentum_on="update"`` (paper §4.4):

    1. every ``aux_every`` steps (the first step included; never if 0), one Adam step on λ for the
       auxiliary loss A(λ; u) at u = g/‖g‖, with F_γ = F + γ I evaluated on an auxiliary minibatch;
    2. m ← β m + (1 − β) Q(λ) g (from m = 0) and θ ← θ − η m. The minibatch gradient of a linear layer
       has rank ≤ batch size, and Q·g uses it (``GradientFactors``; off with ``low_rank=False``).

    With ``momentum_on="gradient"`` (Algorithm 1 as written): ḡ ← β ḡ + (1 − β) g, u = ḡ/‖ḡ‖ and
    θ ← θ − η Q(λ) ḡ; ḡ is dense, so every product with Q is.

    Q starts at (sgd_lr / lr)·I (so FishLeg starts out as SGD with momentum at ``sgd_lr``), or at
    ``init_scale``·I, or at I. The auxiliary minibatch must differ from the one that produced g: pass an
    iterable ``aux_data`` (a DataLoader, say; cycled, a batch is an input tensor or a tuple whose first
    element is the inputs) or give ``step(aux_batch=inputs)``. ``forms`` chooses QForms per layer type,
    module-name pattern or ``"default"`` (see ``choose_forms``). The per-group ``lr``, ``momentum`` and
    ``weight_decay`` may be changed between steps (LR schedulers work). Hyperparameters: ``FishLegConfig``.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood | str,
        lr: float,
        *,
        forms: FormChoices | None = None,
        aux_data: Iterable[Any] | None = None,
        **hyperparameters: Any,
    ) -> None:
        self.config = validate(FishLegConfig, "FishLeg", {"lr": lr, **hyperparameters})
        if not isinstance(model, nn.Module):
            raise TypeError(f"FishLeg: model must be a torch.nn.Module, got {type(model).__name__}")
        # Under DistributedDataParallel, the wrapped module is the model; the auxiliary gradients are
        # averaged across ranks so that λ stays identical on every rank.
        self._distributed = isinstance(model, nn.parallel.DistributedDataParallel)
        model = model.module if self._distributed else model
        self.model = model
        self.likelihood = resolve_likelihood(likelihood)
        params = trainable_parameters(model)
        if not params:
            raise ValueError("FishLeg: the model has no trainable parameters (requires_grad=True)")
        self._names = {id(p): name for name, p in params.items()}
        defaults = {"lr": lr, "momentum": self.config.momentum, "weight_decay": self.config.weight_decay}
        super().__init__(list(params.values()), defaults)
        self.q: ModelQ = build_model_q(model, forms, self.config.q_init_scale, self.config.strict)
        self.q.cache_grams(self.config.aux_every != 1)  # Gram matrices pay when λ serves several steps
        self.aux_optimizer = AuxiliaryAdam(self.q.parameters(), self.config.aux_lr, self.config.aux_betas,
                                           self.config.aux_eps)
        device = next(iter(params.values())).device
        self.generator = torch.Generator(device=device)
        seed = self.config.seed if self.config.seed is not None else torch.initial_seed()
        self.generator.manual_seed(seed + (torch.distributed.get_rank() if self._distributed else 0))
        self.aux_data = CyclicBatches(aux_data) if aux_data is not None else None
        self.steps = 0
        self.last_aux_loss: Tensor | None = None
        self.nonfinite = NonFiniteGuard(self.config.nonfinite)
        # With momentum on Q·g, each step multiplies Q with the raw minibatch gradient, whose linear-layer
        # blocks have rank ≤ batch size: capture their factors (paper §4.4). Under DDP the gradients are
        # averaged over ranks and no longer match the local factors.
        low_rank = (self.config.low_rank and self.config.momentum_on == "update" and self.config.weight_decay == 0
                    and not self._distributed)
        self._capture = GradientFactors.for_q(model, self.q) if low_rank else None

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, aux_batch: Any = None) -> Tensor | None:
        """One FishLeg step from the gradients in ``.grad``; ``aux_batch`` overrides ``aux_data`` once.

        A gradient with NaN or Inf skips the whole step (nothing changes; ``nonfinite="raise"`` raises);
        an auxiliary update meeting them skips only that update, leaving λ and its Adam state as they were.
        """
        check_callable("closure", closure, optional=True)
        given = batch_inputs(aux_batch) if aux_batch is not None else None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        aux_due = bool(self.config.aux_every) and self.steps % self.config.aux_every == 0
        aux_inputs = (given if given is not None else batch_inputs(self._next_aux_batch())) if aux_due else None
        gradient = self._gradient()
        if not self.nonfinite.check("gradient", gradient, "the step is skipped"):
            if self._capture:
                self._capture.clear()
            return loss
        factors = self._capture.factors(gradient) if self._capture else {}
        on_gradient = self.config.momentum_on == "gradient"
        if on_gradient:
            gradient = self._averaged("momentum_buffer", gradient)
        gradient_norm = norm(gradient) if aux_due else None
        if aux_due and gradient_norm > 0:  # a zero gradient gives no direction to learn from
            inverse_norm = 1.0 / gradient_norm
            u_factors = {name: (left * inverse_norm, right) for name, (left, right) in factors.items()}
            self._update_auxiliary(scale(gradient, inverse_norm), u_factors, aux_inputs)
        direction = self.q(gradient, factors)
        if not on_gradient:
            direction = self._averaged("momentum_buffer", direction)
        # Only now, with nothing left that can fail, does the optimizer state change.
        self._store("momentum_buffer", gradient if on_gradient else direction)
        for group in self.param_groups:
            params = group["params"]
            torch._foreach_add_(params, [direction[self._names[id(p)]] for p in params], alpha=-group["lr"])
        self.steps += 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self._capture:
            self._capture.clear()

    def _gradient(self) -> ParamDict:
        """g (+ weight_decay·θ) by parameter name; a parameter without ``.grad`` contributes zeros."""
        gradient = {}
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                gradient[self._names[id(p)]] = g + group["weight_decay"] * p if group["weight_decay"] else g
        return gradient

    def _averaged(self, key: str, values: ParamDict) -> ParamDict:
        """The exponential average β b + (1 − β) x of the buffers b = ``self.state[p][key]`` (from b = 0),
        as new tensors: the buffers change only in ``_store``."""
        averaged = {}
        for group in self.param_groups:
            names = [self._names[id(p)] for p in group["params"]]
            buffers = [self.state[p].get(key, torch.zeros_like(p)) for p in group["params"]]
            new = torch._foreach_lerp(buffers, [values[name] for name in names], 1 - group["momentum"])
            averaged.update(zip(names, new))
        return averaged

    def _store(self, key: str, values: ParamDict) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p][key] = values[self._names[id(p)]]

    def _update_auxiliary(self, u: ParamDict, u_factors: LowRankFactors, inputs: Tensor) -> None:
        """One Adam step on λ for A(λ; u), unless the auxiliary loss or its gradient is not finite."""

        def damped_fisher(v: ParamDict) -> ParamDict:
            return fisher_vp(self.model, self.likelihood, inputs, v, method=self.config.fisher_method,
                             damping=self.config.damping, generator=self.generator)

        self.aux_optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = auxiliary_loss(self.q, u, damped_fisher, u_factors)
            loss.surrogate.backward()
        grads = {name: p.grad for name, p in self.q.named_parameters() if p.grad is not None}
        if self._distributed:
            _average_across_ranks(list(grads.values()))
        checked = {"auxiliary loss": loss.value, **grads}
        if self.nonfinite.check("auxiliary update", checked, "λ and its Adam state are left unchanged"):
            self.aux_optimizer.step()
        self.last_aux_loss = loss.value

    def _next_aux_batch(self) -> Any:
        if self.aux_data is None:
            raise RuntimeError(
                f"FishLeg: an auxiliary update is due at step {self.steps} (aux_every="
                f"{self.config.aux_every}) but no auxiliary batch is available: pass aux_data=<iterable of "
                "batches> to FishLeg(...) or call step(aux_batch=<inputs>)"
            )
        return self.aux_data.next()

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus the auxiliary parameters λ, their Adam state, the step count and
        the optimizer's own random generator, the counts of skipped updates and the position in aux_data."""
        state = super().state_dict()
        state["fishleg"] = {
            "q": self.q.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "steps": self.steps,
            "generator": self.generator.get_state(),
            "skipped": dict(self.nonfinite.skipped),
            "aux_data": self.aux_data.state_dict() if self.aux_data else None,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        try:
            extra = state_dict.pop("fishleg")
        except KeyError:
            raise ValueError("not a FishLeg state_dict: it has no 'fishleg' entry (λ and its Adam state)") from None
        expected = {name: tuple(t.shape) for name, t in self.q.state_dict().items()}
        given = {name: tuple(t.shape) for name, t in extra["q"].items()}
        if given != expected:
            differing = sorted(set(given.items()) ^ set(expected.items()))
            raise ValueError(f"FishLeg state_dict: its auxiliary parameters do not fit this optimizer's QForms "
                             f"(differing entries: {differing[:4]}...); build the optimizer with the same forms")
        super().load_state_dict(state_dict)  # checks the parameter groups before changing anything
        self.q.load_state_dict(extra["q"])
        self.aux_optimizer.load_state_dict(extra["aux_optimizer"])
        self.steps = extra["steps"]
        self.generator.set_state(extra["generator"])
        self.nonfinite.skipped = dict(extra["skipped"])
        if self.aux_data and extra["aux_data"]:
            self.aux_data.load_state_dict(extra["aux_data"])


def _average_across_ranks(tensors: list[Tensor]) -> None:
    """In place, the mean of each tensor over the ranks of the default process group (one all-reduce)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    for t, piece in zip(tensors, torch.split(flat, [t.numel() for t in tensors])):
        t.copy_(piece.view_as(t))
