"""Fisher-vector products against dense Fishers built independently from their definition."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from models import (
    CNN_INPUT,
    MLP_INPUT,
    batchnorm_dropout_mlp,
    random_inputs,
    tiny_cnn,
    tiny_mlp,
)
from reference import flat, gaussian_fisher, trainable
from torch import nn

from fishleg_core.fisher import FISHER_METHODS, fisher_vp
from fishleg_core.fisher.exact import exact_fisher_quadratic
from fishleg_core.likelihoods import LIKELIHOODS
from fishleg_core.registry import UnknownNameError
from fishleg_core.testing import check_fisher_method

BATCH = 3
SIGMA = 0.7


# ---------------------------------------------------------------- helpers: flat vectors, dense Fishers


def random_vector(model, seed):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=generator, dtype=p.dtype) for name, p in trainable(model).items()}


def dot(a, b):
    return sum((a[name] * b[name]).sum() for name in a)


def flat_fvp(model, likelihood, inputs, vector, **options):
    return flat(fisher_vp(model, likelihood, inputs, vector, **options), trainable(model))


def log_likelihood(name, logits, y):
    """log p(y | logits) of one example, straight from torch.nn.functional."""
    if name == "bernoulli":
        return -F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    return -F.cross_entropy(logits[None], y[None], reduction="sum")


def every_target(name, output_shape):
    """All targets of one example: binary tensors for bernoulli, class-index tensors for categorical."""
    if name == "bernoulli":
        values, shape = [0.0, 1.0], output_shape
    else:
        values, shape = range(output_shape[0]), output_shape[1:]
    dtype = torch.float64 if name == "bernoulli" else torch.long
    for y in itertools.product(values, repeat=math.prod(shape)):
        yield torch.tensor(y, dtype=dtype).reshape(shape)


def enumerated_fisher(model, name, inputs):
    """F = (1/B) Σ_b Σ_y p(y|x_b) ∇ℓ ∇ℓᵀ over every possible target y (the definition), ∇ℓ per example."""
    params = list(trainable(model).values())
    fisher = 0
    for x in inputs:
        total_probability = 0
        for y in every_target(name, model(x[None]).shape[1:]):
            log_p = log_likelihood(name, model(x[None])[0], y)
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(-log_p, params)])
            fisher = fisher + log_p.exp().detach() * torch.outer(g, g)
            total_probability += log_p.exp().item()
        assert total_probability == pytest.approx(1, abs=1e-12)
    return fisher / inputs.shape[0]


# ---------------------------------------------------------------- models and likelihoods under test

MODELS = {
    "mlp": (tiny_mlp, MLP_INPUT, None),
    "cnn": (tiny_cnn, CNN_INPUT, None),
    "mlp-outputs(3,2)": (tiny_mlp, MLP_INPUT, (3, 2)),  # outputs (B, 3, 2): categorical with an extra dim
}
# likelihood name -> (instance, output features of the (B, K) models)
LIKELIHOOD_SETUPS = {
    "gaussian": (LIKELIHOODS.build("gaussian", sigma=SIGMA), 3),
    "bernoulli": (LIKELIHOODS.build("bernoulli"), 3),
    "categorical": (LIKELIHOODS.build("categorical"), 4),
}


def build(model_kind, likelihood_name):
    builder, input_shape, output_shape = MODELS[model_kind]
    likelihood, features = LIKELIHOOD_SETUPS[likelihood_name]
    if output_shape is None:
        model = builder(features)
    else:
        model = nn.Sequential(builder(math.prod(output_shape)), nn.Unflatten(1, output_shape))
    return model, likelihood, random_inputs(input_shape, BATCH)


def dense_fisher(model, likelihood_name, inputs):
    if likelihood_name == "gaussian":
        return gaussian_fisher(model, inputs, SIGMA)
    return enumerated_fisher(model, likelihood_name, inputs)


# ---------------------------------------------------------------- exact


@pytest.mark.parametrize("likelihood_name", list(LIKELIHOOD_SETUPS))
@pytest.mark.parametrize("model_kind", list(MODELS))
def test_exact_matches_dense_fisher(model_kind, likelihood_name):
    model, likelihood, inputs = build(model_kind, likelihood_name)
    fisher = dense_fisher(model, likelihood_name, inputs)
    names = trainable(model)
    for seed in [1, 2]:
        v = random_vector(model, seed)
        expected = fisher @ flat(v, names)
        torch.testing.assert_close(flat_fvp(model, likelihood, inputs, v), expected, rtol=1e-10, atol=1e-10)


def test_damping_adds_damping_times_vector():
    model, likelihood, inputs = build("mlp", "categorical")
    v = random_vector(model, 1)
    damped = fisher_vp(model, likelihood, inputs, v, damping=0.3)
    undamped = fisher_vp(model, likelihood, inputs, v)
    for name in v:
        torch.testing.assert_close(damped[name] - undamped[name], 0.3 * v[name], rtol=1e-12, atol=1e-12)


def test_likelihood_by_name_and_tied_parameters_counted_once():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)).double()
    model[2].weight = model[0].weight
    inputs = random_inputs(MLP_INPUT, BATCH)
    v = random_vector(model, 1)
    assert list(v) == ["0.weight", "0.bias", "2.bias"]
    result = fisher_vp(model, "gaussian", inputs, v)
    assert list(result) == list(v)
    expected = gaussian_fisher(model, inputs, sigma=1.0) @ flat(v, v)
    torch.testing.assert_close(flat(result, v), expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- sampled


@pytest.mark.parametrize("likelihood_name", list(LIKELIHOOD_SETUPS))
@pytest.mark.parametrize("model_kind", ["mlp", "cnn"])
def test_sampled_mean_approaches_exact(model_kind, likelihood_name):
    """N independent sampled estimates s_i of F v: their mean m has E‖m − Fv‖² = tr Σ / N (Σ the per-call
    covariance), so ‖m − Fv‖ / √(tr Σ̂ / N) is of order 1 (a standard error in norm); require < 5, with
    tr Σ̂ the sum of per-coordinate sample variances of the N calls. The per-call spread must be clearly
    non-zero, so that the test compares a genuinely random estimator with the exact product.
    """
    model, likelihood, inputs = build(model_kind, likelihood_name)
    v = random_vector(model, 1)
    exact = flat_fvp(model, likelihood, inputs, v)
    generator = torch.Generator().manual_seed(0)
    N = 200
    calls = torch.stack(
        [flat_fvp(model, likelihood, inputs, v, method="sampled", generator=generator) for _ in range(N)]
    )
    trace_covariance = calls.var(dim=0).sum()
    assert trace_covariance > 1e-6 * exact.square().sum()
    assert (calls.mean(dim=0) - exact).norm() < 5 * (trace_covariance / N).sqrt()


def test_sampled_is_reproducible_with_a_generator_and_independent_without():
    model, likelihood, inputs = build("mlp", "bernoulli")
    v = random_vector(model, 1)

    def sampled(generator):
        return flat_fvp(model, likelihood, inputs, v, method="sampled", generator=generator)

    assert torch.equal(sampled(torch.Generator().manual_seed(5)), sampled(torch.Generator().manual_seed(5)))
    assert not torch.equal(sampled(torch.Generator().manual_seed(5)), sampled(torch.Generator().manual_seed(6)))
    rng_state = torch.get_rng_state()
    assert not torch.equal(sampled(None), sampled(None))
    assert torch.equal(torch.get_rng_state(), rng_state)


# ---------------------------------------------------------------- empirical


def data_targets(likelihood, model, inputs, seed):
    """Targets for the batch drawn from the model with a fixed seed: data targets for the empirical Fisher."""
    return likelihood.sample(model(inputs), torch.Generator().manual_seed(seed))


def dense_empirical_fisher(model, likelihood, inputs, targets):
    """F_emp = (1/B) Σ_b ∇ℓ_b ∇ℓ_bᵀ, with per-example gradients by autograd at the given targets."""
    params = list(trainable(model).values())
    rows = []
    for x, y in zip(inputs, targets):
        grads = torch.autograd.grad(likelihood.nll(model(x[None]), y[None]), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    G = torch.stack(rows)
    return G.T @ G / len(rows)


@pytest.mark.parametrize("likelihood_name", list(LIKELIHOOD_SETUPS))
@pytest.mark.parametrize("model_kind", list(MODELS))
def test_empirical_matches_dense_empirical_fisher(model_kind, likelihood_name):
    model, likelihood, inputs = build(model_kind, likelihood_name)
    targets = data_targets(likelihood, model, inputs, 3)
    expected = dense_empirical_fisher(model, likelihood, inputs, targets)
    v = random_vector(model, 1)
    torch.testing.assert_close(
        flat_fvp(model, likelihood, inputs, v, method="empirical", targets=targets),
        expected @ flat(v, trainable(model)),
        rtol=1e-10,
        atol=1e-10,
    )


def test_empirical_needs_targets():
    model, likelihood, inputs = build("mlp", "bernoulli")
    with pytest.raises(ValueError, match="the empirical Fisher needs the batch's data targets"):
        fisher_vp(model, likelihood, inputs, random_vector(model, 1), method="empirical")


SAMPLING_METHODS = {"sampled"}
"""Methods whose single call is a random estimate (its mean is checked against the exact product)."""

REFERENCE_TESTS = {
    "exact": test_exact_matches_dense_fisher,
    "sampled": test_sampled_mean_approaches_exact,
    "empirical": test_empirical_matches_dense_empirical_fisher,
}
"""Each registered method's test against its dense reference (a new method adds its own here)."""


