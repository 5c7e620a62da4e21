"""The radiance field against known answers: Beer–Lambert opacity of a uniform sphere, finite-difference gradients,
exact empty-space skipping, a photometric fit to toy-world truth renders, a bitwise state round trip, and exports
(a sphere field meshes to the sphere's volume; sampled Gaussians render the field's silhouette)."""

import io
import math
import time

import pytest
import torch

from dreammapping import cameras as C
from dreammapping.nerf import (
    NerfConfig,
    RadianceField,
    make_nerf_optimizer,
    nerf_regularizers,
    render_field,
    shading_at,
)
from dreammapping.raymarch import FieldFns, camera_rays, composite, march, sample_along
from dreammapping.toyworld.grammar import parse
from dreammapping.toyworld.sdf import render_scenes


def sphere_field(cfg: NerfConfig, rho: float, k: float, dtype=torch.float32) -> RadianceField:
    """A field whose raw density is k·(ρ − |x|) on its grid (no blob): σ ≈ softplus of a scaled signed distance."""
    field = RadianceField(cfg).to(dtype)
    R, r = cfg.grid_resolution, cfg.radius
    axis = torch.linspace(-r, r, R, dtype=dtype)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")  # the grid's [z, y, x] layout
    with torch.no_grad():
        field.density_grid.copy_((k * (rho - (x * x + y * y + z * z).sqrt()))[None, None])
    return field


# ---- volume rendering -------------------------------------------------------------------------------------------
def test_uniform_sphere_opacity_is_beer_lambert():
    # σ constant inside a ball of radius ρ, 0 outside: a ray at distance b from the centre crosses a chord
    # c = 2√(ρ² − b²), so its opacity must be 1 − exp(−σ·c), up to the quadrature's one-segment boundary error.
    sigma, rho, n = 3.0, 0.6, 2048
    cams = C.make_cameras(torch.tensor([30.0]), torch.tensor([20.0]), torch.tensor([3.0]), torch.tensor([40.0]),
                          24, 24)
    rays = camera_rays(cams, radius=1.0)
    samples = sample_along(rays, n)

    def density(points):
        return torch.where(points.norm(dim=-1) < rho, sigma, 0.0)

    out = march(FieldFns(density, lambda p, d: (torch.ones_like(p), None)), samples)
    centre_dist = torch.linalg.cross(rays.origins, rays.dirs / rays.dirs.norm(dim=-1, keepdim=True)).norm(dim=-1)
    chord = 2 * (rho * rho - centre_dist.square()).clamp(min=0).sqrt()
    expected = 1 - torch.exp(-sigma * chord)
    assert (chord > 0).sum() > 50 and (chord == 0).sum() > 50  # the image holds the sphere and empty space
    step = samples.delta[:, 0]
    tolerance = sigma * 2 * step + 1e-6  # at most one segment misclassified at each end
    assert ((out.alpha - expected).abs() <= tolerance).all(), (out.alpha - expected).abs().max()
    # the colour (white) composites to the opacity, the depth is inside the sphere's depth range
    torch.testing.assert_close(out.rgb, out.alpha[:, None].expand(-1, 3))


def test_composite_matches_product_form():
    # wᵢ = Tᵢ αᵢ with Tᵢ = Π_{j<i}(1 − αⱼ): the cumulative-sum form equals the product form
    g = torch.Generator().manual_seed(0)
    sigma = torch.rand(5, 30, generator=g, dtype=torch.float64) * 4
    delta = torch.full((5, 30), 0.05, dtype=torch.float64)
    alpha = 1 - torch.exp(-sigma * delta)
    T = torch.cumprod(torch.cat([torch.ones(5, 1, dtype=torch.float64), 1 - alpha[:, :-1]], 1), 1)
    torch.testing.assert_close(composite(sigma, delta), T * alpha)


