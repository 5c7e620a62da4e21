"""Signed distance functions of the toy world's shapes and a batched sphere-tracing renderer.

Scenes travel as padded tensors (`PackedScenes`: per object shape id, centre, size, colour; shape −1 = no object)
so B different scenes render in one vectorised ray-march on any device. The camera model is the 3D renderer's:
OpenCV world-to-camera `viewmats`, pixel intrinsics with pixel centres at +0.5, so a ground-truth render and a
splat render of the same camera compare pixel for pixel.

Shading: Lambert with a key light from the upper front-left (front = +x, left as seen from the front = −y),
a weak fill light from the lower back-right so back views keep their colour, and ambient 0.4; white background.
World v2 scenes may carry their own `grammar.Light`; objects may be turned about +z (`yaw`), stretched vertically
(`aspect`: the distance is then a lower bound scaled by the smaller stretch, exact in sign, which is what sphere
tracing and occupancy need) and patterned in their local frame (`pattern_mask`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dreammapping.cameras import Cameras
from dreammapping.toyworld.grammar import (
    CANONICAL_LIGHT, DOT_RADIUS, PATTERN_PERIOD, PATTERNS, SHAPE_PARAMS, SHAPES, STRIPE_DUTY, Scene, bounding_radius,
)

AMBIENT = CANONICAL_LIGHT.ambient
KEY_STRENGTH = CANONICAL_LIGHT.key_strength
FILL_STRENGTH = CANONICAL_LIGHT.fill_strength
KEY_DIR = CANONICAL_LIGHT.key_dir  # towards the light: front (+x), left (−y), above (+z)
FILL_DIR = CANONICAL_LIGHT.fill_dir
EMPTY = 1e3  # distance reported for padding slots and empty scenes
HIT_EPS = 2e-3  # a ray whose final |distance| is below this (world units) hit the surface

_SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}


@dataclass
class PackedScenes:
    """B scenes of up to K objects each, as tensors."""

    shape: Tensor  # [B,K] long, index into SHAPES, -1 = empty slot
    center: Tensor  # [B,K,3] world position of each object's centre
    size: Tensor  # [B,K] scale of the unit shape
    rgb: Tensor  # [B,K,3] base colour in [0,1]
    bound: Tensor  # [B,K] bounding-sphere radius in world units (0 for empty slots)
    yaw: Tensor | None = None  # [B,K] radians about +z (None: all 0)
    aspect: Tensor | None = None  # [B,K] vertical stretch (None: all 1)
    pattern: Tensor | None = None  # [B,K] long, 0 plain, 1 + index into PATTERNS (None: all plain)
    pattern_rgb: Tensor | None = None  # [B,K,3] pattern colour
    light: Tensor | None = None  # [B,9] unit key dir, key strength, unit fill dir, fill strength, ambient (None: v1's)

    def __len__(self) -> int:
        return self.shape.shape[0]

    def _map(self, fn) -> "PackedScenes":
        return PackedScenes(*(None if (t := getattr(self, f.name)) is None else fn(t) for f in fields(self)))

    def to(self, device) -> "PackedScenes":
        return self._map(lambda t: t.to(device))

    def __getitem__(self, idx) -> "PackedScenes":
        return self._map(lambda t: t[idx])


def _light_row(light) -> list[float]:
    key, fill = (F.normalize(torch.tensor(v, dtype=torch.float32), dim=0).tolist() for v in (light.key_dir, light.fill_dir))
    return [*key, light.key_strength, *fill, light.fill_strength, light.ambient]


def pack_scenes(scenes: Sequence[Scene], device: torch.device | str = "cpu") -> PackedScenes:
    """Pad a list of scenes into tensors (built on the CPU, then moved in one copy per tensor). The v2 fields stay
    None where every scene leaves them at v1's values, so v1 scenes render through v1's arithmetic."""
    K = max(1, max(len(s.objects) for s in scenes))
    pad = [(-1, (0.0, 0.0, 0.0), 1.0, (1.0, 1.0, 1.0), 0.0, 0.0, 1.0, 0, (1.0, 1.0, 1.0))]
    rows = [
        [(_SHAPE_ID[o.shape], o.center, o.size, o.rgb, bounding_radius(o), o.yaw, o.aspect,
          PATTERNS.index(o.pattern) + 1 if o.pattern else 0, o.pattern_rgb) for o in s.objects]
        + pad * (K - len(s.objects))
        for s in scenes
    ]

    def column(i: int, dtype=torch.float32) -> Tensor:
        return torch.tensor([[r[i] for r in row] for row in rows], dtype=dtype)

    packed = PackedScenes(column(0, torch.long), column(1), column(2), column(3), column(4))
    yaw, aspect, pattern = column(5), column(6), column(7, torch.long)
    if yaw.ne(0).any() or aspect.ne(1).any():
        packed.yaw, packed.aspect = yaw, aspect
    if pattern.ne(0).any():
        packed.pattern, packed.pattern_rgb = pattern, column(8)
    if any(s.light is not None for s in scenes):
        packed.light = torch.tensor([_light_row(s.light or CANONICAL_LIGHT) for s in scenes], dtype=torch.float32)
    return packed.to(device)


# ------------------------------------------------------------------------------------------------------------ SDFs
# Unit shapes (size 1) centred at the origin, axis along z; each takes local points and returns distances.


def sd_cube(q: Tensor, half_side: float = SHAPE_PARAMS["cube"]["half_side"]) -> Tensor:
    d = q.abs() - half_side
    return d.clamp(min=0).norm(dim=-1) + d.amax(dim=-1).clamp(max=0)


def sd_sphere(q: Tensor, radius: float = SHAPE_PARAMS["sphere"]["radius"]) -> Tensor:
    return q.norm(dim=-1) - radius


def _sd_cylinder_rz(rho: Tensor, z: Tensor, radius: float, half_height: float) -> Tensor:
    dx, dz = rho - radius, z.abs() - half_height
    return torch.maximum(dx, dz).clamp(max=0) + torch.hypot(dx.clamp(min=0), dz.clamp(min=0))


def _sd_cone_rz(rho: Tensor, z: Tensor, radius: float, half_height: float) -> Tensor:
    # Inigo Quilez's exact capped cone, base radius `radius` at z = -h and apex at z = +h, in the (rho, z) half-plane.
    h = half_height
    ca_x = torch.where(z < 0, (rho - radius).clamp(min=0), rho)
    ca_y = z.abs() - h
    t = ((rho * radius + 2 * h * (h - z)) / (radius * radius + 4 * h * h)).clamp(0, 1)
    cb_x, cb_y = rho - radius * t, z - h + 2 * h * t
    sign = torch.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
    return sign * torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y).sqrt()


def _sd_torus_rz(rho: Tensor, z: Tensor, major: float, minor: float) -> Tensor:
    return torch.hypot(rho - major, z) - minor


def sd_cone(q: Tensor) -> Tensor:
    return _sd_cone_rz(q[..., :2].norm(dim=-1), q[..., 2], **SHAPE_PARAMS["cone"])


def sd_cylinder(q: Tensor) -> Tensor:
    return _sd_cylinder_rz(q[..., :2].norm(dim=-1), q[..., 2], **SHAPE_PARAMS["cylinder"])


def sd_torus(q: Tensor) -> Tensor:
    return _sd_torus_rz(q[..., :2].norm(dim=-1), q[..., 2], **SHAPE_PARAMS["torus"])


def unit_sdf(q: Tensor, shape_id: Tensor) -> Tensor:
    """Distance of local points q [...,3] to the unit shape `shape_id` [...] (broadcast; -1 → EMPTY)."""
    rho, z = q[..., :2].norm(dim=-1), q[..., 2]
    d = torch.stack(
        [
            sd_cube(q),
            (rho * rho + z * z).sqrt() - SHAPE_PARAMS["sphere"]["radius"],
            _sd_cone_rz(rho, z, **SHAPE_PARAMS["cone"]),
            _sd_cylinder_rz(rho, z, **SHAPE_PARAMS["cylinder"]),
            _sd_torus_rz(rho, z, **SHAPE_PARAMS["torus"]),
        ],
        dim=-1,
    )
    shape_id = shape_id.expand(d.shape[:-1])
    d = d.gather(-1, shape_id.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(shape_id >= 0, d, EMPTY)


def to_local(points: Tensor, center: Tensor, size: Tensor, yaw: Tensor | None = None,
             aspect: Tensor | None = None) -> Tensor:
    """Unit-shape coordinates [...,K,3] of points [...,3] for objects centre [...,K,3], size / yaw / aspect [...,K]:
    q = diag(size, size, size·aspect)⁻¹ · R_z(−yaw) · (p − centre)."""
    rel = points.unsqueeze(-2) - center
    if yaw is None:
        return rel / size.unsqueeze(-1)
    c, s = yaw.cos(), yaw.sin()
    x, y = rel[..., 0], rel[..., 1]
    q = torch.stack([c * x + s * y, c * y - s * x, rel[..., 2]], dim=-1)
    return q / torch.stack([size, size, size * aspect], dim=-1)


def objects_sdf(points: Tensor, center: Tensor, size: Tensor, shape: Tensor, yaw: Tensor | None = None,
                aspect: Tensor | None = None) -> Tensor:
    """Distance of points [...,3] to each object: centre [...,K,3], size [...,K], shape [...,K] → [...,K].

    With `yaw` and `aspect` [...,K] (both or neither) the object is turned and stretched; the unit distance times
    the smaller scale is then a lower bound of the true distance (exact where aspect = 1) with the exact sign."""
    q = to_local(points, center, size, yaw, aspect)
    if yaw is None:
        return unit_sdf(q, shape) * size
    return unit_sdf(q, shape) * (size * aspect.clamp(max=1.0))


def pattern_mask(q: Tensor, pattern: Tensor) -> Tensor:
    """bool [...]: unit-shape points q [...,3] lie on the pattern `pattern` [...] (0 plain, 1 + index into PATTERNS).

    Stripes: bands across local x + z, STRIPE_DUTY of each period; checks: a 3D checkerboard of cells
    PATTERN_PERIOD wide, offset half a cell; dots: balls of DOT_RADIUS on a PATTERN_PERIOD lattice."""
    p = PATTERN_PERIOD
    stripes = torch.remainder((q[..., 0] + q[..., 2]) / (math.sqrt(2.0) * p), 1.0) < STRIPE_DUTY
    checks = torch.remainder(torch.floor(q / p + 0.5).sum(-1), 2.0) == 1
    dots = (q - p * torch.round(q / p)).norm(dim=-1) < DOT_RADIUS
    mask = torch.where(pattern == 1, stripes, torch.where(pattern == 2, checks, dots))
    return mask & (pattern > 0)


def _surface_rgb(points: Tensor, packed: PackedScenes, bi: Tensor, nearest: Tensor) -> Tensor:
    """Colour [M,3] at points [M,3] of object `nearest` [M] of scene `bi` [M]: its rgb, or its pattern's."""
    base = packed.rgb[bi, nearest]
    if packed.pattern is None:
        return base
    yaw = None if packed.yaw is None else packed.yaw[bi, nearest]
    aspect = None if packed.aspect is None else packed.aspect[bi, nearest]
    q = to_local(points, packed.center[bi, nearest][:, None], packed.size[bi, nearest][:, None],
                 None if yaw is None else yaw[:, None], None if aspect is None else aspect[:, None])[:, 0]
    on = pattern_mask(q, packed.pattern[bi, nearest])
    return torch.where(on[:, None], packed.pattern_rgb[bi, nearest], base)


