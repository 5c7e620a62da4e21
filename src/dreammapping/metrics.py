"""Pure image metrics on tensors: no model, no file, no run folder.

Images are **channels-last `[B,H,W,3]` in [0,1]**, as the renderer and the toy-world SDF renderer produce them;
silhouettes are alpha `[B,H,W,1]` or `[B,H,W]`; masks are bool of either shape. Every metric returns a Python
float (mean over the batch unless said otherwise). `evaluate_models` holds the metrics that need a network
(classifier, CLIP, Inception) and their loaders; `evaluate` scores a run folder with both.

Definitions worth knowing when reading the numbers:
- PSNR is computed per view from that view's MSE and capped at `PSNR_CAP` = 100 dB (identical views give exactly
  the cap instead of +inf), then averaged over views. torchmetrics instead pools the MSE and returns inf.
- Colour and saturation errors are taken over the pixels where **both** the truth and the result are foreground
  (alpha > 0.5): they measure colour, not shape (silhouette IoU measures shape). Saturation error is
  mean S(result) − mean S(truth) with HSV saturation S = (max − min) / max: **positive = over-saturated**, the
  artefact the paper attributes to SDS.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg, ndimage
from skimage.color import rgb2lab
from torch import Tensor

PSNR_CAP = 100.0  # dB; the PSNR of two identical images


# ================================================================================================================
# 1. Pure metrics on channels-last images
# ================================================================================================================
def to_channels_first(images: Tensor) -> Tensor:
    """[B,H,W,3] → [B,3,H,W] (the edge towards classifier / CLIP / Inception / diffusers)."""
    return images.permute(0, 3, 1, 2).contiguous()


def to_channels_last(images: Tensor) -> Tensor:
    """[B,3,H,W] → [B,H,W,3]."""
    return images.permute(0, 2, 3, 1).contiguous()


def _plane(x: Tensor) -> Tensor:
    """Alpha or mask [B,H,W,1] / [B,H,W] → [B,H,W]."""
    return x[..., 0] if x.dim() == 4 else x


def silhouette_iou(alpha_a: Tensor, alpha_b: Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of the silhouettes `alpha > threshold`, per view, averaged over views.
    A view where both silhouettes are empty counts as IoU 1."""
    a, b = _plane(alpha_a) > threshold, _plane(alpha_b) > threshold
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return float(iou.mean())


def psnr(a: Tensor, b: Tensor, cap: float = PSNR_CAP, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, per view (10·log10(range² / MSE)), capped at `cap`, averaged over views."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    value = 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-300))
    return float(value.clamp(max=cap).mean())


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity of [B,H,W,3] images, as torchmetrics' `structural_similarity_index_measure` with its
    defaults computes it (Gaussian window σ 1.5 of 11 px, reflect padding, the whole padded-then-filtered image
    averaged; tested against it). Written out here because importing torchmetrics costs more than the rest of
    an evaluation. Images smaller than the window's half-width + 1 use the largest odd window that fits."""
    x, y = to_channels_first(a.double()), to_channels_first(b.double())
    radius = int(3.5 * sigma + 0.5)
    radius = min(radius, min(x.shape[-2:]) - 1)
    dist = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-((dist / sigma) ** 2) / 2)
    g = g / g.sum()
    channels = x.shape[1]
    kernel = (g[:, None] @ g[None, :]).expand(channels, 1, -1, -1)
    x = F.pad(x, (radius,) * 4, mode="reflect")
    y = F.pad(y, (radius,) * 4, mode="reflect")
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), kernel, groups=channels).split(x.shape[0])
    mu_x, mu_y = stats[0], stats[1]
    var_x = (stats[2] - mu_x**2).clamp_min(0)
    var_y = (stats[3] - mu_y**2).clamp_min(0)
    cov = stats[4] - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.flatten(1).mean(1).mean())


def _masked_mean(values: Tensor, mask: Tensor | None) -> float:
    """Mean of `values` [B,H,W] over `mask` (all pixels when None); NaN on an empty mask."""
    if mask is None:
        return float(values.double().mean())
    m = _plane(mask).bool()
    count = int(m.sum())
    return float(values.double()[m].sum() / count) if count else float("nan")