def test_every_registered_method_has_a_dense_reference_test():
    assert sorted(REFERENCE_TESTS) == sorted(FISHER_METHODS.names())


# ---------------------------------------------------------------- every method: the public contract checker


@pytest.mark.parametrize("likelihood_name", list(LIKELIHOOD_SETUPS))
@pytest.mark.parametrize("method", FISHER_METHODS.names())
def test_every_method_passes_the_contract_checker(method, likelihood_name):
    check_fisher_method(method, likelihood=likelihood_name)


def exact_product(**arguments):
    return FISHER_METHODS.get("exact")(**arguments)


def twice_exact(**arguments):
    return {name: 2 * t for name, t in exact_product(**arguments).items()}


def negated_exact(**arguments):
    return {name: -t for name, t in exact_product(**arguments).items()}


def squared_exact(**arguments):  # F v ‖v‖: symmetric in direction, but not linear
    scale = torch.cat([t.reshape(-1) for t in arguments["vector"].values()]).norm()
    return {name: scale * t for name, t in exact_product(**arguments).items()}


def asymmetric_exact(**arguments):  # F v + A v with A moving v's first parameter into its last
    product = exact_product(**arguments)
    first, *_, last = arguments["vector"]
    moved = arguments["vector"][first].reshape(-1)[: product[last].numel()]
    product[last] = product[last] + moved.reshape(product[last].shape)
    return product


