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
HEADER = (
    "| regime | optimizer | iterations | epochs | runs finished | final train loss | final test loss | "
    "test / noise floor | final σ | seconds | × SGDm time |"
)
RULE = "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"


def _stat(values: np.ndarray, spec: str = ".3g", spread: int = 2) -> str:
    """ "mean ± sd" of ``values`` (sd to ``spread`` significant digits, omitted when 0), "-" when empty."""
    if len(values) == 0:
        return "-"
    mean = format(float(np.mean(values)), spec)
    return mean if not spread else f"{mean} ± {float(np.std(values)):.{spread}g}"


def _curves(runs: list[dict], name: str) -> list[dict]:
    return [run[name]["curve"] for run in runs]


def final(runs: list[dict], name: str, key: str) -> np.ndarray:
    """The last value of ``key`` per seed (NaN for a run that diverged before it)."""
    return np.array([c[key][-1] if c[key][-1] is not None else np.nan for c in _curves(runs, name)], dtype=float)


def plot_figure1(path: Path, config: Any, results: dict[str, list[dict]]) -> None:
    """Rows: A (train solid, test dashed against iterations), B (auxiliary loss), C (losses against seconds).
    A and C: mean ± sd over the seeds where every run finished; else every seed's curve, up to where it
    diverged (a run that ends early had a non-finite loss)."""
    regimes = list(results)
    fig, axes = plt.subplots(3, len(regimes), figsize=(6 * len(regimes), 12), squeeze=False)
    for column, regime in enumerate(regimes):
        runs = results[regime]
        n_train, total = config.regimes[regime]
        floor = float(np.mean([run["noise_floor"] for run in runs]))
        every_run_finished = all(c["iteration"][-1] == total for name in LABELS for c in _curves(runs, name))
        for name in LABELS:
            curves = _curves(runs, name)
            for key, style in (("train_loss", "-"), ("test_loss", "--")):
                label = f"{LABELS[name]} ({key.split('_')[0]})"
                if every_run_finished:
                    iterations, mean, spread = mean_and_spread(curves, key)
                    seconds = mean_and_spread(curves, "seconds")[1][: len(mean)]
                    for row, x in ((0, iterations), (2, seconds)):
                        ax = axes[row, column]
                        ax.plot(x, mean, style, color=COLORS[name], label=label)
                        low = np.maximum(mean - spread, 1e-12)
                        ax.fill_between(x, low, mean + spread, color=COLORS[name], alpha=0.15)
                    continue
                for seed, curve in enumerate(curves):
                    n = len(curve[key])
                    for row, x in ((0, curve["iteration"][:n]), (2, curve["seconds"][:n])):
                        values = [np.nan if v is None else v for v in curve[key]]
                        axes[row, column].plot(
                            x, values, style, color=COLORS[name], alpha=0.7, label=label if seed == 0 else None
                        )
        for row in (0, 2):
            ax = axes[row, column]
            ax.axhline(floor, color="gray", label="noise floor (teacher's test loss)")
            ax.set_yscale("log")
            ax.set_ylabel("loss ½‖y − f(x)‖² / n")
            ax.set_xlabel(
                f"iteration ({config.batch / n_train:g} epoch each)" if row == 0 else "training CPU seconds (1 thread)"
            )
        shown = "mean ± sd over" if every_run_finished else "each of"
        axes[0, column].set_title(f"A: {regime} data ({n_train} samples), {shown} {len(runs)} seeds")
        axes[2, column].set_title("C: against CPU time")
        axes[0, column].legend(fontsize=7)
        _panel_b(axes[1, column], runs)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def _panel_b(ax, runs: list[dict]) -> None:
    """The seed whose FishLeg ran longest (seed 0 if all finished): A(Q; u) of the live Q (black) and of the
    frozen copies (colours)."""
    seed = max(range(len(runs)), key=lambda s: (len(runs[s]["fishleg"]["panel_b"]["iteration"]), -s))
    records = runs[seed]["fishleg"]["panel_b"]
    ax.plot(records["iteration"], records["live"], color="black", label="live Q")
    for frozen_at, points in records["frozen"].items():
        if points:
            x, y = zip(*points)
            ax.plot(x, y, label=f"Q frozen at {frozen_at}")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("auxiliary loss A(Q; u)")
    ax.set_title(f"B: auxiliary loss, seed {seed} (common u and F_γ)")
    ax.legend(fontsize=6, ncol=2)


def summary_table(config: Any, results: dict[str, list[dict]]) -> str:
    """Per regime and optimizer: how many runs finished (the others diverged: a non-finite loss ended them,
    and the iteration it happened at), and over the finished runs the final train and test loss (mean ± sd),
    test loss / noise floor, final σ (learned-σ likelihood), seconds and seconds relative to SGD-m's
    (over the runs both finished; "-" where none)."""
    lines = [HEADER, RULE]
    for regime, runs in results.items():
        n_train, iterations = config.regimes[regime]
        floor = np.array([run["noise_floor"] for run in runs])
        done = {name: np.array([c["iteration"][-1] == iterations for c in _curves(runs, name)]) for name in LABELS}
        sgd_seconds = final(runs, "sgdm", "seconds")
        for name in LABELS:
            ok = done[name]
            ended = [int(c["iteration"][-1]) for c, fine in zip(_curves(runs, name), ok) if not fine]
            status = f"{ok.sum()}/{len(ok)}" + (f" (diverged by {', '.join(map(str, ended))})" if ended else "")
            train, test, seconds = (final(runs, name, key)[ok] for key in ("train_loss", "test_loss", "seconds"))
            ratio = test / floor[ok]
            both = ok & done["sgdm"]
            relative = final(runs, name, "seconds")[both] / sgd_seconds[both]
            sigma = final(runs, name, "sigma")[ok] if "sigma" in runs[0][name]["curve"] else None
            lines.append(
                f"| {regime} ({n_train}) | {LABELS[name]} | {iterations} | {iterations * config.batch / n_train:g} | "
                f"{status} | {_stat(train)} | {_stat(test)} | {_stat(ratio)} | "
                f"{'-' if sigma is None else _stat(sigma)} | {_stat(seconds, '.1f')} | {_stat(relative, '.2f', 0)} |"
            )
        live = [run["fishleg"]["panel_b"]["live"] for run in runs]
        lines.append(
            f"\n{regime}: noise floor {np.mean(floor):.3g} ± {np.std(floor):.2g}; FishLeg's auxiliary "
            f"loss A(Q; u) (common probes) from {np.mean([v[0] for v in live]):.4g} to "
            f"{np.mean([v[-1] for v in live]):.4g} (mean over seeds)\n"
        )
        if regime != list(results)[-1]:
            lines.append(f"{HEADER}\n{RULE}")
    return "\n".join(lines) + "\n"
