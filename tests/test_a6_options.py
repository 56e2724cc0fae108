"""Forms with options as rows of the A.6 study: ``--forms kron,kron_sum:K=3``, their own labels, cache
entries and learning rates."""

from __future__ import annotations

import json

import pytest
from tiny_study import TINY_STUDY

from experiments import a6_study
from experiments.config import StudyConfig
from experiments.form_specs import FormSpec, file_name, parse_spec


@pytest.mark.parametrize(
    "text, spec",
    [
        ("kron", FormSpec("kron")),
        ("kron_sum:K=3", FormSpec("kron_sum", {"K": 3})),
        (" diag_low_rank : rank=8 : scale=0.5 ", FormSpec("diag_low_rank", {"rank": 8, "scale": 0.5})),
        ("f:flag=True:name=abc:tiny=1e-3", FormSpec("f", {"flag": True, "name": "abc", "tiny": 1e-3})),
    ],
)
def test_form_specs_parse_and_print_back(text, spec):
    assert parse_spec(text) == spec
    assert parse_spec(spec.label) == spec
    assert parse_spec({"form": spec.name, **spec.options}) == spec


@pytest.mark.parametrize(
    "spec, message",
    [
        ("kron_sum:K", "expected option=value"),
        ("kron_sum:3=K", "identifiers"),
        ({"K": 3}, "needs a 'form'"),
        (":K=3", "empty form name"),
    ],
)
def test_malformed_form_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_config_rows_and_their_learning_rates():
    config = StudyConfig(
        forms=["kron", {"form": "kron_sum", "K": 3}, "kron_sum"],
        aux_lr={"default": 1e-3, "kron_sum": 2e-3, "kron_sum:K=3": 5e-3},
    )
    assert config.forms == ("kron", "kron_sum:K=3", "kron_sum")
    assert [config.lr(label) for label in config.forms] == [1e-3, 5e-3, 2e-3]
    assert len({config.form_key(label) for label in config.forms}) == 3
    assert file_name("forms/kron_sum:K=3") == "forms/kron_sum_K=3"
    with pytest.raises(ValueError, match="distinct"):
        StudyConfig(forms="kron_sum:K=3,kron_sum:K=3")


def test_the_same_form_with_other_options_is_another_row(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    out = tmp_path / "out"
    base = ["--config", str(config), "--out", str(out), "--no-progress", "--threads", "1"]
    assert a6_study.main([*base, "--forms", "diag_low_rank:rank=1,diag_low_rank:rank=3"]) == 0
    rows = json.loads((out / "results.json").read_text())["forms"]
    assert [row["name"] for row in rows] == ["diag_low_rank:rank=1", "diag_low_rank:rank=3"]
    assert rows[0]["n_params"] < rows[1]["n_params"]
    assert sorted(path.name.rpartition("-")[0] for path in (out / "forms").iterdir()) == [
        "diag_low_rank_rank=1",
        "diag_low_rank_rank=3",
    ]
    assert "diag_low_rank:rank=3" in (out / "summary.md").read_text()
    capsys.readouterr()
    assert a6_study.main([*base, "--forms", "diag_low_rank:rank=3"]) == 0
    assert "forms/diag_low_rank:rank=3: reused from" in capsys.readouterr().err
    assert a6_study.main([*base, "--forms", "diag_low_rank:depth=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("a6_study: error: form 'diag_low_rank:depth=3' cannot be used") and "'depth'" in err
