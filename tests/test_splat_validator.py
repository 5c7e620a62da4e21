"""NaN in, nothing out (issue 24, class 7): `export` and `render` check a loaded scene with one validator,
`export.check_splat`; a bad file is one line and exit 2 for every output format, and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreammapping.export import PlyError, check_splat, cli_render, save_ply
from dreammapping.formats import FORMATS, cli_export, load_splat, save_splat
from dreammapping.gaussians import sphere


def one_line(err: str, prefix: str) -> str:
    lines = [line for line in err.strip().splitlines()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


def scene():
    return sphere(64, radius=0.5, opacity=0.8)


@pytest.mark.parametrize("damage, why", [
    (lambda g: g.means.__setitem__((3, 0), float("nan")), "NaN or infinite"),
    (lambda g: g.log_scales.__setitem__((0, 1), float("inf")), "NaN or infinite"),
    (lambda g: g.means.__setitem__((5, 2), 1e30), "positions beyond"),
    (lambda g: g.log_scales.__setitem__((7, 0), 60.0), "scales outside"),
    (lambda g: g.quats.__setitem__(9, 0.0), "quaternion of zero length"),
], ids=["nan", "inf", "huge-position", "huge-scale", "zero-quaternion"])
def test_export_and_render_refuse_the_same_bad_scene(tmp_path, capsys, damage, why):
    g = scene()
    damage(g)
    save_ply(tmp_path / "bad.ply", g)
    with pytest.raises(PlyError, match=why):
        check_splat(g, "bad.ply")
    for fmt in FORMATS:
        out = tmp_path / f"out.{fmt}"
        assert cli_export([str(tmp_path / "bad.ply"), "--format", fmt, "--out", str(out)]) == 2, fmt
        assert why in one_line(capsys.readouterr().err, "dreammapping export:") and not out.exists()
    assert cli_render([str(tmp_path / "bad.ply"), "--out", str(tmp_path / "r")]) == 2
    assert why in one_line(capsys.readouterr().err, "dreammapping render:") and not (tmp_path / "r").exists()


def test_random_bytes_as_a_splat_are_one_line_for_every_format(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "noise.splat").write_bytes(rng.integers(0, 256, 32 * 500, dtype=np.uint8).tobytes())
    for fmt in FORMATS:
        assert cli_export([str(tmp_path / "noise.splat"), "--format", fmt, "--out", str(tmp_path / f"o.{fmt}")]) == 2
        one_line(capsys.readouterr().err, "dreammapping export:")
    assert not list(tmp_path.glob("o.*"))


def test_a_good_scene_passes_and_round_trips(tmp_path):
    g = scene()
    check_splat(g, "good")
    again = load_splat(save_splat(tmp_path / "g.splat", g))
    check_splat(again, "g.splat")
    assert torch.allclose(again.means, g.means, atol=1e-5)
    with pytest.raises(PlyError, match="no Gaussians"):
        check_splat(g[:0], "empty")
