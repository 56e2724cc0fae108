"""FishLeg alone on the deep linear network of the paper's Figure 1 (large regime): test loss / noise floor.

One seed of ``experiments.deep_linear`` (its teacher, data, student and minibatch streams), FishLeg at the
settings of the experiment's configuration ``--variant`` (default "multiplicative-damped", the one the earlier
measurements used; "paper": the paper's) with the fields of ``--override`` (JSON) replaced, except those given:
λ's optimizer and rate, the damped-KFAC start (``--kfac``, on 4 training minibatches, damped by
``--kfac-damping``, default the training's damping), a ``tridiag_kron`` coupling of adjacent layers
(``--couple``), momentum on Q·g (``--momentum-on update``) and a cosine decay of η to 0 over the last
``--decay`` fraction of the iterations. With a learned σ it is printed too; ``--progress`` prints each
evaluation (with σ and the last auxiliary loss) as it comes. The run stops at the first non-finite test loss.

    python -m benchmarks.bench_deep_linear_fishleg [--quick] [--iterations 3000] [--every 500] [--seed 0]
        [--variant NAME] [--override JSON] [--aux-optimizer NAME] [--aux-lr R] [--kfac] [--kfac-damping G]
        [--couple] [--momentum-on gradient|update] [--decay F] [--progress] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import Any

import torch

import fishleg_core as fl
from benchmarks.common import write_json
from experiments.deep_linear.experiment import (
    VARIANTS,
    configuration,
    fishleg_q,
    likelihood_for,
    loss_for,
    losses,
    minibatch_inputs,
    minibatch_pairs,
    refresh_kfac,
)
from experiments.deep_linear.task import build_deep_linear, teacher_data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the experiment's --quick network, 20 iterations")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500, help="iterations between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="multiplicative-damped", choices=list(VARIANTS))
    parser.add_argument("--override", help="JSON object of configuration fields, e.g. '{\"aux_weight_decay\": 1e-3}'")
    parser.add_argument("--aux-optimizer", help="λ's optimizer (default: the experiment's)")
    parser.add_argument("--aux-lr", type=float, help="λ's rate (default: the experiment's)")
    parser.add_argument("--kfac", action="store_true", help="start Q from the damped KFAC factors")
    parser.add_argument("--kfac-damping", type=float, help="the damping of the KFAC start (default: the training's)")
    parser.add_argument("--couple", action="store_true", help="couple adjacent layers (tridiag_kron)")
    parser.add_argument("--momentum-on", choices=("gradient", "update"))
    parser.add_argument("--decay", type=float, help="cosine decay of η to 0 over this final fraction")
    parser.add_argument("--progress", action="store_true", help="print each evaluation as it comes")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = configuration(args.variant, quick=args.quick)
    if args.override:
        config = dataclasses.replace(config, **json.loads(args.override))
    iterations, every = (20, 10) if args.quick else (args.iterations, args.every)
    n_train = config.regimes["large"][0]
    data = teacher_data(config.depth, config.width, n_train, config.n_test, config.noise, args.seed)
    model = build_deep_linear(config.depth, config.width, seed=args.seed)
    lik = likelihood_for(config)
    loss_fn = loss_for(lik)
    settings: dict[str, Any] = {
        "lr": config.lr,
        "momentum": config.momentum,
        "momentum_on": args.momentum_on or config.momentum_on,
        "damping": config.damping,
        "aux_optimizer": {
            "name": args.aux_optimizer or config.aux_optimizer,
            "lr": config.aux_lr if args.aux_lr is None else args.aux_lr,
            "eps": config.aux_eps,
        },
        "aux_weight_decay": config.aux_weight_decay,
        "aux_every": config.aux_every,
        "aux_data": minibatch_inputs(data, config.aux_batch, seed=3 * args.seed + 1),
        "seed": 0,
    }
    if args.kfac:
        config = dataclasses.replace(
            config, kfac_start_damping=config.damping if args.kfac_damping is None else args.kfac_damping
        )
    settings["q"] = fishleg_q(model, lik, config, data, couple="adjacent" if args.couple else None)
    optimizer = fl.FishLeg(model, lik, **settings)
    refresh_kfac(optimizer, lik, config, data)
    scheduler = None
    if args.decay:
        first = iterations * (1 - args.decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda k: 1.0 if k < first else 0.5 * (1 + math.cos(math.pi * (k - first) / (iterations - first))),
        )
    pairs, seconds, ratios = minibatch_pairs(data, config.batch, seed=3 * args.seed), 0.0, {}
    sigmas: dict[int, float] = {}
    for iteration in range(1, iterations + 1):
        inputs, targets = next(pairs)
        start_time = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model, inputs, targets).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seconds += time.perf_counter() - start_time
        if iteration % every == 0:
            ratios[iteration] = losses(model, data)["test_loss"] / data.noise_floor
            if isinstance(lik, fl.GaussianLearnedSigma):
                sigmas[iteration] = lik.sigma.item()
            if args.progress:
                aux = optimizer.last_aux_loss
                print(
                    f"{iteration}: {ratios[iteration]:.4g} sigma {sigmas.get(iteration, math.nan):.3g} "
                    f"aux {math.nan if aux is None else aux.item():.3g} cpu {time.process_time():.0f}s",
                    flush=True,
                )
            if not math.isfinite(ratios[iteration]):
                break
    result = {
        **{k: v for k, v in vars(args).items() if k != "json"},
        "seconds": seconds,
        "test_over_noise": ratios,
        **({"sigma": sigmas} if sigmas else {}),
    }
    print(" ".join(f"{iteration}: {ratio:.4g}" for iteration, ratio in ratios.items()), flush=True)
    if sigmas:
        print("sigma " + " ".join(f"{iteration}: {sigma:.3g}" for iteration, sigma in sigmas.items()), flush=True)
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
