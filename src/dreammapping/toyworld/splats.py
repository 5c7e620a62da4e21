"""Ground-truth Gaussians of a toy-world scene: its solid filled with small isotropic splats of the object's colour.

A known answer for everything downstream of the trainer (mesh export, file conventions, web viewers): the scene's
SDF gives the exact surface, area and volume, and the prompt gives the colour.
"""

from __future__ import annotations

import math

import torch

from dreammapping.gaussians import Gaussians
from dreammapping.toyworld.grammar import MAX_SCENE_RADIUS, Scene
from dreammapping.toyworld.sdf import color_at, occupancy, signed_distance


def scene_gaussians(scene: Scene, n: int = 20000, opacity: float = 0.5, generator: torch.Generator | None = None,
                    batch: int = 200_000) -> Gaussians:
    """About `n` Gaussians filling the scene's solid (SH degree 0, colour = `sdf.color_at`).

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
        inside = cand[occupancy(scene, cand)]
        points.append(inside)
        kept += len(inside)
        if kept == 0 and tries > 10:
            raise ValueError("the scene has no volume to fill")
    fraction = kept / (tries * batch)
    points = torch.cat(points)[:n]
    volume = fraction * (2 * bound) ** 3
    spacing = (volume / len(points)) ** (1 / 3)
    colors = color_at(scene, points)
    return Gaussians.from_points(points, colors, sh_degree=0, opacity=opacity, scale=spacing)


def surface_gaussians(scene: Scene, n: int = 20000, thickness: float = 0.002, size: tuple[float, float] = (0.006, 0.012),
                      opacity: float = 0.8, generator: torch.Generator | None = None, batch: int = 200_000) -> Gaussians:
    """About `n` flat Gaussians on the scene's surface, as a trained 3DGS scene looks: centres on the SDF's zero set
    (one Newton step from points near it), σ uniform in `size` along the surface and `thickness` along the normal.
    """
    pts, normals, tries = [], [], 0
    while sum(len(p) for p in pts) < n:
        tries += 1
        if tries > 1000:
            raise ValueError("the scene has no surface to cover")
        cand = ((torch.rand(batch, 3, generator=generator) * 2 - 1) * MAX_SCENE_RADIUS).requires_grad_(True)
        d = signed_distance(scene, cand)
        (grad,) = torch.autograd.grad(d.sum(), cand)
        near = d.detach().abs() < 0.02
        pts.append((cand - d[:, None] * grad).detach()[near])
        normals.append(torch.nn.functional.normalize(grad[near], dim=-1))
    points, normal = torch.cat(pts)[:n], torch.cat(normals)[:n]
    g = Gaussians.from_points(points, color_at(scene, points), opacity=opacity, scale=size[0])
    log_scales = torch.empty(len(points), 3).uniform_(*size, generator=generator).log()
    log_scales[:, 2] = math.log(thickness)  # flat along the local z axis, which the rotation turns onto the normal:
    g.log_scales = log_scales
    g.quats = torch.stack([1 + normal[:, 2], -normal[:, 1], normal[:, 0], torch.zeros(len(points))], dim=1)
    return g  # (w, x, y, z) = (1 + n_z, −n_y, n_x, 0) rotates +z onto n
