"""Ground-truth Gaussians of a toy-world scene: its solid filled with small isotropic splats of the object's colour.

A known answer for everything downstream of the trainer (mesh export, file conventions, web viewers): the scene's
SDF gives the exact surface, area and volume, and the prompt gives the colour.
"""

from __future__ import annotations

import torch

from dreammapping.gaussians import Gaussians
from dreammapping.toyworld.grammar import MAX_SCENE_RADIUS, Scene


def scene_gaussians(scene: Scene, n: int = 20000, opacity: float = 0.5, generator: torch.Generator | None = None,
                    batch: int = 200_000) -> Gaussians:
    """About `n` Gaussians filling the scene's solid (SH degree 0, colour = `scene.color_at`).

    Centres are uniform inside the objects (rejection sampling in the scene's bounding cube); every Gaussian is
    isotropic with σ = the mean spacing, so their summed density is nearly flat inside and halves at the surface.
    """
    bound = MAX_SCENE_RADIUS
    points = []
    kept = 0
    tries = 0
    while kept < n and tries < 1000:
        tries += 1
        cand = (torch.rand(batch, 3, generator=generator) * 2 - 1) * bound
        inside = cand[scene.occupancy(cand)]
        points.append(inside)
        kept += len(inside)
        if kept == 0 and tries > 10:
            raise ValueError("the scene has no volume to fill")
    fraction = kept / (tries * batch)
    points = torch.cat(points)[:n]
    volume = fraction * (2 * bound) ** 3
    spacing = (volume / len(points)) ** (1 / 3)
    colors = scene.color_at(points)
    return Gaussians.from_points(points, colors, sh_degree=0, opacity=opacity, scale=spacing)
