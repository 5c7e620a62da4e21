"""Score distillation sampling (DreamFusion, Poole et al. 2023) — Eq. (9) of the DreamMapping paper."""

from __future__ import annotations

from dreammapping.guidance.base import Guidance


class SDS(Guidance):
    """g = ω(t)·(ε_φ^cfg(x_t, t, y) − ε),  x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε   (Eq. 9).

    Options (GuidanceConfig): the CFG scale, ω(t) (`weighting`), the range of t and the annealing of t_max.
    """

    def gradient(self, z, t, noise, emb):
        x_t = self.prior.add_noise(z, noise, t)
        eps_cfg, _, _ = self.prior.predict_noise(x_t, t, emb, self.guidance_scale)
        return self.weight(t) * (eps_cfg - noise), None, {}
