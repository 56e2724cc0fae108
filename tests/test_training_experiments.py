"""The training experiments (deep linear network, autoencoder): the shared loop, and their --quick runs end
to end (same initialisation for every contender, panel B's frozen copies, the sweep's choice)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from experiments.autoencoder_training import experiment as autoencoder_training
from experiments.autoencoder_training.report import milestones_table, reach_ratios
from experiments.common.training import finished, time_to_reach, train
from experiments.deep_linear import experiment as deep_linear

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The experiments pin torch to 1 thread; give the other tests back what they had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def constant_batches():
    x = torch.ones(4, 2)
    while True:
        yield x, torch.zeros(4, 1)


def squared(model, inputs, targets):
    return (model(inputs) - targets).pow(2).mean()


def test_train_evaluates_at_the_start_every_few_steps_and_at_the_end():
    model = nn.Linear(2, 1)
    calls = []
    curve = train(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        squared,
        constant_batches(),
        7,
        3,
        lambda iteration: calls.append(iteration) or {"probe": float(iteration)},
    )
    assert calls == curve["iteration"] == [0, 3, 6, 7]
    assert curve["probe"] == [0.0, 3.0, 6.0, 7.0]
    assert math.isnan(curve["minibatch_loss"][0]) and finished(curve, 7)
    assert curve["minibatch_loss"][1] > curve["minibatch_loss"][2] > curve["minibatch_loss"][3]  # it learns
    assert curve["seconds"] == sorted(curve["seconds"])


def test_train_stops_at_a_non_finite_loss():
    model = nn.Linear(2, 1)
    curve = train(model, torch.optim.SGD(model.parameters(), lr=1e20), squared, constant_batches(), 50, 2, lambda _: {})
    assert curve["iteration"][-1] < 50 and not math.isfinite(curve["minibatch_loss"][-1])
    assert not finished(curve, 50)


def test_train_goes_on_to_the_time_budget():
    ticks = iter(range(10_000))
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    curve = train(
        model, optimizer, squared, constant_batches(), 2, 3, lambda _: {}, min_seconds=5, clock=lambda: next(ticks)
    )
    assert curve["iteration"] == [0, 3, 5] and curve["seconds"][-1] == 5  # each step takes one tick
    assert finished(curve, 2)


def test_time_to_reach_is_the_first_point_at_or_below_the_target():
    curve = {"seconds": [0.0, 1.0, 2.0, 3.0], "minibatch_loss": [math.nan, 5.0, 3.0, 4.0]}
    assert time_to_reach(curve, 3.0) == 2.0
    assert time_to_reach(curve, 2.0) is None


@pytest.fixture(scope="module")
def deep_linear_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep_linear")
    report = deep_linear.main(["--quick", "--out", str(out)])
    return out, report


def test_deep_linear_quick_run(deep_linear_run):
    out, report = deep_linear_run
    assert json.loads((out / "results.json").read_text())["config"] == json.loads(json.dumps(report["config"]))
    assert (out / "figure1.png").read_bytes()[:8] == PNG
    assert "noise floor" in (out / "summary.md").read_text()
    for regime, (_, iterations) in report["config"]["regimes"].items():
        run = report["regimes"][regime][0]
        starts = {name: run[name]["curve"]["train_loss"][0] for name in deep_linear.OPTIMIZERS}
        assert len(set(starts.values())) == 1  # the same student initialisation for every optimizer
        # a run ends early only on a non-finite loss (SGD-m diverges from σ = 0.1 with the paper's settings)
        for name in deep_linear.OPTIMIZERS:
            curve = run[name]["curve"]
            assert curve["iteration"][-1] == iterations or curve["minibatch_loss"][-1] is None
        assert run["fishleg"]["curve"]["iteration"][-1] == iterations
        assert 0 < run["noise_floor"] < min(starts.values())


def test_deep_linear_panel_b_frozen_copies_start_at_the_live_value(deep_linear_run):
    _, report = deep_linear_run
    records = report["regimes"]["large"][0]["fishleg"]["panel_b"]
    freeze_every = report["config"]["freeze_every"]
    assert sorted(records["frozen"]) == list(range(freeze_every, records["iteration"][-1] + 1, freeze_every))
    live = dict(zip(records["iteration"], records["live"]))
    for frozen_at, points in records["frozen"].items():
        assert points[0][0] == frozen_at
        assert points[0][1] == pytest.approx(live[frozen_at], rel=1e-6)  # a copy of Q, on the same u and F


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("autoencoder")
    return out, autoencoder_training.main(["--quick", "--out", str(out)])


def test_autoencoder_quick_run(autoencoder_run):
    out, report = autoencoder_run
    assert (out / "figure2_3.png").read_bytes()[:8] == PNG
    summary = (out / "summary.md").read_text()
    assert "iterations to adam's loss at 20" in summary and "gap to the best of kfac, soap, psgd_kron" in summary
    assert not (out / "partial.json").exists()
    assert set(report["runs"]) == set(autoencoder_training.paper_config().contenders)
    for name, sweep in report["sweeps"].items():
        finals = {run["lr"]: run["curve"]["minibatch_loss"][-1] for run in sweep if run["finished"]}
        assert report["best_lr"][name] == min(finals, key=finals.get)
    runs = report["runs"]
    starts = {name: seeds[0]["curve"]["test_nll"][0] for name, seeds in runs.items()}
    assert len(set(starts.values())) == 1  # the same initialisation for every contender
    assert reach_ratios(runs, "adam", 20)["adam"][0] == (1.0, 1.0)  # Adam reaches its own loss at its own time


def test_autoencoder_resumes_the_runs_of_a_report(autoencoder_run, tmp_path):
    out, report = autoencoder_run
    again = autoencoder_training.main(
        ["--quick", "--contenders", "fishleg", "--resume", str(out / "results.json"), "--out", str(tmp_path)]
    )
    assert set(again["runs"]) == {"adam", "fishleg"}  # the chosen contender and the target
    assert again["runs"]["fishleg"] == json.loads(json.dumps(report["runs"]["fishleg"]))  # taken over, not re-run
    with pytest.raises(SystemExit):
        autoencoder_training.main(
            ["--quick", "--iterations", "30", "--resume", str(out / "results.json"), "--out", str(tmp_path)]
        )
    target = tmp_path / "target.json"  # another target changes no run: its report's runs are taken over
    target.write_text(json.dumps({"target": "fishleg"}))
    alone = autoencoder_training.main(
        ["--quick", "--config", str(target), "--contenders", "fishleg", "--resume", str(out / "results.json")]
        + ["--report-only", "--out", str(tmp_path / "alone")]
    )
    assert alone["runs"] == {"fishleg": again["runs"]["fishleg"]}


def test_autoencoder_variants_quick_run(tmp_path):
    report = autoencoder_training.main(["--quick", "--preset", "variants", "--out", str(tmp_path)])
    assert set(report["runs"]) == set(autoencoder_training.variants_config().contenders)
    assert all(run["finished"] for seeds in report["runs"].values() for run in seeds)


def test_a6_preset_keeps_the_kfac_start_on_the_clock(tmp_path):
    report = autoencoder_training.main(["--quick", "--preset", "a6", "--out", str(tmp_path)])
    assert report["runs"]["fishleg_kfac"][0]["curve"]["seconds"][0] > 0  # the KFAC start's time is on the clock


def test_the_long_preset_is_the_issue_budget():
    config = autoencoder_training.long_config()
    assert (config.iterations, config.seeds, config.every) == (3000, 2, 50)
    assert not autoencoder_training._problems(config)
    assert {"fishleg_psgd_schedule", "fishleg_fast", "adam", "kfac"} <= set(config.sweep)
    variants = autoencoder_training.variants_config()
    for name in autoencoder_training.LONG_VARIANTS:  # the 200-iteration variant, its rates and settings unchanged
        assert (config.sweep[name], config.contenders[name]) == (variants.sweep[name], variants.contenders[name])


def test_milestones_table_reports_mean_and_sd_where_the_seeds_got():
    def run(losses: list[float]) -> dict:
        return {"curve": {"iteration": [0, 100, 200], "minibatch_loss": [None, *losses]}}

    config = autoencoder_training.AutoencoderConfig(iterations=300, every=100)
    lines = milestones_table(config, {"adam": [run([4.0, 2.0]), run([6.0, 3.0])]})
    assert lines[0] == "| optimizer | training loss at 100 | training loss at 300 |"
    assert lines[2] == "| Adam | 5.00 ± 1 | – |"  # mean ± sd of 4 and 6; neither seed got to 300


def test_the_sweep_extends_past_an_edge():
    runs = [
        {"lr": lr, "finished": True, "curve": {"minibatch_loss": [loss]}} for lr, loss in ((1, 3.0), (3, 2.0), (9, 1.0))
    ]
    assert autoencoder_training.next_rate(runs) == 27
    runs[2]["curve"]["minibatch_loss"] = [2.5]
    assert autoencoder_training.next_rate(runs) is None


def test_autoencoder_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        autoencoder_training.main(["--quick", "--seeds", "0", "--out", str(tmp_path)])
    assert stopped.value.code == 2 and "--seeds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        autoencoder_training.main(["--quick", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert "is not a directory" in capsys.readouterr().err
