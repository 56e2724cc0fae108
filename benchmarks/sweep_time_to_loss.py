"""Iterations FishLeg needs to reach SGD-with-momentum's training loss, over a grid of its settings.

The target is bench_time_to_loss's: the running mean loss of SGD with momentum (lr ``--sgd-lr``, the best
stable rate found there) after ``--sgd-iterations`` iterations. Each FishLeg setting (lr, damping γ,
aux_lr, aux_every; Q₀ = SGD's step, momentum on Q·g) trains from the same initial model on the same batch
sequence for at most ``--iterations`` iterations. Settings that need fewer iterations than SGD's time
divided by FishLeg's cost per iteration (bench_step) would beat SGD in wall-clock time. After the grid,
the reference implementation's MNIST settings (``REFERENCE``).

    python -m benchmarks.sweep_time_to_loss [--iterations N] [--json FILE]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

import fishleg_core as fl
from benchmarks.bench_time_to_loss import LIKELIHOOD, MOMENTUM, arguments, run
from benchmarks.common import minibatches, mnist_digits, write_json

GRID = {"lr": (1.0, 3.0), "damping": (0.1, 0.3, 1.0), "aux_lr": (1e-3, 3e-3, 1e-2), "aux_every": (10, 20)}
# the settings of the reference implementation's MNIST autoencoder example (Q₀ = I, FishLeg lr 0.02)
REFERENCE = {"lr": 0.02, "init_scale": 1.0, "damping": 0.3, "aux_lr": 2e-3, "aux_every": 10}


def fishleg(model: nn.Module, setting: dict[str, Any], aux_stream: Iterable[torch.Tensor]) -> fl.FishLeg:
    """FishLeg at one ``setting`` of the sweep; Q₀ = (sgd_lr / lr)·I, or init_scale·I."""
    init_scale = setting["sgd_lr"] / setting["lr"] if "sgd_lr" in setting else setting["init_scale"]
    return fl.FishLeg(
        model,
        LIKELIHOOD,
        lr=setting["lr"],
        momentum=MOMENTUM,
        damping=setting["damping"],
        q={"init_scale": init_scale},
        aux_optimizer={"name": "adam", "lr": setting["aux_lr"]},
        aux_every=setting["aux_every"],
        aux_data=aux_stream,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = arguments(__doc__.splitlines()[0], 500, "FishLeg's budget per setting")
    parser.add_argument("--sgd-lr", type=float, default=0.003)
    parser.add_argument("--sgd-iterations", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    data = mnist_digits()
    sgd = run(
        lambda m: torch.optim.SGD(m.parameters(), lr=args.sgd_lr, momentum=MOMENTUM),
        data,
        args.sgd_iterations,
        args.window,
    )
    print(f"target: SGDm at lr {args.sgd_lr:g}: {sgd['loss']:.2f} nats after {args.sgd_iterations} iterations")
    settings = [
        {**dict(zip(GRID, values)), "sgd_lr": args.sgd_lr / (1 - MOMENTUM)}
        for values in itertools.product(*GRID.values())
    ]
    runs = []
    for setting in [*settings, REFERENCE]:
        aux_stream = minibatches(data, 100, seed=2)
        result = run(
            lambda m: fishleg(m, setting, aux_stream),  # noqa: B023
            data,
            args.iterations,
            args.window,
            sgd["loss"],
        )
        runs.append({**setting, **result})
        outcome = (
            f"reached in {result['iterations']}"
            if result["reached"]
            else (f"loss {result['loss']:.2f} after {result['iterations']}")
        )
        print("  ".join(f"{k} {v:g}" for k, v in setting.items()) + f": {outcome} iterations", flush=True)
    return write_json({"target_loss": sgd["loss"], "sgd": sgd, "fishleg": runs}, args.json)


if __name__ == "__main__":
    main()
