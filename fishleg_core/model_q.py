"""Q over a whole model: a composition of QForms over groups of parameter blocks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from fishleg_core.checks import check_mapping, check_number
from fishleg_core.layers.form_choice import FormChoices, choose_forms
from fishleg_core.layers.mapping import Block, map_blocks
from fishleg_core.qforms import QFORMS, QForm
from fishleg_core.qforms.positive import TriangularFactor
from fishleg_core.vectors import check_entry

LowRankFactors = Mapping[str, tuple[Tensor, Tensor]]
"""Block name -> (left, right) with the block's matrix equal to left @ rightᵀ (see ``GradientFactors``)."""


class QGroup(nn.Module, ABC):
    """Q on a group of parameters, acting on {name: tensor} dicts. A form spanning several layers (for
    example a block-tridiagonal coupling of adjacent layers) is a new subclass. ``factors`` may carry
    low-rank factorisations of some blocks of x, which a group may use instead of the dense tensors."""

    @property
    @abstractmethod
    def param_names(self) -> tuple[str, ...]:
        """The full parameter names this group acts on, in the order of ``to_dense``."""

    @abstractmethod
    def forward(self, tensors: Mapping[str, Tensor], factors: LowRankFactors | None = None) -> dict[str, Tensor]:
        """Q·x restricted to this group, for x given by ``tensors`` (at least this group's names)."""

    @abstractmethod
    def to_dense(self) -> Tensor:
        """The dense matrix of this group on its parameters flattened and concatenated in order."""

    def describe(self) -> tuple[str, str, str, str, int | None]:
        """(name, layer type, block shape, form, number of model parameters covered or None) for
        ``ModelQ.summary``."""
        return ", ".join(self.param_names), type(self).__name__, "-", type(self).__name__, None


class BlockQ(QGroup):
    """One block with one QForm: G = pack(tensors), Q·G, unpack. ``label`` names the form in summaries
    (default: its registered name)."""

    def __init__(self, block: Block, form: QForm, label: str | None = None) -> None:
        super().__init__()
        if form.shape != block.shape:
            raise ValueError(f"block {block.name!r} has shape {block.shape} but its form acts on {form.shape}")
        self.block = block
        self.form = form
        self.label = label or QFORMS.name_of(type(form)) or type(form).__name__

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.block.param_names

    def forward(self, tensors: Mapping[str, Tensor], factors: LowRankFactors | None = None) -> dict[str, Tensor]:
        """Q·G with G = pack(tensors), or = left @ rightᵀ when ``factors`` has this block and the form's
        low-rank product is cheaper at that rank."""
        low_rank = (factors or {}).get(self.block.name)
        QG = self.form.multiply_low_rank(*low_rank) if low_rank is not None else None
        if QG is None:
            pieces = [tensors[name] for name in self.param_names]
            for name, piece, shape in zip(self.param_names, pieces, self.block.layout.param_shapes):
                check_entry("vector", name, piece, shape)
            QG = self.form(self.block.layout.pack(pieces))
        return dict(zip(self.param_names, self.block.layout.unpack(QG)))

    def to_dense(self) -> Tensor:
        block_dense = self.form.to_dense()
        order = self.block.layout.permutation().to(block_dense.device)
        dense = torch.empty_like(block_dense)
        dense[order[:, None], order[None, :]] = block_dense
        return dense

    def describe(self) -> tuple[str, str, str, str, int | None]:
        rows, cols = self.block.shape
        return self.block.name, self.block.module_type.__name__, str(self.block.shape), self.label, rows * cols

    def extra_repr(self) -> str:
        return f"block={self.block.name!r} ({self.block.module_type.__name__}, shape={self.block.shape})"


