"""The shared QForm test-suite: every registered form runs through every test here.

Adding a form to the suite is one line in QFORM_CASES.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from fishleg_core import QFORMS, UnknownNameError
from fishleg_core.aux_optimizers import AuxiliaryAdam

SHAPE = (3, 4)
INIT_SCALE = 0.7

# (registered name, options): one line per form.
QFORM_CASES = [
    pytest.param("diagonal", {}, id="diagonal"),
    pytest.param("kron", {}, id="kron"),
    pytest.param("ekfac", {}, id="ekfac"),
    pytest.param("kron_sum", {}, id="kron_sum"),
    pytest.param("kron_sum", {"K": 3}, id="kron_sum-K3"),
    pytest.param("dense", {}, id="dense"),
    pytest.param("diag_low_rank", {"rank": 2}, id="diag_low_rank"),
]


def test_every_registered_form_is_in_the_suite():
    assert {case.values[0] for case in QFORM_CASES} == set(QFORMS.names())


def build(name, options, shape=SHAPE, init_scale=INIT_SCALE, seed=0):
    torch.manual_seed(seed)
    return QFORMS.build(name, shape=shape, init_scale=init_scale, **options)


@torch.no_grad()
def perturb(q, scale, seed=1, shift=0.0):
    generator = torch.Generator().manual_seed(seed)
    for p in q.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype) + shift)


def vec(G):
    return G.reshape(-1)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("name,options", QFORM_CASES)
class TestQFormContract:
    @pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
    def test_multiply_matches_dense(self, name, options, scale):
        q = build(name, options)
        perturb(q, scale)
        G = torch.randn(*SHAPE)
        with torch.no_grad():
            Q = q.to_dense()
            torch.testing.assert_close(vec(q(G)), Q @ vec(G), rtol=0, atol=1e-12 * Q.abs().max().item())

    def test_batched_blocks(self, name, options):
        q = build(name, options)
        perturb(q, 0.5)
        Gs = torch.randn(5, 2, *SHAPE)
        expected = torch.stack([torch.stack([q(G) for G in row]) for row in Gs])
        torch.testing.assert_close(q(Gs), expected, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("rank", [1, 2, min(SHAPE)])
    def test_low_rank_product_is_none_or_matches_dense_product(self, name, options, rank):
        q = build(name, options)
        perturb(q, 0.5)
        left, right = torch.randn(SHAPE[0], rank), torch.randn(SHAPE[1], rank)
        product = q.multiply_low_rank(left, right)
        if product is not None:
            torch.testing.assert_close(product, q(left @ right.T), rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize(
        "scale,shift", [(0.1, 0.0), (0.5, 0.0), (1.0, 0.0), (1.0, 10.0)], ids=["small", "medium", "unit", "large"]
    )
    def test_symmetric_positive_definite_after_perturbation(self, name, options, scale, shift):
        for seed in range(10):
            q = build(name, options, seed=seed)
            perturb(q, scale, seed=seed, shift=shift)
            Q = q.to_dense().detach()
            torch.testing.assert_close(Q, Q.T, rtol=0, atol=1e-13 * Q.abs().max().item())
            assert torch.linalg.eigvalsh(Q).min() > 0

    def test_initialised_at_scaled_identity(self, name, options):
        q = build(name, options)
        n = SHAPE[0] * SHAPE[1]
        error = torch.linalg.matrix_norm(q.to_dense() - INIT_SCALE * torch.eye(n), ord=2)
        # forms with symmetry-breaking random terms declare their deviation (kron_sum: 1 %); others are exact
        assert q.init_deviation <= 0.01
        assert error <= max(q.init_deviation * INIT_SCALE, 1e-12)

    def test_gradients_match_finite_differences(self, name, options):
        q = build(name, options)
        perturb(q, 0.3)
        names = [n for n, _ in q.named_parameters()]
        G = torch.randn(*SHAPE)

        def apply(*values):
            return functional_call(q, dict(zip(names, values)), (G,))

        values = tuple(p.detach().clone().requires_grad_() for p in q.parameters())
        assert torch.autograd.gradcheck(apply, values)

    def test_products_outside_autograd_follow_every_auxiliary_adam_step(self, name, options):
        """Cached factors and Gram matrices are rebuilt after each step of the (fused) auxiliary Adam."""
        q = build(name, options)
        optimizer = AuxiliaryAdam(q.parameters(), lr=0.1, betas=(0.9, 0.999))
        G = torch.randn(*SHAPE)
        for _ in range(3):
            with torch.no_grad():
                q(G)  # fills the caches
            optimizer.zero_grad()
            q(G).square().sum().backward()
            optimizer.step()
            with torch.no_grad():
                outside_autograd = q(G)
            torch.testing.assert_close(outside_autograd, q(G).detach(), rtol=1e-12, atol=1e-12)

    def test_wrong_block_shape_is_rejected(self, name, options):
        q = build(name, options)
        with pytest.raises(ValueError, match=r"blocks of shape \(\.\.\., 3, 4\); got \(4, 3\)"):
            q(torch.randn(4, 3))

    @pytest.mark.parametrize("init_scale", [0.0, -1.0, float("nan"), float("inf")])
    def test_non_positive_init_scale_is_rejected(self, name, options, init_scale):
        with pytest.raises(ValueError, match="init_scale must be a finite number > 0"):
            build(name, options, init_scale=init_scale)

    @pytest.mark.parametrize("shape", [(0, 3), (3,), (2.0, 3), "3x4"])
    def test_malformed_shape_is_rejected(self, name, options, shape):
        with pytest.raises(ValueError, match="shape must be a pair of positive integers"):
            build(name, options, shape=shape)


def test_unknown_form_name_lists_known_names():
    with pytest.raises(UnknownNameError, match="unknown QForm 'blockdiag'; known: diagonal, kron, ekfac"):
        QFORMS.build("blockdiag", shape=SHAPE)


@pytest.mark.parametrize("K", [0, -2, 1.5])
def test_kron_sum_needs_at_least_one_term(K):
    with pytest.raises(ValueError, match="kron_sum needs K >= 1"):
        QFORMS.build("kron_sum", shape=SHAPE, K=K)


# ---------------------------------------------------------------------------------------------
# Fitting: minimise A(Q; u) = ½ uᵀ Q F Q u − uᵀ Q u with Adam for a given SPD matrix F.
# Each step uses a random orthonormal basis of directions, so the step's loss is the exact average of
# A over n random unit directions; its minimiser over all symmetric Q is F⁻¹.
# ---------------------------------------------------------------------------------------------


def auxiliary_loss(q, F, U):
    """Mean over the columns u of U of ½ (Qu)ᵀ F (Qu) − uᵀ Q u, with Q applied through the form."""
    V = q(U.T.reshape(-1, *q.shape)).reshape(U.shape[1], -1).T
    return (0.5 * (V * (F @ V)).sum(0) - (U * V).sum(0)).mean()


def fit(q, F, steps=3000, lr=0.02, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = F.shape[0]
    optimizer = torch.optim.Adam(q.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        U = torch.linalg.qr(torch.randn(n, n, generator=generator))[0]
        optimizer.zero_grad()
        auxiliary_loss(q, F, U).backward()
        optimizer.step()
        schedule.step()
    return q


def excess_loss(q, F, U):
    """Mean of A(Q; u) − A*(u) = ½ ‖Qu − F⁻¹u‖²_F over the columns of U (the exact identity)."""
    with torch.no_grad():
        R = q.to_dense() @ U - torch.linalg.solve(F, U)
        return 0.5 * (R * (F @ R)).sum(0).mean().item()


def random_spd(n, generator, condition=30.0):
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return Q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(condition)), n)) @ Q.T


def relative_error(q, F):
    F_inv = torch.linalg.inv(F)
    return (torch.linalg.matrix_norm(q.to_dense().detach() - F_inv) / torch.linalg.matrix_norm(F_inv)).item()


@pytest.mark.usefixtures("float64")
def test_dense_form_converges_to_the_inverse():
    generator = torch.Generator().manual_seed(3)
    F = random_spd(12, generator)
    q = fit(build("dense", {}, init_scale=0.5), F)
    assert relative_error(q, F) < 1e-3


@pytest.mark.usefixtures("float64")
def test_kron_form_converges_to_the_inverse_of_a_kronecker_fisher():
    generator = torch.Generator().manual_seed(4)
    F = torch.kron(random_spd(SHAPE[0], generator, 5.0), random_spd(SHAPE[1], generator, 5.0))
    q = fit(build("kron", {}, init_scale=0.5), F)
    assert relative_error(q, F) < 1e-2


def layer_like_fisher(generator, samples=400, damping=0.1):
    """F = mean over samples of kron(δδᵀ, aaᵀ) + γI, with the output gradients δ depending on the
    (correlated) activations a, so that F is not a Kronecker product."""
    rows, cols = SHAPE
    mixing = torch.randn(cols, cols, generator=generator)
    a = torch.randn(samples, cols, generator=generator) @ mixing
    W = torch.randn(rows, cols, generator=generator)
    delta = torch.tanh(a @ W.T) * torch.randn(samples, rows, generator=generator) + 0.3 * torch.randn(
        samples, rows, generator=generator
    )
    outer = torch.einsum("si,sj,sk,sl->ikjl", delta, delta, a, a) / samples
    return outer.reshape(rows * cols, rows * cols) + damping * torch.eye(rows * cols)


@pytest.mark.usefixtures("float64")
def test_richer_forms_fit_a_layer_fisher_at_least_as_well_as_kron():
    generator = torch.Generator().manual_seed(5)
    F = layer_like_fisher(generator)
    # F is not a Kronecker product: Van Loan's rearrangement R(F)[(i,k),(j,l)] = F[(i,j),(k,l)] has rank 1
    # exactly when F = A ⊗ B, and its singular values past the first give the Frobenius distance from F to
    # the nearest Kronecker product (about 6 % of ‖F‖ here).
    singular = torch.linalg.svdvals(F.reshape(3, 4, 3, 4).permute(0, 2, 1, 3).reshape(9, 16))
    assert singular[1:].norm() > 0.03 * singular.norm()
    held_out = torch.nn.functional.normalize(torch.randn(12, 200, generator=generator), dim=0)
    forms = {name: fit(build(name, {}, init_scale=0.5), F) for name in ["diagonal", "kron", "ekfac", "kron_sum"]}
    excess = {name: excess_loss(q, F, held_out) for name, q in forms.items()}
    assert excess["kron"] < excess["diagonal"]
    assert excess["ekfac"] <= excess["kron"]
    assert excess["kron_sum"] <= excess["kron"]
    # the fitted kron_sum is not a copy of kron: its second term grew far beyond its 0.5 % start
    second_term = torch.kron(forms["kron_sum"].L[1].gram(), forms["kron_sum"].R[1].gram())
    assert torch.linalg.matrix_norm(second_term.detach(), ord=2) > 0.05 * 0.5
