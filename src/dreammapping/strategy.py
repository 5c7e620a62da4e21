"""Adaptive density control (3DGS §5): clone, split and prune Gaussians while training, keeping Adam aligned.

Modelled on gsplat's `strategy/default.py` without depending on gsplat: a plain dataclass of settings with one hook,
`step_post_backward`, that the trainer calls after `loss.backward()` and `optimizer.step()` every iteration:

    gaussians = strategy.step_post_backward(gaussians, optimizer, render_out, step, max_steps)

It accumulates each Gaussian's screen-space positional gradient and, on schedule,
- **clones** small Gaussians with a large average gradient (under-reconstruction: copy, let both move apart),
- **splits** large ones with a large gradient into two samples drawn from them, scales divided by 1.6,
- **prunes** nearly transparent ones (and, after the first opacity reset, ones too big in world or on screen),
- **resets opacities** every `reset_opacity_every` steps to at most 2 × `prune_opacity`, so that Gaussians which
  stay useless sink below the pruning threshold instead of hiding behind others.
Whenever the set of Gaussians changes, each Adam group gets the new tensor and its moments follow their rows;
new rows start at zero.

The schedule (`refine_start`, `refine_stop`, `refine_every`, `reset_opacity_every`) is relative to the run's length
when given as a float: a fraction of `max_steps`, rounded to a step (`dreammapping.schedule.at_step`), so that a
longer run densifies proportionally, as the learning-rate and timestep schedules do. An int is an absolute step
(gsplat's convention; run folders written before fractions keep their meaning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dreammapping.gaussians import Gaussians, quat_to_rotmat
from dreammapping.schedule import StepOrFraction, at_step, check_step_or_fraction


@dataclass(frozen=True)
class Schedule:
    """The strategy's schedule resolved to steps for one run length."""

    refine_start: int
    refine_stop: int
    refine_every: int
    reset_opacity_every: int


