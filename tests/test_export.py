
import numpy as np
import pytest
import torch

from conftest import disk_full_at
from dreammapping.export import PlyError, cli_render, load_ply, ply_field_names, save_ply
from dreammapping.gaussians import Gaussians, random_ball


def scene(n: int = 64, degree: int = 3, seed: int = 0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    g = random_ball(n, radius=0.5, generator=gen, sh_degree=degree)
    # arbitrary values everywhere so a swapped or mis-ordered field cannot pass
    return g.map(lambda t: torch.randn(t.shape, generator=gen))


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_roundtrip_bitwise(tmp_path, degree):
    g = scene(degree=degree)
    path = save_ply(tmp_path / "scene.ply", g)
    h = load_ply(path)
    assert h.sh_degree == degree
    for name, t in g.params().items():
        if name != "sh":
            assert torch.equal(t, h.params()[name]), name
    # the axis change moves the DC and degree-1 bands by a signed permutation: bit-exact; degrees 2–3 by a
    # rotation matrix (no axis change from +z up to −y up permutes them): float32 rounding only
    assert torch.equal(h.sh[:, :4], g.sh[:, :4])
    assert torch.allclose(h.sh, g.sh, atol=2e-6, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.ply"]  # the temp file is gone
    assert path.stat().st_mode & 0o044  # readable by others (umask permitting), unlike mkstemp's 0600


def test_layout_matches_3dgs(tmp_path):
    from plyfile import PlyData

    from dreammapping.axes import to_file

    g0 = scene(degree=3)
    save_ply(tmp_path / "scene.ply", g0)
    g = to_file(g0)  # the file holds the OpenCV-frame values
    vertex = PlyData.read(str(tmp_path / "scene.ply"))["vertex"]
    names = [p.name for p in vertex.properties]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected == ply_field_names(3)
    assert all(vertex.data.dtype[name] == np.float32 for name in names)
    # channel-major rest coefficients: f_rest_0..14 red, 15..29 green, 30..44 blue
    assert np.array_equal(vertex["f_rest_0"], g.sh[:, 1, 0].numpy())
    assert np.array_equal(vertex["f_rest_1"], g.sh[:, 2, 0].numpy())
    assert np.array_equal(vertex["f_rest_15"], g.sh[:, 1, 1].numpy())
    assert np.array_equal(vertex["f_rest_44"], g.sh[:, 15, 2].numpy())
    assert np.array_equal(vertex["rot_0"], g.quats[:, 0].numpy())  # w first
    assert np.array_equal(vertex["opacity"], g.opacity_logits.numpy())


def assert_one_line_error(path, fragment):
    with pytest.raises(PlyError) as info:
        load_ply(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert fragment in message, message
    assert isinstance(info.value, ValueError)


def test_bad_files(tmp_path):
    good = save_ply(tmp_path / "good.ply", scene(degree=1)).read_bytes()
    (tmp_path / "truncated.ply").write_bytes(good[: len(good) // 2])
    (tmp_path / "header_only.ply").write_bytes(good[:60])
    (tmp_path / "garbage.ply").write_bytes(bytes(range(256)) * 8)
    assert_one_line_error(tmp_path / "truncated.ply", "end-of-file")
    assert_one_line_error(tmp_path / "header_only.ply", "not a readable .ply")
    assert_one_line_error(tmp_path / "garbage.ply", "not a readable .ply")
    assert_one_line_error(tmp_path / "missing.ply", "no such file")


def test_missing_fields(tmp_path):
    from plyfile import PlyData, PlyElement

    names = [n for n in ply_field_names(0) if n not in ("scale_0", "rot_3")]
    data = np.zeros(3, dtype=[(n, "f4") for n in names])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "scene.ply"))
    assert_one_line_error(tmp_path / "scene.ply", "missing fields scale_0, rot_3")
    names = ply_field_names(0) + ["f_rest_0", "f_rest_1"]
    data = np.zeros(3, dtype=[(n, "f4") for n in names])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "odd.ply"))
    assert_one_line_error(tmp_path / "odd.ply", "2 f_rest fields")
    data = np.zeros(3, dtype=[("a", "f4")])
    PlyData([PlyElement.describe(data, "face")]).write(str(tmp_path / "mesh.ply"))
    assert_one_line_error(tmp_path / "mesh.ply", "no vertex element")


def test_cli_render_bad_input(tmp_path, capsys):
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    assert cli_render([str(tmp_path / "bad.ply")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bad.ply" in err
    assert cli_render([str(tmp_path / "nope.ply")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli_render([str(tmp_path)]) == 2  # a folder without gaussians.ply
    assert "no gaussians.ply" in capsys.readouterr().err
    assert cli_render(["--frames", "x"]) == 2


def _render_available() -> bool:
    try:
        from dreammapping.render import rasterize  # noqa: F401
    except ImportError:
        return False
    return True


needs_render = pytest.mark.skipif(not _render_available(), reason="dreammapping.render not importable yet")


@needs_render
def test_turntable_grid_and_cli(tmp_path):
    import imageio.v3 as iio

    from dreammapping.export import save_turntable, save_view_grid, turntable_frames
    from dreammapping.gaussians import sphere

    g = sphere(300, radius=0.6, color=(0.9, 0.1, 0.1), opacity=0.9)
    gif = save_turntable(tmp_path / "t.gif", g, n_frames=4, size=32, fps=10)
    frames = iio.imread(gif, index=None)
    assert frames.shape[:3] == (4, 32, 32)
    mp4 = save_turntable(tmp_path / "t.mp4", g, n_frames=4, size=32, fps=10)
    assert mp4.stat().st_size > 0
    grid = iio.imread(save_view_grid(tmp_path / "v.png", g, size=32))
    assert grid.shape == (32, 128, 3)
    # the red sphere shows in every view, on white
    assert (grid[..., 0].astype(int) - grid[..., 1]).max() > 100 and grid[0, 0].min() > 200
    # frames rendered once (as generate does for its .gif and .mp4) make the same file as rendering inside
    frames = turntable_frames(g, 4, 32)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    again = save_turntable(tmp_path / "t2.gif", g, fps=10, frames=frames)
    assert again.read_bytes() == gif.read_bytes()
    run = tmp_path / "run"
    save_ply(run / "gaussians.ply", g)
    assert cli_render([str(run), "--frames", "3", "--size", "24", "--gif"]) == 0
    assert (run / "turntable.gif").exists() and (run / "views.png").exists()


# ---- faults (issue 11): one line, an exit code, and no old file lost ---------------------------------------------
def test_empty_ply_with_sh_bands_round_trips_and_render_refuses_it(tmp_path, capsys):
    empty = scene(degree=1).map(lambda t: t[:0])
    g = load_ply(save_ply(tmp_path / "empty.ply", empty))
    assert len(g) == 0 and g.sh.shape == (0, 4, 3)
    assert cli_render([str(tmp_path / "empty.ply")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no Gaussians" in err


def test_render_refuses_non_finite_scenes_and_bad_rates(tmp_path, capsys):
    save_ply(tmp_path / "nan.ply", scene().map(lambda t: t * float("nan")))
    assert cli_render([str(tmp_path / "nan.ply"), "--out", str(tmp_path / "out")]) == 2
    assert "64 of 64 Gaussians have NaN" in capsys.readouterr().err
    save_ply(tmp_path / "ok.ply", scene())
    for fps in ("0", "-5"):
        assert cli_render([str(tmp_path / "ok.ply"), "--gif", "--fps", fps, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--fps" in err
    assert not (tmp_path / "out").exists()  # nothing written for any of them


def test_render_to_an_unwritable_folder_fails_before_rendering(tmp_path, capsys, monkeypatch):
    from dreammapping import export

    save_ply(tmp_path / "ok.ply", scene())
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setattr(export, "_render_frames", lambda *a, **k: pytest.fail("rendered before checking the output"))
    assert cli_render([str(tmp_path / "ok.ply"), "--out", str(tmp_path / "a-file" / "out")]) == 6
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot write" in err


@needs_render
@pytest.mark.parametrize("target", ["turntable.gif", "turntable.mp4", "views.png"])
def test_each_render_output_survives_a_failed_write(tmp_path, capsys, monkeypatch, target):
    """The writers go through the atomic writer at their own call sites: when the final rename fails (a full disk),
    the old file is still there, whole."""

    from dreammapping.gaussians import sphere

    save_ply(tmp_path / "gaussians.ply", sphere(100, radius=0.6, opacity=0.9))
    argv = [str(tmp_path), "--frames", "2", "--size", "16"] + (["--gif"] if target.endswith(".gif") else [])
    assert cli_render(argv) == 0
    old = (tmp_path / target).read_bytes()
    save_ply(tmp_path / "gaussians.ply", sphere(100, radius=0.3, color=(0.1, 0.9, 0.1), opacity=0.9))
    disk_full_at(monkeypatch, target)
    capsys.readouterr()
    assert cli_render(argv) == 6
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "disk is full" in err and target in err
    assert (tmp_path / target).read_bytes() == old
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@needs_render
def test_render_gif_on_a_full_disk_keeps_the_old_gif(tmp_path, capsys):
    """A real file-size limit (what a full disk does to write(); Python ignores SIGXFSZ): the old gif stays whole."""
    import resource

    import imageio.v3 as iio

    from dreammapping.gaussians import sphere

    save_ply(tmp_path / "gaussians.ply", sphere(300, radius=0.6, opacity=0.9))
    assert cli_render([str(tmp_path), "--frames", "2", "--size", "16", "--gif"]) == 0
    old = (tmp_path / "turntable.gif").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8000, hard))  # "8 kB free"
    try:
        code = cli_render([str(tmp_path), "--frames", "12", "--size", "64", "--gif"])  # ~16 kB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err.strip()
    assert code == 6 and "\n" not in err and "disk is full" in err and "turntable.gif" in err
    assert (tmp_path / "turntable.gif").read_bytes() == old
    assert iio.imread(tmp_path / "turntable.gif", index=None).shape[0] == 2
