"""Initial Gaussians θ₀: Shap-E (the paper's choice), a sphere, a random ball or a user's .ply.

`initialise(kind, num_points, InitOptions, prompt, ...)` returns the Gaussians together with what was actually used and why, because
the first choice is not always available: Shap-E needs its weights ("openai/shap-e" in the local Hugging Face cache,
or a folder), and nothing here ever downloads. Without them the trainer falls back to a sphere (or a ball) and says
so in one line.

Shap-E path (as GaussianDreamer / the paper): text → Shap-E latent (diffusers' `ShapEPipeline`, latent output) →
the renderer's SDF + colour MLP queried on a grid (what `ShapERenderer.decode_to_mesh` does before marching cubes) →
the surface voxels and their colours → `gaussians.upsample_points` to the target count → `from_points`.
Shap-E's world is +z up like ours; the mesh is re-centred and scaled to `radius`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from dreammapping import gaussians as G
from dreammapping.export import check_finite, load_ply

SHAP_E_HUB_ID = "openai/shap-e"


@dataclass
class InitOptions:
    """Details of the starting Gaussians (which kind and how many are the trainer's `init` and `num_points`)."""

    radius: float = 0.6  # sphere radius / ball radius / Shap-E object's bounding radius, scene units
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)  # the sphere's starting colour
    opacity: float = 0.1  # starting opacity of every Gaussian (3DGS uses 0.1)
    fallback: Literal["sphere", "ball"] = "sphere"  # what to use when Shap-E is not available
    shap_e_model: str = SHAP_E_HUB_ID  # Shap-E weights: a hub id (local cache only, never downloaded) or a folder
    shap_e_guidance_scale: float = 15.0  # Shap-E's own CFG scale (the diffusers example uses 15)
    shap_e_steps: int = 64  # Shap-E prior sampling steps
    shap_e_grid: int = 128  # side of the grid on which Shap-E's SDF is decoded
    shap_e_surface_points: int = 10000  # at most this many surface points are kept before upsampling


@dataclass
class InitResult:
    gaussians: G.Gaussians
    used: str  # "shap-e", "sphere", "ball" or "ply"
    reason: str  # one line: what was used and why


class InitError(ValueError):
    """A user-given initialisation that cannot be used (a missing or unreadable .ply, an unknown kind)."""


class ShapEUnavailable(RuntimeError):
    """Shap-E's weights are not available locally (the message says why)."""


# ---- the entry point --------------------------------------------------------------------------------------------
def initialise(kind: str, num_points: int, cfg: InitOptions | None = None, prompt: str = "", sh_degree: int = 0,
               generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> InitResult:
    """The starting Gaussians (float32, on `device`, no grad) for `prompt`, with which init was used and why.

    `kind`: "shap-e" (falls back to `cfg.fallback` when Shap-E is unavailable), "sphere", "ball" or a .ply path.
    """
    cfg = cfg or InitOptions()
    if kind == "shap-e":
        try:
            points, colors = shap_e_point_cloud(prompt, cfg, generator=generator, device=device)
        except ShapEUnavailable as e:
            g = _simple(cfg.fallback, num_points, cfg, sh_degree, generator)
            return InitResult(g.to(device), cfg.fallback,
                              f"Shap-E unavailable ({e}); initialised a {cfg.fallback} of {len(g)} Gaussians instead")
        points, colors = G.upsample_points(points, colors, num_points, generator=generator)
        g = G.from_points(points.float().cpu(), colors.float().cpu(), sh_degree=sh_degree, opacity=cfg.opacity)
        return InitResult(g.to(device), "shap-e",
                          f"Shap-E ({cfg.shap_e_model}) point cloud of {len(g)} Gaussians for {prompt!r}")
    if kind in ("sphere", "ball"):
        g = _simple(kind, num_points, cfg, sh_degree, generator)
        return InitResult(g.to(device), kind, f"{kind} of {len(g)} Gaussians (init={kind!r})")
    if kind.endswith(".ply") or os.path.exists(kind):
        return InitResult(load_user_ply(kind, sh_degree).to(device), "ply", f"user point cloud {kind}")
    raise InitError(f"unknown init {kind!r}: use 'shap-e', 'sphere', 'ball' or a path to a .ply file")


def _simple(kind: str, n: int, cfg: InitOptions, sh_degree: int, generator: torch.Generator | None) -> G.Gaussians:
    if kind == "sphere":
        return G.sphere(n, radius=cfg.radius, color=cfg.color, sh_degree=sh_degree,
                        opacity=cfg.opacity, generator=generator)
    return G.random_ball(n, radius=cfg.radius, generator=generator, sh_degree=sh_degree,
                         opacity=cfg.opacity)


def load_user_ply(path: str | os.PathLike, sh_degree: int) -> G.Gaussians:
    """A user's .ply (standard 3DGS layout) with its SH bands padded or truncated to `sh_degree`."""
    if not Path(path).is_file():
        raise InitError(f"init .ply not found: {path}")
    try:
        g = load_ply(path)
        check_finite(g, path)  # NaN positions would only show up later as a "diverged" loss
    except Exception as e:  # export raises one-line errors naming the file; keep them one line
        raise InitError(str(e).splitlines()[0] if str(e) else f"cannot read {path}") from None
    if len(g) == 0:
        raise InitError(f"{path}: no Gaussians to start from (the file has 0 vertices)")
    g = g.map(lambda t: t.detach().float())
    k = G.num_sh_bases(sh_degree)
    if g.sh.shape[1] != k:
        sh = torch.zeros(len(g), k, 3)
        m = min(k, g.sh.shape[1])
        sh[:, :m] = g.sh[:, :m]
        g = G.Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits, sh)
    return g


