"""The auxiliary minibatch stream of FishLeg: cycled, and resumable at the same position."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from torch import Tensor

_END = object()


class CyclicBatches:
    """Cycles through a re-iterable ``data`` (a list, a DataLoader), counting the batches taken in the
    current pass; ``load_state_dict`` makes a fresh stream skip that many, so a resumed run sees the same
    batches as an uninterrupted one whenever ``data`` iterates in the same order."""

    def __init__(self, data: Iterable[Any]) -> None:
        if not isinstance(data, Iterable):
            raise TypeError(f"aux_data must be an iterable of batches, got {type(data).__name__}")
        self.data = data
        self.position = 0
        self._iterator: Iterator[Any] | None = None

    def next(self) -> Any:
        if self._iterator is None:
            self._start(skip=self.position)
        batch = next(self._iterator, _END)
        if batch is _END:  # end of a pass: start the next one
            self._start(skip=0)
            batch = next(self._iterator, _END)
            if batch is _END:
                raise RuntimeError("FishLeg: aux_data yields no batches (an exhausted iterator cannot be cycled: "
                                   "pass a re-iterable such as a DataLoader or a list)")
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]
        self._iterator = None

    def _start(self, skip: int) -> None:
        self._iterator = iter(self.data)
        self.position = 0
        for _ in range(skip):
            if next(self._iterator, _END) is _END:
                self._iterator = iter(self.data)
                self.position = 0
                return
            self.position += 1


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """(inputs, targets) of a batch given as an input tensor (targets None) or as a tuple/list
    ``(inputs, targets, ...)`` (a DataLoader's (x, y) pairs)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        targets = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], targets
    raise TypeError(
        "FishLeg: an auxiliary batch must be an input tensor or a tuple (inputs, targets, ...), whether given as "
        f"aux_batch or by aux_data; got {type(batch).__name__}"
    )
