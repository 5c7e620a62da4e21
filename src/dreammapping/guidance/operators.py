"""VDM's degradation operator Mψ: the three designs of the paper's Fig. 6, built from `VDMConfig.operator_design`.

    "nonlinear"        Mψ(ε_φ) = U(ε_φ)           the paper's choice: a noise-free nonlinear operator (U-Lite, ulite.py)
    "linear"           Mψ(ε_φ) = A ⊙ ε_φ          A a learnable tensor the shape of ε_φ, [C,h,w] (Fig. 6, "linear")
    "nonlinear-noise"  Mψ(ε_φ) = U(ε_φ) + n       U-Lite plus learnable observation noise n, a tensor [C,h,w] (Eq. 12)

Every design maps [B,C,h,w] → [B,C,h,w] and is called as `operator(eps, t)` (t [B] integer timesteps; used only by
a t-conditioned U-Lite). Each starts as the identity under `operator_init="identity"` (A = 1, n = 0, U's head 0).

The paper gives the observation noise as "a tensor equivalent in size to the predicted noise" and no sampling, so n
is read as a learned additive tensor (the same for every draw). The other reading, n = σ ⊙ ξ with a fresh ξ ~ N(0, I)
and σ learned, adds σ²·E‖ξ‖² to L_op and nothing else, so its optimum is σ = 0: the noise-free design.

The linear design's optimum under L_op = E‖A ⊙ ε_φ − ε‖² is, per element, A* = E[ε_φ ε] / E[ε_φ²]
(`linear_optimum` computes it from samples).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dreammapping.guidance.ulite import ULite

OPERATOR_DESIGNS = ("nonlinear", "linear", "nonlinear-noise")


class LinearOperator(nn.Module):
    """Mψ(ε_φ) = A ⊙ ε_φ, A [C,h,w] learnable, A = 1 at the start (the identity); `forward(eps, t=None)`."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(shape))

    def forward(self, eps: Tensor, t: Tensor | None = None) -> Tensor:
        return self.scale * eps


class WithObservationNoise(nn.Module):
    """Mψ(ε_φ) = U(ε_φ, t) + n: `operator` (a U-Lite) plus a learnable tensor n [C,h,w], n = 0 at the start."""

    def __init__(self, operator: nn.Module, shape: tuple[int, int, int]):
        super().__init__()
        self.operator = operator
        self.noise = nn.Parameter(torch.zeros(shape))

    def forward(self, eps: Tensor, t: Tensor | None = None) -> Tensor:
        return self.operator(eps, t) + self.noise


def build_operator(prior, config) -> nn.Module:
    """Mψ for a VDMConfig: its `operator_design`, size, start and t-conditioning, shaped to the prior's model space.

    The nonlinear designs build the U-Lite exactly as before the designs existed (same modules, same draws from the
    global RNG), so a default config gives the same Mψ bit for bit; the linear one draws nothing."""
    design = config.operator_design
    if design not in OPERATOR_DESIGNS:
        raise ValueError(f"unknown operator_design {design!r}; choose one of {', '.join(OPERATOR_DESIGNS)}")
    side = prior.resolution // prior.downsample
    shape = (prior.latent_channels, side, side)
    if design == "linear":
        # a tensor of gains has no t input and one natural start (A = 1); refuse options it cannot honour
        if config.condition_on_t:
            raise ValueError("operator_design linear has no t input; condition_on_t needs a nonlinear design")
        if config.operator_init != "identity":
            raise ValueError("operator_design linear starts at the identity (A = 1); operator_init must be identity")
        return LinearOperator(shape)
    ulite = ULite.for_prior(prior, size=config.operator_size, condition_on_t=config.condition_on_t,
                            residual=config.operator_init == "identity", t_conditioning=config.t_conditioning)
    return ulite if design == "nonlinear" else WithObservationNoise(ulite, shape)


def linear_optimum(eps_phi: Tensor, eps: Tensor) -> Tensor:
    """The linear design's least-squares optimum A* [C,h,w] = Σ ε_φ ε / Σ ε_φ² over the samples; inputs [N,C,h,w]."""
    eps_phi, eps = eps_phi.double(), eps.double()
    return ((eps_phi * eps).sum(0) / eps_phi.pow(2).sum(0)).float()
