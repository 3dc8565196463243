"""Data sets: toy 2-D ones, deterministic for a given seed (each call uses its own generator),
and the 8x8 handwritten digits, read from a small file shipped beside this module.

The coordinates are the usual ``sklearn.datasets.make_moons`` ones (not standardized): the upper
moon is the unit half-circle centred at (0, 0), the lower one is centred at (1, 0.5) and flipped,
so the data lie in about ``[-1, 2] x [-0.5, 1]``. With ``noise=0.05`` a perfect model has a
negative log-likelihood of about 0.3 nats.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")
DIGIT_LEVELS = 17  # grey levels 0..16


def two_moons(n: int, noise: float = 0.05, seed: int = 0) -> Tensor:
    """``n`` points of two interleaving half-circles plus Gaussian noise of std ``noise``.

    Each point picks a moon with probability 1/2 and an angle ``t ~ Uniform(0, pi)``:
    upper ``(cos t, sin t)``, lower ``(1 - cos t, 0.5 - sin t)``. The points are i.i.d., so any
    slice of the result (e.g. a held-out part) follows the same distribution.
    """
    generator = torch.Generator().manual_seed(seed)
    t = math.pi * torch.rand(n, generator=generator)
    lower = torch.rand(n, generator=generator) < 0.5
    x = torch.where(lower, 1.0 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    points = torch.stack([x, y], dim=-1)
    return points + noise * torch.randn(n, 2, generator=generator)


def eight_gaussians(n: int, std: float = 0.1, seed: int = 0) -> Tensor:
    """``n`` points from a mixture of 8 Gaussians (std ``std``) on the circle of radius 2."""
    generator = torch.Generator().manual_seed(seed)
    angle = (2 * math.pi / 8) * torch.randint(8, (n,), generator=generator)
    centres = 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    return centres + std * torch.randn(n, 2, generator=generator)


def digits(split: str = "train") -> Tensor:
    """The 8x8 handwritten digits: ``(n, 64)`` integer grey levels ``0..16`` (torch.int64).

    1,797 images (UCI's "Optical Recognition of Handwritten Digits", test set, as bundled with
    scikit-learn; 43 writers, about 180 images per digit), rows of 64 pixels in reading order.
    The split is fixed, by position: every fifth image (rows 4, 9, 14, ...) is ``"test"`` (359
    images), the others are ``"train"`` (1,438); ``"all"`` is all of them in file order. The
    file cycles through the digits, so both splits hold every digit about equally often.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not DIGITS_FILE.is_file():
        raise FileNotFoundError(f"{DIGITS_FILE}: missing (it ships with the digits part)")
    table = np.loadtxt(DIGITS_FILE, delimiter=",", dtype=np.int64)  # 64 pixels, then the label
    images = torch.from_numpy(table[:, :64])
    if split == "all":
        return images
    test = torch.arange(len(images)) % 5 == 4
    return images[test] if split == "test" else images[~test]
