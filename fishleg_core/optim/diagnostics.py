"""Cheap health checks of the learned Q, from quantities the auxiliary update computes anyway.

At each auxiliary update, with u = g/‖g‖, v = Q u and h = F_γ v:

- per group b, the scale of Q along the gradient relative to its start, s_b = ⟨u_b, v_b⟩ / (q₀ ‖u_b‖²);
- the Fisher's size along Q u relative to the damping, f = vᵀF v / (γ vᵀv) = (⟨v, h⟩ − γ⟨v, v⟩) / (γ⟨v, v⟩);
- (``FishLeg.diagnostics`` adds the auxiliary loss A = ½⟨v, h⟩ − ⟨v, u⟩.)

Since F_γ⁻¹ ⪯ I/γ, the optimum Q* = F_γ⁻¹ has uᵀQ*u ≤ 1/γ and A* = −½uᵀF_γ⁻¹u ∈ [−1/(2γ), 0): a healthy A is
negative and above −1/(2γ) once Q has learned (it may start positive: at Q₀ = q₀I, A > 0 where
uᵀF_γu > 2/q₀, common along gradients, which follow the largest curvature). The monitor warns (once per
kind, a ``RuntimeWarning``) when

- Q explodes: at any single update, a group's uᵀQu/‖u‖² exceeds ``explode`` / γ (no F_γ⁻¹ is that large;
  no history needed). ``FishLeg`` also checks Q as each update left it, from g and the Q·g its step takes
  anyway (``check_updated``), so a λ step that blows Q up is named before θ moves with it; ``blowup`` keeps
  it for ``FishLeg`` to blame a non-finite gradient on λ;
- Q collapses: over the last ``window`` updates, a group's scale s_b stays below ``collapse``;
- the Fisher vanishes: over the last ``window`` updates f < ``vanish``: Q → I/γ and A falls towards
  −1/(2γ), looking healthy, while the training loss may be stuck (a softmax before a categorical likelihood
  on logits, saturated outputs, dead units);
- A stays positive: after ``positive_after`` updates, the mean A of the last ``window`` is still > 0, so Q
  is too large along the gradients (A > 0 exactly where ½vᵀF_γv > uᵀv).

A group whose u_b is 0 (its gradient vanished: dead units, or parameters the loss does not use) has no
scale: ``q_scale`` gives None for it and ``q_scale_missing`` the reason, never NaN.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

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
        positive_after: int = 100,
    ) -> None:
        self.groups = [(group.describe()[0], group.param_names) for group in q.groups]
        self.init_scale, self.damping = init_scale, damping
        self.explode, self.collapse, self.vanish = explode, collapse, vanish
        self.positive_after = positive_after
        self.updates = 0
        self.scales: dict[str, float | None] = {}
        self.missing: dict[str, str] = {}
        self.fisher_ratio: float | None = None
        self.blowup: tuple[str, float, int] | None = None
        """(group, scale, update) of the largest scale above ``explode``/γ at the latest update, else None."""
        self._recent: deque[tuple[dict[str, float | None], float | None, float | None]] = deque(maxlen=window)
        self.warned: set[str] = set()
        self._group_sizes: list[int] | None = None

    @torch.no_grad()
    def record(
        self,
        u: Mapping[str, Tensor],
        qu: Mapping[str, Tensor],
        fisher_qu: Mapping[str, Tensor],
        aux_loss: Tensor | None = None,
    ) -> None:
        """One auxiliary update's u, v = Q u, h = F_γ v and (optionally) its auxiliary loss A."""
        loss = [aux_loss.detach().reshape(()).to(dtype=torch.float64)] if aux_loss is not None else []
        totals = torch.stack([dot(qu, fisher_qu), dot(qu, qu)])
        values = torch.cat(
            [self._group_dots(u, qu).reshape(-1).to(torch.float64), totals.to(torch.float64)]
            + [t.reshape(1) for t in loss]
        ).tolist()  # one synchronisation
        a = values.pop() if loss else None
        *pairs, vh, vv = values
        self.scales, self.missing = {}, {}
        for (name, _), uv, uu in zip(self.groups, pairs[::2], pairs[1::2]):
            self.scales[name] = uv / uu / self.init_scale if uu > 0 else None
            if uu <= 0:
                self.missing[name] = (
                    f"its gradient was exactly 0 at auxiliary update {self.updates + 1} (dead units, or parameters "
                    "the loss does not use): no direction to measure Q along"
                )
        self.fisher_ratio = (vh - self.damping * vv) / (self.damping * vv) if vv > 0 and self.damping > 0 else None
        self.updates += 1
        self._recent.append((self.scales, self.fisher_ratio, a))
        self._check_explosion(self.scales)
        if len(self._recent) == self._recent.maxlen:
            self._check()

    def _group_dots(self, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
        """Per group [⟨a_b, b_b⟩, ‖a_b‖²], of shape (groups, 2): the products of the flattened vectors, split by
        group and summed (a split beats ``index_add_``'s segmented sum, which measured slower on CPU)."""
        names = [name for _, group_names in self.groups for name in group_names]
        flat_a = torch.cat([a[name].reshape(-1) for name in names])
        flat_b = torch.cat([b[name].reshape(-1) for name in names])
        products = torch.stack([flat_a * flat_b, flat_a * flat_a], 1)
        return torch.stack([part.sum(0) for part in products.split(self._sizes(a))])

    def _sizes(self, like: Mapping[str, Tensor]) -> list[int]:
        """The number of entries of every group (counted once)."""
        if self._group_sizes is None:
            self._group_sizes = [sum(like[name].numel() for name in group_names) for _, group_names in self.groups]
        return self._group_sizes

    def state(self) -> dict[str, Any]:
        """The latest measurements and the warnings given so far."""
        return {
            "aux_updates": self.updates,
            "q_scale": dict(self.scales),
            **({"q_scale_missing": dict(self.missing)} if self.missing else {}),
            "fisher_to_damping": self.fisher_ratio,
            "warnings": sorted(self.warned),
        }

    @torch.no_grad()
    def check_updated(self, g: Mapping[str, Tensor], qg: Mapping[str, Tensor]) -> None:
        """The explosion check on Q as the latest update left it, from g and Q·g (the product the step takes
        anyway): a λ step that blows Q up is named before θ moves with it."""
        values = self._group_dots(g, qg).reshape(-1).tolist()  # one synchronisation
        scales = {
            name: uv / uu / self.init_scale
            for (name, _), uv, uu in zip(self.groups, values[::2], values[1::2])
            if uu > 0 and math.isfinite(uv)
        }
        self._check_explosion(scales)

    def blame(self) -> str | None:
        """Why a non-finite gradient now is λ's doing, or None: a group's Q exploded at the latest update."""
        if self.blowup is None:
            return None
        name, scale, update = self.blowup
        return (
            f"λ blew up: at auxiliary update {update}, Q of block {name!r} reached {scale:.3g}× its start along "
            f"the gradient (uᵀQu/‖u‖² = {scale * self.init_scale:.3g}, above {self.explode:g}/γ = "
            f"{self._bound():.3g}), so the step θ ← θ − lr·Q·g was too large; lower aux_optimizer lr"
        )

    def _bound(self) -> float:
        """``explode``/γ: uᵀQu/‖u‖² above it is beyond every F_γ⁻¹ ⪯ I/γ."""
        return self.explode / self.damping if self.damping > 0 else float("inf")

    def _check_explosion(self, scales: Mapping[str, float | None]) -> None:
        above = {
            name: scale
            for name, scale in scales.items()
            if scale is not None and scale * self.init_scale > self._bound()
        }
        if not above:
            self.blowup = None
            return
        name = max(above, key=lambda key: above[key])
        self.blowup = (name, above[name], self.updates)
        self._warn(
            "explosion",
            f"Q of block {name!r} grew to {above[name]:.3g}× its start along the gradients, above "
            f"{self.explode:g}/γ where no F_γ⁻¹ reaches: lower aux_optimizer lr (λ overshoots)",
        )

    def _check(self) -> None:
        recent = list(self._recent)
        for name, _ in self.groups:
            scales = [scales[name] for scales, _, _ in recent]
            if all(scale is not None for scale in scales) and max(cast(list[float], scales)) < self.collapse:
                self._warn(
                    "collapse",
                    f"Q of block {name!r} shrank to {scales[-1]:.3g}× its start along the "
                    "gradients: its steps vanish; lower aux_optimizer lr (λ overshoots) or raise damping",
                )
        ratios = [ratio for _, ratio, _ in recent]
        if all(ratio is not None and ratio < self.vanish for ratio in ratios):
            self._warn(
                "vanishing Fisher",
                f"the Fisher is {ratios[-1]:.2g}× the damping along Q·g, so FishLeg is "
                "SGD at lr/γ and A falls towards −1/(2γ), looking healthy. If the training loss is not moving: "
                "the likelihood may not match the outputs (a softmax before the categorical likelihood, "
                "which takes logits), or the outputs saturated or the units died (after too large steps: "
                "aux_optimizer lr or lr); else damping is large for this model",
            )
        losses = [loss for _, _, loss in recent]
        if self.updates >= self.positive_after and all(loss is not None for loss in losses):
            mean = statistics.fmean(cast(list[float], losses))
            if mean > 0:
                self._warn(
                    "positive auxiliary loss",
                    f"the auxiliary loss A is still positive (mean {mean:+.3g} over the last {len(losses)} "
                    "updates): Q has not learned F_γ⁻¹ along the gradients, where a healthy A is negative, in "
                    "[−1/(2γ), 0). A > 0 where ½(Qu)ᵀF_γ(Qu) > uᵀQu: Q is too large along the gradients. Start it "
                    "smaller (q's init_scale), or let λ learn faster (a larger aux_optimizer lr, a smaller aux_every)",
                )

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            warn_user(
                f"FishLeg: {message} (after {self.updates} auxiliary update{'' if self.updates == 1 else 's'}; "
                "optimizer.diagnostics())",
                RuntimeWarning,
            )
