"""QForms: positive-definite models Q(λ) of the inverse Fisher on one parameter block.

Importing this package registers the built-in forms in ``QFORMS``.
"""

from fishleg_core.qforms.base import QForm
from fishleg_core.qforms.registry import QFORMS
from fishleg_core.qforms.row_bands import RowBandsQ

# Registration order is the order of QFORMS.names().
from fishleg_core.qforms.diagonal import DiagonalQ  # isort: skip
from fishleg_core.qforms.kron import KronQ  # isort: skip
from fishleg_core.qforms.ekfac import EKFACQ  # isort: skip
from fishleg_core.qforms.kron_sum import KronSumQ  # isort: skip
from fishleg_core.qforms.dense import DenseQ  # isort: skip
from fishleg_core.qforms.diag_low_rank import DiagLowRankQ  # isort: skip

__all__ = ["QFORMS", "QForm", "DiagonalQ", "KronQ", "EKFACQ", "KronSumQ", "DenseQ", "DiagLowRankQ", "RowBandsQ"]
