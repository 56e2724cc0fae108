"""Which QForm each block gets: per module-name pattern, per layer type, or a default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from fishleg_core._validation import check_mapping
from fishleg_core._warnings import warn_user
from fishleg_core.layers.adapters import LAYER_ADAPTERS
from fishleg_core.layers.mapping import Block
from fishleg_core.qforms import QFORMS
from fishleg_core.registry import named_options

FormSpec = str | Mapping[str, Any]
"""A form name (``"kron"``) or a name with options (``{"form": "kron_sum", "K": 3}``)."""

FormChoices = Mapping[str, FormSpec]
"""Keys are ``"default"``, layer type names (``"Linear"``) or module-name patterns (``"decoder.*"``)."""


def choose_forms(blocks: Sequence[Block], forms: FormChoices | None) -> list[tuple[str, dict[str, Any]]]:
    """(form name, options) for each block.

    Precedence: the first module-name pattern (``fnmatch``, matched against the block name) that
    matches; else the closest layer type along the block's module class hierarchy; else
    ``"default"``; else the adapter's default form. A key that matches no block is warned about.
    """
    if forms is not None:
        check_mapping("forms", forms, "a mapping {'default', layer type name or module-name pattern: form}")
    if not isinstance(blocks, Sequence) or not all(isinstance(block, Block) for block in blocks):
        raise TypeError("blocks must be a sequence of Block (as map_blocks or joint_block give them)")
    choices = dict(forms or {})
    default = choices.pop("default", None)
    specs = {key: _parse(key, spec) for key, spec in choices.items()}
    default_choice = _parse("default", default) if default is not None else None
    type_names = {cls.__name__ for block in blocks for cls in block.module_type.__mro__}
    type_names.update(LAYER_ADAPTERS.names())
    used: set[str] = set()
    chosen: list[tuple[str, dict[str, Any]]] = []
    for block in blocks:
        key = _first_pattern(block, specs, type_names) or _closest_type(block, specs)
        if key:
            used.add(key)
        spec = specs[key] if key else default_choice or (block.default_form, {})
        chosen.append(spec)
    unused = [key for key in specs if key not in used]
    if unused:
        warn_user(
            f"form choices {', '.join(map(repr, unused))} match no layer type or module name "
            f"(blocks: {', '.join(block.name for block in blocks)})"
        )
    return chosen


def _parse(key: str, spec: FormSpec) -> tuple[str, dict[str, Any]]:
    if not isinstance(key, str):
        raise TypeError(
            f"forms: key {key!r} must be a string: 'default', a layer type name such as 'Linear', "
            "or a module-name pattern"
        )
    parsed = named_options(spec, "form")
    if parsed is None:
        raise ValueError(f"form choice {key!r}: expected a form name or a dict with a 'form' name, got {spec!r}")
    name, options = parsed
    QFORMS.get(name)  # unknown names fail here, listing the known forms
    return name, options


def _first_pattern(block: Block, specs: Mapping[str, Any], type_names: set[str]) -> str | None:
    return next((key for key in specs if key not in type_names and fnmatchcase(block.name, key)), None)


def _closest_type(block: Block, specs: Mapping[str, Any]) -> str | None:
    return next((cls.__name__ for cls in block.module_type.__mro__ if cls.__name__ in specs), None)
