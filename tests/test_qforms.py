"""The QForm suite: every form of the package runs through the public contract (``fishleg_core.testing``,
one test per check), plus tests of fitting forms to known Fisher matrices.

A form of the package joins the suite by being registered (QFORM_CASES reads the registry).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fishleg_core import QFORMS, QForm, UnknownNameError
from fishleg_core.testing.qforms import QFORM_CHECKS, SHAPE, build, check_qform


def package_forms() -> set[str]:
    """The registered forms defined in fishleg_core (forms registered from outside are not the suite's)."""
    return {name for name in QFORMS.names() if QFORMS.get(name).__module__.startswith("fishleg_core.")}


# Every form of the package with its default options, read from the registry (a new form joins the suite by
# being registered), plus the option variants worth a case of their own.
OPTION_VARIANTS = [
    ("kron_sum", {"K": 3}, "kron_sum-K3"),
    ("kron_sum", {"K": 3, "start_share": 0.5}, "kron_sum-K3-share"),
    ("diag_low_rank", {"rank": 2}, "diag_low_rank-rank2"),
]
QFORM_CASES = [pytest.param(name, {}, id=name) for name in sorted(package_forms())] + [
    pytest.param(name, options, id=case_id) for name, options, case_id in OPTION_VARIANTS
]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("check", QFORM_CHECKS.values(), ids=QFORM_CHECKS.keys())
@pytest.mark.parametrize("name,options", QFORM_CASES)
def test_qform_contract(name, options, check):
    check(name, options)


class ScaledDiagonalQ(QForm):
    """Q G = d ⊙ G with d = exp(raw) > 0 (an outside form, as a user would write it)."""

    def __init__(
        self,
        shape: tuple[int, int],
        init_scale: float = 1.0,
        skew: float = 0.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(shape, init_scale, device=device, dtype=dtype)
        self.raw = nn.Parameter(torch.full(self.shape, self.init_scale, device=device, dtype=dtype).log())
        self.skew = skew  # > 0: an off-diagonal term that breaks symmetry (a broken form)

    def multiply(self, G: Tensor) -> Tensor:
        shifted = torch.roll(G, 1, dims=-1)
        return self.raw.exp() * G + self.skew * shifted

    def to_dense(self) -> Tensor:
        n = self.rows * self.cols
        basis = torch.eye(n, dtype=self.raw.dtype, device=self.raw.device).reshape(n, *self.shape)
        return self.multiply(basis).reshape(n, n).T


@pytest.fixture
def outside_form():
    QFORMS.register("scaled_diagonal")(ScaledDiagonalQ)
    yield "scaled_diagonal"
    QFORMS.unregister("scaled_diagonal")


def test_an_outside_form_passes_the_public_contract_without_breaking_the_suite(outside_form):
    check_qform(outside_form)
    assert outside_form in QFORMS.names() and outside_form not in package_forms()


def test_the_public_contract_names_the_check_a_broken_form_fails(outside_form):
    with pytest.raises(AssertionError, match="'scaled_diagonal' {'skew': 0.1}: check 'symmetric positive definite'"):
        check_qform(outside_form, skew=0.1)


def test_the_public_contract_rejects_an_unknown_name():
    with pytest.raises(UnknownNameError, match="unknown QForm 'nope'"):
        check_qform("nope")


def test_unknown_form_name_lists_known_names():
    with pytest.raises(UnknownNameError, match="unknown QForm 'blockdiag'; known: diagonal, kron, ekfac"):
        QFORMS.build("blockdiag", shape=SHAPE)


@pytest.mark.parametrize("K", [0, -2, 1.5])
def test_kron_sum_needs_at_least_one_term(K):
    with pytest.raises(ValueError, match="kron_sum needs K >= 1"):
        QFORMS.build("kron_sum", shape=SHAPE, K=K)


@pytest.mark.parametrize("options", [{"start_share": 1.0}, {"start_share": -0.1}, {"start_spread": -1.0}])
def test_kron_sum_refuses_a_bad_start_share(options):
    with pytest.raises(ValueError, match="0 <= start_share < 1 and start_spread >= 0"):
        QFORMS.build("kron_sum", shape=SHAPE, **options)


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("K", [2, 3])
def test_kron_sum_shares_a_kronecker_start(K):
    """Without spread the shared start is the Kronecker start itself; with spread term 1 is (1 − s) of it and
    the terms k ≥ 2 differ from it in shape, not only in scale."""
    rows, cols = SHAPE
    left = torch.linalg.cholesky(torch.eye(rows) + 0.3 * torch.ones(rows, rows))
    right = torch.linalg.cholesky(torch.eye(cols) + 0.2 * torch.ones(cols, cols))
    start = torch.kron(left @ left.mT, right @ right.mT)
    copies = QFORMS.build("kron_sum", shape=SHAPE, K=K, start_share=0.4, start_spread=0.0)
    assert copies.set_kronecker(left, right)
    torch.testing.assert_close(copies.to_dense(), start)
    spread = QFORMS.build("kron_sum", shape=SHAPE, K=K, start_share=0.4, start_spread=0.3)
    assert spread.set_kronecker(left, right)
    (M_L, M_R), *later = spread.grams()
    torch.testing.assert_close(torch.kron(M_L, M_R), 0.6 * start)
    for M_L_k, M_R_k in later:
        term = torch.kron(M_L_k, M_R_k)
        assert not torch.allclose(term / term.trace(), start / start.trace(), atol=1e-3)
    default = QFORMS.build("kron_sum", shape=SHAPE, K=K)
    assert default.set_kronecker(left, right)
    torch.testing.assert_close(torch.kron(*default.grams()[0]), start)


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
