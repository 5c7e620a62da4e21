"""Rasterise 3D Gaussians into a batch of cameras: `rasterize(gaussians, cameras) -> RenderOutput`.

Three backends share one projection (`project_gaussians`) and one alpha rule (`pair_alpha`), so they agree:

- `"gsplat"`: CUDA kernels (`gsplat.rasterization`), used on the GPU;
- `"torch"`: pure PyTorch, sparse (every Gaussian only meets the pixels inside its footprint), fast on CPU and
  differentiable w.r.t. every parameter (autograd for the projection, a hand-written backward for the blending);
- `"dense"`: every Gaussian against every pixel, the obviously-correct reference the tests compare with.

The maths is 3DGS / gsplat "classic": EWA splatting with the Jacobian clamped to 1.3× the field of view, a 0.3 px²
low-pass dilation, alpha = min(0.99, opacity·exp(−½ dᵀΣ⁻¹d)), pairs with alpha < 1/255 skipped, front-to-back
compositing in camera-space depth order, colour = SH(view direction) + 0.5 clamped at 0. gsplat's early stop at
transmittance < 1e-4 is not reproduced (it changes a pixel by less than 1e-4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras
from .gaussians import SH_C0, Gaussians, quat_to_rotmat

NEAR_PLANE = 0.01  # Gaussians whose centre is closer than this (camera z) are culled, as in gsplat
EPS2D = 0.3  # px², added to the projected covariance's diagonal (3DGS's low-pass filter)
ALPHA_MIN = 1.0 / 255.0  # pairs fainter than this are skipped
ALPHA_MAX = 0.99  # so that one Gaussian never makes a pixel fully opaque (keeps 1 − alpha invertible)
FOV_CLAMP = 1.3  # the Jacobian is evaluated no further out than 1.3× the half field of view

SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)


@dataclass
class RenderOutput:
    rgb: Tensor  # [B,H,W,3] composited over the background
    alpha: Tensor  # [B,H,W,1] accumulated opacity
    depth: Tensor  # [B,H,W,1] alpha-weighted camera-space z (not normalised by alpha)
    means2d: Tensor  # [B,N,2] projected centres in pixels; .retain_grad() was called when it requires grad
    radii: Tensor  # [B,N] int32 pixel radius of the 3-sigma footprint, 0 where culled


def rasterize(
    gaussians: Gaussians,
    cameras: Cameras,
    width: int | None = None,
    height: int | None = None,
    background: Tensor | None = None,  # [3] or [B,3] in [0,1]; default white
    backend: str = "auto",  # "auto" | "torch" | "gsplat" | "dense"
) -> RenderOutput:
    """Render `gaussians` into every camera of `cameras`; see docs/interfaces.md."""
    device, dtype = gaussians.means.device, gaussians.means.dtype
    width = cameras.width if width is None else int(width)
    height = cameras.height if height is None else int(height)
    viewmats = cameras.viewmats.to(device=device, dtype=dtype)  # [B,4,4]
    Ks = cameras.Ks.to(device=device, dtype=dtype).clone()  # [B,3,3]
    # Another image size keeps the field of view: scale fx, cx by the width ratio and fy, cy by the height ratio.
    Ks[:, 0, :] *= width / cameras.width
    Ks[:, 1, :] *= height / cameras.height
    B = viewmats.shape[0]
    if background is None:
        background = torch.ones(3, device=device, dtype=dtype)
    background = torch.as_tensor(background, device=device, dtype=dtype).expand(B, 3)  # [B,3]

    if backend == "auto":
        backend = "gsplat" if device.type == "cuda" and _gsplat_available() else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise ValueError("the gsplat backend needs the Gaussians on a CUDA device")
        return _rasterize_gsplat(gaussians, viewmats, Ks, width, height, background)
    if backend not in ("torch", "dense"):
        raise ValueError(f"unknown backend {backend!r}; expected 'auto', 'torch', 'gsplat' or 'dense'")

    proj = project_gaussians(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.sh, viewmats, Ks,
        width, height,
    )
    composite = composite_sparse if backend == "torch" else composite_dense
    rgb, alpha, depth = composite(proj, width, height, background)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    return RenderOutput(rgb, alpha, depth, proj.means2d, proj.radii)


# ---- projection (shared by the torch and dense backends) ---------------------------------------------------------


@dataclass
class Projection:
    """Every Gaussian seen by every camera (B cameras, N Gaussians)."""

    means2d: Tensor  # [B,N,2] pixel coordinates of the centres
    conics: Tensor  # [B,N,3] (a, b, c): the upper triangle of the inverse 2D covariance
    depths: Tensor  # [B,N] camera-space z
    opacities: Tensor  # [N]
    colors: Tensor  # [B,N,3] SH colour seen from each camera, ≥ 0
    visible: Tensor  # [B,N] bool: in front of the near plane, opaque enough, footprint meets the image
    boxes: Tensor  # [B,N,4] int64 (x0, y0, x1, y1), inclusive pixel range that can have alpha ≥ ALPHA_MIN
    radii: Tensor  # [B,N] int32 3-sigma radius in pixels, 0 where not visible
    order: Tensor  # [B,N] int64 Gaussian indices sorted front to back (invisible ones last)


def eval_sh(sh: Tensor, dirs: Tensor) -> Tensor:
    """Real spherical harmonics of degree ≤ 3 (3DGS's constants and signs).

    sh: [N,K,3] coefficients, K = (degree + 1)²; dirs: [B,N,3] unit view directions. Returns [B,N,3] (no +0.5).
    """
    K = sh.shape[1]
    out = SH_C0 * sh[:, 0]
    if K == 1:
        return out.expand(dirs.shape[0], -1, -1)
    x, y, z = (dirs[..., i : i + 1] for i in range(3))  # [B,N,1] each
    out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    if K > 4:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out = (
            out
            + SH_C2[0] * xy * sh[:, 4]
            + SH_C2[1] * yz * sh[:, 5]
            + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6]
            + SH_C2[3] * xz * sh[:, 7]
            + SH_C2[4] * (xx - yy) * sh[:, 8]
        )
        if K > 9:
            out = (
                out
                + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9]
                + SH_C3[1] * xy * z * sh[:, 10]
                + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13]
                + SH_C3[5] * z * (xx - yy) * sh[:, 14]
                + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15]
            )
    return out


def project_gaussians(
    means: Tensor,  # [N,3] world positions
    quats: Tensor,  # [N,4] (w,x,y,z), unnormalised
    scales: Tensor,  # [N,3] standard deviations along the local axes
    opacities: Tensor,  # [N] in (0,1)
    sh: Tensor,  # [N,K,3] SH coefficients
    viewmats: Tensor,  # [B,4,4] world-to-camera, OpenCV
    Ks: Tensor,  # [B,3,3] pixel intrinsics
    width: int,
    height: int,
    near_plane: float = NEAR_PLANE,
) -> Projection:
    """EWA projection of every Gaussian into every camera, plus culling, colours and depth order."""
    R_cw, t_cw = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [B,3,3], [B,3]
    mean_c = torch.einsum("bij,nj->bni", R_cw, means) + t_cw[:, None]  # [B,N,3]
    z = mean_c[..., 2]
    in_front = z > near_plane
    # Culled Gaussians get a harmless depth so that no inf/NaN appears anywhere (the dense reference touches them).
    z = torch.where(in_front, z, torch.ones_like(z))
    x, y = mean_c[..., 0], mean_c[..., 1]
    fx, fy, cx, cy = (v[:, None] for v in (Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]))  # [B,1]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)  # [B,N,2]

    # 3D covariance R S² Rᵀ, rotated into the camera, then the Jacobian of the perspective map (EWA).
    M = quat_to_rotmat(quats) * scales[:, None, :]  # [N,3,3] = R S
    cov_w = M @ M.transpose(-1, -2)  # [N,3,3]
    cov_c = R_cw[:, None] @ cov_w[None] @ R_cw[:, None].transpose(-1, -2)  # [B,N,3,3]
    # Far off-axis the linearisation explodes; like 3DGS, evaluate J no further out than 1.3× the half fov.
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * (0.5 * width / fx), cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * (0.5 * height / fy), cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z))
    zeros = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(z.shape + (2, 3))  # [B,N,2,3]
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [B,N,2,2]
    c00 = cov2d[..., 0, 0] + EPS2D
    c01 = cov2d[..., 0, 1]
    c11 = cov2d[..., 1, 1] + EPS2D
    det = c00 * c11 - c01 * c01
    det_ok = det > 0
    det = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c11 / det, -c01 / det, c00 / det], dim=-1)  # [B,N,3]

    # View-dependent colour: direction from the camera centre to the mean.
    campos = -torch.einsum("bji,bj->bi", R_cw, t_cw)  # [B,3] = −Rᵀ t
    dirs = torch.nn.functional.normalize(means[None] - campos[:, None], dim=-1)  # [B,N,3]
    colors = torch.clamp_min(eval_sh(sh, dirs) + 0.5, 0.0)

    with torch.no_grad():
        # The pixels that can pass alpha ≥ ALPHA_MIN lie inside the ellipse dᵀΣ⁻¹d ≤ 2 ln(opacity / ALPHA_MIN)
        # (≤ 3.33σ, gsplat's opacity-aware extent); its bounding box, slightly padded so that rounding never
        # drops a pixel the alpha test would keep, is where the sparse backend looks.
        op = opacities.detach()[None].expand_as(z)
        level = 2.0 * torch.log(torch.clamp_min(op / ALPHA_MIN, 1.0))  # [B,N]
        ex = torch.sqrt(level * c00.detach()) * 1.0001 + 1e-3
        ey = torch.sqrt(level * c11.detach()) * 1.0001 + 1e-3
        mx, my = means2d.detach().unbind(-1)
        # Pixel j's centre is j + 0.5; clamp before the int cast so far-away centres cannot overflow.
        x0 = torch.ceil((mx - ex - 0.5).clamp(-1, width)).long().clamp_min(0)
        x1 = torch.floor((mx + ex - 0.5).clamp(-1, width)).long().clamp_max(width - 1)
        y0 = torch.ceil((my - ey - 0.5).clamp(-1, height)).long().clamp_min(0)
        y1 = torch.floor((my + ey - 0.5).clamp(-1, height)).long().clamp_max(height - 1)
        visible = in_front & det_ok & (op >= ALPHA_MIN) & (x0 <= x1) & (y0 <= y1)
        boxes = torch.stack([x0, y0, x1, y1], dim=-1)
        # Largest eigenvalue of the 2D covariance (as gsplat): the diagonal alone underestimates rotated ellipses.
        half_trace, half_diff = 0.5 * (c00 + c11).detach(), 0.5 * (c00 - c11).detach()
        sigma_max = torch.sqrt(half_trace + torch.sqrt(half_diff**2 + c01.detach() ** 2))
        radii = torch.where(visible, torch.ceil(3.0 * sigma_max), torch.zeros_like(sigma_max)).int()
        # Stable, so that equal depths fall back to index order in both backends alike.
        key = torch.where(visible, z.detach(), torch.full_like(z, math.inf))
        order = torch.sort(key, dim=1, stable=True).indices
    return Projection(means2d, conics, z, opacities, colors, visible, boxes, radii, order)


def pair_alpha(
    d: Tensor,  # [...,2] pixel centre minus projected mean
    conic: Tensor,  # [...,3] (a, b, c) of the inverse covariance
    opacity: Tensor,  # [...]
) -> tuple[Tensor, Tensor]:
    """alpha = min(0.99, opacity·exp(−½ dᵀΣ⁻¹d)) and whether the pair counts (alpha ≥ 1/255), elementwise.

    Both backends call this with the same numbers, so they take bit-identical keep/skip decisions."""
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (conic[..., 0] * dx * dx + conic[..., 2] * dy * dy) + conic[..., 1] * dx * dy
    alpha = torch.clamp_max(opacity * torch.exp(-sigma), ALPHA_MAX)
    return alpha, (sigma >= 0) & (alpha >= ALPHA_MIN)


# ---- dense reference ---------------------------------------------------------------------------------------------


def composite_dense(proj: Projection, width: int, height: int, background: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every Gaussian against every pixel, sorted by depth, cumprod transmittance. O(B·N·H·W) memory: tests only."""
    B = proj.means2d.shape[0]
    dtype, device = proj.means2d.dtype, proj.means2d.device
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    pix = torch.stack([xs, ys], dim=-1).reshape(-1, 2) + 0.5  # [P,2]
    rgbs, alphas, depths = [], [], []
    for b in range(B):
        o = proj.order[b]  # front to back
        d = pix[None] - proj.means2d[b, o][:, None]  # [N,P,2]
        alpha, keep = pair_alpha(d, proj.conics[b, o][:, None], proj.opacities[o][:, None])
        alpha = torch.where(keep & proj.visible[b, o][:, None], alpha, torch.zeros_like(alpha))  # [N,P]
        T = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1 - alpha[:-1]]), dim=0)  # exclusive product
        w = alpha * T  # [N,P]
        feats = torch.cat([proj.colors[b, o], proj.depths[b, o][:, None]], dim=-1)  # [N,4]
        acc = w.T @ feats  # [P,4]
        a = w.sum(0)[:, None]  # [P,1]
        rgbs.append(acc[:, :3] + (1 - a) * background[b])
        alphas.append(a)
        depths.append(acc[:, 3:])
    shape = (B, height, width, -1)
    return torch.stack(rgbs).reshape(shape), torch.stack(alphas).reshape(shape), torch.stack(depths).reshape(shape)


