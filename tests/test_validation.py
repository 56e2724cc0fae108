"""Every public entry point rejects wrong types, shapes, names and out-of-range values, naming the argument.

One table: (entry point and bad arguments, expected exception type, a fragment of the message that names the
argument).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from torch import nn

from fishleg_core import (
    LIKELIHOODS,
    QFORMS,
    FishLeg,
    InvalidConfigError,
    ProbeEvaluator,
    Registry,
    UnknownNameError,
    auxiliary_loss,
    build_model_q,
    fisher_vp,
    fit_q,
    joint_block,
    map_blocks,
    normalized_gradients,
)
from fishleg_core.layers import choose_forms

SHAPE = (3, 4)


@pytest.fixture(scope="module")
def e():
    """A tiny model with everything the entry points need, built once (the cases do not modify it)."""
    model = tiny_mlp(2)
    x = random_inputs(MLP_INPUT, 6)
    y = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    u = {name: torch.ones_like(p) / 47**0.5 for name, p in params.items()}  # 47 parameters: a unit vector
    frozen = tiny_mlp(2).requires_grad_(False)
    gaussian = LIKELIHOODS.build("gaussian")
    return SimpleNamespace(
        model=model,
        x=x,
        y=y,
        u=u,
        q=build_model_q(model),
        blocks=map_blocks(model),
        frozen=frozen,
        gaussian=gaussian,
        categorical=LIKELIHOODS.build("categorical"),
        fisher=lambda v: fisher_vp(model, gaussian, x, v, damping=1.0),
    )


def fit(e, **overrides):
    arguments = dict(
        model=e.model,
        likelihood="gaussian",
        q=build_model_q(e.model),
        directions=[e.u],
        curvature_batches=[e.x],
        steps=1,
    )
    return fit_q(**{**arguments, **overrides})


def probe_evaluator(e, **overrides):
    arguments = dict(model=e.model, likelihood="gaussian", probes=[e.u], curvature_inputs=e.x, damping=1.0)
    return ProbeEvaluator(**{**arguments, **overrides})


def fishleg(e, **overrides):
    arguments = dict(model=e.model, likelihood="gaussian", lr=0.1)
    return FishLeg(**{**arguments, **overrides})


def fishleg_step(e, **step_arguments):
    model = tiny_mlp(2)
    optimizer = FishLeg(model, "gaussian", lr=0.1, aux_every=1)
    e.gaussian.nll(model(e.x), e.y).backward()
    optimizer.step(**step_arguments)


def registry_with_square():
    shapes = Registry("shape")

    @shapes.register("square")
    class Square:
        def __init__(self, side: float = 1.0) -> None:
            self.side = side

    return shapes


def with_(mapping, key, value):
    return {**mapping, key: value}


# (id, call, expected exception, regex naming the argument)
CASES = [
    # QFORMS.build
    (
        "qform-unknown-name",
        lambda e: QFORMS.build("blockdiag", shape=SHAPE),
        UnknownNameError,
        "unknown QForm 'blockdiag'",
    ),
    ("qform-shape-type", lambda e: QFORMS.build("kron", shape="3x4"), ValueError, "shape must be a pair"),
    ("qform-shape-zero", lambda e: QFORMS.build("kron", shape=(0, 4)), ValueError, "shape must be a pair"),
    ("qform-shape-missing", lambda e: QFORMS.build("kron"), TypeError, "QForm 'kron': missing .* 'shape'"),
    ("qform-init_scale-zero", lambda e: QFORMS.build("kron", shape=SHAPE, init_scale=0.0), ValueError, "init_scale"),
    (
        "qform-init_scale-type",
        lambda e: QFORMS.build("diagonal", shape=SHAPE, init_scale="1"),
        ValueError,
        "init_scale",
    ),
    (
        "qform-unknown-option",
        lambda e: QFORMS.build("kron", shape=SHAPE, K=2),
        TypeError,
        "QForm 'kron': .*argument 'K'",
    ),
    ("qform-K", lambda e: QFORMS.build("kron_sum", shape=SHAPE, K=0), ValueError, "K >= 1"),
    # LIKELIHOODS.build
    ("likelihood-unknown-name", lambda e: LIKELIHOODS.build("poison"), UnknownNameError, "unknown likelihood 'poison'"),
    ("likelihood-sigma-negative", lambda e: LIKELIHOODS.build("gaussian", sigma=-1), ValueError, "sigma"),
    ("likelihood-sigma-type", lambda e: LIKELIHOODS.build("gaussian", sigma="1"), ValueError, "sigma"),
    (
        "likelihood-unknown-option",
        lambda e: LIKELIHOODS.build("bernoulli", sigma=1.0),
        TypeError,
        "likelihood 'bernoulli': .*argument 'sigma'",
    ),
    # Likelihood.nll / sample / hessian_vp
    ("nll-outputs-type", lambda e: e.gaussian.nll([1.0], e.y), TypeError, "outputs must be a floating-point tensor"),
    ("nll-outputs-dtype", lambda e: e.gaussian.nll(e.y.long(), e.y), TypeError, "outputs must be a floating-point"),
    ("nll-outputs-empty", lambda e: e.gaussian.nll(e.y[:0], e.y[:0]), ValueError, "outputs must hold at least one"),
    ("nll-outputs-dims", lambda e: e.categorical.nll(e.y[:, 0], e.y[:, 0]), ValueError, "needs outputs of shape"),
    ("nll-targets-type", lambda e: e.gaussian.nll(e.y, "y"), TypeError, "targets must be a tensor"),
    ("nll-targets-shape", lambda e: e.gaussian.nll(e.y, e.y[:-1]), ValueError, "targets of shape"),
    (
        "nll-targets-range",
        lambda e: LIKELIHOODS.build("bernoulli").nll(e.y, e.y + 2),
        ValueError,
        r"targets must be real values in \[0, 1\]",
    ),
    ("nll-targets-dtype", lambda e: e.categorical.nll(e.y, e.y[:, 0]), TypeError, "targets must be integer class"),
    ("sample-outputs-type", lambda e: e.gaussian.sample("f"), TypeError, "outputs must be a floating-point tensor"),
    (
        "sample-generator-type",
        lambda e: e.gaussian.sample(e.y, generator=0),
        TypeError,
        "generator must be a torch.Generator",
    ),
    ("hessian_vp-vector-shape", lambda e: e.gaussian.hessian_vp(e.y, e.y[:-1]), ValueError, "vector must have"),
    ("hessian_vp-vector-type", lambda e: e.gaussian.hessian_vp(e.y, [1.0]), ValueError, "vector must have"),
    # fisher_vp
    (
        "fisher_vp-model",
        lambda e: fisher_vp("not a module", e.gaussian, e.x, e.u),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "model must be a torch.nn.Module",
    ),
    ("fisher_vp-likelihood", lambda e: fisher_vp(e.model, 3, e.x, e.u), TypeError, "likelihood must be a Likelihood"),  # type: ignore[arg-type]  # deliberately invalid
    (
        "fisher_vp-inputs",
        lambda e: fisher_vp(e.model, e.gaussian, "x", e.u),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "inputs must be a tensor or a ModelCall",
    ),
    (
        "fisher_vp-vector-type",
        lambda e: fisher_vp(e.model, e.gaussian, e.x, list(e.u.values())),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "vector must be a dict",
    ),
    (
        "fisher_vp-vector-shape",
        lambda e: fisher_vp(e.model, e.gaussian, e.x, with_(e.u, "0.weight", torch.ones(2))),
        ValueError,
        r"vector\['0.weight'\] must have the shape",
    ),
    (
        "fisher_vp-vector-keys",
        lambda e: fisher_vp(e.model, e.gaussian, e.x, with_(e.u, "extra", torch.ones(2))),
        ValueError,
        r"vector has entries \['extra'\]",
    ),
    (
        "fisher_vp-method",
        lambda e: fisher_vp(e.model, e.gaussian, e.x, e.u, method="newton"),
        UnknownNameError,
        "unknown Fisher method 'newton'",
    ),
    (
        "fisher_vp-damping",
        lambda e: fisher_vp(e.model, e.gaussian, e.x, e.u, damping=-1.0),
        ValueError,
        "damping must be a finite number >= 0",
    ),
    (
        "fisher_vp-generator",
        lambda e: fisher_vp(e.model, e.gaussian, e.x, e.u, "sampled", generator=1),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "generator must be a torch.Generator",
    ),
    (
        "fisher_vp-frozen-model",
        lambda e: fisher_vp(e.frozen, e.gaussian, e.x, {}),
        ValueError,
        "model has no trainable parameters",
    ),
    # build_model_q, map_blocks, choose_forms, joint_block
    ("build_model_q-model", lambda e: build_model_q("not a module"), TypeError, "model must be a torch.nn.Module"),  # type: ignore[arg-type]  # deliberately invalid
    ("build_model_q-init_scale", lambda e: build_model_q(e.model, init_scale=0.0), ValueError, "init_scale"),
    ("build_model_q-init_scale-negative", lambda e: build_model_q(e.model, init_scale=-1.0), ValueError, "init_scale"),
    ("build_model_q-forms-type", lambda e: build_model_q(e.model, forms="kron"), TypeError, "forms must be a mapping"),  # type: ignore[arg-type]  # deliberately invalid
    (
        "build_model_q-forms-value",
        lambda e: build_model_q(e.model, forms={"Linear": 3}),  # type: ignore[dict-item]  # deliberately invalid
        ValueError,
        "form choice 'Linear'",
    ),
    (
        "build_model_q-forms-no-form",
        lambda e: build_model_q(e.model, forms={"Linear": {"K": 2}}),
        ValueError,
        "form choice 'Linear'",
    ),
    (
        "build_model_q-forms-key",
        lambda e: build_model_q(e.model, forms={nn.Linear: "kron"}),  # type: ignore[dict-item]  # deliberately invalid
        TypeError,
        "forms: key .* must be a string",
    ),
    (
        "build_model_q-forms-unknown",
        lambda e: build_model_q(e.model, forms={"default": "blockdiag"}),
        UnknownNameError,
        "unknown QForm 'blockdiag'",
    ),
    (
        "build_model_q-forms-option",
        lambda e: build_model_q(e.model, forms={"default": {"form": "kron", "K": 2}}),
        TypeError,
        "QForm 'kron': .*argument 'K'",
    ),
    ("build_model_q-strict", lambda e: build_model_q(e.model, strict="yes"), TypeError, "strict must be True or False"),  # type: ignore[arg-type]  # deliberately invalid
    ("build_model_q-frozen-model", lambda e: build_model_q(e.frozen), ValueError, "no trainable parameters"),
    ("map_blocks-model", lambda e: map_blocks(None), TypeError, "model must be a torch.nn.Module"),  # type: ignore[arg-type]  # deliberately invalid
    ("choose_forms-blocks", lambda e: choose_forms(["0"], None), TypeError, "blocks must be a sequence of Block"),  # type: ignore[list-item]  # deliberately invalid
    (
        "choose_forms-forms",
        lambda e: choose_forms(e.blocks, [("default", "kron")]),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "forms must be a mapping",
    ),
    ("joint_block-model", lambda e: joint_block("model"), TypeError, "model must be a torch.nn.Module"),  # type: ignore[arg-type]  # deliberately invalid
    (
        "joint_block-unknown-name",
        lambda e: joint_block(e.model, ["0.weight", "nope"]),
        ValueError,
        "nope are not trainable parameters",
    ),
    (
        "joint_block-names-string",
        lambda e: joint_block(e.model, "0.weight"),
        TypeError,
        "param_names must be a sequence",
    ),
    ("joint_block-names-empty", lambda e: joint_block(e.model, []), ValueError, "param_names must name at least one"),
    (
        "joint_block-names-repeated",
        lambda e: joint_block(e.model, ["0.bias", "0.bias"]),
        ValueError,
        "param_names must name .* each once",
    ),
    # ModelQ.__call__
    ("ModelQ-vector-type", lambda e: e.q(torch.ones(47)), TypeError, "vector must be a dict"),
    ("ModelQ-vector-missing", lambda e: e.q({"0.weight": e.u["0.weight"]}), KeyError, "vector .* missing: 0.bias"),
    (
        "ModelQ-vector-shape",
        lambda e: e.q(with_(e.u, "0.bias", torch.ones(3))),
        ValueError,
        r"vector\['0.bias'\] must have the shape \(5,\)",
    ),
    # auxiliary_loss
    ("auxiliary_loss-q", lambda e: auxiliary_loss("q", e.u, e.fisher), TypeError, "q must be a ModelQ"),  # type: ignore[arg-type]  # deliberately invalid
    ("auxiliary_loss-u", lambda e: auxiliary_loss(e.q, list(e.u.values()), e.fisher), TypeError, "u must be a dict"),  # type: ignore[arg-type]  # deliberately invalid
    (
        "auxiliary_loss-damped_fisher",
        lambda e: auxiliary_loss(e.q, e.u, 1.0),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "damped_fisher must be callable",
    ),
    (
        "auxiliary_loss-damped_fisher-result",
        lambda e: auxiliary_loss(e.q, e.u, lambda v: {}),
        ValueError,
        "damped_fisher returned no entry",
    ),
    # fit_q
    ("fit_q-model", lambda e: fit(e, model="model"), TypeError, "model must be a torch.nn.Module"),
    ("fit_q-likelihood", lambda e: fit(e, likelihood=3), TypeError, "likelihood must be a Likelihood"),
    ("fit_q-q", lambda e: fit(e, q=e.model), TypeError, "q must be a ModelQ"),
    ("fit_q-directions", lambda e: fit(e, directions=3), TypeError, "directions must be an iterable"),
    (
        "fit_q-curvature_batches",
        lambda e: fit(e, curvature_batches=None),
        TypeError,
        "curvature_batches must be an iterable",
    ),
    ("fit_q-steps-negative", lambda e: fit(e, steps=-1), ValueError, "steps must be an integer >= 0"),
    ("fit_q-steps-type", lambda e: fit(e, steps=2.5), ValueError, "steps must be an integer >= 0"),
    ("fit_q-lr-zero", lambda e: fit(e, lr=0.0), ValueError, "lr must be a finite number > 0"),
    ("fit_q-lr-negative", lambda e: fit(e, lr=-1e-3), ValueError, "lr must be a finite number > 0"),
    ("fit_q-betas", lambda e: fit(e, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be a finite number >= 0 and < 1"),
    ("fit_q-betas-type", lambda e: fit(e, betas=0.9), ValueError, "betas must be a pair"),
    ("fit_q-damping", lambda e: fit(e, damping=-1.0), ValueError, "damping must be a finite number >= 0"),
    ("fit_q-method", lambda e: fit(e, method="newton"), UnknownNameError, "unknown Fisher method 'newton'"),
    ("fit_q-schedule", lambda e: fit(e, schedule="cosine"), TypeError, "schedule must be callable"),
    ("fit_q-stop", lambda e: fit(e, stop=True), TypeError, "stop must be callable"),
    ("fit_q-generator", lambda e: fit(e, generator=0), TypeError, "generator must be a torch.Generator"),
    # normalized_gradients (argument errors at the call, batch errors at the first batch)
    (
        "normalized_gradients-model",
        lambda e: normalized_gradients("model", "gaussian", []),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "model must be a torch.nn.Module",
    ),
    (
        "normalized_gradients-likelihood",
        lambda e: normalized_gradients(e.model, None, []),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "likelihood must be a Likelihood",
    ),
    (
        "normalized_gradients-batches",
        lambda e: normalized_gradients(e.model, "gaussian", 3),  # type: ignore[arg-type]  # deliberately invalid
        TypeError,
        "batches must be an iterable",
    ),
    (
        "normalized_gradients-batch",
        lambda e: next(normalized_gradients(e.model, "gaussian", [e.x])),
        TypeError,
        r"batches must yield \(inputs, targets\) pairs",
    ),
    (
        "normalized_gradients-factors_for",
        lambda e: normalized_gradients(e.model, "gaussian", [], factors_for=e.model),
        TypeError,
        "factors_for must be a ModelQ",
    ),
    # ProbeEvaluator
    ("ProbeEvaluator-model", lambda e: probe_evaluator(e, model="model"), TypeError, "model must be a torch.nn.Module"),
    (
        "ProbeEvaluator-likelihood",
        lambda e: probe_evaluator(e, likelihood=3),
        TypeError,
        "likelihood must be a Likelihood",
    ),
    (
        "ProbeEvaluator-probes-empty",
        lambda e: probe_evaluator(e, probes=[]),
        ValueError,
        "probes: ProbeEvaluator needs at least one",
    ),
    ("ProbeEvaluator-probes-type", lambda e: probe_evaluator(e, probes=e.u), TypeError, "probes must be a list"),
    ("ProbeEvaluator-probe-type", lambda e: probe_evaluator(e, probes=[e.x]), TypeError, r"probes\[0\] must be a dict"),
    (
        "ProbeEvaluator-probe-keys",
        lambda e: probe_evaluator(e, probes=[e.u, {"0.weight": e.u["0.weight"]}]),
        ValueError,
        r"probes\[1\] has no entry for the trainable parameters \['0.bias'",
    ),
    (
        "ProbeEvaluator-probe-shape",
        lambda e: probe_evaluator(e, probes=[with_(e.u, "2.weight", torch.ones(5, 2))]),
        ValueError,
        r"probes\[0\]\['2.weight'\] must have the shape \(2, 5\)",
    ),
    (
        "ProbeEvaluator-curvature_inputs-type",
        lambda e: probe_evaluator(e, curvature_inputs=[e.x]),
        TypeError,
        "curvature_inputs must be a torch.Tensor",
    ),
    (
        "ProbeEvaluator-curvature_inputs-empty",
        lambda e: probe_evaluator(e, curvature_inputs=e.x[:0]),
        ValueError,
        "curvature_inputs must hold at least one example",
    ),
    (
        "ProbeEvaluator-damping",
        lambda e: probe_evaluator(e, damping=-1.0),
        ValueError,
        "damping must be a finite number >= 0",
    ),
    (
        "ProbeEvaluator-damping-type",
        lambda e: probe_evaluator(e, damping=None),
        ValueError,
        "damping must be a finite number >= 0",
    ),
    (
        "ProbeEvaluator-chunk_size-zero",
        lambda e: probe_evaluator(e, chunk_size=0),
        ValueError,
        "chunk_size must be an integer >= 1",
    ),
    (
        "ProbeEvaluator-chunk_size-negative",
        lambda e: probe_evaluator(e, chunk_size=-4),
        ValueError,
        "chunk_size must be an integer >= 1",
    ),
    (
        "ProbeEvaluator-cg_rtol",
        lambda e: probe_evaluator(e, cg_rtol=0.0),
        ValueError,
        "cg_rtol must be a finite number > 0",
    ),
    (
        "ProbeEvaluator-cg_maxiter",
        lambda e: probe_evaluator(e, cg_maxiter=0),
        ValueError,
        "cg_maxiter must be an integer >= 1",
    ),
    (
        "ProbeEvaluator-frozen-model",
        lambda e: probe_evaluator(e, model=e.frozen),
        ValueError,
        "model has no trainable parameters",
    ),
    # FishLeg(...) and FishLeg.step
    ("FishLeg-model", lambda e: fishleg(e, model="not a module"), TypeError, "model must be a torch.nn.Module"),
    ("FishLeg-likelihood", lambda e: fishleg(e, likelihood=3), TypeError, "likelihood must be a Likelihood"),
    (
        "FishLeg-likelihood-name",
        lambda e: fishleg(e, likelihood="poison"),
        UnknownNameError,
        "unknown likelihood 'poison'",
    ),
    ("FishLeg-lr", lambda e: fishleg(e, lr=-1.0), InvalidConfigError, "FishLeg: invalid lr"),
    ("FishLeg-damping", lambda e: fishleg(e, damping=-1.0), InvalidConfigError, "FishLeg: invalid damping"),
    (
        "FishLeg-unknown-hyperparameter",
        lambda e: fishleg(e, dampign=1.0),
        TypeError,
        "unexpected keyword argument .dampign.",
    ),
    ("FishLeg-forms", lambda e: fishleg(e, forms="kron"), TypeError, "forms must be a mapping"),
    ("FishLeg-aux_data", lambda e: fishleg(e, aux_data=3), TypeError, "aux_data must be an iterable"),
    ("FishLeg-frozen-model", lambda e: fishleg(e, model=e.frozen), ValueError, "no trainable parameters"),
    ("FishLeg.step-aux_batch", lambda e: fishleg_step(e, aux_batch="x"), TypeError, "given as aux_batch"),
    pytest.param(
        "FishLeg.step-closure",
        lambda e: fishleg_step(e, closure=3, aux_batch=e.x),
        TypeError,
        "closure must be callable",
        id="FishLeg.step-closure",
    ),
    # Registry
    (
        "Registry.build-unknown",
        lambda e: registry_with_square().build("circle"),
        UnknownNameError,
        "unknown shape 'circle'; known: square",
    ),
    (
        "Registry.build-option",
        lambda e: registry_with_square().build("square", radius=1),
        TypeError,
        "shape 'square': .*argument 'radius'; it takes: side",
    ),
    (
        "Registry.register-duplicate",
        lambda e: registry_with_square().register("square")(object),
        ValueError,
        "shape 'square' is already registered",
    ),
    (
        "Registry.register-unhashable",
        lambda e: registry_with_square().register(["square"]),
        TypeError,
        "shape key must be hashable",
    ),
]


def _param(case):
    return case if hasattr(case, "marks") else pytest.param(*case, id=case[0])


@pytest.mark.parametrize("name,call,error,message", [_param(case) for case in CASES])
def test_bad_arguments_are_rejected_naming_the_argument(e, name, call, error, message):
    with pytest.raises(error, match=message):
        call(e)
