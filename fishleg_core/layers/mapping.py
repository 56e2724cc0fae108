"""Map any ``nn.Module`` tree to parameter blocks, without touching its modules (docs/design.md §6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from fishleg_core.checks import check_type
from fishleg_core.layers.adapters import LayerAdapter, ParameterAdapter, adapter_for
from fishleg_core.layers.layout import BlockLayout
from fishleg_core.user_warnings import warn_user
from fishleg_core.vectors import trainable_parameters


class UnsupportedLayerError(TypeError):
    """A trainable parameter that no layer adapter covers, in strict mode."""


@dataclass(frozen=True)
class Block:
    """One parameter block: the parameters (full names in ``model.named_parameters()``) that one QForm
    acts on jointly, viewed as a matrix through ``layout``."""

    name: str
    module_type: type
    param_names: tuple[str, ...]
    layout: BlockLayout
    default_form: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.shape


def map_blocks(model: nn.Module, strict: bool = False) -> list[Block]:
    """Blocks covering every trainable parameter of ``model`` exactly once, in parameter order.

    Modules with a registered adapter form one block from their own parameters. Any other trainable
    parameter (a bare ``nn.Parameter``, an unknown layer type, a layer whose parameters are tied to one
    already claimed) gets its own (numel, 1) diagonal block, with one warning naming these parameters,
    or an ``UnsupportedLayerError`` when ``strict``.
    """
    check_type("strict", strict, bool, "True or False")
    params = trainable_parameters(model)
    name_of = {id(p): name for name, p in params.items()}
    blocks: list[Block] = []
    claimed: set[str] = set()
    for module_name, module in model.named_modules():
        adapter = adapter_for(module)
        members = _adapter_members(module, adapter, name_of) if adapter else None
        if not members or claimed.intersection(members):
            continue
        shapes = [params[name].shape for name in members]
        layout = adapter.layout(module, shapes)
        blocks.append(Block(module_name, type(module), tuple(members), layout, adapter.default_form))
        claimed.update(members)
    leftover = [name for name in params if name not in claimed]
    if leftover:
        listed = ", ".join(leftover)
        if strict:
            raise UnsupportedLayerError(
                f"strict mode: no layer adapter covers the trainable parameters {listed}; register a "
                "LayerAdapter for their module type, or pass strict=False to give each its own diagonal block"
            )
        warn_user(f"no layer adapter covers the trainable parameters {listed}; each gets its own diagonal block")
    fallback = ParameterAdapter()
    for name in leftover:
        owner = model.get_submodule(name.rpartition(".")[0])
        layout = fallback.layout(owner, [params[name].shape])
        blocks.append(Block(name, type(owner), (name,), layout, fallback.default_form))
    order = {name: i for i, name in enumerate(params)}
    return sorted(blocks, key=lambda block: order[block.param_names[0]])


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


def _adapter_members(module: nn.Module, adapter: LayerAdapter, name_of: dict[int, str]) -> list[str] | None:
    """Full names of the module's own trainable parameters that the adapter groups, or None when the
    adapter's first (defining) parameter is missing or frozen."""
    found = [getattr(module, attr, None) for attr in adapter.parameter_names]
    if not isinstance(found[0], nn.Parameter) or id(found[0]) not in name_of:
        return None
    return [name_of[id(p)] for p in found if isinstance(p, nn.Parameter) and id(p) in name_of]
