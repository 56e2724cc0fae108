"""Map any ``nn.Module`` tree to parameter blocks, without touching its modules (docs/design.md §6)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

from torch import nn

from fishleg_core._validation import check_type
from fishleg_core._vectors import trainable_parameters
from fishleg_core._warnings import warn_user
from fishleg_core.layers.adapters import ParameterAdapter, adapter_for
from fishleg_core.layers.layout import BlockLayout


class UnsupportedLayerError(TypeError):
    """A trainable parameter that no layer adapter covers, in strict mode."""


@dataclass(frozen=True)
class Block:
    """One parameter block: the parameters (full names in ``model.named_parameters()``) that one QForm
    acts on jointly, viewed as a matrix through ``layout``; its rows may fall into ``row_parts`` equal
    bands, each with a form of its own (a block-diagonal Q over the bands)."""

    name: str
    module_type: type
    param_names: tuple[str, ...]
    layout: BlockLayout
    default_form: str
    row_parts: int = 1

    def __post_init__(self) -> None:
        if self.row_parts < 1 or self.shape[0] % self.row_parts:
            raise ValueError(f"block {self.name!r}: {self.shape[0]} rows do not fall into {self.row_parts} bands")

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.shape


BandChoices = Mapping[str, int]
"""Module-name patterns (``fnmatch``, e.g. ``"*.qkv"``) -> how many equal row bands their blocks fall into."""


def map_blocks(
    model: nn.Module, strict: bool = False, *, bands: BandChoices | None = None, exclude: Collection[str] = ()
) -> list[Block]:
    """Blocks covering every trainable parameter of ``model`` exactly once, in parameter order.

    Each module with a registered adapter forms its blocks from its own parameters. A tied parameter is
    one block, that of the first module (in ``named_modules`` order) that uses it; the other modules
    sharing it add their remaining parameters to that block when they fit its rows (a tied language-model
    head's bias joins the embedding's block). Any other trainable parameter (a bare ``nn.Parameter``, an
    unknown layer type, one the adapter does not group) gets its own (numel, 1) diagonal block, with one
    warning naming these parameters and why, or an ``UnsupportedLayerError`` when ``strict``.

    ``bands`` cuts the blocks whose name matches a pattern into that many equal row bands, each with a form
    of its own, overriding the adapter's ``row_parts``: a fused q, k, v projection ``nn.Linear`` (timm's
    ``qkv``: ``bands={"*.qkv": 3}``), which cannot be told from any other linear layer by its type.
    Parameters named in ``exclude`` are left out, as if frozen (another optimizer steps them).

    Args:
        model: the network.
        strict: raise instead of giving uncovered parameters diagonal blocks.
        bands: module-name patterns (``fnmatch``) -> the number of equal row bands of their blocks.
        exclude: names of trainable parameters to leave out.

    Returns:
        The blocks, in parameter order, each with its name, module type, parameter names, layout, default
        form and row parts.

    Raises:
        UnsupportedLayerError: ``strict`` and a trainable parameter that no adapter covers.
        TypeError: ``strict`` is not a bool.
    """
    check_type("strict", strict, bool, "True or False")
    params = {name: p for name, p in trainable_parameters(model).items() if name not in exclude}
    name_of = {id(p): name for name, p in params.items()}
    blocks: list[Block] = []
    owner: dict[str, int] = {}  # parameter name -> index of its block
    reasons: dict[str, str] = {}
    for module_name, module in model.named_modules():
        adapter = adapter_for(module)
        if adapter is None:
            continue
        for suffix, attrs in adapter.blocks(module):
            members = _members(module, attrs, name_of)
            if not members:
                continue
            if members[0] in owner:
                _join_tied(blocks, owner, members, params, module_name, reasons)
                continue
            members = [name for name in members if name not in owner]  # others tied into earlier blocks
            layout = adapter.layout(module, [params[name].shape for name in members])
            block_name = module_name + suffix if module_name else suffix.lstrip(":")
            owner.update({name: len(blocks) for name in members})
            blocks.append(
                Block(block_name, type(module), tuple(members), layout, adapter.default_form, adapter.row_parts(module))
            )
    leftover = [name for name in params if name not in owner]
    for name in leftover:
        module = model.get_submodule(name.rpartition(".")[0])
        if name not in reasons:
            adapter = adapter_for(module)
            module_label = f"module {name.rpartition('.')[0]!r} ({type(module).__name__})"
            reasons[name] = (
                f"{module_label} has no layer adapter"
                if adapter is None
                else f"the {type(adapter).__name__} of {module_label} does not group it"
            )
    if leftover:
        listed = ", ".join(f"{name} ({reasons[name]})" for name in leftover)
        if strict:
            raise UnsupportedLayerError(
                f"strict mode: no layer adapter covers the trainable parameters {listed}; register a "
                "LayerAdapter for their module type, or pass strict=False to give each its own diagonal block"
            )
        warn_user(f"each of these trainable parameters gets its own diagonal block: {listed}")
    fallback = ParameterAdapter()
    for name in leftover:
        module = model.get_submodule(name.rpartition(".")[0])
        layout = fallback.layout(module, [params[name].shape])
        blocks.append(Block(name, type(module), (name,), layout, fallback.default_form))
    order = {name: i for i, name in enumerate(params)}
    return _banded(sorted(blocks, key=lambda block: order[block.param_names[0]]), bands)


def _banded(blocks: list[Block], bands: BandChoices | None) -> list[Block]:
    """The blocks with the ``row_parts`` of the first matching pattern of ``bands``; a pattern that matches
    no block is warned about."""
    if not bands:
        return blocks
    check_type("bands", bands, Mapping, "a mapping {module-name pattern: number of row bands}")
    for pattern, parts in bands.items():
        if not isinstance(pattern, str) or isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
            raise ValueError(f"bands: expected {{module-name pattern: int >= 1}}, got {pattern!r}: {parts!r}")
    used: set[str] = set()
    banded = []
    for block in blocks:
        match = next((key for key in bands if fnmatchcase(block.name, key)), None)
        if match is not None:
            used.add(match)
            block = replace(block, row_parts=bands[match])
        banded.append(block)
    unused = [pattern for pattern in bands if pattern not in used]
    if unused:
        warn_user(f"bands: the patterns {', '.join(map(repr, unused))} match no block")
    return banded


def joint_block(model: nn.Module, param_names: Sequence[str] | None = None, name: str = "joint") -> Block:
    """One block over several trainable parameters (all of them by default), flattened and stacked into
    an (n, 1) matrix, so that one QForm couples them across layers; with ``dense`` it can represent any
    SPD matrix on them (the exact reference on small models)."""
    params = trainable_parameters(model)
    if isinstance(param_names, str):
        raise TypeError(f"joint_block: param_names must be a sequence of names, not the string {param_names!r}")
    names = tuple(params) if param_names is None else tuple(param_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"joint_block: param_names must name at least one parameter, each once; got {names}")
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"joint_block: {', '.join(unknown)} are not trainable parameters of the model")
    layout = BlockLayout(tuple(params[n].shape for n in names), size=1, axis=0)
    return Block(name, type(model), names, layout, "dense")


def _join_tied(
    blocks: list[Block],
    owner: dict[str, int],
    members: list[str],
    params: dict[str, nn.Parameter],
    module_name: str,
    reasons: dict[str, str],
) -> None:
    """Add a module's parameters not yet in a block to the block of its tied defining parameter, when they
    fit that block's rows; leave the others to the fallback with the reason."""
    index = owner[members[0]]
    block = blocks[index]
    extra = [name for name in members if name not in owner]
    if not extra:
        return
    try:
        layout = block.layout.extended([params[name].shape for name in extra])
    except ValueError:
        for name in extra:
            reasons[name] = (
                f"module {module_name!r} shares {members[0]} with block {block.name!r}, whose rows it does not fit"
            )
        return
    blocks[index] = replace(block, param_names=block.param_names + tuple(extra), layout=layout)
    owner.update({name: index for name in extra})


def _members(module: nn.Module, attrs: Sequence[str], name_of: dict[int, str]) -> list[str] | None:
    """Full names of the module's trainable parameters ``attrs`` that exist, or None when the first
    (defining) one is missing or frozen."""
    found = [getattr(module, attr, None) for attr in attrs]
    if not isinstance(found[0], nn.Parameter) or id(found[0]) not in name_of:
        return None
    return [name_of[id(p)] for p in found if isinstance(p, nn.Parameter) and id(p) in name_of]
