"""Single-block groups whose forms stack (``QForm.batch_key``) multiplied as one batch (``ModelQ(batched=True)``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

import torch
from torch import Tensor

from fishleg_core._vectors import check_entry
from fishleg_core.coupled.base import CoupledQ, LowRankFactors
from fishleg_core.coupled.block import BlockQ
from fishleg_core.coupled.low_rank import LowRank
from fishleg_core.qforms import QForm, RowBandsQ


def bands(form: QForm) -> list[QForm]:
    """The forms a block's form applies to its row bands: its bands for a ``RowBandsQ``, else itself."""
    return form.forms if isinstance(form, RowBandsQ) else [form]


def stack_key(group: CoupledQ) -> Hashable | None:
    """The key under which ``group`` joins a batch: its bands' common ``batch_key``; None for groups that
    multiply alone. (Each block packs its own matrix, so blocks of different layouts batch together.)"""
    if type(group) is not BlockQ:
        return None
    keys = {form.batch_key() for form in bands(group.form)}
    if len(keys) != 1 or None in keys:
        return None
    return keys.pop()


class BlockBatch:
    """``BlockQ`` groups whose bands share a ``batch_key``: the blocks' matrices cut into bands, stacked into
    one (N, rows, cols) tensor, multiplied by the forms' ``StackedForm`` and cut back. A block whose low-rank
    factors are given and whose form has a cheaper product on them takes that product, as ``BlockQ`` does."""

    def __init__(self, groups: Sequence[BlockQ]) -> None:
        self.groups = tuple(groups)
        forms = [form for group in groups for form in bands(group.form)]
        self.stacked = type(forms[0]).stack(forms)
        self.band_shape = forms[0].shape

    def __call__(self, tensors: Mapping[str, Tensor], factors: LowRankFactors | None = None) -> dict[str, Tensor]:
        """Q·x on the batch's blocks, for x given by ``tensors`` (at least their names)."""
        result: dict[str, Tensor] = {}
        matrices: dict[int, Tensor] = {}
        for index, group in enumerate(self.groups):
            block = group.block
            pieces = tuple(tensors[name] for name in block.param_names)
            for name, piece, shape in zip(block.param_names, pieces, block.layout.param_shapes):
                check_entry("vector", name, piece, shape)
            low_rank = (factors or {}).get(block.name)
            if low_rank is not None:
                low = LowRank(*low_rank)
                product = group.form.multiply_low_rank(low.left, low.right)
                if product is not None:
                    result.update(zip(block.param_names, block.layout.unpack(product)))
                    continue
            matrices[index] = block.layout.pack(pieces)
        if len(matrices) == len(self.groups):
            rows, cols = self.band_shape
            stack = torch.cat([G.view(-1, rows, cols) for G in matrices.values()])
            products = torch.split(self.stacked.multiply(stack), [len(bands(g.form)) for g in self.groups])
            for group, QG in zip(self.groups, products):
                result.update(zip(group.block.param_names, group.block.layout.unpack(QG.view(group.block.shape))))
        else:  # some blocks took their low-rank products: the others one by one
            for index, G in matrices.items():
                block = self.groups[index].block
                result.update(zip(block.param_names, block.layout.unpack(self.groups[index].form(G))))
        return result


def plan_batches(groups: Sequence[CoupledQ]) -> tuple[list[BlockBatch], list[CoupledQ]]:
    """The batches of ``groups`` (two or more bands with one ``stack_key``) and the groups left alone."""
    by_key: dict[Hashable, list[BlockQ]] = defaultdict(list)
    alone: list[CoupledQ] = []
    for group in groups:
        key = stack_key(group)
        if key is None:
            alone.append(group)
        else:
            assert isinstance(group, BlockQ)  # stack_key is None for every other group
            by_key[key].append(group)
    batches = []
    for members in by_key.values():
        if sum(len(bands(group.form)) for group in members) > 1:
            batches.append(BlockBatch(members))
        else:
            alone.extend(members)
    return batches, alone
