"""A small pre-norm Vision Transformer (Dosovitskiy et al., ICLR 2021) for zoos of ViTs."""
import torch
import torch.nn.functional as F
from torch import nn

from deepalign.models._checks import check_sizes


class Attention(nn.Module):
    """Multi-head self-attention with q, k and v packed in one projection (``qkv``).

    ``qkv`` maps the stream (width ``D``) to ``[q | k | v]`` (``3 D`` outputs); each of
    q, k, v is split into ``heads`` heads of ``D / heads`` dimensions, attended with
    ``F.scaled_dot_product_attention``, and the heads are concatenated again for ``proj``.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : (N, T, D) → (N, T, D)."""
        n, t, d = x.shape
        q, k, v = (part.view(n, t, self.heads, d // self.heads).transpose(1, 2)
                   for part in self.qkv(x).split(d, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """``x + attn(norm1(x))``, then ``x + fc2(gelu(fc1(norm2(x))))``."""

    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding, class token, learned positions, pre-norm blocks, a linear head.

    Parameters are named ``patch.weight``/``patch.bias`` (a convolution with stride = patch
    size), ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + patches, D),
    ``blocks.{i}.norm1.*``, ``...attn.qkv.*``, ``...attn.proj.*``, ``...norm2.*``,
    ``...fc1.*``, ``...fc2.*``, ``norm.*`` and ``head.*``; the head reads the class token.

    Parameters
    ----------
    in_channels : int
    image_size : (int, int)
        Must be divisible by ``patch_size``.
    patch_size : int
    width : int
        The residual stream's width ``D``.
    depth : int
        Number of blocks.
    heads : int
        Attention heads (``D / heads`` dimensions each).
    hidden : int
        Width of each block's MLP.
    out_features : int
    """

    def __init__(self, in_channels: int = 1, image_size=(28, 28), patch_size: int = 7,
                 width: int = 64, depth: int = 2, heads: int = 4, hidden: int = 128,
                 out_features: int = 10):
        super().__init__()
        in_channels, patch_size, width, depth, heads, hidden, out_features = check_sizes(
            "ViT sizes", [in_channels, patch_size, width, depth, heads, hidden, out_features])
        h, w = check_sizes("image_size", image_size)
        if h % patch_size or w % patch_size:
            raise ValueError(f"image_size {(h, w)} must be divisible by patch_size {patch_size}")
        tokens = 1 + (h // patch_size) * (w // patch_size)
        self.patch = nn.Conv2d(in_channels, width, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.blocks = nn.Sequential(*(Block(width, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_features)
        self.config = {"arch": "vit", "in_channels": in_channels, "image_size": [h, w],
                       "patch_size": patch_size, "width": width, "depth": depth,
                       "heads": heads, "hidden": hidden, "out_features": out_features}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : (N, in_channels, H, W) → logits (N, out_features)."""
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(len(x), -1, -1)
        h = self.blocks(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        return self.head(self.norm(h)[:, 0])
