"""FishLeg alone on the deep linear network of the paper's Figure 1 (large regime): test loss / noise floor.

One seed of ``experiments.deep_linear`` (its teacher, data, student and minibatch streams), FishLeg at the
experiment's settings except those given: λ's optimizer and rate, the damped-KFAC start (``--kfac``, on 4
training minibatches), a ``tridiag_kron`` coupling of adjacent layers (``--couple``), momentum on Q·g
(``--momentum-on update``) and a cosine decay of η to 0 over the last ``--decay`` fraction of the iterations.

    python -m benchmarks.bench_deep_linear_fishleg [--quick] [--iterations 3000] [--every 500] [--seed 0]
        [--aux-optimizer NAME] [--aux-lr R] [--kfac] [--couple] [--momentum-on gradient|update] [--decay F]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from typing import Any

import torch

import fishleg_core as fl
from benchmarks.common import write_json
from experiments.deep_linear.experiment import DeepLinearConfig, losses, minibatch_inputs, minibatch_pairs, quick_config
from experiments.deep_linear.task import build_deep_linear, half_squared_error, likelihood, teacher_data

KFAC_START_BATCHES = 4


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick network, 20 iterations")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500, help="iterations between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aux-optimizer", help="λ's optimizer (default: the experiment's)")
    parser.add_argument("--aux-lr", type=float, help="λ's rate (default: the experiment's)")
    parser.add_argument("--kfac", action="store_true", help="start Q from the damped KFAC factors")
    parser.add_argument("--couple", action="store_true", help="couple adjacent layers (tridiag_kron)")
    parser.add_argument("--momentum-on", choices=("gradient", "update"))
    parser.add_argument("--decay", type=float, help="cosine decay of η to 0 over this final fraction")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = quick_config() if args.quick else DeepLinearConfig()
    iterations, every = (20, 10) if args.quick else (args.iterations, args.every)
    n_train = config.regimes["large"][0]
    data = teacher_data(config.depth, config.width, n_train, config.n_test, config.noise, args.seed)
    model = build_deep_linear(config.depth, config.width, seed=args.seed)
    settings: dict[str, Any] = {
        "lr": config.lr,
        "momentum": config.momentum,
        "momentum_on": args.momentum_on or config.momentum_on,
        "damping": config.damping,
        "aux_optimizer": args.aux_optimizer or config.aux_optimizer,
        "aux_lr": config.aux_lr if args.aux_lr is None else args.aux_lr,
        "aux_every": config.aux_every,
        "aux_data": minibatch_inputs(data, config.batch, seed=3 * args.seed + 1),
        "seed": 0,
    }
    couple = "adjacent" if args.couple else None
    if args.kfac:
        q = fl.build_model_q(model, couple=couple)
        start = list(itertools.islice(minibatch_pairs(data, config.batch, seed=99), KFAC_START_BATCHES))
        fl.kfac_warm_start(q, model, likelihood(config.width), start, damping=config.damping)
        settings["q"] = q
    else:
        settings["couple"] = couple
    optimizer = fl.FishLeg(model, likelihood(config.width), **settings)
    scheduler = None
    if args.decay:
        first = iterations * (1 - args.decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda k: 1.0 if k < first else 0.5 * (1 + math.cos(math.pi * (k - first) / (iterations - first))),
        )
    pairs, seconds, ratios = minibatch_pairs(data, config.batch, seed=3 * args.seed), 0.0, {}
    for iteration in range(1, iterations + 1):
        inputs, targets = next(pairs)
        start_time = time.perf_counter()
        optimizer.zero_grad()
        half_squared_error(model, inputs, targets).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seconds += time.perf_counter() - start_time
        if iteration % every == 0:
            ratios[iteration] = losses(model, data)["test_loss"] / data.noise_floor
    result = {**{k: v for k, v in vars(args).items() if k != "json"}, "seconds": seconds, "test_over_noise": ratios}
    print(" ".join(f"{iteration}: {ratio:.4g}" for iteration, ratio in ratios.items()), flush=True)
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
