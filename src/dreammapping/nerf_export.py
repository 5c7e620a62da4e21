"""A radiance field → the files other tools open: a triangle mesh (marching cubes on σ) and 3D Gaussians.

- `nerf_mesh(field, NerfMeshConfig)`: σ on a regular grid over the field's box, marching cubes (scikit-image,
  Lewiner) at the level σ = `level`, small floating pieces dropped, vertex colours = the field's albedo there
  (mesh viewers light the mesh themselves). Our +z-up world; `mesh.save_mesh` writes .glb / .obj.
- `nerf_gaussians(field, NerfSplatConfig)`: one isotropic Gaussian per visible voxel of a σ grid — voxels whose
  opacity 1 − exp(−σ·voxel) is at least `min_alpha`, less those buried under opaque neighbours on all six sides —
  with that opacity and the colour the field renders there (albedo × the toy world's lights: splats are not lit
  by viewers), so `export.save_ply` gives a file the splat viewers open.

`dreammapping export RUN --format glb|obj|ply|splat` uses these for a NeRF run (`field_file(RUN)`), `render` and
`evaluate` render the field itself (`nerf.load_field`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dreammapping.gaussians import Gaussians, rgb_to_sh
from dreammapping.nerf import NATIVE_FILE, RadianceField


@dataclass
class NerfMeshConfig:
    resolution: int = 128  # samples per side of the box
    level: float = 5.0  # iso level in σ (world⁻¹): a 0.14-unit slab at this density is half opaque
    keep_fraction: float = 0.01  # connected pieces with fewer faces than this fraction of the total are dropped
    decimate: float = 0.0  # fraction of the faces to remove (fast-simplification); 0 keeps them all
    chunk: int = 1 << 18  # points per field evaluation (memory)


@dataclass
class NerfSplatConfig:
    resolution: int = 64  # voxels per side of the box; one Gaussian per kept voxel
    min_alpha: float = 0.05  # voxels less opaque than this are empty
    buried_alpha: float = 0.95  # a voxel whose six neighbours are all at least this opaque is hidden: dropped
    max_gaussians: int = 200_000  # the most opaque are kept beyond this
    scale: float = 0.4  # Gaussian σ as a fraction of the voxel side (larger ones spill ≈ 1 σ past the surface)


@torch.no_grad()
def density_samples(field: RadianceField, resolution: int, chunk: int = 1 << 18) -> tuple[Tensor, Tensor]:
    """σ at the vertices of a regular grid over the box: (σ [N,N,N] indexed [x, y, z], axis coordinates [N])."""
    r = field.cfg.radius
    param = field.density_grid
    axis = torch.linspace(-r, r, resolution, dtype=param.dtype, device=param.device)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    sigma = torch.cat([field.density(pts[i:i + chunk]) for i in range(0, len(pts), chunk)])
    return sigma.reshape(resolution, resolution, resolution).cpu(), axis.cpu()


@torch.no_grad()
def _chunked(fn, points: Tensor, chunk: int) -> Tensor:
    return torch.cat([fn(points[i:i + chunk]) for i in range(0, len(points), chunk)]) if len(points) else \
        fn(points)


def nerf_mesh(field: RadianceField, cfg: NerfMeshConfig = NerfMeshConfig()):
    """A `trimesh.Trimesh` of the surface σ = `cfg.level` in our +z-up world, RGBA vertex colours (albedo)."""
    try:
        import trimesh
        from skimage.measure import marching_cubes
    except ImportError as e:
        raise ImportError(f"mesh export needs scikit-image and trimesh ({e.name} is missing): "
                          "pip install 'dreammapping[formats]'") from e
    sigma, axis = density_samples(field, cfg.resolution, cfg.chunk)
    volume = np.pad(sigma.numpy().astype(np.float32), 1)  # an empty border: every surface closes
    if not volume.max() > cfg.level:
        raise ValueError(f"no point of the field reaches σ = {cfg.level}; nothing to mesh")
    spacing = float(axis[1] - axis[0])
    verts, faces, _, _ = marching_cubes(volume, level=cfg.level, spacing=(spacing,) * 3)
    faces = faces[:, ::-1]  # skimage winds them inward for a field that is high inside; outward normals
    verts = verts - spacing + float(axis[0])  # undo the padding, back to world units
    mesh = trimesh.Trimesh(verts, faces, process=False)
    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:  # floaters
        mesh = trimesh.util.concatenate([p for p in pieces if len(p.faces) >= cfg.keep_fraction * len(mesh.faces)])
    if cfg.decimate > 0:
        try:
            import fast_simplification
        except ImportError as e:
            raise ImportError("--decimate needs fast-simplification: pip install 'dreammapping[formats]'") from e
        v, f = fast_simplification.simplify(mesh.vertices, mesh.faces, target_reduction=cfg.decimate)
        mesh = trimesh.Trimesh(v, f, process=False)
    param = field.density_grid
    v = torch.as_tensor(mesh.vertices, dtype=param.dtype, device=param.device)
    rgb = _chunked(field.albedo, v, cfg.chunk).cpu().numpy()
    rgba = np.concatenate([rgb.clip(0, 1), np.ones((len(rgb), 1))], axis=1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=(rgba * 255).round().astype(np.uint8))
    return mesh


@torch.no_grad()
def nerf_gaussians(field: RadianceField, cfg: NerfSplatConfig = NerfSplatConfig()) -> Gaussians:
    """Isotropic Gaussians at the field's visible voxel centres (see the module's docstring); float32, CPU."""
    r, n = field.cfg.radius, cfg.resolution
    voxel = 2 * r / n
    param = field.density_grid
    axis = torch.linspace(-r + voxel / 2, r - voxel / 2, n, dtype=param.dtype, device=param.device)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    sigma = _chunked(field.density, pts, 1 << 18).reshape(n, n, n)
    alpha = -torch.expm1(-sigma * voxel)
    # min over the six face neighbours (outside the box counts as empty): 1 for a voxel buried in solid
    padded = F.pad(alpha[None, None], (1, 1, 1, 1, 1, 1))[0, 0]
    neighbours = torch.stack([padded[2:, 1:-1, 1:-1], padded[:-2, 1:-1, 1:-1], padded[1:-1, 2:, 1:-1],
                              padded[1:-1, :-2, 1:-1], padded[1:-1, 1:-1, 2:], padded[1:-1, 1:-1, :-2]]).amin(0)
    keep = ((alpha >= cfg.min_alpha) & (neighbours < cfg.buried_alpha)).reshape(-1)
    idx = keep.nonzero()[:, 0]
    a = alpha.reshape(-1)[idx]
    if len(idx) > cfg.max_gaussians:
        top = a.topk(cfg.max_gaussians).indices
        idx, a = idx[top], a[top]
    if len(idx) == 0:
        raise ValueError(f"no voxel of the field is at least {cfg.min_alpha} opaque; nothing to export")
    centres = pts[idx]
    color = _chunked(lambda p: field.shade(field.albedo(p), field.normals(p))
                     if field.cfg.shading == "lambert" else field.albedo(p), centres, 1 << 16)
    N = len(idx)
    a = a.clamp(max=0.99)
    return Gaussians(
        means=centres.float().cpu(),
        log_scales=torch.full((N, 3), float(np.log(cfg.scale * voxel))),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(N, 4).clone(),
        opacity_logits=torch.logit(a.float().cpu()),
        sh=rgb_to_sh(color.float().cpu())[:, None, :],
    )


def field_file(source: str | os.PathLike) -> Path | None:
    """The radiance field a run folder or a path names (RUN/nerf.safetensors, or a .safetensors file), else None
    (a Gaussian run, a .ply, a .splat)."""
    source = Path(source)
    if source.is_dir():
        candidate = source / NATIVE_FILE
        return candidate if candidate.is_file() and not (source / "gaussians.ply").is_file() else None
    return source if source.suffix.lower() == ".safetensors" else None
