"""3D Gaussians behind the representation seam (`dreammapping.scene`): their options, scene and training state.

    GaussiansConfig  → GenerateConfig.scene: init, number of points, SH degree, 3DGS learning rates, density control
    GaussianScene    → a `Scene`: `gaussians.Gaussians` rendered by `render.rasterize`, previewed as splats
    GaussianTraining → a `Representation`: Adam with 3DGS's per-parameter lrs (`gaussians.make_optimizer`), the
                       position lr decay, `strategy.DensityStrategy` (densification swaps tensors and Adam rows),
                       the checkpoint's "gaussians" / "optimizer" / "strategy" entries, `gaussians.ply`

The checkpoint entries and their layout are those of the runs written before the seam, so old runs still resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from dreammapping.cameras import Cameras
from dreammapping.export import load_ply, save_ply
from dreammapping.gaussians import Gaussians, LearningRates, make_optimizer, update_learning_rates
from dreammapping.init import InitOptions, initialise
from dreammapping.render import rasterize
from dreammapping.scene import Initialised, RenderOutput
from dreammapping.strategy import DensityStrategy


@dataclass
class GaussiansConfig:
    """A scene of 3D Gaussians (3DGS): how it starts, how it learns, how it grows."""

    state_keys: ClassVar[tuple[str, ...]] = ("gaussians", "optimizer", "strategy")  # its checkpoint entries

    init: str = "shap-e"  # starting Gaussians: "shap-e" (falls back when absent), "sphere", "ball" or a .ply path
    num_points: int = 3000  # number of starting Gaussians (a .ply keeps its own)
    init_options: InitOptions = field(default_factory=InitOptions)  # radius, colour, Shap-E settings
    sh_degree: int = 0  # spherical-harmonic degree of the colours (0: view-independent)
    lr: LearningRates = field(default_factory=LearningRates)  # Adam lrs per Gaussian parameter (3DGS's recipe)
    # clone / split / prune schedule; its steps are fractions of the run (floats) or absolute steps (ints)
    density: DensityStrategy = field(default_factory=DensityStrategy)
    render_backend: str = "auto"  # rasterizer: "auto" (gsplat on CUDA if installed, else torch), "torch", "gsplat"

    def check(self) -> None:
        """ValueError (one line) for a value no run can use."""
        if self.num_points < 1:
            raise ValueError(f"num_points must be ≥ 1, got {self.num_points}")
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {self.sh_degree}")
        self.density.check()

    def create(self, prompt: str, generator: torch.Generator, device: torch.device) -> Initialised:
        """The starting Gaussians (`init.initialise`: Shap-E, sphere, ball or a .ply); InitError when it fails."""
        init = initialise(self.init, self.num_points, self.init_options, prompt, sh_degree=self.sh_degree,
                          generator=generator, device=device)
        return Initialised(GaussianTraining(self, init.gaussians), init.used, init.reason)

    def restore(self, state: dict[str, Any], device: torch.device) -> GaussianTraining:
        """The Gaussians of a checkpoint (its optimiser and statistics come with `load_state_dict`)."""
        return GaussianTraining(self, Gaussians(**{k: v.to(device) for k, v in state["gaussians"].items()}))

    def load(self, path: str | Path, device: torch.device | str = "cpu") -> GaussianScene:
        """A scene from a .ply (standard 3DGS layout)."""
        return GaussianScene(load_ply(path, device=device), self.render_backend)


@dataclass
class GaussianScene:
    """A `Scene` of Gaussians; `render` is `rasterize` with the config's backend."""

    gaussians: Gaussians
    backend: str = "auto"
    size_name: ClassVar[str] = "gaussians"  # what `size()` counts (metrics.json's key)

    def parameters(self) -> dict[str, Tensor]:
        return self.gaussians.params()

    def render(self, cameras: Cameras, background: Tensor | None = None) -> RenderOutput:
        """rgb / alpha / depth of `rasterize`; its whole output (means2d with retained grad, radii) in `extras`."""
        out = rasterize(self.gaussians, cameras.to(self.gaussians.device), background=background,
                        backend=self.backend)
        return RenderOutput(out.rgb, out.alpha, out.depth, extras=out)

    def preview(self) -> Gaussians:
        """The splats themselves, detached (the live view streams them to the browser)."""
        return self.gaussians.detach()

    def size(self) -> int:
        return len(self.gaussians)

    def detach_cpu(self) -> GaussianScene:
        """A detached copy on the CPU, rendered by the CPU's rasterizer (the final pictures)."""
        return GaussianScene(self.gaussians.detach().to("cpu"), "auto")


class GaussianTraining:
    """A `Representation` of Gaussians: 3DGS's Adam and lr schedule, density control, checkpoint, .ply."""

    native_file: ClassVar[str] = "gaussians.ply"
    state_keys: ClassVar[tuple[str, ...]] = GaussiansConfig.state_keys

    def __init__(self, config: GaussiansConfig, gaussians: Gaussians):
        self.config = config
        self.scene = GaussianScene(gaussians.requires_grad_(True), config.render_backend)
        self.optimizer = make_optimizer(gaussians, config.lr)
        self.strategy = dataclasses.replace(config.density)  # a fresh copy: the strategy keeps running statistics

    @property
    def gaussians(self) -> Gaussians:
        return self.scene.gaussians

    def parameters(self) -> list[Tensor]:
        return list(self.gaussians.params().values())

    def update_learning_rates(self, step: int, max_steps: int) -> None:
        update_learning_rates(self.optimizer, step, self.config.lr, max_steps)  # position lr decays log-linearly

    def regularization(self, render: RenderOutput, step: int, max_steps: int) -> None:
        return None  # 3DGS has no loss of its own

    def optimizer_step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step_post_backward(self, render: RenderOutput, step: int, max_steps: int) -> None:
        """Densify / prune on the strategy's schedule (relative to `max_steps`); may replace the scene's tensors."""
        gaussians = self.strategy.step_post_backward(self.gaussians, self.optimizer, render.extras, step, max_steps)
        if gaussians is not self.gaussians:
            self.scene = GaussianScene(gaussians, self.config.render_backend)

    def logs(self) -> dict[str, float]:
        return {"gaussians": len(self.gaussians), "lr_means": self.optimizer.param_groups[0]["lr"]}

    def state_dict(self) -> dict[str, Any]:
        return {"gaussians": {k: v.detach().cpu() for k, v in self.gaussians.params().items()},
                "optimizer": self.optimizer.state_dict(),
                "strategy": {k: (None if v is None else v.cpu()) for k, v in self.strategy.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.gaussians.device
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict({k: (None if v is None else v.to(device)) for k, v in state["strategy"].items()})

    def save(self, path: Path) -> Path:
        return Path(save_ply(path, self.gaussians.detach().to("cpu")))
