"""A radiance field in pure PyTorch: the NeRF representation (the paper's Fig. 8), trainable on a CPU at 64².

    field = RadianceField(NerfConfig())                       # dense density + feature grids, a colour MLP
    out   = render_field(field, cameras, background)          # NerfRender: rgb, alpha, depth as RenderOutput
    loss  = guidance(out.rgb …) + nerf_regularizers(out, cfg) # orientation, sparsity, opacity

Geometry: a dense grid of raw densities over the box [−radius, radius]³, read with trilinear `grid_sample`, plus
Magic3D's blob bias (threestudio `implicit-volume`, "blob_magic3d": scale·(1 − |x|/std)) so the field starts as a
soft ball, through softplus: σ(x) = softplus(grid(x) + blob(x)). Appearance: a grid of features and a small MLP →
sigmoid albedo. Shading: the toy world's lights (Lambert key + fill + ambient, `toyworld.sdf`) on normals taken
by central finite differences of the pre-activation density (threestudio's "finite_difference" normals), after an
albedo-only warm-up (DreamFusion). The background is white (the embedded world's) or a small learned environment
MLP of the ray direction (threestudio "neural-environment-map-background") for Stable Diffusion priors.

Why a dense grid and not a hash grid: on this CPU a pure-torch multiresolution hash encoding costs several times
the dense grid's forward + backward at the same number of points (benchmarks/nerf_cost.py measures both), and the
dense grid gives an exact per-cell upper bound of σ, so empty-space skipping (`raymarch.Occupancy`) is exact up to
its threshold with no probing.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dreammapping.cameras import Cameras, make_cameras
from dreammapping.files import atomic_path
from dreammapping.raymarch import FieldFns, Occupancy, camera_rays, march, sample_along
from dreammapping.scene import Initialised, RenderOutput
from dreammapping.toyworld.sdf import AMBIENT, FILL_DIR, FILL_STRENGTH, KEY_DIR, KEY_STRENGTH


@dataclass
class NerfConfig:
    """A radiance field (`GenerateConfig.scene`, `generate … nerf`): field, renderer, regularisers, optimiser."""

    state_keys: ClassVar[tuple[str, ...]] = ("field", "field_optimizer")  # its checkpoint entries

    radius: float = 1.1  # half side of the box [−r, r]³ the field lives in (toy scenes fit in a 1.05 ball)
    grid_resolution: int = 48  # vertices per side of the density and feature grids
    feature_dim: int = 8  # features per grid vertex, the colour MLP's input
    hidden_dim: int = 32  # width of the colour MLP's one hidden layer
    blob_scale: float = 10.0  # Magic3D blob bias: scale·(1 − |x|/std) added before softplus (threestudio: 10)
    blob_std: float = 0.5  # radius where the blob bias crosses 0 (threestudio: 0.5)
    samples_per_ray: int = 64  # segments per ray inside the box (≈ one per voxel along a diagonal)
    jitter: bool = False  # stratified sampling while training (draws from the run's generator); off: midpoints
    occupancy_threshold: float = 0.01  # cells whose σ bound is below this are skipped (0: skip nothing empty)
    weight_eps: float = 1e-4  # colour is evaluated only where a sample's weight exceeds this
    normal_eps: float = 0.02  # finite-difference step of the normals, world units (≈ half a voxel)
    albedo_warmup: float = 0.2  # fraction of the run rendered albedo-only before Lambert shading starts
    shading: Literal["lambert", "albedo"] = "lambert"  # after the warm-up; "albedo": never shade
    # the background while training: "white" (the loop's own, as Gaussians), or "learned": an environment MLP of the
    # ray direction replaces it (SD priors; threestudio's neural environment map); final pictures are on white
    environment: Literal["white", "learned"] = "white"
    lambda_orient: float = 0.0  # weight of DreamFusion's orientation loss Σ sg(w)·max(0, n·d)²
    lambda_sparsity: float = 0.0  # weight of √(alpha² + 0.01), which shrinks floaters (threestudio's sparsity)
    lambda_opaque: float = 0.0  # weight of the binary entropy of alpha, which pushes pixels to 0 or 1
    lr_grid: float = 0.1  # Adam lr of the grids (dense grids take large steps, as DVGO; threestudio: 0.01, hash)
    lr_mlp: float = 0.005  # Adam lr of the colour MLP and the background (threestudio: 0.001)
    betas: tuple[float, float] = (0.9, 0.99)  # Adam betas (threestudio's prolificdreamer: AdamW [0.9, 0.99])
    preview_size: int = 96  # side of the live view's image (the field has no splats to stream)

    # ---- the SceneConfig protocol (dreammapping.scene) --------------------------------------------------------
    def check(self) -> None:
        """ValueError (one line) for a value no run can use."""
        positive = {"radius": self.radius, "blob_std": self.blob_std, "normal_eps": self.normal_eps}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name in ("grid_resolution", "feature_dim", "hidden_dim", "samples_per_ray", "preview_size"):
            if getattr(self, name) < (2 if name == "grid_resolution" else 1):
                raise ValueError(f"{name} must be ≥ {2 if name == 'grid_resolution' else 1}, got {getattr(self, name)}")
        if not 0 <= self.albedo_warmup <= 1:
            raise ValueError(f"albedo_warmup is a fraction of the run, in [0, 1]; got {self.albedo_warmup}")
        for name in ("occupancy_threshold", "weight_eps", "lambda_orient", "lambda_sparsity", "lambda_opaque",
                     "lr_grid", "lr_mlp"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.shading not in ("lambert", "albedo") or self.environment not in ("white", "learned"):
            raise ValueError(f"shading is 'lambert' or 'albedo' and environment 'white' or 'learned'; got "
                             f"{self.shading!r}, {self.environment!r}")

    def create(self, prompt: str, generator: torch.Generator, device: torch.device) -> Initialised:
        """A fresh field: Magic3D's density blob, zero features (the prompt and generator are not needed)."""
        field = RadianceField(self).to(device)
        reason = f"a density blob (Magic3D: {self.blob_scale:g}·(1 − |x|/{self.blob_std:g}) before softplus)"
        return Initialised(NerfTraining(self, field), "blob", reason)

    def restore(self, state: dict[str, Any], device: torch.device) -> NerfTraining:
        """The field of a checkpoint (its optimiser comes with `load_state_dict`)."""
        field = RadianceField(self)
        field.load_state_dict(state["field"])
        return NerfTraining(self, field.to(device))

    def load(self, path: str | Path, device: torch.device | str = "cpu") -> NerfScene:
        """A scene from its native file (nerf.safetensors; the file's own field settings win over `self`'s)."""
        field, _ = load_field(path, device)
        return NerfScene(field)