def test_depth_of_an_opaque_plane_is_camera_z():
    # a wall of huge σ at world x = 0 seen head-on from x = 3: every pixel's depth is 3 (camera-space z)
    cams = C.make_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([30.0]), 8, 8)
    rays = camera_rays(cams, radius=1.0)
    samples = sample_along(rays, 4096)
    out = march(FieldFns(lambda p: torch.where(p[:, 0] < 0, 1e4, 0.0), lambda p, d: (torch.ones_like(p), None)),
                samples)
    torch.testing.assert_close(out.alpha, torch.ones_like(out.alpha))
    assert (out.depth - 3.0).abs().max() < 2 * samples.delta.max()


# ---- gradients --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shading", ["albedo", "lambert"])
def test_gradients_match_finite_differences(shading):
    # float64, a tiny field, no skipping (the skip masks are piecewise constant): autograd = central differences,
    # through the colour, the depth, the finite-difference normals (lambert), sparsity and opacity. (The orientation
    # loss is left out: its weights carry a stop-gradient, which finite differences do not see.)
    cfg = NerfConfig(grid_resolution=4, feature_dim=2, hidden_dim=3, samples_per_ray=12, environment="learned",
                     blob_scale=2.0, lambda_orient=0.0, lambda_sparsity=1.0, lambda_opaque=1.0)
    torch.manual_seed(0)
    field = RadianceField(cfg).double()
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cams = C.make_cameras(torch.tensor([20.0]), torch.tensor([15.0]), torch.tensor([2.5]), torch.tensor([50.0]), 3, 3)
    weights = torch.randn(1, 3, 3, 3, dtype=torch.float64)

    def objective():
        out = render_field(field, cams, shading=shading, skip=False)
        return (out.rgb * weights).sum() + out.depth.sum() + nerf_regularizers(out, cfg).total

    params = list(field.parameters())
    grads = torch.autograd.grad(objective(), params)
    eps = 1e-6
    with torch.no_grad():
        for p, g in zip(params, grads):
            flat = p.view(-1)
            for i in range(0, flat.numel(), max(1, flat.numel() // 12)):  # ≤ 12 entries per tensor
                old = flat[i].item()
                flat[i] = old + eps
                up = float(objective())
                flat[i] = old - eps
                down = float(objective())
                flat[i] = old
                numeric = (up - down) / (2 * eps)
                assert abs(numeric - g.view(-1)[i].item()) <= 1e-5 * max(1.0, abs(numeric)), (
                    p.shape, i, numeric, g.view(-1)[i].item())


# ---- empty-space skipping ---------------------------------------------------------------------------------------
def test_empty_space_skip_changes_nothing():
    # a fitted-looking field (a ball plus noise): skipping (occupancy + weight cut) against evaluating everything
    cfg = NerfConfig(grid_resolution=24, samples_per_ray=64)
    torch.manual_seed(1)
    field = RadianceField(cfg)
    with torch.no_grad():
        field.density_grid.add_(torch.randn_like(field.density_grid) * 2)
        field.feature_grid.normal_()
    cams = C.canonical_views(24, 24)
    full = render_field(field, cams, skip=False)
    fast = render_field(field, cams, skip=True)
    assert fast.evaluated < 0.7 * full.evaluated and fast.shaded < full.shaded  # it did skip
    torch.testing.assert_close(fast.alpha, full.alpha, atol=2e-3, rtol=0)
    torch.testing.assert_close(fast.rgb, full.rgb, atol=2e-3, rtol=0)
    torch.testing.assert_close(fast.depth, full.depth, atol=1e-2, rtol=0)


def test_occupancy_bound_holds_inside_cells():
    # σ at random points never exceeds the bound that marked their cell empty
    cfg = NerfConfig(grid_resolution=16)
    torch.manual_seed(2)
    field = RadianceField(cfg)
    with torch.no_grad():
        field.density_grid.normal_(std=3.0)
    occ = field.occupancy(threshold=0.05)
    pts = (torch.rand(200_000, 3) * 2 - 1) * cfg.radius
    sigma = field.density(pts).detach()
    empty = ~occ.lookup(pts)
    assert empty.sum() > 1000
    assert sigma[empty].max() <= 0.05


# ---- a photometric fit ------------------------------------------------------------------------------------------
def test_fit_to_toy_world_truth_reaches_psnr():
    # fitted to 16 truth renders of a red cube (32², Lambert-shaded like the field), then judged at the 4 canonical
    # views it never saw: PSNR ≥ 22 dB after 80 Adam steps (measured ≈ 25 dB; a grey ball scores ≈ 11 dB)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    scene = parse("a red cube")
    train = C.sample_orbit(16, 32, 32, C.OrbitConfig(), g)
    truth, _ = render_scenes([scene], train)
    test = C.canonical_views(32, 32)
    test_truth, _ = render_scenes([scene], test)
    cfg = NerfConfig(grid_resolution=32, samples_per_ray=48)
    field = RadianceField(cfg)
    opt = make_nerf_optimizer(field, cfg)
    start = time.perf_counter()
    steps = 80
    for step in range(steps):
        idx = torch.randint(0, 16, (4,), generator=g)
        out = render_field(field, train[idx], shading=shading_at(step, steps, cfg))
        loss = (out.rgb - truth[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        rgb = render_field(field, test).rgb
    psnr = -10 * math.log10(float((rgb - test_truth).square().mean()))
    assert psnr >= 22.0, psnr
    assert time.perf_counter() - start < 120  # "a few seconds" on a free core; generous for a shared machine


# ---- state ------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip_is_bitwise():
    cfg = NerfConfig(grid_resolution=12, environment="learned")
    torch.manual_seed(3)
    a = RadianceField(cfg)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    opt = make_nerf_optimizer(a, cfg)
    render_field(a, C.canonical_views(8, 8)).rgb.sum().backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save({"field": a.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    b = RadianceField(cfg)
    b.load_state_dict(saved["field"])
    opt_b = make_nerf_optimizer(b, cfg)
    opt_b.load_state_dict(saved["optimizer"])
    for (n1, p1), (n2, p2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    # one more identical step on each: still bitwise equal (the optimiser state came back too)
    for field, optimizer in ((a, opt), (b, opt_b)):
        optimizer.zero_grad()
        render_field(field, C.canonical_views(8, 8)).rgb.sum().backward()
        optimizer.step()
    cams = C.canonical_views(8, 8)
    assert torch.equal(render_field(a, cams).rgb, render_field(b, cams).rgb)


def test_albedo_warmup_schedule_is_relative_to_the_run():
    cfg = NerfConfig(albedo_warmup=0.25)
    assert [shading_at(s, 100, cfg) for s in (0, 24, 25, 99)] == ["albedo", "albedo", "lambert", "lambert"]
    assert shading_at(249, 1000, cfg) == "albedo" and shading_at(250, 1000, cfg) == "lambert"


# ---- exports ----------------------------------------------------------------------------------------------------
def test_sphere_field_meshes_to_the_sphere_volume():
    pytest.importorskip("skimage")
    pytest.importorskip("trimesh")
    from dreammapping.nerf_export import NerfMeshConfig, nerf_mesh

    rho = 0.6
    field = sphere_field(NerfConfig(grid_resolution=48, blob_scale=0.0), rho, k=1000.0)
    mesh = nerf_mesh(field, NerfMeshConfig(resolution=64))
    assert mesh.is_watertight
    volume = 4 / 3 * math.pi * rho ** 3
    assert abs(mesh.volume / volume - 1) < 0.10, (mesh.volume, volume)
    assert abs(mesh.center_mass).max() < 0.02


def test_sampled_gaussians_render_the_field_silhouette():
    from dreammapping.nerf_export import NerfSplatConfig, nerf_gaussians
    from dreammapping.render import rasterize

    field = sphere_field(NerfConfig(grid_resolution=32, blob_scale=0.0), 0.6, k=1000.0)
    g = nerf_gaussians(field, NerfSplatConfig(resolution=48))
    assert 0 < len(g) < 48 ** 3 // 4  # a shell, not the full solid
    assert (g.means.norm(dim=-1) - 0.6).abs().max() < 3 * 2.2 / 48  # within a few voxels of the surface
    cams = C.canonical_views(128, 128)  # large enough that the 1-px edge is a small part of the silhouette
    a = render_field(field, cams).alpha > 0.5
    b = rasterize(g, cams).alpha > 0.5
    iou = float((a & b).sum() / (a | b).sum())
    assert iou > 0.9, iou
