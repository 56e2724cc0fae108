"""The FishLeg optimizer (paper Algorithm 1 with the practical details of its section 4.4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from fishleg_core._validation import check_callable, check_number, validate
from fishleg_core._vectors import ParamDict, norm, scale, trainable_parameters
from fishleg_core._warnings import warn_user
from fishleg_core.auxiliary.data import BatchFn, CyclicBatches, split_batch
from fishleg_core.auxiliary.gradient_factors import GradientFactors
from fishleg_core.auxiliary.optimizers import RegisteredAuxOptimizer
from fishleg_core.auxiliary.update import AuxiliaryUpdate
from fishleg_core.kfac.running import KFACRefresh, RefreshOptions, refresh_options
from fishleg_core.kfac.start import NoKroneckerStart, kfac_blocks, takes_kfac_start
from fishleg_core.layers.mapping import BandChoices
from fishleg_core.likelihoods import Likelihood, ParametricLikelihood, likelihood_parameters, resolve_likelihood
from fishleg_core.model_q import ModelQ, build_model_q, check_model_q, q_options
from fishleg_core.optim.config import (
    Momentum,
    NonNegativeFloat,
    PositiveFloat,
    RegisteredFisherMethod,
    ValidSchedule,
    aux_due,
    aux_phase,
    config_from_signature,
)
from fishleg_core.optim.diagnostics import QMonitor
from fishleg_core.optim.mixed import fallback_optimizer, option_groups
from fishleg_core.optim.nonfinite import NonFiniteGuard
from fishleg_core.optim.step_health import StepHealth


class FishLeg(torch.optim.Optimizer):
    r"""Natural-gradient descent with a learned inverse Fisher Q(λ) (paper Algorithm 1, §4.4).

    .. math::
       \begin{aligned}
            &\rule{110mm}{0.4pt} \\
            &\textbf{input}: \theta_0 \text{ (params)}, L \text{ (loss)}, \eta \text{ (lr)},
                \beta \text{ (momentum)}, w \text{ (weight\_decay)}, \gamma \text{ (damping)}, \\
            &\hspace{13mm} k \text{ (aux\_every)}, \mathrm{Opt}_\lambda \text{ (aux\_optimizer)},
                Q(\lambda_0) = c\, I \text{ (q: init\_scale } c) \\
            &\textbf{initialize}: m_{-1} \leftarrow 0 \\[-1.ex]
            &\rule{110mm}{0.4pt} \\
            &\textbf{for}\: t = 0, 1, \dots \textbf{do} \\
            &\hspace{5mm} g_t \leftarrow \nabla_\theta L(\theta_t) \\
            &\hspace{5mm} \textbf{if}\: w \neq 0: g_t \leftarrow g_t + w\, \theta_t \\
            &\hspace{5mm} \textbf{if}\: k > 0 \textbf{ and } (t - t_0) \bmod k = 0
                \;(t_0 \text{: first step of } t\text{'s phase}) \\
            &\hspace{10mm} u \leftarrow g_t / \lVert g_t \rVert \\
            &\hspace{10mm} A(\lambda; u) \leftarrow \tfrac12 (Q u)^\top F_\gamma (Q u) - u^\top Q u
                \quad (F_\gamma = F + \gamma I \text{ on an auxiliary batch}) \\
            &\hspace{10mm} \lambda \leftarrow \mathrm{Opt}_\lambda\big(\lambda, \nabla_\lambda A(\lambda; u)\big) \\
            &\hspace{5mm} m_t \leftarrow \beta m_{t-1} + (1 - \beta)\, Q(\lambda) g_t \\
            &\hspace{5mm} \theta_{t+1} \leftarrow \theta_t - \eta\, m_t \\
            &\rule{110mm}{0.4pt} \\[-1.ex]
            &\textbf{return}\: \theta_t \\[-1.ex]
            &\rule{110mm}{0.4pt}
       \end{aligned}

    That is ``momentum_on="update"`` (the default, paper §4.4): the minibatch gradient of a linear layer
    has rank ≤ batch size, and Q·g uses it (``GradientFactors``; off with ``low_rank=False``). With
    ``momentum_on="gradient"`` (Algorithm 1 as written): ḡ ← β ḡ + (1 − β) g, u = ḡ/‖ḡ‖ and
    θ ← θ − η Q(λ) ḡ; ḡ is dense, so every product with Q is.

    Args:
        model: the network; a ``DistributedDataParallel`` wrapper is unwrapped, and the auxiliary
            gradients are then averaged across ranks.
        likelihood: a ``Likelihood`` or a registered name (``LIKELIHOODS``); it must match the training loss.
            The parameters of a ``ParametricLikelihood`` (e.g. ``GaussianLearnedSigma``'s σ) are trained
            with the model's: each gets a diagonal Q block, F includes them (``fisher_method="exact"``), and
            ``constrain_()`` runs after each step; the training loss must be ``likelihood.nll`` so that
            they have gradients.
        lr: η, the learning rate (> 0).
        momentum: β in [0, 1) of the exponential average (Algorithm 1's convention, from 0).
        momentum_on: ``"update"`` (average Q·g) or ``"gradient"`` (average g).
        weight_decay: w >= 0; adds ``w·θ`` to g.
        damping: γ >= 0 of F_γ = F + γ I.
        q: Q, as a ``ModelQ`` built by hand (``build_model_q`` or your own, covering every trainable parameter),
            or the options with which FishLeg builds it: a mapping with any of ``build_model_q``'s
            ``forms`` (QForms per layer type, module-name pattern or ``"default"``, see ``choose_forms``),
            ``coupled`` (blocks sharing one coupled form, e.g. ``[{"blocks": ["0", "2"], "form":
            "tridiag_kron"}]``), ``couple`` (``"adjacent"``: a ``tridiag_kron`` group per chain of consecutive
            linear layers) and ``init_scale`` (c of Q₀ = c·I; ``init_scale=sgd_lr / lr`` starts FishLeg out
            as SGD with momentum at ``sgd_lr``, like ``torch.optim.SGD(lr=sgd_lr·(1 − β), momentum=β)``, see
            ``sgd_lr_from_torch``). None: the adapters' default forms at Q₀ = I.
        aux_optimizer: the optimizer of λ, ``Opt_λ``: a name in ``AUX_OPTIMIZERS`` (with its default options,
            e.g. ``"adam"``: lr 1e-4) or ``{"name": ..., **options}`` with the options its factory declares,
            e.g. ``{"name": "adam", "lr": 1e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0}``.
        aux_weight_decay: w ≥ 0: λ's gradient is that of A + ½ w Σ ‖V‖² over the factor values V of Q
            (``add_weight_decay``), which pulls Q towards 0 and bounds it where F_γ does not (the paper: 1e-3
            on the autoencoders, 1e-4 on the deep linear network, with ``damping=0``). Any ``aux_optimizer``.
        aux_every: one auxiliary update every this many steps, the first step included; 0: Q stays fixed. Or
            a schedule of phases ((first step, period), ...) starting at step 0, e.g. ((0, 1), (200, 10)):
            frequent updates early, sparser later (paper §5.2).
        fisher_method: a name in ``FISHER_METHODS`` ("exact", "sampled", "empirical").
        low_rank: use the low-rank factors of linear and convolution layers' gradients for Q·g where that is
            cheaper (``momentum_on="update"``, no weight decay, no DDP); False: always the dense product.
        strict: an error, not a warning, for trainable parameters that no layer adapter covers.
        nonfinite: NaN/Inf in the gradient or an auxiliary update: ``"skip"`` that update (counted in
            ``nonfinite.skipped``, warned once; blamed on λ when its latest update blew Q up; a warning that
            training has stopped when more than half of the last 20 steps are skipped) or ``"raise"``
            FloatingPointError.
        seed: seed of the optimizer's own generator (sampling Fisher methods); default torch.initial_seed().
        aux_data: an iterable of auxiliary batches (a DataLoader, a list; cycled): an input tensor, a
            tuple (inputs, targets, ...) or a mapping of keyword inputs (see batch_fn). It must differ from the
            minibatches that produce g. Or give
            ``step(aux_batch=...)``.
        output_fn: for a model whose forward returns a tuple or a dict, the function that selects the output
            tensor the likelihood models (``lambda out: out["logits"]``), as the training loss does.
        bands: module-name patterns -> number of equal row bands, each with its own form: a fused q, k, v
            projection ``nn.Linear`` (timm's ViT: ``bands={"*.qkv": 3}``; see ``map_blocks``).
        batch_fn: maps an auxiliary batch to (model call, targets): the call a tensor, a tuple of positional
            inputs, a mapping of keyword inputs or a ``ModelCall``. Without it a mapping batch (Hugging Face's
            ``input_ids``, ``attention_mask``, ``labels``) calls the model with its entries as keywords, all but
            ``labels``, which are the targets (see ``split_batch``).
        fallback: a torch optimizer for the parameters Q does not precondition (embeddings, norms, ...):
            ``{"optimizer": "adam" | "adamw" | "sgd" | an Optimizer class, "params": [name patterns], "lr": ...,
            **its options}``; patterns match parameter or module names (``"*.wte"``, ``"*norm*"``). Its group
            joins ``param_groups`` (marked ``"fallback"``), so LR schedulers and checkpoints cover it.
        group_options: parameter groups with their own ``lr``, ``momentum``, ``weight_decay`` or
            ``decoupled_weight_decay``: ``[{"params": ["encoder.*"], "lr": 0.01}]``; the other parameters form
            the first group with the defaults.
        decoupled_weight_decay: θ ← (1 − η w) θ at each step, outside Q (as AdamW); unlike ``weight_decay``
            it keeps the low-rank product.
        aux_budget: at most this many auxiliary parameters per model parameter: the largest Kronecker factors
            become diagonal until Q fits (see ``build_model_q``). Without it, ``kron`` sides above 2048 are
            diagonal (``forms={"default": {"form": "kron", "max_size": None}}`` keeps every factor full).
        refresh: a Q that tracks a moving Fisher (``fishleg_core.kfac.running``): running averages of the
            KFAC factors G and A, updated from an auxiliary batch every ``stats_every`` steps (default 1), with
            decay ``decay`` (0.95); every ``every`` steps (required; the first step included, before its
            auxiliary update) each group with a KFAC start (``kron``, ``ekfac``, ...) is set to
            (G + √γπI)⁻¹ ⊗ (A + √γ/πI)⁻¹ at γ = ``damping`` (1e-3), its learned scales (``ekfac``'s A and B²)
            reset (``scales="reset"``) or kept (``"keep"``); ``samples`` targets per input for G (1). The
            auxiliary batches' model input must be one tensor, and ``output_fn`` is not supported.

    Raises:
        InvalidConfigError: (a ``ValueError``) an invalid hyperparameter; one line per field, naming it.
        TypeError: ``model`` is not a module, ``output_fn`` not callable, or ``q`` neither a ``ModelQ`` nor a
            mapping.
        ValueError: the model has no trainable parameters, ``q`` has options ``build_model_q`` does not take,
            or a built ``q`` does not cover the model.

    The per-group ``lr``, ``momentum`` and ``weight_decay`` may be changed between steps (LR schedulers
    work). The hyperparameters are validated by ``FishLegConfig``, generated from this signature.

    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: Likelihood | str,
        lr: PositiveFloat,
        *,
        momentum: Momentum = 0.9,
        momentum_on: Literal["gradient", "update"] = "update",
        weight_decay: NonNegativeFloat = 0.0,
        damping: NonNegativeFloat = 1.0,
        q: ModelQ | Mapping[str, Any] | None = None,
        aux_optimizer: RegisteredAuxOptimizer = "adam",
        aux_weight_decay: NonNegativeFloat = 0.0,
        aux_every: ValidSchedule = 10,
        fisher_method: RegisteredFisherMethod = "exact",
        low_rank: bool = True,
        strict: bool = False,
        nonfinite: Literal["skip", "raise"] = "skip",
        seed: int | None = None,
        aux_data: Iterable[Any] | None = None,
        output_fn: Callable[[Any], Tensor] | None = None,
        bands: BandChoices | None = None,
        batch_fn: BatchFn | None = None,
        aux_budget: float | None = None,
        fallback: dict[str, Any] | None = None,
        group_options: list[dict[str, Any]] | None = None,
        decoupled_weight_decay: float = 0.0,
        refresh: RefreshOptions | Mapping[str, Any] | None = None,
    ) -> None:
        arguments = dict(locals())
        # FishLegConfig is made at run time, so its fields are unknown to the type checker
        self.config: Any = cast(
            Any, validate(FishLegConfig, "FishLeg", {name: arguments[name] for name in FishLegConfig.model_fields})
        )
        if not isinstance(model, nn.Module):
            raise TypeError(f"FishLeg: model must be a torch.nn.Module, got {type(model).__name__}")
        check_callable("output_fn", output_fn, optional=True)
        check_callable("batch_fn", batch_fn, optional=True)
        self._batch_fn = batch_fn
        self._distributed = isinstance(model, nn.parallel.DistributedDataParallel)
        model = cast(nn.Module, model.module) if self._distributed else model
        self.model = model
        self.likelihood = resolve_likelihood(likelihood)
        params = trainable_parameters(model)
        if not params:
            raise ValueError("FishLeg: the model has no trainable parameters (requires_grad=True)")
        params.update(likelihood_parameters(self.likelihood))
        self._names = {id(p): name for name, p in params.items()}
        check_number("decoupled_weight_decay", decoupled_weight_decay, 0.0, inclusive=True)
        defaults = {
            "lr": lr,
            "momentum": self.config.momentum,
            "weight_decay": self.config.weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        excluded: list[str] = []
        self._fallback: torch.optim.Optimizer | None = None
        if fallback is not None:
            excluded, self._fallback = fallback_optimizer(params, fallback)
        preconditioned = {name: p for name, p in params.items() if name not in excluded}
        if not preconditioned:
            raise ValueError("FishLeg: the fallback takes every trainable parameter, leaving none to precondition")
        chosen, taken = option_groups(preconditioned, group_options)
        rest = [p for name, p in preconditioned.items() if name not in taken]
        fallback_groups = self._fallback.param_groups if self._fallback is not None else []
        super().__init__(([{"params": rest}] if rest else []) + chosen + fallback_groups, defaults)
        if self._fallback is not None:  # one state and one group dict: checkpoints and LR schedulers see both
            self._fallback.state = self.state
        init_scale = 1.0
        if isinstance(q, ModelQ):
            given = [name for name, value in {"bands": bands, "aux_budget": aux_budget}.items() if value is not None]
            if given:
                raise ValueError(
                    f"FishLeg: q is given (built by hand), so {', '.join(given)} must not be: they "
                    "describe how FishLeg builds Q"
                )
            check_model_q(q, preconditioned)
        else:
            options = q_options(q)
            init_scale = options.get("init_scale", init_scale)
            q = build_model_q(
                model,
                strict=self.config.strict,
                likelihood=self.likelihood,
                bands=bands,
                aux_budget=aux_budget,
                exclude=excluded,
                **options,
            )
        self.q: ModelQ = q
        self._caching_grams: bool | None = None
        self._cache_grams_for(0)
        device = next(iter(params.values())).device
        generator = torch.Generator(device=device)
        seed = self.config.seed if self.config.seed is not None else torch.initial_seed()
        generator.manual_seed(seed + (torch.distributed.get_rank() if self._distributed else 0))
        if self.config.damping == 0 and self.config.aux_every and self.config.aux_weight_decay == 0:
            warn_user(
                "FishLeg: damping=0: F_γ = F is singular wherever the model has more parameters than the "
                "auxiliary batch has outputs, and nothing then bounds Q (A(λ; u) is unbounded below along "
                "F's null space); use damping > 0 or aux_weight_decay > 0 (the paper's choice)"
            )
        self.nonfinite = NonFiniteGuard(self.config.nonfinite)
        self.monitor = QMonitor(self.q, init_scale, self.config.damping)
        self.health = StepHealth([(block.name, block.param_names) for group in self.q.groups for block in group.blocks])
        self.auxiliary = AuxiliaryUpdate(
            model,
            self.likelihood,
            self.q,
            optimizer=self.config.aux_optimizer,
            damping=self.config.damping,
            weight_decay=self.config.aux_weight_decay,
            fisher_method=self.config.fisher_method,
            generator=generator,
            guard=self.nonfinite,
            distributed=self._distributed,
            output_fn=output_fn,
            monitor=self.monitor,
        )
        self.aux_data = CyclicBatches(aux_data) if aux_data is not None else None
        self.refresh = self._refresh(refresh, output_fn, device, seed) if refresh is not None else None
        self.steps = 0
        # With momentum on Q·g, each step multiplies Q with the raw minibatch gradient, whose linear-layer
        # blocks have rank ≤ batch size (convolutions: ≤ batch × positions): capture their factors (paper
        # §4.4). Under DDP the gradients are averaged over ranks and no longer match the local factors.
        low_rank = (
            self.config.low_rank
            and self.config.momentum_on == "update"
            and all(group["weight_decay"] == 0 for group in self._groups())
            and not self._distributed
        )
        self._capture = GradientFactors.for_q(model, self.q) if low_rank else None

    def set_damping(self, damping: float) -> None:
        """Set γ mid-run (adaptive damping): from the next auxiliary update on, A(λ; u) = ½ uᵀQ(F + γI)Qu − uᵀQu
        aims λ at the new (F + γI)⁻¹, and the diagnostics read the new γ.

        Raises:
            ValueError: for γ < 0 or not finite."""
        if not (math.isfinite(damping) and damping >= 0):
            raise ValueError(f"FishLeg.set_damping: damping must be a finite number >= 0, got {damping}")
        self.config = self.config.model_copy(update={"damping": damping})
        self.auxiliary.damping = damping
        self.monitor.damping = damping

    @property
    def last_aux_loss(self) -> Tensor | None:
        """A(λ; u) at the last auxiliary update (before its step), or None before the first."""
        return self.auxiliary.last_loss

    def diagnostics(self) -> dict[str, Any]:
        """The health of training: the step count, the last auxiliary loss A (healthy: in [−1/(2γ), 0)), per
        block the scale of Q along the gradients relative to its start (``q_scale``: None for a block whose
        gradient was 0, with the reason in ``q_scale_missing``), the Fisher's size relative to the damping
        along Q·g (``fisher_to_damping``), whether training has stopped (``training_stopped``: most recent
        steps skipped), the blocks whose gradient is dead (``dead_blocks``), the warnings given (``QMonitor``,
        ``StepHealth``) and the skipped non-finite updates."""
        last = self.last_aux_loss
        monitor = self.monitor.state()
        return {
            "steps": self.steps,
            "last_aux_loss": None if last is None else last.item(),
            "aux_loss_floor": -0.5 / self.config.damping if self.config.damping > 0 else None,
            **monitor,
            **self.health.state(),
            "warnings": sorted({*monitor["warnings"], *self.health.warned}),
            "skipped": dict(self.nonfinite.skipped),
        }

    @torch.no_grad()
    def step(  # type: ignore[override]  # Optimizer.step's overloads; this one also takes aux_batch
        self, closure: Callable[[], Tensor] | None = None, aux_batch: Any = None
    ) -> Tensor | None:
        """One FishLeg step from the gradients in ``.grad``; ``aux_batch`` overrides ``aux_data`` once.

        A gradient with NaN or Inf skips the whole step (nothing changes; ``nonfinite="raise"`` raises);
        an auxiliary update meeting them skips only that update, leaving λ and its Adam state as they were.
        """
        check_callable("closure", closure, optional=True)
        given = split_batch(aux_batch, batch_fn=self._batch_fn) if aux_batch is not None else None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update_due = aux_due(self.config.aux_every, self.steps)
        self._cache_grams_for(self.steps)
        aux_batch_parts = None
        if update_due:
            aux_batch_parts = given or split_batch(self._next_aux_batch(), batch_fn=self._batch_fn)
        gradient = self._gradient()
        blame = self.monitor.blame()
        finite = self.nonfinite.check("gradient", gradient, "the step is skipped", blame)
        self.health.skipped(not finite, blame)
        if not finite:
            if self._capture:
                self._capture.clear()
            return loss
        self.health.gradients({self._names[id(p)]: p.grad for group in self.param_groups for p in group["params"]})
        factors = self._capture.factors(gradient) if self._capture else {}
        if self.refresh is not None:
            inputs = None
            if self.refresh.statistics_due(self.steps):
                parts = aux_batch_parts or given or split_batch(self._next_aux_batch(), batch_fn=self._batch_fn)
                inputs = _tensor_inputs(parts[0])
            self.refresh.step(self.steps, inputs)
        on_gradient = self.config.momentum_on == "gradient"
        if on_gradient:
            gradient = self._averaged("momentum_buffer", gradient)
        gradient_norm = norm(gradient) if update_due else None
        # a zero gradient gives no direction to learn from (gradient_norm is None exactly when no aux step is due)
        aux_step = False
        if aux_batch_parts is not None and gradient_norm is not None and gradient_norm > 0:
            inverse_norm = 1.0 / gradient_norm
            u_factors = {name: (left * inverse_norm, right) for name, (left, right) in factors.items()}
            self.auxiliary.step(scale(gradient, inverse_norm), u_factors, *aux_batch_parts)
            aux_step = True
        direction = self.q(gradient, factors)
        if aux_step:
            self.monitor.check_updated(gradient, direction)  # Q as this update left it, before θ moves with it
        if not on_gradient:
            direction = self._averaged("momentum_buffer", direction)
        # Only now, with nothing left that can fail, does the optimizer state change.
        self._store("momentum_buffer", gradient if on_gradient else direction)
        for group in self._groups():
            params = group["params"]
            decay = group.get("decoupled_weight_decay", 0.0)  # absent from checkpoints made before it existed
            if decay:  # θ ← (1 − η w) θ, outside Q (as AdamW)
                torch._foreach_mul_(params, 1 - group["lr"] * decay)
            torch._foreach_add_(params, [direction[self._names[id(p)]] for p in params], alpha=-group["lr"])
        if self._fallback is not None:
            self._fallback.step()
        if isinstance(self.likelihood, ParametricLikelihood):
            self.likelihood.constrain_()
        self.steps += 1
        return loss

    def _refresh(
        self, spec: RefreshOptions | Mapping[str, Any], output_fn: Any, device: torch.device, seed: int
    ) -> KFACRefresh:
        """The ``refresh`` option's ``KFACRefresh``, its generator seeded with ``seed + 1``."""
        options = refresh_options(spec)
        if output_fn is not None:
            raise ValueError("FishLeg: refresh needs the model's output itself, so output_fn must be None")
        blocks = kfac_blocks(self.model)
        if not any(
            all(block.name in blocks for block in group.blocks) and takes_kfac_start(group) for group in self.q.groups
        ):
            raise NoKroneckerStart(
                "FishLeg refresh: no group of Q takes a KFAC refresh (a form with set_kronecker, such as 'kron' "
                "or 'ekfac', on layers with KFAC factors); choose one with q={'forms': {'default': 'ekfac'}}"
            )
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        return KFACRefresh(self.q, self.model, self.likelihood, options, generator)

    def _groups(self) -> list[dict[str, Any]]:
        """The parameter groups that Q preconditions (not the fallback optimizer's)."""
        return [group for group in self.param_groups if "fallback" not in group]

    def _cache_grams_for(self, step: int) -> None:
        """Gram matrices pay when λ serves several steps: cache them unless the phase of ``step`` updates λ
        at every step (a function of the step count alone, so a resumed run takes the same products)."""
        caching = aux_phase(self.config.aux_every, step)[1] != 1
        if caching != self._caching_grams:
            self.q.cache_grams(caching)
            self._caching_grams = caching

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear ``.grad``, and the captured gradient factors of the passes already backpropagated; those of a
        forward pass whose backward is still to come are kept (closures that zero the gradients between the
        forward and the backward pass, as Lightning's do)."""
        super().zero_grad(set_to_none)
        if self._capture:
            self._capture.zero_grad()

    def _gradient(self) -> ParamDict:
        """g (+ weight_decay·θ) by parameter name; a parameter without ``.grad`` contributes zeros."""
        gradient = {}
        for group in self._groups():
            for p in group["params"]:
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                gradient[self._names[id(p)]] = g + group["weight_decay"] * p if group["weight_decay"] else g
        return gradient

    def _averaged(self, key: str, values: ParamDict) -> ParamDict:
        """The exponential average β b + (1 − β) x of the buffers b = ``self.state[p][key]`` (from b = 0),
        as new tensors: the buffers change only in ``_store``."""
        averaged: ParamDict = {}
        for group in self._groups():
            names = [self._names[id(p)] for p in group["params"]]
            buffers = [self.state[p].get(key, torch.zeros_like(p)) for p in group["params"]]
            new = torch._foreach_lerp(buffers, [values[name] for name in names], 1 - group["momentum"])
            averaged.update(zip(names, new))
        return averaged

    def _store(self, key: str, values: ParamDict) -> None:
        for group in self._groups():
            for p in group["params"]:
                self.state[p][key] = values[self._names[id(p)]]

    def _next_aux_batch(self) -> Any:
        if self.aux_data is None:
            raise RuntimeError(
                f"FishLeg: an auxiliary update is due at step {self.steps} (aux_every="
                f"{self.config.aux_every}) but no auxiliary batch is available: pass aux_data=<iterable of "
                "batches> to FishLeg(...) or call step(aux_batch=<inputs>)"
            )
        return self.aux_data.next()

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus, under ``"fishleg"``: λ (``q``), its Adam state (``aux_optimizer``),
        the optimizer's random generator, the step count, the counts of skipped updates and the position
        in aux_data."""
        state = super().state_dict()
        state["fishleg"] = {
            **self.auxiliary.state_dict(),
            "steps": self.steps,
            "skipped": dict(self.nonfinite.skipped),
            "aux_data": self.aux_data.state_dict() if self.aux_data else None,
            "refresh": self.refresh.state_dict() if self.refresh else None,
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
            names = given.keys() | expected.keys()
            differing = sorted(name for name in names if given.get(name) != expected.get(name))
            lines = [
                f"  {self.q.entry_label(name)}: saved {given.get(name, '(none)')}, "
                f"current {expected.get(name, '(none)')}"
                for name in differing[:8]
            ]
            more = f"\n  ... and {len(differing) - 8} more" if len(differing) > 8 else ""
            raise ValueError(
                "FishLeg state_dict: its auxiliary parameters do not fit this optimizer's Q "
                "(build the optimizer with the same model, forms and groups); entries that differ:\n"
                + "\n".join(lines)
                + more
            )
        super().load_state_dict(state_dict)  # checks the parameter groups before changing anything
        if self._fallback is not None:  # torch made new group dicts and a new state: share them again
            self._fallback.state = self.state
            self._fallback.param_groups = [group for group in self.param_groups if "fallback" in group]
        self.auxiliary.load_state_dict(extra)
        self.steps = extra["steps"]
        self.nonfinite.skipped = dict(extra["skipped"])
        if self.aux_data and extra["aux_data"]:
            self.aux_data.load_state_dict(extra["aux_data"])
        if self.refresh is not None and extra.get("refresh"):
            self.refresh.load_state_dict(extra["refresh"])


def _tensor_inputs(inputs: Any) -> Tensor:
    """The auxiliary batch's model input, which the KFAC statistics of ``refresh`` need as one tensor."""
    if not isinstance(inputs, Tensor):
        raise TypeError(
            "FishLeg refresh: the KFAC statistics need auxiliary batches whose model input is one tensor, "
            f"got {type(inputs).__name__}"
        )
    return inputs


NOT_HYPERPARAMETERS = (
    "model",
    "likelihood",
    "q",
    "aux_data",
    "output_fn",
    "bands",
    "batch_fn",
    "aux_budget",
    "fallback",
    "group_options",
    "decoupled_weight_decay",
    "refresh",
)
"""The arguments of ``FishLeg`` that are objects or structures checked where they are used, not fields of
``FishLegConfig``."""

FishLegConfig = config_from_signature(FishLeg.__init__, "FishLegConfig", exclude=NOT_HYPERPARAMETERS)
"""The validated hyperparameters of ``FishLeg``: one field per keyword of ``FishLeg.__init__`` (its type with
constraints and its default), less the objects that are no hyperparameters."""
