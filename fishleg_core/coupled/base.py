"""The CoupledQ contract: Q on a group of parameter blocks (one layer, or several that it couples)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fishleg_core._vectors import check_entry
from fishleg_core.coupled.low_rank import LowRank, Matrix
from fishleg_core.coupled.registry import COUPLED_FORMS
from fishleg_core.layers.mapping import Block

LowRankFactors = Mapping[str, tuple[Tensor, Tensor]]
"""Block name -> (left, right) with the block's matrix equal to left @ rightᵀ (see ``GradientFactors``)."""


@dataclass
class BlockVector:
    """One block of a vector x: its matrix G (packed from the parameter tensors on first use) and, when a
    capture knows it, the same matrix as low-rank factors G = left @ rightᵀ."""

    block: Block
    tensors: tuple[Tensor, ...]
    factors: LowRank | None = None
    _matrix: Tensor | None = field(default=None, repr=False)

    def matrix(self) -> Tensor:
        """G = pack(tensors), of shape ``block.shape``."""
        if self._matrix is None:
            self._matrix = self.block.layout.pack(self.tensors)
        return self._matrix

    def cheapest(self, pays: bool) -> Matrix:
        """The factors when there are some and ``pays`` says they are cheaper, else the dense G."""
        return self.factors if self.factors is not None and pays else self.matrix()


class CoupledQ(nn.Module, ABC):
    """Q on the parameters of a group of blocks G_1..G_k, acting on {name: tensor} dicts.

    Subclasses are positive definite by construction, start at ``init_scale · I`` (within
    ``init_deviation``, a fraction of init_scale in spectral norm, for forms that need small random terms)
    and implement two methods on the blocks' matrices (row-major vec, as for QForms):

    - ``multiply(x)``: the blocks of Q·x for x = [BlockVector per block], differentiable in λ; a block's
      ``factors`` (a minibatch gradient's low-rank form) may be used instead of its dense matrix;
    - ``packed_dense()``: the dense Q on [vec(G_1); ...; vec(G_k)].

    The base class packs, unpacks and permutes: ``to_dense`` is in ``param_names`` order.
    """

    init_deviation: float = 0.0

    def __init__(self, blocks: Sequence[Block]) -> None:
        super().__init__()
        if isinstance(blocks, Block) or not isinstance(blocks, Sequence) or not blocks:
            raise TypeError(f"{type(self).__name__}: blocks must be a non-empty sequence of Block")
        if not all(isinstance(block, Block) for block in blocks):
            raise TypeError(f"{type(self).__name__}: blocks must be Block objects (see map_blocks)")
        names = [name for block in blocks for name in block.param_names]
        if len(set(names)) != len(names) or len({block.name for block in blocks}) != len(blocks):
            raise ValueError(f"{type(self).__name__}: the blocks {[block.name for block in blocks]} overlap")
        self.blocks: tuple[Block, ...] = tuple(blocks)
        self.param_names: tuple[str, ...] = tuple(names)

    @property
    def key(self) -> str:
        """The blocks it covers, as a module name for state_dict keys: '.' → '/', joined by '+'."""
        return coupled_key(self.blocks)

    def forward(self, tensors: Mapping[str, Tensor], factors: LowRankFactors | None = None) -> dict[str, Tensor]:
        """Q·x restricted to this group, for x given by ``tensors`` (at least this group's names)."""
        vectors = []
        for block in self.blocks:
            pieces = tuple(tensors[name] for name in block.param_names)
            for name, piece, shape in zip(block.param_names, pieces, block.layout.param_shapes):
                check_entry("vector", name, piece, shape)
            low_rank = (factors or {}).get(block.name)
            vectors.append(BlockVector(block, pieces, LowRank(*low_rank) if low_rank is not None else None))
        result: dict[str, Tensor] = {}
        for block, QG in zip(self.blocks, self.multiply(vectors)):
            result.update(zip(block.param_names, block.layout.unpack(QG)))
        return result

    def set_kronecker(self, pairs: Sequence[tuple[Tensor, Tensor]]) -> bool:
        """Set Q from one (left, right) Cholesky pair per block (in block order; stacked per band for a
        block in bands), each the damped inverse KFAC factors' (``fishleg_core.kfac.start``): the group's own
        version of ``QForm.set_kronecker``.

        Returns:
            True when set; False, with Q unchanged, for a group without such a start (the default).
        """
        return False

    @abstractmethod
    def multiply(self, x: list[BlockVector]) -> list[Tensor]:
        """The block matrices of Q·x, one per block, each of the block's shape."""

    @abstractmethod
    def packed_dense(self) -> Tensor:
        """The dense Q on the blocks' row-major vecs concatenated in block order."""

    def to_dense(self) -> Tensor:
        """The dense Q on this group's parameters flattened and concatenated in ``param_names`` order."""
        packed = self.packed_dense()
        order = self.permutation().to(packed.device)
        dense = torch.empty_like(packed)
        dense[order[:, None], order[None, :]] = packed
        return dense

    def permutation(self) -> Tensor:
        """Index vector p with [vec(G_1); ...; vec(G_k)] = x[p], x the parameters flattened in order."""
        pieces, offset = [], 0
        for block in self.blocks:
            pieces.append(block.layout.permutation() + offset)
            offset += sum(shape.numel() for shape in block.layout.param_shapes)
        return torch.cat(pieces)

    def describe(self) -> tuple[str, str, str, str, int]:
        """(blocks, layer types, block shapes, form, number of model parameters covered) for
        ``ModelQ.summary``; the form is its registered group-form name where it has one."""
        return (
            "+".join(block.name for block in self.blocks),
            "+".join(block.module_type.__name__ for block in self.blocks),
            "+".join(f"{rows}x{cols}" for rows, cols in (block.shape for block in self.blocks)),
            COUPLED_FORMS.name_of(type(self)) or type(self).__name__,
            sum(rows * cols for rows, cols in (block.shape for block in self.blocks)),
        )

    def extra_repr(self) -> str:
        return "blocks=" + ", ".join(f"{block.name!r} {block.shape}" for block in self.blocks)


def coupled_key(blocks: Sequence[Block]) -> str:
    """A module name naming ``blocks``: each block name with '.' → '/' ('<model>' for the root module)."""
    return "+".join(block.name.replace(".", "/") or "<model>" for block in blocks)