# ---- Shap-E --------------------------------------------------------------------------------------------------------
def load_shap_e(model: str = SHAP_E_HUB_ID, device: torch.device | str = "cpu"):
    """diffusers' `ShapEPipeline` from a folder or the local HF cache (never the network); `ShapEUnavailable` else."""
    try:
        from diffusers import ShapEPipeline
    except ImportError as e:  # pragma: no cover - diffusers is a dependency
        raise ShapEUnavailable(f"diffusers has no ShapEPipeline: {e}") from None
    where = "folder" if Path(model).is_dir() else "local Hugging Face cache"
    if where != "folder" and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise ShapEUnavailable(f"no Shap-E folder at {model}")
    try:
        pipe = ShapEPipeline.from_pretrained(model, local_files_only=True)
    except Exception as e:  # OSError / EnvironmentError / ValueError, depending on what is missing
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShapEUnavailable(f"weights {model!r} not in the {where}: {first[:160]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def shap_e_point_cloud(prompt: str, cfg: InitOptions, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu", pipe=None) -> tuple[Tensor, Tensor]:
    """Points [M,3] on the surface of Shap-E's object for `prompt` and their colours [M,3] in [0,1] (CPU, float32)."""
    if pipe is None:
        pipe = load_shap_e(cfg.shap_e_model, device)
    latents = pipe(prompt, guidance_scale=cfg.shap_e_guidance_scale, num_inference_steps=cfg.shap_e_steps,
                   generator=generator, output_type="latent").images  # [1, num_embeddings, d_latent]
    points, colors = decode_surface(pipe.shap_e_renderer, latents[:1], cfg.shap_e_grid)
    if points.shape[0] == 0:
        raise ShapEUnavailable("Shap-E's object has no surface inside its bounding box")
    if points.shape[0] > cfg.shap_e_surface_points:
        keep = torch.randperm(points.shape[0], generator=generator)[:cfg.shap_e_surface_points]
        points, colors = points[keep], colors[keep]
    return normalise(points, cfg.radius), colors


@torch.no_grad()
def decode_surface(renderer, latent: Tensor, grid: int, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """The surface voxels of a Shap-E latent's SDF on a `grid`³ lattice, with the STF colour there.

    As `ShapERenderer.decode_to_mesh` does, the latent becomes the weights of the renderer's MLP, which is queried
    on a regular grid over its bounding box (SDF > 0 inside). Instead of marching cubes (whose tables live in the
    checkpoint), the inside voxels that touch an outside one are the surface, each jittered within its voxel so
    the cloud is not a lattice.
    """
    from diffusers.pipelines.shap_e.renderer import volume_query_points

    mlp = renderer.mlp
    projected = renderer.params_proj(latent.to(renderer.device, mlp.dtype))
    for name, param in mlp.state_dict().items():
        if f"nerstf.{name}" in projected:
            param.copy_(projected[f"nerstf.{name}"].squeeze(0))
    positions = volume_query_points(renderer.volume, grid).to(renderer.device, mlp.dtype)  # [G³,3], x-major
    sdf, rgb = [], []
    for i in range(0, positions.shape[0], chunk):
        out = mlp(position=positions[None, i:i + chunk], direction=None, ts=None, nerf_level="fine",
                  rendering_mode="stf")
        sdf.append(out.signed_distance[0, :, 0].float().cpu())
        rgb.append(out.channels[0].float().cpu())
    inside = (torch.cat(sdf) > 0).view(grid, grid, grid)
    padded = torch.nn.functional.pad(inside, (1, 1, 1, 1, 1, 1), value=False)  # beyond the box is outside
    outside_neighbour = torch.zeros_like(inside)
    for axis in range(3):
        for shift in (-1, 1):
            outside_neighbour |= ~padded.roll(shift, dims=axis)[1:-1, 1:-1, 1:-1]
    surface = (inside & outside_neighbour).flatten()
    voxel = (renderer.volume.bbox_max - renderer.volume.bbox_min).float().cpu() / max(grid - 1, 1)
    points = positions.float().cpu()[surface]
    points = points + (torch.rand(points.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * voxel
    return points, torch.cat(rgb)[surface].clamp(0, 1)


def normalise(points: Tensor, radius: float) -> Tensor:
    """Centre the cloud's bounding box on the origin and scale it to a bounding radius of `radius`."""
    centre = (points.amax(0) + points.amin(0)) / 2
    p = points - centre
    r = p.norm(dim=-1).max()
    return p * (radius / r) if r > 0 and math.isfinite(float(r)) else p
