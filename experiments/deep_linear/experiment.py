"""The paper's Figure 1: FishLeg against SGD with momentum and Adam on a deep linear network.

A network of ``depth`` bias-free linear layers of ``width`` units, Gaussian likelihood (σ² = width: the loss
is L = mean ½‖y − f(x)‖²/width, the NLL without its constant), learns from a noisy teacher of the same class
(weights N(0, 1/width), noise σ₀, inputs N(0, I)) in a large-data and a small-data regime, minibatches of
40. Each seed draws its own teacher, data and student initialisation; within a seed every optimizer starts
from the same student and sees the same minibatches, FishLeg's auxiliary batches (training inputs, the
exact Fisher of the Gaussian likelihood) coming from a stream of its own. Panel B follows A(Q; u) of the
live Q and of copies frozen every ``freeze_every`` iterations on common directions u. Timings: training
steps only (evaluations excluded), one thread, the optimizers run back to back in one process. FishLeg
learns λ with the auxiliary optimizer "multiplicative" at 0.03 (``MultiplicativeFactorSteps``); the paper's
Adam at α = 0.001 is ``{"aux_optimizer": "adam", "aux_lr": 0.001}`` in ``--config``.

    python -m experiments.deep_linear [--quick] [--seeds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor
from tqdm.auto import tqdm

import fishleg_core as fl
from experiments.common.data import minibatches
from experiments.common.store import write_report
from experiments.common.training import jsonable, train
from experiments.deep_linear.figure import plot_figure1, summary_table
from experiments.deep_linear.frozen_q import FrozenQMonitor
from experiments.deep_linear.task import TeacherData, build_deep_linear, half_squared_error, likelihood, teacher_data

OPTIMIZERS = ("sgdm", "adam", "fishleg")


@dataclass
class DeepLinearConfig:
    """The paper's settings (section 5.1, Figure 1) unless stated; ``regimes``: training samples → iterations."""

    depth: int = 20
    width: int = 20
    noise: float = 0.001
    regimes: dict[str, tuple[int, int]] = field(default_factory=lambda: {"large": (4000, 2000), "small": (40, 2000)})
    n_test: int = 2000
    batch: int = 40
    seeds: int = 2
    sgd_lr: float = 0.002  # torch.optim.SGD, momentum 0.9
    adam_lr: float = 0.0002
    lr: float = 0.04  # FishLeg η
    aux_optimizer: str = "multiplicative"  # the paper's: "adam" (with aux_lr 0.001)
    aux_lr: float = 0.03  # FishLeg α (the paper's 0.001 with Adam)
    momentum: float = 0.9  # FishLeg β
    momentum_on: str = "gradient"  # Algorithm 1 as written, as in the paper's Figure 1
    damping: float = 0.001
    aux_every: int = 1
    every: int = 50  # iterations between evaluations
    freeze_every: int = 500  # panel B


def quick_config() -> DeepLinearConfig:
    return DeepLinearConfig(
        depth=5,
        width=6,
        regimes={"large": (400, 60), "small": (40, 60)},
        n_test=200,
        seeds=1,
        every=20,
        freeze_every=40,
    )


def contender(name: str, model: torch.nn.Module, config: DeepLinearConfig, aux: Any) -> torch.optim.Optimizer:
    if name == "sgdm":
        return torch.optim.SGD(model.parameters(), lr=config.sgd_lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.adam_lr)
    return fl.FishLeg(
        model,
        likelihood(config.width),
        lr=config.lr,
        momentum=config.momentum,
        momentum_on=cast(Literal["gradient", "update"], config.momentum_on),
        damping=config.damping,
        aux_optimizer=config.aux_optimizer,
        aux_lr=config.aux_lr,
        aux_every=config.aux_every,
        aux_data=aux,
        seed=0,
    )


def run_seed(config: DeepLinearConfig, n_train: int, iterations: int, seed: int) -> dict[str, Any]:
    """The three optimizers on one teacher, dataset and student initialisation."""
    data = teacher_data(config.depth, config.width, n_train, config.n_test, config.noise, seed)
    result: dict[str, Any] = {"noise_floor": data.noise_floor}
    for name in OPTIMIZERS:
        model = build_deep_linear(config.depth, config.width, seed=seed)
        aux = minibatch_inputs(data, config.batch, seed=3 * seed + 1)
        optimizer = contender(name, model, config, aux)
        monitor = None
        if name == "fishleg":
            monitor = FrozenQMonitor(
                cast(fl.FishLeg, optimizer),
                half_squared_error,
                minibatch_pairs(data, config.batch, seed=3 * seed + 2),
                data.test_inputs[:200],
                config.freeze_every,
            )

        def evaluate(iteration: int, model=model, optimizer=optimizer, monitor=monitor) -> dict[str, float]:
            values = losses(model, data)
            if monitor is not None:
                monitor(iteration)
                last = optimizer.last_aux_loss
                values["aux_loss_in_training"] = float("nan") if last is None else last.item()
            return values

        curve = train(
            model,
            optimizer,
            half_squared_error,
            minibatch_pairs(data, config.batch, seed=3 * seed),
            iterations,
            config.every,
            evaluate,
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
    parser.add_argument("--config", help="JSON file overriding fields of DeepLinearConfig")
    args = parser.parse_args(argv)
    config = quick_config() if args.quick else DeepLinearConfig()
    if args.config:
        config = DeepLinearConfig(**{**asdict(config), **json.loads(Path(args.config).read_text())})
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error(f"--seeds must be at least 1, got {args.seeds}")
        config.seeds = args.seeds
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
    report = {"config": asdict(config), "regimes": results}
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
