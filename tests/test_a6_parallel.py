"""The A.6 study's worker processes (``--jobs``, experiments/a6/parallel.py): the same rows as one process,
errors that name the failing task, and a progress bar."""

from __future__ import annotations

import json

import pytest
from tiny_study import TINY_STUDY

from experiments.a6 import study as a6_study
from experiments.a6.parallel import StudyTaskError
from fishleg_core.plugins import unload_plugin

TIMINGS = {"seconds"}
"""Entries of a row (and of its certificate) that are wall times, the only ones a run may change."""


def without_timings(value):
    if isinstance(value, dict):
        return {key: without_timings(entry) for key, entry in value.items() if key not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(entry) for entry in value]
    return value


def test_workers_give_the_rows_of_one_process(tmp_path):
    results = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        arguments = ["--quick", "--out", str(out), "--no-progress", "--jobs", str(jobs), "--threads", "1"]
        assert a6_study.main(arguments) == 0
        results[jobs] = json.loads((out / "results.json").read_text())
    serial, parallel = results[1], results[2]
    assert [row["name"] for row in parallel["forms"]] == list(serial["config"]["forms"])
    assert [row["name"] for row in parallel["references"]] == [row["name"] for row in serial["references"]]
    for kind in ("forms", "references"):
        for one, many in zip(serial[kind], parallel[kind]):
            assert without_timings(many) == without_timings(one), one["name"]  # every digit
    assert parallel["pretraining"] == serial["pretraining"]


FAILING = '''
"""A form whose product fails: its fit, in a worker process, stops the study."""
from fishleg_core import QFORMS
from fishleg_core.qforms.diagonal import DiagonalQ


@QFORMS.register("test_failing")
class FailingQ(DiagonalQ):
    def multiply(self, G):
        raise RuntimeError("the product of this form fails")
'''


@pytest.fixture
def failing_plugin(tmp_path):
    path = tmp_path / "failing_forms.py"
    path.write_text(FAILING)
    yield path
    unload_plugin("failing_forms")


def test_a_failing_worker_names_its_task(failing_plugin, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    arguments = ["--config", str(config), "--out", str(tmp_path / "out"), "--no-progress", "--jobs", "2"]
    arguments += ["--plugins", str(failing_plugin), "--forms", "diagonal,test_failing", "--init", "identity"]
    with pytest.raises(StudyTaskError, match=r"fit test_failing failed in a worker process: RuntimeError: the product"):
        a6_study.main(arguments)


def test_the_workers_show_a_progress_bar(tmp_path, capfd):
    config = tmp_path / "tiny.yaml"
    config.write_text("forms: [diagonal]\n" + TINY_STUDY)
    assert a6_study.main(["--config", str(config), "--out", str(tmp_path / "out"), "--jobs", "2"]) == 0
    bar = capfd.readouterr().err
    # CG, one fit, its evaluation and certificate, and the five references
    assert "a6 (2 processes): 100%" in bar and "8/8" in bar
