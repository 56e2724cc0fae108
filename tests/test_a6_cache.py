"""The A.6 study's cache never returns a stale result: its keys cover the settings, the form's code, the
library's source and the torch version (experiments/a6/provenance.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_study import TINY_STUDY

import fishleg_core as fl
from experiments.a6 import provenance
from experiments.a6 import study as a6_study
from experiments.a6.provenance import code_hash, source_tree_hash
from fishleg_core.qforms.diagonal import DiagonalQ


def helper(G):
    return 2 * G


class Doubled(DiagonalQ):
    """Q G = 2 D ⊙ G, through a module-level helper."""

    def multiply(self, G):
        return helper(super().multiply(G))


@pytest.fixture
def doubled():
    """``Doubled`` registered as the QForm ``test_doubled`` for one test."""
    fl.QFORMS.register("test_doubled")(Doubled)
    yield Doubled
    fl.QFORMS.unregister("test_doubled")


# --- code hashes ------------------------------------------------------------------------------------


def test_code_hash_follows_the_code_that_runs(monkeypatch):
    before = code_hash(Doubled)
    assert code_hash(Doubled) == before
    monkeypatch.setattr(Doubled, "multiply", lambda self, G: 0.01 * DiagonalQ.multiply(self, G))
    patched = code_hash(Doubled)
    assert patched != before
    monkeypatch.undo()
    assert code_hash(Doubled) == before
    monkeypatch.setattr(sys.modules[__name__], "helper", lambda G: 3 * G)  # a helper of the form's module
    assert code_hash(Doubled) not in (before, patched)
    monkeypatch.undo()
    monkeypatch.setattr(Doubled, "init_deviation", 0.5)  # a plain class attribute
    assert code_hash(Doubled) != before
    monkeypatch.undo()
    monkeypatch.setattr(DiagonalQ, "multiply", lambda self, G: self.D() * G * 1.0)  # a base class
    assert code_hash(Doubled) != before


def test_code_hash_is_the_same_in_another_process():
    """No memory address or set order (which changes with PYTHONHASHSEED) enters the hash."""
    program = (
        "from experiments.a6.provenance import code_hash; import fishleg_core as fl; "
        "print(*(code_hash(fl.QFORMS.get(name)) for name in fl.QFORMS.names()))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert done.stdout.split() == [code_hash(fl.QFORMS.get(name)) for name in fl.QFORMS.names()]


def test_source_tree_hash_changes_with_any_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "fitting.py").write_text("STEP = 1\n")
    before = source_tree_hash((tmp_path / "pkg",))
    (tmp_path / "pkg" / "fitting.py").write_text("STEP = 2\n")
    edited = source_tree_hash((tmp_path / "pkg",))
    (tmp_path / "pkg" / "extra.py").write_text("")
    assert len({before, edited, source_tree_hash((tmp_path / "pkg",))}) == 3


# --- the study ----------------------------------------------------------------------------------------


@pytest.fixture
def study(tmp_path, monkeypatch):
    """Runs of the tiny study on the form ``test_doubled``, counting fits and pre-trainings."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    counts = {"fits": 0, "pretrainings": 0, "cg": 0}
    fit_q, pretrain, solve = fl.fit_q, a6_study.pretrain, fl.ProbeEvaluator._solve

    def counted_fit(*args, **kwargs):
        counts["fits"] += 1
        return fit_q(*args, **kwargs)

    def counted_pretrain(*args):
        counts["pretrainings"] += 1
        return pretrain(*args)

    def counted_solve(*args):
        counts["cg"] += 1
        return solve(*args)

    monkeypatch.setattr(fl, "fit_q", counted_fit)
    monkeypatch.setattr(fl.ProbeEvaluator, "_solve", counted_solve)
    monkeypatch.setattr(a6_study, "pretrain", counted_pretrain)

    def run(*extra: str) -> float:
        out = tmp_path / "out"
        arguments = [
            "--config",
            str(config),
            "--forms",
            "test_doubled",
            "--out",
            str(out),
            "--no-progress",
            "--threads",
            "1",
            *extra,
        ]
        assert a6_study.main(arguments) == 0
        return json.loads((out / "results.json").read_text())["forms"][0]["mean_normalized_error"]

    run.counts = counts
    return run


def test_an_edited_form_is_recomputed(doubled, study, monkeypatch, capsys):
    first = study()
    assert study() == first and study.counts["fits"] == 1
    assert "test_doubled: reused from " in capsys.readouterr().err
    monkeypatch.setattr(doubled, "multiply", lambda self, G: 0.01 * helper(DiagonalQ.multiply(self, G)))
    scaled = study()
    assert study.counts["fits"] == 2 and scaled != first
    assert study.counts["pretrainings"] == 1  # the pre-trained model does not depend on the form
    assert study.counts["cg"] == 1  # nor do the probes' F_γ⁻¹u (one probe, solved once)
    monkeypatch.undo()  # back to the first code: its result is still cached
    assert study() == first and study.counts["fits"] == 2


@pytest.mark.parametrize("change", ["torch", "library"])
def test_another_torch_or_library_recomputes_everything(change, doubled, study, monkeypatch):
    study()
    if change == "torch":
        monkeypatch.setattr(torch, "__version__", torch.__version__ + "+other")
    else:
        monkeypatch.setattr(provenance, "library_hash", lambda: "edited-library")
    study()
    assert study.counts == {"fits": 2, "pretrainings": 2, "cg": 2}


SCALE = 1.0


class Scaled(DiagonalQ):
    def multiply(self, G):
        return SCALE * super().multiply(G)


def test_code_hash_sees_the_module_constants_a_form_uses(monkeypatch):
    before = code_hash(Scaled)
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 0.01)
    assert code_hash(Scaled) != before
    monkeypatch.setattr(sys.modules[__name__], "SCALE", torch.ones(2))
    with_tensor = code_hash(Scaled)
    monkeypatch.setattr(sys.modules[__name__], "SCALE", torch.tensor([1.0, 2.0]))
    assert code_hash(Scaled) != with_tensor


def test_code_hash_of_an_optimizer_is_the_same_after_its_first_use():
    """torch.optim.Optimizer wraps a subclass's ``step`` when the first instance is made: the hash must follow
    the code as written, or the second run of the study would miss its cache."""

    class Plain(torch.optim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    before = code_hash(Plain)
    Plain([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert code_hash(Plain) == before
