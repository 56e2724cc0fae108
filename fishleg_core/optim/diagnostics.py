"""Cheap health checks of the learned Q, from quantities the auxiliary update computes anyway.

At each auxiliary update, with u = g/‖g‖, v = Q u and h = F_γ v:

- per group b, the scale of Q along the gradient relative to its start, s_b = ⟨u_b, v_b⟩ / (q₀ ‖u_b‖²);
- the Fisher's size along Q u relative to the damping, f = vᵀF v / (γ vᵀv) = (⟨v, h⟩ − γ⟨v, v⟩) / (γ⟨v, v⟩);
- (``FishLeg.diagnostics`` adds the auxiliary loss A = ½⟨v, h⟩ − ⟨v, u⟩.)

Since F_γ⁻¹ ⪯ I/γ, the optimum Q* = F_γ⁻¹ has uᵀQ*u ≤ 1/γ and A* = −½uᵀF_γ⁻¹u ∈ [−1/(2γ), 0): a healthy A is
negative and above −1/(2γ) once Q has learned (it may start positive: at Q₀ = q₀I, A > 0 where
uᵀF_γu > 2/q₀, common along gradients, which follow the largest curvature). Over the last ``window``
updates the monitor warns (once per kind) when

- Q explodes: a group's uᵀQu/‖u‖² exceeds ``explode`` / γ (no F_γ⁻¹ is that large);
- Q collapses: a group's scale s_b falls below ``collapse`` (steps shrink to nothing);
- the Fisher vanishes, f < ``vanish``: Q → I/γ and A falls towards −1/(2γ), looking healthy, while the
  training loss may be stuck (a softmax before a categorical likelihood on logits, saturated outputs, dead
  units).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fishleg_core._vectors import dot
from fishleg_core._warnings import warn_user
from fishleg_core.model_q import ModelQ


class QMonitor:
    """Records the scale of Q per group and the Fisher-to-damping ratio at each auxiliary update, and
    warns when they show that training fails silently (see the module docstring)."""

    def __init__(
        self,
        q: ModelQ,
        init_scale: float,
        damping: float,
        window: int = 10,
        explode: float = 10.0,
        collapse: float = 1e-3,
        vanish: float = 1e-2,
    ) -> None:
        self.groups = [(group.describe()[0], group.param_names) for group in q.groups]
        self.init_scale, self.damping = init_scale, damping
        self.explode, self.collapse, self.vanish = explode, collapse, vanish
        self.updates = 0
        self.scales: dict[str, float] = {}
        self.fisher_ratio: float | None = None
        self._recent: deque[tuple[dict[str, float], float | None]] = deque(maxlen=window)
        self.warned: set[str] = set()
        self._segment_index: Tensor | None = None

    @torch.no_grad()
    def record(self, u: Mapping[str, Tensor], qu: Mapping[str, Tensor], fisher_qu: Mapping[str, Tensor]) -> None:
        """One auxiliary update's u, v = Q u and h = F_γ v."""
        names = [name for _, group_names in self.groups for name in group_names]
        flat_u = torch.cat([u[name].reshape(-1) for name in names])
        flat_qu = torch.cat([qu[name].reshape(-1) for name in names])
        segments = self._segments(names, qu)
        per_group = torch.stack([flat_u * flat_qu, flat_u * flat_u], 1)
        sums = flat_u.new_zeros(len(self.groups), 2).index_add_(0, segments, per_group)
        values = torch.cat([sums.reshape(-1), torch.stack([dot(qu, fisher_qu), dot(qu, qu)])]).tolist()
        # one synchronisation
        *pairs, vh, vv = values
        self.scales = {
            name: (uv / uu if uu > 0 else float("nan")) / self.init_scale
            for (name, _), uv, uu in zip(self.groups, pairs[::2], pairs[1::2])
        }
        self.fisher_ratio = (vh - self.damping * vv) / (self.damping * vv) if vv > 0 and self.damping > 0 else None
        self.updates += 1
        self._recent.append((self.scales, self.fisher_ratio))
        if len(self._recent) == self._recent.maxlen:
            self._check()

    def _segments(self, names: list[str], like: Mapping[str, Tensor]) -> Tensor:
        """The index of the group of every entry of the flattened vector (made once per device)."""
        device = like[names[0]].device
        if self._segment_index is None or self._segment_index.device != device:
            sizes = [sum(like[name].numel() for name in group_names) for _, group_names in self.groups]
            self._segment_index = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes))
        return self._segment_index

    def state(self) -> dict[str, Any]:
        """The latest measurements and the warnings given so far."""
        return {
            "aux_updates": self.updates,
            "q_scale": dict(self.scales),
            "fisher_to_damping": self.fisher_ratio,
            "warnings": sorted(self.warned),
        }

    def _check(self) -> None:
        recent = list(self._recent)
        bound = self.explode / (self.damping * self.init_scale) if self.damping > 0 else float("inf")
        for name, _ in self.groups:
            scales = [scales[name] for scales, _ in recent]
            if min(scales) > bound:
                self._warn(
                    "explosion",
                    f"Q of block {name!r} grew to {scales[-1]:.3g}× its start along the "
                    f"gradients, above {self.explode:g}/γ where no F_γ⁻¹ reaches: lower aux_lr (λ overshoots)",
                )
            if max(scales) < self.collapse:
                self._warn(
                    "collapse",
                    f"Q of block {name!r} shrank to {scales[-1]:.3g}× its start along the "
                    "gradients: its steps vanish; lower aux_lr (λ overshoots) or raise damping",
                )
        ratios = [ratio for _, ratio in recent]
        if all(ratio is not None and ratio < self.vanish for ratio in ratios):
            self._warn(
                "vanishing Fisher",
                f"the Fisher is {ratios[-1]:.2g}× the damping along Q·g, so FishLeg is "
                "SGD at lr/γ and A falls towards −1/(2γ), looking healthy. If the training loss is not moving: "
                "the likelihood may not match the outputs (a softmax before the categorical likelihood, "
                "which takes logits), or the outputs saturated or the units died (after too large steps: "
                "aux_lr or lr); else damping is large for this model",
            )

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            warn_user(
                f"FishLeg: {message} (after {self.updates} auxiliary updates; optimizer.diagnostics())", RuntimeWarning
            )
