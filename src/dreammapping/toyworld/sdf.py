"""Signed distance functions of the toy world's shapes and a batched sphere-tracing renderer.

Scenes travel as padded tensors (`PackedScenes`: per object shape id, centre, size, colour; shape −1 = no object)
so B different scenes render in one vectorised ray-march on any device. The camera model is the 3D renderer's:
OpenCV world-to-camera `viewmats`, pixel intrinsics with pixel centres at +0.5, so a ground-truth render and a
splat render of the same camera compare pixel for pixel.

Shading: Lambert with a fixed key light from the upper front-left (front = +x, left as seen from the front = −y),
a weak fill light from the lower back-right so back views keep their colour, and ambient 0.4; white background.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dreammapping.cameras import Cameras
from dreammapping.toyworld.grammar import SHAPE_EXTENTS, SHAPE_PARAMS, SHAPES, Scene

AMBIENT = 0.4
KEY_STRENGTH = 0.6
FILL_STRENGTH = 0.3
KEY_DIR = (1.0, -0.8, 1.4)  # towards the light: front (+x), left (−y), above (+z)
FILL_DIR = (-1.0, 0.8, -0.2)
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

    def __len__(self) -> int:
        return self.shape.shape[0]

    def to(self, device) -> "PackedScenes":
        return PackedScenes(*(t.to(device) for t in (self.shape, self.center, self.size, self.rgb, self.bound)))

    def __getitem__(self, idx) -> "PackedScenes":
        return PackedScenes(*(t[idx] for t in (self.shape, self.center, self.size, self.rgb, self.bound)))


def pack_scenes(scenes: Sequence[Scene], device: torch.device | str = "cpu") -> PackedScenes:
    """Pad a list of scenes into tensors (built on the CPU, then moved in one copy per tensor)."""
    K = max(1, max(len(s.objects) for s in scenes))
    pad = [(-1, (0.0, 0.0, 0.0), 1.0, (1.0, 1.0, 1.0), 0.0)]
    rows = [
        [(_SHAPE_ID[o.shape], o.center, o.size, o.rgb, SHAPE_EXTENTS[o.shape][2] * o.size) for o in s.objects]
        + pad * (K - len(s.objects))
        for s in scenes
    ]
    shape = torch.tensor([[r[0] for r in row] for row in rows], dtype=torch.long)
    center = torch.tensor([[r[1] for r in row] for row in rows], dtype=torch.float32)
    size = torch.tensor([[r[2] for r in row] for row in rows], dtype=torch.float32)
    rgb = torch.tensor([[r[3] for r in row] for row in rows], dtype=torch.float32)
    bound = torch.tensor([[r[4] for r in row] for row in rows], dtype=torch.float32)
    return PackedScenes(shape, center, size, rgb, bound).to(device)


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


def objects_sdf(points: Tensor, center: Tensor, size: Tensor, shape: Tensor) -> Tensor:
    """Distance of points [...,3] to each object: centre [...,K,3], size [...,K], shape [...,K] → [...,K]."""
    q = (points.unsqueeze(-2) - center) / size.unsqueeze(-1)
    return unit_sdf(q, shape) * size


def scene_sdf(points: Tensor, scenes: PackedScenes) -> tuple[Tensor, Tensor]:
    """points [B,N,3] in scene b → (signed distance [B,N], index of the nearest object [B,N])."""
    d = objects_sdf(points, scenes.center[:, None], scenes.size[:, None], scenes.shape[:, None])  # [B,N,K]
    dmin, nearest = d.min(dim=-1)
    return dmin, nearest


def signed_distance(scene: Scene, points: Tensor) -> Tensor:
    """Signed distance [N] of world points [N,3] to the scene (negative inside)."""
    d, _ = scene_sdf(points[None].float(), pack_scenes([scene], device=points.device))
    return d[0]


def occupancy(scene: Scene, points: Tensor) -> Tensor:
    """bool [N]: the points [N,3] inside some object of the scene."""
    return signed_distance(scene, points) <= 0


def color_at(scene: Scene, points: Tensor) -> Tensor:
    """[N,3] rgb of the object nearest to each point [N,3] (by signed distance)."""
    packed = pack_scenes([scene], device=points.device)
    _, nearest = scene_sdf(points[None].float(), packed)  # [1,N]
    return packed.rgb[0][nearest[0]]


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


_COMPILED = None


def _compiled_march():
    global _COMPILED
    if _COMPILED is None:
        compiled = torch.compile(_march, dynamic=True)

        def march(*args):
            global _COMPILED
            try:
                return compiled(*args)
            except Exception as err:  # no compiler toolchain, unsupported backend...: render eagerly instead
                warnings.warn(f"toyworld renderer: torch.compile failed ({type(err).__name__}: {err}); using eager mode")
                _COMPILED = _march
                return _march(*args)

        _COMPILED = march
    return _COMPILED


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
    if compact_every is None:  # dropping finished rays costs a host sync: a win on the CPU, not on a GPU
        compact_every = 8 if dev.type == "cpu" else 0
    if compile is None:
        compile = dev.type == "cuda"
    march = _compiled_march() if compile else _march
    chunk = compact_every or (8 if compile else steps)  # compiled: one fused kernel per 8 steps
    live, done = None, 0  # indices of the rays still marching (None = all)
    while done < steps:
        n = min(chunk, steps - done)
        if live is None:
            t, dist = march(o, d, t, t_max, center, size, shape, n)
        else:
            tl, dist = march(o[live], d[live], t[live], t_max[live], center[live], size[live], shape[live], n)
            t[live] = tl
        done += n
        if compact_every and done < steps:
            ids = torch.arange(t.shape[0], device=dev) if live is None else live
            live = ids[(dist > 0.05 * HIT_EPS) & (t[ids] <= t_max[ids])]
    p = o + t[:, None] * d
    dist_all = objects_sdf(p, center, size, shape)
    dist, nearest = dist_all.min(-1)
    hit = (dist.abs() < HIT_EPS) & (t <= t_max)

    # Shade the hits: normals by tetrahedral finite differences of the SDF.
    h = 1e-3
    taps = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=p.dtype, device=dev)
    ph = p[:, None, :] + h * taps  # [M,4,3]
    dh = objects_sdf(ph, center[:, None], size[:, None], shape[:, None]).amin(-1)  # [M,4]
    normal = F.normalize((dh[..., None] * taps).sum(1), dim=-1)
    key = F.normalize(torch.tensor(KEY_DIR, device=dev), dim=0)
    fill = F.normalize(torch.tensor(FILL_DIR, device=dev), dim=0)
    shade = AMBIENT + KEY_STRENGTH * (normal @ key).clamp(min=0) + FILL_STRENGTH * (normal @ fill).clamp(min=0)
    base = packed.rgb[bi, nearest]  # [M,3]
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
