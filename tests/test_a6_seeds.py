"""``--seeds N``: the A.6 study repeated over seeds, combined into mean and spread of e per form."""

from __future__ import annotations

import json
import statistics

import pytest
from tiny_study import TINY_STUDY

import fishleg_core as fl
from experiments.a6 import study as a6_study


def test_seeds_are_combined_into_mean_and_spread(tmp_path, monkeypatch):
    fits = []
    fit_q = fl.fit_q
    monkeypatch.setattr(fl, "fit_q", lambda *args, **kwargs: fits.append(1) or fit_q(*args, **kwargs))
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    out = tmp_path / "out"
    base = [
        "--config",
        str(config),
        "--forms",
        "diagonal,kron",
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
        "--seed",
        "5",
    ]
    assert a6_study.main([*base, "--seeds", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [run["seed"] for run in results["runs"]] == [5, 6] and len(fits) == 4
    for i, row in enumerate(results["forms"] + results["references"]):
        runs = [(run["forms"] + run["references"])[i] for run in results["runs"]]
        per_seed = [run["mean_normalized_error"] for run in runs]
        assert runs[0]["name"] == runs[1]["name"] == row["name"]
        assert per_seed[0] != per_seed[1]  # other data, model and probes
        assert row["seed_normalized_error"] == per_seed
        assert row["std_normalized_error"] == pytest.approx(statistics.stdev(per_seed))
        assert row["mean_normalized_error"] == pytest.approx(statistics.fmean(per_seed))
        assert row["normalized_error"] == runs[0]["normalized_error"] + runs[1]["normalized_error"]
        assert row["mean_probe_aux_loss"] == pytest.approx(statistics.fmean(row["probe_aux_loss"]))
    summary = (out / "summary.md").read_text()
    assert "±" in summary and "worse than the next better form" in summary

    # a third seed reuses the first two, and a single seed is the plain study of that seed
    assert a6_study.main([*base, "--seeds", "3"]) == 0
    assert len(fits) == 6
    assert a6_study.main([*base, "--seed", "6"]) == 0
    single = json.loads((out / "results.json").read_text())
    assert len(fits) == 6 and "runs" not in single and "seed_normalized_error" not in single["forms"][0]
    assert single["forms"] == results["runs"][1]["forms"]
