"""The silent-failure trial runs in its quick mode and reports both runs."""

from __future__ import annotations

from experiments.a6.cnn_diagnostics import main


def test_quick_trial_reports_both_runs(capsys):
    main(["--quick"])
    out = capsys.readouterr().out
    assert out.startswith("logits: training loss") and "softmax before the likelihood: training loss" in out
    assert "logits" in out.splitlines()[0] and "warnings []" in out.splitlines()[0]
