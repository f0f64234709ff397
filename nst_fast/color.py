"""Colour preservation: the stylized image's luminance with the content image's chroma.

Gatys et al. (2016, "Preserving color in neural artistic style transfer") transfer style on luminance
only; recombining the result's luminance (Y of YCbCr, BT.601) with the content's chroma (Cb, Cr) is the
cheap form of that, and keeps the content's colours exactly.
"""

from __future__ import annotations

import torch

# BT.601 full-range RGB → YCbCr, for values in [0, 1].
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """N×3×H×W RGB in [0, 1] → YCbCr with Y in [0, 1] and Cb, Cr in [−0.5, 0.5]."""
    return torch.einsum("ij,njhw->nihw", _RGB_TO_YCBCR.to(image), image)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_YCBCR.double()).to(image), image)


def preserve_colors(stylized: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """``stylized``'s luminance with ``content``'s chroma (both N×3×H×W in [0, 1], the same size)."""
    y = rgb_to_ycbcr(stylized)[:, :1]
    cbcr = rgb_to_ycbcr(content.to(stylized))[:, 1:]
    return ycbcr_to_rgb(torch.cat([y, cbcr], dim=1)).clamp_(0, 1)
