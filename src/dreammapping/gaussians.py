"""The 3D Gaussian scene θ: raw (pre-activation) tensors, their activations, and constructors.

Raw parameters are what the optimiser sees (as in the original 3DGS):
log-scales (exp → scales), unnormalised quaternions (normalise → rotations, w x y z order),
opacity logits (sigmoid → opacities) and spherical-harmonic coefficients (degree ≤ 3; `sh[:, 0]` is the DC term,
colour = SH_C0·dc + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # Y_0^0, so that rgb = SH_C0 * dc + 0.5


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(dc: Tensor) -> Tensor:
    return dc * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


@dataclass
class Gaussians:
    """N Gaussians. Every field is a tensor whose first dimension is N (see `PARAM_NAMES`)."""

    means: Tensor  # [N, 3] world positions
    log_scales: Tensor  # [N, 3] log of the standard deviations along the local axes
    quats: Tensor  # [N, 4] unnormalised rotation quaternions, (w, x, y, z)
    opacity_logits: Tensor  # [N] logit of the opacity
    sh: Tensor  # [N, K, 3] SH colour coefficients, K = (degree + 1)²

    # ---- activations -------------------------------------------------------------------------------------------
    @property
    def scales(self) -> Tensor:  # [N, 3]
        return self.log_scales.exp()

    @property
    def rotations(self) -> Tensor:  # [N, 4] unit quaternions
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def opacities(self) -> Tensor:  # [N]
        return torch.sigmoid(self.opacity_logits)

    @property
    def colors(self) -> Tensor:  # [N, 3] view-independent (DC) colour in [0, 1] (unclamped)
        return sh_to_rgb(self.sh[:, 0])

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    # ---- bookkeeping -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def params(self) -> dict[str, Tensor]:
        """Name → tensor, in a fixed order (the optimiser's parameter groups use these names)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def map(self, fn) -> "Gaussians":
        """A new Gaussians with `fn` applied to every tensor."""
        return Gaussians(**{k: fn(v) for k, v in self.params().items()})

    def detach(self) -> "Gaussians":
        return self.map(lambda t: t.detach())

    def clone(self) -> "Gaussians":
        return self.map(lambda t: t.detach().clone())

    def to(self, device=None, dtype=None) -> "Gaussians":
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def requires_grad_(self, flag: bool = True) -> "Gaussians":
        for t in self.params().values():
            t.requires_grad_(flag)
        return self

    def __getitem__(self, idx) -> "Gaussians":
        return self.map(lambda t: t[idx])

    @staticmethod
    def cat(parts: list["Gaussians"]) -> "Gaussians":
        names = parts[0].params().keys()
        return Gaussians(**{k: torch.cat([p.params()[k] for p in parts]) for k in names})

    # ---- constructors (the module-level functions below; repeated here so they are easy to find) ---------------
    @staticmethod
    def from_points(points: Tensor, colors: Tensor, sh_degree: int = 0, opacity: float = 0.1,
                    scale: float | None = None) -> "Gaussians":
        return from_points(points, colors, sh_degree, opacity, scale)

    @staticmethod
    def sphere(n: int, radius: float = 0.5, color=(0.5, 0.5, 0.5), **options) -> "Gaussians":
        return sphere(n, radius, color, **options)

    @staticmethod
    def random_ball(n: int, radius: float = 1.0, generator: torch.Generator | None = None,
                    **options) -> "Gaussians":
        return random_ball(n, radius, generator, **options)


PARAM_NAMES = tuple(f.name for f in fields(Gaussians))


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices [N,3,3] from (w, x, y, z) quaternions [N,4] (normalised here)."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*quats.shape[:-1], 3, 3)


# ---- constructors ------------------------------------------------------------------------------------------------
def knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 1024, use_scipy: bool = True) -> Tensor:
    """Root-mean-square distance [N] of each point to its `k` nearest other points (3DGS's initial scale).

    Exact: scipy's k-d tree (~0.1 s for 50k points), else a chunked `torch.cdist` (memory chunk × N, but
    quadratic time: ~20 s for 50k points on 2 CPU cores).
    """
    n = points.shape[0]
    k = min(k, n - 1)
    if k <= 0:  # a single point has no neighbours: any small blob will do
        return torch.full((n,), 0.01, dtype=points.dtype, device=points.device)
    pts = points.detach().float()
    cKDTree = None
    if use_scipy:
        try:
            from scipy.spatial import cKDTree
        except ImportError:
            pass
    if cKDTree is not None:
        xyz = pts.cpu().double().numpy()
        d, _ = cKDTree(xyz).query(xyz, k=k + 1)  # column 0 is the point itself (or an exact duplicate)
        d2 = torch.from_numpy(d[:, 1:] ** 2).mean(-1)
        return d2.clamp_min(1e-7).sqrt().to(device=points.device, dtype=points.dtype)
    out = []
    for start in range(0, n, chunk):
        d2 = torch.cdist(pts[start:start + chunk], pts).square_()
        # k + 1 smallest include the point itself at distance 0 (or an exact duplicate, which is also distance 0)
        out.append(d2.topk(k + 1, dim=-1, largest=False).values[:, 1:].mean(-1))
    # 3DGS clamps the squared distance so that duplicated points still get a finite log-scale
    return torch.cat(out).clamp_min(1e-7).sqrt().to(points.dtype)


