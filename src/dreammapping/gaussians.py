"""The 3D Gaussian scene θ: raw (pre-activation) tensors, their activations, and constructors.

Raw parameters are what the optimiser sees (as in the original 3DGS):
log-scales (exp → scales), unnormalised quaternions (normalise → rotations, w x y z order),
opacity logits (sigmoid → opacities) and spherical-harmonic coefficients (degree ≤ 3; `sh[:, 0]` is the DC term,
colour = SH_C0·dc + 0.5).
"""

from __future__ import annotations

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


PARAM_NAMES = tuple(f.name for f in fields(Gaussians))
