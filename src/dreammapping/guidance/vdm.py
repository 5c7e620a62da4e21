"""Variational distribution mapping with distribution coefficient annealing — the paper's method (Sec. 4.2–4.3).

Algorithm 1, one iteration, given x = encode(g(θ, c)), t and ε:

    x_t   = √ᾱ_t·x + √(1−ᾱ_t)·ε
    ε_cfg, ε_cond = ε_φ^cfg(x_t, t, y), ε_φ(x_t, t, y)                 (one UNet call on 2B, no gradient)
    m     = Mψ(ε_cond)  (or Mψ(ε_cond, t))                              (Mψ's input is detached: Eq. 17)
            Mψ is one of the paper's Fig. 6 designs (operators.py): noise-free U-Lite (default), linear, U-Lite + n
    L_op  = ||m − ε||²                                    (Eq. 17)   →  aux_loss, trains ψ only
    λ_t   = 1 if t > cutoff else 1 − ᾱ_t                  (Eq. 18, DCA; λ_t = 1 when DCA is off)
    g     = ω(t)·(ε_cfg − λ_t·sg(m))                      (Eq. 19)   →  loss, reaches θ only

Mψ's output is detached in g, so the image loss never trains ψ and no gradient passes through the UNet (Fig. 2).
The paper's Eq. 19 writes ε_φ for the first term; as in every SD-based method it is the CFG prediction, while Mψ
sees the plain conditional prediction (the "ε_φ(x_t, t, y)" of Eq. 17).

What this means (docs/vdm_analysis.md): Mψ's optimum is E_q[ε | ε_φ] under the renders' distribution q, so
g = ω·[(s−1)(ε_cond − ε_uncond) + E_q[ε_φ − ε | ε_φ]]: SDS with its noise term ε_φ − ε replaced by what Mψ can
predict of it from ε_φ. Mψ = identity gives the classifier term alone (CSD-like); a perfect predictor gives SDS back.
The logs measure where between the two a run sits, on every step (loss.csv columns):

    op_ratio       ||m − ε||² / ||ε_cond − ε||²   (1: Mψ explains nothing beyond the identity; 0: all of the noise)
    op_ratio_lo/mid/hi   the same for the draws with t < 300 / 300 ≤ t < 600 / t ≥ 600 (nan when none this step)
    op_shift       ||ε_cond − m||² / ||ε_cond − ε||²  (energy of VDM's noise term relative to SDS's; = 1 − op_ratio
                   when Mψ is the exact conditional mean, by Pythagoras)
    cos_sds        cosine between g (before warm-up masking) and SDS's ω(ε_cfg − ε) on the same draw, batch mean
    lambda         λ_t, batch mean

Choices the paper leaves open are VDMConfig fields; which setting is the paper's and which the evidence picked is
said beside each (measurements: docs/vdm_analysis.md, `python benchmarks/vdm_probe.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dreammapping.guidance.base import Guidance, GuidanceConfig, OptimizerConfig, dca_lambda
from dreammapping.guidance.operators import OPERATOR_DESIGNS, build_operator

T_BANDS = {"lo": (0, 300), "mid": (300, 600), "hi": (600, 10**9)}  # op_ratio_<band> columns


@dataclass
class VDMConfig(GuidanceConfig):
    dca: bool = True  # distribution coefficient annealing (Eq. 18); off: λ_t = 1 everywhere
    dca_cutoff: int = 300  # t ≤ cutoff gets λ_t = 1 − ᾱ_t (the paper ablates 100 / 300 / 500)
    operator_lr: float = 0.01  # Adam learning rate of Mψ (the paper's 0.01; 1e-3 measured no different)
    # feed t to Mψ as well (a sinusoidal embedding added at the bottleneck); the paper's Mψ sees ε_φ only. Off:
    # measured neutral within noise (docs/vdm_analysis.md §7), so the paper's choice stays
    condition_on_t: bool = False
    # how a t-conditioned U-Lite sees t: "bottleneck" (an embedding added there; as before) or "film" (also a
    # scale and shift on every decoder level and a per-channel output gain; docs/operator_ability.md)
    t_conditioning: Literal["bottleneck", "film"] = "bottleneck"
    # Mψ's size: "auto" (U-Lite ≈ 0.9M for SD latents, ≈ 14k for the 32² embedded prior), "small" (≈ 14k) or
    # "ulite" (≈ 0.9M at any input size — the paper's U-Lite, "1M parameters"; no measurable gain at 32²)
    operator_size: Literal["auto", "small", "ulite"] = "auto"
    # Mψ's start: "identity" — residual with a zero-initialised head, Mψ(ε_φ) = ε_φ at step 0 (our choice, by
    # evidence); "random" — a plain network with the default random init (the paper states no initialisation;
    # measured worse: op_ratio > 1 and 4–15× more operator error in θ's update)
    operator_init: Literal["identity", "random"] = "identity"
    # steps at the start during which only Mψ trains and θ's update is zero (the paper has none: 0; 50 measured
    # no better once θ moves)
    operator_warmup: int = 0
    # Mψ's design, the paper's Fig. 6 (guidance/operators.py): "nonlinear" — U-Lite, noise-free (the paper's choice
    # and ours); "linear" — a learnable tensor A the shape of ε_φ, Mψ(ε_φ) = A ⊙ ε_φ; "nonlinear-noise" — U-Lite plus
    # a learnable observation-noise tensor n, Mψ(ε_φ) = U(ε_φ) + n. Measured: docs/operator_ability.md
    operator_design: Literal["nonlinear", "linear", "nonlinear-noise"] = "nonlinear"


@dataclass
class VDMDraw:
    """One step's draw as VDM saw it (detached; for probes): t [B], ε, ε_φ(x_t, t, y) and Mψ(ε_φ) [B,C,h,w]."""

    t: torch.Tensor
    noise: torch.Tensor
    eps_cond: torch.Tensor
    mapped: torch.Tensor


