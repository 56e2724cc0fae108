"""Several forms side by side on equal bands of a block's rows (per q/k/v projection, per convolution group)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from fishleg_core.qforms.base import QForm


class RowBandsQ(QForm):
    """Q = Q_1 ⊕ … ⊕ Q_p on G = [G_1; …; G_p], the rows of G cut into p equal bands: Q G = [Q_1 G_1; …; Q_p G_p].

    Positive definite as each Q_i is. Built by ``build_model_q`` for blocks with ``row_parts > 1`` (not
    registered: it composes registered forms).
    """

    def __init__(self, bands: Sequence[QForm]) -> None:
        if not bands or len({band.shape for band in bands}) != 1:
            raise ValueError("RowBandsQ needs at least one band, all of the same shape")
        rows, cols = bands[0].shape
        super().__init__((rows * len(bands), cols), bands[0].init_scale)
        self.bands = nn.ModuleList(bands)
        self.band_rows = rows

    @property
    def forms(self) -> list[QForm]:
        """The bands' forms, top to bottom."""
        return [cast(QForm, band) for band in self.bands]

    def set_kronecker(self, left: Tensor, right: Tensor) -> bool:
        """Band i to (left[i] left[i]ᵀ) ⊗ (right[i] right[i]ᵀ), for ``left`` (bands, band rows, band rows)
        and ``right`` (bands, cols, cols) (one KFAC pair per band); False, Q unchanged, where a band's form
        has no such start (the bands' forms are all of one kind, as ``block_q`` builds them)."""
        if left.dim() != 3 or len(left) != len(self.bands) or right.shape[:1] != left.shape[:1]:
            return False
        forms = self.forms
        if not forms[0].set_kronecker(left[0], right[0]):
            return False
        return all([form.set_kronecker(L, R) for form, L, R in zip(forms[1:], left[1:], right[1:])])

    def multiply(self, G: Tensor) -> Tensor:
        pieces = torch.split(G, self.band_rows, dim=-2)
        return torch.cat([band.multiply(piece) for band, piece in zip(self.forms, pieces)], dim=-2)

    def multiply_low_rank(self, left: Tensor, right: Tensor) -> Tensor | None:
        """Band by band, when every band has a cheaper product on these factors; else None."""
        pieces = torch.split(left, self.band_rows, dim=-2)
        products = [band.multiply_low_rank(piece, right) for band, piece in zip(self.forms, pieces)]
        done = [p for p in products if p is not None]
        return torch.cat(done, dim=-2) if len(done) == len(products) else None

    def to_dense(self) -> Tensor:
        return torch.block_diag(*[band.to_dense() for band in self.forms])

    def extra_repr(self) -> str:
        return f"shape={self.shape}, bands={len(self.bands)}"
