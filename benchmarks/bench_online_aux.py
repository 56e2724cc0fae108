"""Online speed of learning Q: how far 50 auxiliary steps (one direction each, no restarts, constant rate:
the configuration ``FishLeg`` uses) take ``kron`` on the frozen A.6 network, per start and learning rate.

The A.6 study's frozen autoencoder, held-out probes, monitor directions and training streams. For each
start (``identity``: c·I, FishLeg's; ``kfac``: the rescaled damped-KFAC start) and each rate of the sweep,
Q₀ is fitted for ``--steps`` steps of ``--aux-optimizer`` (Adam by default) at that constant rate and
evaluated on the held-out probes. The share of the way from Q₀'s held-out A to the asymptote ``--asymptote``
(by default the lowest held-out A of kron measured, ``KRON_ASYMPTOTE``) is (A(Q₀) − A(Q₅₀)) / (A(Q₀) − A∞);
a run diverges when its A is not finite or above A(Q₀).

    python -m benchmarks.bench_online_aux [--quick] [--steps 50] [--aux-optimizer NAME] [--lrs 3e-4,1e-3,...]
                                          [--asymptote A] [--cache DIR] [--json FILE]

``--cache``: the study's output folder, whose pre-trained model and CG solutions are reused (and written
there when absent).
"""

from __future__ import annotations

import argparse
import copy
import math
from contextlib import closing
from pathlib import Path

import torch

import fishleg_core as fl
from benchmarks.common import write_json
from experiments.a6.config import QUICK, StudyConfig
from experiments.a6.fit_schedule import training_streams
from experiments.a6.heldout import float64_copy
from experiments.a6.initial_q import initial_q
from experiments.a6.study import KFAC_SEED_OFFSET, build_form, fixed_directions, pretrained_model, probe_evaluator
from experiments.common.data import load_pixels, split

LRS = (3e-4, 1e-3, 3e-3, 1e-2)
STARTS = ("identity", "kfac")
KRON_ASYMPTOTE = -0.013610
"""The lowest held-out A of kron measured on these probes: 4,000 Adam steps from the damped-KFAC start
(``python -m experiments.a6 --steps 4000 --forms kron``; docs/a6/summary-4000-steps.md)."""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 steps, one rate, 2 probes")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--aux-optimizer", default="adam", help="a name in fishleg_core.AUX_OPTIMIZERS")
    parser.add_argument("--lrs", help="comma-separated learning rates (default: 3e-4,1e-3,3e-3,1e-2)")
    parser.add_argument("--asymptote", type=float, default=KRON_ASYMPTOTE, help="held-out A of the asymptote")
    parser.add_argument("--cache", default="results/a6", help="the study's output folder (pre-trained model)")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base = StudyConfig(**QUICK) if args.quick else StudyConfig()
    lrs = tuple(float(lr) for lr in args.lrs.split(",")) if args.lrs else LRS
    steps, lrs = (3, lrs[:1]) if args.quick else (args.steps, lrs)
    likelihood = fl.LIKELIHOODS.build("bernoulli")
    data = split(load_pixels(base.data_dir), base.n_train, base.n_heldout, base.seed)
    model, _ = pretrained_model(base, data, Path(args.cache), likelihood, False, False)
    evaluator = probe_evaluator(base, model, likelihood, data, Path(args.cache), False)
    monitor_set = fixed_directions(base, model, likelihood, data.train)
    result: dict = {"steps": steps, "aux_optimizer": args.aux_optimizer, "asymptote": args.asymptote, "runs": []}
    for start in STARTS:
        config = base.model_copy(update={"init": start})
        q0, _ = initial_q(
            lambda init_scale: build_form(model, "kron", init_scale),
            config,
            model,
            likelihood,
            data.train,
            monitor_set,
            base.seed + KFAC_SEED_OFFSET,
        )
        a0 = evaluator.evaluate(float64_copy(q0)).mean_aux_loss
        for lr in lrs:
            q = copy.deepcopy(q0)
            stream, batches = training_streams(
                model, likelihood, data.train, base.batch_size, base.curvature_batch, base.seed, q
            )
            with closing(stream):
                fit = fl.fit_q(
                    model,
                    likelihood,
                    q,
                    stream,
                    batches,
                    steps,
                    lr=lr,
                    damping=base.damping,
                    aux_optimizer=args.aux_optimizer,
                )
            a = evaluator.evaluate(float64_copy(q)).mean_aux_loss
            share = (a0 - a) / (a0 - args.asymptote)
            run = {
                "start": start,
                "lr": lr,
                "heldout_aux_loss_start": a0,
                "heldout_aux_loss": a,
                "share": share,
                "diverged": not math.isfinite(a) or a > a0,
                "seconds": fit.seconds,
            }
            result["runs"].append(run)
            print(
                f"{start:>8} lr {lr:<7g} held-out A {a0:.5f} -> {a:.5f}: {share:6.1%} of the way to "
                f"{args.asymptote:.5f}{' DIVERGED' if run['diverged'] else ''} ({fit.seconds:.1f} s)",
                flush=True,
            )
    for start in STARTS:
        stable = [run for run in result["runs"] if run["start"] == start and not run["diverged"]]
        best = max(stable, key=lambda run: run["share"], default=None)
        result[f"best_{start}"] = best
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