class VDM(Guidance):
    """g = ω(t)(ε_φ^cfg(x_t,t,y) − λ_t·Mψ(ε_φ(x_t,t,y))),  L_op = ||Mψ(ε_φ(x_t,t,y)) − ε||²  (Eq. 17–19)."""

    Config = VDMConfig

    def __init__(self, prior, config: VDMConfig | None = None, operator: torch.nn.Module | None = None):
        super().__init__(prior, config)
        c = self.config
        if c.operator_init not in ("identity", "random"):
            raise ValueError(f"unknown operator_init {c.operator_init!r}; choose identity or random")
        if c.operator_warmup < 0:
            raise ValueError(f"operator_warmup must be ≥ 0, got {c.operator_warmup}")
        if c.operator_design not in OPERATOR_DESIGNS:
            raise ValueError(f"unknown operator_design {c.operator_design!r}; choose one of {', '.join(OPERATOR_DESIGNS)}")
        self.operator = operator if operator is not None else build_operator(prior, c)
        self.operator.to(prior.device, torch.float32)
        self.step = 0
        self.last_draw: VDMDraw | None = None  # the latest step's draw and Mψ's output, for probes

    def parameters(self):
        return list(self.operator.parameters())

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(name="adam", lr=self.config.operator_lr)

    def distill(self, z, emb, step: int = 0, max_steps: int = 1):
        self.step = step  # for the warm-up
        return super().distill(z, emb, step, max_steps)

    def gradient(self, z, t, noise, emb):
        x_t = self.prior.add_noise(z, noise, t)
        eps_cfg, eps_cond, _ = self.prior.predict_noise(x_t, t, emb, self.guidance_scale)
        mapped = self.operator(eps_cond.detach(), t)
        self.last_draw = VDMDraw(t=t, noise=noise, eps_cond=eps_cond.detach(), mapped=mapped.detach())
        loss_op = (mapped - noise).pow(2).mean()
        lam = dca_lambda(t, self.prior.alphas_cumprod, self.config.dca_cutoff) if self.config.dca \
            else torch.ones(t.shape, device=z.device)
        w = self.weight(t)
        g = w * (eps_cfg - lam.view(-1, 1, 1, 1) * mapped.detach())
        logs = {"loss_op": float(loss_op.detach()), "lambda": float(lam.mean())}
        logs.update(diagnostics(eps_cond, mapped.detach(), noise, t, g, w * (eps_cfg - noise)))
        if self.step < self.config.operator_warmup:
            g = torch.zeros_like(g)  # warm-up: Mψ learns the renders' noise before θ moves
        return g, loss_op, logs


@torch.no_grad()
def diagnostics(eps_cond, mapped, noise, t, g, g_sds) -> dict[str, float]:
    """How much of ||ε_φ − ε||² Mψ explains, overall and per t band, and cos(g, g_SDS); tensors [B,C,h,w], t [B]."""
    sq = lambda x: x.float().pow(2).flatten(1).sum(1)  # noqa: E731 — per-sample squared norm [B]
    err_id, err_op, shift = sq(eps_cond - noise), sq(mapped - noise), sq(eps_cond - mapped)
    logs = {"op_ratio": float(err_op.sum() / err_id.sum()), "op_shift": float(shift.sum() / err_id.sum())}
    for band, (lo, hi) in T_BANDS.items():
        inside = (t >= lo) & (t < hi)
        logs[f"op_ratio_{band}"] = float(err_op[inside].sum() / err_id[inside].sum()) if inside.any() else float("nan")
    cos = torch.nn.functional.cosine_similarity(g.float().flatten(1), g_sds.float().flatten(1), dim=1, eps=1e-12)
    logs["cos_sds"] = float(cos.mean())
    return logs
