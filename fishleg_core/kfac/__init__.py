"""KFAC in FishLeg: the Kronecker factors G = E[δδᵀ], A = E[āāᵀ] of every block whose layer adapter captures
them, and the damped-KFAC start Q₀ of the forms that own one (``kfac_start``, ``kfac_warm_start``)."""

from fishleg_core.kfac.start import (
    KroneckerFactors,
    NoKroneckerStart,
    damped_inverse_cholesky,
    kfac_blocks,
    kfac_start,
    kfac_warm_start,
    kronecker_factors,
    takes_kfac_start,
)

__all__ = [
    "KroneckerFactors",
    "NoKroneckerStart",
    "damped_inverse_cholesky",
    "kfac_blocks",
    "kfac_start",
    "kfac_warm_start",
    "kronecker_factors",
    "takes_kfac_start",
]
