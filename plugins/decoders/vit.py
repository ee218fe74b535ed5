"""A small vision transformer, and its conversion with a block-scrambling key.

Patches are cut exactly as :func:`.blocks.to_blocks` cuts blocks (rows, columns, samples
of a B x B patch, in that order; patches in raster order), so with patch size = block size
a key converts the model exactly (Kiya lab; see ``shared/REFERENCE.md``):

- patch embedding: input column j of the converted model is column ``pi[j]`` of the plain
  one (negated where the key flips, with the bias taking the flipped columns' sum: a flipped
  value is 1 - x on the [0, 1] scale the model reads);
- position embeddings: token i of the converted model has the embedding of plain token
  ``sigma[i]``; the class token's is kept.

Everything after the embedding is the plain model's (attention and the class-token head
do not depend on the order of the tokens), so predictions on scrambled images equal the
plain model's on plain images. Imports torch: load this module only where torch is.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Config:
    image: int = 32  # rows = columns
    patch: int = 4
    channels: int = 1
    dim: int = 32
    depth: int = 3
    heads: int = 4
    mlp: int = 64
    classes: int = 10

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class ViT(nn.Module):
    def __init__(self, cfg: Config, dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.patch * cfg.patch * cfg.channels, cfg.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos = nn.Parameter(torch.randn(1, cfg.tokens + 1, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.mlp, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(N, rows, columns, samples) on the [0, 1] scale -> (N, tokens, B*B*S)."""
        n, r, c, s = x.shape
        b = self.cfg.patch
        return x.reshape(n, r // b, b, c // b, b, s).permute(0, 1, 3, 2, 4, 5).reshape(n, -1, b * b * s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(self.patches(x))
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.norm(self.encoder(t)[:, 0]))


def convert(model: ViT, key) -> ViT:
    """A copy of ``model`` for images scrambled with ``key`` (a :class:`.blocks.BlockKey`
    of the model's geometry, block size = patch size)."""
    cfg = model.cfg
    if key.block != cfg.patch or key.grid != (cfg.image // cfg.patch,) * 2 or key.samples != cfg.channels:
        raise ValueError(f"the key is for {key.block}-pixel blocks on a {key.grid} grid of {key.samples} "
                         f"sample(s); the model takes {cfg.patch}-pixel patches of {cfg.image} x {cfg.image}")
    out = copy.deepcopy(model)  # same dtype and device
    dev = model.embed.weight.device
    pi = torch.as_tensor(np.asarray(key.pi), dtype=torch.long, device=dev)
    sigma = torch.as_tensor(np.asarray(key.sigma), dtype=torch.long, device=dev)
    with torch.no_grad():
        w, b = model.embed.weight[:, pi].clone(), model.embed.bias.clone()
        if key.flip is not None:
            flipped = torch.as_tensor(np.asarray(key.flip), dtype=torch.bool, device=dev)
            b += w[:, flipped].sum(dim=1)
            w[:, flipped] = -w[:, flipped]
        out.embed.weight.copy_(w)
        out.embed.bias.copy_(b)
        out.pos.copy_(torch.cat([model.pos[:, :1], model.pos[:, 1:][:, sigma]], dim=1))
    return out.eval()


def normalize(frames: np.ndarray, stored: tuple[int, int], dtype=torch.float32) -> torch.Tensor:
    """Pixel values (N, rows, columns, samples) -> the model's [0, 1] scale over the stored
    range (computed in float64, then rounded once to ``dtype``)."""
    lo, hi = stored
    return torch.as_tensor((frames.astype(np.float64) - lo) / float(hi - lo)).to(dtype)
