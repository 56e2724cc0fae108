"""The study's pending rows computed by worker processes (``--jobs N``), with the same numbers as one process.

Every row is computed by the same functions as in the serial run (``experiments.a6.study``), on the same
seeded streams: a form's fit, its evaluation and certificate, a reference, and the probes' CG solves depend
on the settings alone, not on what ran before them in the process. The work is split into tasks:

- ``cg``: F_γ⁻¹u for every probe (saved in ``out/cg-<key>.pt`` by the main process), when not cached;
- ``fit`` per form: its start and fit (``start_and_fit``), which needs no CG solution, so it runs while CG
  does;
- ``finish`` per form: its held-out evaluation and certificate (``finish_form``), once CG and its fit are done;
- ``reference`` per reference, once CG is done.

At most ``jobs`` tasks run at a time, each in a worker process with the main process's torch threads (the
study's default: 1, so that ``jobs`` processes fill as many cores; float32 rounding can depend on the number
of threads, so the same number gives the same results whatever ``jobs``); the next task is the
ready one first in the order CG, fits (in the order of the forms), finishes (longest fit first), references,
so that the long tasks start early and short ones fill the end. Each worker is handed the pre-trained
model's state (and, once solved, the CG solutions), rebuilds the frozen model, the monitor's directions and the
evaluator, and keeps them for its next task; it never reads the cache nor computes a key. A fitted Q goes from
its fit's worker to its finish's worker by pickling (exact). The main process saves every row, and the CG
solutions, as they are done. A task that fails stops the run with an error that names it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

import fishleg_core as fl
from experiments.a6 import study
from experiments.a6.config import StudyConfig
from experiments.a6.results import Row
from experiments.a6.study_models import MODELS
from experiments.common.data import Split
from fishleg_core.param_vectors import ParamDict
from fishleg_core.plugins import load_plugins


def default_jobs() -> int:
    """The study's default number of worker processes: the CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class StudyTaskError(RuntimeError):
    """A task of the study (a form's fit or finish, a reference, the CG solves) failed in a worker process."""


@dataclass(frozen=True)
class SeedJob:
    """What a worker needs to rebuild one seed's state: the seed's configuration (CG, references), the one the
    forms are fitted with (``common_start``) and why, the data split, the pre-trained model's state and the
    probes' CG solutions (None until solved). Workers are handed these rather than finding them in the cache,
    so they never compute a cache key (whose code hashes could differ from the main process's)."""

    config: StudyConfig
    started: StudyConfig
    start: study.CommonStart
    data: Split
    state: dict[str, torch.Tensor]
    solutions: list[ParamDict] | None = None


@dataclass
class _Context:
    """A worker's state for one ``SeedJob``: the frozen model, its likelihood and the monitor's directions;
    the held-out evaluator once CG is done."""

    job: SeedJob
    likelihood: fl.Likelihood
    model: torch.nn.Module
    monitor_set: tuple[list[Any], list[torch.Tensor]]
    evaluator: fl.ProbeEvaluator | None = None

    def held_out(self, job: SeedJob) -> fl.ProbeEvaluator:
        """The evaluator with the CG solutions of ``job``."""
        if self.evaluator is None:
            self.evaluator = study.held_out(job.config, self.model, self.likelihood, job.data, job.solutions)
        return self.evaluator


_CONTEXT: list[_Context] = []  # the worker's current context (at most one)


def _initialize(threads: int, plugins: str | None) -> None:
    """A worker process: the main process's torch threads (float32 rounding can depend on their number), and
    the plugins it loaded (forms of your own)."""
    torch.set_num_threads(threads)
    if plugins:
        load_plugins(plugins)


def _context(job: SeedJob) -> _Context:
    if _CONTEXT and _CONTEXT[0].job.config == job.config:
        return _CONTEXT[0]
    likelihood = fl.LIKELIHOODS.build(MODELS[job.config.model].likelihood)
    model = MODELS[job.config.model].build(job.config.seed)
    model.load_state_dict(job.state)
    monitor_set = study.fixed_directions(job.config, model, likelihood, job.data.train_set)
    _CONTEXT[:] = [_Context(job, likelihood, model, monitor_set)]
    return _CONTEXT[0]


def _cg(job: SeedJob) -> list[ParamDict]:
    context = _context(job)
    return study.held_out(job.config, context.model, context.likelihood, job.data).solutions


def _fit(job: SeedJob, name: str) -> study.FittedForm:
    context = _context(job)
    return study.start_and_fit(
        name, context.monitor_set, job.started, context.model, context.likelihood, job.data.train_set, False, job.start
    )


