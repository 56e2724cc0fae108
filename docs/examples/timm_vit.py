"""FishLeg on a tiny ViT from timm (or, where timm cannot be imported, a torch.nn ViT with timm's layout and
module names), from random initialisation on synthetic images.

Run from the repository root: ``PYTHONPATH=. python docs/examples/timm_vit.py [--steps 100]``.
timm's fused q, k, v projection ``attn.qkv`` is one nn.Linear; ``bands={"*.qkv": 3}`` gives each projection
its own Kronecker factors, as ``nn.MultiheadAttention`` gets them.
"""

from __future__ import annotations

import functools
import warnings

import torch
from example_common import Comparison, arguments, compare, image_batches
from torch import nn

import fishleg_core as fl

IMAGE, PATCH, EMBED, DEPTH, HEADS, CLASSES = 16, 4, 16, 2, 2, 4


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimmLayoutViT(nn.Module):
    """timm's VisionTransformer layout (patch_embed.proj, cls_token, pos_embed, blocks.i.attn.qkv, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(EMBED)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED))
        self.pos_embed = nn.Parameter(torch.randn(1, (IMAGE // PATCH) ** 2 + 1, EMBED) * 0.02)
        self.blocks = nn.Sequential(*[Block(EMBED, HEADS) for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(EMBED)
        self.head = nn.Linear(EMBED, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def tiny_vit() -> nn.Module:
    """timm's ``vit_tiny_patch16_224`` shrunk to 16×16 images, or the torch.nn stand-in."""
    try:
        import timm
    except Exception:  # timm imports torchvision, whose CUDA wheel fails next to a CPU torch
        return TimmLayoutViT()
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=IMAGE,
        patch_size=PATCH,
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        num_classes=CLASSES,
    )


# The tuning guide's settings for a ViT (docs/guide/tuning.md).
ADAM_RATES = (3e-3, 1e-2, 3e-2)
FISHLEG = {
    "lr": 0.3,
    "damping": 0.1,
    "aux_lr": 1e-3,
    "aux_every": 1,
    "momentum": 0.9,
    # norms, the class token and the position embedding: Adam at Adam's best rate, not a diagonal Q
    "fallback": {"optimizer": "adam", "params": ["*norm*", "cls_token", "pos_embed"], "lr": 1e-2},
}
BATCH = 16


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def build(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return tiny_vit()


def train_batches(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return image_batches(8, BATCH, CLASSES, IMAGE, seed=10 * seed)


def make_fishleg(model: nn.Module, seed: int = 0, **overrides: object) -> fl.FishLeg:
    aux = [images for images, _ in image_batches(4, BATCH, CLASSES, IMAGE, seed=10 * seed + 1)]
    with warnings.catch_warnings():  # cls_token and pos_embed get their own diagonal blocks, as they should
        warnings.filterwarnings("ignore", message="each of these trainable parameters gets its own diagonal block")
        return fl.FishLeg(model, "categorical", aux_data=aux, bands={"*.qkv": 3}, **{**FISHLEG, **overrides})


def main(steps: int = 100, seed: int = 0, fishleg: dict | None = None, adam: bool = True) -> Comparison:
    """Adam at each of ``ADAM_RATES`` (unless not ``adam``) and FishLeg at ``FISHLEG`` updated by ``fishleg``."""
    optimizer = functools.partial(make_fishleg, seed=seed, **(fishleg or {}))
    rates = ADAM_RATES if adam else ()
    comparison = compare(functools.partial(build, seed), optimizer, train_batches(seed), loss_fn, steps, rates)
    source = "timm" if type(build()).__module__.startswith("timm") else "torch.nn with timm's layout"
    print(comparison.report(f"ViT ({source}), {IMAGE}x{IMAGE} images", steps))
    return comparison


if __name__ == "__main__":
    main(**vars(arguments(__doc__ or "")))
