"""FishLeg's diagnostics as flat scalars, for TensorBoard's ``SummaryWriter`` or any other logger."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from fishleg_core.optim.fishleg import FishLeg


class ScalarWriter(Protocol):
    """What ``log_diagnostics`` needs of a writer: TensorBoard's ``SummaryWriter.add_scalar``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...


def diagnostic_scalars(optimizer: FishLeg, prefix: str = "fishleg") -> dict[str, float]:
    """``optimizer.diagnostics()`` flattened to ``{"<prefix>/<name>[/<key>]": float}``: the auxiliary loss A
    and its floor −1/(2γ), the auxiliary-update count, Q's scale along the gradients per block, the Fisher's
    size relative to the damping, the skipped non-finite updates and each parameter group's learning rate.
    Entries without a value yet (None) are left out."""
    if not isinstance(optimizer, FishLeg):
        raise TypeError(f"diagnostic_scalars needs a FishLeg optimizer, got {type(optimizer).__name__}")
    scalars: dict[str, float] = {}
    diagnostics = optimizer.diagnostics()
    diagnostics.pop("warnings", None)
    diagnostics["lr"] = {str(index): group["lr"] for index, group in enumerate(optimizer.param_groups)}
    _flatten(diagnostics, prefix, scalars)
    return scalars


def log_diagnostics(writer: ScalarWriter, optimizer: FishLeg, step: int, prefix: str = "fishleg") -> dict[str, float]:
    """Write ``diagnostic_scalars(optimizer)`` with ``writer.add_scalar(tag, value, step)`` (a TensorBoard
    ``SummaryWriter``, or anything with that method); returns the scalars written."""
    scalars = diagnostic_scalars(optimizer, prefix)
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, step)
    return scalars


def _flatten(value: Any, tag: str, into: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(item, f"{tag}/{key}", into)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        into[tag] = float(value)
