"""The auxiliary minibatch stream of FishLeg: cycled, and resumable at the same pass and position."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from fishleg_core._warnings import warn_user
from fishleg_core.fisher.functional import Inputs, ModelCall

_END = object()


class CyclicBatches:
    """Cycles through a re-iterable ``data`` (a list, a DataLoader), counting the completed passes and the
    batches taken in the current pass.

    ``load_state_dict`` makes a fresh stream replay the completed passes and then skip to the position in
    the current one, so a resumed run sees the same batches as an uninterrupted one whenever ``data``,
    rebuilt as at the start (a shuffled DataLoader with ``generator=torch.Generator().manual_seed(s)``),
    orders its passes the same way. A list or tuple is not replayed (its order never changes); a
    single-process map-style DataLoader is replayed through its sampler only, without loading data; any
    other iterable is replayed by iterating it.
    """

    def __init__(self, data: Iterable[Any]) -> None:
        if not isinstance(data, Iterable):
            raise TypeError(f"aux_data must be an iterable of batches, got {type(data).__name__}")
        self.data = data
        self.passes = 0
        self.position = 0
        self._iterator: Iterator[Any] | None = None

    def next(self) -> Any:
        if self._iterator is None:
            self._resume()
        assert self._iterator is not None  # _resume sets it
        batch = next(self._iterator, _END)
        if batch is _END:  # end of a pass: start the next one
            self.passes += 1
            self._iterator, self.position = iter(self.data), 0
            batch = next(self._iterator, _END)
            if batch is _END:
                raise RuntimeError(
                    "FishLeg: aux_data yields no batches (an exhausted iterator cannot be cycled: "
                    "pass a re-iterable such as a DataLoader or a list)"
                )
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.passes = state.get("passes", 0)  # checkpoints from before passes were counted: the first pass
        self.position = state["position"]
        self._iterator = None

    def _resume(self) -> None:
        """Replay the completed passes, then skip ``position`` batches of the current one."""
        if not isinstance(self.data, (list, tuple)):
            for _ in range(self.passes):
                _skip(iter(self.data), None, self._indices_only)
        self._iterator = iter(self.data)
        taken = _skip(self._iterator, self.position, self._indices_only)
        if taken < self.position:
            warn_user(
                f"FishLeg: aux_data has {taken} batches per pass but the checkpoint was taken after "
                f"{self.position} batches of a pass; the resumed run starts a new pass (not an exact resume)"
            )
            self.passes += 1
            self._iterator, self.position = iter(self.data), 0

    @property
    def _indices_only(self) -> bool:
        """Whether skipped batches may be drawn from the sampler without loading them (a single-process
        DataLoader over a map-style dataset, whose iterator draws its indices with ``_next_index``)."""
        data = self.data
        return isinstance(data, DataLoader) and data.num_workers == 0 and not isinstance(data.dataset, IterableDataset)


def _skip(iterator: Iterator[Any], count: int | None, indices_only: bool) -> int:
    """Advance ``iterator`` by ``count`` batches (None: to its end); returns how many it had."""
    advance = iterator._next_index if indices_only else lambda: next(iterator)  # type: ignore[attr-defined]
    taken = 0
    while count is None or taken < count:
        try:
            advance()
        except StopIteration:
            break
        taken += 1
    return taken


BatchFn = Callable[[Any], tuple[Any, Tensor | None]]
"""Maps a batch to (the model's call: a tensor, a tuple of positional inputs, a mapping of keyword inputs or
a ``ModelCall``; the targets or None)."""


def split_batch(
    batch: Any, source: str = "FishLeg: an auxiliary batch", batch_fn: BatchFn | None = None
) -> tuple[Inputs, Tensor | None]:
    """(inputs, targets) of a batch.

    Without ``batch_fn``: an input tensor (targets None); a tuple/list ``(inputs, targets, ...)`` (a
    DataLoader's (x, y) pairs); or a mapping of keyword inputs (a Hugging Face batch: ``input_ids``,
    ``attention_mask``, ...), whose ``"labels"`` entry, if any, is the targets and is not passed to the model.
    With ``batch_fn``: ``batch_fn(batch)`` gives (call, targets), the call being a tensor (one input), a
    tuple (positional inputs), a mapping (keyword inputs) or a ``ModelCall``. ``source`` names the batch in
    errors.
    """
    if batch_fn is not None:
        parts = batch_fn(batch)
        if not isinstance(parts, tuple) or len(parts) != 2:
            raise TypeError(f"{source}: batch_fn must return (model call, targets), got {type(parts).__name__}")
        call, targets = parts
        if targets is not None and not isinstance(targets, Tensor):
            raise TypeError(f"{source}: batch_fn's targets must be a tensor or None, got {type(targets).__name__}")
        return _as_call(call, source), targets
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        targets = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], targets
    if isinstance(batch, Mapping) and all(isinstance(key, str) for key in batch):
        kwargs = {key: value for key, value in batch.items() if key != "labels"}
        labels = batch.get("labels")
        return ModelCall(kwargs=kwargs), labels if isinstance(labels, Tensor) else None
    raise TypeError(
        f"{source} must be an input tensor, a tuple (inputs, targets, ...) or a mapping of keyword inputs, "
        f"got {type(batch).__name__}"
        + (" (whether given as aux_batch or by aux_data)" if source.startswith("FishLeg") else "")
        + "; pass batch_fn= to map other batches to (model call, targets)"
    )


def _as_call(call: Any, source: str) -> Inputs:
    if isinstance(call, (Tensor, ModelCall)):
        return call
    if isinstance(call, tuple):
        return ModelCall(args=call)
    if isinstance(call, Mapping):
        return ModelCall(kwargs=dict(call))
    raise TypeError(
        f"{source}: batch_fn's model call must be a tensor, a tuple of positional inputs, a mapping of "
        f"keyword inputs or a ModelCall, got {type(call).__name__}"
    )
