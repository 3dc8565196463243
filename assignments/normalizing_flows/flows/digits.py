"""A flow for the 8x8 digits: dequantized images in [0, 1)^64, scored in bits per dimension.

Read from the data towards the base (the direction of the density, ``inverse``), the flow is

    logit  ->  K x [ActNorm -> Invertible1x1 -> AffineCoupling]  ->  N(0, I_64)

The logit maps ``(0, 1)`` onto R, where a Gaussian base can reach. In each block, ActNorm
standardizes the features from the first batch on, the 1x1 convolution (here a 64 x 64 LU
matrix) mixes them so that the next coupling splits a different combination, and the coupling
transforms half of them conditioned on the other half; a checkerboard mask and its complement
alternate. As a :class:`~flows.composition.Sequential` (``forward`` applies its first flow
first, from the base towards the data) the list is the reverse of the reading above.
"""

from __future__ import annotations

import torch

from flows.base import Flow
from flows.composition import Sequential
from flows.coupling import AffineCoupling
from flows.dequantize import Logit
from flows.glow import ActNorm, Invertible1x1

FEATURES = 64  # 8 x 8 pixels


def checkerboard(flip: bool) -> torch.Tensor:
    """The 0/1 checkerboard over the 8 x 8 pixels, as a ``(64,)`` mask (its complement if
    ``flip``)."""
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    board = ((rows + cols) % 2 == int(flip)).flatten()
    return board.to(torch.get_default_dtype())


def make_flow() -> Flow:
    """The flow that :func:`flows.train.train` fits to dequantized digits."""
    raise NotImplementedError("not implemented yet: digits.make_flow")
