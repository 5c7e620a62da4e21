"""Evaluation of a run: ground-truth 3D metrics on the embedded world, CLIP score and 3D-FID by the paper's protocol.

Split by concern, so that the maths is testable without any model:

1. **Pure metrics** on image tensors live in `dreammapping.metrics` (channels-last `[B,H,W,3]` in [0,1]; every
   metric returns a float).
2. **Model-backed metrics** (`clip_score`, `inception_fid`, `classifier_fid`, `attribute_accuracy`) and their
   loaders live in `dreammapping.evaluate_models`: the model is an argument; loaders (`load_clip`,
   `inception_fid_available`) only ever read local files and raise `MetricUnavailable(reason)` when weights are
   missing, so the caller can skip that metric with a one-line reason and carry on.
3. **Here: `evaluate_run(run_dir)`** and **`cli_evaluate(argv)`** (`dreammapping evaluate RUN [RUN...]`): render the
   result and, when the prompt parses in the toy world, the true scene at the same cameras, compute every metric
   that can be computed, list the rest under `skipped`, and write `run_dir/eval.json`. Each metric group
   (`canonical_metrics`, `ground_truth_metrics`, `attribute_metrics`, `clip_metric`, `inception_fid_metric`,
   `classifier_fid_metric`) is a plain function of an `EvalContext` (the renders, the true scene, the options);
   the models they load live in a `ModelCache` (the process-wide `MODELS` unless one is passed).

The names of layers 1 and 2 are re-exported here, so `from dreammapping.evaluate import psnr` keeps working.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml
from torch import Tensor

from dreammapping import cameras as C
from dreammapping.devices import check_device, resolve_device
from dreammapping.errors import ConfigError
from dreammapping.evaluate_models import (  # noqa: F401  (re-exported: the public names of evaluate before the split)
    CLIP_MODELS, HF_CLIP_REPOS, INCEPTION_WEIGHTS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, REFERENCE_CACHE_VERSION,
    ClipEncoder, HFClipEncoder, MetricUnavailable, ModelCache, OpenClipEncoder, _classifier_input, _one_line,
    attribute_accuracy, cached_reference, classifier_fid, clip_score, clip_score_from_embeddings, inception_fid,
    inception_fid_available, load_clip, prior_fingerprint, prior_reference_images, reference_cache_dir,
    scene_attribute_targets,
)
from dreammapping.export import load_ply
from dreammapping.files import atomic_write_text
from dreammapping.guidance.base import default_guidance_scale
from dreammapping.metrics import (  # noqa: F401  (re-exported: the pure metrics of evaluate before the split)
    EDGE_RELATIVE_THRESHOLD, EDGE_THRESHOLD, EDGE_TOLERANCE, FLOATER_ALPHA, FOREGROUND_THRESHOLD, NOISE_ERODE,
    NOISE_SIGMA, PSNR_CAP, SILHOUETTE_DILATE, affine_matched_luma, chroma_ratio, edge_energy_ratio, edge_f_score,
    feature_statistics, fid_from_features, floater_count, foreground_mask, frechet_distance, halo_fraction,
    high_frequency_noise, interior_high_frequency, lightness_error, log_edge_energy_ratio, matched_ssim, mean_color,
    mean_color_error, mean_edge_energy, mean_saturation, psnr, relative_edge_f_score, residual_noise, saturation,
    saturation_error, silhouette_iou, ssim, to_channels_first, to_channels_last, _luminance, _plane,
    _sobel_magnitude,
)
from dreammapping.nerf import NATIVE_FILE, NerfScene, load_field
from dreammapping.render import rasterize
from dreammapping.toyworld import grammar
from dreammapping.toyworld.sdf import render_scenes


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


MODELS = ModelCache()  # what `evaluate_run` and `evaluate_gaussians` use unless given their own


@torch.no_grad()
def _render(gaussians, cameras) -> tuple[Tensor, Tensor]:
    """The result (`Gaussians`, or any `scene.Scene`: a radiance field) on white at `cameras`: rgb [B,H,W,3] in
    [0,1], alpha [B,H,W,1]."""
    white = torch.ones(3, device=cameras.device)
    # a scene.Scene renders itself; plain Gaussians (a .ply) go through the rasterizer
    out = gaussians.render(cameras, white) if hasattr(gaussians, "render") else \
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
                        "edge_f_score", "hf_noise",
                        # claims v2: unmoved by a lightness change; CIELAB colour; what lies off the object
                        "ssim_matched", "log_edge_energy", "edge_f_rel", "lightness_error", "chroma_ratio", "residual_noise",
                        "halo", "floaters")
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
        "ssim_matched": matched_ssim(rgb, gt_rgb),
        "log_edge_energy": log_edge_energy_ratio(rgb, gt_rgb),
        "edge_f_rel": relative_edge_f_score(rgb, gt_rgb),
        "lightness_error": lightness_error(rgb, gt_rgb, both),
        "chroma_ratio": chroma_ratio(rgb, gt_rgb, both),
        "residual_noise": residual_noise(rgb, gt_rgb, gt_alpha),
        "halo": halo_fraction(ctx.alpha, gt_alpha),
        "floaters": floater_count(ctx.alpha, gt_alpha),
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