def single_precision_exact(**arguments):
    return {name: t.float() for name, t in exact_product(**arguments).items()}


def unseeded_sampled(**arguments):  # ignores its generator
    return FISHER_METHODS.get("sampled")(**{**arguments, "generator": None})


@pytest.mark.parametrize(
    "method, check",
    [
        (single_precision_exact, "output"),
        (unseeded_sampled, "reproducible"),
        (squared_exact, "linear"),
        (asymmetric_exact, "symmetric"),
        (negated_exact, "positive semi-definite"),
        (twice_exact, "dense Fisher"),
    ],
)
def test_a_broken_method_is_named_by_the_check_it_fails(method, check):
    with pytest.raises(AssertionError, match=f"Fisher method {method.__name__}: check {check!r} failed"):
        check_fisher_method(method, exact=True, semi_definite=method is not unseeded_sampled)
    assert method not in dict(FISHER_METHODS.items()).values()  # the temporary registration is undone


def test_the_checker_checks_the_dense_fisher_of_exact_only_by_default():
    twice = FISHER_METHODS.register("twice_exact_for_checker")(twice_exact)
    try:
        check_fisher_method("twice_exact_for_checker")  # linear, symmetric, semi-definite: passes without exact
        with pytest.raises(AssertionError, match="check 'dense Fisher' failed"):
            check_fisher_method(twice, exact=True)
    finally:
        FISHER_METHODS.unregister("twice_exact_for_checker")


