"""Figures 2-3 (losses against iterations and against training seconds), the summary table and the table of
the issue's targets for the autoencoder training experiment."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.common.training import Curve, mean_and_spread, time_to_reach

LABELS = {
    "sgdm": "SGD with momentum",
    "adam": "Adam",
    "soap": "SOAP (pytorch-optimizer)",
    "kfac": "KFAC (moving factors, re-inverted every 10)",
    "psgd_kron": "PSGD-Kron (kron-torch)",
    "fishleg": "FishLeg, paper settings (mnist.ml)",
    "fishleg_table1": "FishLeg, paper Table 1 settings",
    "fishleg_kfac": "FishLeg, aux10, Q₀ = KFAC",
    "fishleg_fast": "FishLeg, fast λ (KFAC start, multiplicative steps, PSGD schedule)",
}
PEERS = ("kfac", "soap", "psgd_kron")
"""The second-order peers of the stretch target."""


def label(name: str) -> str:
    return LABELS.get(name, name.replace("fishleg_", "FishLeg, "))


def plot_figures(path: Path, config: Any, runs: dict[str, list[dict]]) -> None:
    """Training loss (mean of the minibatch losses between evaluations) and held-out NLL, mean ± sd over
    seeds, against iterations up to ``config.iterations`` (left) and against training seconds up to the
    common budget ``config.seconds`` where there is one (right)."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for name, seeds in runs.items():
        curves = [run["curve"] for run in seeds]
        for row, key in enumerate(("minibatch_loss", "test_nll")):
            iterations, mean, spread = mean_and_spread(curves, key)
            seconds = mean_and_spread(curves, "seconds")[1][: len(mean)]
            start = 1 if key == "minibatch_loss" else 0  # no minibatch loss before the first step
            in_budget = iterations <= config.iterations
            in_time = seconds <= config.seconds if config.seconds > 0 else np.ones_like(in_budget)
            for column, (x, keep) in enumerate(((iterations, in_budget), (seconds, in_time))):
                keep = keep.copy()
                keep[:start] = False
                ax = axes[row, column]
                (line,) = ax.plot(x[keep], mean[keep], label=f"{label(name)} (lr {seeds[0]['lr']:g})")
                ax.fill_between(
                    x[keep], (mean - spread)[keep], (mean + spread)[keep], alpha=0.2, color=line.get_color()
                )
    for row, what in enumerate(("training loss (nats)", "held-out reconstruction NLL (nats)")):
        for column, x_label in enumerate(("iteration", "training CPU seconds (1 thread)")):
            ax = axes[row, column]
            ax.set_xlabel(x_label)
            ax.set_ylabel(what)
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    axes[0, 0].set_title(f"autoencoder {list(config.sizes)}, batch {config.batch}, {len(curves)} seeds", fontsize=9)
    if config.seconds > 0:
        axes[0, 1].set_title(f"every contender trained for at least {config.seconds:g} s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def at_iteration(curve: Curve, iteration: int, key: str = "minibatch_loss") -> float:
    """``curve[key]`` at the evaluation point of ``iteration`` (NaN if the run did not get there)."""
    points = dict(zip(curve["iteration"], curve.get(key, [])))
    value = points.get(iteration)
    return math.nan if value is None else value


def at_seconds(curve: Curve, seconds: float, key: str = "minibatch_loss") -> float:
    """``curve[key]`` at the last evaluation point within ``seconds`` of training (NaN if none)."""
    values = [v for s, v in zip(curve["seconds"][1:], curve[key][1:]) if s <= seconds and v is not None]
    return values[-1] if values else math.nan


def iterations_to_reach(curve: Curve, target: float, key: str = "minibatch_loss") -> int | None:
    """The first evaluated iteration at which ``curve[key]`` ≤ ``target``; None if never."""
    for iteration, value in zip(curve["iteration"][1:], curve[key][1:]):
        if value is not None and value <= target:
            return int(iteration)
    return None


def reach_ratios(runs: dict[str, list[dict]], target: str, iterations: int) -> dict[str, list[tuple]]:
    """Per contender and seed: (iterations, seconds) to reach the training loss of that seed's ``target``
    after ``iterations``, as ratios to ``iterations`` and to the target's own seconds there (None: never)."""
    ratios: dict[str, list[tuple]] = {}
    for name, seeds in runs.items():
        ratios[name] = []
        for run, reference in zip(seeds, runs[target]):
            loss = at_iteration(reference["curve"], iterations)
            own_seconds = at_iteration(reference["curve"], iterations, "seconds")
            steps = iterations_to_reach(run["curve"], loss)
            seconds = time_to_reach(run["curve"], loss)
            ratios[name].append(
                (
                    None if steps is None else steps / iterations,
                    None if seconds is None else seconds / own_seconds,
                )
            )
    return ratios


def _mean_sd(values: list[float], digits: str = ".3g") -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return f"{np.mean(values):{digits}} ± {np.std(values):.2g}" if values else "–"


def summary_table(config: Any, results: dict[str, Any]) -> str:
    """The sweeps, one row per contender (mean ± sd over seeds) and, per FishLeg contender, the targets."""
    runs, n, budget = results["runs"], config.iterations, config.seconds
    ratios = reach_ratios(runs, config.target, n)
    sweeps = "; ".join(
        f"{name} {sorted(run['lr'] for run in sweep)} → {results['best_lr'][name]:g}"
        for name, sweep in results["sweeps"].items()
    )
    lines = [
        f"{n} iterations (and on to {budget:g} CPU seconds), {config.seeds} seeds; best learning rates from the "
        f"sweep on seed 0 ({config.sweep_iterations} iterations): {sweeps}",
        "",
        f"| optimizer | lr | training loss at {n} | held-out NLL at {n} | training loss at {budget:g} s | "
        f"s / iteration | iterations to {config.target}'s loss at {n} / {n} | seconds to it / "
        f"{config.target}'s | reached |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, seeds in runs.items():
        curves = [run["curve"] for run in seeds]
        per_iteration = [c["seconds"][-1] / c["iteration"][-1] for c in curves]
        reached = [r for r in ratios[name] if r[0] is not None]
        lines.append(
            f"| {label(name)} | {results['best_lr'][name]:g} | "
            f"{_mean_sd([at_iteration(c, n) for c in curves], '.2f')} | "
            f"{_mean_sd([at_iteration(c, n, 'test_nll') for c in curves], '.2f')} | "
            f"{_mean_sd([at_seconds(c, budget) for c in curves], '.2f') if budget > 0 else '–'} | "
            f"{_mean_sd(per_iteration)} | {_mean_sd([r[0] for r in reached])} | "
            f"{_mean_sd([r[1] for r in reached if r[1] is not None])} | {len(reached)}/{len(seeds)} |"
        )
    return "\n".join(lines + ["", *milestones_table(config, runs), "", *targets_table(config, results)]) + "\n"


MILESTONES = (100, 500, 1000)
"""Iterations at which ``milestones_table`` reports the training loss, besides the budget's last."""


def milestones_table(config: Any, runs: dict[str, list[dict]]) -> list[str]:
    """Training loss, mean ± sd over seeds, at the evaluations of ``MILESTONES`` within the budget and after
    ``config.iterations`` (the seeds that got there; "–" where none did)."""
    points = sorted({i for i in MILESTONES if i < config.iterations and i % config.every == 0} | {config.iterations})
    lines = [
        "| optimizer | " + " | ".join(f"training loss at {i}" for i in points) + " |",
        "| --- |" + " ---: |" * len(points),
    ]
    for name, seeds in runs.items():
        losses = [_mean_sd([at_iteration(run["curve"], i) for run in seeds], ".2f") for i in points]
        lines.append(f"| {label(name)} | " + " | ".join(losses) + " |")
    return lines


def targets_table(config: Any, results: dict[str, Any]) -> list[str]:
    """Per FishLeg contender and seed, the issue's targets against ``config.target`` (Adam): at or below it at
    every evaluation after iteration 100; its final loss within half its iterations; its final loss in less
    time; the gap to the best second-order peer (KFAC, SOAP, PSGD-Kron) after ``iterations``."""
    runs, n, target = results["runs"], config.iterations, config.target
    peers = [name for name in PEERS if runs.get(name)]
    ratios = reach_ratios(runs, target, n)
    lines = [
        f"| FishLeg contender | ≤ {target} at every evaluation after 100 | {target}'s loss at {n} within {n // 2} "
        f"iterations | in less time than {target} | gap to the best of {', '.join(peers) or '(none run)'} at {n} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, seeds in runs.items():
        if not name.startswith("fishleg") or name == target:
            continue
        below, half, faster, gaps = [], [], [], []
        seeds = seeds[: len(runs[target])]  # seeds the target ran too
        for seed, run in enumerate(seeds):
            mine, theirs = run["curve"], runs[target][seed]["curve"]
            points = [i for i in theirs["iteration"] if 100 < i <= n]
            below.append(all(at_iteration(mine, i) <= at_iteration(theirs, i) for i in points))
            steps, seconds = ratios[name][seed]
            half.append(steps is not None and steps <= 0.5)
            faster.append(seconds is not None and seconds < 1.0)
            ran = [peer for peer in peers if len(runs[peer]) > seed]
            if ran:
                best = min(at_iteration(runs[peer][seed]["curve"], n) for peer in ran)
                gaps.append(100 * (at_iteration(mine, n) / best - 1))
        gap = f"{_mean_sd(gaps, '.1f')} %" if gaps else "–"
        lines.append(
            f"| {label(name)} | {sum(below)}/{len(seeds)} seeds | {sum(half)}/{len(seeds)} | "
            f"{sum(faster)}/{len(seeds)} | {gap} |"
        )
    return lines
