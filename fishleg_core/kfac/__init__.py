"""KFAC in FishLeg: the Kronecker factors G = E[δδᵀ], A = E[āāᵀ] of every block whose layer adapter captures
them, the damped-KFAC start Q₀ of the forms that own one (``kfac_start``, ``kfac_warm_start``), and their running
averages, from which FishLeg's ``refresh`` option re-sets Q while it trains (``KFACRefresh``)."""

from fishleg_core.kfac.running import (
    KFACRefresh,
    RefreshOptions,
    RunningKronecker,
    refresh_options,
    safe_damped_inverse,
)
from fishleg_core.kfac.start import (
    KroneckerFactors,
    NoKroneckerStart,
    damped_inverse_cholesky,
    kfac_blocks,
    kfac_not_started,
    kfac_start,
    kfac_warm_start,
    kronecker_factors,
    takes_kfac_start,
)

__all__ = [
    "KFACRefresh",
    "RefreshOptions",
    "RunningKronecker",
    "refresh_options",
    "safe_damped_inverse",
    "KroneckerFactors",
    "NoKroneckerStart",
    "damped_inverse_cholesky",
    "kfac_blocks",
    "kfac_not_started",
    "kfac_start",
    "kfac_warm_start",
    "kronecker_factors",
    "takes_kfac_start",
]
