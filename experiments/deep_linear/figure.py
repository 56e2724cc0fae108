"""Figure 1 (panels A, B, C per data regime) and the summary table of the deep linear experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from experiments.common.training import mean_and_spread

COLORS = {"sgdm": "tab:blue", "adam": "tab:orange", "fishleg": "tab:green"}
LABELS = {"sgdm": "SGD with momentum", "adam": "Adam", "fishleg": "FishLeg"}


def _curves(runs: list[dict], name: str) -> list[dict]:
    return [run[name]["curve"] for run in runs]


def final(runs: list[dict], name: str, key: str) -> np.ndarray:
    """The last value of ``key`` per seed (NaN for a run that diverged before it)."""
    return np.array([c[key][-1] if c[key][-1] is not None else np.nan for c in _curves(runs, name)], dtype=float)


def plot_figure1(path: Path, config: Any, results: dict[str, list[dict]]) -> None:
    """Rows: A (train solid, test dashed against epochs), B (auxiliary loss), C (losses against seconds)."""
    regimes = list(results)
    fig, axes = plt.subplots(3, len(regimes), figsize=(6 * len(regimes), 12), squeeze=False)
    for column, regime in enumerate(regimes):
        runs = results[regime]
        n_train = config.regimes[regime][0]
        floor = float(np.mean([run["noise_floor"] for run in runs]))
        for name in LABELS:
            curves = _curves(runs, name)
            for key, style in (("train_loss", "-"), ("test_loss", "--")):
                iterations, mean, spread = mean_and_spread(curves, key)
                seconds = mean_and_spread(curves, "seconds")[1][: len(mean)]
                label = f"{LABELS[name]} ({key.split('_')[0]})"
                for row, x in ((0, iterations * config.batch / n_train), (2, seconds)):
                    ax = axes[row, column]
                    ax.plot(x, mean, style, color=COLORS[name], label=label)
                    ax.fill_between(x, np.maximum(mean - spread, 1e-12), mean + spread, color=COLORS[name], alpha=0.15)
        for row in (0, 2):
            ax = axes[row, column]
            ax.axhline(floor, color="gray", label="noise floor (teacher's test loss)")
            ax.set_yscale("log")
            ax.set_ylabel("loss ½‖y − f(x)‖² / n")
            ax.set_xlabel("epoch" if row == 0 else "training seconds (1 thread, loaded machine)")
        axes[0, column].set_title(f"A: {regime} data ({n_train} samples), mean ± sd over {len(runs)} seeds")
        axes[2, column].set_title("C: against wall-clock")
        axes[0, column].legend(fontsize=7)
        _panel_b(axes[1, column], runs)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def _panel_b(ax, runs: list[dict]) -> None:
    """Seed 0: A(Q; u) of the live Q (black) and of the frozen copies (colours)."""
    records = runs[0]["fishleg"]["panel_b"]
    ax.plot(records["iteration"], records["live"], color="black", label="live Q")
    for frozen_at, points in records["frozen"].items():
        if points:
            x, y = zip(*points)
            ax.plot(x, y, label=f"Q frozen at {frozen_at}")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("auxiliary loss A(Q; u)")
    ax.set_title("B: auxiliary loss, seed 0 (common u and F_γ)")
    ax.legend(fontsize=6, ncol=2)


def summary_table(config: Any, results: dict[str, list[dict]]) -> str:
    """Per regime and optimizer: final train and test loss (mean ± sd), test loss / noise floor, seconds."""
    lines = [
        "| regime | optimizer | epochs | final train loss | final test loss | test / noise floor | "
        "seconds | × SGDm time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for regime, runs in results.items():
        n_train, iterations = config.regimes[regime]
        floor = np.array([run["noise_floor"] for run in runs])
        sgd_seconds = final(runs, "sgdm", "seconds")
        for name in LABELS:
            train, test, seconds = (final(runs, name, key) for key in ("train_loss", "test_loss", "seconds"))
            ratio = test / floor
            lines.append(
                f"| {regime} ({n_train}) | {LABELS[name]} | {iterations * config.batch / n_train:g} | "
                f"{np.mean(train):.3g} ± {np.std(train):.2g} | {np.mean(test):.3g} ± {np.std(test):.2g} | "
                f"{np.mean(ratio):.3g} ± {np.std(ratio):.2g} | {np.mean(seconds):.1f} | "
                f"{np.mean(seconds / sgd_seconds):.2f} |"
            )
        live = [run["fishleg"]["panel_b"]["live"] for run in runs]
        lines.append(
            f"\n{regime}: noise floor {np.mean(floor):.3g} ± {np.std(floor):.2g}; FishLeg's auxiliary "
            f"loss A(Q; u) (common probes) from {np.mean([v[0] for v in live]):.4g} to "
            f"{np.mean([v[-1] for v in live]):.4g} (mean over seeds)\n"
        )
        if regime != list(results)[-1]:
            lines.append(
                "| regime | optimizer | epochs | final train loss | final test loss | test / noise floor | "
                "seconds | × SGDm time |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
            )
    return "\n".join(lines) + "\n"
