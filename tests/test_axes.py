"""Axis conventions at the file boundary: SH rotation against the rotated directions, renders of the moved scene
against renders of the original from the moved camera, and the upright cone in the OpenCV frame."""

import dataclasses

import pytest
import torch

from dreammapping.axes import FILE_FROM_WORLD, MESH_FROM_WORLD, from_file, rotate_sh, sh_rotation, to_file, transform
from dreammapping.cameras import make_cameras
from dreammapping.gaussians import Gaussians, random_ball
from dreammapping.render import eval_sh, rasterize


def random_rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None]
    return q if torch.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("M", [FILE_FROM_WORLD, FILE_FROM_WORLD.T, MESH_FROM_WORLD, random_rotation(0)])
def test_sh_rotation_matches_rotated_directions(M):
    gen = torch.Generator().manual_seed(1)
    sh = torch.randn(50, 16, 3, generator=gen, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(7, 50, 3, generator=gen, dtype=torch.float64), dim=-1)
    # colour of the rotated object seen along M d equals the original's colour along d, every band
    expected = eval_sh(sh, d)
    got = eval_sh(rotate_sh(sh, M), d @ M.T)
    assert torch.allclose(got, expected, atol=1e-10)
    T = sh_rotation(M, 3)
    assert torch.allclose(T @ T.T, torch.eye(16, dtype=torch.float64), atol=1e-10)  # orthogonal, block by band


def test_degree_one_moves_by_signed_permutation():
    T = sh_rotation(FILE_FROM_WORLD, 1)
    assert set(T.unique().tolist()) <= {-1.0, 0.0, 1.0} and T[0, 0] == 1
    T2 = sh_rotation(FILE_FROM_WORLD, 2)[4:9, 4:9]
    assert (T2.abs() != T2.abs().round()).any()  # degree 2 really mixes: no pure permutation exists


def scene(degree=3, n=40, seed=0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    g = random_ball(n, radius=0.6, generator=gen, sh_degree=degree, opacity=0.6)
    return Gaussians(g.means, g.log_scales + torch.randn(n, 3, generator=gen) * 0.4 - 0.6,
                     torch.randn(n, 4, generator=gen), g.opacity_logits, torch.randn(g.sh.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("M", [FILE_FROM_WORLD, MESH_FROM_WORLD])
def test_render_of_moved_scene_matches_moved_camera(M):
    g = scene().to(dtype=torch.float64)
    cams = make_cameras(torch.tensor([20.0, 130.0]), torch.tensor([15.0, -30.0]), torch.tensor([3.0, 3.0]),
                        torch.tensor([45.0, 45.0]), 48, 48)
    cams.viewmats = cams.viewmats.double()
    moved = transform(g, M)
    # a camera looking at M x sees what the original camera saw at x: viewmat' = viewmat · diag(Mᵀ, 1)
    lift = torch.eye(4, dtype=torch.float64)
    lift[:3, :3] = M.T
    cams2 = dataclasses.replace(cams, viewmats=cams.viewmats @ lift)
    a = rasterize(g, cams, backend="dense").rgb
    b = rasterize(moved, cams2, backend="dense").rgb
    assert a.std() > 0.05  # something is in view
    assert torch.allclose(a, b, atol=1e-6)


def test_file_frame_is_minus_y_up_and_round_trip():
    cone_tip = Gaussians.from_points(torch.tensor([[0.0, 0.0, 1.0], [0.3, 0.2, -1.0]]), torch.full((2, 3), 0.5))
    f = to_file(cone_tip)
    assert f.means[0].tolist() == [0.0, -1.0, 0.0]  # world up (+z) is file −y
    assert torch.equal(f.means[1], torch.tensor([0.2, 1.0, -0.3]))  # world +y → file +x, +x (front) → file −z
    g = scene()
    back = from_file(to_file(g))
    for name in ("means", "log_scales", "quats", "opacity_logits"):
        assert torch.equal(back.params()[name], g.params()[name]), name
    assert torch.equal(back.sh[:, :4], g.sh[:, :4])  # DC and degree 1: signed permutations, bit-exact
    assert torch.allclose(back.sh, g.sh, atol=1e-6, rtol=0)  # degrees 2–3: float32 rounding of a rotation


def test_bad_axes_rejected():
    with pytest.raises(ValueError, match="signed permutations"):
        transform(scene(), torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)))
