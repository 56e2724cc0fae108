"""The paper's Figure 1: FishLeg against SGD with momentum and Adam on a deep linear network.

A network of ``depth`` bias-free linear layers of ``width`` units learns from a noisy teacher of the same
class (weights N(0, 1/width), noise σ₀, inputs N(0, I)) in a large-data and a small-data regime, minibatches
of 40. Each seed draws its own teacher, data and student initialisation; within a seed every optimizer starts
from the same student and sees the same minibatches, FishLeg's auxiliary batches (40 training inputs, the
exact Fisher through autograd over all layers) coming from a stream of its own.

Configurations (``--variant``; ``docs/results/paper_settings.md`` lists the paper's settings):

- ``paper`` (default), the settings of the paper's code (``dln_exact.ml``): a Gaussian likelihood with a
  learned σ (0.1, kept in [1e-4, 1]) trained by every optimizer on the NLL, σ with its own Q block in
  FishLeg; no damping; λ by Adam at 1e-3 with ε = 1e-4 and weight decay 1e-4; Q₀ = (1e-3/0.04)·I, block
  Kronecker per layer; Adam as the contender with β₂ = 0.9, ε = 1e-4.
- ``fixed-sigma-kfac``, the paper's settings except: σ² = width fixed (the loss ½‖y − f‖²/n), λ's rate
  α = 1e-2 without weight decay, Q started from the KFAC factors damped by 1e-3 (training undamped), 4,000
  iterations per regime (``docs/results/deep_linear.md``, "What moves FishLeg").
- ``multiplicative-damped``, this repository's earlier setting: σ² = width fixed (the loss ½‖y − f‖²/n),
  damping 1e-3, Q₀ = I, λ by the "multiplicative" optimizer at 0.03, torch's Adam defaults.

Whatever the likelihood, the losses reported are L = mean ½‖y − f(x)‖²/n, against the noise floor: the
teacher's own test L (≈ ½σ₀²). Panel B follows A(Q; u) of the live Q and of copies frozen every
``freeze_every`` iterations on common directions u. Timings: CPU seconds of the training steps only (evaluations
excluded), one thread, the optimizers run back to back in one process.

    python -m experiments.deep_linear [--quick] [--variant paper|fixed-sigma-kfac|multiplicative-damped]
        [--seeds N] [--out DIR] [--config FILE] [--regimes large,small]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

import fishleg_core as fl
from experiments.common.data import minibatches
from experiments.common.store import write_report
from experiments.common.training import jsonable, train
from experiments.deep_linear.figure import plot_figure1, summary_table
from experiments.deep_linear.frozen_q import FrozenQMonitor
from experiments.deep_linear.task import TeacherData, build_deep_linear, half_squared_error, likelihood, teacher_data
from fishleg_core.likelihoods import likelihood_parameters

OPTIMIZERS = ("sgdm", "adam", "fishleg")
KFAC_START_BATCHES = 4

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass
class DeepLinearConfig:
    """The paper's settings (section 5.1, Figure 1, ``dln_exact.ml``) unless stated; ``regimes``: training
    samples → iterations."""

    depth: int = 20
    width: int = 20
    noise: float = 0.001
    regimes: dict[str, tuple[int, int]] = field(default_factory=lambda: {"large": (4000, 2000), "small": (40, 2000)})
    n_test: int = 2000
    batch: int = 40
    aux_batch: int = 40  # FishLeg's curvature batch (training inputs)
    seeds: int = 3
    sigma: float | None = 0.1  # the learned σ's start; None: σ² = width, fixed
    sigma_bounds: tuple[float, float] = (1e-4, 1.0)
    sgd_lr: float = 0.002  # torch.optim.SGD, momentum 0.9
    adam_lr: float = 0.0002
    adam_betas: tuple[float, float] = (0.9, 0.9)  # the paper's Adam (Goldfarb et al.'s best)
    adam_eps: float = 1e-4
    lr: float = 0.04  # FishLeg η
    sgd_ref_lr: float = 1e-3  # Q₀ = (sgd_ref_lr / lr)·I: FishLeg starts as SGD at this rate
    aux_optimizer: str = "adam"
    aux_lr: float = 1e-3  # FishLeg α
    aux_eps: float = 1e-4
    aux_weight_decay: float = 1e-4
    momentum: float = 0.9  # FishLeg β
    momentum_on: str = "gradient"  # Algorithm 1 as written, as in the paper's Figure 1
    damping: float = 0.0
    kfac_start_damping: float | None = None  # start Q from the KFAC factors damped by this; None: Q₀ = c·I
    kfac_refresh_every: int = 0  # re-start Q from the KFAC factors every this many steps (0: never)
    aux_every: int = 1
    every: int = 50  # iterations between evaluations
    freeze_every: int = 500  # panel B


VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "fixed-sigma-kfac": {
        "regimes": {"large": (4000, 4000), "small": (40, 4000)},
        "sigma": None,
        "aux_lr": 0.01,
        "aux_weight_decay": 0.0,
        "kfac_start_damping": 0.001,
    },
    "multiplicative-damped": {
        "seeds": 2,
        "sigma": None,
        "adam_betas": (0.9, 0.999),
        "adam_eps": 1e-8,
        "sgd_ref_lr": 0.04,
        "aux_optimizer": "multiplicative",
        "aux_lr": 0.03,
        "aux_eps": 1e-8,
        "aux_weight_decay": 0.0,
        "damping": 0.001,
    },
}
"""Named configurations: overrides of ``DeepLinearConfig``'s defaults (see the module docstring)."""


