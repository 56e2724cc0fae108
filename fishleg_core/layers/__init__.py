"""Layer adapters and the mapping of any module tree to parameter blocks (docs/design.md §6)."""

from fishleg_core.layers.adapters import LAYER_ADAPTERS, KFACCapture, LayerAdapter, adapter_for, input_gram
from fishleg_core.layers.form_choice import choose_forms
from fishleg_core.layers.layout import BlockLayout
from fishleg_core.layers.mapping import (
    Block,
    UnsupportedLayerError,
    joint_block,
    map_blocks,
)

__all__ = [
    "LAYER_ADAPTERS",
    "Block",
    "BlockLayout",
    "KFACCapture",
    "LayerAdapter",
    "UnsupportedLayerError",
    "adapter_for",
    "choose_forms",
    "input_gram",
    "joint_block",
    "map_blocks",
]