@dataclass
class NerfRender:
    """A batch of B views of a field, in `rasterize`'s conventions (rgb / alpha / depth as `RenderOutput`), plus
    what the regularisers and the cost counters need."""

    rgb: Tensor  # [B,H,W,3] composited over the background
    alpha: Tensor  # [B,H,W,1] accumulated opacity
    depth: Tensor  # [B,H,W,1] alpha-weighted camera-space z (not normalised by alpha)
    orient: Tensor  # [B,H,W,1] Σ sg(w)·max(0, n·d)² per pixel (0 where nothing was shaded)
    evaluated: int  # samples whose density was evaluated (after the occupancy skip)
    shaded: int  # samples whose colour was evaluated (after the weight cut)


class RadianceField(nn.Module):
    """σ and albedo of the box [−radius, radius]³. Grids are [1,C,R,R,R] indexed [z, y, x] (grid_sample's
    layout: the last coordinate of a point is x)."""

    def __init__(self, cfg: NerfConfig = NerfConfig()):
        super().__init__()
        self.cfg = cfg
        R = cfg.grid_resolution
        self.density_grid = nn.Parameter(torch.zeros(1, 1, R, R, R))  # raw, before blob bias and softplus
        self.feature_grid = nn.Parameter(torch.zeros(1, cfg.feature_dim, R, R, R))
        self.color_mlp = nn.Sequential(nn.Linear(cfg.feature_dim, cfg.hidden_dim), nn.ReLU(),
                                       nn.Linear(cfg.hidden_dim, 3))
        # The environment only exists where it is used, so a white-background field has no dead parameters.
        self.env_mlp = (nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3))
                        if cfg.environment == "learned" else None)
        self.register_buffer("key_light", F.normalize(torch.tensor(KEY_DIR), dim=0), persistent=False)
        self.register_buffer("fill_light", F.normalize(torch.tensor(FILL_DIR), dim=0), persistent=False)

    # ---- geometry ----------------------------------------------------------------------------------------------
    def _sample(self, grid: Tensor, points: Tensor) -> Tensor:
        """Trilinear read of `grid` [1,C,R,R,R] at world points [N,3] → [N,C]."""
        coords = (points / self.cfg.radius).to(grid.dtype).reshape(1, 1, 1, -1, 3)
        return F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)[0, :, 0, 0].T

    def blob(self, points: Tensor) -> Tensor:
        """[N,3] → [N] the pre-activation density bias."""
        return self.cfg.blob_scale * (1 - points.norm(dim=-1) / self.cfg.blob_std)

    def raw_density(self, points: Tensor) -> Tensor:
        """[N,3] → [N] density before softplus (grid + blob)."""
        return self._sample(self.density_grid, points)[:, 0] + self.blob(points)

    def density(self, points: Tensor) -> Tensor:
        """[N,3] → [N] σ ≥ 0."""
        return F.softplus(self.raw_density(points))

    def normals(self, points: Tensor) -> Tensor:
        """[N,3] → [N,3] unit normals −∇(raw density)/|∇|, by central differences of step `normal_eps`."""
        e = self.cfg.normal_eps
        offsets = torch.eye(3, dtype=points.dtype, device=points.device) * e  # [3,3]
        probe = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # [N,6,3]
        raw = self.raw_density(probe.reshape(-1, 3)).reshape(-1, 6)
        grad = (raw[:, :3] - raw[:, 3:]) / (2 * e)
        return -F.normalize(grad, dim=-1, eps=1e-12)

    def albedo(self, points: Tensor) -> Tensor:
        """[N,3] → [N,3] in (0, 1)."""
        return torch.sigmoid(self.color_mlp(self._sample(self.feature_grid, points)))

    def shade(self, albedo: Tensor, normals: Tensor) -> Tensor:
        """The toy world's lighting: albedo·(ambient + key·max(0, n·l_key) + fill·max(0, n·l_fill)), ≤ 1."""
        light = (AMBIENT + KEY_STRENGTH * (normals @ self.key_light.to(normals.dtype)).clamp(min=0)
                 + FILL_STRENGTH * (normals @ self.fill_light.to(normals.dtype)).clamp(min=0))
        return (albedo * light[:, None]).clamp(max=1.0)

    def environment(self, dirs: Tensor) -> Tensor:
        """[N,3] unit directions → [N,3] background colour (white without a learned environment)."""
        if self.env_mlp is None:
            return torch.ones_like(dirs)
        return torch.sigmoid(self.env_mlp(dirs))

    # ---- empty space -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def occupancy(self, threshold: float | None = None) -> Occupancy:
        """Cells (between grid vertices) where σ can exceed `threshold`: trilinear interpolation never exceeds the
        largest of a cell's 8 corners and the blob bias is largest at the cell's point nearest the origin, so
        softplus(max corner + max blob) bounds σ everywhere in the cell — skipping below it is exact up to the
        threshold."""
        threshold = self.cfg.occupancy_threshold if threshold is None else threshold
        R, r = self.cfg.grid_resolution, self.cfg.radius
        corner_max = F.max_pool3d(self.density_grid, kernel_size=2, stride=1)[0, 0]  # [R-1]^3
        edges = torch.linspace(-r, r, R, dtype=self.density_grid.dtype, device=self.density_grid.device)
        lo, hi = edges[:-1], edges[1:]
        nearest = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo))).abs()  # per axis
        dist = (nearest[:, None, None] ** 2 + nearest[None, :, None] ** 2 + nearest[None, None, :] ** 2).sqrt()
        blob_max = self.cfg.blob_scale * (1 - dist / self.cfg.blob_std)
        return Occupancy(F.softplus(corner_max + blob_max) > threshold, r)


