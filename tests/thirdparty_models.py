"""Optional third-party packages for the tests, and stand-ins with their layouts when they are absent."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn


def import_optional(name: str) -> ModuleType:
    """The package ``name``, or skip the test naming why it cannot be imported. Any import error skips, not
    only ImportError: PyPI's torchvision wheel is a CUDA build, which next to the CPU torch fails with a
    RuntimeError, and so do the packages that import it (timm)."""
    try:
        return importlib.import_module(name)
    except Exception as error:  # any failure to import means the package is unusable here
        pytest.skip(f"{name} cannot be imported: {type(error).__name__}: {str(error)[:200]}")


class StandInConv1D(nn.Module):
    """Hugging Face's ``transformers.pytorch_utils.Conv1D``: y = x W + b, W of shape (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


StandInConv1D.__module__ = "transformers.pytorch_utils"
StandInConv1D.__qualname__ = StandInConv1D.__name__ = "Conv1D"


class StandInGPTBlock(nn.Module):
    """GPT-2's attention projections and MLP (c_attn, c_proj, c_fc, mlp.c_proj) on (B, T, E) inputs."""

    def __init__(self, embed: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = StandInConv1D(3 * embed, embed)
        self.c_proj = StandInConv1D(embed, embed)
        self.c_fc = StandInConv1D(4 * embed, embed)
        self.mlp_proj = StandInConv1D(embed, 4 * embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, E = x.shape
        q, k, v = self.c_attn(x).split(E, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        weights = torch.softmax(q @ k.mT / (E // self.heads) ** 0.5, dim=-1)
        x = x + self.c_proj((weights @ v).transpose(1, 2).reshape(B, T, E))
        return x + self.mlp_proj(torch.tanh(self.c_fc(x)))


def load_example(name: str) -> ModuleType:
    """The example ``docs/examples/<name>.py`` as a module."""
    folder = Path(__file__).resolve().parents[1] / "docs" / "examples"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # the examples import example_common from their folder
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fishleg_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module