def from_points(points: Tensor, colors: Tensor, sh_degree: int = 0, opacity: float = 0.1,
                scale: float | None = None) -> Gaussians:
    """Isotropic Gaussians at `points` [N,3] with RGB `colors` [N,3] in [0,1] (as 3DGS initialises from SfM).

    `scale` None → each Gaussian's standard deviation is its RMS distance to its 3 nearest neighbours.
    Rotations start at identity, opacities at `opacity`, higher SH bands at zero. Tensors are plain (no grad).
    """
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colors must both be [N,3]; got {tuple(points.shape)}, {tuple(colors.shape)}")
    if not 0 <= sh_degree <= 3:
        raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
    points = points.detach()
    n, dtype, device = points.shape[0], points.dtype, points.device
    if scale is None:
        sigma = knn_mean_distance(points)
    else:
        sigma = torch.full((n,), float(scale), dtype=dtype, device=device)
    quats = torch.zeros(n, 4, dtype=dtype, device=device)
    quats[:, 0] = 1.0
    sh = torch.zeros(n, num_sh_bases(sh_degree), 3, dtype=dtype, device=device)
    sh[:, 0] = rgb_to_sh(colors.detach().to(dtype))
    return Gaussians(
        means=points.clone(),
        log_scales=sigma.log()[:, None].repeat(1, 3),
        quats=quats,
        opacity_logits=torch.full((n,), math.log(opacity / (1 - opacity)), dtype=dtype, device=device),
        sh=sh,
    )


def _unit_vectors(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)


def sphere(n: int, radius: float = 0.5, color=(0.5, 0.5, 0.5), thickness: float = 0.0, sh_degree: int = 0,
           opacity: float = 0.1, scale: float | None = None, generator: torch.Generator | None = None) -> Gaussians:
    """`n` Gaussians of one `color` spread uniformly over a spherical shell with radii [radius·(1−thickness), radius].

    `scale` None → the mean spacing of `n` points on the sphere, so that the shell starts closed.
    """
    dirs = _unit_vectors(n, generator)
    r = radius * (1 - thickness * torch.rand(n, 1, generator=generator))
    if scale is None:
        scale = radius * math.sqrt(4 * math.pi / max(n, 1))
    colors = torch.as_tensor(color, dtype=torch.float32).expand(n, 3)
    return from_points(dirs * r, colors, sh_degree, opacity, scale)


def random_ball(n: int, radius: float = 1.0, generator: torch.Generator | None = None, sh_degree: int = 0,
                opacity: float = 0.1, scale: float | None = None) -> Gaussians:
    """`n` Gaussians uniform in a ball of `radius` with uniform random colours (the usual init without a 3D prior).

    `scale` None → the mean spacing of `n` points in the ball's volume.
    """
    dirs = _unit_vectors(n, generator)
    r = radius * torch.rand(n, 1, generator=generator).pow(1 / 3)  # cube root: uniform in volume
    colors = torch.rand(n, 3, generator=generator)
    if scale is None:
        scale = radius * (4 / 3 * math.pi / max(n, 1)) ** (1 / 3)
    return from_points(dirs * r, colors, sh_degree, opacity, scale)


def upsample_points(points: Tensor, colors: Tensor, target_count: int, generator: torch.Generator | None = None,
                    jitter: float = 0.5) -> tuple[Tensor, Tensor]:
    """Grow a coloured point cloud to `target_count` points (the paper upsamples Shap-E's cloud to ~50k).

    The originals are kept first; each new point copies the colour of a random original and sits at a normal
    offset of `jitter` × that original's nearest-neighbour spacing, so the new points fill the surface rather
    than blur it. `target_count` ≤ N returns the input unchanged.
    """
    n = points.shape[0]
    extra = target_count - n
    if extra <= 0 or n == 0:
        return points, colors
    spacing = knn_mean_distance(points, k=3 if n > 3 else max(n - 1, 1))
    parent = torch.randint(0, n, (extra,), generator=generator)
    offsets = torch.randn(extra, 3, generator=generator).to(points) * (jitter * spacing[parent])[:, None]
    return torch.cat([points, points[parent] + offsets]), torch.cat([colors, colors[parent]])


