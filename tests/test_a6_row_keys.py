"""The A.6 study's cache keys cover every registry entry a row runs (experiments/row_code.py), and every
form gets the same kind of start, said in words next to its e where it is c·I."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_study import TINY_STUDY
from torch import nn

import fishleg_core as fl
from experiments.a6 import study as a6_study
from experiments.a6.config import StudyConfig
from experiments.a6.provenance import code_hash
from experiments.a6.study_models import MODELS
from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.positive import PositiveTensor, inverse_softplus
from fishleg_core.registry import Registry


class Unstarted(QForm):
    """The diagonal form written anew: no Kronecker start (``QForm.set_kronecker`` returns False)."""

    def __init__(self, shape, init_scale=1.0, *, device=None, dtype=None):
        super().__init__(shape, init_scale)
        self.D = PositiveTensor(torch.full(self.shape, self.init_scale, device=device, dtype=dtype))

    def multiply(self, G):
        return self.D() * G

    def to_dense(self):
        return torch.diag(self.D().reshape(-1))


class Started(Unstarted):
    """The same form with a Kronecker start (``start_diagonal`` as its ``set_kronecker``, set by the ``forms``
    fixture)."""


def start_diagonal(form, left, right):
    with torch.no_grad():
        form.D.raw.copy_(inverse_softplus(torch.outer(left.square().sum(1), right.square().sum(1))))
    return True


def start_diagonal_halved(form, left, right):
    with torch.no_grad():
        form.D.raw.copy_(inverse_softplus(0.5 * torch.outer(left.square().sum(1), right.square().sum(1))))
    return True


@pytest.fixture
def forms():
    """``test_unstarted`` and ``test_started`` (with ``start_diagonal``) registered for one test."""
    fl.QFORMS.register("test_unstarted")(Unstarted)
    fl.QFORMS.register("test_started")(Started)
    Started.set_kronecker = start_diagonal
    yield
    for key in ("test_unstarted", "test_started"):
        if key in fl.QFORMS:
            fl.QFORMS.unregister(key)
    for cls in (Started, Unstarted):
        if "set_kronecker" in vars(cls):
            delattr(cls, "set_kronecker")


def replace_entry(monkeypatch, registry: Registry, key, entry) -> None:
    """Register ``entry`` under ``key`` in place of the current one until ``monkeypatch.undo()``."""
    monkeypatch.setitem(registry._entries, key, entry)


EXACT = fl.FISHER_METHODS.get("exact")
MULTIPLICATIVE = fl.AUX_OPTIMIZERS.get("multiplicative")


def exact_again(**kwargs):
    return EXACT(**kwargs)


def multiplicative_again(*args, **kwargs):
    return MULTIPLICATIVE(*args, **kwargs)


class BernoulliAgain(fl.LIKELIHOODS.get("bernoulli")):  # type: ignore[misc]
    def nll(self, outputs, targets):
        return super().nll(outputs, targets)


class LinearAdapterAgain(fl.LAYER_ADAPTERS.get(nn.Linear)):  # type: ignore[misc]
    default_form = "diagonal"


def _edit_form(monkeypatch):
    monkeypatch.setattr(Started, "multiply", lambda self, G: 2 * self.D() * G)


def _edit_start_in_place(monkeypatch):
    monkeypatch.setattr(start_diagonal, "__code__", start_diagonal_halved.__code__)


FORM_ONLY, EVERY_KEY = (False, False, True), (True, True, True)
PERTURBATIONS = {
    # name: (how, which keys change: pretraining, reference, form)
    "form class edited": (_edit_form, FORM_ONLY),
    "start replaced": (lambda mp: mp.setattr(Started, "set_kronecker", start_diagonal_halved), FORM_ONLY),
    "start edited in place": (_edit_start_in_place, FORM_ONLY),
    "Fisher method replaced": (lambda mp: replace_entry(mp, fl.FISHER_METHODS, "exact", exact_again), EVERY_KEY),
    "likelihood replaced": (lambda mp: replace_entry(mp, fl.LIKELIHOODS, "bernoulli", BernoulliAgain), EVERY_KEY),
    "layer adapter replaced": (
        lambda mp: replace_entry(mp, fl.LAYER_ADAPTERS, nn.Linear, LinearAdapterAgain),
        EVERY_KEY,
    ),
    "auxiliary optimizer replaced": (
        lambda mp: replace_entry(mp, fl.AUX_OPTIMIZERS, "multiplicative", multiplicative_again),
        FORM_ONLY,
    ),
}


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_every_registry_entry_a_row_runs_is_in_its_key(name, forms, monkeypatch):
    config = StudyConfig(forms=("test_started",))

    def keys():
        return config.pretraining_key(), config.reference_key(), config.form_key("test_started")

    before = keys()
    assert keys() == before
    perturb, changes = PERTURBATIONS[name]
    perturb(monkeypatch)
    after = keys()
    assert [old != new for old, new in zip(before, after)] == [bool(change) for change in changes]
    monkeypatch.undo()
    assert keys() == before


def test_registering_a_start_for_a_form_changes_its_key(forms):
    config = StudyConfig(forms=("test_unstarted",))
    before = config.form_key("test_unstarted")
    Unstarted.set_kronecker = start_diagonal
    assert config.form_key("test_unstarted") != before


@pytest.fixture
def study(tmp_path, monkeypatch, capsys):
    """Runs of the tiny study (``--forms`` given), each returning (rows of results.json, summary.md,
    stderr); ``study.fits`` counts the fits."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    out = tmp_path / "out"
    counts = {"fits": 0}
    fit_q = fl.fit_q

    def counted_fit(*args, **kwargs):
        counts["fits"] += 1
        return fit_q(*args, **kwargs)

    monkeypatch.setattr(fl, "fit_q", counted_fit)

    def run(forms: str, *extra: str):
        arguments = ["--config", str(config), "--forms", forms, "--out", str(out), "--no-progress", "--threads", "1"]
        capsys.readouterr()
        assert a6_study.main([*arguments, *extra]) == 0
        rows = json.loads((out / "results.json").read_text())["forms"]
        return rows, (out / "summary.md").read_text(), capsys.readouterr().err

    run.counts = counts
    return run


