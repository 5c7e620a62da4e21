"""Variational distribution mapping with distribution coefficient annealing — the paper's method (Sec. 4.2–4.3).

Algorithm 1, one iteration, given x = encode(g(θ, c)), t and ε:

    x_t   = √ᾱ_t·x + √(1−ᾱ_t)·ε
    ε_cfg, ε_cond = ε_φ^cfg(x_t, t, y), ε_φ(x_t, t, y)                 (one UNet call on 2B, no gradient)
    m     = Mψ(ε_cond)                                                  (Mψ's input is detached: Eq. 17)
    L_op  = ||m − ε||²                                    (Eq. 17)   →  aux_loss, trains ψ only
    λ_t   = 1 if t > cutoff else 1 − ᾱ_t                  (Eq. 18, DCA; λ_t = 1 when DCA is off)
    g     = ω(t)·(ε_cfg − λ_t·sg(m))                      (Eq. 19)   →  loss, reaches θ only

Mψ's output is detached in g, so the image loss never trains ψ and no gradient passes through the UNet (Fig. 2).
The paper's Eq. 19 writes ε_φ for the first term; as in every SD-based method it is the CFG prediction, while Mψ
sees the plain conditional prediction (the "ε_φ(x_t, t, y)" of Eq. 17). Mψ is trained with Adam, lr 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreammapping.guidance.base import Guidance, GuidanceConfig, OptimizerConfig, dca_lambda
from dreammapping.guidance.ulite import ULite


@dataclass
class VDMConfig(GuidanceConfig):
    dca: bool = True  # distribution coefficient annealing (Eq. 18); off: λ_t = 1 everywhere
    dca_cutoff: int = 300  # t ≤ cutoff gets λ_t = 1 − ᾱ_t (the paper ablates 100 / 300 / 500)
    operator_lr: float = 0.01  # Adam learning rate of Mψ
    condition_on_t: bool = False  # feed t to Mψ as well (the paper's Mψ sees ε_φ only)


class VDM(Guidance):
    """g = ω(t)(ε_φ^cfg(x_t,t,y) − λ_t·Mψ(ε_φ(x_t,t,y))),  L_op = ||Mψ(ε_φ(x_t,t,y)) − ε||²  (Eq. 17–19)."""

    Config = VDMConfig

    def __init__(self, prior, config: VDMConfig | None = None, operator: torch.nn.Module | None = None):
        super().__init__(prior, config)
        self.operator = operator if operator is not None else \
            ULite.for_prior(prior, condition_on_t=self.config.condition_on_t)
        self.operator.to(prior.device, torch.float32)

    def parameters(self):
        return list(self.operator.parameters())

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(name="adam", lr=self.config.operator_lr)

    def gradient(self, z, t, noise, emb):
        x_t = self.prior.add_noise(z, noise, t)
        eps_cfg, eps_cond, _ = self.prior.predict_noise(x_t, t, emb, self.guidance_scale)
        mapped = self.operator(eps_cond.detach(), t)
        loss_op = (mapped - noise).pow(2).mean()
        lam = dca_lambda(t, self.prior.alphas_cumprod, self.config.dca_cutoff) if self.config.dca \
            else torch.ones(t.shape, device=z.device)
        g = self.weight(t) * (eps_cfg - lam.view(-1, 1, 1, 1) * mapped.detach())
        return g, loss_op, {"loss_op": float(loss_op.detach()), "lambda": float(lam.mean())}
