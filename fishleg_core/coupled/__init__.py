"""Q over groups of parameter blocks: the CoupledQ contract, its registry and the coupled forms."""

from fishleg_core.coupled.base import BlockVector, CoupledQ, LowRankFactors, coupled_key
from fishleg_core.coupled.block import BlockQ, block_q
from fishleg_core.coupled.choice import CoupledChoice, CoupledSpec, adjacent_linear_chains, choose_coupled
from fishleg_core.coupled.low_rank import LowRank
from fishleg_core.coupled.registry import COUPLED_FORMS
from fishleg_core.coupled.tridiag_kron import TridiagKronQ

# after tridiag_kron: registration order is the order of COUPLED_FORMS.names()
from fishleg_core.coupled.tridiag_ekfac import TridiagEKFACQ  # isort: skip

__all__ = [
    "BlockQ",
    "BlockVector",
    "CoupledChoice",
    "CoupledSpec",
    "LowRank",
    "LowRankFactors",
    "COUPLED_FORMS",
    "CoupledQ",
    "TridiagEKFACQ",
    "TridiagKronQ",
    "adjacent_linear_chains",
    "block_q",
    "choose_coupled",
    "coupled_key",
]
