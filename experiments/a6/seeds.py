"""``--seeds N``: the study repeated with seeds seed, seed+1, ..., its rows combined into mean and spread.

Each seed is a whole study (data shuffle, initialisation, pre-training, minibatch streams, probes, KFAC
samples), cached on its own. A combined row has the probes of every seed (``probe_*``, ``normalized_error``:
N·n_probes values, so its means are the means over seeds), per seed the mean e (``seed_normalized_error``)
and their sample standard deviation (``std_normalized_error``), the mean of the other numbers and of the
curves, and the plateau test on the mean monitor curve.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.a6.config import StudyConfig
from experiments.a6.fit_schedule import plateau
from experiments.a6.results import Row, StudyResults

_CONCATENATED = ("probe_aux_loss", "probe_optimal_aux_loss", "normalized_error")
_AVERAGED = ("mean_probe_aux_loss", "mean_probe_optimal_aux_loss", "mean_normalized_error", "seconds", "final_aux_loss")


def combine(config: StudyConfig, runs: Sequence[StudyResults]) -> StudyResults:
    """One ``StudyResults`` of ``config`` from the runs of its seeds (the run itself for one seed)."""
    first = runs[0]
    if len(runs) == 1:
        return first
    return StudyResults(
        config,
        first.out,
        _combined_pretraining([run.pretraining for run in runs]),
        [combine_rows([run.forms[i] for run in runs]) for i in range(len(first.forms))],
        [combine_rows([run.references[i] for run in runs]) for i in range(len(first.references))],
        runs=list(runs),
        skipped=first.skipped,
    )


def combine_rows(rows: Sequence[Row]) -> Row:
    """The row of one form (or reference) over seeds: see the module docstring."""
    combined = dict(rows[0])
    for name in _CONCATENATED:
        combined[name] = [value for row in rows for value in row[name]]
    for name in _AVERAGED:
        values = [row[name] for row in rows]
        combined[name] = None if None in values else statistics.fmean(values)
    per_seed = [row["mean_normalized_error"] for row in rows]
    combined["seed_normalized_error"] = per_seed
    combined["std_normalized_error"] = statistics.stdev(per_seed)
    if rows[0]["aux_loss_curve"]:
        combined["aux_loss_curve"] = _mean_curve([row["aux_loss_curve"] for row in rows])
    if rows[0].get("monitor"):
        steps = rows[0]["monitor"]["steps"]
        values = _mean_curve([row["monitor"]["aux_loss"] for row in rows])
        combined["monitor"] = {"steps": steps, "aux_loss": values}
        combined["plateau"] = plateau(steps, values, rows[0]["plateau"]["tolerance"])
    return combined


def _combined_pretraining(pretrainings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    losses = _mean_curve([p["losses"] for p in pretrainings]) if pretrainings[0]["losses"] else []
    combined = {
        "losses": losses,
        "final_loss": losses[-1] if losses else None,
        "heldout_loss": statistics.fmean(p["heldout_loss"] for p in pretrainings),
    }
    if "heldout_accuracy" in pretrainings[0]:
        combined["heldout_accuracy"] = statistics.fmean(p["heldout_accuracy"] for p in pretrainings)
    return combined


def _mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    return np.mean(np.asarray(curves, dtype=float), axis=0).tolist()
