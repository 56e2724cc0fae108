"""Forms with options as rows of the A.6 study: ``--forms kron,kron_sum:K=3``, their own labels, cache
entries and learning rates."""

from __future__ import annotations

import json

import pytest
from tiny_study import TINY_STUDY

from experiments.a6 import study as a6_study
from experiments.a6.config import StudyConfig
from experiments.a6.form_specs import FormSpec, file_name, parse_spec


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


def test_each_form_has_its_optimizer_and_rate():
    default = StudyConfig(forms="diagonal,kron,ekfac,kron_sum,tridiag_kron")
    assert [default.optimizer(label) for label in default.forms] == [
        "multiplicative",
        "multiplicative",
        "multiplicative",
        "adam",
        {"name": "multiplicative", "adam_lr": 1e-3},
    ]
    assert [default.lr(label) for label in default.forms] == [0.3, 0.03, 0.03, 1e-3, 0.03]  # DEFAULT_RATES
    adam = StudyConfig(forms="diagonal,kron", aux_optimizer="adam")
    assert [(adam.optimizer(label), adam.lr(label)) for label in adam.forms] == [("adam", 0.3), ("adam", 1e-3)]
    table = StudyConfig(
        forms="kron,kron_sum:K=3", aux_optimizer={"default": "adam", "kron_sum:K=3": {"name": "multiplicative"}}
    )
    assert table.optimizer("kron_sum:K=3") == {"name": "multiplicative"} and table.lr("kron_sum:K=3") == 0.03
    # a form's cache key follows its own optimizer, not the other forms'
    other = table.model_copy(update={"aux_optimizer": {"default": "adam", "kron_sum:K=3": "adam"}})
    assert other.form_key("kron") == table.form_key("kron")
    assert other.form_key("kron_sum:K=3") != table.form_key("kron_sum:K=3")


@pytest.mark.parametrize(
    ("aux_optimizer", "message"),
    [
        ({"kron": "adam"}, "needs a 'default' entry"),
        ({"default": "adam", "krom": "adam"}, "optimizers for unknown QForms 'krom'"),
        ({"default": "adam", "kron": "sgd"}, r"aux_optimizer\['kron'\]: unknown auxiliary optimizer 'sgd'"),
    ],
)
def test_bad_optimizer_tables_are_named(aux_optimizer, message):
    with pytest.raises(ValueError, match=message):
        StudyConfig(aux_optimizer=aux_optimizer)


def test_an_optimizer_without_a_default_rate_needs_aux_lr(monkeypatch):
    import fishleg_core as fl

    fl.AUX_OPTIMIZERS.register("test_plain")(fl.AUX_OPTIMIZERS.get("adam"))
    try:
        with pytest.raises(ValueError, match="no rate for form 'kron': its optimizer 'test_plain' has no default"):
            StudyConfig(forms="kron", aux_optimizer="test_plain")
        assert StudyConfig(forms="kron", aux_optimizer="test_plain", aux_lr=0.01).lr("kron") == 0.01
    finally:
        fl.AUX_OPTIMIZERS.unregister("test_plain")


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
