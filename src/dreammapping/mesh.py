"""Gaussians → a coloured triangle mesh (for tools that do not read splats: DCC tools, game engines, 3D printing).

1. density field: every Gaussian adds opacity·exp(−½ dᵀΣ⁻¹d) (and that weight times its colour) to the voxels of
   a regular grid within `sigma_extent` σ of its centre — a sparse splat, grouped by footprint size so each group
   is one vectorised scatter;
2. the level is `level` × the median density at the Gaussians' own centres (scale-free: half of what a typical
   splat sees); the space a shell of surface splats encloses (found at a lower level, after a binary closing of
   pinholes, by scipy's binary_fill_holes) is raised above the level so the shell meshes as a solid; the field is
   blurred by `smooth` voxels (splat noise would become bumps), and the grid
   is padded with empty voxels so every surface closes;
3. marching cubes (scikit-image, Lewiner: consistent topology), small floating pieces dropped (trimesh);
4. optional decimation (fast-simplification's quadric collapse);
5. vertex colours: the density-weighted mean of the Gaussians' view-independent (DC) colours, interpolated at the
   vertex (weighted sum and weight interpolated separately, so empty voxels do not darken the edge).

The mesh comes back in our +z-up world; `save_mesh` turns it to the +y-up frame of glTF/OBJ (`axes.MESH_FROM_WORLD`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dreammapping.axes import MESH_FROM_WORLD
from dreammapping.files import atomic_path
from dreammapping.gaussians import Gaussians, quat_to_rotmat

MESH_FORMATS = ("glb", "obj")


@dataclass
class MeshConfig:
    resolution: int = 128  # voxels along the longest side of the Gaussians' bounding box
    level: float = 0.5  # iso level, as a fraction of the median density at the Gaussians' centres
    decimate: float = 0.0  # fraction of the faces to remove (fast-simplification); 0 keeps them all
    sigma_extent: float = 3.0  # a Gaussian reaches the voxels within this many σ of its centre
    max_radius_voxels: int = 12  # cap on a footprint's radius (huge splats are truncated, not allowed to blow up)
    min_opacity: float = 0.01  # fainter Gaussians are left out (floaters; a generated run has many faint ones)
    keep_fraction: float = 0.01  # connected pieces with fewer faces than this fraction of the total are dropped
    fill_interior: bool = True  # fill enclosed empty space, so a shell of splats meshes as a solid
    dilate: float = 0.5  # voxels: σ added in every direction (a low-pass, like 3DGS's 0.3 px²) so splats thinner
    #                      than a voxel are not missed by the voxel centres
    fill_level: float = 0.2  # the enclosed cavity is found at this fraction of the iso level
    close_voxels: int = 2  # before filling, close gaps in the shell up to about twice this many voxels wide
    smooth: float = 1.0  # σ in voxels of a Gaussian blur of the field before marching cubes (0: none)


@dataclass
class DensityGrid:
    density: Tensor  # [X,Y,Z] Σ opacity·Gaussian weight at the voxel centres
    color_sum: Tensor  # [X,Y,Z,3] the same weights times each Gaussian's DC colour
    origin: Tensor  # [3] world position of voxel (0,0,0)
    voxel: float  # voxel side, world units
    centre_density: Tensor  # [N] density at the voxel nearest each (kept) Gaussian's centre


def density_grid(g: Gaussians, cfg: MeshConfig = MeshConfig(), chunk_elems: int = 1 << 22) -> DensityGrid:
    """Splat the Gaussians' density and colour into a voxel grid covering their centres (+ footprint padding)."""
    g = g.detach().to("cpu", torch.float32)
    keep = g.opacities >= cfg.min_opacity
    if not keep.any():
        raise ValueError(f"no Gaussian has opacity ≥ {cfg.min_opacity}; nothing to mesh")
    g = g[keep]
    means, scales, alpha = g.means, g.scales, g.opacities
    rgb = g.colors.clamp(0, 1)
    lo, hi = means.min(0).values, means.max(0).values
    pad = cfg.sigma_extent * scales.max(1).values.median()
    lo, hi = lo - pad, hi + pad
    voxel = float((hi - lo).max()) / max(cfg.resolution - 1, 1)
    dims = torch.clamp(((hi - lo) / voxel).ceil().long() + 1, min=2)
    X, Y, Z = dims.tolist()

    # Σ = R S² Rᵀ + (dilate·voxel)² I; dᵀΣ⁻¹d = |dᵀA|² with A the Cholesky factor of Σ⁻¹: one small matmul
    # per voxel instead of a quadratic form
    M = quat_to_rotmat(g.quats) * scales[:, None, :]  # [N,3,3] = R S
    cov = M @ M.transpose(1, 2) + (cfg.dilate * voxel) ** 2 * torch.eye(3)
    A = torch.linalg.cholesky(torch.linalg.inv(cov.double())).float()  # [N,3,3]
    centre = ((means - lo) / voxel).round().long()  # [N,3] nearest voxel
    base = lo + centre * voxel - means  # [N,3] offset of that voxel's centre from the mean
    sigma_max = (scales.max(1).values.square() + (cfg.dilate * voxel) ** 2).sqrt()
    radius = (cfg.sigma_extent * sigma_max / voxel).ceil().long().clamp(1, cfg.max_radius_voxels)

    # Splat into a grid padded by the largest footprint, so no voxel index needs a bounds check; crop afterwards.
    P = int(radius.max())
    Xp, Yp, Zp = X + 2 * P, Y + 2 * P, Z + 2 * P
    strides = torch.tensor([Yp * Zp, Zp, 1])
    centre_flat = ((centre + P) * strides).sum(1)  # [N]
    density = torch.zeros(Xp * Yp * Zp)
    color_sum = torch.zeros(Xp * Yp * Zp, 3)
    for r in radius.unique().tolist():
        idx = (radius == r).nonzero()[:, 0]
        span = torch.arange(-r, r + 1)
        offsets = torch.stack(torch.meshgrid(span, span, span, indexing="ij"), -1).reshape(-1, 3)  # [S,3]
        offsets = offsets[offsets.square().sum(1) <= (r + 1) ** 2]  # a ball of voxels, not the whole cube
        off_world, off_flat = offsets.float() * voxel, (offsets * strides).sum(1)
        step = max(1, chunk_elems // len(offsets))
        for start in range(0, len(idx), step):
            i = idx[start:start + step]
            y = torch.bmm(base[i][:, None, :], A[i]) + torch.matmul(off_world[None], A[i])  # [n,S,3]
            q = y.square().sum(-1)  # [n,S]
            w = alpha[i, None] * torch.exp(-0.5 * q) * (q <= cfg.sigma_extent ** 2)  # [n,S]
            flat = (centre_flat[i, None] + off_flat[None]).reshape(-1)
            density.index_add_(0, flat, w.reshape(-1))
            color_sum.index_add_(0, flat, (w[:, :, None] * rgb[i, None, :]).reshape(-1, 3))
    crop = (slice(P, P + X), slice(P, P + Y), slice(P, P + Z))
    density = density.reshape(Xp, Yp, Zp)[crop].contiguous()
    color_sum = color_sum.reshape(Xp, Yp, Zp, 3)[crop].contiguous()
    centre = torch.minimum(centre, dims - 1)
    centre_density = density[centre[:, 0], centre[:, 1], centre[:, 2]]
    return DensityGrid(density, color_sum.reshape(X, Y, Z, 3), lo, voxel, centre_density)


def extract_mesh(g: Gaussians, cfg: MeshConfig = MeshConfig()):
    """A `trimesh.Trimesh` of the Gaussians' surface in our +z-up world, with RGBA vertex colours."""
    try:
        import trimesh
        from skimage.measure import marching_cubes
        if cfg.decimate > 0:
            import fast_simplification
    except ImportError as e:
        raise ImportError(f"mesh export needs scikit-image, trimesh and fast-simplification ({e.name} is missing): "
                          "pip install 'dreammapping[formats]'") from e
    from scipy import ndimage

    grid = density_grid(g, cfg)
    density = grid.density.numpy().astype(np.float32)
    level = float(cfg.level * grid.centre_density.median())
    if not level > 0:
        raise ValueError("the Gaussians' density is zero at their centres; nothing to mesh")
    field = density
    if cfg.fill_interior:
        # The shell of a trained splat is patchy at the iso level, so find what it encloses at a lower level (and
        # after a binary closing of pinholes), then raise only that enclosed cavity above the level: the surface
        # stays where the density crosses the level, and the inside is solid.
        shell = density > cfg.fill_level * level
        if cfg.close_voxels > 0:
            k = cfg.close_voxels
            shell = ndimage.binary_closing(np.pad(shell, k), iterations=k)[k:-k, k:-k, k:-k] | shell
        cavity = ndimage.binary_fill_holes(shell) & ~shell
        field = np.where(cavity, np.maximum(density, 2 * level), density)
    if cfg.smooth > 0:  # splat-scale noise would otherwise become voxel-scale bumps (and inflate the area)
        field = ndimage.gaussian_filter(field, cfg.smooth, mode="constant")
    field = np.pad(field, 1)  # empty border: every surface closes
    if field.max() <= level:
        raise ValueError("no voxel reaches the iso level; nothing to mesh")
    verts, faces, _, _ = marching_cubes(field, level=level, spacing=(grid.voxel,) * 3)
    faces = faces[:, ::-1]  # skimage winds them inward for a field that is high inside; outward normals
    verts = verts - grid.voxel + grid.origin.numpy()  # undo the padding, back to world units
    mesh = trimesh.Trimesh(verts, faces, process=False)

    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:  # floaters: each closed, but junk for a printer or a game engine
        big = [p for p in pieces if len(p.faces) >= cfg.keep_fraction * len(mesh.faces)]
        mesh = trimesh.util.concatenate(big)
    if cfg.decimate > 0:
        v, f = fast_simplification.simplify(mesh.vertices, mesh.faces, target_reduction=cfg.decimate)
        mesh = trimesh.Trimesh(v, f, process=False)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_vertex_colors(grid, mesh.vertices))
    return mesh


