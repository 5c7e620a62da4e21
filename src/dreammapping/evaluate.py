"""Evaluation: ground-truth 3D metrics on the embedded world, CLIP score and 3D-FID by the paper's protocol.

Three layers, kept apart so that the maths is testable without any model:

1. **Pure metrics** on image tensors. Images are **channels-last `[B,H,W,3]` in [0,1]**, as the renderer and the
   toy-world SDF renderer produce them; silhouettes are alpha `[B,H,W,1]` or `[B,H,W]`; masks are bool of either
   shape. Functions that hand images to a network (classifier, CLIP, Inception) convert to channels-first at that
   edge. Every metric returns a Python float (mean over the batch unless said otherwise).
2. **Model-backed metrics** (`clip_score`, `inception_fid`, `classifier_fid`): the model is an argument; loaders
   (`load_clip`, `inception_fid_available`) only ever read local files and raise `MetricUnavailable(reason)`
   when weights are missing, so the caller can skip that metric with a one-line reason and carry on.
3. **`evaluate_run(run_dir)`** and **`cli_evaluate(argv)`** (`dreammapping evaluate RUN [RUN...]`): render the
   result and, when the prompt parses in the toy world, the true scene at the same cameras, compute every metric
   that can be computed, list the rest under `skipped`, and write `run_dir/eval.json`. Each metric group
   (`canonical_metrics`, `ground_truth_metrics`, `attribute_metrics`, `clip_metric`, `inception_fid_metric`,
   `classifier_fid_metric`) is a plain function of an `EvalContext` (the renders, the true scene, the options);
   the models they load live in a `ModelCache` (the process-wide `MODELS` unless one is passed).

Definitions worth knowing when reading the numbers:
- PSNR is computed per view from that view's MSE and capped at `PSNR_CAP` = 100 dB (identical views give exactly
  the cap instead of +inf), then averaged over views. torchmetrics instead pools the MSE and returns inf.
- Colour and saturation errors are taken over the pixels where **both** the truth and the result are foreground
  (alpha > 0.5): they measure colour, not shape (silhouette IoU measures shape). Saturation error is
  mean S(result) − mean S(truth) with HSV saturation S = (max − min) / max: **positive = over-saturated**, the
  artefact the paper attributes to SDS.
- CLIP score is 100 × cos(image embedding, text embedding), averaged over random views, not clamped at 0 (so it
  lies in [−100, 100]; torchmetrics' CLIPScore clamps at 0).
- 3D-FID compares random views of the result with images sampled from the 2D prior for the same prompt (50-step
  DPM-Solver++). `classifier_fid` is the same Fréchet distance on the toy-world attribute classifier's features
  (download-free); with a few dozen samples it is a biased, relative measure — compare methods at equal N only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scipy import linalg, ndimage
from torch import Tensor

from dreammapping import cameras as C
from dreammapping.devices import check_device, resolve_device
from dreammapping.errors import ConfigError
from dreammapping.export import load_ply
from dreammapping.files import atomic_path, atomic_write_text
from dreammapping.guidance.base import default_guidance_scale
from dreammapping.nerf import NATIVE_FILE, NerfScene, load_field
from dreammapping.priors import DiffusionPrior, embedded_prior_path
from dreammapping.render import rasterize
from dreammapping.scene import Scene
from dreammapping.toyworld import grammar
from dreammapping.toyworld.classifier import AttributeClassifier
from dreammapping.toyworld.sdf import render_scenes

PSNR_CAP = 100.0  # dB; the PSNR of two identical images

# Paper protocol: CLIP ViT-L/14 and ViT-bigG-14 through open_clip, (model name, pretrained tag).
CLIP_MODELS: tuple[tuple[str, str], ...] = (("ViT-L-14", "openai"), ("ViT-bigG-14", "laion2b_s39b_b160k"))
# The same weights in transformers' layout, tried (local files only) when open_clip is not installed.
HF_CLIP_REPOS = {"ViT-L-14": "openai/clip-vit-large-patch14", "ViT-bigG-14": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"}
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# torchmetrics' FrechetInceptionDistance (through torch-fidelity) loads this file from torch hub's cache.
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (missing package or weights); str(error) is the one-line reason."""


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


# ---- attribute accuracy ----------------------------------------------------------------------------------------
def _names(classifier, attr: str, fallback) -> list[str]:
    return list(getattr(classifier, attr, None) or fallback)


def scene_attribute_targets(scene, color_names: Sequence[str], shape_names: Sequence[str]) -> dict[str, int]:
    """Class ids of a scene: first object's colour / shape, second object's (−1 when alone), relation
    (−1 none, else the index in `toyworld.grammar.RELATIONS`)."""
    objs = scene.objects
    second = objs[1] if len(objs) > 1 else None
    relation = getattr(scene, "relation", None)
    relations = list(grammar.RELATIONS)
    return {
        "color": list(color_names).index(objs[0].color), "shape": list(shape_names).index(objs[0].shape),
        "second_color": -1 if second is None else list(color_names).index(second.color),
        "second_shape": -1 if second is None else list(shape_names).index(second.shape),
        "relation": -1 if relation is None or relation not in relations else relations.index(relation),
    }


