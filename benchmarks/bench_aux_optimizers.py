"""Optimizers of λ compared on the frozen A.6 network: the monitor M along a fit of one form.

The A.6 study's frozen autoencoder, damped-KFAC start, training streams and schedule (constant, then a cosine
decay over the last half); M = mean A(Q; u) over the study's fixed training directions, each with its own
curvature batch, recorded at ``--points`` evenly spaced steps. ``--k`` averages the auxiliary losses of K
(u, curvature batch) pairs per step; ``--other-lr`` gives the parameters outside the triangular factors their
own rate (``triangular_factor_groups``: e.g. ``ekfac``'s scaling D), which is how the control run of Adam in
docs/results/convergence.md separates them.

    python -m benchmarks.bench_aux_optimizers [--quick] [--form kron] [--aux-optimizer NAME] [--lr 0.03]
                                              [--steps 500] [--k 1] [--other-lr R] [--cache DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import time
from contextlib import closing
from pathlib import Path

import torch

import fishleg_core as fl
from benchmarks.common import write_json
from experiments.a6.config import QUICK, StudyConfig
from experiments.a6.fit_schedule import Monitor, cosine_tail, training_streams
from experiments.a6.initial_q import initial_q
from experiments.a6.study import KFAC_SEED_OFFSET, build_form, fixed_directions, pretrained_model
from experiments.common.data import inputs_of, load_pixels, split
from fishleg_core.auxiliary import auxiliary_loss
from fishleg_core.param_vectors import ParamDict


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: the study's --quick settings, 4 steps")
    parser.add_argument("--form", default="kron")
    parser.add_argument("--aux-optimizer", default="multiplicative", help="a name in fishleg_core.AUX_OPTIMIZERS")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--k", type=int, default=1, help="(u, curvature batch) pairs averaged per step")
    parser.add_argument("--other-lr", type=float, help="rate of the parameters outside the triangular factors")
    parser.add_argument("--points", type=int, default=10, help="monitor records after step 0")
    parser.add_argument("--cache", default="results/a6", help="the study's output folder (pre-trained model)")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = StudyConfig(**QUICK) if args.quick else StudyConfig()
    steps = 4 if args.quick else args.steps
    likelihood = fl.LIKELIHOODS.build("bernoulli")
    data = split(load_pixels(config.data_dir), config.n_train, config.n_heldout, config.seed)
    model, _ = pretrained_model(config, data, Path(args.cache), likelihood, False, False)
    monitor_set = fixed_directions(config, model, likelihood, data.train_set)
    q, _ = initial_q(
        lambda init_scale: build_form(model, args.form, init_scale),
        config,
        model,
        likelihood,
        inputs_of(data.train_set),
        monitor_set,
        config.seed + KFAC_SEED_OFFSET,
    )
    params: torch.nn.Module | list = q
    if args.other_lr is not None:
        params = [
            {**group, "lr": args.other_lr} if not group["factor"] else group for group in fl.triangular_factor_groups(q)
        ]
    optimizer = fl.build_aux_optimizer(args.aux_optimizer, params, args.lr)
    scheduler = cosine_tail(steps, config.decay_fraction)(optimizer)
    monitor = Monitor(model, likelihood, q, *monitor_set, config.damping, steps, points=args.points)
    stream, batches = training_streams(
        model, likelihood, data.train_set, config.batch_size, config.curvature_batch, config.seed, q
    )
    start, curve = time.perf_counter(), []
    with closing(stream):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            for _ in range(args.k):
                direction, inputs = next(stream), next(batches)
                u, factors = direction if isinstance(direction, tuple) else (direction, None)

                def damped_fisher(v: ParamDict, x: torch.Tensor = inputs) -> ParamDict:
                    return fl.fisher_vp(model, likelihood, x, v, "exact", config.damping)

                loss = auxiliary_loss(q, u, damped_fisher, factors)
                (loss.surrogate / args.k).backward()
            optimizer.step()
            scheduler.step()
            curve.append(loss.value.item())
            monitor(curve)
    result = {
        "form": args.form,
        "aux_optimizer": args.aux_optimizer,
        "lr": args.lr,
        "other_lr": args.other_lr,
        "k": args.k,
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "monitor": dict(zip(monitor.record["steps"], monitor.record["aux_loss"])),
    }
    print(" ".join(f"M({step}) {value:.6f}" for step, value in result["monitor"].items()), flush=True)
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