def _vertex_colors(grid: DensityGrid, verts: np.ndarray) -> np.ndarray:
    """RGBA uint8 [V,4]: interpolated Σw·rgb over interpolated Σw at each vertex."""
    from scipy import ndimage

    coords = ((verts - grid.origin.numpy()) / grid.voxel).T  # [3,V] voxel coordinates
    weight = ndimage.map_coordinates(grid.density.numpy(), coords, order=1, mode="nearest")
    rgb = np.stack([ndimage.map_coordinates(grid.color_sum[..., c].numpy(), coords, order=1, mode="nearest")
                    for c in range(3)], axis=1)
    rgb = rgb / np.maximum(weight, 1e-12)[:, None]
    rgba = np.concatenate([rgb.clip(0, 1), np.ones((len(verts), 1))], axis=1)
    return (rgba * 255).round().astype(np.uint8)


def mesh_report(mesh) -> str:
    """One line: size, and whether the mesh is watertight — or why not."""
    import trimesh

    line = f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces"
    if mesh.is_watertight:
        return f"{line}, watertight (volume {mesh.volume:.4g})"
    edges = mesh.edges_sorted
    open_edges = len(trimesh.grouping.group_rows(edges, require_count=1))
    counts = np.unique(edges, axis=0, return_counts=True)[1]
    shared = int((counts > 2).sum())
    return (f"{line}, NOT watertight: {open_edges} open edges, {shared} edges shared by more than two faces"
            " (decimation can pinch thin parts; export again with --decimate 0)")


def save_mesh(path: str | os.PathLike, mesh) -> Path:
    """Write `mesh` (our +z-up world) as .glb or .obj, +y up with the front facing +z; atomic."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in MESH_FORMATS:
        raise ValueError(f"{path}: a mesh must be .glb or .obj")
    out = mesh.copy()
    out.vertices = mesh.vertices @ MESH_FROM_WORLD.numpy().T
    with atomic_path(path) as tmp:
        out.export(str(tmp), file_type=kind, **({"include_color": True} if kind == "obj" else {}))
    return path
