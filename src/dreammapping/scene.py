"""The representation seam: what Algorithm 1 needs of a 3D scene, whatever the scene is made of.

The training loop (`dreammapping.train`) sees two small protocols and nothing of Gaussians or radiance fields:

- a `Scene` is what is rendered: its trainable tensors, `render(cameras, background) -> RenderOutput`, and a
  `preview()` for the live view (splats where it has them, else an image);
- a `Representation` owns a scene while it trains: its optimiser(s) and learning-rate schedules,
  `step_post_backward(render, step, max_steps)` for what changes the scene's structure (densification of Gaussians,
  occupancy updates of a field), the state a checkpoint keeps, and its native file (`gaussians.ply`).

A representation is chosen by the type of `GenerateConfig.scene` (a `SceneConfig`): its `create` makes the first
scene (from the prompt, an init file …) and `restore` brings one back from a checkpoint. `RenderOutput` keeps what
every scene renders (rgb, alpha, depth) and carries what only one kind has (Gaussians' `means2d` / `radii`, which
densification reads) in `extras`. Gaussians are one implementation (`dreammapping.gaussian_scene`);
docs/interfaces.md says how to add another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from dreammapping.cameras import Cameras


@dataclass
class RenderOutput:
    """A batch of B rendered views (channels last, as gsplat)."""

    rgb: Tensor  # [B,H,W,3] composited over the background
    alpha: Tensor  # [B,H,W,1] accumulated opacity
    depth: Tensor  # [B,H,W,1] alpha-weighted camera-space z (not normalised by alpha)
    extras: Any = None  # what only this representation renders (Gaussians: the rasterizer's output, means2d, radii)


@runtime_checkable
class Scene(Protocol):
    """A 3D scene that can be rendered; what the loop, the live view and the final pictures use."""

    size_name: ClassVar[str]  # what `size()` counts, e.g. "gaussians" (metrics.json's key)

    def parameters(self) -> dict[str, Tensor]:
        """Name → trainable tensor (leaves that require grad while training)."""

    def render(self, cameras: Cameras, background: Tensor | None = None) -> RenderOutput:
        """Render every camera of `cameras`; `background` [B,3] or [3] in [0,1] (None: white)."""

    def preview(self) -> Any:
        """What the live view shows, detached on the CPU: splats (`Gaussians`) or an image [H,W,3] uint8."""

    def size(self) -> int:
        """How big the scene is in its own unit (`size_name`: "gaussians" counts Gaussians), for metrics and logs."""

    def detach_cpu(self) -> Scene:
        """A detached copy on the CPU (the final pictures and `GenerateResult.scene`)."""


@runtime_checkable
class Representation(Protocol):
    """A scene while it trains: everything of it the loop steps, checkpoints and saves."""

    native_file: ClassVar[str]  # the run folder's file of the final scene, e.g. "gaussians.ply"
    state_keys: ClassVar[tuple[str, ...]]  # the checkpoint entries `state_dict` writes
    scene: Scene  # the current scene; `step_post_backward` may replace it

    def parameters(self) -> list[Tensor]:
        """Every tensor its optimisers train (the divergence check reads their gradients)."""

    def update_learning_rates(self, step: int, max_steps: int) -> None:
        """Set this step's learning rates (schedules relative to the run's length)."""

    def regularization(self, render: RenderOutput, step: int, max_steps: int) -> Tensor | None:
        """The scene's own loss on this step's render (a field's sparsity / orientation terms), added to the
        method's before backward; None when it has none."""

    def optimizer_step(self) -> None:
        """Step every optimiser of the scene."""

    def zero_grad(self) -> None:
        """Forget the gradients of every optimiser of the scene."""

    def step_post_backward(self, render: RenderOutput, step: int, max_steps: int) -> None:
        """After `optimizer_step`: structural updates on schedule (densify / prune, occupancy grids)."""

    def logs(self) -> dict[str, float]:
        """Values for loss.csv and the progress bar (e.g. gaussians, lr_means)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (tensors and plain values only): the keys of `state_keys`."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s output (optimisers, statistics); raises when it does not fit."""

    def save(self, path: Path) -> Path:
        """Write the current scene to its native file (atomically)."""


@dataclass
class Initialised:
    """A representation's first scene and where it came from (for metrics.json and the checkpoint)."""

    representation: Representation
    used: str  # the initialisation actually used (e.g. "sphere" when Shap-E was absent)
    reason: str  # one line saying why


class SceneConfig(Protocol):
    """The options of one representation (`GenerateConfig.scene`); makes and restores its representation."""

    state_keys: ClassVar[tuple[str, ...]]  # the checkpoint entries its representation writes (checked on resume)

    def check(self) -> None:
        """ValueError (one line) for an option no run can use (checked before anything is loaded)."""

    def create(self, prompt: str, generator: torch.Generator, device: torch.device) -> Initialised:
        """The first scene; raises `InitError` (one line) when its initialisation fails."""

    def restore(self, state: dict[str, Any], device: torch.device) -> Representation:
        """A representation holding the scene of a checkpoint's `state` (the optimiser state is loaded later)."""

    def load(self, path: str | Path, device: torch.device | str = "cpu") -> Scene:
        """A scene from its native file."""


@torch.no_grad()
def render_frames(scene: Scene, cameras: Cameras, chunk: int = 8) -> np.ndarray:
    """uint8 frames [B,H,W,3] of `scene` in `cameras` (white background), `chunk` cameras at a time to bound
    memory: the turntable and the view grid of every representation."""
    frames = []
    for start in range(0, len(cameras), chunk):
        rgb = scene.render(cameras[start:start + chunk]).rgb
        frames.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(frames).numpy()
