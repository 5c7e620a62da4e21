import pytest
import torch

from dreammapping.cameras import (
    OrbitConfig, canonical_views, look_at, make_cameras, project, sample_orbit, turntable, view_tag,
)


def test_target_projects_to_image_centre():
    gen = torch.Generator().manual_seed(0)
    cams = sample_orbit(16, 80, 60, OrbitConfig(elevation=(-80.0, 89.0)), gen)
    uv, depth = project(torch.zeros(1, 3), cams)
    torch.testing.assert_close(uv[:, 0], torch.tensor([40.0, 30.0]).expand(16, 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(depth[:, 0], cams.radius, atol=1e-4, rtol=1e-5)
    # an off-origin target too
    target = torch.tensor([[0.3, -0.2, 0.5]])
    shifted = make_cameras(cams.azimuth, cams.elevation, cams.radius, cams.fovy, 80, 60, target=target.expand(16, 3))
    uv, _ = project(target, shifted)
    torch.testing.assert_close(uv[:, 0], torch.tensor([40.0, 30.0]).expand(16, 2), atol=1e-3, rtol=0)


def test_front_camera_axes():
    # azimuth 0 sits on +x looking at −x: world +y is image-right, +z is image-up (smaller v)
    cams = make_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([4.0]), torch.tensor([45.0]), 64, 64)
    torch.testing.assert_close(cams.centers[0], torch.tensor([4.0, 0, 0]), atol=1e-5, rtol=0)
    uv, _ = project(torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 0.5]]), cams)
    assert uv[0, 0, 0] > 32 and abs(uv[0, 0, 1] - 32) < 1e-3
    assert uv[0, 1, 1] < 32 and abs(uv[0, 1, 0] - 32) < 1e-3


@pytest.mark.parametrize("azimuth, elevation, tag", [
    (0, 15, "front"), (90, 15, "side"), (180, 15, "back"), (270, 15, "side"), (-90, 0, "side"),
    (360, 0, "front"), (-180, 10, "back"), (45, 0, "front"), (135, 0, "back"), (0, 75, "overhead"),
    (180, 60, "overhead"), (0, 59, "front"),
])
def test_view_tags(azimuth, elevation, tag):
    assert view_tag(azimuth, elevation) == tag
    cams = make_cameras(torch.tensor([float(azimuth)]), torch.tensor([float(elevation)]), torch.tensor([3.0]),
                        torch.tensor([45.0]), 8, 8)
    assert cams.view_tags == [tag]


def test_canonical_views_tags():
    assert canonical_views(16, 16).view_tags == ["front", "side", "back", "overhead"]


def test_viewmats_are_rigid():
    gen = torch.Generator().manual_seed(1)
    cams = sample_orbit(32, 32, 32, OrbitConfig(elevation=(-89.0, 89.0)), gen)
    R = cams.viewmats[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(32, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(cams.viewmats[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(32, 4))
    torch.testing.assert_close(cams.centers.norm(dim=-1), cams.radius, atol=1e-4, rtol=1e-5)
    # straight overhead: the degenerate up vector is handled, still a rotation
    top = look_at(torch.tensor([[0.0, 0.0, 3.0]]), torch.zeros(1, 3))
    assert torch.isfinite(top).all()
    torch.testing.assert_close(torch.linalg.det(top[:, :3, :3]), torch.ones(1), atol=1e-5, rtol=0)


def test_sample_orbit_ranges_and_determinism():
    config = OrbitConfig(radius=(2.0, 3.0), elevation=(0.0, 30.0), azimuth=(-90.0, 90.0), fovy=(30.0, 40.0))
    a = sample_orbit(256, 32, 24, config, torch.Generator().manual_seed(7))
    b = sample_orbit(256, 32, 24, config, torch.Generator().manual_seed(7))
    c = sample_orbit(256, 32, 24, config, torch.Generator().manual_seed(8))
    assert torch.equal(a.viewmats, b.viewmats) and torch.equal(a.Ks, b.Ks)
    assert not torch.equal(a.viewmats, c.viewmats)
    for values, (lo, hi) in [(a.radius, config.radius), (a.elevation, config.elevation),
                             (a.azimuth, config.azimuth), (a.fovy, config.fovy)]:
        assert values.min() >= lo and values.max() <= hi
        assert values.max() - values.min() > 0.8 * (hi - lo)  # the whole range is used
    assert (a.width, a.height, len(a)) == (32, 24, 256)
    fy = 0.5 * 24 / torch.tan(torch.deg2rad(a.fovy) / 2)
    torch.testing.assert_close(a.Ks[:, 1, 1], fy)
    over = sample_orbit(512, 8, 8, OrbitConfig(overhead_probability=0.5), torch.Generator().manual_seed(0))
    share = (over.elevation >= 60).float().mean().item()
    assert 0.4 < share < 0.6 and over.elevation.max() <= 89.0


def test_turntable():
    t = turntable(8, 32, 32, elevation=20.0, radius=3.0, fovy=40.0)
    torch.testing.assert_close(t.azimuth, torch.arange(8.0) * 45)
    assert torch.all(t.elevation == 20.0) and torch.all(t.radius == 3.0) and torch.all(t.fovy == 40.0)
    assert t.view_tags[0] == "front" and t.view_tags[4] == "back"
    assert torch.equal(t.viewmats, turntable(8, 32, 32, elevation=20.0, radius=3.0, fovy=40.0).viewmats)
    # consecutive frames are equally far apart, the last one comes back round to the first
    c = t.centers
    gaps = (c.roll(-1, 0) - c).norm(dim=-1)
    torch.testing.assert_close(gaps, gaps[:1].expand(8), atol=1e-5, rtol=0)


def test_with_size_and_indexing():
    cams = sample_orbit(4, 32, 32, generator=torch.Generator().manual_seed(0))
    big = cams.with_size(64, 48)
    torch.testing.assert_close(big.viewmats, cams.viewmats)
    assert (big.width, big.height) == (64, 48)
    assert len(cams[1]) == 1 and torch.equal(cams[1].viewmats, cams.viewmats[1:2])