# ---------------------------------------------------------------- every method: the model is left untouched


def method_options(method, likelihood, model, inputs):
    """Keyword arguments that every method accepts here: data targets for the empirical Fisher."""
    return {"targets": data_targets(likelihood, model, inputs, 4)} if method == "empirical" else {}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("method", FISHER_METHODS.names())
def test_parameters_buffers_mode_and_rng_are_unchanged(method, training):
    model = batchnorm_dropout_mlp(3).train(training)
    inputs = random_inputs(MLP_INPUT, 8)
    likelihood = LIKELIHOODS.build("categorical")
    with torch.random.fork_rng(devices=[]):
        options = method_options(method, likelihood, model, inputs)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    rng_state = torch.get_rng_state()
    result = fisher_vp(model, likelihood, inputs, random_vector(model, 1), method=method, **options)
    assert all(torch.isfinite(t).all() and not t.requires_grad for t in result.values())
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert model.training is training
    after = model.state_dict()
    assert all(torch.equal(after[name], t) for name, t in before.items())


@pytest.mark.parametrize("method", FISHER_METHODS.names())
def test_symmetric_with_dropout_in_train_mode(method):
    """⟨w, F v⟩ = ⟨v, F w⟩ only if the forward and the reverse pass linearise the same dropout masks
    (sampling methods: with the same draw, i.e. generators in the same state). A Fisher is positive
    semi-definite; one draw of the sampled Hessian need not be (only its mean is)."""
    model = batchnorm_dropout_mlp(3).train()
    inputs = random_inputs(MLP_INPUT, 8)
    likelihood = LIKELIHOODS.build("categorical")
    with torch.random.fork_rng(devices=[]):
        assert not torch.equal(model(inputs), model(inputs))  # dropout really is random here
        options = method_options(method, likelihood, model, inputs)
    v, w = random_vector(model, 1), random_vector(model, 2)
    fv = fisher_vp(model, likelihood, inputs, v, method=method, generator=torch.Generator().manual_seed(0), **options)
    fw = fisher_vp(model, likelihood, inputs, w, method=method, generator=torch.Generator().manual_seed(0), **options)
    torch.testing.assert_close(dot(w, fv), dot(v, fw), rtol=1e-12, atol=0)
    assert dot(v, fv) > 0 or method in SAMPLING_METHODS


# ---------------------------------------------------------------- extension and bad input


def test_registered_method_is_used(monkeypatch):
    monkeypatch.setattr(FISHER_METHODS, "_entries", dict(FISHER_METHODS._entries))  # undone after the test

    @FISHER_METHODS.register("twice_exact")
    def twice_exact(model, likelihood, inputs, targets, vector, generator):
        exact = FISHER_METHODS.get("exact")
        return {
            name: 2 * t
            for name, t in exact(
                model=model, likelihood=likelihood, inputs=inputs, targets=targets, vector=vector, generator=generator
            ).items()
        }

    model, likelihood, inputs = build("mlp", "bernoulli")
    v = random_vector(model, 1)
    torch.testing.assert_close(
        flat_fvp(model, likelihood, inputs, v, method="twice_exact"), 2 * flat_fvp(model, likelihood, inputs, v)
    )


def test_bad_vectors_are_rejected_naming_the_parameter():
    model, likelihood, inputs = build("mlp", "bernoulli")
    v = random_vector(model, 1)
    with pytest.raises(ValueError, match=r"vector has no entry for the trainable parameters \['2.bias'\]"):
        fisher_vp(model, likelihood, inputs, {name: t for name, t in v.items() if name != "2.bias"})
    with pytest.raises(ValueError, match=r"vector has entries \['extra'\] that are not trainable parameters"):
        fisher_vp(model, likelihood, inputs, {**v, "extra": torch.zeros(1)})
    misshaped = r"vector\['0.weight'\] must have the shape \(5, 4\) of the parameter; got \(4, 5\)"
    with pytest.raises(ValueError, match=misshaped):
        fisher_vp(model, likelihood, inputs, {**v, "0.weight": v["0.weight"].T})
    with pytest.raises(TypeError, match="vector must be a dict of tensors"):
        fisher_vp(model, likelihood, inputs, list(v.values()))
    model[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"vector has entries \['0.bias'\] that are not trainable parameters"):
        fisher_vp(model, likelihood, inputs, v)


