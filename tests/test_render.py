"""The rasteriser against references: an analytic single Gaussian, the dense all-pairs backend, gradcheck, gsplat."""

import math

import pytest
import torch

from dreammapping.cameras import make_cameras, sample_orbit
from dreammapping.gaussians import SH_C0, Gaussians, rgb_to_sh
from dreammapping.render import EPS2D, rasterize

PARAMS = ("means", "log_scales", "quats", "opacity_logits", "sh")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (and gsplat)")


def random_scene(n: int, sh_degree: int = 3, seed: int = 0, dtype=torch.float32) -> Gaussians:
    """n Gaussians in the unit ball, sizes 0.02–0.12, mixed opacities, random SH."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = dirs * torch.rand(n, 1, generator=g) ** (1 / 3)
    return Gaussians(
        means=means,
        log_scales=torch.log(0.02 + 0.1 * torch.rand(n, 3, generator=g)),
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=2 * torch.randn(n, generator=g),
        sh=0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g),
    ).to(dtype=dtype).requires_grad_()


def render_and_grads(gaussians: Gaussians, cameras, backend: str, background=None):
    """Forward, then backward of a loss touching rgb, alpha and depth; returns (output, {name: grad})."""
    for p in gaussians.params().values():
        p.grad = None
    out = rasterize(gaussians, cameras, background=background, backend=backend)
    weights = torch.linspace(0.5, 1.5, out.rgb.numel(), device=out.rgb.device).reshape(out.rgb.shape)  # breaks symmetries
    loss = (out.rgb * weights).square().sum() + 0.3 * out.alpha.sum() + 0.1 * out.depth.sum()
    loss.backward()
    return out, {k: v.grad.clone() for k, v in gaussians.params().items()}


def front_camera(size: int, radius: float = 4.0, fovy: float = 45.0):
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return make_cameras(one(0), one(0), one(radius), one(fovy), size, size)


@pytest.mark.parametrize("backend", ["torch", "dense"])
def test_single_gaussian_matches_analytic_profile(backend):
    # An isotropic Gaussian at the origin, seen head-on from the front camera; the image side is odd so that the
    # projected centre (W/2) falls on a pixel centre. Choose its size so the projected sigma, dilation included,
    # is exactly 4 px.
    size, radius = 33, 4.0
    cams = front_camera(size, radius)
    f = float(cams.Ks[0, 0, 0])
    sigma_px = 4.0
    s = math.sqrt(sigma_px**2 - EPS2D) * radius / f
    opacity = 0.8
    g = Gaussians(
        means=torch.zeros(1, 3), log_scales=torch.full((1, 3), math.log(s)), quats=torch.tensor([[1.0, 0, 0, 0]]),
        opacity_logits=torch.logit(torch.tensor([opacity])), sh=rgb_to_sh(torch.tensor([[[0.2, 0.6, 1.0]]])),
    )
    out = rasterize(g, cams, background=torch.zeros(3), backend=backend)
    c = size // 2
    torch.testing.assert_close(out.means2d[0, 0], torch.tensor([size / 2, size / 2]))
    alpha = out.alpha[0, :, :, 0]
    torch.testing.assert_close(alpha[c, c], torch.tensor(opacity))
    assert alpha.max() == alpha[c, c]
    one_sigma = opacity * math.exp(-0.5)
    for y, x in [(c, c + 4), (c, c - 4), (c + 4, c), (c - 4, c)]:
        torch.testing.assert_close(alpha[y, x], torch.tensor(one_sigma))
    torch.testing.assert_close(alpha[c + 4, c + 4], torch.tensor(opacity * math.exp(-1.0)))
    torch.testing.assert_close(out.rgb[0], alpha[..., None] * torch.tensor([0.2, 0.6, 1.0]))
    torch.testing.assert_close(out.depth[0, c, c, 0], torch.tensor(opacity * radius))
    # Beyond the alpha ≥ 1/255 ellipse nothing is drawn.
    cutoff = sigma_px * math.sqrt(2 * math.log(255 * opacity))
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dist = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2).sqrt()
    assert (alpha[dist > cutoff + 1e-3] == 0).all() and (alpha[dist < cutoff - 1e-3] > 0).all()
    assert out.radii[0, 0] == math.ceil(3 * sigma_px)


@pytest.mark.parametrize("backend", ["torch", "dense"])
def test_radius_of_a_rotated_ellipse_uses_its_major_axis(backend):
    # A needle along the image diagonal: its 3-sigma radius follows the largest eigenvalue of the 2D covariance,
    # which the diagonal entries alone would underestimate by about √2.
    size, radius = 33, 4.0
    cams = front_camera(size, radius)
    f = float(cams.Ks[0, 0, 0])
    big, small = 0.3, 0.01
    # Rotate local x onto world (0, 1, 1)/√2, which the front camera sees as the image diagonal.
    quat = torch.tensor([[math.sqrt(0.5), 0.0, -0.5, 0.5]])
    g = Gaussians(
        means=torch.zeros(1, 3), log_scales=torch.tensor([[math.log(big), math.log(small), math.log(small)]]),
        quats=quat, opacity_logits=torch.zeros(1), sh=rgb_to_sh(torch.full((1, 1, 3), 0.5)),
    )
    out = rasterize(g, cams, backend=backend)
    lam_max = (big * f / radius) ** 2 + EPS2D
    assert out.radii[0, 0] == math.ceil(3 * math.sqrt(lam_max))


@pytest.mark.parametrize("sh_degree,seed,size", [(3, 0, (40, 32)), (0, 1, (32, 48)), (1, 2, (48, 48))])
def test_torch_matches_dense(sh_degree, seed, size):
    gaussians = random_scene(300, sh_degree, seed)
    cams = sample_orbit(2, *size, generator=torch.Generator().manual_seed(seed))
    background = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.3, 0.4]])
    sparse, sparse_grads = render_and_grads(gaussians, cams, "torch", background)
    dense, dense_grads = render_and_grads(gaussians, cams, "dense", background)
    assert sparse.rgb.shape == (2, size[1], size[0], 3)
    assert 0.05 < float(dense.alpha.detach().mean()) < 0.95  # a scene with something to compare
    for name in ("rgb", "alpha", "depth"):
        assert (getattr(sparse, name) - getattr(dense, name)).abs().max() < 1e-5, name
    torch.testing.assert_close(sparse.means2d, dense.means2d)
    torch.testing.assert_close(sparse.radii, dense.radii)
    for name in PARAMS:
        scale = dense_grads[name].abs().max()
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    torch.testing.assert_close(sparse.means2d.grad, dense.means2d.grad, rtol=1e-4, atol=1e-5)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    n = 4
    means = (0.3 * torch.randn(n, 3, generator=g)).double()
    log_scales = torch.log(0.3 + 0.2 * torch.rand(n, 3, generator=g)).double()
    quats = torch.randn(n, 4, generator=g).double()
    opacity_logits = torch.randn(n, generator=g).double()
    sh = (0.3 * torch.randn(n, 16, 3, generator=g)).double()
    cams = sample_orbit(2, 8, 8, generator=torch.Generator().manual_seed(1))
    background = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)

    def fn(*params):
        out = rasterize(Gaussians(*params), cams, background=background, backend="torch")
        return out.rgb, out.alpha, out.depth

    inputs = tuple(t.requires_grad_() for t in (means, log_scales, quats, opacity_logits, sh))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "dense"])
def test_background_and_empty_pixels(backend):
    gaussians = random_scene(50, 0, seed=4)
    cams = sample_orbit(2, 24, 24, generator=torch.Generator().manual_seed(4))
    per_view = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]])
    default = rasterize(gaussians, cams, backend=backend)
    out = rasterize(gaussians, cams, background=per_view, backend=backend)
    empty = out.alpha[..., 0] == 0
    assert empty.any() and (~empty).any()
    torch.testing.assert_close(default.rgb[empty], torch.ones_like(default.rgb[empty]))  # white by default
    torch.testing.assert_close(out.rgb[empty], per_view[:, None, None].expand_as(out.rgb)[empty])
    # Elsewhere the background shows through by exactly (1 − alpha).
    torch.testing.assert_close(out.rgb - default.rgb, (1 - out.alpha) * (per_view - 1)[:, None, None])


@pytest.mark.parametrize("backend", ["torch", "dense"])
def test_culls_behind_camera_and_outside_frustum(backend):
    cams = front_camera(16)  # at (4, 0, 0) looking towards −x
    means = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 30.0, 0.0]])  # seen, behind, at, off
    g = Gaussians(
        means=means, log_scales=torch.full((4, 3), math.log(0.3)), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(4, 1),
        opacity_logits=torch.full((4,), 3.0), sh=torch.zeros(4, 1, 3),
    ).requires_grad_()
    out = rasterize(g, cams, backend=backend)
    assert out.radii.dtype == torch.int32 and out.radii.shape == (1, 4)
    assert out.radii[0, 0] > 0 and (out.radii[0, 1:] == 0).all()
    alone = rasterize(g[:1], cams, backend=backend)
    torch.testing.assert_close(out.rgb, alone.rgb)
    (out.rgb.sum() + out.depth.sum()).backward()
    assert torch.isfinite(out.means2d.grad).all() and torch.isfinite(g.means.grad).all()
    assert out.means2d.grad[0, 0].abs().sum() > 0 and (out.means2d.grad[0, 1:] == 0).all()
    assert (g.means.grad[1:] == 0).all()


def test_sh_degrees_and_view_dependence():
    # Degree 0: colour is SH_C0·dc + 0.5 from every side. Degree 3: a band-3 coefficient changes colour with view.
    cams = sample_orbit(3, 16, 16, generator=torch.Generator().manual_seed(5))
    big = dict(means=torch.zeros(1, 3), log_scales=torch.zeros(1, 3), quats=torch.tensor([[1.0, 0, 0, 0]]),
               opacity_logits=torch.tensor([10.0]))
    dc = torch.tensor([[[0.3, -0.2, 0.1]]])
    flat = rasterize(Gaussians(**big, sh=dc), cams, background=torch.zeros(3), backend="torch")
    centre = flat.rgb[:, 8, 8] / flat.alpha[:, 8, 8]
    torch.testing.assert_close(centre, (SH_C0 * dc[0] + 0.5).expand(3, 3))
    sh3 = torch.cat([dc, torch.zeros(1, 15, 3)], dim=1)
    sh3[0, 9:] = 0.3
    shiny = rasterize(Gaussians(**big, sh=sh3), cams, background=torch.zeros(3), backend="torch")
    colours = shiny.rgb[:, 8, 8]
    assert (colours - flat.rgb[:, 8, 8]).abs().max() > 1e-2
    assert (colours[0] - colours[1]).abs().max() > 1e-3  # differs between views
    dense = rasterize(Gaussians(**big, sh=sh3), cams, background=torch.zeros(3), backend="dense")
    torch.testing.assert_close(shiny.rgb, dense.rgb)


def test_means2d_grad_and_resolution_override():
    gaussians = random_scene(100, 1, seed=6)
    cams = sample_orbit(2, 16, 16, generator=torch.Generator().manual_seed(6))
    out = rasterize(gaussians, cams)  # "auto" is the torch backend on CPU
    assert out.means2d.shape == (2, 100, 2) and out.means2d.requires_grad
    out.rgb.mean().backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (2, 100, 2)
    seen = out.radii > 0
    assert (out.means2d.grad[seen].abs().sum(-1) > 0).float().mean() > 0.5
    assert (out.means2d.grad[~seen] == 0).all()
    # Rendering at twice the size keeps the field of view: projected centres scale by 2.
    big = rasterize(gaussians, cams, width=32, height=32)
    assert big.rgb.shape == (2, 32, 32, 3)
    torch.testing.assert_close(big.means2d, 2 * out.means2d)


@pytest.mark.parametrize("n", [0, 3])
def test_nothing_visible_renders_background(n):
    cams = front_camera(8)
    g = Gaussians(
        means=torch.tensor([[6.0, 0.0, 0.0]]).repeat(n, 1), log_scales=torch.zeros(n, 3), quats=torch.randn(n, 4),
        opacity_logits=torch.zeros(n), sh=torch.randn(n, 4, 3),
    ).requires_grad_()
    out = rasterize(g, cams, background=torch.tensor([0.1, 0.2, 0.3]), backend="torch")
    torch.testing.assert_close(out.rgb, torch.tensor([0.1, 0.2, 0.3]).expand(1, 8, 8, 3))
    assert (out.alpha == 0).all() and (out.radii == 0).all()
    out.rgb.sum().backward()
    assert all((p.grad == 0).all() for p in g.params().values())


def test_unknown_backend():
    with pytest.raises(ValueError):
        rasterize(random_scene(2), sample_orbit(1, 8, 8), backend="vulkan")


# ---- GPU: gsplat against the torch backend -----------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_gsplat_matches_torch(sh_degree):
    pytest.importorskip("gsplat")
    cams = sample_orbit(2, 64, 48, generator=torch.Generator().manual_seed(7))
    background = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.3, 0.4]])
    # Opacities below 0.35 keep every pair with alpha ≥ 1/255 inside gsplat's 3.33-sigma tiles and ours alike.
    scene = random_scene(500, sh_degree, seed=7).detach()
    scene.opacity_logits.clamp_(max=-0.7)
    gpu = scene.to("cuda").requires_grad_()
    ref_scene = scene.to("cuda").requires_grad_()
    ref, ref_grads = render_and_grads(ref_scene, cams.to("cuda"), "torch", background.cuda())
    out, grads = render_and_grads(gpu, cams.to("cuda"), "gsplat", background.cuda())
    for name in ("rgb", "alpha", "depth"):
        assert (getattr(out, name) - getattr(ref, name)).abs().max() < 1e-3, name
    seen = (ref.radii > 0) & (out.radii > 0)
    torch.testing.assert_close(out.means2d[seen], ref.means2d[seen], atol=1e-3, rtol=1e-5)
    assert out.means2d.grad is not None
    cos = torch.nn.functional.cosine_similarity
    assert cos(out.means2d.grad[seen].flatten(), ref.means2d.grad[seen].flatten(), dim=0) > 0.99
    for name in PARAMS:
        assert cos(grads[name].flatten(), ref_grads[name].flatten(), dim=0) > 0.99, name


@requires_cuda
def test_auto_picks_gsplat_on_cuda():
    pytest.importorskip("gsplat")
    gaussians = random_scene(50).to("cuda")
    cams = sample_orbit(1, 16, 16).to("cuda")
    auto = rasterize(gaussians, cams)
    explicit = rasterize(gaussians, cams, backend="gsplat")
    torch.testing.assert_close(auto.rgb, explicit.rgb)
