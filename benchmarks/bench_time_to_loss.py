"""Wall-clock time for FishLeg to reach the training loss SGD with momentum reaches, on the deep autoencoder.

SGD with momentum (torch convention, β = 0.9) is run at several learning rates for ``--iterations``
iterations; the best stable one sets the target: its training loss at the end (mean of the last
``--window`` minibatch losses). FishLeg (auxiliary update every 10 steps: both momentum placements from
Q₀ = the best SGD's step, and momentum on Q·g from the damped-KFAC start, ``fl.kfac_warm_start``) then
trains from the same initial model on the same batch sequence until its running mean loss reaches the
target, or for 2× the iterations. Times are cumulative wall-clock seconds of the optimizer's set-up (the
KFAC start) and the training loop (2 threads).

    python -m benchmarks.bench_time_to_loss [--iterations N] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

import fishleg_core as fl
from benchmarks.common import DEEP_AUTOENCODER, minibatches, mnist_digits, write_json
from experiments.common.autoencoder import build_autoencoder

LIKELIHOOD = fl.LIKELIHOODS.build("bernoulli")
SGD_RATES = (0.001, 0.002, 0.003, 0.005, 0.01)
MOMENTUM = 0.9
KFAC_START_LR = 0.01
"""FishLeg's η from the damped-KFAC start: the best of 0.003 / 0.01 / 0.03 in ``experiments.autoencoder_training``'s
sweep (docs/results/training.md, "Autoencoder training"), where 0.03 diverged."""


def run(
    make: Callable[[nn.Module], torch.optim.Optimizer],
    data: torch.Tensor,
    iterations: int,
    window: int,
    target: float = -math.inf,
) -> dict:
    """Train from the shared initial model; stop early once the running mean loss is ≤ ``target``."""
    model = build_autoencoder(DEEP_AUTOENCODER, seed=0)
    start = time.perf_counter()  # the optimizer's set-up (a KFAC start) counts
    optimizer = make(model)
    batches = minibatches(data, 100, seed=1)
    losses, seconds = [], []
    for _ in range(iterations):
        x = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = LIKELIHOOD.nll(model(x), x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
        running = sum(losses[-window:]) / len(losses[-window:])
        if not math.isfinite(running):
            break
        if len(losses) >= window and running <= target:
            return {"reached": True, "iterations": len(losses), "seconds": seconds[-1], "loss": running}
    return {"reached": False, "iterations": len(losses), "seconds": seconds[-1], "loss": running}


def arguments(description: str, iterations: int, help: str) -> argparse.ArgumentParser:
    """The options shared by the time-to-loss benchmarks: --iterations, --window, --json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--iterations", type=int, default=iterations, help=help)
    parser.add_argument("--window", type=int, default=20, help="minibatch losses in the running mean")
    parser.add_argument("--json", help="write the measurements to this file")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = arguments(__doc__.splitlines()[0], 1000, "SGD's iterations (FishLeg gets twice as many)").parse_args(argv)
    torch.set_num_threads(2)
    data = mnist_digits()

    def sgd_with(lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=MOMENTUM)

    sgd = {lr: run(sgd_with(lr), data, args.iterations, args.window) for lr in SGD_RATES}
    stable = {lr: r for lr, r in sgd.items() if math.isfinite(r["loss"]) and r["iterations"] == args.iterations}
    best_lr = min(stable, key=lambda lr: stable[lr]["loss"])
    target = stable[best_lr]["loss"]

    def fishleg_with(on: Literal["update", "gradient"]) -> Callable[[nn.Module], torch.optim.Optimizer]:
        return lambda m: fl.FishLeg(
            m,
            LIKELIHOOD,
            lr=1.0,
            sgd_lr=best_lr / (1 - MOMENTUM),
            momentum=MOMENTUM,
            momentum_on=on,
            damping=1.0,
            aux_lr=3e-3,
            aux_every=10,
            aux_data=minibatches(data, 100, seed=2),
        )

    def fishleg_from_kfac(model: nn.Module) -> torch.optim.Optimizer:
        """FishLeg (momentum on Q·g) with Q₀ the damped-KFAC start on 4 minibatches of the auxiliary stream."""
        aux_data = minibatches(data, 100, seed=2)
        q = fl.build_model_q(model, {"default": "kron"})
        fl.kfac_warm_start(q, model, LIKELIHOOD, [(x, x) for x in itertools.islice(aux_data, 4)], damping=1.0)
        return fl.FishLeg(
            model,
            LIKELIHOOD,
            lr=KFAC_START_LR,
            momentum=MOMENTUM,
            damping=1.0,
            aux_lr=1e-4,
            aux_every=10,
            aux_data=aux_data,
            q=q,
        )

    fishleg: dict[str, dict] = {}
    momentum_ons: tuple[Literal["update", "gradient"], ...] = ("update", "gradient")
    for momentum_on in momentum_ons:
        # Q₀ = (sgd_lr / lr)·I: FishLeg starts as the best SGD (sgd_lr in Algorithm 1's (1 − β) convention)
        fishleg[momentum_on] = run(fishleg_with(momentum_on), data, 2 * args.iterations, args.window, target)
    fishleg["kfac_start"] = run(fishleg_from_kfac, data, 2 * args.iterations, args.window, target)
    print(f"SGD with momentum {MOMENTUM}, learning rates tried: {', '.join(f'{lr:g}' for lr in SGD_RATES)}")
    for lr, r in sgd.items():
        print(f"  lr {lr:<6g} loss after {r['iterations']} iterations {r['loss']:8.2f}  ({r['seconds']:.1f} s)")
    print(
        f"target: SGDm at lr {best_lr:g}: {target:.2f} nats after {args.iterations} iterations, "
        f"{stable[best_lr]['seconds']:.1f} s"
    )
    for name, r in fishleg.items():
        verdict = "reached" if r["reached"] else "NOT reached"
        how = f"Q₀ = KFAC, η = {KFAC_START_LR:g}" if name == "kfac_start" else f"momentum on {name}"
        print(
            f"FishLeg ({how}, aux every 10): {verdict} after {r['iterations']} iterations, "
            f"{r['seconds']:.1f} s (loss {r['loss']:.2f})"
        )
    result = {
        "sgd_lr": best_lr,
        "target_loss": target,
        "sgd_seconds": stable[best_lr]["seconds"],
        "sgd_runs": {str(lr): r for lr, r in sgd.items()},
        "fishleg": fishleg,
    }
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
