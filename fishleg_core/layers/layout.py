"""How the tensors of several parameters form one matrix block G, and back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class BlockLayout:
    """Parameters concatenated into one block along ``axis``.

    ``axis=1`` (side by side): each tensor is reshaped to ``(size, -1)``, e.g. a Linear layer's
    [W | b] of shape (out, in + 1). ``axis=0`` (stacked): each tensor is reshaped to ``(-1, size)``,
    e.g. a norm layer's [weight; bias] of shape (2, C).
    """

    param_shapes: tuple[torch.Size, ...]
    size: int
    axis: int = 1

    def __post_init__(self) -> None:
        if self.axis not in (0, 1):
            raise ValueError(f"BlockLayout axis must be 0 (stack rows) or 1 (side by side), got {self.axis}")
        for shape in self.param_shapes:
            if shape.numel() % self.size:
                raise ValueError(f"a parameter of shape {tuple(shape)} cannot be viewed with {self.size} " +
                                 ("rows" if self.axis == 1 else "columns"))

    @property
    def widths(self) -> list[int]:
        """How many columns (axis 1) or rows (axis 0) each parameter occupies."""
        return [shape.numel() // self.size for shape in self.param_shapes]

    @property
    def shape(self) -> tuple[int, int]:
        extent = sum(self.widths)
        return (self.size, extent) if self.axis == 1 else (extent, self.size)

    def pack(self, tensors: Sequence[Tensor]) -> Tensor:
        """G from the parameter-shaped tensors."""
        view = (self.size, -1) if self.axis == 1 else (-1, self.size)
        pieces = [t.reshape(view) for t in tensors]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=self.axis)

    def unpack(self, G: Tensor) -> list[Tensor]:
        """The parameter-shaped tensors from G (views where possible)."""
        pieces = torch.split(G, self.widths, dim=self.axis)
        return [piece.reshape(shape) for piece, shape in zip(pieces, self.param_shapes)]

    def permutation(self) -> Tensor:
        """Index vector p with vec(G) = x[p], x being the parameters flattened and concatenated."""
        offsets = torch.arange(sum(shape.numel() for shape in self.param_shapes))
        return self.pack(torch.split(offsets, [shape.numel() for shape in self.param_shapes])).reshape(-1)
