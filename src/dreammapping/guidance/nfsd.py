"""Noise-free score distillation (Katzir et al., "Noise-Free Score Distillation", ICLR 2024).

NFSD splits SDS's ε_φ^cfg − ε into a condition direction δ_C and a domain correction δ_D and drops the noise:

    δ_C = ε_φ(x_t,t,y) − ε_φ(x_t,t,∅)
    δ_D = ε_φ(x_t,t,∅)                              for t < 200   (small t: the unconditional prediction
                                                                    is mostly the image's own noise-free residual)
        = ε_φ(x_t,t,∅) − ε_φ(x_t,t,y_neg)           otherwise     (steer away from "unrealistic, blurry, …")
    g   = ω(t)·(δ_D + s·δ_C)

Costs three UNet evaluations per image (cond, uncond and negative), batched into one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreammapping.guidance.base import Guidance, GuidanceConfig

NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, "
                   "gloomy")


@dataclass
class NFSDConfig(GuidanceConfig):
    negative_prompt: str = NEGATIVE_PROMPT  # y_neg of δ_D at large t (NFSD paper, Sec. 4)
    small_t: int = 200  # below it δ_D is the unconditional prediction alone


class NFSD(Guidance):
    """g = ω(t)·(δ_D + s·δ_C)."""

    Config = NFSDConfig

    def __init__(self, prior, config: NFSDConfig | None = None):
        super().__init__(prior, config)
        if self.config.view_prompt == "perp-neg":  # δ_C is NFSD's own UNet batch, not the prior's CFG prediction
            raise ValueError("nfsd does not support view_prompt 'perp-neg'; use 'tag' or 'interpolate'")

    def gradient(self, z, t, noise, emb):
        x_t = self.prior.add_noise(z, noise, t)
        negative = self.prior.text_embedding(self.config.negative_prompt).expand_as(emb.cond)
        with torch.no_grad():
            # ∅, not a user's negative prompt: δ_D and δ_C are defined with the unconditional prediction.
            hidden = torch.cat([emb.unconditional, emb.cond, negative])
            eps = self.prior.eps(torch.cat([x_t] * 3), torch.cat([t] * 3), hidden)
        eps_uncond, eps_cond, eps_neg = eps.chunk(3)
        small = (t < self.config.small_t).view(-1, 1, 1, 1)
        delta_d = torch.where(small, eps_uncond, eps_uncond - eps_neg)
        delta_c = eps_cond - eps_uncond
        return self.weight(t) * (delta_d + self.guidance_scale * delta_c), None, {}