def _classifier_input(classifier, images: Tensor) -> Tensor:
    """Channels-last views → channels-first at the classifier's resolution (32 unless it says otherwise)."""
    size = int(getattr(classifier, "resolution", 32) or 32)
    x = to_channels_first(images.float()).clamp(0, 1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")  # what the classifier itself would do
    param = next(iter(classifier.parameters()), None) if hasattr(classifier, "parameters") else None
    return x.to(param.device) if param is not None else x


@torch.no_grad()
def attribute_accuracy(classifier, images: Tensor, scene) -> dict[str, float]:
    """Fraction of views [B,H,W,3] in which the classifier recognises the scene.

    One object: `color`, `shape` right; `all` = both right and no second object predicted (when the classifier
    has that head). Two objects (order-free, as `toyworld.classifier.match_pair`): `color` = both colours right,
    `shape` = both shapes right, `all` = colour and shape paired correctly and the relation right (when
    predicted). Class ids follow the classifier's `color_names` / `shape_names` (else the grammar's order)."""
    colors = _names(classifier, "color_names", grammar.COLORS)
    shapes = _names(classifier, "shape_names", grammar.SHAPES)
    t = scene_attribute_targets(scene, colors, shapes)
    pred = {k: v.cpu() for k, v in classifier.classify(_classifier_input(classifier, images)).items()}
    B = images.shape[0]
    never = torch.zeros(B, dtype=torch.bool)

    def eq(key: str, target: int) -> Tensor:
        return pred[key] == target if key in pred else never

    if t["second_color"] < 0:  # one object
        color, shape = eq("color", t["color"]), eq("shape", t["shape"])
        alone = pred["second_shape"] < 0 if "second_shape" in pred else ~never
        both = color & shape & alone
    else:
        c_fwd = eq("color", t["color"]) & eq("second_color", t["second_color"])
        c_rev = eq("color", t["second_color"]) & eq("second_color", t["color"])
        s_fwd = eq("shape", t["shape"]) & eq("second_shape", t["second_shape"])
        s_rev = eq("shape", t["second_shape"]) & eq("second_shape", t["shape"])
        color, shape = c_fwd | c_rev, s_fwd | s_rev
        relation = eq("relation", t["relation"]) if "relation" in pred else ~never
        both = ((c_fwd & s_fwd) | (c_rev & s_rev)) & relation
    return {k: float(v.float().mean()) for k, v in (("color", color), ("shape", shape), ("all", both))}


# ================================================================================================================
# 2. Fréchet distance (3D-FID and its classifier-feature variant)
# ================================================================================================================
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


@torch.no_grad()
def classifier_fid(classifier, images_a: Tensor, images_b: Tensor) -> float:
    """Download-free FID: Fréchet distance on `classifier.features` of two sets of channels-last views."""
    fa = classifier.features(_classifier_input(classifier, images_a))
    fb = classifier.features(_classifier_input(classifier, images_b))
    return fid_from_features(fa, fb)


def inception_fid_available() -> None:
    """Raise MetricUnavailable unless torchmetrics' FID can run without downloading anything."""
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception backbone)
    except ImportError:
        raise MetricUnavailable("torch-fidelity not installed (pip install torch-fidelity) for Inception FID")
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not path.is_file():
        raise MetricUnavailable(f"Inception weights not in the local cache ({path}); not downloading them")


@torch.no_grad()
def inception_fid(images_a: Tensor, images_b: Tensor, device: str | torch.device = "cpu") -> float:
    """FID (torchmetrics, Inception-v3 pool features, 2048-d) between two sets of channels-last views in [0,1]."""
    inception_fid_available()
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048, normalize=True).to(device)
    metric.update(to_channels_first(images_b.float()).to(device), real=True)
    metric.update(to_channels_first(images_a.float()).to(device), real=False)
    return float(metric.compute())