def scene_sdf(points: Tensor, scenes: PackedScenes) -> tuple[Tensor, Tensor]:
    """points [B,N,3] in scene b → (signed distance [B,N], index of the nearest object [B,N])."""
    yaw = None if scenes.yaw is None else scenes.yaw[:, None]
    aspect = None if scenes.aspect is None else scenes.aspect[:, None]
    d = objects_sdf(points, scenes.center[:, None], scenes.size[:, None], scenes.shape[:, None], yaw, aspect)
    dmin, nearest = d.min(dim=-1)  # [B,N]
    return dmin, nearest


def signed_distance(scene: Scene, points: Tensor) -> Tensor:
    """Signed distance [N] of world points [N,3] to the scene (negative inside)."""
    d, _ = scene_sdf(points[None].float(), pack_scenes([scene], device=points.device))
    return d[0]


def occupancy(scene: Scene, points: Tensor) -> Tensor:
    """bool [N]: the points [N,3] inside some object of the scene."""
    return signed_distance(scene, points) <= 0


def color_at(scene: Scene, points: Tensor) -> Tensor:
    """[N,3] rgb of the object nearest to each point [N,3] (by signed distance), its pattern included (the pattern is
    a solid texture in the object's frame, so points inside take the colour the surface above them would show)."""
    packed = pack_scenes([scene], device=points.device)
    _, nearest = scene_sdf(points[None].float(), packed)  # [1,N]
    return _surface_rgb(points.float(), packed, torch.zeros_like(nearest[0]), nearest[0])


