"""Cameras: look-at poses, pinhole intrinsics, orbit sampling, view tags and turntables.

Conventions (shared with `render`, `toyworld` and gsplat):
- world is right-handed with **+z up**; the object sits around the origin;
- a camera at azimuth `az`, elevation `el` and radius `r` sits at
  r·(cos el·cos az, cos el·sin az, sin el) and looks at `target`; azimuth 0 is the **front**;
- `viewmats` are world-to-camera 4×4 matrices in the **OpenCV** convention (x right, y down, z forward);
- `Ks` are 3×3 pixel intrinsics (fx, fy, cx, cy) with the pixel centre at +0.5, as gsplat uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

VIEW_TAGS = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of B pinhole cameras of one image size."""

    viewmats: Tensor  # [B, 4, 4] world-to-camera, OpenCV
    Ks: Tensor  # [B, 3, 3] pixel intrinsics
    width: int
    height: int
    azimuth: Tensor  # [B] degrees, 0 = front
    elevation: Tensor  # [B] degrees, 90 = straight down from above
    radius: Tensor  # [B] distance to the target
    fovy: Tensor  # [B] vertical field of view, degrees

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    @property
    def view_tags(self) -> list[str]:
        return [view_tag(float(a), float(e)) for a, e in zip(self.azimuth, self.elevation)]

    @property
    def camtoworlds(self) -> Tensor:  # [B, 4, 4]
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> Tensor:  # [B, 3] camera positions in world space
        return self.camtoworlds[:, :3, 3]

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(
            self.viewmats.to(device), self.Ks.to(device), self.width, self.height,
            self.azimuth.to(device), self.elevation.to(device), self.radius.to(device), self.fovy.to(device),
        )

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cameras(
            self.viewmats[idx], self.Ks[idx], self.width, self.height,
            self.azimuth[idx], self.elevation[idx], self.radius[idx], self.fovy[idx],
        )

    def with_size(self, width: int, height: int) -> "Cameras":
        """Same poses and field of view at another resolution."""
        return make_cameras(self.azimuth, self.elevation, self.radius, self.fovy, width, height)


def view_tag(azimuth_deg: float, elevation_deg: float, overhead_threshold: float = 60.0) -> str:
    """DreamFusion's view-dependent prompt tag: overhead above `overhead_threshold`° elevation, else by azimuth
    (front |az| ≤ 45°, back |az| ≥ 135°, side otherwise)."""
    if elevation_deg >= overhead_threshold:
        return "overhead"
    az = (azimuth_deg + 180.0) % 360.0 - 180.0  # wrap to [-180, 180)
    if abs(az) <= 45.0:
        return "front"
    if abs(az) >= 135.0:
        return "back"
    return "side"


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """World-to-camera matrices (OpenCV) for cameras at `eye` [B,3] looking at `target` [B,3]."""
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)  # camera +z
    right = torch.cross(forward, up, dim=-1)
    # Straight above or below the target the up vector is parallel to the view direction: use +y world instead.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.where(degenerate, torch.cross(forward, alt_up, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)  # camera +x
    down = torch.cross(forward, right, dim=-1)  # camera +y (image down)
    R = torch.stack([right, down, forward], dim=-2)  # rows: camera axes in world coordinates
    t = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    viewmats = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    viewmats[:, :3, :3] = R
    viewmats[:, :3, 3] = t
    viewmats[:, 3, 3] = 1.0
    return viewmats


def intrinsics(fovy_deg: Tensor, width: int, height: int) -> Tensor:
    """Pixel intrinsics [B,3,3] for a vertical field of view, square pixels, centred principal point."""
    fy = 0.5 * height / torch.tan(torch.deg2rad(fovy_deg) / 2)
    K = torch.zeros(fovy_deg.shape[0], 3, 3, dtype=fovy_deg.dtype, device=fovy_deg.device)
    K[:, 0, 0] = fy
    K[:, 1, 1] = fy
    K[:, 0, 2] = width / 2
    K[:, 1, 2] = height / 2
    K[:, 2, 2] = 1.0
    return K


def make_cameras(
    azimuth: Tensor, elevation: Tensor, radius: Tensor, fovy: Tensor, width: int, height: int,
    target: Tensor | None = None,
) -> Cameras:
    """Cameras on a sphere around `target` (default origin); angles in degrees, all tensors [B]."""
    azimuth, elevation, radius, fovy = (torch.as_tensor(x, dtype=torch.float32) for x in (azimuth, elevation, radius, fovy))
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    eye = radius[:, None] * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)
    if target is None:
        target = torch.zeros_like(eye)
    eye = eye + target
    return Cameras(look_at(eye, target), intrinsics(fovy, width, height), width, height, azimuth, elevation, radius, fovy)


@dataclass
class OrbitConfig:
    """Ranges of the random orbit cameras used during generation (defaults close to LucidDreamer's)."""

    radius: tuple[float, float] = (3.5, 4.0)  # distance to the origin, scene units
    elevation: tuple[float, float] = (-10.0, 45.0)  # degrees
    azimuth: tuple[float, float] = (-180.0, 180.0)  # degrees
    fovy: tuple[float, float] = (40.0, 50.0)  # degrees
    overhead_probability: float = 0.0  # extra chance of an overhead view (elevation in [60, 89])


def sample_orbit(
    batch: int, width: int, height: int, config: OrbitConfig = OrbitConfig(), generator: torch.Generator | None = None
) -> Cameras:
    """B random cameras on the orbit described by `config`, all looking at the origin."""

    def uniform(lo_hi: tuple[float, float]) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(batch, generator=generator)

    azimuth, elevation = uniform(config.azimuth), uniform(config.elevation)
    radius, fovy = uniform(config.radius), uniform(config.fovy)
    if config.overhead_probability > 0:
        overhead = torch.rand(batch, generator=generator) < config.overhead_probability
        elevation = torch.where(overhead, uniform((60.0, 89.0)), elevation)
    return make_cameras(azimuth, elevation, radius, fovy, width, height)


def turntable(
    n_frames: int, width: int, height: int, elevation: float = 15.0, radius: float = 3.75, fovy: float = 45.0
) -> Cameras:
    """`n_frames` cameras evenly spaced around the object at a fixed elevation, starting at the front."""
    azimuth = torch.arange(n_frames, dtype=torch.float32) * (360.0 / n_frames)
    full = lambda v: torch.full((n_frames,), float(v))  # noqa: E731
    return make_cameras(azimuth, full(elevation), full(radius), full(fovy), width, height)


def canonical_views(width: int, height: int, radius: float = 3.75, fovy: float = 45.0) -> Cameras:
    """Front, side, back and overhead: the fixed views used by evaluation and view grids."""
    return make_cameras(
        torch.tensor([0.0, 90.0, 180.0, 0.0]), torch.tensor([15.0, 15.0, 15.0, 75.0]),
        torch.full((4,), radius), torch.full((4,), fovy), width, height,
    )


def project(points: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Project world points [N,3] into every camera: pixel coordinates [B,N,2] and depths [B,N]."""
    homo = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1)  # [N,4]
    cam = torch.einsum("bij,nj->bni", cameras.viewmats, homo)[..., :3]  # [B,N,3]
    uvw = torch.einsum("bij,bnj->bni", cameras.Ks, cam)
    return uvw[..., :2] / uvw[..., 2:3], cam[..., 2]
