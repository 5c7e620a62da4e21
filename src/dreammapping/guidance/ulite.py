"""Mψ, VDM's learnable degradation operator: a U-Lite–style tiny UNet (Dinh et al., "1M parameters are enough?
A lightweight CNN-based model for medical image segmentation", 2023), mapping ε_φ → ε in the prior's model space.

Architecture (all convolutions are depthwise-separable; k = 7):

    stem      1×1 conv  C → c₀
    encoder   for each level i:  AxialDW(cᵢ) → GroupNorm → [skip] → 1×1 conv cᵢ → cᵢ₊₁ → GELU → 2×2 max-pool
    bottleneck 1×1 conv c → c/4, then AxialDW with dilations 1, 2, 3 in parallel, concatenated with its input
              (c/4 · 4 = c channels) → GroupNorm → 1×1 conv → GELU   (+ an embedding of t when conditioned on t)
    decoder   for each level, deepest first: upsample ×2 → concat skip → 1×1 conv (cᵢ₊₁ + cᵢ) → cᵢ
              → AxialDW(cᵢ) → GroupNorm → 1×1 conv → GELU
    head      1×1 conv c₀ → C, zero-initialised, added to the input (residual): Mψ starts as the identity

AxialDW(c, d) is x + DWConv(1×k, dilation d)(x) + DWConv(k×1, dilation d)(x): a large receptive field for the
price of 2k weights per channel. The residual identity start is our choice (the paper gives no initialisation):
at t > cutoff λ_t = 1, so VDM's first updates are then ω(t)(ε_φ^cfg − ε_φ) — the classifier-free-guidance term —
instead of a random operator's output.

Sizes: `ULite.for_sd()` — channels 16…512, five levels, ≈ 0.9M parameters for 4×64×64 latents;
`ULite.for_prior(prior)` picks that for latent priors of side ≥ 64 and a ≈ 14k-parameter one
(channels 8…64, three levels) for small pixel priors such as the embedded 3×32×32 model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AxialDW(nn.Module):
    def __init__(self, channels: int, kernel: int = 7, dilation: int = 1):
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        self.h = nn.Conv2d(channels, channels, (1, kernel), padding=(0, pad), dilation=dilation, groups=channels)
        self.w = nn.Conv2d(channels, channels, (kernel, 1), padding=(pad, 0), dilation=dilation, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.h(x) + self.w(x)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(1, channels)  # batch-size independent (the trainer's batches are 1–8 views)


class _Encoder(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.dw, self.norm, self.pw = AxialDW(c_in, kernel), _norm(c_in), nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.norm(self.dw(x))
        return F.max_pool2d(F.gelu(self.pw(skip)), 2, ceil_mode=True), skip


class _Decoder(nn.Module):
    def __init__(self, c_in: int, c_skip: int, kernel: int):
        super().__init__()
        self.pw_in = nn.Conv2d(c_in + c_skip, c_skip, 1)
        self.dw, self.norm, self.pw = AxialDW(c_skip, kernel), _norm(c_skip), nn.Conv2d(c_skip, c_skip, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        x = self.pw_in(torch.cat([x, skip], dim=1))
        return F.gelu(self.pw(self.norm(self.dw(x))))


class _Bottleneck(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        quarter = channels // 4
        self.reduce = nn.Conv2d(channels, quarter, 1)
        self.branches = nn.ModuleList(AxialDW(quarter, kernel, d) for d in (1, 2, 3))
        self.norm, self.pw = _norm(quarter * 4), nn.Conv2d(quarter * 4, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        x = torch.cat([x] + [branch(x) for branch in self.branches], dim=1)
        return F.gelu(self.pw(self.norm(x)))


class ULite(nn.Module):
    """Mψ: [B,C,h,w] → [B,C,h,w] (see module doc); `forward(eps, t=None)`; t conditioning is optional."""

    def __init__(self, in_channels: int = 4, channels: tuple[int, ...] = (16, 32, 64, 128, 256, 512),
                 kernel: int = 7, condition_on_t: bool = False, residual: bool = True, num_train_timesteps: int = 1000,
                 t_conditioning: str = "bottleneck"):
        super().__init__()
        if t_conditioning not in ("bottleneck", "film"):
            raise ValueError(f"unknown t_conditioning {t_conditioning!r}; choose bottleneck or film")
        self.residual, self.num_train_timesteps = residual, num_train_timesteps
        self.stem = nn.Conv2d(in_channels, channels[0], 1)
        self.encoders = nn.ModuleList(_Encoder(a, b, kernel) for a, b in zip(channels[:-1], channels[1:]))
        self.bottleneck = _Bottleneck(channels[-1], kernel)
        self.decoders = nn.ModuleList(_Decoder(b, a, kernel) for a, b in zip(channels[:-1], channels[1:]))
        self.head = nn.Conv2d(channels[0], in_channels, 1)
        if residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.t_embed = nn.Sequential(nn.Linear(32, channels[-1]), nn.GELU(), nn.Linear(channels[-1], channels[-1])) \
            if condition_on_t else None
        # "film": t also scales and shifts every decoder level and sets the output's log-gain per channel, so the
        # output can follow the orders of magnitude ε − ε_φ spans across t (the bottleneck sum alone is normalised
        # away by the decoders' GroupNorms). Zero-initialised: the identity start is kept.
        self.film = self.out_gain = None
        if condition_on_t and t_conditioning == "film":
            self.film = nn.ModuleList(nn.Linear(channels[-1], 2 * a) for a in channels[:-1])
            self.out_gain = nn.Linear(channels[-1], in_channels)
            for layer in [*self.film, self.out_gain]:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    @classmethod
    def for_sd(cls, in_channels: int = 4, **kwargs) -> "ULite":
        """≈ 0.9M parameters, five levels: 64² latents → 2² bottleneck."""
        return cls(in_channels, (16, 32, 64, 128, 256, 512), **kwargs)

    @classmethod
    def for_prior(cls, prior, size: str = "auto", **kwargs) -> "ULite":
        """Sized to the prior's model space. `size`: "ulite" — `for_sd`'s channels (≈ 0.9M parameters, the paper's
        U-Lite) at any input size; "small" — channels 8…64, ≤ 3 levels (≈ 14k parameters); "auto" — "ulite" for
        latents of side ≥ 64 (Stable Diffusion), "small" otherwise (the embedded 3×32×32 prior)."""
        if size not in ("auto", "small", "ulite"):
            raise ValueError(f"unknown operator size {size!r}; choose auto, small or ulite")
        side = prior.resolution // prior.downsample
        kwargs.setdefault("num_train_timesteps", prior.num_train_timesteps)
        if size == "ulite" or (size == "auto" and side >= 64):
            return cls.for_sd(prior.latent_channels, **kwargs)
        levels = max(1, min(3, int(math.log2(max(side, 2))) - 2))
        return cls(prior.latent_channels, (8, 16, 32, 64)[: levels + 1], **kwargs)

    def forward(self, eps: Tensor, t: Tensor | None = None) -> Tensor:
        x = self.stem(eps)
        skips = []
        for encoder in self.encoders:
            x, skip = encoder(x)
            skips.append(skip)
        x = self.bottleneck(x)
        emb = None
        if self.t_embed is not None and t is not None:
            emb = self.t_embed(_sinusoidal(t.float() / self.num_train_timesteps, 32))
            x = x + emb.view(x.shape[0], -1, 1, 1)
        films = reversed(self.film) if self.film is not None and emb is not None else [None] * len(self.decoders)
        for decoder, skip, film in zip(reversed(self.decoders), reversed(skips), films):
            x = decoder(x, skip)
            if film is not None:
                scale, shift = film(emb).view(x.shape[0], -1, 1, 1).chunk(2, dim=1)
                x = x * (1 + scale) + shift
        out = self.head(x)
        if self.out_gain is not None and emb is not None:
            out = out * self.out_gain(emb).exp().view(x.shape[0], -1, 1, 1)
        return eps + out if self.residual else out


def _sinusoidal(x: Tensor, dim: int) -> Tensor:
    freqs = torch.exp(torch.arange(dim // 2, device=x.device) * (-math.log(1000.0) / (dim // 2)))
    angles = x.view(-1, 1) * 1000.0 * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)
