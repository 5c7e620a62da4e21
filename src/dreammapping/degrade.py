"""A degraded renderer for experiments: what the prior sees during training is blurred and desaturated, with a
strength that decays to zero by a fixed step; the scene itself, and everything scored, is never degraded.

It creates a controlled gap between the renders' distribution and the prior's (docs/prereg/claims_v2.md,
experiment (a)): a method that models the renders' distribution (VSD; VDM by the paper's account) should be hurt
less by it than SDS. `train` applies `degrade_images` to the rasterizer's output just before the guidance method;
`DegradeConfig()` (strength 0) is the identity and costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)  # Rec. 601, as the metrics' luma


@dataclass(frozen=True)
class DegradeConfig:
    """Blur + desaturation of the prior's input: at step k the weight is w = strength · max(0, 1 − k / until_step);
    the blur's σ is w · blur_sigma px (at the training resolution) and the colours move a share w · desaturation
    towards their luma."""

    strength: float = 0.0  # s in [0, 1]; 0: off (the identity)
    blur_sigma: float = 1.5  # px at full strength
    desaturation: float = 0.5  # share of the way to grey at full strength
    until_step: int = 150  # the weight reaches 0 at this step and stays 0


def check_degrade(cfg: DegradeConfig) -> None:
    """ValueError with one line for a value out of range."""
    if not (math.isfinite(cfg.strength) and 0.0 <= cfg.strength <= 1.0):
        raise ValueError(f"degrade.strength must be in [0, 1], got {cfg.strength}")
    if not (math.isfinite(cfg.blur_sigma) and cfg.blur_sigma >= 0):
        raise ValueError(f"degrade.blur_sigma must be ≥ 0, got {cfg.blur_sigma}")
    if not (math.isfinite(cfg.desaturation) and 0.0 <= cfg.desaturation <= 1.0):
        raise ValueError(f"degrade.desaturation must be in [0, 1], got {cfg.desaturation}")
    if cfg.until_step < 1:
        raise ValueError(f"degrade.until_step must be ≥ 1, got {cfg.until_step}")


def degrade_weight(cfg: DegradeConfig, step: int) -> float:
    """w(step) = strength · max(0, 1 − step / until_step): strength at step 0, 0 from `until_step` on."""
    return cfg.strength * max(0.0, 1.0 - step / cfg.until_step)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [B,C,H,W] (radius ⌈3σ⌉, reflect padding, differentiable); σ ≤ 0: unchanged."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    c = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), g.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                   groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), g.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


def degrade_images(images: Tensor, cfg: DegradeConfig, step: int) -> Tensor:
    """The prior's view of the renders [B,3,H,W] at `step`: blurred by σ = w · blur_sigma and moved a share
    w · desaturation towards their luma. Weight 0 (strength 0, or from `until_step` on) returns `images` itself."""
    w = degrade_weight(cfg, step)
    if w <= 0:
        return images
    out = gaussian_blur(images, w * cfg.blur_sigma)
    share = w * cfg.desaturation
    if share > 0:
        luma = (out * torch.tensor(LUMA, dtype=out.dtype, device=out.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        out = luma + (1.0 - share) * (out - luma)
    return out
