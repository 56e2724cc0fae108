"""What FishLeg reports about itself: diagnostics and their warnings, the summary of Q, the SGD helper."""

from __future__ import annotations

import warnings

import pytest
import torch
from models import tiny_mlp
from torch import nn

import fishleg_core as fl
from fishleg_core.optim.diagnostics import QMonitor
from fishleg_core.optim.nonfinite import NonFiniteGuard

LIKELIHOOD = fl.LIKELIHOODS.build("gaussian")


def train(model, optimizer, steps, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = scale * torch.randn(16, 4, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        LIKELIHOOD.nll(model(x), torch.zeros(16, 2, dtype=torch.float64)).backward()
        optimizer.step()


def aux_batches(scale=1.0):
    generator = torch.Generator().manual_seed(9)
    return [scale * torch.randn(16, 4, generator=generator, dtype=torch.float64) for _ in range(3)]


@pytest.mark.usefixtures("float64")
def test_the_scale_of_q_along_the_gradient_is_the_rayleigh_quotient_of_the_dense_q():
    model = tiny_mlp(2)
    optimizer = fl.FishLeg(
        model,
        LIKELIHOOD,
        lr=0.1,
        sgd_lr=0.05,
        aux_lr=0.05,
        aux_every=1,
        damping=0.5,
        forms={"default": "kron"},
        aux_data=aux_batches(),
    )
    train(model, optimizer, 5)
    monitor = QMonitor(optimizer.q, init_scale=0.5, damping=0.5)
    u = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    qu = optimizer.q(u)
    fisher = {name: 0.5 * v for name, v in qu.items()}  # F = 0: F_γ v = γ v
    monitor.record(u, qu, fisher)
    for group in optimizer.q.groups:
        names = group.param_names
        x = torch.cat([u[name].reshape(-1) for name in names])
        expected = x @ group.to_dense().detach() @ x / (x @ x) / 0.5
        assert monitor.scales[group.block.name] == pytest.approx(expected.item(), rel=1e-10)
    assert monitor.fisher_ratio == pytest.approx(0.0, abs=1e-12)


def test_a_healthy_run_gives_no_diagnostic_warning_and_reports_its_state():
    model = tiny_mlp(2)
    optimizer = fl.FishLeg(
        model, LIKELIHOOD, lr=0.1, sgd_lr=0.05, aux_lr=1e-3, aux_every=1, damping=0.1, aux_data=aux_batches()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, optimizer, 30)
    report = optimizer.diagnostics()
    assert report["steps"] == 30 and report["aux_updates"] == 30 and report["warnings"] == []
    assert set(report["q_scale"]) == {"0", "2"} and all(0.1 < s < 10 for s in report["q_scale"].values())
    assert report["aux_loss_floor"] == pytest.approx(-5.0) and report["aux_loss_floor"] < report["last_aux_loss"]
    assert report["fisher_to_damping"] > 1e-2 and report["skipped"] == {}


def test_a_vanishing_fisher_warns_that_training_has_likely_stalled():
    """Saturated outputs: a Bernoulli model whose logits are huge has F ≈ 0, so A falls to −1/(2γ)."""
    model = nn.Sequential(nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].bias.fill_(40.0)
    optimizer = fl.FishLeg(model, "bernoulli", lr=0.1, aux_lr=1e-3, aux_every=1, aux_data=aux_batches())
    likelihood = fl.LIKELIHOODS.build("bernoulli")
    with pytest.warns(RuntimeWarning, match="the Fisher is .* the damping along Q·g.*outputs saturated"):
        for _ in range(12):
            x = torch.randn(16, 4, dtype=torch.float64)
            optimizer.zero_grad()
            likelihood.nll(model(x), torch.zeros(16, 2, dtype=torch.float64)).backward()
            optimizer.step()
    assert optimizer.diagnostics()["warnings"] == ["vanishing Fisher"]


@pytest.mark.parametrize("softmax", [True, False], ids=["softmax-outputs", "logits"])
def test_a_softmax_before_the_categorical_likelihood_warns_and_logits_do_not(softmax):
    """10 classes: with probabilities taken for logits the training loss stalls near log 10 (2.29 after 30
    steps, against 1.25 on logits) and F is about 10⁻³γ along Q·g (0.1γ on logits)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=generator, dtype=torch.float64)
    y = (x @ torch.randn(4, 10, generator=generator, dtype=torch.float64)).argmax(1)
    model = nn.Sequential(tiny_mlp(10), *([nn.Softmax(dim=1)] if softmax else []))
    likelihood = fl.LIKELIHOODS.build("categorical")
    optimizer = fl.FishLeg(
        model,
        likelihood,
        lr=0.3,
        aux_lr=1e-2,
        aux_every=1,
        damping=1.0,
        aux_data=[x[i : i + 32] for i in range(128, 256, 32)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(30):
            batch = slice(32 * (step % 4), 32 * (step % 4 + 1))
            optimizer.zero_grad()
            likelihood.nll(model(x[batch]), y[batch]).backward()
            optimizer.step()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if softmax:
        assert any("a softmax before the categorical likelihood" in message for message in messages)
    else:
        assert messages == []


def test_an_exploding_q_warns_and_names_aux_lr():
    """Q = 20/γ·I along u: above the 10/γ that no F_γ⁻¹ ⪯ I/γ reaches."""
    monitor = QMonitor(fl.build_model_q(tiny_mlp(2)), init_scale=0.5, damping=0.1, window=2)
    u = {name: torch.ones_like(p) for name, p in tiny_mlp(2).named_parameters()}
    large = {name: 200.0 * t for name, t in u.items()}
    with pytest.warns(
        RuntimeWarning,
        match=r"Q of block '0' grew to 400× its start along the gradients, above "
        r"10/γ where no F_γ⁻¹ reaches: lower aux_lr",
    ):
        monitor.record(u, large, large)
        assert monitor.warned == {"explosion"}  # at the first update: no window of history needed
    assert monitor.state()["warnings"] == ["explosion"]


def test_a_collapsing_q_warns():
    monitor = QMonitor(fl.build_model_q(tiny_mlp(2)), init_scale=1.0, damping=1.0, window=2)
    u = {name: torch.ones_like(p) for name, p in tiny_mlp(2).named_parameters()}
    tiny = {name: 1e-5 * t for name, t in u.items()}
    with pytest.warns(RuntimeWarning, match="Q of block '0' shrank to 1e-05× its start"):
        for _ in range(2):
            monitor.record(u, tiny, u)


def test_the_non_finite_guard_shows_its_policy_and_counts():
    guard = NonFiniteGuard("skip")
    with pytest.warns(RuntimeWarning):
        guard.check("gradient", {"w": torch.tensor([float("nan")])}, "skipped")
    assert repr(guard) == "NonFiniteGuard(policy='skip', skipped={'gradient': 1})"


def test_the_summary_names_forms_as_registered_with_options_totals_and_flags_oversized_blocks():
    model = nn.Sequential(nn.Linear(784, 10), nn.Tanh(), nn.Linear(10, 10), nn.LayerNorm(10))
    summary = fl.build_model_q(model, {"0": "kron", "Linear": {"form": "kron_sum", "K": 2}}).summary()
    lines = summary.splitlines()
    assert lines[1].split() == ["0", "Linear", "(10,", "785)", "kron", "7,850", "308,560", "1.2", "MB", "39.31", "!"]
    assert lines[2].split() == ["2", "Linear", "(10,", "11)", "kron_sum", "K=2", "110", "242", "968", "B", "2.20"]
    assert lines[4].split() == ["total", "7,980", "308,822", "1.2", "MB", "38.70"]
    assert lines[5].startswith("! more than 10 auxiliary parameters per layer parameter (0)")
    assert lines[6].startswith("! Q holds 38.70× the model's parameters (above 2×), 1.2 MB")


@pytest.mark.usefixtures("float64")
def test_sgd_lr_from_torch_makes_fishleg_without_aux_updates_torch_sgd():
    model, reference = tiny_mlp(2), tiny_mlp(2)
    optimizer = fl.FishLeg(model, LIKELIHOOD, lr=0.3, sgd_lr=fl.sgd_lr_from_torch(0.01, 0.9), momentum=0.9, aux_every=0)
    torch_sgd = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)
        for net, opt in [(model, optimizer), (reference, torch_sgd)]:
            opt.zero_grad()
            LIKELIHOOD.nll(net(x), y).backward()
            opt.step()
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lr,momentum,match", [(0.0, 0.9, "lr must be"), (0.1, 1.0, "momentum must be")])
def test_sgd_lr_from_torch_names_a_bad_argument(lr, momentum, match):
    with pytest.raises(ValueError, match=match):
        fl.sgd_lr_from_torch(lr, momentum)