def mean_color_error(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """Mean absolute RGB difference (averaged over the 3 channels) over the pixels of `mask`, pooled over the
    batch; `evaluate_run` passes the pixels where both truth and result are foreground. In [0,1]."""
    return _masked_mean((a.double() - b.double()).abs().mean(-1), mask)


def saturation(rgb: Tensor) -> Tensor:
    """HSV saturation (max − min) / max of [..., 3] RGB in [0,1]; 0 for black."""
    hi, lo = rgb.amax(-1), rgb.amin(-1)
    return torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi))


def saturation_error(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """Mean HSV saturation of `a` minus that of `b` over `mask` (pooled over the batch).
    With a = result and b = truth: **positive = the result is over-saturated**."""
    return _masked_mean(saturation(a.double()) - saturation(b.double()), mask)


def mean_saturation(rgb: Tensor, mask: Tensor | None = None) -> float:
    """Mean HSV saturation over `mask`: a reference-free colour statistic, usable for any prompt."""
    return _masked_mean(saturation(rgb.double()), mask)


# ---- detail and noise (what §5.6 / Fig. 5 and 7 of the paper are about) --------------------------------------
# Both work on luminance at the canonical views against the true render; scipy.ndimage does the filtering.
EDGE_THRESHOLD = 0.1  # Sobel magnitude (luminance units per pixel, Sobel normalised by 8) that counts as an edge
EDGE_TOLERANCE = 1  # px: an edge within this distance of a true edge counts as matched
NOISE_SIGMA = 1.0  # px: the high-pass of the noise measure keeps what a Gaussian of this σ removes
NOISE_ERODE = 2  # px: the truth's silhouette is eroded by this much, so shape misfit at the border is not "noise"


def _luminance(images: Tensor) -> np.ndarray:
    """[B,H,W,3] in [0,1] → [B,H,W] float64 Rec. 601 luma."""
    x = images.detach().double().cpu().numpy()
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def _sobel_magnitude(luma: np.ndarray) -> np.ndarray:
    """|∇| per view of [B,H,W] luma (Sobel / 8, so a unit step gives ≈ 0.5 at the step), border replicated."""
    gy = ndimage.sobel(luma, axis=1, mode="nearest") / 8.0
    gx = ndimage.sobel(luma, axis=2, mode="nearest") / 8.0
    return np.hypot(gx, gy)


def edge_energy_ratio(images: Tensor, truth: Tensor) -> float:
    """Gradient energy Σ|∇L|² (Sobel, luma) of `images` over that of `truth` ([B,H,W,3] each, summed over the
    batch). Squared on purpose: blur spreads a step over more pixels and keeps Σ|∇L| (the total variation of a
    monotone edge) but lowers Σ|∇L|². 1 = as much edge / shading detail as the truth; < 1 = over-smoothed (a
    blurred truth scores < 1); > 1 = more gradient than the truth (noise, speckle, hard artefacts). A sharpness
    measure, not a correctness one: read it with `edge_f_score`, which says whether the edges are in place."""
    a, b = (_sobel_magnitude(_luminance(images)) ** 2).sum(), (_sobel_magnitude(_luminance(truth)) ** 2).sum()
    return float(a / b) if b > 0 else float("nan")


def edge_f_score(images: Tensor, truth: Tensor, threshold: float = EDGE_THRESHOLD,
                 tolerance: int = EDGE_TOLERANCE) -> float:
    """F1 of the edge maps (Sobel magnitude > `threshold`) of `images` against `truth` ([B,H,W,3] each), an edge
    pixel matching when the other map has an edge within `tolerance` px (pooled over the batch). 1 = the truth's
    edges and no others; blur loses edges (recall), speckle adds false ones (precision)."""
    ea = _sobel_magnitude(_luminance(images)) > threshold
    eb = _sobel_magnitude(_luminance(truth)) > threshold
    if not ea.any() and not eb.any():
        return 1.0
    if not ea.any() or not eb.any():
        return 0.0
    structure = np.zeros((1, 2 * tolerance + 1, 2 * tolerance + 1), bool)
    structure[0] = True  # dilate within each view only
    near_a = ndimage.binary_dilation(ea, structure=structure)
    near_b = ndimage.binary_dilation(eb, structure=structure)
    precision = (ea & near_b).sum() / ea.sum()
    recall = (eb & near_a).sum() / eb.sum()
    return float(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0


def high_frequency_noise(images: Tensor, truth: Tensor, truth_alpha: Tensor, sigma: float = NOISE_SIGMA,
                         erode: int = NOISE_ERODE) -> float:
    """RMS of the high-frequency residual inside the truth's silhouette: r = luma(images) − luma(truth),
    hp(r) = r − G_σ * r, averaged over the pixels of the truth's silhouette (alpha > 0.5) eroded by `erode` px
    (pooled over the batch). 0 for the truth itself; speckle raises it; a smooth colour shift does not (it is
    low-frequency), nor does a silhouette that is slightly off (the border is eroded away). Detail that is missing
    (a blurred inner edge) leaves a residual too, smaller than speckle's: read it with `edge_energy_ratio`, which
    is < 1 for lost detail and > 1 for added texture. NaN on an empty mask."""
    r = _luminance(images) - _luminance(truth)
    high = r - ndimage.gaussian_filter(r, sigma=(0, sigma, sigma), mode="nearest")
    mask = (_plane(truth_alpha) > 0.5).detach().cpu().numpy()
    if erode > 0:
        structure = np.zeros((1, 3, 3), bool)
        structure[0] = True
        mask = ndimage.binary_erosion(mask, structure=structure, iterations=erode)
    return float(np.sqrt((high[mask] ** 2).mean())) if mask.any() else float("nan")


# ---- the same ideas for one generated image without a pose (text-to-2D) ----------------------------------------
# A text-to-2D result has no camera, so nothing is pixel-aligned with a truth: no IoU, PSNR, edge F-score or
# residual. What remains are statistics of the image itself compared with the same statistics of the toy world's
# renders of that prompt (random views, white background).
FOREGROUND_THRESHOLD = 0.1  # an image pixel is foreground when some channel is this far from the white background


def foreground_mask(images: Tensor, threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """[B,H,W,3] in [0,1] over a white background → [B,H,W,1] float mask of the pixels some channel of which is
    more than `threshold` below white (the toy world's renders and the prior's images have white backgrounds)."""
    return ((1.0 - images.float()).amax(-1, keepdim=True) > threshold).float()


def mean_color(rgb: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean RGB [3] over the pixels of `mask` (pooled over the batch), float64; NaN on an empty mask."""
    x = rgb.double().reshape(-1, 3)
    if mask is None:
        return x.mean(0)
    m = _plane(mask).bool().reshape(-1)
    return x[m].mean(0) if m.any() else torch.full((3,), float("nan"), dtype=torch.float64)


def mean_edge_energy(images: Tensor) -> float:
    """Σ|∇L|² (Sobel, luma; as `edge_energy_ratio`) per image of [B,H,W,3], averaged over the batch. The ratio of
    two sets' values is `edge_energy_ratio` for sets of equal size; here it compares images with no common pose."""
    return float((_sobel_magnitude(_luminance(images)) ** 2).sum() / images.shape[0])


def interior_high_frequency(images: Tensor, alpha: Tensor, sigma: float = NOISE_SIGMA, erode: int = NOISE_ERODE
                            ) -> float:
    """RMS of luma − G_σ * luma inside `alpha` (> 0.5) eroded by `erode` px: `high_frequency_noise` against a
    black truth, i.e. the image's own high frequencies inside its object. A flat object scores 0, speckle of
    std s ≈ 0.87 s; shading edges inside the object count too, so compare with the truth's renders' value."""
    return high_frequency_noise(images, torch.zeros_like(images), alpha, sigma, erode)





# ---- claims v2: detail that a lightness change cannot move, CIELAB colour, floaters and halo ---------------------
# The first detail measures read the object–background step: a truth made lighter (1 − 0.8(1 − x)), not blurred
# at all, had 0.64 of its edge energy. These compare the result's luma after the best affine map onto the
# truth's (per view, least squares), so a global lightness / contrast change is undone before detail is measured,
# and they threshold edges relative to the truth's own contrast.
EDGE_RELATIVE_THRESHOLD = 0.2  # an edge: Sobel magnitude > this × the truth's luma range (a unit step peaks at 0.5)
SILHOUETTE_DILATE = 2  # px: floaters and halo are what lies further than this outside the truth's silhouette
FLOATER_ALPHA = 0.1  # rendered opacity above which a pixel outside the dilated silhouette belongs to a floater


def affine_matched_luma(images: Tensor, truth: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(matched, truth luma), both [B,H,W] float64: per view, the result's luma L mapped by the a·L + b that is
    closest to the truth's luma in least squares. A global lightness or contrast change (any affine map of the
    truth's luma, e.g. 1 − 0.8(1 − x)) is undone exactly; blur and speckle are not. A flat result view (no
    variance) is left as it is."""
    lr, lt = _luminance(images), _luminance(truth)
    mr, mt = lr.mean((1, 2), keepdims=True), lt.mean((1, 2), keepdims=True)
    var = ((lr - mr) ** 2).mean((1, 2), keepdims=True)
    cov = ((lr - mr) * (lt - mt)).mean((1, 2), keepdims=True)
    a = np.where(var > 1e-12, cov / np.maximum(var, 1e-12), 1.0)
    b = np.where(var > 1e-12, mt - a * mr, 0.0)
    return a * lr + b, lt


def log_edge_energy_ratio(images: Tensor, truth: Tensor) -> float:
    """log(Σ|∇L̂|² / Σ|∇L|²) with L̂ the result's affine-matched luma and L the truth's (Sobel, pooled over the
    batch). 0 = the truth's detail; < 0 smoother (blur); > 0 more gradient than the truth (speckle, hard
    artefacts). Unmoved by a lightness / contrast change. Its absolute value is the detail error."""
    matched, lt = affine_matched_luma(images, truth)
    a, b = (_sobel_magnitude(matched) ** 2).sum(), (_sobel_magnitude(lt) ** 2).sum()
    if b <= 0:
        return float("nan")
    return float(np.log(max(a, 1e-300) / b))


def relative_edge_f_score(images: Tensor, truth: Tensor, relative: float = EDGE_RELATIVE_THRESHOLD,
                          tolerance: int = EDGE_TOLERANCE) -> float:
    """`edge_f_score` on the affine-matched luma with, per view, the threshold `relative` × the truth's luma range
    (max − min): an edge is an edge whatever the object's lightness. 1 = the truth's edges and no others; blur
    loses edges (recall), speckle adds false ones (precision); a lightness change alone leaves it at 1."""
    matched, lt = affine_matched_luma(images, truth)
    threshold = relative * (lt.max((1, 2), keepdims=True) - lt.min((1, 2), keepdims=True))
    ea, eb = _sobel_magnitude(matched) > threshold, _sobel_magnitude(lt) > threshold
    eb &= threshold > 0  # a flat truth view has no edges
    if not ea.any() and not eb.any():
        return 1.0
    if not ea.any() or not eb.any():
        return 0.0
    structure = np.zeros((1, 2 * tolerance + 1, 2 * tolerance + 1), bool)
    structure[0] = True
    precision = (ea & ndimage.binary_dilation(eb, structure=structure)).sum() / ea.sum()
    recall = (eb & ndimage.binary_dilation(ea, structure=structure)).sum() / eb.sum()
    return float(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0



def matched_ssim(images: Tensor, truth: Tensor) -> float:
    """`ssim` of the result's affine-matched luma against the truth's luma (one channel, the same window): 1 = the
    truth's structure. Blur and speckle both lower it and do not cancel (blur + speckle scores below either),
    a lightness / contrast change alone leaves it at 1; a silhouette off by some pixels lowers it too."""
    matched, lt = affine_matched_luma(images, truth)
    as_images = lambda x: torch.from_numpy(x)[..., None].expand(-1, -1, -1, 3)  # noqa: E731
    return ssim(as_images(matched), as_images(lt), data_range=1.0)

def _lab(rgb: Tensor) -> np.ndarray:
    """[..., 3] sRGB in [0,1] → CIELAB (D65) float64, by scikit-image."""
    return rgb2lab(rgb.detach().double().cpu().clamp(0, 1).numpy(), channel_axis=-1)


def _mask_np(mask: Tensor | None, shape) -> np.ndarray:
    return np.ones(shape, bool) if mask is None else _plane(mask).bool().cpu().numpy()


def lightness_error(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """Mean CIELAB L* of `a` minus that of `b` over `mask` (pooled over the batch), in L* units (0–100):
    + = the result is lighter. The largest colour error of a washed-out result. NaN on an empty mask."""
    m = _mask_np(mask, a.shape[:-1])
    if not m.any():
        return float("nan")
    return float(_lab(a)[..., 0][m].mean() - _lab(b)[..., 0][m].mean())


def chroma_ratio(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """Mean CIELAB chroma C* = √(a*² + b*²) of `a` over that of `b` over `mask`: 1 = the truth's colourfulness,
    > 1 over-saturated, < 1 washed out. Unlike HSV saturation error it has no ceiling at 1 − S(truth). NaN on an
    empty mask or a grey truth."""
    m = _mask_np(mask, a.shape[:-1])
    if not m.any():
        return float("nan")
    la, lb = _lab(a), _lab(b)
    ca, cb = np.hypot(la[..., 1], la[..., 2]), np.hypot(lb[..., 1], lb[..., 2])
    den = cb[m].mean()
    return float(ca[m].mean() / den) if den > 1e-9 else float("nan")


def _outside(truth_alpha: Tensor, dilate: int) -> np.ndarray:
    """[B,H,W] bool: further than `dilate` px (square neighbourhood) from the truth's silhouette (alpha > 0.5)."""
    inside = (_plane(truth_alpha) > 0.5).detach().cpu().numpy()
    if dilate > 0:
        structure = np.zeros((1, 3, 3), bool)
        structure[0] = True
        inside = ndimage.binary_dilation(inside, structure=structure, iterations=dilate)
    return ~inside


def halo_fraction(alpha: Tensor, truth_alpha: Tensor, dilate: int = SILHOUETTE_DILATE) -> float:
    """Share of the rendered opacity Σα that lies outside the truth's silhouette dilated by `dilate` px (pooled
    over the batch): 0 = everything the result draws is on (or next to) the object; haze, halos and floaters
    raise it. 0 for an empty render."""
    a = _plane(alpha).detach().double().cpu().numpy()
    total = a.sum()
    return float((a * _outside(truth_alpha, dilate)).sum() / total) if total > 0 else 0.0


def floater_count(alpha: Tensor, truth_alpha: Tensor, dilate: int = SILHOUETTE_DILATE,
                  threshold: float = FLOATER_ALPHA) -> float:
    """Mean number per view of separate blobs (8-connected) of rendered opacity > `threshold` outside the
    truth's silhouette dilated by `dilate` px: the floaters a residual inside the silhouette never sees. 0 for
    the truth, a blur of a few px, or speckle on the object."""
    a = _plane(alpha).detach().cpu().numpy() > threshold
    out = a & _outside(truth_alpha, dilate)
    return float(np.mean([ndimage.label(view, structure=np.ones((3, 3)))[1] for view in out]))


def residual_noise(images: Tensor, truth: Tensor, truth_alpha: Tensor, sigma: float = NOISE_SIGMA,
                   erode: int = NOISE_ERODE, dilate: int = SILHOUETTE_DILATE) -> float:
    """`high_frequency_noise` over the truth's eroded silhouette **and** the background further than `dilate` px
    outside it: speckle on the object and floaters off it both count; the band around the true border (where a
    silhouette a pixel off is shape error, not noise) does not. 0 for the truth itself."""
    r = _luminance(images) - _luminance(truth)
    high = r - ndimage.gaussian_filter(r, sigma=(0, sigma, sigma), mode="nearest")
    inside = (_plane(truth_alpha) > 0.5).detach().cpu().numpy()
    if erode > 0:
        structure = np.zeros((1, 3, 3), bool)
        structure[0] = True
        inside = ndimage.binary_erosion(inside, structure=structure, iterations=erode)
    mask = inside | _outside(truth_alpha, dilate)
    return float(np.sqrt((high[mask] ** 2).mean())) if mask.any() else float("nan")

# ---- Fréchet distance between feature Gaussians (3D-FID and its classifier-feature variant) ----------------
def feature_statistics(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and unbiased covariance [F,F] of features [N,F], in float64."""
    x = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 − mu2||² + tr(sigma1 + sigma2 − 2 (sigma1 sigma2)^½). As in pytorch-fid: if the product is singular
    (fewer samples than dimensions), add eps·I to both; drop a negligible imaginary part."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected with few samples; handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [Na,F] and [Nb,F]."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))