def render_field(field: RadianceField, cameras: Cameras, background: Tensor | None = None,
                 width: int | None = None, height: int | None = None, shading: str | None = None,
                 skip: bool = True, generator: torch.Generator | None = None) -> NerfRender:
    """Volume-render `field` into every camera; `rasterize`'s conventions (channels last, camera-space depth).

    background: [3] or [B,3] in [0,1]; None: the field's own (white, or its learned environment per pixel).
    shading: "lambert" | "albedo" (None: the config's). skip: occupancy + weight-cut skipping (off: every sample is
    evaluated, the reference). generator: jittered samples (stratified) instead of midpoints.
    """
    cfg = field.cfg
    param = field.density_grid
    cams = cameras.to(param.device)
    if cams.viewmats.dtype != param.dtype:  # float64 for the gradient tests
        cams = type(cams)(cams.viewmats.to(param.dtype), cams.Ks.to(param.dtype), cams.width, cams.height,
                          cams.azimuth, cams.elevation, cams.radius, cams.fovy)
    W = cams.width if width is None else int(width)
    H = cams.height if height is None else int(height)
    B = len(cams)
    rays = camera_rays(cams, W, H, cfg.radius)
    samples = sample_along(rays, cfg.samples_per_ray, generator)
    shading = cfg.shading if shading is None else shading

    def color(points: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor | None]:
        albedo = field.albedo(points)
        if shading == "albedo":
            return albedo, None
        n = field.normals(points)
        return field.shade(albedo, n), n

    out = march(FieldFns(field.density, color), samples, field.occupancy() if skip else None,
                cfg.weight_eps if skip else 0.0)
    if background is None:
        bg = field.environment(samples.dirs)  # [B·H·W,3]
    else:
        bg = torch.as_tensor(background, dtype=param.dtype, device=param.device).expand(B, 3)
        bg = bg[:, None, :].expand(B, H * W, 3).reshape(-1, 3)
    rgb = out.rgb + (1 - out.alpha)[:, None] * bg
    shape = (B, H, W)
    return NerfRender(rgb=rgb.reshape(*shape, 3), alpha=out.alpha.reshape(*shape, 1),
                      depth=out.depth.reshape(*shape, 1), orient=out.orient.reshape(*shape, 1),
                      evaluated=out.evaluated, shaded=out.shaded)


