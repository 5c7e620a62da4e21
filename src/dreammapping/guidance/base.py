"""What every score-distillation method shares: its output, timestep sampling, ω(t), the gradient-as-loss trick.

A method subclasses `Guidance` and implements one function,

    gradient(z, t, noise, emb) -> (g, aux_loss | None, logs)

which returns the update g for the model-space images z ([B,C,h,w], detached). `Guidance.__call__` encodes the
rendered images (differentiably), draws t and ε, asks for g, and builds `loss = 0.5·||z − sg(z − g)||² / B` whose
gradient w.r.t. z is exactly g / B — so the gradient never flows through the UNet, and back-propagation carries g
through the VAE encoder (latent priors) or through z = 2x − 1 (pixel priors) into the renderer.

Random draws, in this order, come from the global torch RNG (the trainer seeds and checkpoints it): t, then ε,
then whatever the method draws itself (VSD's LoRA step). `draw()` reproduces the first two for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from dreammapping.priors import VIEW_PROMPTS, DiffusionPrior, PromptEmbeddings, view_embeddings
from dreammapping.schedule import at_step

# ω(t) as a function of ᾱ_t
WEIGHTINGS = {
    "sds": lambda a: 1 - a,  # DreamFusion
    "uniform": lambda a: torch.ones_like(a),
    "sqrt": lambda a: (1 - a).sqrt(),
    "fantasia3d": lambda a: a.sqrt() * (1 - a),
    "ism": lambda a: ((1 - a) / a).sqrt(),  # LucidDreamer: √((1−ᾱ_t)/ᾱ_t)
}


@dataclass
class GuidanceOutput:
    loss: Tensor  # scalar; d loss / d images is the method's update, 0.5·||x − sg(x − g)||² / B form
    aux_loss: Tensor  # scalar; trains the method's own parameters (VDM's operator, VSD's LoRA), 0 if none
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """How the trainer should optimise `method.parameters()`; `build(params)` makes the optimiser (None if empty)."""

    name: str = "adam"  # "adam" or "adamw"
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def build(self, params) -> torch.optim.Optimizer | None:
        params = [p for p in params if p.requires_grad]
        if not params:
            return None
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.name]
        # one kernel for every tensor, not ~10 small ops per tensor (Mψ has ~40: 4 ms a step on a CPU otherwise)
        fused = all(p.device.type in ("cuda", "cpu") and p.dtype == torch.float32 for p in params)
        return cls(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, fused=fused or None)


@dataclass
class GuidanceConfig:
    """Options every method has."""

    # CFG scale s; None: 7.5 for latent (SD) priors, 2.0 for pixel priors — the embedded prior's own samples have the
    # right shape 95% of the time at CFG 2 but 79% at 3 and 48% at 5 (MODEL_CARD.md)
    guidance_scale: float | None = None
    t_min: float = 0.02  # t ~ U[t_min·T, t_max·T]
    t_max: float = 0.98
    t_max_end: float | None = None  # anneal t_max linearly to this (None: no annealing) …
    # … over this many steps (an int) or this fraction of the run (a float), then hold it (None: the whole run)
    t_anneal_steps: int | float | None = None
    weighting: str = "sds"  # ω(t): one of WEIGHTINGS
    # View-dependent prompts (priors.view_embeddings): "tag" (DreamFusion's suffix per view), "interpolate"
    # (LucidDreamer: front/side/back embeddings blended by azimuth) or "perp-neg" (Armandpour et al. 2023: the blend
    # plus perpendicular negative views; 2 more UNet evaluations per view). The last two need cameras (text-to-3D).
    view_prompt: Literal["tag", "interpolate", "perp-neg"] = "tag"
    perp_neg_weight: float = -2.0  # Perp-Neg's negative weight w (LucidDreamer's negative_w)
    perp_neg_front_decay: float = 2.0  # decay of the front negative with the blend ratio r (front_decay_factor)
    perp_neg_side_decay: float = 10.0  # decay of the side negative (side_decay_factor)


def default_guidance_scale(prior: DiffusionPrior | str) -> float:
    """The CFG scale s when none is given: 7.5 for latent (Stable Diffusion) priors, 2.0 for pixel-space priors.

    A prior may be given by name: "embedded" is the pixel-space toy prior, any other name counts as latent (the
    name alone says no more; a loaded DiffusionPrior knows)."""
    latent = prior.is_latent if not isinstance(prior, str) else prior != "embedded"
    return 7.5 if latent else 2.0


def dca_lambda(t: Tensor | int, alphas_cumprod: Tensor, cutoff: int = 300) -> Tensor:
    """Distribution coefficient annealing, Eq. (18): λ_t = 1 for t > cutoff, 1 − ᾱ_t for t ≤ cutoff."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long()
    return torch.where(t > cutoff, torch.ones_like(alphas_cumprod[t]), 1 - alphas_cumprod[t])