def configuration(variant: str = "paper", quick: bool = False) -> DeepLinearConfig:
    """The named configuration ``variant``; ``quick``: on a tiny network for a few iterations (seconds)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown deep-linear variant {variant!r}; known: {', '.join(VARIANTS)}")
    config = DeepLinearConfig(**VARIANTS[variant])
    if quick:
        config = replace(
            config,
            depth=5,
            width=6,
            regimes={"large": (400, 60), "small": (40, 60)},
            n_test=200,
            seeds=1,
            every=20,
            freeze_every=40,
        )
    return config


def quick_config() -> DeepLinearConfig:
    return configuration("paper", quick=True)


def likelihood_for(config: DeepLinearConfig) -> fl.Likelihood:
    """A fresh likelihood per optimizer: the learned-σ Gaussian, or the fixed σ² = width one."""
    if config.sigma is None:
        return likelihood(config.width)
    low, high = config.sigma_bounds
    return fl.GaussianLearnedSigma(config.sigma, min_sigma=low, max_sigma=high)


def loss_for(lik: fl.Likelihood) -> LossFn:
    """The training loss: the NLL of a learned-σ likelihood, else ½‖y − f‖²/n (the fixed NLL less constants)."""
    if isinstance(lik, fl.ParametricLikelihood):
        return lambda model, inputs, targets: lik.nll(model(inputs), targets)
    return half_squared_error


def fishleg_q(
    model: nn.Module, lik: fl.Likelihood, config: DeepLinearConfig, data: TeacherData, couple: str | None = None
) -> fl.ModelQ:
    """FishLeg's Q at Q₀ = (sgd_ref_lr / lr)·I, or, with ``kfac_start_damping`` γ₀, at the damped KFAC inverse
    s·(A + √γ₀ I)⁻¹ ⊗ (G + √γ₀ I)⁻¹ fitted on ``KFAC_START_BATCHES`` training minibatches (``kfac_warm_start``)."""
    q = fl.build_model_q(model, couple=couple, init_scale=config.sgd_ref_lr / config.lr, likelihood=lik)
    if config.kfac_start_damping is not None:
        start = list(itertools.islice(minibatch_pairs(data, config.batch, seed=99), KFAC_START_BATCHES))
        fl.kfac_warm_start(q, model, lik, start, damping=config.kfac_start_damping)
    return q


def refresh_kfac(optimizer: fl.FishLeg, lik: fl.Likelihood, config: DeepLinearConfig, data: TeacherData) -> None:
    """With ``kfac_refresh_every`` T > 0, re-start Q from the damped KFAC factors (``fishleg_q``) of the current
    network every T steps, on fresh training minibatches; λ's optimizer then goes on from there."""
    if not config.kfac_refresh_every:
        return
    if config.kfac_start_damping is None:
        raise ValueError("kfac_refresh_every needs kfac_start_damping (the damping of the KFAC factors)")
    batches = minibatch_pairs(data, config.batch, seed=98)
    steps = itertools.count(1)

    def hook(*_: Any) -> None:
        if next(steps) % config.kfac_refresh_every == 0:
            start = list(itertools.islice(batches, KFAC_START_BATCHES))
            fl.kfac_warm_start(optimizer.q, optimizer.model, lik, start, damping=cast(float, config.kfac_start_damping))

    optimizer.register_step_post_hook(hook)