@dataclass
class NerfLosses:
    total: Tensor  # scalar: λ_orient·orient + λ_sparsity·sparsity + λ_opaque·opaque
    orient: Tensor  # scalar: mean per covered pixel of Σ sg(w)·max(0, n·d)²
    sparsity: Tensor  # scalar: mean of √(alpha² + 0.01)
    opaque: Tensor  # scalar: mean binary entropy of alpha


def nerf_regularizers(out: NerfRender, cfg: NerfConfig) -> NerfLosses:
    """The field's own losses (DreamFusion's orientation, threestudio's sparsity and opacity), weighted by `cfg`."""
    alpha = out.alpha
    covered = (alpha.detach() > 0).sum().clamp(min=1)
    orient = out.orient.sum() / covered
    sparsity = (alpha.square() + 0.01).sqrt().mean()
    a = alpha.clamp(1e-5, 1 - 1e-5)
    opaque = -(a * a.log() + (1 - a) * (1 - a).log()).mean()
    total = cfg.lambda_orient * orient + cfg.lambda_sparsity * sparsity + cfg.lambda_opaque * opaque
    return NerfLosses(total, orient, sparsity, opaque)


def make_nerf_optimizer(field: RadianceField, cfg: NerfConfig) -> torch.optim.Adam:
    """Adam with one group for the grids (lr_grid) and one for the networks (lr_mlp); fused where torch has it."""
    nets = [p for name, p in field.named_parameters() if not name.endswith("_grid")]
    groups = [{"params": [field.density_grid, field.feature_grid], "lr": cfg.lr_grid, "name": "grids"},
              {"params": nets, "lr": cfg.lr_mlp, "name": "networks"}]
    return torch.optim.Adam(groups, betas=cfg.betas, eps=1e-15)


def shading_at(step: int, max_steps: int, cfg: NerfConfig) -> str:
    """"albedo" during the warm-up (the first `albedo_warmup` of the run), then the config's shading."""
    return "albedo" if step < math.ceil(cfg.albedo_warmup * max_steps) else cfg.shading


# ================================================================================================ behind the seam
NATIVE_FILE = "nerf.safetensors"