@torch.no_grad()
def prior_reference_images(
    prior, prompt: str, n: int, num_steps: int = 50, generator: torch.Generator | None = None,
    guidance_scale: float = 7.5, batch_size: int = 16,
) -> Tensor:
    """`n` images [n,H,W,3] sampled from the 2D prior for `prompt` (the 3D-FID reference set), in batches of
    `batch_size`: DPM-Solver++ for a latent prior (the paper's choice), stochastic DDIM (eta 1) for a pixel-space
    one, whose deterministic samples keep visible noise (see `DiffusionPrior.sample`)."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler if getattr(prior, "is_latent", True) else None
    chunks = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = prior.sample([prompt] * b, num_steps=num_steps, guidance_scale=guidance_scale,
                         scheduler=scheduler, generator=generator)
        chunks.append(to_channels_last(x.float().cpu().clamp(0, 1)))
    return torch.cat(chunks)


# ================================================================================================================
# 2b. CLIP score: one scoring function, two loaders (open_clip, transformers), never a download
# ================================================================================================================
class ClipEncoder(Protocol):
    name: str

    def encode_images(self, images: Tensor) -> Tensor: ...  # [B,3,H,W] in [0,1] → [B,D]

    def encode_text(self, prompts: list[str]) -> Tensor: ...  # → [N,D]


def clip_score_from_embeddings(image_embeds: Tensor, text_embeds: Tensor) -> float:
    """100 × cosine similarity between each image embedding [B,D] and the text embedding ([1,D] or [B,D]),
    averaged over images. In [−100, 100]."""
    cos = F.cosine_similarity(image_embeds.double(), text_embeds.double().expand_as(image_embeds), dim=-1)
    return float(100.0 * cos.mean())


@torch.no_grad()
def clip_score(images: Tensor, prompt: str, encoder: ClipEncoder) -> float:
    """The paper's CLIP score of channels-last views [B,H,W,3] against `prompt`."""
    image_embeds = encoder.encode_images(to_channels_first(images.float()).clamp(0, 1))
    text_embeds = encoder.encode_text([prompt])
    return clip_score_from_embeddings(image_embeds, text_embeds)


def _clip_pixels(images: Tensor, size: int, mean: Sequence[float], std: Sequence[float], device, dtype) -> Tensor:
    """CLIP preprocessing on tensors: bicubic resize of the square views to `size`, then normalise."""
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(device=device, dtype=dtype)


def _embedding(out) -> Tensor:
    """transformers ≥ 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor."""
    return out if isinstance(out, Tensor) else out.pooler_output


@dataclass
class HFClipEncoder:
    """A transformers `CLIPModel` (+ its tokenizer) as a ClipEncoder."""

    model: Any
    tokenizer: Any
    name: str = "clip"
    mean: Sequence[float] = OPENAI_CLIP_MEAN
    std: Sequence[float] = OPENAI_CLIP_STD

    def _param(self) -> Tensor:
        return next(self.model.parameters())

    def encode_images(self, images: Tensor) -> Tensor:
        p = self._param()
        size = int(self.model.config.vision_config.image_size)
        return _embedding(self.model.get_image_features(pixel_values=_clip_pixels(images, size, self.mean, self.std, p.device, p.dtype)))

    def encode_text(self, prompts: list[str]) -> Tensor:
        max_len = int(self.model.config.text_config.max_position_embeddings)
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        ids = tok["input_ids"].to(self._param().device)
        mask = tok.get("attention_mask")
        return _embedding(self.model.get_text_features(input_ids=ids, attention_mask=None if mask is None else mask.to(ids.device)))


@dataclass
class OpenClipEncoder:
    """An open_clip model (+ tokenizer) as a ClipEncoder; preprocessing done on tensors with the model's own
    image size, mean and std."""

    model: Any
    tokenizer: Callable
    name: str = "clip"

    def encode_images(self, images: Tensor) -> Tensor:
        p = next(self.model.parameters())
        visual = self.model.visual
        size = visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN
        std = getattr(visual, "image_std", None) or OPENAI_CLIP_STD
        return self.model.encode_image(_clip_pixels(images, size, mean, std, p.device, p.dtype))

    def encode_text(self, prompts: list[str]) -> Tensor:
        p = next(self.model.parameters())
        return self.model.encode_text(self.tokenizer(prompts).to(p.device))


@contextlib.contextmanager
def _hf_offline():
    """Make huggingface_hub resolve files from the local cache only (no HEAD requests, no downloads)."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    patched = []
    for mod_name in ("huggingface_hub.constants", "transformers.utils.hub"):
        mod = sys.modules.get(mod_name)
        if mod is not None and hasattr(mod, "HF_HUB_OFFLINE"):
            patched.append((mod, getattr(mod, "HF_HUB_OFFLINE")))
            setattr(mod, "HF_HUB_OFFLINE", True)
    try:
        yield
    finally:
        for mod, value in patched:
            setattr(mod, "HF_HUB_OFFLINE", value)
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _open_clip_cached_weights(open_clip, name: str, tag: str) -> str | None:
    """Path of the locally cached weights open_clip would use for (name, tag), or None; never downloads."""
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    hub = (cfg.get("hf_hub") or "").strip("/")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        parts = hub.split("/")
        repo, prefix = "/".join(parts[:2]), "/".join(parts[2:])
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo, f"{prefix}/{filename}" if prefix else filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get("url") or ""
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.is_file():
            return str(local)
    return None


def _hf_cached(repo: str, filename: str) -> bool:
    """Whether `filename` of hub repo `repo` is in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo, filename)
    return isinstance(found, str) and os.path.isfile(found)


