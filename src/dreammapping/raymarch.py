"""Volume rendering of a density field along camera rays (NeRF's quadrature), with empty-space skipping.

    rays    = camera_rays(cameras)                       # one ray per pixel, clipped to the box [−r, r]³
    samples = sample_along(rays, n)                      # n segments per ray in the box (midpoints or jittered)
    out     = march(field_fns, samples, occupancy)       # σ where the occupancy allows, weights, colour

The quadrature is NeRF's (Mildenhall et al. 2020, Eq. 3): αᵢ = 1 − exp(−σᵢδᵢ), Tᵢ = exp(−Σ_{j<i} σⱼδⱼ),
wᵢ = Tᵢαᵢ, C = Σ wᵢcᵢ + (1 − Σ wᵢ)·background. Ray directions are kept unnormalised with camera-space z = 1, so a
sample's ray parameter t *is* its camera-space depth (the depth `rasterize` reports) and δ in world units is
Δt·|d|.

Two skips make it affordable on a CPU, and both only drop terms that are provably (or by a stated bound) tiny:
- the occupancy grid (`Occupancy`): a boolean per cell of the density grid, true when an upper bound of σ inside the
  cell exceeds `threshold`; samples in other cells get σ = 0 without evaluating the field — each such sample changes
  the optical depth by less than `threshold`·δ;
- the weight cut: colour (the feature MLP, the finite-difference normals) is evaluated only where wᵢ > `weight_eps`
  (the weights are known once σ is), so a pixel's colour changes by less than `weight_eps` × that many samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from dreammapping.cameras import Cameras

NEAR = 0.01  # rays start no closer than this to the camera (camera-space z), as the rasterizer's near plane


@dataclass
class Rays:
    """R rays, clipped to the axis-aligned box [−radius, radius]³."""

    origins: Tensor  # [R,3] world camera centres
    dirs: Tensor  # [R,3] world directions, unnormalised: camera-space z component 1 (t = camera depth)
    near: Tensor  # [R] entry parameter into the box (≥ NEAR)
    far: Tensor  # [R] exit parameter (= near where the ray misses the box)
    hit: Tensor  # [R] bool, the ray crosses the box


@dataclass
class Samples:
    """S samples per ray (segment midpoints, or jittered positions inside each segment)."""

    t: Tensor  # [R,S] ray parameter = camera-space depth
    delta: Tensor  # [R,S] segment length in world units (0 for rays that miss the box)
    points: Tensor  # [R,S,3] world positions
    dirs: Tensor  # [R,3] unit world directions of the rays


@dataclass
class Occupancy:
    """Which cells of a regular grid over [−radius, radius]³ may hold density above a threshold."""

    cells: Tensor  # [C,C,C] bool, indexed [z, y, x] (the density grid's layout), C = grid vertices − 1
    radius: float  # half side of the box

    def lookup(self, points: Tensor) -> Tensor:
        """[..., 3] world points → [...] bool (points outside the box are empty)."""
        C = self.cells.shape[0]
        u = (points + self.radius) / (2 * self.radius) * C  # cell coordinates in [0, C]
        inside = ((u >= 0) & (u <= C)).all(-1)
        idx = u.floor().long().clamp(0, C - 1)
        return self.cells[idx[..., 2], idx[..., 1], idx[..., 0]] & inside


@dataclass
class MarchOutput:
    """The foreground of every ray (composite over a background with `rgb + (1 − alpha)·bg`)."""

    rgb: Tensor  # [R,3] Σ wᵢcᵢ (no background)
    alpha: Tensor  # [R] Σ wᵢ, the accumulated opacity
    depth: Tensor  # [R] Σ wᵢtᵢ, camera-space z weighted by opacity (not normalised)
    weights: Tensor  # [R,S] wᵢ
    orient: Tensor  # [R] Σ sg(wᵢ)·max(0, nᵢ·d)², DreamFusion's orientation penalty (0 where no normals)
    evaluated: int  # samples whose density was evaluated (after the occupancy skip)
    shaded: int  # samples whose colour was evaluated (after the weight cut)


@dataclass
class FieldFns:
    """What `march` needs of a field; every function takes and returns flat tensors."""

    density: Callable[[Tensor], Tensor]  # points [N,3] → σ [N] ≥ 0
    color: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]  # (points [N,3], unit dirs [N,3])
    #                                          → (colour [N,3], normals [N,3] or None when the shading needs none)


def camera_rays(cameras: Cameras, width: int | None = None, height: int | None = None,
                radius: float = 1.0) -> Rays:
    """One ray through every pixel centre (+0.5, gsplat's convention) of every camera, B·H·W rays in row-major
    order [b, y, x]; another image size keeps the field of view (as `rasterize`)."""
    width = cameras.width if width is None else int(width)
    height = cameras.height if height is None else int(height)
    dtype, device = cameras.viewmats.dtype, cameras.viewmats.device
    Ks = cameras.Ks.clone()
    Ks[:, 0, :] *= width / cameras.width
    Ks[:, 1, :] *= height / cameras.height
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype, device=device) + 0.5,
                            torch.arange(width, dtype=dtype, device=device) + 0.5, indexing="ij")
    fx, fy, cx, cy = (Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2])
    d_cam = torch.stack([(xs[None] - cx[:, None, None]) / fx[:, None, None],
                         (ys[None] - cy[:, None, None]) / fy[:, None, None],
                         torch.ones(len(cameras), height, width, dtype=dtype, device=device)], dim=-1)  # [B,H,W,3]
    c2w = torch.linalg.inv(cameras.viewmats)  # [B,4,4]
    dirs = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d_cam).reshape(-1, 3)
    origins = c2w[:, None, :3, 3].expand(-1, height * width, -1).reshape(-1, 3)
    near, far = intersect_box(origins, dirs, radius)
    return Rays(origins, dirs, near, far, far > near)


def intersect_box(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Slab test against [−radius, radius]³: (near [R], far [R]) with near ≥ NEAR; far = near on a miss."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0, t1 = (-radius - origins) * inv, (radius - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=NEAR)
    far = torch.maximum(t0, t1).amin(-1)
    return near, torch.maximum(far, near)


def sample_along(rays: Rays, n: int, generator: torch.Generator | None = None) -> Samples:
    """`n` equal segments of each ray's span inside the box; one sample per segment, at its midpoint (the default:
    deterministic) or at a uniform position inside it (stratified sampling; draws from `generator`)."""
    R = rays.origins.shape[0]
    span = rays.far - rays.near  # [R]
    if generator is None:
        u = torch.full((R, n), 0.5, dtype=span.dtype, device=span.device)
    else:
        u = torch.rand(R, n, generator=generator, dtype=span.dtype).to(span.device)
    steps = torch.arange(n, dtype=span.dtype, device=span.device)
    t = rays.near[:, None] + (steps[None] + u) * (span / n)[:, None]  # [R,S]
    norm = rays.dirs.norm(dim=-1)  # [R]
    delta = (span * norm / n)[:, None].expand(R, n)  # [R,S], world units
    points = rays.origins[:, None, :] + t[..., None] * rays.dirs[:, None, :]
    return Samples(t, delta, points, rays.dirs / norm[:, None])


def composite(sigma: Tensor, delta: Tensor) -> Tensor:
    """NeRF's weights wᵢ = exp(−Σ_{j<i} σⱼδⱼ)·(1 − exp(−σᵢδᵢ)); sigma, delta [R,S] → [R,S]."""
    tau = sigma * delta
    before = torch.cumsum(tau, dim=-1) - tau  # exclusive prefix sum: optical depth in front of sample i
    return torch.exp(-before) * -torch.expm1(-tau)


