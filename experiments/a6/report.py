"""The study's outputs: result rows, ``results.json``, ``figure4.png`` and ``summary.md``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import fishleg_core as fl
from experiments.a6.certificate import divergence
from experiments.a6.config import StudyConfig
from experiments.a6.fit_schedule import last_tenth_mean
from experiments.a6.results import Row, StudyResults
from experiments.a6.study_models import MODELS
from experiments.common.store import save_json, write_atomic
from fishleg_core.auxiliary import split_spec

PLATEAU_CRITERION = (
    "M(Q) = the mean of A(Q; u) over fixed training directions u (each with F_γ on its own fixed training "
    "minibatch: the monitor_directions that also set Q₀), recorded every steps/20 steps; the fit is on a plateau "
    "when M's gain over the last tenth of the steps, M(0.9 S) - M(S), is at most plateau_tolerance times its "
    "gain over the whole fit, M(0) - M(S). (The training curve itself changes u at every step, so its tenths "
    "differ by the spread of A*(u) between directions as much as by Q's progress.)"
)


def result_row(
    name: str,
    kind: str,
    evaluation: fl.QEvaluation,
    n_params: int,
    seconds: float,
    curve: Sequence[float] = (),
    plateau: dict[str, Any] | None = None,
    **details: Any,
) -> Row:
    """One row of the table: a fitted form (``kind="form"``, with its training curve and plateau test) or a
    reference (``kind="reference"``, empty curve). ``probe_*`` and ``normalized_error`` are per probe."""
    return {
        "name": name,
        "kind": kind,
        "n_params": n_params,
        "final_aux_loss": last_tenth_mean(curve) if curve else None,
        "aux_loss_curve": list(curve),
        "probe_aux_loss": evaluation.aux_loss,
        "probe_optimal_aux_loss": evaluation.optimal_aux_loss,
        "normalized_error": evaluation.normalized_error,
        "mean_probe_aux_loss": evaluation.mean_aux_loss,
        "mean_probe_optimal_aux_loss": evaluation.mean_optimal_aux_loss,
        "mean_normalized_error": evaluation.mean_normalized_error,
        "seconds": seconds,
        "plateau": plateau,
        **details,
    }


def write_reports(results: StudyResults) -> None:
    """``results.json`` (resolved configuration, pre-training, rows), ``figure4.png`` and ``summary.md``."""
    out, config, pretraining, forms, references = (
        results.out,
        results.config,
        results.pretraining,
        results.forms,
        results.references,
    )
    per_seed = [
        {"seed": run.config.seed, "pretraining": run.pretraining, "forms": run.forms, "references": run.references}
        for run in results.runs
    ]
    save_json(
        out / "results.json",
        {
            "config": config.model_dump(),
            "pretraining": pretraining,
            "plateau_criterion": PLATEAU_CRITERION,
            "forms": forms,
            "references": references,
            **({"skipped_references": results.skipped} if results.skipped else {}),
            **({"runs": per_seed} if per_seed else {}),
        },
    )
    write_atomic(out / "figure4.png", lambda path: _figure(path, forms, references, step_label(config)))
    text = summary(config, pretraining, forms, references, results.skipped)
    write_atomic(out / "summary.md", lambda path: path.write_text(text))


def summary(
    config: StudyConfig,
    pretraining: dict[str, Any],
    forms: list[Row],
    references: list[Row],
    skipped: dict[str, str] | None = None,
) -> str:
    """The Markdown table: form, aux params, final training aux loss, held-out A, A*, e, seconds, plateau;
    the references ``skipped`` on this model (name: reason) below it."""
    compared = any("long_run" in row for row in forms)
    lines = [
        "| form | Q₀ | aux params | final training aux loss | held-out A | A* | e | seconds | plateau | certified |"
        + (" A − A_long |" if compared else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |" + (" ---: |" if compared else ""),
    ]
    for row in forms + references:
        final = "–" if row["final_aux_loss"] is None else f"{row['final_aux_loss']:.5g}"
        verdict = "–" if row["plateau"] is None else _verdict(row["plateau"])
        certified = _certified(row)
        name = row["name"] if row["kind"] == "form" else f"*{row['name']}* (reference)"
        lines.append(
            f"| {name} | {row.get('init', '–')} | {row['n_params']:,} | {final} | {row['mean_probe_aux_loss']:.5g} | "
            f"{row['mean_probe_optimal_aux_loss']:.5g} | {_error(row)} | "
            f"{row['seconds']:.1f} | {verdict} | {certified} |" + (f" {_long_run_gap(row)} |" if compared else "")
        )
    rates = ", ".join(
        f"{label} {split_spec(config.optimizer(label))[0]} at {config.lr(label):g}" for label in config.forms
    )
    study_model = MODELS[config.model]
    accuracy = pretraining.get("heldout_accuracy")
    notes = sorted({row["init_note"] for row in forms if "init_note" in row}) + [
        f"{row['name']} keeps c·I on {', '.join(row['kfac_not_started'])} (no KFAC factors or start there)"
        for row in forms
        if row.get("kfac_not_started")
    ]
    return "\n".join(
        [
            f"# Appendix A.6 study: forms of Q on a frozen {study_model.title}",
            "",
            f"{study_model.describe()}, pre-trained for "
            f"{config.pretrain_iterations} SGD-with-momentum iterations (lr {config.pretrain_lr:g}, "
            f"momentum {config.pretrain_momentum:g}, batch {config.batch_size}; training NLL "
            f"{_nats(pretraining['final_loss'])}, held-out NLL {_nats(pretraining['heldout_loss'])} nats"
            + ("" if accuracy is None else f", held-out accuracy {accuracy:.1%}")
            + "). "
            f"Each form: {config.steps} steps of its optimizer of λ ({rates}; cosine decay to 0 "
            f"over the last {config.decay_fraction:.0%}), damping γ = {config.damping:g}, exact Fisher on "
            f"curvature batches of {config.curvature_batch}, u from other training minibatches of "
            f"{config.batch_size}. Q₀ (start {config.init}): 'kfac' = the damped KFAC factors "
            "(G + √γπI)⁻¹ ⊗ (A + √γ/πI)⁻¹ per layer (for diagonal: its diagonal) times the best scalar, "
            f"'identity' = c·I, c the best identity multiple; both on {config.monitor_directions} fixed "
            "training directions.",
            "",
            *lines,
            "",
            f"Held-out columns: means over {config.n_probes} probe directions (normalised gradients of held-out "
            f"minibatches) with the exact damped Fisher on {config.n_curvature} other held-out inputs, in float64; "
            "A* = −½ uᵀF_γ⁻¹u by conjugate gradients; e = ‖Qu − F_γ⁻¹u‖_F_γ / ‖F_γ⁻¹u‖_F_γ (0: exact, 1: Q = 0). "
            "Final training aux loss: mean over the last tenth of the training curve. Seconds: Q₀ and the "
            "fit, its monitor included (for a reference, its estimation). References: the best identity "
            "multiple c*·I on the probes (what SGD amounts to) and the inverse of the damped KFAC "
            "approximation (G ⊗ A + γI)⁻¹ per layer, estimated on the training data.",
            "",
            *([f"Q₀ on this model: {'; '.join(notes)}.", ""] if notes else []),
            *(_long_run_section(forms) if compared else []),
            *(
                ["Skipped references: " + "; ".join(f"{name}: {why}" for name, why in skipped.items()) + ".", ""]
                if skipped
                else []
            ),
            f"Plateau (tolerance {config.plateau_tolerance:g}; in brackets the last tenth's share of the gain): "
            f"{PLATEAU_CRITERION}",
            "",
            "Certified (in brackets the continuation's gain in held-out A, relative to |A|): "
            f"{_continuation(config)} from the fitted Q, on directions and curvature "
            "batches the fit never saw, lower held-out A by at most "
            f"{config.certificate_tolerance:.0%} of |A|. Not certified: that no other optimiser, start or longer run "
            "would go lower.",
            "",
            *(_seeds_section(config, forms) if config.seeds > 1 else []),
        ]
    )


def _long_run_gap(row: Row) -> str:
    """(A − A_long) / |A_long| against the form's long run, in bold beyond 1 %; – for a reference or a form
    without a long run."""
    comparison = row.get("long_run")
    if comparison is None:
        return "–"
    text = f"{comparison['relative_gap']:+.2%}"
    return text if comparison["within"] else f"**{text}**"


def ranking_check(forms: list[Row]) -> tuple[list[str], list[str]]:
    """The forms that have a long run, ranked by held-out A (best first) at the default budget and in the long
    run."""
    compared = [row for row in forms if "long_run" in row]
    default = [row["name"] for row in sorted(compared, key=lambda row: row["mean_probe_aux_loss"])]
    long = [row["name"] for row in sorted(compared, key=lambda row: row["long_run"]["mean_probe_aux_loss"])]
    return default, long


def _long_run_section(forms: list[Row]) -> list[str]:
    """The long-run comparison: its budget, and the two rankings, a disagreement in bold."""
    default, long = ranking_check(forms)
    steps = next(row["long_run"]["steps"] for row in forms if "long_run" in row)
    same = default == long
    verdict = "the same" if same else "**different: the default budget ranks the forms otherwise than the long run**"
    return [
        f"Long run: each form fitted with {steps} steps (`--long-run`); A − A_long = the default run's held-out "
        "A above the long run's, relative to |A_long| (bold beyond 1 %).",
        "",
        f"Ranking by held-out A, best first: default {' < '.join(default)}; long run {' < '.join(long)}: {verdict}.",
        "",
    ]


def _nats(value: float) -> str:
    """An NLL: one decimal for the autoencoder's tens of nats, three significant digits below 10."""
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def _continuation(config: StudyConfig) -> str:
    """The certificate's continuation in words."""
    if config.certificate_schedule == "repeat":
        return f"the fit's own schedule repeated ({config.steps} steps at the peak rate, the same cosine tail)"
    return (
        f"{config.certificate_steps} more steps at the constant rate {config.certificate_lr_factor:g} × the fit's "
        "peak rate (no decay)"
    )