def load_clip(name: str = "ViT-L-14", pretrained: str = "openai", device: str | torch.device = "cpu") -> ClipEncoder:
    """A ClipEncoder for open_clip's (name, pretrained) from local files only: open_clip when installed and the
    weights are cached, else transformers' copy of the same weights (local_files_only). Raises MetricUnavailable
    with a one-line reason otherwise."""
    reasons = []
    try:
        import open_clip
    except ImportError:
        reasons.append("open_clip not installed")
    else:
        try:
            if _open_clip_cached_weights(open_clip, name, pretrained) is None:
                reasons.append(f"open_clip weights {name}/{pretrained} not in the local cache")
            else:
                with _hf_offline():
                    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
                return OpenClipEncoder(model.eval(), open_clip.get_tokenizer(name), name=f"{name}/{pretrained}")
        except Exception as error:  # noqa: BLE001 — any loader failure means "skip", with the reason
            reasons.append(f"open_clip failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
    repo = HF_CLIP_REPOS.get(name)
    if repo is not None and not _hf_cached(repo, "config.json"):
        # checked before importing transformers' CLIP, which alone costs more than the rest of an evaluation
        reasons.append(f"transformers copy {repo} not in the local cache")
    elif repo is not None:
        try:
            from transformers import AutoTokenizer, CLIPModel

            with _hf_offline():
                model = CLIPModel.from_pretrained(repo, local_files_only=True).to(device).eval()
                tokenizer = AutoTokenizer.from_pretrained(repo, local_files_only=True)
            return HFClipEncoder(model, tokenizer, name=f"{name}/{pretrained}")
        except Exception as error:  # noqa: BLE001
            reasons.append(f"transformers copy {repo} not in the local cache ({type(error).__name__})")
    raise MetricUnavailable("; ".join(reasons))


# ================================================================================================================
# 3. Evaluating a run: a context, metric groups as plain functions over it, and the models they load
# ================================================================================================================
@dataclass(frozen=True)
class EvalOptions:
    """What `evaluate_run` renders and computes."""

    resolution: int = 64  # side of the canonical (ground-truth) views and of the random views
    num_views: int = 16  # random orbit views for attribute accuracy, CLIP and FID
    seed: int = 0  # seed of the random views and of the prior's reference samples
    clip: bool = True  # try CLIP (skipped when weights are missing)
    clip_resolution: int = 224  # random views are rendered at this size for CLIP
    fid: bool = True  # 3D-FID against prior samples (Inception when available, classifier features always)
    fid_reference: int = 16  # images sampled from the prior per prompt for FID
    fid_steps: int = 50  # DPM-Solver++ steps for those samples (paper: 50)
    fid_guidance_scale: float | None = None  # CFG of those samples; None: 7.5 (SD's default), 2.0 for "embedded"
    fid_cache: bool = True  # keep the reference samples on disk (`reference_cache_dir()`), one file per setting
    device: str = "cpu"
    classifier_path: str | None = None  # None: the shipped classifier


@dataclass
class RunInfo:
    prompt: str
    prior: str
    config: dict = field(default_factory=dict)


def read_run_config(run_dir: str | Path) -> RunInfo:
    """Prompt and prior of a run from the `config.yaml` that `dreammapping generate` writes (GenerateConfig's
    fields at the top level: `prompt`, `prior`, …). A missing, unreadable or foreign file raises ValueError with one
    line; a config without `prior` (older runs) means "embedded", GenerateConfig's default."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no config.yaml (not a run folder of `dreammapping generate`)")
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read it ({_one_line(error)})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a run config (expected the mapping that `dreammapping generate` writes)")
    prompt, prior = config.get("prompt"), config.get("prior", "embedded")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{path}: no prompt (expected a non-empty `prompt:` string)")
    if not isinstance(prior, str) or not prior:
        raise ValueError(f"{path}: `prior:` must be a prior id or folder, got {prior!r}")
    return RunInfo(prompt, prior, config)


REFERENCE_CACHE_VERSION = 1  # bump when the way reference images are made changes


def reference_cache_dir() -> Path:
    """Where FID reference samples are kept: $DREAMMAPPING_CACHE/fid_reference, else
    $XDG_CACHE_HOME/dreammapping/fid_reference, else ~/.cache/dreammapping/fid_reference."""
    root = os.environ.get("DREAMMAPPING_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dreammapping")
    return Path(root) / "fid_reference"


def prior_fingerprint(prior_id: str) -> str:
    """Names, sizes and mtimes of the prior's files (the embedded prior's folder, or a local folder), so that
    retraining the prior invalidates its cached reference samples; a hub id stands for itself."""
    folder = embedded_prior_path() if prior_id == "embedded" else Path(prior_id)
    if not folder.is_dir():
        return prior_id
    entries = sorted(f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                     for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def cached_reference(settings: dict, sample: Callable[[], Tensor]) -> Tensor:
    """The reference images [N,H,W,3] for `settings` from the disk cache, or `sample()` them and store them.

    One safetensors file per settings (named by their hash, the settings stored inside and compared on load):
    a file that cannot be read, holds other settings, or has the wrong shape or values is recomputed and
    replaced, never trusted. Written through `files.atomic_path`, so concurrent evaluations never see half a file."""
    key = json.dumps(settings, sort_keys=True)
    path = reference_cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = (f.metadata() or {}).get("settings")
            images = load_file(str(path))["images"]
            n = int(settings.get("n", images.shape[0]))
            if stored == key and images.dim() == 4 and images.shape[0] == n and images.shape[-1] == 3 \
                    and bool(torch.isfinite(images).all()) and float(images.min()) >= 0 and float(images.max()) <= 1:
                return images.float()
        except Exception:  # noqa: BLE001 — a corrupt or foreign file: recompute below
            pass
    images = sample().float().contiguous().cpu()
    try:
        with atomic_path(path) as tmp:
            save_file({"images": images}, str(tmp), metadata={"settings": key})
    except OSError:  # a read-only cache is not an error, only slower
        pass
    return images


@dataclass
class ModelCache:
    """The models an evaluation loads, kept between evaluations in one process: priors, attribute classifiers
    and CLIP encoders by (what, device), FID reference samples by their settings. A classifier or CLIP encoder
    that cannot be loaded is remembered as its `MetricUnavailable`, so each evaluation reports it in one line
    without trying again."""

    priors: dict[tuple[str, str], Any] = field(default_factory=dict)
    classifiers: dict[tuple[str | None, str], Any] = field(default_factory=dict)
    clips: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    references: dict[str, Tensor] = field(default_factory=dict)

    def prior(self, prior_id: str, device: str):
        key = (prior_id, device)
        if key not in self.priors:
            self.priors[key] = DiffusionPrior.from_pretrained(prior_id, device=device)
        return self.priors[key]

    def classifier(self, path: str | None, device: str):
        """The attribute classifier at `path` (None: the shipped one), or MetricUnavailable."""
        key = (path, device)
        if key not in self.classifiers:
            try:
                self.classifiers[key] = AttributeClassifier.from_pretrained(path).to(device).eval()
            except FileNotFoundError as error:
                self.classifiers[key] = MetricUnavailable(_one_line(error))
            except Exception as error:  # noqa: BLE001
                self.classifiers[key] = MetricUnavailable(f"attribute classifier unavailable ({_one_line(error)})")
        return _raise_or_return(self.classifiers[key])

    def clip(self, name: str, tag: str, device: str) -> ClipEncoder:
        key = (name, tag, device)
        if key not in self.clips:
            try:
                self.clips[key] = load_clip(name, tag, device)
            except MetricUnavailable as error:
                self.clips[key] = error
        return _raise_or_return(self.clips[key])

    def reference(self, settings: dict, sample: Callable[[], Tensor], on_disk: bool) -> Tensor:
        """The FID reference images for `settings`: from memory, else the disk cache (when `on_disk`), else
        `sample()`."""
        key = json.dumps(settings, sort_keys=True)
        if key not in self.references:
            self.references[key] = cached_reference(settings, sample) if on_disk else sample()
        return self.references[key]


def _raise_or_return(value):
    if isinstance(value, Exception):
        raise value
    return value


MODELS = ModelCache()  # what `evaluate_run` and `evaluate_gaussians` use unless given their own


def _one_line(error: BaseException, limit: int = 240) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@torch.no_grad()
def _render(gaussians, cameras) -> tuple[Tensor, Tensor]:
    """The result (`Gaussians`, or any `scene.Scene`: a radiance field) on white at `cameras`: rgb [B,H,W,3] in
    [0,1], alpha [B,H,W,1]."""
    white = torch.ones(3, device=cameras.device)
    out = gaussians.render(cameras, white) if isinstance(gaussians, Scene) else \
        rasterize(gaussians, cameras, background=white)
    return out.rgb.clamp(0, 1), out.alpha


@dataclass
class EvalContext:
    """What the metric groups read: one scene, rendered at the canonical views and (with `num_views` > 0) at
    random orbit views, beside the prompt's true toy-world scene at the same cameras when the prompt parses."""

    gaussians: Any
    prompt: str
    prior: str
    options: EvalOptions
    models: ModelCache
    canonical: C.Cameras  # the four canonical views at options.resolution
    rgb: Tensor  # [4,R,R,3] the result at the canonical views
    alpha: Tensor  # [4,R,R,1]
    scene: Any  # the true `grammar.Scene`, or None
    not_in_toy_world: str = ""  # why `scene` is None (one line)
    random_views: C.Cameras | None = None  # options.num_views orbit views (seeded by options.seed)
    rand_rgb: Tensor | None = None  # [N,R,R,3] the result at the random views
    gt_rand_rgb: Tensor | None = None  # [N,R,R,3] the true scene at the random views (None: none, or it failed)
    clip_rgb: Tensor | None = None  # [N,S,S,3] the random views at options.clip_resolution, rendered when needed

    @property
    def foreground(self) -> Tensor:
        """[4,R,R] bool: where the result covers the canonical views."""
        return _plane(self.alpha) > 0.5


