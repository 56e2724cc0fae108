"""Q over groups of parameter blocks: the QGroup contract, its registry and the group forms."""

from fishleg_core.groups.base import BlockVector, LowRankFactors, QGroup, group_key
from fishleg_core.groups.block import BlockQ, block_q
from fishleg_core.groups.choice import GroupChoice, GroupSpec, adjacent_linear_chains, choose_groups
from fishleg_core.groups.low_rank import LowRank
from fishleg_core.groups.registry import QGROUPS
from fishleg_core.groups.tridiag_kron import TridiagKronQ

# after tridiag_kron: registration order is the order of QGROUPS.names()
from fishleg_core.groups.tridiag_ekfac import TridiagEKFACQ  # isort: skip

__all__ = [
    "BlockQ",
    "BlockVector",
    "GroupChoice",
    "GroupSpec",
    "LowRank",
    "LowRankFactors",
    "QGROUPS",
    "QGroup",
    "TridiagEKFACQ",
    "TridiagKronQ",
    "adjacent_linear_chains",
    "block_q",
    "choose_groups",
    "group_key",
]
