"""Q over a whole model: a composition of coupled forms (``CoupledQ``) over disjoint groups of parameter blocks."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from fishleg_core._validation import check_mapping, check_number
from fishleg_core._warnings import warn_user
from fishleg_core.coupled import COUPLED_FORMS, BlockQ, CoupledQ, CoupledSpec, LowRankFactors, choose_coupled
from fishleg_core.coupled.batched import BlockBatch, plan_batches
from fishleg_core.layers.adapters import ParameterAdapter
from fishleg_core.layers.form_choice import FormChoices, choose_forms
from fishleg_core.layers.mapping import BandChoices, Block, map_blocks
from fishleg_core.likelihoods import Likelihood, likelihood_parameters
from fishleg_core.qforms.kron import MAX_FACTOR_SIZE, full_factor, kron_parameter_count
from fishleg_core.qforms.positive import TriangularFactor

__all__ = ["BlockQ", "LowRankFactors", "ModelQ", "CoupledQ", "build_model_q", "check_model_q", "q_options"]


class ModelQ(nn.Module):
    """The block-diagonal-over-groups Q(λ) of a model: Q·x = ⊕_groups Q_group·x_group for x = {name: tensor}.

    Groups are registered under the names of the blocks they cover (``CoupledQ.key``), so state_dict keys
    read ``by_blocks.<block>+<block>.<λ>``: a state_dict from a differently grouped Q does not load.
    ``param_names`` follows ``param_order`` where given (``build_model_q`` gives the model's order), else
    the groups' order; ``to_dense`` is in ``param_names`` order.

    With ``batched`` (the default), single-block groups whose forms stack (``QForm.batch_key``: equal shape
    and form, e.g. the 20 layers of a deep linear network or the projections of a transformer's blocks)
    multiply as one batch (``BlockBatch``): the same products, a few batched kernels instead of a few per
    block. False: every group multiplies its own blocks.
    """

    def __init__(
        self, groups: Iterable[CoupledQ], param_order: Sequence[str] | None = None, *, batched: bool = True
    ) -> None:
        super().__init__()
        groups = list(groups)
        bad = [type(group).__name__ for group in groups if not isinstance(group, CoupledQ)]
        if bad or not groups:
            raise TypeError(
                f"ModelQ needs a non-empty list of CoupledQ (BlockQ, COUPLED_FORMS.build(...)); got {bad or '[]'}"
            )
        names = [name for group in groups for name in group.param_names]
        if len(set(names)) != len(names):
            shared = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"ModelQ groups must not share parameters; shared: {', '.join(shared)}")
        self.by_blocks = nn.ModuleDict({group.key: group for group in groups})
        if param_order is not None:
            rank = {name: i for i, name in enumerate(param_order)}
            missing = [name for name in names if name not in rank]
            if missing:
                raise ValueError(f"ModelQ: param_order lacks {', '.join(missing)}")
            names.sort(key=rank.__getitem__)
        self.param_names: tuple[str, ...] = tuple(names)
        self.batched = batched

    @property
    def batched(self) -> bool:
        """Whether groups whose forms stack multiply as one batch (see the class docstring)."""
        return bool(self._batches)

    @batched.setter
    def batched(self, enabled: bool) -> None:
        batches, alone = plan_batches(self.groups) if enabled else ([], list(self.groups))
        self._batches: list[BlockBatch] = batches
        self._alone: list[CoupledQ] = alone

    @property
    def groups(self) -> tuple[CoupledQ, ...]:
        """The groups, in the order they were given."""
        return tuple(group for group in self.by_blocks.values() if isinstance(group, CoupledQ))

    def forward(self, vector: Mapping[str, Tensor], factors: LowRankFactors | None = None) -> dict[str, Tensor]:
        """Q·x for x = ``vector``; ``factors`` optionally gives low-rank forms of some of its blocks, which
        must agree with the dense tensors (``GradientFactors`` checks this)."""
        check_mapping("vector", vector)
        missing = [name for name in self.param_names if name not in vector]
        if missing:
            raise KeyError(f"ModelQ: vector needs a tensor for every parameter Q covers; missing: {', '.join(missing)}")
        result: dict[str, Tensor] = {}
        for group in self._alone:
            result.update(group(vector, factors))
        for batch in self._batches:
            result.update(batch(vector, factors))
        return {name: result[name] for name in self.param_names}

    def entry_label(self, key: str) -> str:
        """A ``state_dict`` key with the blocks, layer types and form of its group, e.g.
        ``"by_blocks.2.form.L.off (block '2', Linear, kron)"``."""
        parts = key.split(".")
        if len(parts) > 1 and parts[0] == "by_blocks" and parts[1] in self.by_blocks:
            name, layer, _, form, _ = cast(CoupledQ, self.by_blocks[parts[1]]).describe()
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
        sizes = {
            name: shape.numel()
            for group in self.groups
            for block in group.blocks
            for name, shape in zip(block.param_names, block.layout.param_shapes)
        }
        offsets, start = {}, 0
        for name in self.param_names:
            offsets[name], start = start, start + sizes[name]
        parts = [group.to_dense() for group in self.groups]
        dense = parts[0].new_zeros(start, start)
        for group, part in zip(self.groups, parts):
            index = torch.cat([torch.arange(offsets[n], offsets[n] + sizes[n]) for n in group.param_names])
            index = index.to(part.device)
            dense[index[:, None], index[None, :]] = part
        return dense

    def summary(self, flag_ratio: float = 10.0, warn_multiple: float = 2.0) -> str:
        """A table of blocks: layer type, shape, form (registered name and options), the layer's parameters,
        the auxiliary parameters, their bytes, their ratio, and totals; blocks with more than ``flag_ratio``
        auxiliary parameters per layer parameter are flagged ("!"). Above ``warn_multiple`` times the model's
        parameters in all, a last line warns (an optimizer checkpoint holds λ and Adam's two moments of it: about
        3× Q's bytes, plus the momentum) and names the remedies: ``aux_budget=``, ``kron``'s ``max_size``."""
        rows, flagged, total_params, total_aux, total_bytes = [], [], 0, 0, 0
        for group in self.groups:
            name, layer, shape, form, covered = group.describe()
            aux = sum(p.numel() for p in group.parameters())
            size = sum(p.numel() * p.element_size() for p in group.parameters())
            ratio = aux / covered if covered else None
            flag = "!" if ratio is not None and ratio > flag_ratio else ""
            if flag:
                flagged.append(name)
            total_params += covered or 0
            total_aux += aux
            total_bytes += size
            rows.append((name, layer, shape, form, _count(covered), f"{aux:,}", _bytes(size), _ratio(ratio), flag))
        overall = total_aux / total_params if total_params else None
        rows.append(
            ("total", "", "", "", f"{total_params:,}", f"{total_aux:,}", _bytes(total_bytes), _ratio(overall), "")
        )
        header = ("block", "layer", "shape", "form", "params", "aux params", "aux bytes", "ratio", "")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(8)]
        lines = [_table_line(row, widths) for row in [header, *rows]]
        if flagged:
            lines.append(
                f"! more than {flag_ratio:g} auxiliary parameters per layer parameter ({', '.join(flagged)}): "
                'a cheaper form ("diagonal") for these blocks costs less memory and time per step'
            )
        if overall is not None and overall > warn_multiple:
            lines.append(
                f"! Q holds {overall:.2f}× the model's parameters (above {warn_multiple:g}×), {_bytes(total_bytes)}, "
                f"and a checkpoint about 3× that: pass aux_budget= (e.g. 1.0) or a smaller kron max_size"
            )
        return "\n".join(lines)


def _bytes(value: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _table_line(row: tuple[str, ...], widths: list[int]) -> str:
    """The row's text columns left-aligned and its number columns right-aligned, each as wide as its widest
    entry, then the flag."""
    left = [f"{cell:<{width}}" for cell, width in zip(row[:4], widths)]
    right = [f"{cell:>{width}}" for cell, width in zip(row[4:8], widths[4:])]
    return "  ".join([*left, *right, row[8]]).rstrip()


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def build_model_q(
    model: nn.Module,
    forms: FormChoices | None = None,
    init_scale: float = 1.0,
    strict: bool = False,
    *,
    coupled: Sequence[CoupledSpec] | None = None,
    couple: str | None = None,
    likelihood: Likelihood | None = None,
    bands: BandChoices | None = None,
    aux_budget: float | None = None,
    exclude: Collection[str] = (),
    batched: bool = True,
) -> ModelQ:
    """Q(λ) for ``model``: its blocks (``map_blocks``) in coupled forms and QForms, all at Q₀ = init_scale·I.

    Args:
        model: the network whose trainable parameters Q covers.
        forms: QForm per layer type name, module-name pattern or ``"default"`` (``choose_forms``); None: each
            adapter's default form.
        init_scale: c > 0 of Q₀ = c·I.
        strict: an error, not a warning, for trainable parameters that no layer adapter covers.
        coupled: blocks that share one coupled form, e.g. ``[{"blocks": ["0", "2"], "form": "tridiag_kron"}]``
            (``choose_coupled``); the other blocks get their QForm from ``forms``.
        couple: ``"adjacent"``: a ``tridiag_kron`` group per chain of consecutive linear layers.
        likelihood: its parameters (a ``ParametricLikelihood``'s) get diagonal blocks too.
        bands: module-name pattern -> number of row bands a block is cut into (``map_blocks``).
        aux_budget: at most this many auxiliary parameters per model parameter (large Kronecker factors
            become diagonal).
        exclude: names of parameters Q leaves out (a fallback optimizer's).
        batched: see ``ModelQ``.

    Returns:
        The ``ModelQ``, with the dtype and device of the parameters of each block, in the model's parameter
        order.

    Raises:
        ValueError: ``init_scale`` <= 0, the model has no trainable parameters, or a choice of forms or coupled
            blocks is invalid (``strict``: also parameters no adapter covers).
        TypeError: ``forms`` is not a mapping of strings to form specs.
    """
    check_number("init_scale", init_scale, 0.0)
    if aux_budget is not None:
        check_number("aux_budget", aux_budget, 0.0)
    blocks = map_blocks(model, strict=strict, bands=bands, exclude=exclude)
    if not blocks:
        raise ValueError("build_model_q: the model has no trainable parameters (requires_grad=True)")
    params = {name: p for name, p in model.named_parameters() if name not in exclude}
    chosen = choose_coupled(blocks, coupled, couple)
    grouped = {block.name for choice in chosen for block in choice.blocks}
    single = [block for block in blocks if block.name not in grouped]
    made = []
    for choice in chosen:
        like = params[choice.blocks[0].param_names[0]]
        made.append(
            COUPLED_FORMS.build(
                choice.form,
                blocks=list(choice.blocks),
                init_scale=init_scale,
                device=like.device,
                dtype=like.dtype,
                **choice.options,
            )
        )
    chosen_forms = choose_forms(single, forms)
    if aux_budget is not None:
        others = made + [
            COUPLED_FORMS.build("block", blocks=[block], form=name, device="meta", **options)
            for block, (name, options) in zip(single, chosen_forms)
            if name != "kron"
        ]
        fixed = sum(p.numel() for group in others for p in group.parameters())
        total_params = sum(p.numel() for p in params.values() if p.requires_grad)
        chosen_forms = _within_budget(single, chosen_forms, fixed, aux_budget * total_params)
    for block, (form_name, options) in zip(single, chosen_forms):
        like = params[block.param_names[0]]
        made.append(
            COUPLED_FORMS.build(
                "block",
                blocks=[block],
                init_scale=init_scale,
                form=form_name,
                device=like.device,
                dtype=like.dtype,
                **options,
            )
        )
    order = {name: i for i, name in enumerate(params)}
    made.sort(key=lambda group: min(order[name] for name in group.param_names))
    own = likelihood_parameters(likelihood) if likelihood is not None else {}
    own = {name: p for name, p in own.items() if name not in exclude}
    clash = [name for name in own if name in params]
    if clash:
        raise ValueError(f"build_model_q: the model has parameters named like the likelihood's: {', '.join(clash)}")
    for name, p in own.items():
        layout = ParameterAdapter().layout(cast(nn.Module, likelihood), [p.shape])
        block = Block(name, type(likelihood), (name,), layout, "diagonal")
        made.append(
            COUPLED_FORMS.build(
                "block", blocks=[block], init_scale=init_scale, form="diagonal", device=p.device, dtype=p.dtype
            )
        )
    return ModelQ(made, param_order=[*params, *own], batched=batched)


def _within_budget(
    blocks: Sequence[Block], chosen: list[tuple[str, dict]], fixed: int, budget: float
) -> list[tuple[str, dict]]:
    """``chosen`` with the ``max_size`` of ``kron`` blocks lowered, largest full factor first, until the
    ``kron`` blocks' parameters plus ``fixed`` fit ``budget``."""
    chosen = [(name, dict(options)) for name, options in chosen]

    def count(index: int) -> int:
        block, options = blocks[index], chosen[index][1]
        rows, cols = block.shape
        band = (rows // block.row_parts, cols)
        return block.row_parts * kron_parameter_count(
            band, options.get("max_size", MAX_FACTOR_SIZE), options.get("max_skew")
        )

    kron = [i for i, (name, _) in enumerate(chosen) if name == "kron"]
    counts = {i: count(i) for i in kron}
    total = fixed + sum(counts.values())
    sides = []
    for i in kron:
        rows, cols = blocks[i].shape
        rows //= blocks[i].row_parts
        options = chosen[i][1]
        for n, other in ((rows, cols), (cols, rows)):
            if full_factor(n, other, options.get("max_size", MAX_FACTOR_SIZE), options.get("max_skew")):
                sides.append((n, i))
    for n, i in sorted(sides, key=lambda side: -side[0]):
        if total <= budget:
            break
        options = chosen[i][1]
        limit = options.get("max_size", MAX_FACTOR_SIZE)
        if limit is not None and limit < n:
            continue  # made diagonal with a side of the same size
        options["max_size"] = n - 1
        new = count(i)
        total += new - counts[i]
        counts[i] = new
    if total > budget:
        warn_user(
            f"aux_budget: Q holds {total:,} auxiliary parameters with every Kronecker factor diagonal, above the "
            f"budget of {budget:,.0f}; choose cheaper forms for the largest blocks (see q.summary())"
        )
    return chosen


def q_options(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments of ``build_model_q`` that ``spec`` gives (FishLeg's ``q=`` mapping).

    Raises:
        TypeError: ``spec`` is neither None, a ``ModelQ`` nor a mapping.
        ValueError: ``spec`` has a key that is no option of ``build_model_q`` (the message lists them).
    """
    if spec is None:
        return {}
    check_mapping("q", spec, "a ModelQ or a mapping of build_model_q options (forms, coupled, couple, init_scale)")
    accepted = [
        name
        for name in inspect.signature(build_model_q).parameters
        if name not in ("model", "strict", "likelihood", "bands", "aux_budget", "exclude")
    ]
    unknown = sorted(set(spec) - set(accepted))
    if unknown:
        raise ValueError(f"q: unknown options {', '.join(map(repr, unknown))}; it takes: {', '.join(accepted)}")
    return dict(spec)


def check_model_q(q: object, params: Mapping[str, Tensor]) -> None:
    """Raise unless ``q`` is a ``ModelQ`` covering exactly ``params`` (name -> parameter), with their shapes."""
    if not isinstance(q, ModelQ):
        raise TypeError(f"q must be a ModelQ (see build_model_q), got {type(q).__name__}")
    missing = [name for name in params if name not in q.param_names]
    extra = [name for name in q.param_names if name not in params]
    if missing or extra:
        raise ValueError(
            f"q must cover every trainable parameter of the model once; missing: {missing or 'none'}, "
            f"not trainable parameters of the model: {extra or 'none'}"
        )
    for group in q.groups:
        for block in group.blocks:
            for name, shape in zip(block.param_names, block.layout.param_shapes):
                if params[name].shape != shape:
                    raise ValueError(
                        f"q: block {block.name!r} has {name} of shape {tuple(shape)}, the model's is "
                        f"{tuple(params[name].shape)}"
                    )
