"""Per-step checks of FishLeg's training that the auxiliary update cannot see: training that has stopped
(most recent steps skipped for non-finite gradients) and blocks whose gradient stays exactly 0 (dead units).

- Stopped: more than half of the last ``window`` steps were skipped. Once the loss or its gradient overflows
  at the current parameters, every later step meets the same parameters and is skipped too: skipping does
  not recover the run. One ``RuntimeWarning`` says so; ``stopped`` stays True.
- Dead: every parameter of a block has a gradient, and all of them have been exactly 0 for ``dead_after``
  consecutive steps (a ReLU layer whose units never fire, typically after too large a step). Parameters
  without ``.grad`` (unused by the loss) are not counted. The per-block run lengths are kept on the device
  and read every ``dead_after`` steps, so the check costs one synchronisation per ``dead_after`` steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fishleg_core._warnings import warn_user


class StepHealth:
    """Watches each FishLeg step: ``skipped(bool)`` after the non-finite check, ``gradients(grads)`` with the
    ``.grad`` of each parameter by name (None where it has none); see the module docstring."""

    def __init__(self, blocks: Sequence[tuple[str, tuple[str, ...]]], window: int = 20, dead_after: int = 5) -> None:
        self.blocks = list(blocks)
        self.window, self.dead_after = window, dead_after
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._zero_runs: Tensor | None = None
        self._steps = 0
        self.stopped = False
        self.dead: list[str] = []
        self.warned: set[str] = set()

    def skipped(self, skipped: bool, cause: str | None = None) -> None:
        """Record whether this step was skipped; ``cause``: what made its gradient non-finite, if known."""
        self._outcomes.append(skipped)
        count = sum(self._outcomes)
        if len(self._outcomes) == self.window and 2 * count > self.window and not self.stopped:
            self.stopped = True
            self._warn(
                "training stopped",
                f"FishLeg: training has stopped: {count} of the last {self.window} steps were skipped for "
                "non-finite gradients"
                + (f" ({cause})" if cause else "")
                + ". The parameters no longer change and skipping will not recover the run: restart it from a "
                "checkpoint before the first skipped step with a lower lr or aux_lr (nonfinite='raise' stops "
                "at the first non-finite gradient)",
            )

    @torch.no_grad()
    def gradients(self, grads: Mapping[str, Tensor | None]) -> None:
        """Count, per block, the consecutive steps whose gradient was exactly 0; warn for dead blocks."""
        device = next((g.device for g in grads.values() if g is not None), None)
        zero = []
        for _, names in self.blocks:
            block = [grads.get(name) for name in names]
            present = [g for g in block if g is not None and g.numel()]
            if any(g is None for g in block) or not present:  # a parameter the loss does not use: not dead
                zero.append(torch.zeros((), dtype=torch.bool, device=device))
            else:
                zero.append(torch.stack([g.abs().amax() for g in present]).amax().eq(0))
        flags = torch.stack(zero).long()  # on the device: no synchronisation
        self._zero_runs = flags if self._zero_runs is None else (self._zero_runs + 1) * flags
        self._steps += 1
        if self._steps % self.dead_after:
            return
        runs = self._zero_runs.tolist()
        self.dead = [name for (name, _), run in zip(self.blocks, runs) if run >= self.dead_after]
        if self.dead:
            self._warn(
                "dead units",
                f"FishLeg: the gradient of block{'s' if len(self.dead) > 1 else ''} "
                f"{', '.join(map(repr, self.dead))} has been exactly 0 for {self.dead_after} steps or more: "
                "their units are dead (ReLUs that no longer fire, typically after too large a step: lower lr or "
                "aux_lr) and they no longer learn",
            )

    def state(self) -> dict[str, Any]:
        """Whether training has stopped, and the blocks whose gradient is dead."""
        return {"training_stopped": self.stopped, "dead_blocks": list(self.dead)}

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            warn_user(f"{message} (optimizer.diagnostics())", RuntimeWarning)