def _finish(job: SeedJob, fitted: study.FittedForm) -> Row:
    context = _context(job)
    return study.finish_form(
        fitted, job.started, context.model, context.likelihood, job.data.train_set, context.held_out(job)
    )


def _reference(job: SeedJob, name: str) -> Row:
    context = _context(job)
    return study.reference_row(
        name, job.config, context.model, context.likelihood, job.data.train_set, context.held_out(job)
    )


def _timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``function(*args)`` and the CPU seconds of the worker process (all its threads) that it took."""
    start = time.process_time()
    result = function(*args)
    return result, time.process_time() - start


@dataclass(order=True)
class _Task:
    """A task and its place in the queue: (kind's rank, −weight, order given); ``row``: the row it gives."""

    rank: int
    weight: float
    order: int
    label: str = field(compare=False)
    function: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    row: str | None = field(compare=False)


_RANKS = {"cg": 0, "fit": 1, "finish": 2, "reference": 3}


def compute_rows(
    job: SeedJob,
    pending: Sequence[str],
    jobs: int,
    threads: int,
    plugins: str | None,
    progress: bool,
    save: Callable[[str, Row], None],
    save_solutions: Callable[[list[ParamDict]], None],
) -> dict[str, Row]:
    """The rows ``pending`` (``forms/<label>``, ``references/<name>``) of the seed ``job``, computed by ``jobs``
    worker processes of ``threads`` torch threads each (see the module docstring); each is passed to ``save``
    as soon as it is done. Without ``job.solutions``, a ``cg`` task solves them first and they are passed to
    ``save_solutions``."""
    queue: list[_Task] = []
    current = [job]  # the job, with the CG solutions once solved

    def add(kind: str, label: str, function: Callable[..., Any], *args: Any, row: str | None = None) -> None:
        weight = args[0].fit_seconds if kind == "finish" else 0.0
        queue.append(_Task(_RANKS[kind], -weight, len(queue), label, function, (current[0], *args), row))

    forms = [name.partition("/")[2] for name in pending if name.startswith("forms/")]
    references = [name.partition("/")[2] for name in pending if name.startswith("references/")]
    waiting: list[study.FittedForm] = []  # fits done before CG

    def after_cg() -> None:
        for reference in references:
            add("reference", f"reference {reference}", _reference, reference, row=f"references/{reference}")
        for fitted in waiting:
            finish(fitted)

    def finish(fitted: study.FittedForm) -> None:
        label = f"evaluation and certificate {fitted.name}"
        add("finish", label, _finish, fitted, row=f"forms/{fitted.name}")

    cg_cached = job.solutions is not None
    if cg_cached:
        after_cg()
    else:
        add("cg", "CG", _cg)
    for form in forms:
        add("fit", f"fit {form}", _fit, form)
    rows: dict[str, Row] = {}
    cpu_seconds: dict[str, float] = {}
    total = (not cg_cached) + 2 * len(forms) + len(references)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of torch's thread pools
    with (
        tqdm(total=total, desc=f"a6 ({jobs} processes)", disable=not progress) as bar,
        ProcessPoolExecutor(jobs, mp_context=context, initializer=_initialize, initargs=(threads, plugins)) as pool,
    ):
        running: dict[Future[Any], _Task] = {}
        try:
            while queue or running:
                while queue and len(running) < jobs:
                    task = min(queue)
                    queue.remove(task)
                    running[pool.submit(_timed, task.function, *task.args)] = task
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    task = running.pop(future)
                    try:
                        result, cpu = future.result()
                    except Exception as error:
                        raise StudyTaskError(
                            f"{task.label} failed in a worker process: {type(error).__name__}: {error}"
                        ) from error
                    cpu_seconds[task.label] = cpu
                    bar.set_postfix_str(f"{task.label}: {cpu:.1f} CPU s", refresh=False)
                    bar.update()
                    if task.function is _cg:
                        save_solutions(result)
                        current[0] = dataclasses.replace(job, solutions=result)
                        after_cg()
                        cg_cached = True
                    elif task.function is _fit:
                        (finish if cg_cached else waiting.append)(result)
                    elif task.row is not None:
                        rows[task.row] = result
                        save(task.row, result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    tasks = ", ".join(f"{label} {seconds:.1f}" for label, seconds in cpu_seconds.items())
    study._note(f"CPU seconds of the tasks, {sum(cpu_seconds.values()):.1f} in all: {tasks}")
    return rows