# ------------------------------------------------------------------------------------------------------- renderer


def camera_rays(cameras: Cameras, supersample: int = 1) -> tuple[Tensor, Tensor]:
    """Ray origins [B,3] and unit directions [B,H·s,W·s,3] through the (sub-)pixel centres (pixel centres at +0.5)."""
    s, dev = supersample, cameras.device
    W, H = cameras.width, cameras.height
    x = (torch.arange(W * s, device=dev, dtype=torch.float32) + 0.5) / s
    y = (torch.arange(H * s, device=dev, dtype=torch.float32) + 0.5) / s
    K = cameras.Ks.float()
    fx, fy, cx, cy = (K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2])
    dx = (x[None, None, :] - cx[:, None, None]) / fx[:, None, None]  # [B,1,Ws]
    dy = (y[None, :, None] - cy[:, None, None]) / fy[:, None, None]  # [B,Hs,1]
    d_cam = torch.stack(torch.broadcast_tensors(dx, dy, torch.ones_like(dx)), dim=-1)  # [B,Hs,Ws,3]
    c2w = torch.linalg.inv(cameras.viewmats.float())
    dirs = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d_cam)
    return c2w[:, :3, 3], F.normalize(dirs, dim=-1)


def _march(o, d, t, t_max, center, size, shape, n: int) -> tuple[Tensor, Tensor]:
    """n sphere-tracing steps of rays o + t·d [M,3] against their scenes' objects [M,K,...]; → (t, last distance)."""
    dist = t
    for _ in range(n):
        dist = objects_sdf(o + t[:, None] * d, center, size, shape).amin(-1)
        t = torch.minimum(t + dist, t_max + 1.0)  # rays that left the bounds stay parked past t_max
    return t, dist