# ---- learning rates (3DGS's recipe) ------------------------------------------------------------------------------
@dataclass
class LearningRates:
    """Adam learning rates per parameter group, as the original 3DGS sets them."""

    position_init: float = 1.6e-4  # means, at step 0 (× scene_extent)
    position_final: float = 1.6e-6  # means, at max_steps (× scene_extent); log-linear in between
    position_delay_steps: int = 0  # 3DGS's optional warm-up: lr ramps up from delay_mult × lr over these steps
    position_delay_mult: float = 0.01  # starting fraction of the warm-up
    scene_extent: float = 1.0  # scene radius: positions move in scene units, so their lr scales with it
    log_scales: float = 5e-3  # log standard deviations
    quats: float = 1e-3  # unnormalised quaternions
    opacity_logits: float = 5e-2  # opacity logits
    sh_dc: float = 2.5e-3  # sh[:, 0], the view-independent colour
    sh_rest_ratio: float = 1 / 20  # sh[:, 1:] learns this much slower than the DC term (3DGS: dc / 20)

    @property
    def sh_rest(self) -> float:
        return self.sh_dc * self.sh_rest_ratio


def position_lr(step: int, lrs: LearningRates, max_steps: int) -> float:
    """The means' learning rate at `step`: 3DGS's `get_expon_lr_func`, scaled by the scene extent."""
    if step < 0 or (lrs.position_init == 0.0 and lrs.position_final == 0.0):
        return 0.0
    if lrs.position_delay_steps > 0:
        ramp = min(max(step / lrs.position_delay_steps, 0.0), 1.0)
        delay = lrs.position_delay_mult + (1 - lrs.position_delay_mult) * math.sin(0.5 * math.pi * ramp)
    else:
        delay = 1.0
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    lr = math.exp(math.log(lrs.position_init) * (1 - t) + math.log(lrs.position_final) * t)
    return delay * lr * lrs.scene_extent


class GaussianAdam(torch.optim.Adam):
    """Adam whose "sh" group moves its higher SH bands `rest_lr_ratio` times slower than the DC band.

    One `sh` tensor holds both bands, and Adam's step does not change when a gradient is rescaled, so a gradient
    hook cannot give them different rates. Adam's moments do not depend on the lr, so scaling the rest bands'
    step after the fact is exactly Adam with lr × ratio on them.
    """

    @torch.no_grad()
    def step(self, closure=None):
        saved = []
        for group in self.param_groups:
            ratio = group.get("rest_lr_ratio", 1.0)
            for p in group["params"]:
                if ratio != 1.0 and p.grad is not None and p.ndim == 3 and p.shape[1] > 1:
                    saved.append((p, ratio, p[:, 1:].clone()))
        loss = super().step(closure)
        for p, ratio, before in saved:
            p[:, 1:] = before + ratio * (p[:, 1:] - before)
        return loss


def make_optimizer(gaussians: Gaussians, lrs: LearningRates = LearningRates(), eps: float = 1e-15) -> GaussianAdam:
    """Adam with one group per `gaussians.params()` name (group["name"]), each at its 3DGS learning rate.

    The tensors must be leaves that require grad (`gaussians.requires_grad_()`). eps = 1e-15 as in 3DGS.
    """
    lr = {"means": position_lr(0, lrs, 1), "log_scales": lrs.log_scales, "quats": lrs.quats,
          "opacity_logits": lrs.opacity_logits, "sh": lrs.sh_dc}
    groups = [{"params": [t], "lr": lr[name], "name": name} for name, t in gaussians.params().items()]
    groups[PARAM_NAMES.index("sh")]["rest_lr_ratio"] = lrs.sh_rest_ratio
    return GaussianAdam(groups, lr=0.0, eps=eps)


def update_learning_rates(optimizer: torch.optim.Optimizer, step: int, lrs: LearningRates, max_steps: int) -> float:
    """Set the means' group to `position_lr(step)` (the only scheduled rate); returns it."""
    lr = position_lr(step, lrs, max_steps)
    for group in optimizer.param_groups:
        if group.get("name") == "means":
            group["lr"] = lr
    return lr
