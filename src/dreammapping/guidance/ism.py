"""Interval score matching (LucidDreamer, Liang et al., CVPR 2024, Eq. 16–17 there).

Instead of comparing with the random ε, ISM compares with the model's own prediction one interval earlier on a
deterministic DDIM-inversion trajectory of x, all inversions using the unconditional prediction ε_φ(·, ·, ∅):

    s      = max(t − δ_T, 0)
    x_s    = DDIM inversion of x from a = max(s − n·δ_S, 0) (x_a = √ᾱ_a·x + √(1−ᾱ_a)·ε) to s, steps of ≤ δ_S
    ε_s    = ε_φ(x_s, s, ∅)
    x_t    = one DDIM inversion step x_s → x_t with ε_s
    g      = ω(t)·(ε_φ^cfg(x_t, t, y) − ε_s)

with the DDIM step x_a → x_b: x̂₀ = (x_a − √(1−ᾱ_a)·ε)/√ᾱ_a, x_b = √ᾱ_b·x̂₀ + √(1−ᾱ_b)·ε. LucidDreamer's defaults
are δ_T = 50, δ_S = 200 and n = 5 inversion steps (from a ≈ 0 for every s ≤ 1000), ω(t) = √((1−ᾱ_t)/ᾱ_t) — here
`weighting="sds"` is kept by default so that all methods share ω; pass `weighting="ism"` for theirs.
Cost: n + 1 unconditional UNet evaluations plus the CFG pair, per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreammapping.guidance.base import Guidance, GuidanceConfig


@dataclass
class ISMConfig(GuidanceConfig):
    delta_t: int = 50  # δ_T: the interval between x_s and x_t
    delta_s: int = 200  # δ_S: step size of the inversion from x to x_s
    xs_inv_steps: int = 5  # n: number of inversion steps to reach x_s (fewer is faster, starts noisier)


class ISM(Guidance):
    """g = ω(t)·(ε_φ^cfg(x_t, t, y) − ε_φ(x_s, s, ∅)), x_s and x_t by DDIM inversion."""

    Config = ISMConfig

    def ddim_step(self, x, eps, a, b):
        """Deterministic DDIM move from timestep a to b (either direction), a and b [B] long."""
        abar_a = self.prior.alphas_cumprod[a].view(-1, 1, 1, 1)
        abar_b = self.prior.alphas_cumprod[b].view(-1, 1, 1, 1)
        x0 = (x - (1 - abar_a).sqrt() * eps) / abar_a.sqrt()
        return abar_b.sqrt() * x0 + (1 - abar_b).sqrt() * eps

    @torch.no_grad()
    def invert(self, z, noise, t, emb):
        """(x_s, ε_s, x_t) for the batch; see the module doc."""
        c = self.config
        s = (t - c.delta_t).clamp(min=0)
        cur = (s - c.delta_s * c.xs_inv_steps).clamp(min=0)
        x = self.prior.add_noise(z, noise, cur)
        for _ in range(c.xs_inv_steps):
            if bool((cur >= s).all()):
                break
            nxt = torch.minimum(cur + c.delta_s, s)
            x = self.ddim_step(x, self.prior.eps(x, cur, emb.unconditional), cur, nxt)
            cur = nxt
        eps_s = self.prior.eps(x, s, emb.unconditional)
        return x, eps_s, self.ddim_step(x, eps_s, s, t)

    def gradient(self, z, t, noise, emb):
        _, eps_s, x_t = self.invert(z, noise, t, emb)
        eps_cfg, _, _ = self.prior.predict_noise(x_t, t, emb, self.guidance_scale)
        return self.weight(t) * (eps_cfg - eps_s), None, {}