def _march_local(qo, qd, t, t_max, scale, shape, n: int) -> tuple[Tensor, Tensor]:
    """`_march` with each ray already in every object's unit frame (qo + t·qd [M,K,3]); `scale` [M,K] turns unit
    distances into world ones (the smaller stretch, see `objects_sdf`). The frame is affine, so this is exact."""
    dist = t
    for _ in range(n):
        dist = (unit_sdf(qo + t[:, None, None] * qd, shape) * scale).amin(-1)
        t = torch.minimum(t + dist, t_max + 1.0)
    return t, dist


_COMPILED: dict = {}


def _compiled_march(fn=_march):
    if fn not in _COMPILED:
        compiled = torch.compile(fn, dynamic=True)

        def march(*args):
            try:
                return compiled(*args)
            except Exception as err:  # no compiler toolchain, unsupported backend...: render eagerly instead
                warnings.warn(f"toyworld renderer: torch.compile failed ({type(err).__name__}: {err}); using eager mode")
                _COMPILED[fn] = fn
                return fn(*args)

        _COMPILED[fn] = march
    return _COMPILED[fn]


@torch.no_grad()
def render_scenes(
    scenes: Sequence[Scene] | Scene | PackedScenes,
    cameras: Cameras,
    supersample: int = 2,
    steps: int = 48,
    compact_every: int | None = None,
    compile: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Render scene i from camera i (one scene broadcasts to every camera).

    Returns rgb [B,H,W,3] over a white background and coverage alpha [B,H,W,1], both in [0,1], on the cameras'
    device. `supersample` s renders s×s rays per pixel and averages them (anti-aliased edges, like splats);
    `steps` is the fixed number of sphere-tracing steps; `compact_every` n > 0 drops converged or escaped rays every
    n steps (default: 8 on the CPU, never elsewhere; the image is the same except for rare grazing rays that
    pass within 1e-4 of a silhouette, which then count as hits). `compile` fuses the marching steps with
    `torch.compile` (default: on CUDA, where eager mode is bound by kernel launches; the first call compiles for a
    few seconds, and a failure to compile falls back to eager mode with a warning).
    """
    dev = cameras.device
    if isinstance(scenes, Scene):
        scenes = [scenes]
    packed = scenes.to(dev) if isinstance(scenes, PackedScenes) else pack_scenes(scenes, dev)
    B = len(cameras)
    if len(packed) == 1 and B > 1:
        packed = packed[[0] * B]
    if len(packed) != B:
        raise ValueError(f"{len(packed)} scenes for {B} cameras")
    s, W, H = supersample, cameras.width, cameras.height
    origins, dirs = camera_rays(cameras, s)  # [B,3], [B,Hs,Ws,3]
    P = dirs.shape[1] * dirs.shape[2]
    dirs = dirs.reshape(B, P, 3)

    # Bounding spheres: start each ray where it enters the first one, skip rays that miss them all.
    oc = origins[:, None, :] - packed.center  # [B,K,3]
    b = torch.einsum("bpi,bki->bpk", dirs, oc)  # [B,P,K]
    c = (oc * oc).sum(-1) - packed.bound**2  # [B,K]
    disc = b * b - c[:, None, :]
    sq = disc.clamp(min=0).sqrt()
    t_in, t_out = (-b - sq).clamp(min=0), -b + sq
    valid = (disc > 0) & (t_out > 0) & (packed.shape[:, None, :] >= 0)
    t0 = torch.where(valid, t_in, float("inf")).amin(-1)  # [B,P]
    t1 = torch.where(valid, t_out, 0.0).amax(-1)
    ray = valid.any(-1).flatten().nonzero().squeeze(-1)  # [M] flat ray ids that may hit something
    bi = ray // P  # scene / camera of each ray

    o, d = origins[bi], dirs.reshape(-1, 3)[ray]  # [M,3]
    t, t_max = t0.flatten()[ray], t1.flatten()[ray]
    center, size, shape = packed.center[bi], packed.size[bi], packed.shape[bi]  # [M,K,...]
    yaw = None if packed.yaw is None else packed.yaw[bi]
    aspect = None if packed.aspect is None else packed.aspect[bi]
    if compact_every is None:  # dropping finished rays costs a host sync: a win on the CPU, not on a GPU
        compact_every = 8 if dev.type == "cpu" else 0
    if compile is None:
        compile = dev.type == "cuda"
    if yaw is None:
        march, per_ray = _march, [o, d, center, size, shape]
    else:  # world v2: each ray in every object's unit frame once, so a step costs no rotation
        qo = to_local(o, center, size, yaw, aspect)  # [M,K,3]
        qd = to_local(d, torch.zeros_like(center), size, yaw, aspect)
        march, per_ray = _march_local, [qo, qd, size * aspect.clamp(max=1.0), shape]
    march = _compiled_march(march) if compile else march
    chunk = compact_every or (8 if compile else steps)  # compiled: one fused kernel per 8 steps
    live, done = None, 0  # indices of the rays still marching (None = all)
    while done < steps:
        n = min(chunk, steps - done)
        if live is None:
            t, dist = march(*per_ray[:2], t, t_max, *per_ray[2:], n)
        else:
            rays = [x[live] for x in per_ray]
            tl, dist = march(*rays[:2], t[live], t_max[live], *rays[2:], n)
            t[live] = tl
        done += n
        if compact_every and done < steps:
            ids = torch.arange(t.shape[0], device=dev) if live is None else live
            live = ids[(dist > 0.05 * HIT_EPS) & (t[ids] <= t_max[ids])]
    p = o + t[:, None] * d
    dist_all = objects_sdf(p, center, size, shape, yaw, aspect)
    dist, nearest = dist_all.min(-1)
    hit = (dist.abs() < HIT_EPS) & (t <= t_max)

    # Shade the hits: normals by tetrahedral finite differences of the SDF.
    h = 1e-3
    taps = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=p.dtype, device=dev)
    ph = p[:, None, :] + h * taps  # [M,4,3]
    frame = (None, None) if yaw is None else (yaw[:, None], aspect[:, None])
    dh = objects_sdf(ph, center[:, None], size[:, None], shape[:, None], *frame).amin(-1)  # [M,4]
    normal = F.normalize((dh[..., None] * taps).sum(1), dim=-1)
    if packed.light is None:  # v1's fixed light, v1's arithmetic
        key = F.normalize(torch.tensor(KEY_DIR, device=dev), dim=0)
        fill = F.normalize(torch.tensor(FILL_DIR, device=dev), dim=0)
        shade = AMBIENT + KEY_STRENGTH * (normal @ key).clamp(min=0) + FILL_STRENGTH * (normal @ fill).clamp(min=0)
    else:
        lt = packed.light[bi]  # [M,9]
        shade = (lt[:, 8] + lt[:, 3] * (normal * lt[:, 0:3]).sum(-1).clamp(min=0)
                 + lt[:, 7] * (normal * lt[:, 4:7]).sum(-1).clamp(min=0))
    base = _surface_rgb(p, packed, bi, nearest)  # [M,3]
    color = (base * shade[:, None]).clamp(0, 1)

    hitf = hit.float()
    rgb = torch.ones(B * P, 3, device=dev)
    alpha = torch.zeros(B * P, 1, device=dev)
    rgb[ray] = color * hitf[:, None] + (1 - hitf[:, None])
    alpha[ray] = hitf[:, None]
    rgb = rgb.reshape(B, H * s, W * s, 3)
    alpha = alpha.reshape(B, H * s, W * s, 1)
    if s > 1:
        rgb = rgb.reshape(B, H, s, W, s, 3).mean(dim=(2, 4))
        alpha = alpha.reshape(B, H, s, W, s, 1).mean(dim=(2, 4))
    return rgb, alpha
