"""Classifier score distillation (Yu et al., "Text-to-3D with Classifier Score Distillation", 2023).

CSD keeps only SDS's conditional ("classifier") term of Eq. (10) and drops ε_φ(x_t, t, y) − ε altogether:

    g = ω(t)·[ s·(ε_φ(x_t,t,y) − ε_φ(x_t,t,∅)) − s_neg·(ε_φ(x_t,t,y_neg) − ε_φ(x_t,t,∅)) ]

The negative-prompt term (CSD's Eq. 9, "negative classifier score") is optional: it costs one more UNet
evaluation and is used only when `negative_prompt` is set and `negative_scale` ≠ 0; CSD anneals its weight
over training, here linearly from `negative_scale` to `negative_scale_end`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreammapping.guidance.base import Guidance, GuidanceConfig


@dataclass
class CSDConfig(GuidanceConfig):
    negative_prompt: str = ""  # y_neg; empty: no negative term
    negative_scale: float = 0.0  # s_neg at the start of training
    negative_scale_end: float | None = None  # s_neg at the end (None: constant)


class CSD(Guidance):
    """g = ω(t)·[s·(ε_cond − ε_uncond) − s_neg·(ε_neg − ε_uncond)]."""

    Config = CSDConfig

    def gradient(self, z, t, noise, emb):
        x_t = self.prior.add_noise(z, noise, t)
        eps_cfg, _, eps_uncond = self.prior.predict_noise(x_t, t, emb, self.guidance_scale)
        g = eps_cfg - eps_uncond  # s·(ε_cond − ε_uncond); with Perp-Neg also its perpendicular negatives
        c = self.config
        s_neg = c.negative_scale if c.negative_scale_end is None else \
            c.negative_scale + (c.negative_scale_end - c.negative_scale) * self.progress
        if c.negative_prompt and s_neg != 0.0:
            negative = self.prior.text_embedding(c.negative_prompt).expand_as(emb.cond)
            with torch.no_grad():
                eps_neg = self.prior.eps(x_t, t, negative)
            g = g - s_neg * (eps_neg - eps_uncond)
        return self.weight(t) * g, None, {"negative_scale": float(s_neg)}