GROUND_TRUTH_METRICS = ("iou", "psnr", "ssim", "color_error", "saturation_error", "edge_energy_ratio",
                        "edge_f_score", "hf_noise")
ATTRIBUTE_METRICS = ("attr_color", "attr_shape", "attr_all")


def canonical_metrics(ctx: EvalContext) -> dict[str, float]:
    """Reference-free statistics of the canonical views: mean saturation over the result's foreground, and the
    fraction of pixels it covers."""
    fg = ctx.foreground
    return {"mean_saturation": mean_saturation(ctx.rgb, fg), "coverage": float(fg.float().mean())}


def ground_truth_metrics(ctx: EvalContext) -> dict[str, float]:
    """The result against the true scene at the canonical views: shape, colour, detail and noise."""
    gt_rgb, gt_alpha = render_scenes([ctx.scene], ctx.canonical)
    gt_rgb, gt_alpha = gt_rgb.to(ctx.rgb), gt_alpha.to(ctx.alpha)
    both = ctx.foreground & (_plane(gt_alpha) > 0.5)
    rgb = ctx.rgb
    return {
        "iou": silhouette_iou(ctx.alpha, gt_alpha),
        "psnr": psnr(rgb, gt_rgb),
        "ssim": ssim(rgb, gt_rgb),
        "color_error": mean_color_error(rgb, gt_rgb, both),
        "saturation_error": saturation_error(rgb, gt_rgb, both),
        "gt_saturation": mean_saturation(gt_rgb, _plane(gt_alpha) > 0.5),
        "edge_energy_ratio": edge_energy_ratio(rgb, gt_rgb),
        "edge_f_score": edge_f_score(rgb, gt_rgb),
        "hf_noise": high_frequency_noise(rgb, gt_rgb, gt_alpha),
    }


