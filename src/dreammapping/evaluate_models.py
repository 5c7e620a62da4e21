"""Metrics that need a model, and the loaders that find those models on local disk only.

- attribute accuracy of the toy world's classifier (`attribute_accuracy`), classifier-feature and Inception FID
  (`classifier_fid`, `inception_fid`), the prior's reference samples for 3D-FID (`prior_reference_images`,
  cached on disk by `cached_reference`), the paper's CLIP score (`clip_score`, `load_clip`);
- loaders only ever read local files and raise `MetricUnavailable(reason)` when weights are missing, so the
  caller can skip that metric with a one-line reason and carry on; `ModelCache` keeps what was loaded.

Definitions worth knowing when reading the numbers:
- CLIP score is 100 × cos(image embedding, text embedding), averaged over random views, not clamped at 0 (so it
  lies in [−100, 100]; torchmetrics' CLIPScore clamps at 0).
- 3D-FID compares random views of the result with images sampled from the 2D prior for the same prompt (50-step
  DPM-Solver++). `classifier_fid` is the same Fréchet distance on the toy-world attribute classifier's features
  (download-free); with a few dozen samples it is a biased, relative measure — compare methods at equal N only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from dreammapping.files import atomic_path
from dreammapping.metrics import fid_from_features, to_channels_first, to_channels_last
from dreammapping.priors import DiffusionPrior, embedded_prior_path
from dreammapping.toyworld import grammar
from dreammapping.toyworld.classifier import AttributeClassifier

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
# Fréchet distance on model features, and the prior's reference samples
# ================================================================================================================
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


def _one_line(error: BaseException, limit: int = 240) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


