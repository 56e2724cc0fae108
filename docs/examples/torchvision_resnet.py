"""FishLeg on torchvision's ResNet-18 (or, where torchvision cannot be imported, a torch.nn ResNet-18 with
torchvision's layout and module names), from random initialisation on synthetic images.

Run from the repository root: ``PYTHONPATH=. python docs/examples/torchvision_resnet.py [--steps 100]``;
``--memory``: Q's size and the checkpoint's on the full-size ResNet-18 under the default and full factors.
"""

from __future__ import annotations

import functools
import io
import sys

import torch
from example_common import Comparison, arguments, compare, image_batches
from torch import nn

import fishleg_core as fl


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionLayoutResNet(nn.Module):
    """torchvision's ``resnet18`` (conv1, bn1, layer1-4 of two BasicBlocks, fc), with ``width`` channels in
    the first stage (64 in ResNet-18)."""

    def __init__(self, num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        inplanes = width
        for index, planes in enumerate(widths):
            stride = 1 if index == 0 else 2
            setattr(
                self,
                f"layer{index + 1}",
                nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)),
            )
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, width: int = 64) -> nn.Module:
    """torchvision's ``resnet18`` (at width 64), or the torch.nn stand-in."""
    if width == 64:
        try:
            from torchvision.models import resnet18 as torchvision_resnet18
        except Exception:  # PyPI's torchvision is a CUDA build, which fails to import next to a CPU torch
            pass
        else:
            return torchvision_resnet18(num_classes=num_classes)
    return TorchvisionLayoutResNet(num_classes, width)


# The tuning guide's settings for a ResNet with BatchNorm (docs/guide/tuning.md).
FISHLEG = {"lr": 0.05, "damping": 0.1, "aux_lr": 1e-3, "aux_every": 1, "momentum": 0.9}
ADAM_RATES = (3e-4, 1e-3, 3e-3)
WIDTH, CLASSES, SIZE, BATCH = 8, 4, 16, 16


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def build(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return resnet18(num_classes=CLASSES, width=WIDTH)


def make_fishleg(model: nn.Module, seed: int = 0, **overrides: object) -> fl.FishLeg:
    aux = [images for images, _ in image_batches(4, BATCH, CLASSES, SIZE, seed=10 * seed + 1)]
    return fl.FishLeg(model, "categorical", aux_data=aux, **{**FISHLEG, **overrides})


def train_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return image_batches(8, BATCH, CLASSES, SIZE, seed=10 * seed)


def main(steps: int = 100, seed: int = 0, fishleg: dict | None = None, adam: bool = True) -> Comparison:
    """Adam at each of ``ADAM_RATES`` (unless not ``adam``) and FishLeg at ``FISHLEG`` updated by ``fishleg``."""
    optimizer = functools.partial(make_fishleg, seed=seed, **(fishleg or {}))
    rates = ADAM_RATES if adam else ()
    comparison = compare(functools.partial(build, seed), optimizer, train_batches(seed), loss_fn, steps, rates)
    print(comparison.report(f"ResNet-18 layout, width {WIDTH}, {SIZE}x{SIZE} images", steps))
    return comparison


def memory_report() -> list[tuple[str, int, float, float, float]]:
    """(Q, auxiliary parameters, ÷ model parameters, optimizer state_dict MB, ÷ model state_dict) of the
    full-size ResNet-18 (1000 classes) after one step, with the default Q and with every factor full."""

    def saved_bytes(state: object) -> int:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.tell()

    rows = []
    for label, forms in [("default", None), ("full factors", {"default": {"form": "kron", "max_size": None}})]:
        torch.manual_seed(0)
        model = resnet18()
        optimizer = fl.FishLeg(model, "categorical", lr=0.01, aux_every=1, forms=forms)
        images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 1000, (2,))
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step(aux_batch=images)
        aux = sum(p.numel() for p in optimizer.q.parameters())
        params = sum(p.numel() for p in model.parameters())
        checkpoint = saved_bytes(optimizer.state_dict())
        rows.append((label, aux, aux / params, checkpoint / 2**20, checkpoint / saved_bytes(model.state_dict())))
        print(
            f"{label}: {aux:,} auxiliary parameters ({aux / params:.2f}× the model's {params:,}), optimizer "
            f"state_dict {checkpoint / 2**20:.1f} MB ({rows[-1][-1]:.2f}× the model's state_dict)"
        )
    return rows


if __name__ == "__main__":
    if "--memory" in sys.argv:
        memory_report()
    else:
        main(**vars(arguments(__doc__ or "")))