def attribute_metrics(ctx: EvalContext) -> dict[str, float]:
    """The shipped classifier's accuracy on the random views (`attr_*`), and on the true scene at the same views
    (`attr_*_gt`, the classifier's own ceiling)."""
    classifier = ctx.models.classifier(ctx.options.classifier_path, ctx.options.device)
    out = {f"attr_{k}": v for k, v in attribute_accuracy(classifier, ctx.rand_rgb, ctx.scene).items()}
    if ctx.gt_rand_rgb is not None:
        out.update({f"attr_{k}_gt": v for k, v in attribute_accuracy(classifier, ctx.gt_rand_rgb, ctx.scene).items()})
    return out


def clip_metric(ctx: EvalContext, name: str, tag: str) -> float:
    """The paper's CLIP score with open_clip's (name, tag) on the random views at `clip_resolution`."""
    encoder = ctx.models.clip(name, tag, ctx.options.device)
    if ctx.clip_rgb is None:  # rendered once, and only when some encoder is there to read it
        size = ctx.options.clip_resolution
        ctx.clip_rgb = _render(ctx.gaussians, ctx.random_views.with_size(size, size))[0]
    return clip_score(ctx.clip_rgb, ctx.prompt, encoder)


def fid_reference(ctx: EvalContext) -> Tensor:
    """[n,H,W,3] images of the prompt sampled from the run's prior (`fid_reference`, `fid_steps`), cached in
    `ctx.models` and, with `fid_cache`, on disk under their settings."""
    opt = ctx.options
    cfg = opt.fid_guidance_scale
    if cfg is None:  # the embedded 32² prior falls apart at CFG ≥ 5; SD's default is 7.5
        cfg = default_guidance_scale(ctx.prior)
    settings = {"prior": ctx.prior, "prior_fingerprint": prior_fingerprint(ctx.prior), "prompt": ctx.prompt,
                "n": opt.fid_reference, "steps": opt.fid_steps, "guidance_scale": float(cfg), "seed": opt.seed,
                "version": REFERENCE_CACHE_VERSION}

    def sample() -> Tensor:
        prior = ctx.models.prior(ctx.prior, opt.device)
        g = torch.Generator(device=getattr(prior, "device", "cpu")).manual_seed(opt.seed)
        return prior_reference_images(prior, ctx.prompt, opt.fid_reference, opt.fid_steps, g, guidance_scale=cfg)

    return ctx.models.reference(settings, sample, on_disk=opt.fid_cache)


def inception_fid_metric(ctx: EvalContext) -> float:
    inception_fid_available()  # before sampling the reference: skipping must cost nothing
    return inception_fid(ctx.rand_rgb, fid_reference(ctx), ctx.options.device)


def classifier_fid_metric(ctx: EvalContext, reference: Tensor | None = None) -> float:
    """Classifier-feature FID of the random views against `reference` (default: the prior's samples)."""
    classifier = ctx.models.classifier(ctx.options.classifier_path, ctx.options.device)
    return classifier_fid(classifier, ctx.rand_rgb, fid_reference(ctx) if reference is None else reference)


