"""The A.6 study beyond the autoencoder (``--model cnn``, ``--model transformer``): end-to-end runs on
settings smaller than --quick, the skipped references and the c·I start noted, the model in every cache key."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from torch import nn

from experiments.a6 import study as a6_study
from experiments.a6.config import StudyConfig
from experiments.a6.study_models import MODELS

SMALL = """
forms: [diagonal, kron]
pretrain_iterations: 60
steps: 10
n_probes: 2
n_curvature: 50
certificate_steps: 3
"""
"""On top of --quick: two forms, shorter pre-training and fits (each run ~10-20 s on one thread)."""

NO_CHAIN = "it has no chain of adjacent nn.Linear layers"

SKIPPED = {
    "cnn": ["kfac"],
    "transformer": ["kfac", "kfac_curvlinops", "kfac_curvlinops_rescaled", "ekfac_curvlinops"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``--quick`` runs of the CNN, then the transformer, into the same folder: per model results.json,
    summary.md and the log."""
    out = tmp_path_factory.mktemp("models")
    config = out / "small.yaml"
    config.write_text(SMALL)
    done = {}
    for model in ("cnn", "transformer"):
        log = io.StringIO()
        arguments = ["--quick", "--model", model, "--config", str(config), "--out", str(out), "--no-progress"]
        with redirect_stderr(log):
            assert a6_study.main([*arguments, "--threads", "1"]) == 0
        done[model] = (json.loads((out / "results.json").read_text()), (out / "summary.md").read_text(), log.getvalue())
    return out, done


@pytest.mark.parametrize("model", ["cnn", "transformer"])
def test_a_classifier_study_runs_end_to_end(model, runs):
    _, done = runs
    results, summary, log = done[model]
    assert results["config"]["model"] == model
    assert 0.2 < results["pretraining"]["heldout_accuracy"] <= 1  # 60 iterations: above chance (0.1), no more
    assert [row["name"] for row in results["forms"]] == ["diagonal", "kron"]
    skipped = SKIPPED[model]
    assert sorted(results["skipped_references"]) == sorted(skipped)
    computed = [row["name"] for row in results["references"]]
    assert "identity" in computed and not set(computed) & set(skipped)
    assert "kfac_curvlinops" in computed or model == "transformer"  # curvlinops' KFAC takes nn.Conv2d
    for row in results["forms"] + results["references"]:
        A, A_star, e = row["mean_probe_aux_loss"], row["mean_probe_optimal_aux_loss"], row["mean_normalized_error"]
        assert math.isfinite(A) and A_star < 0 and A >= A_star
        assert 0 < e < 1.5
        assert row["layer_split"]["total"] > 0
    for row in results["forms"]:  # every block with KFAC factors (convolutions, embedding, attention) started
        assert row["init"] == "kfac" and row["kfac_scale"] > 0 and "init_note" not in row
        assert isinstance(row["certificate"]["certified"], bool)
        assert row["mean_normalized_error"] < 1  # better than Q = 0
        not_started = row.get("kfac_not_started", [])
        assert not_started == ([] if model == "cnn" else ["norm1", "norm2", "norm3"])  # LayerNorm: no factors
    assert "Skipped references: kfac: the hand-written KFAC reference handles nn.Linear layers only" in summary
    assert ("keeps c·I on norm1, norm2, norm3" in summary) == (model == "transformer")
    assert "Categorical likelihood" in summary
    assert all(f"reference {name} skipped" in log for name in skipped)


def test_the_model_is_in_every_cache_key(runs):
    out, done = runs
    _, _, transformer_log = done["transformer"]
    assert "reused" not in transformer_log  # nothing of the CNN's, run before in the same folder
    assert len(list(out.glob("pretrained-*.pt"))) == 2
    assert len(list((out / "forms").glob("kron-*.json"))) == 2
    assert len(list((out / "references").glob("identity-*.json"))) == 2
    configs = {model: StudyConfig(model=model) for model in MODELS}
    for key in ("pretraining_key", "reference_key"):
        assert len({getattr(config, key)() for config in configs.values()}) == 3
    assert len({config.form_key("kron") for config in configs.values()}) == 3


def test_a_rerun_reuses_the_skipped_references(runs, monkeypatch):
    out, _ = runs
    log = io.StringIO()
    monkeypatch.setattr(a6_study, "heldout_evaluator", lambda *args: pytest.fail("re-evaluated"))
    with redirect_stderr(log):
        arguments = ["--quick", "--model", "transformer", "--config", str(out / "small.yaml"), "--out", str(out)]
        assert a6_study.main([*arguments, "--no-progress", "--threads", "1"]) == 0
    assert "references/kfac_curvlinops: reused" in log.getvalue()


def test_model_defaults_and_output_folder():
    assert StudyConfig().model == "autoencoder" and StudyConfig().pretrain_lr == 3e-3
    assert StudyConfig(model="cnn").pretrain_lr == MODELS["cnn"].defaults["pretrain_lr"]
    assert StudyConfig(model="cnn", pretrain_lr=0.01).pretrain_lr == 0.01  # a given setting wins
    assert StudyConfig(model="cnn").lr("diagonal") == 0.1 and StudyConfig().lr("diagonal") == 0.3
    assert StudyConfig(model="cnn", aux_lr={"diagonal": 0.2}).lr("diagonal") == 0.2
    assert a6_study.default_out("autoencoder") == Path("results/a6")
    assert a6_study.default_out("transformer") == Path("results/a6-transformer")


def test_unknown_model_and_group_form_without_chain(tmp_path, monkeypatch, capsys):
    assert a6_study.main(["--model", "resnet", "--out", str(tmp_path / "out")]) == 2
    assert "invalid model" in capsys.readouterr().err
    chainless = dataclasses.replace(MODELS["cnn"], build=lambda seed: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    monkeypatch.setitem(MODELS, "cnn", chainless)
    assert a6_study.main(["--model", "cnn", "--forms", "tridiag_kron", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "a6_study: error: form 'tridiag_kron' cannot be used on the cnn: " + NO_CHAIN
    assert not (tmp_path / "out").exists()