def march(fns: FieldFns, samples: Samples, occupancy: Occupancy | None = None, weight_eps: float = 0.0) -> MarchOutput:
    """Evaluate σ (only where `occupancy` allows), the weights, then colour (only where w > `weight_eps`)."""
    R, S = samples.t.shape
    flat = samples.points.reshape(-1, 3)
    live = (samples.delta > 0).reshape(-1)
    if occupancy is not None:
        live = live & occupancy.lookup(flat)
    idx = live.nonzero()[:, 0]
    sigma = flat.new_zeros(R * S).index_put((idx,), fns.density(flat[idx])).reshape(R, S)
    weights = composite(sigma, samples.delta)

    shade = (weights.detach() > weight_eps).reshape(-1) & live
    sidx = shade.nonzero()[:, 0]
    dirs = samples.dirs[:, None, :].expand(R, S, 3).reshape(-1, 3)[sidx]
    color, normals = fns.color(flat[sidx], dirs)
    w = weights.reshape(-1)[sidx]
    ray = sidx // S
    rgb = flat.new_zeros(R, 3).index_add(0, ray, w[:, None] * color)
    orient = flat.new_zeros(R)
    if normals is not None:
        facing_away = (normals * dirs).sum(-1).clamp(min=0)  # n·d > 0: the normal points away from the camera
        orient = orient.index_add(0, ray, w.detach() * facing_away.square())
    alpha = weights.sum(-1)
    depth = (weights * samples.t).sum(-1)
    return MarchOutput(rgb, alpha, depth, weights, orient, int(idx.numel()), int(sidx.numel()))
