"""The oracle: Gaussians fitted photometrically to the true scene, with everything else as a run has it.

A text-to-3D run at 32² cannot reach the truth's metrics: its Gaussians, resolution, camera distribution and
budget limit it before the prior does. The oracle fits the same initial Gaussians (same init, same seed, so the
same generator stream), at the same resolution, with the same cameras and backgrounds, learning rates,
densification and iteration count, by MSE to the toy world's render of the true scene at each step's cameras.
Its metrics are the ceiling a run's metrics are read against (docs/prereg/claims_v2.md).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from dreammapping import cameras as C
from dreammapping.config import GenerateConfig
from dreammapping.devices import resolve_device
from dreammapping.gaussian_scene import GaussiansConfig
from dreammapping.gaussians import Gaussians, make_optimizer, update_learning_rates
from dreammapping.init import initialise
from dreammapping.render import rasterize
from dreammapping.toyworld import grammar
from dreammapping.toyworld.sdf import render_scenes
from dreammapping.train import background_colors

EMBEDDED_RESOLUTION = 32  # the embedded prior's side: a run's resolution when `cfg.resolution` is None


def truth_views(scene, cameras: C.Cameras, background: torch.Tensor) -> torch.Tensor:
    """The true scene at `cameras` over per-view `background` [B,3]: [B,H,W,3] (render_scenes draws on white)."""
    rgb, alpha = render_scenes([scene], cameras)
    rgb, alpha = rgb.to(background), alpha.to(background)
    return (rgb - (1 - alpha)) + (1 - alpha) * background[:, None, None, :]  # swap the white for the background


def fit_oracle(cfg: GenerateConfig, resolution: int | None = None,
               callback: Callable[[int, Gaussians, float], None] | None = None) -> Gaussians:
    """Fit Gaussians to the truth of `cfg.prompt` (a toy-world prompt) as `train(cfg)` would train them, the
    guidance replaced by MSE to the truth's renders; `callback(step_done, gaussians, mse)` after each step.
    Returns the final Gaussians (detached). `resolution`: None = `cfg.resolution`, else the embedded prior's 32."""
    scene = grammar.parse(cfg.prompt)
    gs = cfg.scene
    if not isinstance(gs, GaussiansConfig):
        raise ValueError(f"the oracle fits Gaussians; the config's scene is {type(gs).__name__}")
    device = resolve_device(cfg.device)
    side = resolution or cfg.resolution or EMBEDDED_RESOLUTION
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # as train: init, cameras and backgrounds draw from it
    init = initialise(gs.init, gs.num_points, gs.init_options, cfg.prompt, sh_degree=gs.sh_degree,
                      generator=generator, device=device)
    gaussians = init.gaussians.requires_grad_(True)
    optimizer = make_optimizer(gaussians, gs.lr)
    strategy = dataclasses.replace(gs.density)
    for step in range(cfg.iterations):
        update_learning_rates(optimizer, step, gs.lr, cfg.iterations)
        cams = C.sample_orbit(cfg.batch, side, side, cfg.orbit, generator).to(device)
        background = background_colors(cfg.background, cfg.batch, generator).to(device)
        render = rasterize(gaussians, cams, background=background, backend=gs.render_backend)
        with torch.no_grad():
            target = truth_views(scene, cams, background)
        loss = (render.rgb - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        gaussians = strategy.step_post_backward(gaussians, optimizer, render, step, cfg.iterations)
        optimizer.zero_grad(set_to_none=True)
        if callback is not None:
            callback(step + 1, gaussians, float(loss.detach()))
    return gaussians.detach()
