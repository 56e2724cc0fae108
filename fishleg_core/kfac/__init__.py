"""KFAC in FishLeg: the Kronecker factors G = E[δδᵀ], A = E[āāᵀ] of the Linear blocks, and the damped-KFAC
start Q₀ of the Kronecker forms (``kfac_start``, ``kfac_warm_start``)."""

from fishleg_core.kfac.start import (
    KRONECKER_STARTS,
    KroneckerFactors,
    kfac_start,
    kfac_warm_start,
    kronecker_factors,
    takes_kfac_start,
)

__all__ = [
    "KRONECKER_STARTS",
    "KroneckerFactors",
    "kfac_start",
    "kfac_warm_start",
    "kronecker_factors",
    "takes_kfac_start",
]
