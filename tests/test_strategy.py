import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from dreammapping.gaussians import Gaussians, LearningRates, make_optimizer, quat_to_rotmat
from dreammapping.strategy import DensityStrategy, _update_optimizer, clone, remove, split

H = W = 64
ROLES = ["clone"] * 3 + ["split"] * 2 + ["prune"] + ["keep"] * 4


def hand_built_scene() -> Gaussians:
    """10 Gaussians: 3 small with high gradient, 2 big with high gradient, 1 transparent, 4 ordinary."""
    n = len(ROLES)
    small, large = math.log(0.005), math.log(0.05)
    log_scales = torch.tensor([[large if r == "split" else small] * 3 for r in ROLES])
    log_scales[3, 0] = math.log(0.2)  # one anisotropic big Gaussian: the samples follow its long axis
    quats = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    opacity = torch.tensor([0.001 if r == "prune" else 0.5 for r in ROLES])
    return Gaussians(
        means=torch.arange(n, dtype=torch.float32)[:, None] * torch.tensor([0.1, 0.0, 0.0]),
        log_scales=log_scales, quats=quats, opacity_logits=torch.logit(opacity),
        sh=torch.randn(n, 4, 3, generator=torch.Generator().manual_seed(1)),
    ).requires_grad_()


def fake_render(n: int, pixel_grad: torch.Tensor, batch: int = 2) -> SimpleNamespace:
    """What `rasterize` returns, after backward: means2d with a .grad, radii and an image for the size."""
    means2d = torch.zeros(batch, n, 2, requires_grad=True)
    means2d.grad = pixel_grad[None, :, None].expand(batch, n, 2) / math.sqrt(2)  # norm = pixel_grad
    radii = torch.full((batch, n), 3, dtype=torch.int32)
    return SimpleNamespace(rgb=torch.zeros(batch, H, W, 3), means2d=means2d, radii=radii)


def take_adam_steps(g: Gaussians, opt: torch.optim.Optimizer, steps: int = 2) -> None:
    for _ in range(steps):
        loss = sum((t * torch.randn_like(t)).sum() for t in g.params().values())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_clone_split_prune_counts_and_optimizer_alignment():
    torch.manual_seed(0)
    g = hand_built_scene()
    opt = make_optimizer(g, LearningRates())
    take_adam_steps(g, opt)
    old = {k: v.detach().clone() for k, v in g.params().items()}
    old_state = {grp["name"]: {k: v.clone() for k, v in opt.state[grp["params"][0]].items()}
                 for grp in opt.param_groups}
    strategy = DensityStrategy(refine_start=0, refine_every=10, grad_threshold=2e-4, split_scale_percent=0.01,
                               scene_extent=1.0, prune_opacity=0.005, reset_opacity_every=0)
    # NDC gradient = pixel gradient · (W/2) · batch; 1e-3 NDC is above the threshold, 1e-6 far below
    high = torch.tensor([r in ("clone", "split") for r in ROLES])
    pixel = torch.where(high, 1e-3, 1e-6) / (W / 2 * 2)
    for step in range(1, 10):  # accumulate, no refinement yet
        assert strategy.step_post_backward(g, opt, fake_render(len(g), pixel), step) is g
    assert torch.allclose(strategy.grad2d / strategy.count, torch.where(high, 1e-3, 1e-6), rtol=1e-4)
    new = strategy.step_post_backward(g, opt, fake_render(len(g), pixel), 10)

    assert len(new) == 10 + 3 + 2 - 1
    # layout: kept rows [0..9] minus the 2 split and the pruned one, then the 3 clones, then 2 × 2 split samples
    kept = [0, 1, 2, 6, 7, 8, 9]
    assert torch.equal(new.means[:7], old["means"][kept])
    assert torch.equal(new.means[7:10], old["means"][:3])
    samples = new.means[10:].detach()
    parents = torch.tensor([3, 4, 3, 4])
    assert torch.equal(new.sh[10:], old["sh"][parents]) and torch.equal(new.quats[10:], old["quats"][parents])
    torch.testing.assert_close(new.scales[10:], old["log_scales"][parents].exp() / 1.6)
    assert not torch.equal(samples, old["means"][parents])
    # the anisotropic parent (0.2 along its local x): its samples are offset mostly along that rotated axis
    local = torch.einsum("ji,nj->ni", quat_to_rotmat(old["quats"][3:4])[0], samples[[0, 2]] - old["means"][3])
    assert (local[:, 0].abs() > local[:, 1:].abs().amax(-1)).any()

    # optimizer: same tensors as the Gaussians, moments of kept rows carried over, new rows zero
    for grp in opt.param_groups:
        name = grp["name"]
        p = grp["params"][0]
        assert p is new.params()[name] and p.is_leaf and p.requires_grad
        state = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].shape == p.shape
            assert torch.equal(state[key][:7], old_state[name][key][kept])
            assert state[key][7:].abs().max() == 0
        assert torch.equal(state["step"], old_state[name]["step"])
    take_adam_steps(new, opt)  # and Adam keeps working
    assert torch.isfinite(new.means).all()
    assert strategy.grad2d.shape == (14,) and strategy.grad2d.abs().max() == 0  # statistics restart


def test_max_gaussians_caps_growth_by_gradient():
    g = hand_built_scene()
    opt = make_optimizer(g)
    strategy = DensityStrategy(refine_start=0, refine_every=1, max_gaussians=12, reset_opacity_every=0)
    pixel = torch.tensor([5, 1, 1, 4, 1, 0, 0, 0, 0, 0], dtype=torch.float32) * 1e-3
    new = strategy.step_post_backward(g, opt, fake_render(len(g), pixel), 1)
    # room for 2: the strongest clone candidate (row 0) and split candidate (row 3); then the transparent one goes
    assert len(new) == 10 + 2 - 1
    assert torch.equal(new.means[-3], g.means[0].detach())