@dataclass
class DensityStrategy:
    """When and how to clone, split, prune and reset opacity. Defaults are gsplat's (which are 3DGS's).

    The four schedule fields take a step (int) or a fraction of the run (float); see the module docstring."""

    refine_start: StepOrFraction = 500  # first step that may clone / split / prune (statistics accumulate before it)
    refine_stop: StepOrFraction = 15_000  # no cloning, splitting or pruning from this step on
    refine_every: StepOrFraction = 100  # steps between refinements
    grad_threshold: float = 2e-4  # mean screen-space gradient norm (NDC units) above which a Gaussian grows
    split_scale_percent: float = 0.01  # largest axis > this × scene_extent → split, else clone
    scene_extent: float = 1.0  # scene radius in world units; scale thresholds are relative to it
    prune_opacity: float = 5e-3  # prune Gaussians less opaque than this
    prune_scale3d: float = 0.1  # after the first reset, prune largest axis > this × scene_extent (0: never)
    prune_scale2d: float = 0.15  # after the first reset, prune screen radius > this × image side (0: never)
    reset_opacity_every: StepOrFraction = 3000  # steps between opacity resets (0: never); only before refine_stop
    max_gaussians: int = 1_000_000  # cloning and splitting stop at this many Gaussians (highest gradients first)
    absgrad: bool = False  # accumulate means2d.absgrad when the renderer provides it (gsplat's AbsGS option)

    # Running statistics, one entry per Gaussian; reset after every refinement.
    grad2d: Tensor | None = field(default=None, init=False, repr=False)  # [N] summed gradient norms
    count: Tensor | None = field(default=None, init=False, repr=False)  # [N] views in which it was visible
    max_radii: Tensor | None = field(default=None, init=False, repr=False)  # [N] largest radius / image side

    # ---- the schedule ---------------------------------------------------------------------------------------------
    def schedule(self, max_steps: int | None = None) -> Schedule:
        """The schedule in steps for a run of `max_steps` (None: every value must be an absolute step).
        A refinement or reset interval that rounds to 0 steps becomes 1 (0 is "never" only when given as 0)."""
        every = at_step(self.refine_every, max_steps)
        reset = at_step(self.reset_opacity_every, max_steps)
        return Schedule(refine_start=at_step(self.refine_start, max_steps),
                        refine_stop=at_step(self.refine_stop, max_steps),
                        refine_every=max(every, 1),
                        reset_opacity_every=max(reset, 1) if self.reset_opacity_every != 0 else 0)

    def check(self) -> None:
        """ValueError (one line) for a schedule value that is neither a step ≥ 0 nor a fraction in [0, 1]."""
        for name in ("refine_start", "refine_stop", "refine_every", "reset_opacity_every"):
            check_step_or_fraction(getattr(self, name), f"density.{name}")
        if self.refine_every == 0:
            raise ValueError("density.refine_every must be > 0")

    # ---- the hook -------------------------------------------------------------------------------------------------
    def step_post_backward(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, render_out,
                           step: int, max_steps: int | None = None) -> Gaussians:
        """Accumulate this step's statistics, refine on schedule; returns the (possibly new) Gaussians.

        `render_out` needs `means2d` [B,N,2] whose `.grad` was retained, `radii` [B,N] and `rgb` [B,H,W,3] (for
        the image size). Call it after `optimizer.step()`: new tensors have no gradient to step with.
        The returned tensors are leaves that require grad and are the ones in `optimizer`'s groups.
        `max_steps`, the run's length, places the fractions of the schedule (None: it has none).
        """
        plan = self.schedule(max_steps)
        if step >= plan.refine_stop:
            return gaussians
        self._accumulate(render_out, len(gaussians))
        if step > plan.refine_start and step % plan.refine_every == 0:
            gaussians = self.refine(gaussians, optimizer, step, max_steps=max_steps)
        if plan.reset_opacity_every > 0 and step > 0 and step % plan.reset_opacity_every == 0:
            reset_opacity(gaussians, optimizer, 2.0 * self.prune_opacity)
        return gaussians

    def _accumulate(self, render_out, n: int) -> None:
        grad = getattr(render_out.means2d, "absgrad", None) if self.absgrad else None
        grad = render_out.means2d.grad if grad is None else grad
        if grad is None:  # nothing was back-propagated through the render this step
            return
        if grad.shape[-2] != n:
            raise ValueError(f"means2d has {grad.shape[-2]} Gaussians but the scene has {n}")
        height, width = _image_size(render_out)
        batch = grad.shape[0]
        # Pixel → NDC gradients (3DGS thresholds are in NDC), times the batch because the loss averages over views.
        grad = grad.detach() * grad.new_tensor([width / 2.0, height / 2.0]) * batch
        visible = render_out.radii.detach() > 0  # [B,N]
        if self.grad2d is None or self.grad2d.shape[0] != n:
            self._reset_statistics(n, grad.device)
        self.grad2d += (grad.norm(dim=-1) * visible).sum(0)
        self.count += visible.sum(0).to(self.count.dtype)
        radii = render_out.radii.detach().amax(0).float() / max(width, height)
        self.max_radii = torch.maximum(self.max_radii, radii)

    def _reset_statistics(self, n: int, device) -> None:
        self.grad2d = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    # ---- one refinement --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def refine(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, step: int,
               generator: torch.Generator | None = None, max_steps: int | None = None) -> Gaussians:
        """Clone, then split, then prune, using the statistics gathered since the last refinement."""
        reset_every = self.schedule(max_steps).reset_opacity_every
        n = len(gaussians)
        if self.grad2d is None or self.grad2d.shape[0] != n:
            self._reset_statistics(n, gaussians.device)
        mean_grad = self.grad2d / self.count.clamp_min(1)
        high = mean_grad > self.grad_threshold
        big = gaussians.scales.amax(-1) > self.split_scale_percent * self.scene_extent
        # Cap growth: each clone or split adds one Gaussian; keep the largest gradients within the budget.
        budget = max(self.max_gaussians - n, 0)
        if int(high.sum()) > budget:
            order = torch.argsort(torch.where(high, mean_grad, -1.0), descending=True)
            high = torch.zeros_like(high)
            high[order[:budget]] = True
        clone_mask, split_mask = high & ~big, high & big

        max_radii = self.max_radii
        if clone_mask.any():
            gaussians = clone(gaussians, optimizer, clone_mask)
            max_radii = torch.cat([max_radii, max_radii[clone_mask]])
        if split_mask.any():
            split_mask = torch.cat([split_mask, split_mask.new_zeros(len(gaussians) - n)])
            gaussians = split(gaussians, optimizer, split_mask, generator)
            max_radii = torch.cat([max_radii[~split_mask], max_radii[split_mask].repeat(2)])

        prune_mask = gaussians.opacities < self.prune_opacity
        if reset_every > 0 and step > reset_every:
            if self.prune_scale3d > 0:
                prune_mask |= gaussians.scales.amax(-1) > self.prune_scale3d * self.scene_extent
            if self.prune_scale2d > 0:
                prune_mask |= max_radii > self.prune_scale2d
        if prune_mask.any():
            gaussians = remove(gaussians, optimizer, prune_mask)
        self._reset_statistics(len(gaussians), gaussians.device)
        return gaussians

    # ---- checkpointing ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor | None]:
        return {"grad2d": self.grad2d, "count": self.count, "max_radii": self.max_radii}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        self.grad2d, self.count, self.max_radii = state["grad2d"], state["count"], state["max_radii"]


def _image_size(render_out) -> tuple[int, int]:
    """(height, width) of the rendered images."""
    for name in ("rgb", "alpha", "depth"):
        image = getattr(render_out, name, None)
        if image is not None:
            return int(image.shape[1]), int(image.shape[2])
    return int(render_out.height), int(render_out.width)