def test_bad_method_likelihood_and_damping_are_rejected():
    model, likelihood, inputs = build("mlp", "bernoulli")
    v = random_vector(model, 1)
    with pytest.raises(UnknownNameError, match="unknown Fisher method 'newton'; known: exact, sampled, empirical"):
        fisher_vp(model, likelihood, inputs, v, method="newton")
    with pytest.raises(UnknownNameError, match="unknown likelihood 'poison'; known: .*bernoulli"):
        fisher_vp(model, "poison", inputs, v)
    for damping in [-0.1, math.nan, "1"]:
        with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
            fisher_vp(model, likelihood, inputs, v, damping=damping)


@pytest.mark.parametrize("method", FISHER_METHODS.names())
def test_likelihood_that_does_not_fit_the_outputs_is_rejected(method):
    model = nn.Sequential(tiny_mlp(1), nn.Flatten(0))  # outputs of shape (B,)
    inputs = random_inputs(MLP_INPUT, BATCH)
    targets = torch.zeros(BATCH, dtype=torch.long)
    needs_2d = r"needs outputs of shape \(B, C, \*extra\) \(at least 2 dims\); got shape \(3,\)"
    with pytest.raises(ValueError, match=needs_2d):
        fisher_vp(model, "categorical", inputs, random_vector(model, 1), method=method, targets=targets)


# ---------------------------------------------------------------- quadratic form vᵀFv (forward passes alone)


@pytest.mark.parametrize("likelihood_name", list(LIKELIHOOD_SETUPS))
@pytest.mark.parametrize("model_kind", list(MODELS))
def test_exact_quadratic_matches_the_dense_fisher(model_kind, likelihood_name):
    model, likelihood, inputs = build(model_kind, likelihood_name)
    fisher = dense_fisher(model, likelihood_name, inputs)
    for seed in [1, 2]:
        v = random_vector(model, seed)
        x = flat(v, trainable(model))
        torch.testing.assert_close(
            exact_fisher_quadratic(model, likelihood, inputs, v), x @ fisher @ x, rtol=1e-10, atol=1e-12
        )


class _SelfAttention(nn.Module):
    """nn.MultiheadAttention over 3 tokens of width 4, mean-pooled to 2 outputs (its fused kernel has no
    forward-mode rule: the quadratic form takes the math kernel, as the product does)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(len(x), 3, 4)
        return self.head(self.attention(h, h, h, need_weights=False)[0].mean(1))


@pytest.mark.filterwarnings("ignore:exact Fisher-vector product")
def test_exact_quadratic_on_attention_and_with_likelihood_parameters_is_v_dot_fv():
    torch.manual_seed(0)
    attention = _SelfAttention().double()
    inputs = torch.randn(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    categorical = LIKELIHOODS.build("categorical")
    v = random_vector(attention, 3)
    expected = dot(v, fisher_vp(attention, categorical, inputs, v))
    torch.testing.assert_close(
        exact_fisher_quadratic(attention, categorical, inputs, v), expected, rtol=1e-10, atol=0.0
    )

    model = tiny_mlp(3)
    learned = LIKELIHOODS.build("gaussian_learned_sigma", sigma=0.3, dtype=torch.float64)
    w = {**random_vector(model, 4), "likelihood.sigma": torch.tensor(0.7, dtype=torch.float64)}
    inputs = random_inputs(MLP_INPUT, BATCH)
    expected = dot(w, fisher_vp(model, learned, inputs, w))
    torch.testing.assert_close(exact_fisher_quadratic(model, learned, inputs, w), expected, rtol=1e-10, atol=0.0)
