"""How the tensors of several parameters form one matrix block G, and back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor


@dataclass(frozen=True)
class BlockLayout:
    """Parameters concatenated into one block along ``axis``.

    ``axis=1`` (side by side): each tensor is reshaped to ``(size, -1)``, e.g. a Linear layer's
    [W | b] of shape (out, in + 1). ``axis=0`` (stacked): each tensor is reshaped to ``(-1, size)``,
    e.g. a norm layer's [weight; bias] of shape (2, C).

    ``transposed`` (side by side only) gives, per parameter, 0 for the plain reshape, or g ≥ 1 for a
    transposed-convolution weight W of shape (in, out/g, *kernel) in g groups, whose rows are its ``out``
    output channels: row (k·out/g + j) holds W[k·in/g : (k+1)·in/g, j] flattened.
    """

    param_shapes: tuple[torch.Size, ...]
    size: int
    axis: int = 1
    transposed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.axis not in (0, 1):
            raise ValueError(f"BlockLayout axis must be 0 (stack rows) or 1 (side by side), got {self.axis}")
        for shape in self.param_shapes:
            if shape.numel() % self.size:
                raise ValueError(
                    f"a parameter of shape {tuple(shape)} cannot be viewed with {self.size} "
                    + ("rows" if self.axis == 1 else "columns")
                )
        if self.transposed:
            if len(self.transposed) != len(self.param_shapes) or self.axis != 1:
                raise ValueError("BlockLayout transposed needs axis=1 and one entry (0 or groups) per parameter")
            for shape, groups in zip(self.param_shapes, self.transposed):
                if groups and (len(shape) < 2 or shape[0] % groups or shape[1] * groups != self.size):
                    raise ValueError(
                        f"a parameter of shape {tuple(shape)} is not a transposed-convolution weight "
                        f"with {self.size} output channels in {groups} groups"
                    )

    @property
    def widths(self) -> list[int]:
        """How many columns (axis 1) or rows (axis 0) each parameter occupies."""
        return [shape.numel() // self.size for shape in self.param_shapes]

    @property
    def shape(self) -> tuple[int, int]:
        extent = sum(self.widths)
        return (self.size, extent) if self.axis == 1 else (extent, self.size)

    def extended(self, shapes: Sequence[torch.Size]) -> BlockLayout:
        """This layout with further parameters appended (plain reshapes); ValueError if they do not fit."""
        transposed = self.transposed + (0,) * len(shapes) if self.transposed else ()
        return BlockLayout(self.param_shapes + tuple(shapes), self.size, self.axis, transposed)

    def pack(self, tensors: Sequence[Tensor]) -> Tensor:
        """G from the parameter-shaped tensors."""
        pieces = [self._piece(t, i) for i, t in enumerate(tensors)]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=self.axis)

    def unpack(self, G: Tensor) -> list[Tensor]:
        """The parameter-shaped tensors from G (views where possible)."""
        pieces = torch.split(G, self.widths, dim=self.axis)
        return [self._unpiece(piece, i) for i, piece in enumerate(pieces)]

    def permutation(self) -> Tensor:
        """Index vector p with vec(G) = x[p], x being the parameters flattened and concatenated."""
        offsets = torch.arange(sum(shape.numel() for shape in self.param_shapes))
        return self.pack(torch.split(offsets, [shape.numel() for shape in self.param_shapes])).reshape(-1)

    def piece(self, tensor: Tensor, index: int) -> Tensor:
        """The columns (axis 1) or rows (axis 0) of G that parameter ``index``, shaped like ``tensor``, fills."""
        return self._piece(tensor, index)

    def _groups(self, index: int) -> int:
        return self.transposed[index] if self.transposed else 0

    def _piece(self, tensor: Tensor, index: int) -> Tensor:
        groups = self._groups(index)
        if groups:  # W (in, out/g, *kernel) -> rows: output channels, columns: a group's inputs and kernel
            weight = tensor.reshape(self.param_shapes[index])  # also given flat (``permutation``)
            return rearrange(weight, "(g inputs) outputs ... -> (g outputs) (inputs ...)", g=groups)
        return tensor.reshape((self.size, -1) if self.axis == 1 else (-1, self.size))

    def _unpiece(self, piece: Tensor, index: int) -> Tensor:
        shape, groups = self.param_shapes[index], self._groups(index)
        if groups:
            piece = rearrange(
                piece, "(g outputs) (inputs kernel) -> (g inputs) outputs kernel", g=groups, inputs=shape[0] // groups
            )
        return piece.reshape(shape)