def contender(
    name: str, model: nn.Module, lik: fl.Likelihood, config: DeepLinearConfig, aux: Any, data: TeacherData
) -> torch.optim.Optimizer:
    """The optimizer ``name`` on the model's parameters and the likelihood's (σ, clamped after each step)."""
    if name == "fishleg":
        fishleg = fl.FishLeg(
            model,
            lik,
            lr=config.lr,
            momentum=config.momentum,
            momentum_on=cast(Literal["gradient", "update"], config.momentum_on),
            damping=config.damping,
            q=fishleg_q(model, lik, config, data),
            aux_optimizer={"name": config.aux_optimizer, "lr": config.aux_lr, "eps": config.aux_eps},
            aux_weight_decay=config.aux_weight_decay,
            aux_every=config.aux_every,
            aux_data=aux,
            seed=0,
        )
        refresh_kfac(fishleg, lik, config, data)
        return fishleg
    params = [*model.parameters(), *likelihood_parameters(lik).values()]
    optimizer: torch.optim.Optimizer
    if name == "sgdm":
        optimizer = torch.optim.SGD(params, lr=config.sgd_lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(
            params, lr=config.adam_lr, betas=(config.adam_betas[0], config.adam_betas[1]), eps=config.adam_eps
        )
    if isinstance(lik, fl.ParametricLikelihood):
        optimizer.register_step_post_hook(lambda *_: cast(fl.ParametricLikelihood, lik).constrain_())
    return optimizer


def run_seed(config: DeepLinearConfig, n_train: int, iterations: int, seed: int) -> dict[str, Any]:
    """The three optimizers on one teacher, dataset and student initialisation."""
    data = teacher_data(config.depth, config.width, n_train, config.n_test, config.noise, seed)
    result: dict[str, Any] = {"noise_floor": data.noise_floor}
    for name in OPTIMIZERS:
        model = build_deep_linear(config.depth, config.width, seed=seed)
        lik = likelihood_for(config)
        loss_fn = loss_for(lik)
        aux = minibatch_inputs(data, config.aux_batch, seed=3 * seed + 1)
        optimizer = contender(name, model, lik, config, aux, data)
        monitor = None
        if name == "fishleg":
            monitor = FrozenQMonitor(
                cast(fl.FishLeg, optimizer),
                loss_fn,
                minibatch_pairs(data, config.batch, seed=3 * seed + 2),
                data.test_inputs[:200],
                config.freeze_every,
            )

        def evaluate(iteration: int, model=model, optimizer=optimizer, monitor=monitor, lik=lik) -> dict[str, float]:
            values = losses(model, data)
            if isinstance(lik, fl.GaussianLearnedSigma):
                values["sigma"] = lik.sigma.item()
            if monitor is not None:
                monitor(iteration)
                last = optimizer.last_aux_loss
                values["aux_loss_in_training"] = float("nan") if last is None else last.item()
            return values

        curve = train(
            model,
            optimizer,
            loss_fn,
            minibatch_pairs(data, config.batch, seed=3 * seed),
            iterations,
            config.every,
            evaluate,
            clock=time.thread_time,
        )
        result[name] = {"curve": jsonable(curve), **({"panel_b": monitor.records} if monitor else {})}
    return result


def losses(model: torch.nn.Module, data: TeacherData) -> dict[str, float]:
    """The training and test loss of ``model``."""
    with torch.no_grad():
        return {
            "train_loss": half_squared_error(model, data.train_inputs, data.train_targets).item(),
            "test_loss": half_squared_error(model, data.test_inputs, data.test_targets).item(),
        }


def minibatch_pairs(data: TeacherData, batch: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Seeded (inputs, targets) minibatches of the training set, endlessly."""
    for index in minibatches(torch.arange(len(data.train_inputs)), batch, torch.Generator().manual_seed(seed)):
        yield data.train_inputs[index], data.train_targets[index]


def minibatch_inputs(data: TeacherData, batch: int, seed: int) -> Iterator[Tensor]:
    """The inputs of ``minibatch_pairs``: FishLeg's auxiliary batches."""
    for inputs, _ in minibatch_pairs(data, batch, seed):
        yield inputs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m experiments.deep_linear", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny network and a few iterations (seconds)")
    parser.add_argument("--seeds", type=int, help="independent repetitions (teacher, data, initialisation)")
    parser.add_argument("--out", default="results/deep_linear", help="output folder")
    parser.add_argument("--variant", default="paper", choices=list(VARIANTS), help="a named configuration")
    parser.add_argument("--config", help="JSON file overriding fields of the configuration")
    parser.add_argument("--regimes", help="comma-separated regimes to run (default: all, e.g. large,small)")
    args = parser.parse_args(argv)
    config = configuration(args.variant, quick=args.quick)
    if args.config:
        config = DeepLinearConfig(**{**asdict(config), **json.loads(Path(args.config).read_text())})
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error(f"--seeds must be at least 1, got {args.seeds}")
        config.seeds = args.seeds
    if args.regimes:
        names = args.regimes.split(",")
        unknown = [name for name in names if name not in config.regimes]
        if unknown:
            parser.error(f"unknown regime(s) {', '.join(unknown)}; known: {', '.join(config.regimes)}")
        config.regimes = {name: config.regimes[name] for name in names}
    if config.freeze_every % config.every:
        parser.error(
            f"freeze_every ({config.freeze_every}) must be a multiple of every ({config.every}): Q is "
            "frozen at evaluation points"
        )
    torch.set_num_threads(1)
    runs = [
        (regime, n_train, iterations, seed)
        for regime, (n_train, iterations) in config.regimes.items()
        for seed in range(config.seeds)
    ]
    results: dict[str, list] = {regime: [] for regime in config.regimes}
    for regime, n_train, iterations, seed in tqdm(runs, desc="deep linear (regime, seed)"):
        results[regime].append(run_seed(config, n_train, iterations, seed))
    report = {"variant": args.variant, "config": asdict(config), "regimes": results}
    write_report(
        Path(args.out),
        report,
        "figure1.png",
        lambda path: plot_figure1(path, config, results),
        summary_table(config, results),
    )
    return report


if __name__ == "__main__":
    main()
