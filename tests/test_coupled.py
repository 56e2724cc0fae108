"""The shared CoupledQ test-suite: every registered coupled form runs through every check of
``fishleg_core.testing.coupled``. Adding a coupled form to the suite is one line in COUPLED_CASES."""

from __future__ import annotations

import pytest

from fishleg_core import COUPLED_FORMS
from fishleg_core.testing import coupled as contract
from fishleg_core.testing.coupled import CoupledCase

# One line per coupled form (and per interesting option).
COUPLED_CASES = [
    pytest.param(CoupledCase("block", {"form": "kron"}, n_blocks=1), id="block-kron"),
    pytest.param(CoupledCase("block", {"form": "kron_sum"}, n_blocks=1), id="block-kron_sum"),
    pytest.param(CoupledCase("tridiag_kron", n_blocks=2), id="tridiag_kron-2"),
    pytest.param(CoupledCase("tridiag_kron", n_blocks=3), id="tridiag_kron-3"),
    pytest.param(CoupledCase("tridiag_ekfac", n_blocks=2), id="tridiag_ekfac-2"),
    pytest.param(CoupledCase("tridiag_ekfac", n_blocks=3), id="tridiag_ekfac-3"),
]


def test_every_registered_group_form_is_in_the_suite():
    assert {case.values[0].form for case in COUPLED_CASES} == set(COUPLED_FORMS.names())


@pytest.mark.parametrize("case", COUPLED_CASES)
class TestCoupledQContract:
    @pytest.mark.parametrize("scale", [0.0, 0.3, 1.0])
    def test_product_matches_dense(self, case, scale):
        contract.check_product_matches_dense(case, scale)

    @pytest.mark.parametrize("rank", [1, 3])
    def test_low_rank_product_matches_dense(self, case, rank):
        contract.check_product_matches_dense(case, 0.5, rank=rank)

    # Perturbations of 1.0 (unit noise on every entry of 8-9-wide triangular and coupling factors) make B
    # numerically singular in float64 (σ_min(B)² ≈ 1e-20 relative to ‖Q‖ ≈ 800 for tridiag_kron-3), so
    # eigvalsh can no longer resolve the sign of the smallest eigenvalue: 0.5 is the largest checked.
    @pytest.mark.parametrize("scale", [0.1, 0.3, 0.5])
    def test_symmetric_positive_definite_after_perturbation(self, case, scale):
        contract.check_symmetric_positive_definite(case, scale)

    def test_starts_at_scaled_identity(self, case):
        contract.check_starts_at_scaled_identity(case)

    @pytest.mark.parametrize("rank", [None, 1])
    def test_gradients_match_finite_differences(self, case, rank):
        contract.check_gradients(case, rank)

    def test_state_dict_round_trip(self, case):
        contract.check_state_dict_round_trip(case)

    def test_exact_resume_inside_fishleg(self, case):
        contract.check_exact_resume_in_fishleg(case)
