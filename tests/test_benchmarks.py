"""Smoke runs of the speed benchmarks at tiny sizes: they run, and what they report hangs together.

The measured numbers themselves are in docs/results/; timings are never asserted here (machines are noisy).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import (
    bench_aux,
    bench_aux_optimizers,
    bench_conv_lowrank,
    bench_deep_linear_fishleg,
    bench_einsum,
    bench_online_aux,
    bench_step,
    bench_time_to_loss,
    sweep_time_to_loss,
)


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The benchmarks pin torch to 2 threads; give the other tests back what they had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_step_reports_ratios_against_sgd_from_the_same_run(tmp_path, capsys):
    result = bench_step.main(["--cycles", "1", "--warmup", "0", "--json", str(tmp_path / "step.json")])
    assert json.loads((tmp_path / "step.json").read_text()) == result
    names = ("sgdm", "adam", "fishleg_aux10", "fishleg_aux1", "fishleg_aux10_gmom")
    # every contender starts from the same model on the same first batch
    assert len({result[f"{name}_first_loss"] for name in names}) == 1
    assert all(result[f"{name}_s"] > 0 for name in names)
    assert all(math.isfinite(result[f"{name}_final_loss"]) for name in ("sgdm", "adam", "fishleg_aux10"))
    assert "fishleg_aux10" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["deep_linear", "transformer"])
def test_bench_step_quick_on_the_deep_stacks_with_a_profile(model, capsys):
    result = bench_step.main(["--model", model, "--quick", "--profile", "--per-block"])
    names = ("sgdm", "adam", "fishleg_aux10", "fishleg_aux1")
    assert len({result[f"{name}_first_loss"] for name in names}) == 1
    assert all(math.isfinite(result[f"{name}_final_loss"]) for name in names)
    assert result["ratio_aux1"] > 0 and result["fastest_ratio_aux10"] > 0
    profile = result["profile"]
    # an auxiliary update runs more operators than the step without it, and FishLeg more than SGD
    assert profile["aux_update"]["aten_ops_per_step"] > 0
    assert profile["fishleg_aux10"]["aten_ops_per_step"] > profile["sgdm"]["aten_ops_per_step"]
    assert profile["fishleg_aux1"]["q_blocks"] > 0
    assert "== profile: fishleg_aux1" in capsys.readouterr().out
    # the batched blocks train as the per-block path does
    for name in ("fishleg_aux1", "fishleg_aux10"):
        assert result[f"{name}_final_loss"] == pytest.approx(result[f"{name}_per_block_final_loss"], rel=1e-5)


def test_bench_einsum_times_both_orders_of_every_product(tmp_path):
    result = bench_einsum.main(["--quick", "--json", str(tmp_path / "einsum.json")])
    ratios = {key: value for key, value in result.items() if key.endswith("_ratio")}
    assert len(ratios) == 2 + 2 * 2 * 2  # 2 sandwiches; ekfac and kron_sum, 2 shapes, with and without autograd
    for key, ratio in ratios.items():
        name = key.removesuffix("_ratio")
        assert ratio == pytest.approx(result[f"{name}_einsum_ms"] / result[f"{name}_hand_ms"])


def test_bench_aux_counts_the_flops_of_a_kron_fit_step(tmp_path):
    result = bench_aux.main(["--rounds", "1", "--json", str(tmp_path / "aux.json")])
    assert set(bench_aux.FORMS) <= {key.removeprefix("ratio_") for key in result}
    assert result["ratio_kron"] > 1  # a fit step holds a forward+backward and more
    # Q·u forward and backward alone is over 1 GFLOP on the A.6 autoencoder (see docs/results/speed.md)
    assert 1.0 < result["kron_step_gflop"] < 10.0
    assert result["ratio_tridiag_kron_to_kron"] == pytest.approx(result["tridiag_kron_step_s"] / result["kron_step_s"])
    # FLOPs do not depend on the machine's load: the coupling's products stay factored where that pays
    flop_ratio = result["tridiag_kron_step_gflop"] / result["kron_step_gflop"]
    assert result["flop_ratio_tridiag_kron_to_kron"] == pytest.approx(flop_ratio)
    assert flop_ratio < 2.5


def test_bench_aux_rejects_forms_without_kron():
    with pytest.raises(SystemExit):
        bench_aux.main(["--forms", "tridiag_kron"])


@pytest.mark.filterwarnings("ignore:FishLeg. non-finite values:RuntimeWarning")  # momentum on g diverges there
def test_time_to_loss_sets_its_target_from_the_best_stable_sgd_rate():
    result = bench_time_to_loss.main(["--iterations", "15", "--window", "5"])
    stable = {lr: r for lr, r in result["sgd_runs"].items() if r["iterations"] == 15 and math.isfinite(r["loss"])}
    assert result["target_loss"] == min(r["loss"] for r in stable.values())
    assert set(result["fishleg"]) == {"update", "gradient", "kfac_start"}
    for run in result["fishleg"].values():
        assert run["iterations"] <= 30
        assert run["reached"] == (run["loss"] <= result["target_loss"])


def test_sweep_runs_every_setting_of_its_grid(monkeypatch):
    monkeypatch.setattr(
        sweep_time_to_loss, "GRID", {"lr": (1.0,), "damping": (1.0,), "aux_lr": (1e-3, 3e-3), "aux_every": (10,)}
    )
    result = sweep_time_to_loss.main(["--iterations", "4", "--sgd-iterations", "10", "--window", "4"])
    assert [run["aux_lr"] for run in result["fishleg"]] == [1e-3, 3e-3, sweep_time_to_loss.REFERENCE["aux_lr"]]
    assert all(run["iterations"] <= 4 for run in result["fishleg"])


def test_bench_conv_lowrank_compares_the_two_products_on_the_same_gradient(tmp_path):
    result = bench_conv_lowrank.main(
        ["--channels", "8", "--batches", "1,64", "--rounds", "1", "--json", str(tmp_path / "conv.json")]
    )
    assert json.loads((tmp_path / "conv.json").read_text()) == result
    small, large = result["runs"]
    assert (small["rank"], large["rank"]) == (4, 256) and small["pays"] and not large["pays"]
    assert all(run["relative_difference"] < 1e-5 for run in result["runs"])


@pytest.mark.parametrize("optimizer", ["adam", "multiplicative"])
def test_online_aux_reports_the_share_of_the_way_to_the_asymptote(optimizer, tmp_path):
    arguments = ["--quick", "--cache", str(tmp_path), "--asymptote", "-0.02", "--json", str(tmp_path / "online.json")]
    result = bench_online_aux.main([*arguments, "--aux-optimizer", optimizer, "--lrs", "0.01"])
    assert json.loads((tmp_path / "online.json").read_text()) == result
    assert result["aux_optimizer"] == optimizer and {run["lr"] for run in result["runs"]} == {0.01}
    assert [run["start"] for run in result["runs"]] == list(bench_online_aux.STARTS)
    for run in result["runs"]:
        a0, a = run["heldout_aux_loss_start"], run["heldout_aux_loss"]
        assert run["share"] == pytest.approx((a0 - a) / (a0 + 0.02))
        assert run["diverged"] == (not math.isfinite(a) or a > a0)
    # the damped-KFAC start is already better than the best identity multiple
    assert result["runs"][1]["heldout_aux_loss_start"] < result["runs"][0]["heldout_aux_loss_start"]


@pytest.mark.parametrize(
    "arguments", [["--aux-optimizer", "multiplicative", "--k", "2"], ["--aux-optimizer", "adam", "--other-lr", "0.03"]]
)
def test_aux_optimizers_records_the_monitor_along_the_fit(arguments, tmp_path):
    result = bench_aux_optimizers.main(
        ["--quick", "--form", "ekfac", "--points", "2", "--cache", str(tmp_path), "--json", str(tmp_path / "m.json")]
        + arguments
    )
    assert json.loads((tmp_path / "m.json").read_text()) == {
        **result,
        "monitor": {str(k): v for k, v in result["monitor"].items()},
    }
    assert list(result["monitor"]) == [0, 2, 4] and all(math.isfinite(m) for m in result["monitor"].values())


@pytest.mark.parametrize("arguments", [[], ["--kfac", "--couple", "--decay", "0.5", "--aux-optimizer", "adam"]])
def test_deep_linear_fishleg_reports_the_test_loss_over_the_noise_floor(arguments, tmp_path):
    result = bench_deep_linear_fishleg.main(["--quick", "--json", str(tmp_path / "dl.json"), *arguments])
    assert list(result["test_over_noise"]) == [10, 20]
    assert all(math.isfinite(r) and r > 0 for r in result["test_over_noise"].values())
