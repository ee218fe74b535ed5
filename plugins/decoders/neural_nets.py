"""The networks of the experimental neural cipher (imports torch: load only where it is).

All take and give (N, 1, 32, 32) float tensors on the [0, 1] scale of an 8-bit image:

- :class:`Encoder`: image -> the encoder image (sigmoid), stored as 8 bits and then mixed
  with the key (:mod:`.chaos`);
- :class:`Decoder`: the unmixed encoder image -> the restored image (the reconstruction
  network of ``neural-restore``; the same shape is the attacker's network in the evaluation);
- :class:`RoiNet`: an image (encrypted or plain) -> the region of interest as
  (top, left, bottom, right) / 32, bottom and right exclusive.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE = 32


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class Encoder(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(_conv(1, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


class Decoder(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(_conv(1, width), nn.ReLU(), _conv(width, width), nn.ReLU(),
                                 _conv(width, width), nn.ReLU(), _conv(width, 1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(y))


class RoiNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(_conv(1, width, 2), nn.ReLU(), _conv(width, 2 * width, 2), nn.ReLU(),
                                      _conv(2 * width, 2 * width, 2), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (IMAGE // 8) ** 2, 64), nn.ReLU(),
                                  nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.features(x)))


def boxes(pred: torch.Tensor) -> torch.Tensor:
    """(N, 4) network output -> integer boxes (top, left, bottom, right), bottom/right
    exclusive, at least one pixel, inside the image."""
    b = torch.round(pred.detach().float() * IMAGE).clamp(0, IMAGE).long()
    top, left = torch.minimum(b[:, 0], b[:, 2]).clamp(max=IMAGE - 1), torch.minimum(b[:, 1], b[:, 3]).clamp(max=IMAGE - 1)
    bottom = torch.maximum(torch.maximum(b[:, 0], b[:, 2]), top + 1)
    right = torch.maximum(torch.maximum(b[:, 1], b[:, 3]), left + 1)
    return torch.stack([top, left, bottom, right], 1)