def test_invisible_gaussians_do_not_accumulate():
    g = hand_built_scene()
    strategy = DensityStrategy()
    out = fake_render(len(g), torch.ones(len(g)))
    out.radii[:, :5] = 0
    out.radii[0, 5] = 0
    strategy._accumulate(out, len(g))
    assert torch.equal(strategy.count, torch.tensor([0.0] * 5 + [1.0] + [2.0] * 4))
    assert strategy.grad2d[:5].abs().max() == 0
    torch.testing.assert_close(strategy.grad2d[6], torch.tensor(2 * (W / 2) * 2.0))


def test_opacity_reset_and_late_pruning():
    g = hand_built_scene()
    g.opacity_logits.data[-1] = 10.0
    g.log_scales.data[-2] = math.log(0.5)  # too big in world space once pruning by size starts
    opt = make_optimizer(g)
    take_adam_steps(g, opt, 1)
    before = g.opacities.detach().clone()
    strategy = DensityStrategy(refine_start=0, refine_every=1000, reset_opacity_every=100, prune_opacity=0.005,
                               grad_threshold=1.0)
    quiet = torch.zeros(len(g))
    g2 = strategy.step_post_backward(g, opt, fake_render(len(g), quiet), 100)
    # step 100 is not a refinement step: only the reset happened, in place
    assert g2 is g
    expected = torch.minimum(before, torch.tensor(0.01))
    assert expected[-1] == 0.01
    torch.testing.assert_close(g.opacities.detach(), expected)
    opacity_group = next(grp for grp in opt.param_groups if grp["name"] == "opacity_logits")
    assert opt.state[opacity_group["params"][0]]["exp_avg"].abs().max() == 0
    # at step 1000 (> first reset) the transparent one (row 5) and the two over 0.1 (rows 3 and 8) are pruned
    g3 = strategy.step_post_backward(g2, opt, fake_render(len(g2), quiet), 1000)
    assert len(g3) == 7
    assert not (g3.scales.amax(-1) > 0.1).any()


def test_ops_and_update_optimizer_directly():
    g = hand_built_scene()
    opt = make_optimizer(g)
    take_adam_steps(g, opt, 1)
    mask = torch.zeros(len(g), dtype=torch.bool)
    mask[[2, 5]] = True
    assert len(clone(g, opt, mask)) == 12
    g = clone(g, opt, mask)
    g = split(g, opt, mask.repeat(2)[:12], torch.Generator().manual_seed(0))
    assert len(g) == 12 + 2
    g = remove(g, opt, torch.arange(len(g)) % 2 == 0)
    assert len(g) == 7
    assert all(grp["params"][0].shape[0] == len(g) for grp in opt.param_groups)
    # index_map semantics on a bare Adam without state: only the params change
    p = torch.zeros(3, 2, requires_grad=True)
    adam = torch.optim.Adam([{"params": [p], "name": "means"}])
    q = torch.ones(4, 2, requires_grad=True)
    _update_optimizer(adam, {"means": q}, torch.tensor([0, 1, -1, 2]))
    assert adam.param_groups[0]["params"][0] is q and q not in adam.state


def test_screen_size_pruning_after_first_reset():
    g = hand_built_scene()
    opt = make_optimizer(g)
    strategy = DensityStrategy(refine_start=0, refine_every=50, reset_opacity_every=10, prune_scale3d=0.0,
                               prune_scale2d=0.15, grad_threshold=1.0)
    out = fake_render(len(g), torch.zeros(len(g)))
    out.radii[1, 7] = 20  # 20 / 64 of the image side in one view
    assert len(strategy.step_post_backward(g, opt, out, 50)) == 10 - 2  # the transparent one and row 7


def refinement_steps(strategy: DensityStrategy, max_steps: int) -> list[int]:
    """The steps at which `step_post_backward` refines, over a whole run of `max_steps` (refine itself recorded)."""
    seen = []
    strategy.refine = lambda g, opt, step, generator=None, max_steps=None: seen.append(step) or g
    g = hand_built_scene()
    opt = make_optimizer(g, LearningRates())
    for step in range(max_steps):
        strategy.step_post_backward(g, opt, fake_render(len(g), torch.zeros(len(g))), step, max_steps)
    return seen


def test_fractions_place_the_schedule_relative_to_the_run():
    from dreammapping.config import preset_config

    cpu = preset_config("cpu").scene.density
    # the cpu preset: steps 81 and 108 of its 160, as before fractions; a 1000-step run densifies proportionally
    assert refinement_steps(dataclasses.replace(cpu), 160) == [81, 108]
    assert refinement_steps(dataclasses.replace(cpu), 1000) == [507, 676]
    assert [round(s / 1000 * 160, 1) for s in (507, 676)] == [81.1, 108.2]
    # ints stay absolute steps, whatever the run's length
    absolute = DensityStrategy(refine_start=75, refine_stop=112, refine_every=27, reset_opacity_every=0)
    assert refinement_steps(dataclasses.replace(absolute), 160) == refinement_steps(absolute, 1000) == [81, 108]
    # a fraction needs the run's length; out-of-range values are one-line errors
    with pytest.raises(ValueError, match="max_steps"):
        cpu.schedule()
    for bad in (1.5, -1, float("nan"), True):
        with pytest.raises(ValueError, match="refine_start"):
            DensityStrategy(refine_start=bad).check()
