"""``--long-run``: the fits with 8× the steps are the references of the default run, which reports how far each
form is from its long run and whether the two budgets rank the forms alike."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr

from tiny_study import TINY_STUDY

from experiments.a6 import study as a6_study
from experiments.a6.report import ranking_check


def _run(out, config, *extra):
    log = io.StringIO()
    arguments = ["--config", str(config), "--out", str(out), "--forms", "diagonal,kron", "--no-progress"]
    with redirect_stderr(log):
        assert a6_study.main([*arguments, "--threads", "1", *extra]) == 0
    return json.loads((out / "results.json").read_text()), (out / "summary.md").read_text()


def test_the_default_run_is_compared_with_its_long_run(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    out = tmp_path / "out"
    results, summary = _run(out, config)
    assert all("long_run" not in row for row in results["forms"]) and "Long run" not in summary
    long_results, _ = _run(out, config, "--long-run")
    assert long_results["config"]["steps"] == a6_study.LONG_RUN_FACTOR * results["config"]["steps"]
    results, summary = _run(out, config)
    long_rows = {row["name"]: row for row in long_results["forms"]}
    for row in results["forms"]:
        comparison = row["long_run"]
        long_row = long_rows[row["name"]]
        assert comparison["mean_probe_aux_loss"] == long_row["mean_probe_aux_loss"]
        gap = (row["mean_probe_aux_loss"] - long_row["mean_probe_aux_loss"]) / abs(long_row["mean_probe_aux_loss"])
        assert comparison["relative_gap"] == gap and comparison["within"] == (gap <= a6_study.CONVERGED_WITHIN)
    default, long = ranking_check(results["forms"])
    assert sorted(default) == sorted(long) == ["diagonal", "kron"]
    assert "A − A_long" in summary and f"default {' < '.join(default)}; long run {' < '.join(long)}" in summary
    assert ("**different" in summary) == (default != long)


def test_a_disagreeing_ranking_is_flagged_in_bold():
    rows = [
        {"name": "a", "mean_probe_aux_loss": -2.0, "long_run": {"mean_probe_aux_loss": -2.1}},
        {"name": "b", "mean_probe_aux_loss": -1.0, "long_run": {"mean_probe_aux_loss": -3.0}},
        {"name": "c", "mean_probe_aux_loss": -5.0},  # no long run: not ranked
    ]
    assert ranking_check(rows) == (["a", "b"], ["b", "a"])
