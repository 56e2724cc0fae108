"""Figures 2-3 (losses against iterations and against training seconds) and the summary table of the
autoencoder training experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.common.training import mean_and_spread, time_to_reach

LABELS = {
    "sgdm": "SGD with momentum",
    "adam": "Adam",
    "soap": "SOAP (pytorch-optimizer)",
    "fishleg_kfac": "FishLeg, aux10, Q₀ = KFAC",
}


def label(name: str) -> str:
    return LABELS.get(name, name.replace("fishleg_", "FishLeg, "))


def plot_figures(path: Path, config: Any, runs: dict[str, list[dict]]) -> None:
    """Training loss (mean of the minibatch losses between evaluations) and held-out NLL, mean ± sd over
    seeds, against iterations (left) and against training seconds (right)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for name, seeds in runs.items():
        curves = [run["curve"] for run in seeds]
        for row, key in enumerate(("minibatch_loss", "test_nll")):
            iterations, mean, spread = mean_and_spread(curves, key)
            seconds = mean_and_spread(curves, "seconds")[1][: len(mean)]
            start = 1 if key == "minibatch_loss" else 0  # no minibatch loss before the first step
            for column, x in enumerate((iterations, seconds)):
                ax = axes[row, column]
                (line,) = ax.plot(x[start:], mean[start:], label=f"{label(name)} (lr {seeds[0]['lr']:g})")
                ax.fill_between(
                    x[start:], (mean - spread)[start:], (mean + spread)[start:], alpha=0.2, color=line.get_color()
                )
    for row, what in enumerate(("training loss (nats)", "held-out reconstruction NLL (nats)")):
        for column, x_label in enumerate(("iteration", "training seconds (1 thread, loaded machine)")):
            ax = axes[row, column]
            ax.set_xlabel(x_label)
            ax.set_ylabel(what)
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title(f"autoencoder {list(config.sizes)}, batch {config.batch}, {len(curves)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def reach_times(runs: dict[str, list[dict]]) -> dict[str, list[float | None]]:
    """Per contender and seed: its training seconds to the final training loss of that seed's SGD with
    momentum, divided by SGD's own training seconds (None: never reached)."""
    ratios: dict[str, list[float | None]] = {}
    for name, seeds in runs.items():
        ratios[name] = []
        for run, sgd in zip(seeds, runs["sgdm"]):
            target, sgd_seconds = sgd["curve"]["minibatch_loss"][-1], sgd["curve"]["seconds"][-1]
            seconds = time_to_reach(run["curve"], target)
            ratios[name].append(None if seconds is None else seconds / sgd_seconds)
    return ratios


def _mean_sd(values: list[float], digits: str = ".3g") -> str:
    return f"{np.mean(values):{digits}} ± {np.std(values):.2g}" if values else "–"


def summary_table(config: Any, results: dict[str, Any]) -> str:
    runs = results["runs"]
    ratios = reach_times(runs)
    sgd_time = np.array([run["curve"]["seconds"][-1] for run in runs["sgdm"]])
    lines = [
        f"{config.iterations} iterations, {config.seeds} seeds; best learning rates from the sweep on seed 0 "
        f"({config.sweep_iterations} iterations): "
        + ", ".join(f"{name} {rates} → {results['best_lr'][name]:g}" for name, rates in config.sweep.items()),
        "",
        "| optimizer | lr | final training loss | final held-out NLL | time / SGDm time | time to SGDm's final "
        "loss / SGDm time | reached |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, seeds in runs.items():
        train = [run["curve"]["minibatch_loss"][-1] for run in seeds if run["finished"]]
        test = [run["curve"]["test_nll"][-1] for run in seeds if run["finished"]]
        time_ratio = np.array([run["curve"]["seconds"][-1] for run in seeds]) / sgd_time
        reached = [r for r in ratios[name] if r is not None]
        lines.append(
            f"| {label(name)} | {results['best_lr'][name]:g} | {_mean_sd(train, '.2f')} | "
            f"{_mean_sd(test, '.2f')} | {_mean_sd(list(time_ratio))} | {_mean_sd(reached)} | "
            f"{len(reached)}/{len(seeds)} |"
        )
    return "\n".join(lines) + "\n"
