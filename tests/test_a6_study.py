"""The Appendix A.6 study (experiments/): the KFAC reference against dense algebra, the --quick run end to
end, caching, --force, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from models import MLP_INPUT, random_inputs, tiny_mlp
from tiny_study import TINY_STUDY

import fishleg_core as fl
from experiments.a6 import study as a6_study
from experiments.a6.fit_schedule import best_identity_scale, plateau
from experiments.a6.kfac_reference import KFACInverse
from experiments.common.data import load_pixels, split
from fishleg_core.kfac.start import kronecker_factors

DAMPING = 0.3


# --- KFAC reference ---------------------------------------------------------------------------------


def dense_kfac_factors(model, likelihood, inputs, samples, seed):
    """G = mean δδᵀ and A = mean āāᵀ per Linear layer of ``tiny_mlp`` (Linear → Tanh → Linear), from
    per-example gradients at the same sampled targets: the bias gradient of a layer is δ itself."""
    generator = torch.Generator().manual_seed(seed)
    outputs = model(inputs)
    targets = [likelihood.sample(outputs, generator) for _ in range(samples)]
    first = model[0]
    hidden = torch.tanh(first(inputs)).detach()
    ones = torch.ones(len(inputs), 1, dtype=inputs.dtype)
    a_bars = {"0": torch.cat([inputs, ones], 1), "2": torch.cat([hidden, ones], 1)}
    deltas = {"0": [], "2": []}
    for sampled in targets:
        for b in range(len(inputs)):
            loss = likelihood.nll(model(inputs[b : b + 1]), sampled[b : b + 1])
            grads = dict(
                zip(["0.weight", "0.bias", "2.weight", "2.bias"], torch.autograd.grad(loss, model.parameters()))
            )
            for layer in ("0", "2"):
                delta = grads[f"{layer}.bias"]
                # the per-example gradient of [W | b] is δ āᵀ: the structure KFAC builds on
                torch.testing.assert_close(grads[f"{layer}.weight"], torch.outer(delta, a_bars[layer][b, :-1]))
                deltas[layer].append(delta)
    G = {layer: torch.stack(d).T @ torch.stack(d) / len(d) for layer, d in deltas.items()}
    A = {layer: a.T @ a / len(a) for layer, a in a_bars.items()}
    return G, A


@pytest.mark.parametrize("likelihood_name", ["bernoulli", "gaussian"])
def test_kfac_reference_matches_dense_computation(likelihood_name):
    model = tiny_mlp(3)
    likelihood = fl.LIKELIHOODS.build(likelihood_name)
    inputs = random_inputs(MLP_INPUT, 6)
    G, A = dense_kfac_factors(model, likelihood, inputs, samples=3, seed=7)
    factors = kronecker_factors(model, likelihood, inputs, 3, torch.Generator().manual_seed(7))
    for layer in ("0", "2"):
        torch.testing.assert_close(factors[layer].G, G[layer])
        torch.testing.assert_close(factors[layer].A, A[layer])

    q = KFACInverse(model, factors, DAMPING)
    generator = torch.Generator().manual_seed(1)
    u = {name: torch.randn(p.shape, generator=generator, dtype=p.dtype) for name, p in model.named_parameters()}
    qu = q(u)
    for layer in ("0", "2"):
        X = torch.cat([u[f"{layer}.weight"], u[f"{layer}.bias"][:, None]], 1)
        dense = torch.kron(G[layer], A[layer]) + DAMPING * torch.eye(X.numel(), dtype=X.dtype)
        expected = torch.linalg.solve(dense, X.reshape(-1)).reshape(X.shape)
        torch.testing.assert_close(torch.cat([qu[f"{layer}.weight"], qu[f"{layer}.bias"][:, None]], 1), expected)
    assert q.n_params == (3 * 4 // 2 + 5 * 6 // 2) + (5 * 6 // 2 + 6 * 7 // 2)


def test_kfac_reference_rejects_other_layers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).double()
    factors = kronecker_factors(
        model, fl.LIKELIHOODS.build("gaussian"), random_inputs(MLP_INPUT, 2), 1, torch.Generator()
    )
    assert list(factors) == ["0"]  # a LayerNorm has no KFAC factors
    with pytest.raises(ValueError, match="nn.Linear layers only"):
        KFACInverse(model, factors, 1.0)


# --- small pieces ------------------------------------------------------------------------------------


def test_best_identity_scale_minimises_the_mean_auxiliary_loss():
    us = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.6, 0.8])}]
    F = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    products = [{"w": F @ u["w"]} for u in us]
    c = best_identity_scale(us, products)

    def mean_aux(c):
        return sum(0.5 * c**2 * u["w"] @ F @ u["w"] - c * u["w"] @ u["w"] for u in us) / len(us)

    assert mean_aux(c) < min(mean_aux(c * 0.99), mean_aux(c * 1.01))


def test_plateau_verdict():
    steps = list(range(0, 1001, 50))
    flattened = [10.0 - min(step, 500) / 50 for step in steps]
    assert plateau(steps, flattened, 0.01)["on_plateau"]
    still_falling = [10.0 - step / 100 for step in steps]
    verdict = plateau(steps, still_falling, 0.01)
    assert not verdict["on_plateau"] and verdict["relative_last_gain"] == pytest.approx(0.1)


# --- the study end to end ----------------------------------------------------------------------------

TINY = "forms: [diagonal, kron]\n" + TINY_STUDY
"""Settings even smaller than --quick, as a YAML config file, for the runs that test caching."""


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick`` run of every default form, shared by the checks below."""
    out = tmp_path_factory.mktemp("a6")
    assert a6_study.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_run_outputs_are_consistent(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    config = results["config"]
    assert config["forms"] == ["diagonal", "kron", "ekfac", "kron_sum", "tridiag_kron", "tridiag_ekfac"]
    assert config["steps"] > 0
    references = ["identity", "kfac", "kfac_curvlinops", "kfac_curvlinops_rescaled", "ekfac_curvlinops"]
    assert [row["name"] for row in results["references"]] == references
    for row in results["forms"] + results["references"]:
        assert len(row["probe_aux_loss"]) == len(row["probe_optimal_aux_loss"]) == config["n_probes"]
        for A, A_star, e in zip(row["probe_aux_loss"], row["probe_optimal_aux_loss"], row["normalized_error"]):
            assert A_star < 0
            assert A >= A_star
            assert e >= 0 and math.isclose(e, math.sqrt((A - A_star) / -A_star), rel_tol=1e-4)
        assert row["n_params"] > 0 and row["seconds"] >= 0
        split = row["layer_split"]  # (Qu)ᵀF_γ(Qu) = within-layer + between-layer terms
        assert split["total"] > 0 and split["within"] > 0
        assert split["within"] + split["between"] == pytest.approx(split["total"], rel=1e-12)
    for row in results["forms"]:
        assert len(row["aux_loss_curve"]) == config["steps"]
        assert all(math.isfinite(value) for value in row["aux_loss_curve"])
        assert isinstance(row["plateau"]["on_plateau"], bool)
        assert row["init"] == "kfac" and row["kfac_scale"] > 0
        certificate = row["certificate"]
        assert certificate["steps"] == config["certificate_steps"] and isinstance(certificate["certified"], bool)
        gain = certificate["heldout_aux_loss_fit"] - certificate["heldout_aux_loss_continued"]
        assert certificate["heldout_aux_loss_fit"] == row["mean_probe_aux_loss"]
        within = gain <= config["certificate_tolerance"] * abs(row["mean_probe_aux_loss"])
        assert certificate["certified"] == (within and "diverged" not in certificate)
        tenth = config["steps"] // 10
        assert row["final_aux_loss"] == pytest.approx(sum(row["aux_loss_curve"][-tenth:]) / tenth)
    for row in results["references"]:
        assert row["aux_loss_curve"] == [] and row["final_aux_loss"] is None and row["plateau"] is None
    identity = results["references"][0]
    # best multiple of the identity: 0 < e < 1 (it improves on Q = 0 and is not exact)
    assert all(0 < e < 1 for e in identity["normalized_error"])
    summary = (quick_run / "summary.md").read_text()
    assert all(name in summary for name in ["diagonal", "kron", "ekfac", "kron_sum", "identity", "kfac"])
    assert (quick_run / "figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one results file per finished form and reference, named by the key of its settings
    assert sorted(p.name.rpartition("-")[0] for p in (quick_run / "forms").iterdir()) == sorted(config["forms"])
    assert sorted(p.name.rpartition("-")[0] for p in (quick_run / "references").iterdir()) == sorted(references)


def test_rerun_reuses_results_without_refitting(quick_run, monkeypatch):
    before = (quick_run / "results.json").read_text()
    monkeypatch.setattr(a6_study, "pretrain", _fail("pre-trained again"))
    monkeypatch.setattr(fl, "fit_q", _fail("refitted"))
    monkeypatch.setattr(a6_study, "heldout_evaluator", _fail("re-evaluated"))
    assert a6_study.main(["--quick", "--out", str(quick_run), "--no-progress"]) == 0
    assert (quick_run / "results.json").read_text() == before


def test_force_and_changed_settings_refit(tmp_path, monkeypatch):
    calls, pretrainings = [], []
    fit_q, pretrain = fl.fit_q, a6_study.pretrain
    monkeypatch.setattr(fl, "fit_q", lambda *args, **kwargs: calls.append(args[2]) or fit_q(*args, **kwargs))
    monkeypatch.setattr(a6_study, "pretrain", lambda *args: pretrainings.append(1) or pretrain(*args))
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    base = ["--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"]
    assert a6_study.main(base) == 0
    assert a6_study.main(base) == 0
    assert len(calls) == 2  # the second run reused both forms (and their certificates, which fit_q no longer counts)
    assert a6_study.main([*base, "--force"]) == 0
    assert len(calls) == 4
    assert a6_study.main([*base, "--damping", "2"]) == 0  # a changed configuration is not served stale results
    assert len(calls) == 6
    assert len(pretrainings) == 2  # the damping does not change the pre-trained model, which is reused
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["damping"] == 2.0


def _fail(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"the re-run {what}")

    return fail


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--data-dir", "/nonexistent/mnist"], "is not a directory"),
        (["--forms", "diagonal,banana"], "unknown QForm 'banana'"),
        (["--damping", "-1"], "invalid damping"),
        (["--steps", "many"], "invalid int value"),
        (["--aux-optimizer", "sgd"], "unknown auxiliary optimizer 'sgd'"),
    ],
    ids=["missing-data-dir", "unknown-form", "negative-damping", "malformed-option", "unknown-aux-optimizer"],
)
def test_bad_input_is_one_line_and_exit_status_2(arguments, message, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("previous results")
    assert a6_study.main(["--out", str(out), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("a6_study: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (out / "results.json").read_text() == "previous results"
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_data_dir_reads_idx_files(tmp_path):
    pixels = (np.arange(3 * 784) % 256).astype(np.uint8).reshape(3, 784)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 3, 28, 28) + pixels.tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 3) + bytes([1, 2, 3]))
    np.testing.assert_array_equal(load_pixels(str(tmp_path)), pixels)
    data = split(pixels, 2, 1, seed=0)
    assert data.train.shape == (2, 784) and data.heldout.shape == (1, 784)
    assert float(data.train.max()) <= 1.0 and float(data.train.min()) >= 0.0


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x08\x03" + b"\x00" * 4], ids=["empty", "truncated"])
def test_malformed_data_dir(content, tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(content)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    assert a6_study.main(["--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("a6_study: error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bad_config_file(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("steps: 10\nsurprise: 1\n")
    assert a6_study.main(["--out", str(tmp_path / "out"), "--config", str(config)]) == 2
    expected = "a6_study: error: invalid surprise: Extra inputs are not permitted (got 1)"
    assert capsys.readouterr().err.strip() == expected