def grad_to_loss(z: Tensor, g: Tensor) -> Tensor:
    """0.5·||z − sg(z − g)||² / B: its gradient w.r.t. z is g / B.

    A non-finite g is not masked: the loss (0.5·||g||²/B) becomes non-finite too, so the trainer stops with its
    one-line "diverged" error and keeps the last good checkpoint instead of silently skipping updates."""
    target = (z.float() - g.detach().float()).detach()
    return 0.5 * ((z.float() - target) ** 2).sum() / z.shape[0]


class Guidance:
    """Base of the methods in `METHODS`; subclasses set `Config` and implement `gradient`."""

    Config = GuidanceConfig

    def __init__(self, prior: DiffusionPrior, config: GuidanceConfig | None = None):
        self.prior = prior
        self.config = config if config is not None else self.Config()
        if self.config.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.config.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.config.view_prompt not in VIEW_PROMPTS:
            raise ValueError(f"unknown view_prompt {self.config.view_prompt!r}; "
                             f"choose one of {', '.join(VIEW_PROMPTS)}")
        scale = self.config.guidance_scale
        self.progress = 0.0
        self.guidance_scale = float(scale if scale is not None else default_guidance_scale(prior))

    # ---------------------------------------------------------------------------------- the trainer's side
    def parameters(self) -> list[torch.nn.Parameter]:
        """The method's own learnable parameters (empty for training-free methods)."""
        return []

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig()

    def __call__(self, images: Tensor, emb: PromptEmbeddings, step: int = 0, max_steps: int = 1) -> GuidanceOutput:
        """images [B,3,H,W] in [0,1] (any size; resized to the prior's) → GuidanceOutput."""
        return self.distill(self.prior.encode_images(images), emb, step, max_steps)

    def distill(self, z: Tensor, emb: PromptEmbeddings, step: int = 0, max_steps: int = 1) -> GuidanceOutput:
        """The same on model-space images z [B,C,h,w] (text-to-2D optimises latents directly)."""
        c = self.config
        emb = view_embeddings(emb.expand(z.shape[0]), c.view_prompt, c.perp_neg_weight, c.perp_neg_front_decay,
                              c.perp_neg_side_decay)
        self.progress = min(max(step / max(max_steps, 1), 0.0), 1.0)  # fraction of training done, for schedules
        t, noise = self.draw(z, step, max_steps)
        g, aux, logs = self.gradient(z.detach().float(), t, noise, emb)
        logs = {"t": float(t.float().mean()), "grad_norm": float(g.detach().float().flatten(1).norm(dim=1).mean()), **logs}
        aux = aux if aux is not None else torch.zeros((), device=z.device)
        return GuidanceOutput(loss=grad_to_loss(z, g), aux_loss=aux, logs=logs)

    # ------------------------------------------------------------------------------------ shared pieces
    def timestep_range(self, step: int, max_steps: int) -> tuple[int, int]:
        """[lo, hi] integer timesteps at this point of training (t_max annealed when t_max_end is set)."""
        c, T = self.config, self.prior.num_train_timesteps
        t_max = c.t_max
        if c.t_max_end is not None:
            span = max(at_step(c.t_anneal_steps, max_steps) if c.t_anneal_steps is not None else max_steps, 1)
            t_max = c.t_max + (c.t_max_end - c.t_max) * min(max(step / span, 0.0), 1.0)
        lo = int(round(c.t_min * T))
        hi = max(lo, min(T - 1, int(round(t_max * T))))
        return lo, hi

    def draw(self, z: Tensor, step: int, max_steps: int) -> tuple[Tensor, Tensor]:
        """t [B] ~ U{lo..hi} and ε ~ N(0, I) like z, from the global RNG, in this order."""
        lo, hi = self.timestep_range(step, max_steps)
        t = torch.randint(lo, hi + 1, (z.shape[0],)).to(z.device)
        noise = torch.randn(z.shape).to(z.device)
        return t, noise

    def weight(self, t: Tensor) -> Tensor:
        """ω(t) as [B,1,1,1]."""
        return WEIGHTINGS[self.config.weighting](self.prior.alphas_cumprod[t]).view(-1, 1, 1, 1)

    def gradient(self, z: Tensor, t: Tensor, noise: Tensor, emb: PromptEmbeddings
                 ) -> tuple[Tensor, Tensor | None, dict[str, float]]:
        raise NotImplementedError
