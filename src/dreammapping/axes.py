"""Axis conventions at the file boundary: our +z-up world ↔ the OpenCV (−y up) frame 3DGS files and viewers use.

Inside dreammapping the world is +z up and the front camera sits on +x (docs/interfaces.md). The original 3DGS
code, the scenes it trains and the web viewers (SuperSplat/PlayCanvas, Spark, mkkellogg's GaussianSplats3D,
antimatter15/splat) take the OpenCV frame instead: **+x right, +y down, +z forward (away from the viewer)**.
`FILE_FROM_WORLD` maps ours to that frame so that an identity OpenCV camera (at the origin side, looking along +z,
y down) sees our front view:

    x_file = y_world      (image-right at the front view)
    y_file = −z_world     (up becomes −y)
    z_file = −x_world     (the front camera's viewing direction)

Meshes (glTF, OBJ) are +y up with the front facing +z (the glTF convention, which DCC tools assume for OBJ too):
`MESH_FROM_WORLD` maps x_mesh = y, y_mesh = z, z_mesh = x.

Both are signed permutations with determinant +1 (proper rotations), so positions are moved exactly. A Gaussian's
covariance R S² Rᵀ turns into M R S² Rᵀ Mᵀ = (M R Mᵀ)(M S² Mᵀ)(M R Mᵀ)ᵀ: the quaternion keeps its w and rotates
its vector part by M, the scales are permuted — both exact. Colour bands rotate by the SH rotation of M
(`sh_rotation`): the DC and degree-1 bands by a signed permutation (exact); degrees 2 and 3 mix their coefficients
(no rotation taking +z to −y permutes them), so those go through a float64 matrix and come back to within float32
rounding (≈1e-7 of the band's size).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from dreammapping.gaussians import Gaussians, num_sh_bases
from dreammapping.render import eval_sh  # the renderer's own SH basis, so the conventions cannot drift apart

FILE_FROM_WORLD = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
MESH_FROM_WORLD = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)


def _check_signed_permutation(M: Tensor) -> tuple[Tensor, Tensor]:
    """(perm [3] long, sign [3]) with M[i, perm[i]] = sign[i]; raises unless M is a proper signed permutation."""
    M = torch.as_tensor(M, dtype=torch.float64)
    perm = M.abs().argmax(dim=1)
    sign = M[torch.arange(3), perm]
    ok = (M.abs().sum(dim=1) == 1).all() and sorted(perm.tolist()) == [0, 1, 2] and sign.abs().eq(1).all()
    if not ok or torch.linalg.det(M) < 0:
        raise ValueError("axis changes must be signed permutations with determinant +1")
    return perm, sign


def _fibonacci_directions(n: int) -> Tensor:
    """n unit directions [n,3] spread evenly over the sphere (deterministic)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * torch.pi * (3 - 5 ** 0.5)
    r = (1 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1)


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """The real SH basis [P,K] the renderer uses (render.eval_sh, 3DGS signs) at unit directions [P,3]."""
    K = num_sh_bases(degree)
    eye = torch.eye(K, dtype=dirs.dtype)[:, :, None]  # one Gaussian per basis function
    return eval_sh(eye, dirs[:, None, :].expand(-1, K, -1))[..., 0]  # [P,K]


@lru_cache(maxsize=16)
def _sh_rotation_cached(key: tuple[float, ...], degree: int) -> Tensor:
    M = torch.tensor(key, dtype=torch.float64).reshape(3, 3)
    dirs = _fibonacci_directions(256)
    A = sh_basis(dirs, degree)  # Y(d)
    B = sh_basis(dirs @ M, degree)  # Y(Mᵀ d): row p is (Mᵀ d_p)ᵀ = d_pᵀ M
    T = torch.linalg.lstsq(A, B).solution  # A T = B; exact (the bands are closed under rotation)
    # Snap what is 0 or ±1 up to solver noise, so the DC and degree-1 bands move bit-exactly.
    for v in (0.0, 1.0, -1.0):
        T = torch.where((T - v).abs() < 1e-9, torch.full_like(T, v), T)
    return T


def sh_rotation(M: Tensor, degree: int) -> Tensor:
    """[K,K] float64 T such that coefficients c of a colour f(d) become T·c for f'(d') = f(Mᵀ d'), M a rotation.

    Found by least squares on 256 directions from the renderer's own basis (every band is closed under rotation,
    so the fit is exact to ~1e-15); block-diagonal by band.
    """
    key = tuple(float(v) for v in torch.as_tensor(M, dtype=torch.float64).reshape(-1))
    return _sh_rotation_cached(key, degree)


def rotate_sh(sh: Tensor, M: Tensor) -> Tensor:
    """SH coefficients [N,K,3] of colours rotated by M (see `sh_rotation`); signed-permutation blocks stay exact."""
    degree = int(round(sh.shape[1] ** 0.5)) - 1
    T = sh_rotation(M, degree)
    out = torch.empty_like(sh)
    for l in range(degree + 1):
        lo, hi = l * l, (l + 1) * (l + 1)
        block = T[lo:hi, lo:hi]
        if (block.abs().sum(dim=1) == 1).all() and (block.abs().max(dim=1).values == 1).all():
            src = block.abs().argmax(dim=1)
            signs = block[torch.arange(hi - lo), src].to(device=sh.device, dtype=sh.dtype)
            out[:, lo:hi] = sh[:, lo + src.to(sh.device)] * signs[None, :, None]
        else:
            out[:, lo:hi] = torch.einsum("jk,nkc->njc", block.to(sh.device), sh[:, lo:hi].double()).to(sh.dtype)
    return out


def transform(g: Gaussians, M: Tensor) -> Gaussians:
    """The same scene with every point x moved to M x; M a signed permutation with determinant +1."""
    perm, sign = _check_signed_permutation(M)
    dtype = g.means.dtype
    sign = sign.to(dtype=dtype, device=g.device)
    perm = perm.to(g.device)
    means = g.means[:, perm] * sign  # (M x)_i = sign_i x_perm_i
    v = g.quats[:, 1:]
    quats = torch.cat([g.quats[:, :1], v[:, perm] * sign], dim=1)  # M R Mᵀ ↔ (w, M v)
    log_scales = g.log_scales[:, perm]  # M S² Mᵀ = diag(s²_perm)
    sh = rotate_sh(g.sh, torch.as_tensor(M, dtype=torch.float64))
    return Gaussians(means=means, log_scales=log_scales, quats=quats, opacity_logits=g.opacity_logits, sh=sh)


def to_file(g: Gaussians) -> Gaussians:
    """Our +z-up world → the OpenCV frame 3DGS files use."""
    return transform(g, FILE_FROM_WORLD)


def from_file(g: Gaussians) -> Gaussians:
    """A 3DGS file's OpenCV frame (−y up) → our +z-up world."""
    return transform(g, FILE_FROM_WORLD.T)
