"""The QForm contract: a positive-definite model of the inverse Fisher on one (rows, cols) block."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fishleg_core._validation import check_number

if TYPE_CHECKING:
    from fishleg_core.qforms.stacked import StackedForm


class QForm(nn.Module, ABC):
    """Q(λ) acting on a parameter block viewed as a matrix G of shape ``(rows, cols)``.

    Subclasses hold the auxiliary parameters λ, are positive definite by construction, start at
    ``init_scale · I`` and implement two methods:

    - ``multiply(G)``: Q·G for G of shape ``(..., rows, cols)``, differentiable in λ;
    - ``to_dense()``: the ``(rows·cols, rows·cols)`` matrix in row-major vec order, so that
      ``q(G).reshape(-1) == q.to_dense() @ G.reshape(-1)``.

    Like ``torch.nn`` modules, a form takes ``device=`` and ``dtype=`` factory arguments for its λ.

    A form whose start needs small random terms (factors started at zero would never move) declares how
    far from ``init_scale · I`` it may start, as a fraction of init_scale in spectral norm.
    """

    init_deviation: float = 0.0

    kronecker_scales: tuple[str, ...] = ()
    """The submodules that scale the form's Kronecker part and that ``set_kronecker`` resets (``ekfac``'s A
    and B²): a refresh of Q from running KFAC factors may keep them (``KFACRefresh``, ``scales="keep"``)."""

    def __init__(
        self,
        shape: tuple[int, int],
        init_scale: float = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.shape = _validate_shape(shape)
        self.init_scale = check_number("init_scale", init_scale, 0.0)

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    def forward(self, G: Tensor) -> Tensor:
        """Q·G for a block ``G`` of shape ``(..., rows, cols)``."""
        if not isinstance(G, Tensor) or G.dim() < 2 or tuple(G.shape[-2:]) != self.shape:
            got = tuple(G.shape) if isinstance(G, Tensor) else type(G).__name__
            raise ValueError(
                f"{type(self).__name__} acts on blocks of shape (..., {self.rows}, {self.cols}); got {got}"
            )
        return self.multiply(G)

    def multiply_low_rank(self, left: Tensor, right: Tensor) -> Tensor | None:
        """Q·(left @ rightᵀ) for ``left`` (rows, r) and ``right`` (cols, r) when the form has a product on
        these factors cheaper than ``multiply`` on the dense block at this rank r; else None (the default),
        and the caller multiplies the dense block."""
        return None

    def set_kronecker(self, left: Tensor, right: Tensor) -> bool:
        """Set Q to (left leftᵀ) ⊗ (right rightᵀ) (row-major vec), or to the closest Q the form holds: the
        damped-KFAC start (``fishleg_core.kfac.start``).

        Args:
            left: (rows × rows) lower-triangular with a positive diagonal (a Cholesky factor).
            right: (cols × cols), likewise.

        Returns:
            True when set; False, with Q unchanged, for a form without such a start (the default) or factors
            of other shapes.
        """
        return False

    def _kronecker_shapes(self, left: Tensor, right: Tensor) -> bool:
        """Whether ``left`` and ``right`` are (rows × rows) and (cols × cols)."""
        return tuple(left.shape) == (self.rows, self.rows) and tuple(right.shape) == (self.cols, self.cols)

    def batch_key(self) -> Hashable | None:
        """Forms with equal keys (not None) can multiply a stack of blocks as one batch (``stack``); None (the
        default): this form multiplies its block alone."""
        return None

    @classmethod
    def stack(cls, forms: Sequence[QForm]) -> StackedForm:
        """The forms (of equal ``batch_key``) as one ``StackedForm`` whose ``multiply`` on a (N, rows, cols)
        stack equals each form's ``multiply`` on its block. Forms with a ``batch_key`` implement it."""
        raise NotImplementedError(f"{cls.__name__} has no batch_key, so it cannot be stacked")

    @abstractmethod
    def multiply(self, G: Tensor) -> Tensor:
        """Q·G, with ``G`` already checked to have shape ``(..., rows, cols)``."""

    @abstractmethod
    def to_dense(self) -> Tensor:
        """The dense ``(rows·cols, rows·cols)`` matrix of Q in row-major vec order."""

    def extra_repr(self) -> str:
        return f"shape={self.shape}, init_scale={self.init_scale:g}"


def _validate_shape(shape: object) -> tuple[int, int]:
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) != 2
        or not all(isinstance(n, int) and n > 0 for n in shape)
    ):
        raise ValueError(f"QForm shape must be a pair of positive integers (rows, cols), got {shape!r}")
    return int(shape[0]), int(shape[1])