def _attempt(names: str | Sequence[str], fn: Callable[[], dict | float | None], metrics: dict[str, float],
             skipped: dict[str, str]) -> None:
    """Run one metric group into `metrics`; any failure skips exactly that group's `names` with a one-line reason."""
    names = [names] if isinstance(names, str) else list(names)
    try:
        value = fn()
    except MetricUnavailable as error:
        skipped.update({n: str(error) for n in names})
        return
    except Exception as error:  # noqa: BLE001 — a broken metric must not hide the others
        skipped.update({n: _one_line(error) for n in names})
        return
    if isinstance(value, dict):
        metrics.update(value)
    elif value is not None:
        metrics[names[0]] = float(value)


def evaluate_run(run_dir: str | Path, options: EvalOptions | None = None, models: ModelCache | None = None,
                 **overrides) -> dict:
    """Every metric of one run folder (`gaussians.ply` or `nerf.safetensors`, + `config.yaml`); writes and returns
    `eval.json`'s dict:
    {"run", "prompt", "prior", "metrics": name → float, "skipped": name → reason, "settings", "seconds"}.
    `overrides` replace fields of `options` (which is left as it is)."""
    opt = dataclasses.replace(options or EvalOptions(), **overrides)
    run_dir = Path(run_dir)
    ply, field = run_dir / "gaussians.ply", run_dir / NATIVE_FILE
    if not ply.is_file() and not field.is_file():
        raise FileNotFoundError(f"{run_dir}: no gaussians.ply (nor a NeRF run's {NATIVE_FILE})")
    t0 = time.perf_counter()
    info = read_run_config(run_dir)
    gaussians = load_ply(ply, device=opt.device) if ply.is_file() else NerfScene(*load_field(field, opt.device))
    metrics, skipped = evaluate_gaussians(gaussians, info.prompt, info.prior, opt, models)
    result = {
        "run": str(run_dir),
        "prompt": info.prompt,
        "prior": info.prior,
        "metrics": metrics,
        "skipped": skipped,
        "settings": dataclasses.asdict(opt),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(run_dir / "eval.json", json.dumps(_jsonable(result), indent=2) + "\n")
    return result


def evaluate_gaussians(gaussians, prompt: str, prior_id: str = "embedded", options: EvalOptions | None = None,
                       models: ModelCache | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """Every metric of one scene (a `Gaussians` on `options.device`) for `prompt`: (metrics name → float,
    skipped name → one-line reason). `evaluate_run` is this plus reading and writing the run folder; benchmarks
    call it on snapshots taken during training."""
    opt = options or EvalOptions()
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}

    # 1. the result at the canonical views, and the prompt's true scene when it is a toy-world prompt
    canonical = C.canonical_views(opt.resolution, opt.resolution).to(opt.device)
    rgb, alpha = _render(gaussians, canonical)
    scene, why = None, ""
    try:
        scene = grammar.parse(prompt)
    except ValueError as error:  # UnknownWordsError / ParseError: not a toy-world prompt
        why = f"prompt does not parse in the toy world ({_one_line(error)})"
    ctx = EvalContext(gaussians, prompt, prior_id, opt, MODELS if models is None else models, canonical, rgb, alpha,
                      scene, why)
    metrics.update(canonical_metrics(ctx))

    # 2. ground truth at the canonical views
    if ctx.scene is None:
        skipped.update({n: ctx.not_in_toy_world for n in GROUND_TRUTH_METRICS})
    else:
        _attempt(GROUND_TRUTH_METRICS, lambda: ground_truth_metrics(ctx), metrics, skipped)
    if opt.num_views <= 0:  # canonical views only (cheap: benchmarks score every snapshot this way)
        for name in (*ATTRIBUTE_METRICS, "fid_inception", "fid_classifier", *(f"clip_{n}" for n, _ in CLIP_MODELS)):
            skipped[name] = "no random views (num_views=0)"
        return metrics, skipped

    # 3. random views of the result (and of the truth: reported through the metrics that need it when it fails)
    ctx.random_views = C.sample_orbit(opt.num_views, opt.resolution, opt.resolution, C.OrbitConfig(),
                                      generator=torch.Generator().manual_seed(opt.seed)).to(opt.device)
    ctx.rand_rgb = _render(gaussians, ctx.random_views)[0]
    if ctx.scene is not None:
        try:
            ctx.gt_rand_rgb = render_scenes([ctx.scene], ctx.random_views)[0].to(ctx.rand_rgb).clamp(0, 1)
        except Exception:  # noqa: BLE001
            ctx.gt_rand_rgb = None

    # 4. attribute accuracy of the shipped classifier
    if ctx.scene is None:
        skipped.update({n: "needs a toy-world prompt" for n in ATTRIBUTE_METRICS})
    else:
        _attempt(ATTRIBUTE_METRICS, lambda: attribute_metrics(ctx), metrics, skipped)

    # 5. CLIP score (paper protocol)
    for name, tag in CLIP_MODELS:
        if opt.clip:
            _attempt(f"clip_{name}", lambda: clip_metric(ctx, name, tag), metrics, skipped)
        else:
            skipped[f"clip_{name}"] = "disabled (--no-clip)"

    # 6. 3D-FID: random views against samples of the 2D prior (paper protocol), and against the truth's views
    if opt.fid:
        _attempt("fid_inception", lambda: inception_fid_metric(ctx), metrics, skipped)
        _attempt("fid_classifier", lambda: classifier_fid_metric(ctx), metrics, skipped)
        if ctx.gt_rand_rgb is not None:
            _attempt("fid_classifier_gt", lambda: classifier_fid_metric(ctx, ctx.gt_rand_rgb), metrics, skipped)
    else:
        for name in ("fid_inception", "fid_classifier"):
            skipped[name] = "disabled (--no-fid)"
    return metrics, skipped


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else (1e308 if x > 0 else -1e308)
    return x


# ================================================================================================================
# Command line: dreammapping evaluate RUN [RUN...]
# ================================================================================================================
TABLE_COLUMNS = (  # (metric, header, format)
    ("iou", "IoU↑", "{:.3f}"), ("psnr", "PSNR↑", "{:.2f}"), ("ssim", "SSIM↑", "{:.3f}"),
    ("color_error", "colour err↓", "{:.3f}"), ("saturation_error", "sat err (+ = over)", "{:+.3f}"),
    ("attr_all", "attr acc↑", "{:.2f}"), ("clip_ViT-L-14", "CLIP L/14↑", "{:.2f}"),
    ("fid_classifier", "cls-FID↓", "{:.2f}"),
)


def markdown_table(results: Sequence[dict]) -> str:
    """One row per evaluated run; "—" where a metric was skipped."""
    head = ["run", "prompt"] + [h for _, h, _ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        parts = Path(r["run"]).parts
        cells = ["/".join(parts[-3:]) if len(parts) > 3 else r["run"], r["prompt"]]
        for key, _, fmt in TABLE_COLUMNS:
            v = r["metrics"].get(key)
            cells.append("—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cli_evaluate(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dreammapping evaluate",
                                     description="Score runs against toy-world ground truth, CLIP and 3D-FID; "
                                                 "writes RUN/eval.json and prints a table.")
    parser.add_argument("runs", nargs="+", help="run folders (each with gaussians.ply and config.yaml)")
    parser.add_argument("--resolution", type=int, default=EvalOptions.resolution)
    parser.add_argument("--views", type=int, default=EvalOptions.num_views, help="random views per run")
    parser.add_argument("--seed", type=int, default=EvalOptions.seed)
    parser.add_argument("--no-clip", action="store_true", help="skip CLIP score")
    parser.add_argument("--no-fid", action="store_true", help="skip 3D-FID (saves sampling the prior)")
    parser.add_argument("--fid-reference", type=int, default=EvalOptions.fid_reference)
    parser.add_argument("--no-fid-cache", action="store_true",
                        help="sample the prior's FID reference afresh instead of reusing the on-disk cache "
                             "($DREAMMAPPING_CACHE, else ~/.cache/dreammapping)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--classifier", default=None, help="attribute classifier folder (default: shipped)")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # argparse has printed its message; hand back its code instead of exiting
        return int(e.code or 0)
    # checked once, up front, rather than failing every run the same way
    problems = [f"--{name} must be ≥ {low}, got {value}" for name, value, low in
                (("resolution", args.resolution, 8), ("views", args.views, 1), ("fid-reference", args.fid_reference, 1))
                if value < low]
    try:

        check_device(args.device)
    except ConfigError as error:
        problems.append(str(error))
    if problems:
        print(f"dreammapping evaluate: {problems[0]}", file=sys.stderr)
        return 2
    opt = EvalOptions(resolution=args.resolution, num_views=args.views, seed=args.seed, clip=not args.no_clip,
                      fid=not args.no_fid, fid_reference=args.fid_reference, fid_cache=not args.no_fid_cache,
                      device=str(resolve_device(args.device)),
                      classifier_path=args.classifier)
    results, failures = [], 0
    for run in args.runs:
        try:
            results.append(evaluate_run(run, opt))
        except Exception as error:  # noqa: BLE001 — one line per broken run, the others still evaluated
            print(f"dreammapping evaluate: {run}: {_one_line(error)}", file=sys.stderr)
            failures += 1
    if results:
        print(markdown_table(results))
        by_reason: dict[str, set[str]] = {}
        for r in results:
            for name, reason in r["skipped"].items():
                by_reason.setdefault(reason, set()).add(name)
        for reason, names in sorted(by_reason.items(), key=lambda kv: sorted(kv[1])):
            print(f"skipped {', '.join(sorted(names))}: {reason}")
    return 1 if failures else 0
