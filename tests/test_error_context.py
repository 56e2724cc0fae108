"""Errors and warnings that say where a problem came from: auxiliary batches, fit_q's streams, a state_dict of
other forms, damping = 0."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from models import tiny_mlp

import fishleg_core as fl

CATEGORICAL = fl.LIKELIHOODS.build("categorical")


def classification_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, generator=generator, dtype=torch.float64), torch.randint(0, 3, (8,), generator=generator)


def one_step(optimizer, model, aux_data):
    x, y = classification_batch()
    optimizer.zero_grad()
    CATEGORICAL.nll(model(x), y).backward()
    optimizer.step(aux_batch=aux_data)


@pytest.mark.parametrize("swap", [True, False], ids=["(y, x) pairs", "labels only"])
def test_a_bad_auxiliary_batch_is_named_as_such(swap):
    model = tiny_mlp(3)
    optimizer = fl.FishLeg(model, CATEGORICAL, lr=0.1, aux_every=1)
    x, y = classification_batch(1)
    with pytest.raises(
        (RuntimeError, ValueError, TypeError),
        match=r"FishLeg: the Fisher-vector product on the auxiliary batch \(from aux_data .*inputs "
        r"\(8,\) int64.*failed: .*inputs first",
    ):
        one_step(optimizer, model, (y, x) if swap else y)


def test_fit_q_takes_pairs_and_names_a_bad_curvature_batch():
    model = tiny_mlp(3)
    q = fl.build_model_q(model)
    x, y = classification_batch(1)
    u = {name: torch.ones_like(p) / 6 for name, p in model.named_parameters()}
    result = fl.fit_q(model, CATEGORICAL, q, itertools.repeat(u), itertools.repeat((x, y)), steps=2, method="empirical")
    assert len(result.curve) == 2
    with pytest.raises(TypeError, match="fit_q: each of curvature_batches must be an input tensor, a tuple"):
        fl.fit_q(model, CATEGORICAL, q, itertools.repeat(u), itertools.repeat([[1.0]]), steps=1)


def test_fit_q_warns_when_its_streams_run_out():
    model = tiny_mlp(3)
    q = fl.build_model_q(model)
    x, _ = classification_batch(1)
    u = {name: torch.ones_like(p) / 6 for name, p in model.named_parameters()}
    with pytest.warns(UserWarning, match="fit_q: directions or curvature_batches ran out after 3 of steps=10"):
        result = fl.fit_q(model, CATEGORICAL, q, [u] * 3, itertools.repeat(x), steps=10)
    assert len(result.curve) == 3 and not result.stopped_early


def test_a_state_dict_of_other_forms_names_the_blocks_saved_and_current():
    model = tiny_mlp(3)
    saved = fl.FishLeg(model, CATEGORICAL, lr=0.1, forms={"default": "diagonal"}).state_dict()
    current = fl.FishLeg(model, CATEGORICAL, lr=0.1, forms={"2": "kron", "default": "diagonal"})
    with pytest.raises(
        ValueError,
        match=r"(?s)entries that differ:.*by_blocks\.2\.form\.D\.raw \(block '2', Linear, "
        r"kron\): saved \(3, 6\), current \(none\)",
    ):
        current.load_state_dict(saved)


def test_damping_zero_warns_with_auxiliary_updates_only():
    model = tiny_mlp(3)
    with pytest.warns(UserWarning, match="damping=0: F_γ = F is singular"):
        fl.FishLeg(model, CATEGORICAL, lr=0.1, damping=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fl.FishLeg(model, CATEGORICAL, lr=0.1, damping=0.0, aux_every=0)
