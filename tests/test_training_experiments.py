"""The training experiments (deep linear network, autoencoder): the shared loop, and their --quick runs end
to end (same initialisation for every contender, panel B's frozen copies, the sweep's choice)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from experiments.autoencoder_training import experiment as autoencoder_training
from experiments.autoencoder_training.report import reach_times
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
        assert all(run[name]["curve"]["iteration"][-1] == iterations for name in deep_linear.OPTIMIZERS)
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
    assert "time to SGDm's final loss" in (out / "summary.md").read_text()
    for name, sweep in report["sweeps"].items():
        finals = {run["lr"]: run["curve"]["minibatch_loss"][-1] for run in sweep if run["finished"]}
        assert report["best_lr"][name] == min(finals, key=finals.get)
    runs = report["runs"]
    starts = {name: seeds[0]["curve"]["test_nll"][0] for name, seeds in runs.items()}
    assert len(set(starts.values())) == 1  # the same initialisation for every contender
    assert reach_times(runs)["sgdm"][0] <= 1.0  # SGD reaches its own final loss within its own time
    assert runs["fishleg_kfac"][0]["curve"]["seconds"][0] > 0  # the KFAC start's time is on the clock


def test_autoencoder_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        autoencoder_training.main(["--quick", "--seeds", "0", "--out", str(tmp_path)])
    assert stopped.value.code == 2 and "--seeds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        autoencoder_training.main(["--quick", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert "is not a directory" in capsys.readouterr().err