def save_field(path: str | Path, field: RadianceField, shading: str) -> Path:
    """The field's tensors as safetensors, its `NerfConfig` and current shading as JSON metadata; atomic."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in field.state_dict().items()}
    config = {f.name: getattr(field.cfg, f.name) for f in dataclasses.fields(field.cfg)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "dreammapping-nerf", "config": json.dumps(config),
                                                "shading": shading})
    return path


def load_field(path: str | Path, device: torch.device | str = "cpu") -> tuple[RadianceField, str]:
    """(field, shading) from `save_field`'s file; ValueError (one line) for a file that is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "dreammapping-nerf":
            raise ValueError("not a radiance field of this program")
        options = json.loads(meta["config"])
        options["betas"] = tuple(options["betas"])
        cfg = NerfConfig(**options)
        field = RadianceField(cfg)
        field.load_state_dict(load_file(str(path)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot read a radiance field ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return field.to(device).requires_grad_(False), meta.get("shading", cfg.shading)


class NerfScene:
    """A `Scene` of a radiance field: volume rendering; the live view gets a rendered image."""

    size_name: ClassVar[str] = "occupied_cells"  # grid cells that may hold density (metrics.json's key)

    def __init__(self, field: RadianceField, shading: str | None = None):
        self.field = field
        self.shading = field.cfg.shading if shading is None else shading  # "albedo" during the warm-up

    def parameters(self) -> dict[str, Tensor]:
        return dict(self.field.named_parameters())

    def render(self, cameras: Cameras, background: Tensor | None = None) -> RenderOutput:
        """rgb / alpha / depth of `render_field` (background None: white, as `rasterize`); the `NerfRender` (with
        the regularisers' inputs) in `extras`. While training, a learned environment replaces `background`."""
        param = self.field.density_grid
        training = param.requires_grad and torch.is_grad_enabled()
        if training and self.field.env_mlp is not None:
            background = None  # render_field: the environment
        elif background is None:
            background = torch.ones(3, dtype=param.dtype, device=param.device)
        jitter = torch.default_generator if self.field.cfg.jitter and training else None
        out = render_field(self.field, cameras, background, shading=self.shading, generator=jitter)
        return RenderOutput(out.rgb, out.alpha, out.depth, extras=out)

    @torch.no_grad()
    def preview(self) -> np.ndarray:
        """uint8 [S,S,3]: the field from the front-left, 15° up, on white (S = `preview_size`)."""
        S = self.field.cfg.preview_size
        one = lambda v: torch.tensor([float(v)])  # noqa: E731
        cams = make_cameras(one(30), one(15), one(3.75), one(45), S, S)
        rgb = self.render(cams).rgb[0].clamp(0, 1)
        return (rgb * 255).round().to(torch.uint8).cpu().numpy()

    def size(self) -> int:
        return int(self.field.occupancy().cells.sum())

    def detach_cpu(self) -> NerfScene:
        return NerfScene(copy.deepcopy(self.field).cpu().requires_grad_(False), self.shading)


class NerfTraining:
    """A `Representation` of a radiance field: Adam on the grids and networks, the albedo warm-up, the
    regularisers, the checkpoint's "field" / "field_optimizer" entries, nerf.safetensors. Empty-space skipping needs
    no update after a step: the occupancy bound is recomputed from the grid at every render (a max-pool)."""

    native_file: ClassVar[str] = NATIVE_FILE
    state_keys: ClassVar[tuple[str, ...]] = NerfConfig.state_keys

    def __init__(self, config: NerfConfig, field: RadianceField):
        self.config = config
        self.scene = NerfScene(field.requires_grad_(True))
        self.optimizer = make_nerf_optimizer(field, config)

    @property
    def field(self) -> RadianceField:
        return self.scene.field

    def parameters(self) -> list[Tensor]:
        return list(self.field.parameters())

    def update_learning_rates(self, step: int, max_steps: int) -> None:
        """Constant lrs (as threestudio's ProlificDreamer); the shading follows the warm-up, relative to the run."""
        self.scene.shading = shading_at(step, max_steps, self.config)

    def regularization(self, render: RenderOutput, step: int, max_steps: int) -> Tensor:
        """λ-weighted orientation, sparsity and opacity losses of this step's render (added to the method's loss)."""
        return nerf_regularizers(render.extras, self.config).total

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step_post_backward(self, render: RenderOutput, step: int, max_steps: int) -> None:
        """Nothing changes shape: the grids stay, and occupancy is derived from them at each render."""

    def logs(self) -> dict[str, float]:
        out = {"occupied_cells": self.scene.size(), "lr_grid": self.optimizer.param_groups[0]["lr"]}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"field": {k: v.detach().cpu() for k, v in self.field.state_dict().items()},
                "field_optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["field_optimizer"])

    def save(self, path: Path) -> Path:
        return save_field(path, self.field, self.scene.shading)