def test_a_start_registered_or_edited_after_a_run_is_not_reused(forms, study):
    """The newcomer's stale result: a plugin form run once, then given a KFAC start, then its start edited."""
    rows, summary, err = study("diagonal,test_unstarted")
    assert study.counts["fits"] == 2
    assert [row["init"] for row in rows] == ["identity", "identity"]  # the same kind of start for both
    words = "started from c·I: test_unstarted has no KFAC start"
    assert words in rows[1]["start_note"] and f"e = {rows[1]['mean_normalized_error']:.3f} ({words})" in err
    assert f"{rows[1]['mean_normalized_error']:.3f} ({words})" in summary
    assert "started from c·I, like every form: test_unstarted has no KFAC start" in summary
    assert "every form starts from c·I: test_unstarted has no KFAC start" in err

    Unstarted.set_kronecker = start_diagonal
    started, summary, err = study("diagonal,test_unstarted")
    assert study.counts["fits"] == 4 and "forms/" not in err  # no form row reused
    assert [row["init"] for row in started] == ["kfac", "kfac"] and "start_note" not in started[1]
    assert "c·I" not in summary.split("Held-out columns")[0].split("| --- |")[-1]  # no note in the table rows

    again, _, err = study("diagonal,test_unstarted")
    assert study.counts["fits"] == 4 and again == started and "test_unstarted: reused from" in err

    Unstarted.set_kronecker = start_diagonal_halved
    edited, _, err = study("diagonal,test_unstarted")
    assert study.counts["fits"] == 5  # only the form whose start changed
    assert edited[0] == started[0] and edited[1]["kfac_scale"] != started[1]["kfac_scale"]


def test_the_figure_names_the_optimizers_of_lambda():
    from experiments.a6.report import step_label

    assert step_label(StudyConfig(forms=("diagonal", "kron"))) == "multiplicative step of λ"
    assert step_label(StudyConfig(forms=("kron", "kron_sum"))) == (
        "step of λ's optimizer (multiplicative: kron; adam: kron_sum)"
    )
    assert step_label(StudyConfig(forms=("kron",), aux_optimizer="adam")) == "adam step of λ"


_ANNOUNCED: set[str] = set()


def announcing(message):
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
    return message


def test_a_key_is_the_same_after_the_code_it_covers_ran():
    """Run-time state of a module (a private set of warnings given) is not part of the code: the exact Fisher
    method records the kernels it announced, and the transformer's keys must not change with that."""
    config = StudyConfig(model="transformer")
    before = code_hash(announcing), config.reference_key(), config.form_key("kron")
    announcing("once")
    model = MODELS["transformer"].build(0)
    vector = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fl.fisher_vp(model, "categorical", torch.rand(2, 784), vector, method="exact", damping=1.0)
    assert (code_hash(announcing), config.reference_key(), config.form_key("kron")) == before
