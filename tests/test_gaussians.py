import math

import pytest
import torch

from dreammapping.gaussians import (
    PARAM_NAMES, SH_C0, Gaussians, LearningRates, from_points, knn_mean_distance, make_optimizer, position_lr,
    quat_to_rotmat, random_ball, rgb_to_sh, sh_to_rgb, sphere, update_learning_rates, upsample_points,
)


def grid(n: int = 5, h: float = 0.1) -> torch.Tensor:
    axis = torch.arange(n, dtype=torch.float32) * h
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def test_activations():
    g = Gaussians(
        means=torch.zeros(2, 3), log_scales=torch.log(torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])),
        quats=torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 3.0]]), opacity_logits=torch.tensor([0.0, math.log(3.0)]),
        sh=torch.zeros(2, 4, 3),
    )
    torch.testing.assert_close(g.scales, torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(g.rotations, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    torch.testing.assert_close(g.opacities, torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(g.colors, torch.full((2, 3), 0.5))
    assert g.sh_degree == 1
    rgb = torch.rand(5, 3)
    torch.testing.assert_close(sh_to_rgb(rgb_to_sh(rgb)), rgb)
    assert SH_C0 == pytest.approx(0.5 / math.sqrt(math.pi))
    R = quat_to_rotmat(torch.randn(10, 4))
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(10, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(10), atol=1e-5, rtol=0)
    # 90° about z maps x to y
    q = torch.tensor([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]])
    torch.testing.assert_close(quat_to_rotmat(q)[0] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]))


def test_from_points_scales_equal_grid_spacing():
    pts = grid(6, 0.1)
    colors = torch.rand(len(pts), 3, generator=torch.Generator().manual_seed(0))
    g = from_points(pts, colors, sh_degree=2, opacity=0.3)
    # every grid point has at least 3 neighbours at exactly the spacing
    torch.testing.assert_close(g.scales, torch.full_like(pts, 0.1))
    torch.testing.assert_close(g.colors, colors)
    torch.testing.assert_close(g.opacities, torch.full((len(pts),), 0.3))
    assert g.sh.shape == (len(pts), 9, 3) and g.sh[:, 1:].abs().max() == 0
    torch.testing.assert_close(g.rotations, torch.tensor([1.0, 0, 0, 0]).expand(len(pts), 4))
    assert torch.allclose(from_points(pts, colors, scale=0.02).scales, torch.tensor(0.02))
    assert Gaussians.from_points(pts, colors).sh_degree == 0
    with pytest.raises(ValueError):
        from_points(pts, colors[:3])


def test_knn_torch_matches_scipy():
    pts = torch.randn(700, 3, generator=torch.Generator().manual_seed(1))
    pts = torch.cat([pts, pts[:5]])  # exact duplicates must stay finite
    a = knn_mean_distance(pts, use_scipy=True)
    b = knn_mean_distance(pts, chunk=128, use_scipy=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(a.log()).all()
    assert knn_mean_distance(torch.zeros(1, 3)).shape == (1,)


def test_sphere_and_ball():
    gen = torch.Generator().manual_seed(0)
    s = sphere(500, radius=0.7, color=(1.0, 0.0, 0.0), thickness=0.1, generator=gen)
    r = s.means.norm(dim=-1)
    assert len(s) == 500 and r.max() <= 0.7 + 1e-6 and r.min() >= 0.63 - 1e-6
    torch.testing.assert_close(s.colors, torch.tensor([1.0, 0, 0]).expand(500, 3))
    b1 = random_ball(2000, radius=1.5, generator=torch.Generator().manual_seed(3))
    b2 = Gaussians.random_ball(2000, radius=1.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b1.means, b2.means) and torch.equal(b1.sh, b2.sh)
    r = b1.means.norm(dim=-1)
    assert r.max() <= 1.5 + 1e-6
    # uniform in volume: half the points lie inside radius 1.5 · 0.5^(1/3)
    assert abs((r < 1.5 * 0.5 ** (1 / 3)).float().mean().item() - 0.5) < 0.05
    assert 0 <= b1.colors.min() and b1.colors.max() <= 1


def test_upsample_points():
    gen = torch.Generator().manual_seed(0)
    pts = grid(5, 0.1)
    colors = torch.rand(len(pts), 3, generator=gen)
    up, up_colors = upsample_points(pts, colors, 1000, generator=gen)
    assert up.shape == (1000, 3) and up_colors.shape == (1000, 3)
    assert torch.equal(up[: len(pts)], pts) and torch.equal(up_colors[: len(pts)], colors)
    new = up[len(pts):]
    nearest = torch.cdist(new, pts).min(dim=1)
    assert nearest.values.max() < 0.3  # jitter 0.5 × spacing 0.1: ~6 σ
    assert nearest.values.mean() < 0.1
    # each new point keeps a colour of the cloud
    assert (up_colors[len(pts):, None] == colors[None]).all(-1).any(-1).all()
    same, same_c = upsample_points(pts, colors, 10)
    assert same is pts and same_c is colors


def test_position_lr_schedule():
    lrs = LearningRates(position_init=1e-3, position_final=1e-5, scene_extent=2.0)
    assert position_lr(0, lrs, 1000) == pytest.approx(2e-3)
    assert position_lr(1000, lrs, 1000) == pytest.approx(2e-5)
    assert position_lr(5000, lrs, 1000) == pytest.approx(2e-5)
    assert position_lr(500, lrs, 1000) == pytest.approx(2e-4)  # log-linear: geometric mean halfway
    values = [position_lr(s, lrs, 1000) for s in range(0, 1001, 50)]
    assert all(a > b for a, b in zip(values, values[1:]))
    delayed = LearningRates(position_init=1e-3, position_final=1e-5, position_delay_steps=100)
    assert position_lr(0, delayed, 1000) == pytest.approx(1e-5)
    assert position_lr(100, delayed, 1000) == pytest.approx(position_lr(100, LearningRates(1e-3, 1e-5), 1000))


def test_optimizer_groups_and_sh_rest_rate():
    g = random_ball(50, generator=torch.Generator().manual_seed(0), sh_degree=1).requires_grad_()
    lrs = LearningRates()
    opt = make_optimizer(g, lrs)
    assert isinstance(opt, torch.optim.Adam)
    assert [grp["name"] for grp in opt.param_groups] == list(PARAM_NAMES)
    for grp, (name, t) in zip(opt.param_groups, g.params().items()):
        assert grp["params"][0] is t
    lr = {grp["name"]: grp["lr"] for grp in opt.param_groups}
    assert lr["means"] == pytest.approx(lrs.position_init) and lr["sh"] == lrs.sh_dc
    assert update_learning_rates(opt, 30000, lrs, 30000) == pytest.approx(lrs.position_final)
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs.position_final)
    # equal gradients: Adam's first step moves every coefficient by lr, so the rest bands move lr / 20
    before = g.sh.detach().clone()
    g.sh.grad = torch.ones_like(g.sh)
    opt.step()
    step = (before - g.sh.detach()).abs()
    torch.testing.assert_close(step[:, 0], torch.full((50, 3), lrs.sh_dc), rtol=1e-3, atol=0)
    torch.testing.assert_close(step[:, 1:], torch.full((50, 3, 3), lrs.sh_rest), rtol=1e-3, atol=0)