def _certified(row: Row) -> str:
    """The certified column: yes/NO with the continuation's relative gain, or NO with why the fit diverged
    (``divergence`` on the row's monitor, so that rows cached before this test get it too)."""
    certificate = row.get("certificate")
    if certificate is None:
        return "–"
    diverged = divergence(row["monitor"]["aux_loss"], row["mean_probe_aux_loss"]) if row.get("monitor") else None
    if diverged is not None:
        return f"NO ({diverged})"
    return f"{'yes' if certificate['certified'] else 'NO'} ({certificate['relative_gain']:+.2%})"


def _error(row: Row) -> str:
    """e, with ± the standard deviation over seeds when there are several, and the form's start in words
    when it is not the one ``init`` asked for (``start_note``)."""
    spread = row.get("std_normalized_error")
    note = f" ({row['start_note']})" if row.get("start_note") else ""
    return f"{row['mean_normalized_error']:.3f}" + ("" if spread is None else f" ± {spread:.3f}") + note


def _seeds_section(config: StudyConfig, forms: list[Row]) -> list[str]:
    """How the seeds were combined, and the ranking of the forms with paired differences of e per seed."""
    ranked = sorted(forms, key=lambda row: row["mean_normalized_error"])
    lines = [
        f"Seeds: the whole study (data shuffle, pre-training, fits, probes) with seeds {config.seed} to "
        f"{config.seed + config.seeds - 1}; every number is the mean over the {config.seeds} seeds, e ± the "
        "sample standard deviation of the per-seed e, the curves and the plateau test those of the mean "
        "monitor curve.",
        "",
        "Ranking by e; each form against the next better one, paired by seed (same data, model and probes): "
        "mean ± standard deviation of the difference of e, and in how many seeds it is worse.",
        "",
        "| form | e per seed | worse than the next better form by | in seeds |",
        "| --- | --- | ---: | ---: |",
    ]
    for better, row in zip([None, *ranked], ranked):
        per_seed = ", ".join(f"{e:.3f}" for e in row["seed_normalized_error"])
        if better is None:
            lines.append(f"| {row['name']} | {per_seed} | – | – |")
            continue
        gaps = np.subtract(row["seed_normalized_error"], better["seed_normalized_error"])
        lines.append(
            f"| {row['name']} | {per_seed} | {gaps.mean():.3f} ± {gaps.std(ddof=1):.3f} | "
            f"{int((gaps > 0).sum())} of {len(gaps)} |"
        )
    return [*lines, ""]


