"""The A.6 study's convergence certificate refuses a fit that diverged (``divergence``), whatever its
continuation gains, and still certifies one that descended."""

from __future__ import annotations

import json
import math

import pytest
from tiny_study import TINY_STUDY

from experiments.a6 import study as a6_study
from experiments.a6.certificate import divergence
from experiments.a6.report import _certified


@pytest.mark.parametrize(
    "monitor, heldout, reason",
    [
        ([-0.0068, -0.012, -0.0146], -0.0145, None),  # descended: certified as its continuation says
        ([-0.0068, -0.0068], -0.0068, None),  # did not move: not a divergence
        ([-0.0068, 5.0, -0.007], -0.0069, None),  # a transient rise that came back down
        ([-0.0068, 3.0, 211.0], 180.0, "diverged: monitor rose from -0.0068 to 211"),  # the fit
        ([-0.0068, math.nan, -0.01], -0.01, "diverged: monitor not finite"),
        ([-0.0068, -0.01, math.inf], -0.01, "diverged: monitor not finite"),
        ([-0.0068, -0.01], math.nan, "diverged: held-out A = nan"),
    ],
)
def test_divergence_of_a_synthetic_monitor(monitor, heldout, reason):
    assert divergence(monitor, heldout) == reason


def test_divergence_needs_a_monitor():
    with pytest.raises(ValueError, match="empty"):
        divergence([], -0.01)


def test_summary_column_refuses_a_diverged_row_whose_continuation_gained_nothing():
    """A row cached before the divergence test (its certificate says certified) shows NO with the reason."""
    certificate = {"certified": True, "relative_gain": -0.001}
    diverged = {"certificate": certificate, "monitor": {"aux_loss": [-0.0068, 211.0]}, "mean_probe_aux_loss": 180.0}
    assert _certified(diverged) == "NO (diverged: monitor rose from -0.0068 to 211)"
    descended = {**diverged, "monitor": {"aux_loss": [-0.0068, -0.0146]}, "mean_probe_aux_loss": -0.0145}
    assert _certified(descended) == "yes (-0.10%)"


def test_a_fit_forced_to_diverge_is_not_certified(tmp_path, capsys):
    """Tiny study: diagonal by Adam at rate 1000 diverges, kron by its default descends; a tolerance so loose
    that the continuation test alone would certify both."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        TINY_STUDY
        + "forms: [diagonal, kron]\naux_lr: {diagonal: 1000.0}\n"
        + "aux_optimizer: {default: multiplicative, diagonal: adam}\ncertificate_tolerance: 1.0e9\n"
    )
    out = tmp_path / "out"
    arguments = ["--config", str(config), "--out", str(out), "--no-progress", "--threads", "1", "--jobs", "1"]
    assert a6_study.main(arguments) == 0
    diagonal, kron = json.loads((out / "results.json").read_text())["forms"]
    monitor = diagonal["monitor"]["aux_loss"]
    assert monitor[-1] > monitor[0]
    assert diagonal["certificate"]["certified"] is False
    assert diagonal["certificate"]["diverged"].startswith("diverged: monitor rose from")
    assert kron["monitor"]["aux_loss"][-1] < kron["monitor"]["aux_loss"][0]
    assert kron["certificate"]["certified"] is True and "diverged" not in kron["certificate"]
    summary = (out / "summary.md").read_text()
    assert "| NO (diverged: monitor rose from " in summary and "| yes (" in summary
    assert "WARNING: diagonal not certified, diverged: monitor rose from" in capsys.readouterr().err
