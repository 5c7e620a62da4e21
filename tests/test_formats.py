"""Export formats: third-party 3DGS files load upright, the .splat layout byte by byte, compressed .ply, the CLI."""

import numpy as np
import pytest
import torch

from dreammapping.axes import to_file
from dreammapping.cameras import canonical_views
from dreammapping.cli import main
from dreammapping.export import PlyError, load_ply, ply_field_names, save_ply
from dreammapping.formats import SPLAT_DTYPE, load_splat, save_splat
from dreammapping.gaussians import SH_C0, Gaussians, random_ball
from dreammapping.render import rasterize
from dreammapping.toyworld.grammar import parse
from dreammapping.toyworld.splats import scene_gaussians


def cone(n=3000) -> Gaussians:
    return scene_gaussians(parse("a red cone"), n=n, opacity=0.6, generator=torch.Generator().manual_seed(0))


def upright(img: torch.Tensor) -> bool:
    """A cone seen from the front: narrow top quarter, wide bottom quarter."""
    mask = (1 - img).amax(-1) > 0.15
    rows = mask.any(1).nonzero()[:, 0]
    top, bottom = int(rows.min()), int(rows.max())
    q = max(1, (bottom - top + 1) // 4)
    w = mask.sum(1).float()
    return bool(w[top:top + q].mean() < 0.5 * w[bottom - q + 1:bottom + 1].mean())


def write_3dgs(path, means, log_scales, quats, opacity, sh):
    """A .ply the way the original 3DGS trainer writes it (its own columns, no axis change)."""
    from plyfile import PlyData, PlyElement

    n = len(means)
    rest = sh[:, 1:].transpose(1, 2).reshape(n, -1)
    cols = torch.cat([means, torch.zeros(n, 3), sh[:, 0], rest, opacity[:, None], log_scales, quats], 1).numpy()
    names = ply_field_names(int(round(sh.shape[1] ** 0.5)) - 1)
    v = np.empty(n, dtype=[(k, "f4") for k in names])
    for i, k in enumerate(names):
        v[k] = cols[:, i]
    PlyData([PlyElement.describe(v, "vertex")]).write(str(path))


def test_third_party_opencv_file_renders_upright(tmp_path):
    g = cone()
    front = canonical_views(64, 64)[:1]
    with torch.no_grad():
        assert upright(rasterize(g, front).rgb[0])  # the truth cone, apex +z in our world
    # an original-3DGS file of the same cone holds it in the OpenCV frame: apex towards −y
    f = to_file(g)
    assert f.means[:, 1].min() < -0.5 and f.means[:, 2].abs().max() < 1.0
    write_3dgs(tmp_path / "3dgs.ply", f.means, f.log_scales, f.quats, f.opacity_logits, f.sh)
    h = load_ply(tmp_path / "3dgs.ply")
    with torch.no_grad():
        assert upright(rasterize(h, front).rgb[0])
    assert torch.allclose(h.means, g.means)
    # and our own file of it is the same bytes of vertex data
    save_ply(tmp_path / "ours.ply", g)
    from plyfile import PlyData

    a, b = PlyData.read(str(tmp_path / "3dgs.ply"))["vertex"].data, PlyData.read(str(tmp_path / "ours.ply"))["vertex"].data
    assert a.tobytes() == b.tobytes()


def test_splat_layout(tmp_path):
    gen = torch.Generator().manual_seed(0)
    g = random_ball(50, radius=0.5, generator=gen, sh_degree=1, opacity=0.4)
    g.log_scales = torch.randn(50, 3, generator=gen) - 3
    g.quats = torch.randn(50, 4, generator=gen)
    g.opacity_logits = torch.randn(50, generator=gen)
    path = save_splat(tmp_path / "s.splat", g)
    raw = path.read_bytes()
    assert len(raw) == 32 * 50
    rec = np.frombuffer(raw, dtype=SPLAT_DTYPE)
    f = to_file(g)
    order = np.argsort(-(f.log_scales.sum(1).exp() * f.opacities).numpy(), kind="stable")
    # first record, decoded by hand at the byte offsets antimatter15's viewer uses
    i = order[0]
    assert np.frombuffer(raw[0:12], "<f4").tolist() == f.means[i].tolist()
    assert np.allclose(np.frombuffer(raw[12:24], "<f4"), f.scales[i].numpy())
    rgb = np.clip(np.rint((0.5 + SH_C0 * f.sh[i, 0].numpy()) * 255), 0, 255)
    assert list(raw[24:27]) == rgb.astype(int).tolist()
    assert raw[27] == int(np.clip(np.rint(torch.sigmoid(f.opacity_logits[i]).item() * 255), 0, 255))
    q = f.rotations[i].numpy()
    assert list(raw[28:32]) == np.clip(np.rint(q * 128 + 128), 0, 255).astype(int).tolist()
    assert np.array_equal(rec["position"], f.means.numpy()[order])  # every record, in that order
    key = rec["scale"].astype(np.float64).prod(1) * torch.sigmoid(f.opacity_logits).numpy()[order]
    assert (np.diff(key) <= 1e-6 * key.max()).all()  # largest size × opacity first
    h = load_splat(path)  # back within 8-bit quantisation, in our world frame
    h = h[torch.from_numpy(np.argsort(order))]
    assert torch.equal(h.means, g.means)
    assert torch.allclose(h.scales, g.scales, rtol=1e-6)
    assert torch.allclose(h.colors, g.colors.clamp(0, 1), atol=1 / 255)
    assert torch.allclose(h.opacities, g.opacities, atol=1 / 255)
    dots = (h.rotations * g.rotations).sum(1).abs()
    assert (dots > 0.995).all()


def test_compressed_ply_gets_clear_error(tmp_path, monkeypatch):
    from plyfile import PlyData, PlyElement

    chunk = np.zeros(1, dtype=[(k, "f4") for k in ("min_x", "max_x")])
    vertex = np.zeros(4, dtype=[(k, "u4") for k in ("packed_position", "packed_rotation", "packed_scale",
                                                     "packed_color")])
    path = tmp_path / "scene.compressed.ply"
    PlyData([PlyElement.describe(chunk, "chunk"), PlyElement.describe(vertex, "vertex")]).write(str(path))
    import builtins

    real_import = builtins.__import__

    def no_gsply(name, *args, **kwargs):
        if name.startswith("gsply"):
            raise ImportError("no gsply")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gsply)
    with pytest.raises(PlyError) as info:
        load_ply(path)
    message = str(info.value)
    assert "\n" not in message and "compressed" in message and "splat-transform" in message


