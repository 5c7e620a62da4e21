"""Mesh export on known answers: toy-world truth solids (sphere, cube) → area, volume and colour of the mesh."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="scikit-image is not installed (pip install 'dreammapping[formats]')")
trimesh = pytest.importorskip("trimesh", reason="trimesh is not installed (pip install 'dreammapping[formats]')")

from dreammapping.gaussians import random_ball  # noqa: E402
from dreammapping.mesh import MeshConfig, density_grid, extract_mesh, mesh_report, save_mesh  # noqa: E402
from dreammapping.toyworld.grammar import COLORS, SHAPE_PARAMS, parse  # noqa: E402
from dreammapping.toyworld.splats import scene_gaussians, surface_gaussians  # noqa: E402


def truth(prompt: str, n: int = 6000):
    scene = parse(prompt)
    return scene, scene_gaussians(scene, n=n, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("prompt, shape", [("a green sphere", "sphere"), ("a blue cube", "cube")])
def test_truth_solid_area_volume_colour(prompt, shape):
    scene, g = truth(prompt)
    size = scene.objects[0].size
    if shape == "sphere":
        r = SHAPE_PARAMS["sphere"]["radius"] * size
        area, volume = 4 * math.pi * r * r, 4 / 3 * math.pi * r ** 3
    else:
        a = 2 * SHAPE_PARAMS["cube"]["half_side"] * size
        area, volume = 6 * a * a, a ** 3
    mesh = extract_mesh(g, MeshConfig(resolution=48))
    assert mesh.is_watertight, mesh_report(mesh)
    assert abs(mesh.area / area - 1) < 0.10, (mesh.area, area)
    assert abs(mesh.volume / volume - 1) < 0.10, (mesh.volume, volume)
    rgb = mesh.visual.vertex_colors[:, :3] / 255
    assert np.abs(rgb.mean(0) - np.array(COLORS[prompt.split()[1]])).max() < 0.03
    # the centroid stays put (no axis mix-up inside the mesh module: it works in our world)
    assert np.abs(mesh.center_mass - np.array(scene.objects[0].center)).max() < 0.02


def test_shell_of_flat_splats_meshes_as_a_solid():
    # a trained splat is a patchy shell of flat Gaussians: the mesh must still be the solid it encloses
    scene = parse("a blue cube")
    g = surface_gaussians(scene, n=6000, size=(0.03, 0.05), generator=torch.Generator().manual_seed(0))
    a = 2 * SHAPE_PARAMS["cube"]["half_side"] * scene.objects[0].size
    mesh = extract_mesh(g, MeshConfig(resolution=48))
    assert mesh.is_watertight, mesh_report(mesh)
    assert abs(mesh.volume / a ** 3 - 1) < 0.10, (mesh.volume, a ** 3)
    assert abs(mesh.area / (6 * a * a) - 1) < 0.10, (mesh.area, 6 * a * a)


def test_two_colours_land_on_their_objects():
    scene, g = truth("a red cube on top of a blue sphere", n=8000)
    mesh = extract_mesh(g, MeshConfig(resolution=48))
    top, bottom = (max(scene.objects, key=lambda o: o.center[2]), min(scene.objects, key=lambda o: o.center[2]))
    z = mesh.vertices[:, 2]
    rgb = mesh.visual.vertex_colors[:, :3] / 255
    upper = z > top.center[2]  # the top half of the upper object
    lower = z < bottom.center[2]
    assert np.abs(rgb[upper].mean(0) - np.array(top.rgb)).max() < 0.05
    assert np.abs(rgb[lower].mean(0) - np.array(bottom.rgb)).max() < 0.05


def test_decimation_and_files(tmp_path):
    _, g = truth("a green sphere", n=6000)
    full = extract_mesh(g, MeshConfig(resolution=48))
    half = extract_mesh(g, MeshConfig(resolution=48, decimate=0.5))
    assert 0.4 < len(half.faces) / len(full.faces) < 0.6
    assert abs(half.volume / full.volume - 1) < 0.03
    for kind in ("glb", "obj"):
        path = save_mesh(tmp_path / f"m.{kind}", half)
        back = trimesh.load(path, force="mesh")
        assert len(back.faces) == len(half.faces)
        # files are +y up with the front (+x in our world) facing +z
        ext = back.bounds[1] - back.bounds[0]
        assert np.allclose(np.sort(ext), np.sort(half.bounds[1] - half.bounds[0]), atol=1e-4)
        assert np.allclose(back.vertices[:, 1].max(), half.vertices[:, 2].max(), atol=1e-4)
        assert np.allclose(back.vertices[:, 2].max(), half.vertices[:, 0].max(), atol=1e-4)
        visual = back.visual if back.visual.kind == "vertex" else back.visual.to_color()
        colours = np.asarray(visual.vertex_colors)[:, :3] / 255
        assert np.abs(colours.mean(0) - np.array(COLORS["green"])).max() < 0.05
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_cone_is_upright_in_mesh_file(tmp_path):
    _, g = truth("a red cone", n=6000)
    mesh = extract_mesh(g, MeshConfig(resolution=48))
    back = trimesh.load(save_mesh(tmp_path / "c.glb", mesh), force="mesh")
    y = back.vertices[:, 1]
    radial = np.hypot(back.vertices[:, 0], back.vertices[:, 2])
    top, bottom = y > np.quantile(y, 0.9), y < np.quantile(y, 0.1)
    assert radial[top].mean() < 0.5 * radial[bottom].mean()  # apex up (+y) in the file


def test_density_grid_matches_dense_sum():
    gen = torch.Generator().manual_seed(0)
    g = random_ball(30, radius=0.5, generator=gen, opacity=0.7)
    g.log_scales = g.log_scales + torch.randn(30, 3, generator=gen) * 0.3
    g.quats = torch.randn(30, 4, generator=gen)
    cfg = MeshConfig(resolution=24, sigma_extent=6.0, max_radius_voxels=50)
    grid = density_grid(g, cfg)
    X, Y, Z = grid.density.shape
    idx = torch.stack(torch.meshgrid(torch.arange(X), torch.arange(Y), torch.arange(Z), indexing="ij"), -1)
    pts = grid.origin + idx.reshape(-1, 3) * grid.voxel
    from dreammapping.gaussians import quat_to_rotmat

    R = quat_to_rotmat(g.quats)
    cov = R @ torch.diag_embed(g.scales.pow(2)) @ R.transpose(1, 2) + (cfg.dilate * grid.voxel) ** 2 * torch.eye(3)
    inv = torch.linalg.inv(cov)
    d = pts[:, None] - g.means[None]
    q = torch.einsum("pni,nij,pnj->pn", d, inv, d)
    dense = (g.opacities * torch.exp(-0.5 * q) * (q <= 36)).sum(1).reshape(X, Y, Z)
    assert torch.allclose(grid.density, dense, atol=1e-5)


def test_watertight_or_says_why():
    # a messy, generated-like cloud: overlapping blobs of random sizes and floaters
    gen = torch.Generator().manual_seed(3)
    g = random_ball(3000, radius=0.6, generator=gen, opacity=0.5)
    mesh = extract_mesh(g, MeshConfig(resolution=48, decimate=0.7))
    line = mesh_report(mesh)
    assert ("watertight (volume" in line) == mesh.is_watertight
    if not mesh.is_watertight:
        assert "open edges" in line