# ---- sparse torch backend ----------------------------------------------------------------------------------------


def composite_sparse(proj: Projection, width: int, height: int, background: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back compositing over the (pixel, Gaussian) pairs with alpha ≥ 1/255 only.

    1. visible (camera, Gaussian) pairs, in depth order per camera;
    2. without autograd, enumerate the pixels in each pair's bounding box and keep those passing the alpha test;
    3. stable-sort the kept pairs by pixel (depth order survives inside each pixel), so each pixel owns a run;
    4. `_Composite` alpha-blends every run with a segmented scan, with a hand-written backward (see there).
    """
    B, N = proj.depths.shape
    P = height * width
    with torch.no_grad():
        sorted_visible = proj.visible.gather(1, proj.order)  # [B,N]
        cam, rank = sorted_visible.nonzero(as_tuple=True)  # visible pairs, by camera then depth
        flat = cam * N + proj.order[cam, rank]  # [V] into [B*N]
        pix_key, pair = _overlaps(proj, flat, width, height)  # [E] camera·P + pixel, [E] into [V]
        # int32 keys sort about twice as fast; B·H·W stays far below 2³¹.
        perm = torch.sort(pix_key.int(), stable=True).indices
        pix_key = pix_key[perm]
        ent = flat[pair[perm]]  # [E] into [B*N]
        chunks = _run_aligned_chunks(pix_key)

    feats = torch.cat([proj.colors, proj.depths[..., None]], dim=-1).reshape(B * N, 4)
    acc = _Composite.apply(
        proj.means2d.reshape(B * N, 2), proj.conics.reshape(B * N, 3),
        proj.opacities[None].expand(B, N).reshape(B * N), feats,
        ent, pix_key, chunks, (width, height, B * P),
    ).reshape(B, height, width, 5)
    a = acc[..., 4:5]
    rgb = acc[..., :3] + (1 - a) * background[:, None, None, :]
    return rgb, a, acc[..., 3:4]


# Entries per chunk of the sparse passes. Temporaries of a few MB are recycled by malloc; the ~100 MB ones a whole
# batch would need are mmapped and page-faulted afresh for every op, which measured ~2× slower on CPU.
CHUNK = 1 << 18


def _run_aligned_chunks(pix_key: Tensor, chunk: int = CHUNK) -> list[tuple[int, int]]:
    """[(lo, hi)] ranges of about `chunk` entries of the pixel-sorted list, cut only where a pixel's run starts, so
    every chunk can be composited on its own."""
    E = len(pix_key)
    if E <= chunk:
        return [(0, E)] if E else []
    starts = torch.ones(E, dtype=torch.bool, device=pix_key.device)
    starts[1:] = pix_key[1:] != pix_key[:-1]
    starts = starts.nonzero().squeeze(1)  # [R] first entry of every run
    cuts = torch.searchsorted(starts, torch.arange(chunk, E, chunk, device=pix_key.device))
    cuts = torch.unique(starts[cuts.clamp_max(len(starts) - 1)]).tolist()
    bounds = sorted({0, E, *cuts})
    return list(zip(bounds[:-1], bounds[1:]))


def _pixel_centres(pix_key: Tensor, width: int, height: int, dtype: torch.dtype) -> Tensor:
    """[E,2] centres (x + 0.5, y + 0.5) of the pixels keyed camera·H·W + y·W + x. Integers are exact in floats, so
    these are bit-identical to the dense reference's centres."""
    pixel = pix_key % (width * height)
    y = torch.div(pixel, width, rounding_mode="floor")
    return torch.stack([pixel - y * width, y], dim=-1).to(dtype) + 0.5


def _runs(key: Tensor) -> tuple[Tensor, Tensor]:
    """For a sorted key [E]: the index of the first and of the last entry of each entry's run."""
    is_start = torch.ones_like(key, dtype=torch.bool)
    is_start[1:] = key[1:] != key[:-1]
    starts = is_start.nonzero().squeeze(1)  # [R]
    run = torch.cumsum(is_start, 0) - 1  # [E] run id
    lasts = torch.cat([starts[1:], starts.new_tensor([len(key)])]) - 1
    # Gathers, not repeat_interleave: that one wakes every OpenMP thread even for tiny inputs.
    return starts[run], lasts[run]


class _Composite(torch.autograd.Function):
    """acc[p] = Σ_i w_i·(rgb_i, z_i, 1) over the run of entries i of pixel p, w_i = α_i·Π_{j<i}(1 − α_j).

    Autograd through the same expression saves a dozen entry-sized tensors and walks each op back separately; this
    saves only α and T per entry and runs the 3DGS backward as vectorised scans:
        dL/dα_i = T_i·g_i − S_i / (1 − α_i),   g_i = (rgb_i, z_i, 1)·dL/dacc_p,   S_i = Σ_{k after i in p} w_k·g_k.
    Running sums go through float64 (cheap, and no cancellation worries when subtracting a run's offset).
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, ent, pix_key, chunks, size):
        # means2d [M,2], conics [M,3], opacities [M], feats [M,4] (r,g,b,z) per (camera, Gaussian) pair;
        # ent [E] into M and pix_key [E] (camera·H·W + pixel), sorted by pixel then depth; chunks: run-aligned ranges.
        width, height, num_pixels = size
        dtype = means2d.dtype
        table = torch.cat([means2d, conics, opacities[:, None], feats], dim=1)  # [M,10]
        alpha = torch.empty(len(ent), dtype=dtype, device=means2d.device)
        T = torch.empty_like(alpha)
        acc = torch.zeros(num_pixels, 5, dtype=dtype, device=means2d.device)
        for lo, hi in chunks:
            key = pix_key[lo:hi]
            rows = table.index_select(0, ent[lo:hi])  # [c,10]
            a, _ = pair_alpha(_pixel_centres(key, width, height, dtype) - rows[:, 0:2], rows[:, 2:5], rows[:, 5])
            start, _ = _runs(key)
            log_t = torch.log1p(-a).double()
            excl = torch.cumsum(log_t, 0).sub_(log_t)
            t = torch.exp(excl - excl[start]).to(dtype)  # transmittance in front of each entry
            w = (a * t)[:, None]
            acc.index_add_(0, key, torch.cat([rows[:, 6:10] * w, w], dim=1))
            alpha[lo:hi], T[lo:hi] = a, t
        ctx.save_for_backward(table, ent, pix_key, alpha, T)
        ctx.chunks, ctx.size = chunks, size
        return acc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_acc):  # grad_acc [num_pixels,5]
        table, ent, pix_key, alpha, T = ctx.saved_tensors
        width, height, _ = ctx.size
        dtype = table.dtype
        grad_acc = grad_acc.contiguous()
        out = torch.zeros(table.shape[0], 10, dtype=dtype, device=table.device)
        for lo, hi in ctx.chunks:
            key, a, t = pix_key[lo:hi], alpha[lo:hi], T[lo:hi]
            rows = table.index_select(0, ent[lo:hi])
            gp = grad_acc.index_select(0, key)  # [c,5]
            g = (rows[:, 6:10] * gp[:, :4]).sum(1) + gp[:, 4]
            w = a * t
            cs = torch.cumsum((w * g).double(), 0)
            _, last = _runs(key)
            behind = (cs[last] - cs).to(dtype)  # S_i: what the entries behind i in its pixel contribute
            d_alpha = t * g - behind / (1 - a)
            # Through alpha = min(0.99, o·exp(−σ)): nothing flows where the clamp is active.
            d = _pixel_centres(key, width, height, dtype) - rows[:, 0:2]
            dx, dy = d[:, 0], d[:, 1]
            ca, cb, cc, o = rows[:, 2], rows[:, 3], rows[:, 4], rows[:, 5]
            gauss = torch.exp(-(0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy))
            d_alpha = torch.where(o * gauss > ALPHA_MAX, 0.0, d_alpha)
            d_o = gauss * d_alpha
            d_sigma = -o * d_o
            grads = torch.stack(
                [
                    -d_sigma * (ca * dx + cb * dy),  # means2d (d = centre − mean)
                    -d_sigma * (cb * dx + cc * dy),
                    0.5 * d_sigma * dx * dx,  # conic a, b, c
                    d_sigma * dx * dy,
                    0.5 * d_sigma * dy * dy,
                    d_o,
                    *(w[:, None] * gp[:, :4]).unbind(1),  # feats
                ],
                dim=1,
            )
            out.index_add_(0, ent[lo:hi], grads)
        return out[:, 0:2], out[:, 2:5], out[:, 5], out[:, 6:10], None, None, None, None


def _overlaps(proj: Projection, flat: Tensor, width: int, height: int, chunk: int = CHUNK) -> tuple[Tensor, Tensor]:
    """(camera·H·W + pixel, pair index) of every pixel in each pair's box that passes the alpha test.

    flat: [V] visible pairs as indices into [B*N]. Works in chunks of about `chunk` box pixels to bound memory."""
    B, N = proj.depths.shape
    P = width * height
    dtype = proj.means2d.dtype
    boxes = proj.boxes.reshape(B * N, 4)[flat]  # [V,4]
    bw = boxes[:, 2] - boxes[:, 0] + 1
    counts = bw * (boxes[:, 3] - boxes[:, 1] + 1)  # [V] box areas
    origin = (flat // N) * P + boxes[:, 1] * width + boxes[:, 0]  # [V] key of each box's top-left pixel
    # One gather of packed rows per chunk instead of one per field.
    rows = torch.cat(
        [
            boxes[:, :2].to(dtype),  # box origin; small integers are exact in floats
            proj.means2d.detach().reshape(B * N, 2)[flat],
            proj.conics.detach().reshape(B * N, 3)[flat],
            proj.opacities.detach()[None].expand(B, N).reshape(B * N)[flat, None],
        ],
        dim=1,
    )
    ends = torch.cumsum(counts, 0)
    keys, pairs = [], []
    lo = 0
    while lo < len(flat):
        # Whole pairs per chunk: the first pair whose running area passes the budget closes it.
        budget = (ends[lo - 1] if lo > 0 else 0) + chunk
        hi = max(lo + 1, int(torch.searchsorted(ends, budget, right=True)))
        c = counts[lo:hi]
        offsets = torch.cumsum(c, 0) - c  # [hi-lo] first entry of each pair's box; boxes are never empty
        mark = torch.zeros(int(offsets[-1] + c[-1]), dtype=torch.long, device=flat.device)
        mark[offsets[1:]] = 1
        pair = torch.cumsum(mark, 0) + lo  # [e] which pair each box pixel belongs to
        local = torch.arange(len(pair), device=flat.device) - offsets[pair - lo]
        w = bw[pair]
        ly = torch.div(local, w, rounding_mode="floor")
        lx = local - ly * w
        r = rows.index_select(0, pair)
        # Exactly the centre − mean that `_Composite` and the dense reference compute, so the same pairs pass.
        centre = (r[:, 0:2] + torch.stack([lx, ly], dim=-1).to(dtype)) + 0.5
        _, keep = pair_alpha(centre - r[:, 2:4], r[:, 4:7], r[:, 7])
        pair, lx, ly = pair[keep], lx[keep], ly[keep]
        keys.append(origin[pair] + ly * width + lx)
        pairs.append(pair)
        lo = hi
    if not keys:
        empty = torch.zeros(0, dtype=torch.long, device=flat.device)
        return empty, empty
    return torch.cat(keys), torch.cat(pairs)


# ---- gsplat backend ----------------------------------------------------------------------------------------------


def _gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return False
    return True


def _rasterize_gsplat(
    gaussians: Gaussians,
    viewmats: Tensor,  # [B,4,4]
    Ks: Tensor,  # [B,3,3]
    width: int,
    height: int,
    background: Tensor,  # [B,3]
) -> RenderOutput:
    """gsplat ≥ 1.4 `rasterization`, mapped onto RenderOutput (same near plane, eps2d, SH and clamp conventions)."""
    from gsplat import rasterization

    render, alphas, meta = rasterization(
        means=gaussians.means,  # [N,3]
        quats=gaussians.quats,  # [N,4], gsplat normalises
        scales=gaussians.scales,  # [N,3]
        opacities=gaussians.opacities,  # [N]
        colors=gaussians.sh,  # [N,K,3] SH coefficients
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=NEAR_PLANE,
        eps2d=EPS2D,
        sh_degree=gaussians.sh_degree,
        packed=False,  # so that means2d and radii are dense [B,N,...]
        backgrounds=background.contiguous(),
        render_mode="RGB+D",  # accumulated (not alpha-normalised) depth, as the interface asks
        rasterize_mode="classic",
    )
    means2d = meta["means2d"]  # [B,N,2]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]
    if radii.dim() == 3:  # gsplat ≥ 1.5 gives per-axis radii [B,N,2]
        radii = radii.max(dim=-1).values
    return RenderOutput(render[..., :3], alphas, render[..., 3:4], means2d, radii.int())