def test_compressed_ply_read_with_gsply(tmp_path):
    pytest.importorskip("gsply", reason="gsply is not installed (pip install 'dreammapping[formats]')")
    from gsply.writer import write_compressed

    g = cone(n=2000)
    f = to_file(g)
    path = tmp_path / "c.compressed.ply"
    write_compressed(str(path), means=f.means.numpy(), scales=f.log_scales.numpy(), quats=f.rotations.numpy(),
                           opacities=f.opacity_logits.numpy(), sh0=f.sh[:, 0].numpy())
    h = load_ply(path)
    assert len(h) == len(g)
    # quantised (11/10/11-bit positions per chunk), but in our frame: compare as point sets
    from scipy.spatial import cKDTree

    d, _ = cKDTree(g.means.numpy()).query(h.means.numpy())
    assert d.max() < 0.01
    assert torch.allclose(h.colors.mean(0), g.colors.mean(0), atol=0.02)


def test_cli_export_all_formats(tmp_path, capsys):
    pytest.importorskip("skimage")
    pytest.importorskip("trimesh")
    run = tmp_path / "run"
    save_ply(run / "gaussians.ply", cone(n=3000))
    for fmt in ("ply", "splat", "glb", "obj"):
        out = tmp_path / f"out.{fmt}"
        assert main(["export", str(run), "--format", fmt, "--out", str(out), "--resolution", "40"]) == 0
        assert out.is_file() and out.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "watertight" in printed and printed.count("wrote") == 4
    assert main(["export", str(run), "--format", "splat"]) == 0 and (run / "gaussians.splat").is_file()
    assert torch.allclose(load_ply(tmp_path / "out.ply").means, load_ply(run / "gaussians.ply").means)
    # bad input: one line, exit 2, nothing written
    assert main(["export", str(tmp_path / "nope"), "--format", "glb"]) == 2
    assert main(["export", str(run), "--format", "glb", "--decimate", "1.5"]) == 2
    assert main(["export", str(run), "--format", "ply", "--out", str(run / "gaussians.ply")]) == 2
    err = capsys.readouterr().err
    assert all(line.startswith("dreammapping export") for line in err.strip().splitlines())


def test_cli_export_mesh_without_extra_says_how(tmp_path, capsys, monkeypatch):
    import builtins

    save_ply(tmp_path / "g.ply", cone(n=500))
    real_import = builtins.__import__

    def no_trimesh(name, *args, **kwargs):
        if name.startswith("trimesh"):
            raise ImportError("no trimesh", name="trimesh")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trimesh)
    assert main(["export", str(tmp_path / "g.ply"), "--format", "glb"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "trimesh is missing" in err and "dreammapping[formats]" in err
    assert not (tmp_path / "g.glb").exists()
