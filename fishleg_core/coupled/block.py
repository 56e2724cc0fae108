"""The single-block group: one parameter block with one QForm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fishleg_core.coupled.base import BlockVector, CoupledQ
from fishleg_core.coupled.registry import COUPLED_FORMS
from fishleg_core.layers.mapping import Block
from fishleg_core.qforms import QFORMS, QForm, RowBandsQ


class BlockQ(CoupledQ):
    """One block with one QForm: G = pack(tensors), Q·G (or Q·(left rightᵀ) when the form's low-rank
    product pays at that rank), unpack."""

    def __init__(self, block: Block, form: QForm, label: str | None = None) -> None:
        super().__init__([block])
        if not isinstance(form, QForm):
            raise TypeError(f"BlockQ: form must be a QForm, got {type(form).__name__}")
        if form.shape != block.shape:
            raise ValueError(f"block {block.name!r} has shape {block.shape} but its form acts on {form.shape}")
        self.block = block
        self.form = form
        forms = form.forms if isinstance(form, RowBandsQ) else [form]
        name = QFORMS.name_of(type(forms[0])) or type(forms[0]).__name__
        self.label = label or (name if len(forms) == 1 else f"{len(forms)}×{name}")
        self.init_deviation = form.init_deviation

    def set_kronecker(self, pairs: Sequence[tuple[Tensor, Tensor]]) -> bool:
        """The form's own start (``QForm.set_kronecker``) on the block's pair."""
        ((left, right),) = pairs
        return self.form.set_kronecker(left, right)

    def multiply(self, x: list[BlockVector]) -> list[Tensor]:
        (vector,) = x
        product = None
        if vector.factors is not None:  # None when the form's low-rank product does not pay at this rank
            product = self.form.multiply_low_rank(vector.factors.left, vector.factors.right)
        return [product if product is not None else self.form(vector.matrix())]

    def packed_dense(self) -> Tensor:
        return self.form.to_dense()

    def describe(self) -> tuple[str, str, str, str, int]:
        rows, cols = self.block.shape
        return self.block.name, self.block.module_type.__name__, str(self.block.shape), self.label, rows * cols

    def extra_repr(self) -> str:
        return f"block={self.block.name!r} ({self.block.module_type.__name__}, shape={self.block.shape})"


@COUPLED_FORMS.register("block")
def block_q(
    blocks: Sequence[Block],
    init_scale: float = 1.0,
    *,
    form: str = "kron",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> BlockQ:
    """``BlockQ`` of the QForm ``form`` (with ``options``) on the one block in ``blocks``; one form per band
    for blocks with ``row_parts`` > 1 (per q/k/v projection, per convolution group), as a ``RowBandsQ``."""
    if isinstance(blocks, Block) or not isinstance(blocks, Sequence) or len(blocks) != 1:
        count = (
            "a Block"
            if isinstance(blocks, Block)
            else f"{len(blocks)} blocks"
            if isinstance(blocks, Sequence)
            else type(blocks).__name__
        )
        raise ValueError(f"coupled form 'block' acts on exactly one block (a list of one Block); got {count}")
    (block,) = blocks
    if not isinstance(block, Block):
        raise TypeError(f"coupled form 'block': blocks must hold Block objects, got {type(block).__name__}")
    rows, cols = block.shape
    bands = [
        QFORMS.build(
            form, shape=(rows // block.row_parts, cols), init_scale=init_scale, device=device, dtype=dtype, **options
        )
        for _ in range(block.row_parts)
    ]
    label = form + "".join(f" {key}={value!r}" for key, value in options.items())
    if block.row_parts > 1:
        label = f"{block.row_parts}×{label}"
    return BlockQ(block, bands[0] if block.row_parts == 1 else RowBandsQ(bands), label)