class ModelQ(nn.Module):
    """The block-diagonal Q(λ) of a model: Q·x = ⊕_groups Q_group·x_group for x = {name: tensor}."""

    def __init__(self, groups: Iterable[QGroup]) -> None:
        super().__init__()
        self.groups = nn.ModuleList(groups)
        names = [name for group in self.groups for name in group.param_names]
        if len(set(names)) != len(names):
            raise ValueError("ModelQ groups must not share parameters")
        self.param_names: tuple[str, ...] = tuple(names)

    def forward(self, vector: Mapping[str, Tensor], factors: LowRankFactors | None = None) -> dict[str, Tensor]:
        """Q·x for x = ``vector``; ``factors`` optionally gives low-rank forms of some of its blocks, which
        must agree with the dense tensors (``GradientFactors`` checks this)."""
        check_mapping("vector", vector)
        missing = [name for name in self.param_names if name not in vector]
        if missing:
            raise KeyError(f"ModelQ: vector needs a tensor for every parameter Q covers; missing: {', '.join(missing)}")
        result: dict[str, Tensor] = {}
        for group in self.groups:
            result.update(group(vector, factors))
        return {name: result[name] for name in self.param_names}

    def entry_label(self, key: str) -> str:
        """A ``state_dict`` key with the name of the block it belongs to, e.g.
        ``"groups.1.form.L.off (block '2', Linear, kron)"``."""
        parts = key.split(".")
        if len(parts) > 1 and parts[0] == "groups" and parts[1].isdigit() and int(parts[1]) < len(self.groups):
            name, layer, _, form, _ = self.groups[int(parts[1])].describe()
            return f"{key} (block {name!r}, {layer}, {form})"
        return key

    def cache_grams(self, enabled: bool) -> None:
        """Whether the triangular factors of the forms cache their Gram matrices M = L Lᵀ outside autograd
        (pays when λ serves several products between changes; see ``TriangularFactor``)."""
        for module in self.modules():
            if isinstance(module, TriangularFactor):
                module.cache_gram = enabled

    def to_dense(self) -> Tensor:
        """The dense Q on all parameters flattened and concatenated in ``param_names`` order."""
        return torch.block_diag(*[group.to_dense() for group in self.groups])

    def summary(self, flag_ratio: float = 10.0) -> str:
        """A table of blocks: layer type, shape, form (registered name and options), the layer's parameters,
        the auxiliary parameters, their ratio, and totals; blocks with more than ``flag_ratio`` auxiliary
        parameters per layer parameter are flagged ("!")."""
        header = (f"{'block':<24} {'layer':<12} {'shape':<12} {'form':<20} {'params':>10} {'aux params':>11} "
                  f"{'ratio':>7}")
        lines, flagged, total_params, total_aux = [header], [], 0, 0
        for group in self.groups:
            name, layer, shape, form, covered = group.describe()
            aux = sum(p.numel() for p in group.parameters())
            ratio = aux / covered if covered else None
            flag = "!" if ratio is not None and ratio > flag_ratio else ""
            if flag:
                flagged.append(name)
            total_params += covered or 0
            total_aux += aux
            lines.append(f"{name:<24} {layer:<12} {shape:<12} {form:<20} {_count(covered):>10} {aux:>11,} "
                         f"{_ratio(ratio):>7} {flag}".rstrip())
        lines.append(f"{'total':<24} {'':<12} {'':<12} {'':<20} {total_params:>10,} {total_aux:>11,} "
                     f"{_ratio(total_aux / total_params if total_params else None):>7}")
        if flagged:
            lines.append(f"! more than {flag_ratio:g} auxiliary parameters per layer parameter ({', '.join(flagged)}): "
                         "a cheaper form (\"diagonal\") for these blocks costs less memory and time per step")
        return "\n".join(lines)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def build_model_q(
    model: nn.Module, forms: FormChoices | None = None, init_scale: float = 1.0, strict: bool = False
) -> ModelQ:
    """Map ``model`` to blocks (``map_blocks``), give each its QForm (``choose_forms``), all started at
    ``init_scale · I``, with the dtype and device of the block's parameters."""
    check_number("init_scale", init_scale, 0.0)
    blocks = map_blocks(model, strict=strict)
    if not blocks:
        raise ValueError("build_model_q: the model has no trainable parameters (requires_grad=True)")
    params = dict(model.named_parameters())
    groups = []
    for block, (form_name, options) in zip(blocks, choose_forms(blocks, forms)):
        like = params[block.param_names[0]]
        form = QFORMS.build(form_name, shape=block.shape, init_scale=init_scale, device=like.device,
                            dtype=like.dtype, **options)
        label = form_name + "".join(f" {key}={value!r}" for key, value in options.items())
        groups.append(BlockQ(block, form, label))
    return ModelQ(groups)

