"""The zoo (tests/zoo.py): for each architecture, the exact Fisher-vector product against a dense Fisher from
the Jacobian in float64, ModelQ against its dense matrix, and a few FishLeg steps that stay finite and
lower the loss."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import zoo
from reference import dense_fisher, flat, unflat

import fishleg_core as fl
from fishleg_core.param_vectors import trainable_parameters

NAMES = list(zoo.ZOO)
FALLBACK_NOTE = "exact Fisher-vector product: using"  # announced once per process; not a layer fallback


def test_the_zoo_has_at_least_ten_architectures():
    assert len(NAMES) >= 10


def mapped_blocks(name, model):
    """map_blocks, checking that the only warning is the one the case expects."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blocks = fl.map_blocks(model)
    messages = [str(w.message) for w in caught]
    expected = zoo.ZOO[name].warns
    assert len(messages) == (1 if expected else 0), messages
    if expected:
        assert re.search(expected, messages[0]), messages
    return blocks


@pytest.mark.parametrize("name", NAMES)
def test_blocks_cover_every_trainable_parameter_once(name):
    model = zoo.build(name)
    blocks = mapped_blocks(name, model)
    names = [n for block in blocks for n in block.param_names]
    assert sorted(names) == sorted(trainable_parameters(model))
    fallback = [block.name for block in blocks if block.param_names == (block.name,)]
    assert bool(fallback) == bool(zoo.ZOO[name].warns)


@pytest.mark.parametrize("name", NAMES)
def test_exact_fisher_vp_matches_the_dense_fisher(name):
    case, model = zoo.ZOO[name], zoo.build(name)
    x = zoo.inputs(name, batch=3)
    params = trainable_parameters(model)
    F = dense_fisher(model, x, case.likelihood, case.output_fn)
    v = torch.randn(F.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=FALLBACK_NOTE)
        fv = fl.fisher_vp(model, case.likelihood, x, unflat(v, params), output_fn=case.output_fn)
    torch.testing.assert_close(flat(fv, params), F @ v, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", NAMES)
def test_model_q_matches_its_dense_matrix(name):
    model = zoo.build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = fl.build_model_q(model)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        for p in q.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = {n: p for n, p in model.named_parameters() if n in q.param_names}
    ordered = {n: params[n] for n in q.param_names}
    x = torch.randn(
        sum(p.numel() for p in ordered.values()), generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    qx = q(unflat(x, ordered))
    torch.testing.assert_close(flat(qx, ordered), q.to_dense() @ x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_fishleg_steps_stay_finite_and_lower_the_loss(name):
    case, model = zoo.ZOO[name], zoo.build(name)
    x, aux = zoo.inputs(name, batch=6, seed=4), zoo.inputs(name, batch=6, seed=5)
    likelihood = fl.LIKELIHOODS.build(case.likelihood)
    select = case.output_fn or (lambda out: out)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        y = likelihood.sample(select(model(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = fl.FishLeg(
            model,
            likelihood,
            lr=0.5,
            momentum=0.0,
            q={"init_scale": 0.1},
            aux_optimizer={"name": "adam", "lr": 1e-3},
            aux_every=1,
            aux_data=[aux],
            output_fn=case.output_fn,
        )
        losses = []
        for _ in range(4):
            optimizer.zero_grad()
            loss = likelihood.nll(select(model(x)), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(optimizer.last_aux_loss)
    assert losses[-1] < losses[0], losses


def test_frozen_model_fit_and_evaluation_use_the_output_selector():
    """normalized_gradients, fit_q and ProbeEvaluator on a dict-output model with output_fn give what they give
    on the same network returning the logits tensor."""
    name = "dict_output"
    case, model = zoo.ZOO[name], zoo.build(name)
    plain = torch.nn.Sequential(model.body, torch.nn.Tanh(), model.head)
    rename = {"body.weight": "0.weight", "body.bias": "0.bias", "head.weight": "2.weight", "head.bias": "2.bias"}
    x, curvature = zoo.inputs(name, batch=8, seed=7), zoo.inputs(name, batch=8, seed=8)
    y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(9))
    (u,) = fl.normalized_gradients(model, "categorical", [(x, y)], output_fn=case.output_fn)
    (u_plain,) = fl.normalized_gradients(plain, "categorical", [(x, y)])
    for key, other in rename.items():
        torch.testing.assert_close(u[key], u_plain[other])
    results = []
    for net, direction, select in [(model, u, case.output_fn), (plain, u_plain, None)]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            q = fl.build_model_q(net)
        fit = fl.fit_q(net, "categorical", q, [direction] * 3, [curvature] * 3, steps=3, lr=1e-2, output_fn=select)
        evaluator = fl.ProbeEvaluator(net, "categorical", [direction], curvature, damping=0.1, output_fn=select)
        results.append((fit.curve, evaluator.evaluate(q).mean_normalized_error))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-10)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-8)