# ---- operations on Gaussians + optimizer -----------------------------------------------------------------------------
def _leaves(tensors: dict[str, Tensor]) -> Gaussians:
    return Gaussians(**{k: v.detach().requires_grad_(True) for k, v in tensors.items()})


@torch.no_grad()
def clone(gaussians: Gaussians, optimizer: torch.optim.Optimizer, mask: Tensor) -> Gaussians:
    """Append exact copies of the Gaussians in `mask` [N] bool; copies start with zero Adam moments."""
    idx = mask.nonzero().squeeze(-1)
    new = {k: torch.cat([v, v[idx]]) for k, v in gaussians.params().items()}
    index_map = torch.cat([torch.arange(len(gaussians), device=idx.device), torch.full_like(idx, -1)])
    return _replace(gaussians, optimizer, new, index_map)


@torch.no_grad()
def split(gaussians: Gaussians, optimizer: torch.optim.Optimizer, mask: Tensor,
          generator: torch.Generator | None = None, n_samples: int = 2) -> Gaussians:
    """Replace each Gaussian in `mask` by `n_samples` drawn from it, scales divided by 0.8·n_samples (1.6 for 2).

    The kept Gaussians stay first, in order; the samples go at the end with zero Adam moments.
    """
    idx = mask.nonzero().squeeze(-1)
    rest = (~mask).nonzero().squeeze(-1)
    p = gaussians.params()
    scales = gaussians.scales[idx].repeat(n_samples, 1)  # [S·M, 3]
    device = generator.device if generator is not None else scales.device
    noise = torch.randn(scales.shape, generator=generator, device=device).to(scales) * scales
    rotmats = quat_to_rotmat(p["quats"][idx]).repeat(n_samples, 1, 1)
    samples = {k: v[idx].repeat(n_samples, *[1] * (v.ndim - 1)) for k, v in p.items()}
    samples["means"] = samples["means"] + torch.einsum("nij,nj->ni", rotmats, noise)
    samples["log_scales"] = (scales / (0.8 * n_samples)).log()
    new = {k: torch.cat([v[rest], samples[k]]) for k, v in p.items()}
    index_map = torch.cat([rest, torch.full((len(idx) * n_samples,), -1, device=rest.device, dtype=rest.dtype)])
    return _replace(gaussians, optimizer, new, index_map)


@torch.no_grad()
def remove(gaussians: Gaussians, optimizer: torch.optim.Optimizer, mask: Tensor) -> Gaussians:
    """Drop the Gaussians in `mask` [N] bool (and their Adam rows)."""
    keep = (~mask).nonzero().squeeze(-1)
    new = {k: v[keep] for k, v in gaussians.params().items()}
    return _replace(gaussians, optimizer, new, keep)


@torch.no_grad()
def reset_opacity(gaussians: Gaussians, optimizer: torch.optim.Optimizer, max_opacity: float) -> None:
    """Clamp every opacity to at most `max_opacity` in place and forget the opacity group's Adam moments."""
    logits = gaussians.opacity_logits
    limit = torch.logit(torch.tensor(max_opacity, dtype=logits.dtype)).item()
    logits.clamp_(max=limit)  # = logit(min(opacity, max_opacity)), without the round trip through sigmoid
    for group in optimizer.param_groups:
        if group.get("name") == "opacity_logits":
            for value in optimizer.state.get(group["params"][0], {}).values():
                if isinstance(value, Tensor) and value.shape == logits.shape:
                    value.zero_()


def _replace(gaussians: Gaussians, optimizer: torch.optim.Optimizer, new: dict[str, Tensor],
             index_map: Tensor) -> Gaussians:
    result = _leaves(new)
    _update_optimizer(optimizer, result.params(), index_map)
    return result


def _update_optimizer(optimizer: torch.optim.Optimizer, new_params: dict[str, Tensor], index_map: Tensor) -> None:
    """Point each named group at its new tensor and carry its per-row state along.

    `index_map` [N_new] long: row i of every new tensor continues old row `index_map[i]`, or is new where it is
    −1 (its moments start at zero). State shaped like the old parameter (Adam's exp_avg, exp_avg_sq) is remapped;
    anything else (the scalar `step`) is kept as is. Groups whose name is not in `new_params` are left alone.
    """
    keep = index_map >= 0
    src = index_map[keep]
    for group in optimizer.param_groups:
        name = group.get("name")
        if name not in new_params:
            continue
        if len(group["params"]) != 1:
            raise ValueError(f"optimizer group {name!r} must hold exactly one tensor")
        old, new = group["params"][0], new_params[name]
        state = optimizer.state.pop(old, None)
        group["params"][0] = new
        if not state:
            continue
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == old.shape:
                moved = value.new_zeros((new.shape[0], *value.shape[1:]))
                moved[keep] = value[src]
                state[key] = moved
        optimizer.state[new] = state