def _verdict(plateau: dict[str, Any]) -> str:
    share = plateau["relative_last_gain"]
    return f"{'yes' if plateau['on_plateau'] else 'NO'} ({'n/a' if share is None else f'{share:.1%}'})"


def step_label(config: StudyConfig) -> str:
    """The x-axis of the training curves: the optimizers of λ the forms used, by name ("multiplicative step"
    or, when they differ, "step of λ's optimizer (multiplicative: diagonal, kron; adam: kron_sum)")."""
    users: dict[str, list[str]] = {}
    for label in config.forms:
        users.setdefault(split_spec(config.optimizer(label))[0], []).append(label)
    if len(users) == 1:
        return f"{next(iter(users))} step of λ"
    return "step of λ's optimizer (" + "; ".join(f"{name}: {', '.join(forms)}" for name, forms in users.items()) + ")"


def _figure(path: Path, forms: list[Row], references: list[Row], xlabel: str = "step of λ's optimizer") -> None:
    """Left: the auxiliary loss per step (raw, faint; moving average), held-out A at the end (dots), the
    exact optimum and the references' held-out A as horizontal lines (values off the curves' scale are
    given in the legend). Right: the normalised error per form and reference (bars: mean; dots: probes, or
    with several seeds the mean of each seed, and error bars their standard deviation)."""
    fig, (curves, errors) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    rows = forms + references
    seeds = "seed_normalized_error" in rows[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(rows) > len(colors):  # every row its own colour
        colors = [plt.get_cmap("tab20")(i % 20) for i in range(len(rows))]
    optimum = rows[0]["mean_probe_optimal_aux_loss"]
    shown = [optimum]
    for i, row in enumerate(forms):
        curve = np.asarray(row["aux_loss_curve"])
        window = max(1, len(curve) // 50)
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        curves.plot(np.arange(1, len(curve) + 1), curve, color=colors[i % len(colors)], alpha=0.06, lw=0.5)
        curves.plot(np.arange(window, len(curve) + 1), smooth, color=colors[i % len(colors)], label=row["name"])
        curves.plot(row["monitor"]["steps"], row["monitor"]["aux_loss"], "--", color=colors[i % len(colors)], lw=0.8)
        curves.plot(len(curve), row["mean_probe_aux_loss"], "o", color=colors[i % len(colors)])
        shown += [smooth.min(), smooth.max(), row["mean_probe_aux_loss"], *row["monitor"]["aux_loss"]]
    low, high = min(shown), max(shown)
    low, high = low - 0.05 * (high - low), high + 0.05 * (high - low)
    for i, row in enumerate(references, start=len(forms)):
        value = row["mean_probe_aux_loss"]
        off_scale = "" if low <= value <= high else f" = {value:.3g}, off scale"
        curves.axhline(
            value, color=colors[i % len(colors)], ls=":", label=f"{row['name']} (reference, held-out A{off_scale})"
        )
    curves.axhline(optimum, color="black", ls="--", label=f"exact optimum A* (held-out) = {optimum:.4g}")
    curves.set(
        xlabel=xlabel,
        ylabel="auxiliary loss A(Q; u)",
        ylim=(low, high),
        title="Auxiliary loss: training (solid, smoothed), monitor (dashed), held-out (dots)"
        + ("\n(means over seeds)" if seeds else ""),
    )
    curves.legend(fontsize=8)
    for i, row in enumerate(rows):
        mean = row["mean_normalized_error"]
        errors.bar(i, mean, color=colors[i % len(colors)], alpha=0.7, yerr=row.get("std_normalized_error"), capsize=4)
        dots = row["seed_normalized_error"] if seeds else row["normalized_error"]
        errors.plot([i] * len(dots), dots, "k.", ms=4 if seeds else 3)
        errors.annotate(f"{mean:.3f}", (i, mean), ha="center", va="bottom", fontsize=8)
    top = max([1.0] + [e for row in rows for e in row["normalized_error"]])
    errors.set_xticks(range(len(rows)), [row["name"] for row in rows], rotation=30, ha="right")
    spread = f"mean over {len(rows[0]['seed_normalized_error'])} seeds ± sd, dots: seeds" if seeds else "dots: probes"
    errors.set(
        ylim=(0, 1.08 * top),
        ylabel="normalised error e(Q)",
        title=f"Held-out normalised error (0: exact, 1: Q = 0)\n{spread}",
    )
    errors.axhline(1.0, color="gray", lw=0.5)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
