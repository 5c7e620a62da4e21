"""Text-to-image diffusion priors: any Stable Diffusion–style diffusers checkpoint, and the embedded toy-world model.

`DiffusionPrior.from_pretrained(id_or_folder)` loads the components of a diffusers folder (or hub id) one by one —
`unet`, `text_encoder`, `tokenizer`, `scheduler` and, when present, `vae` — and exposes exactly what score
distillation needs (docs/interfaces.md, "priors"):

- model space: VAE latents × `scaling_factor` for a latent model, `2x − 1` for a pixel-space model;
- cached text embeddings, per view tag ("a cat, front view") and for the unconditional / negative prompt;
- `predict_noise(z_t, t, emb, guidance_scale)` → (ε_cfg, ε_cond, ε_uncond), always an ε-prediction (v-prediction
  checkpoints are converted), never with a gradient through the UNet;
- the scheduler's ᾱ_t and a DDIM (or any diffusers scheduler) sampler for evaluation.

The UNet, text encoder and VAE are frozen (`requires_grad_(False)`, `eval()`). Loading problems — a missing folder,
an id that is not in the Hugging Face cache while offline, a folder without a `unet/` — raise `PriorNotFoundError`
with one line that says how to provide the weights; the CLI prints that line instead of a traceback.
"""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dreammapping.cameras import VIEW_TAGS
from dreammapping.devices import default_dtype, resolve_device

VIEW_SUFFIXES: dict[str, str] = {tag: f", {tag} view" for tag in VIEW_TAGS}  # DreamFusion's view prompts
EMBEDDED = "embedded"
# The shipped toy-world priors by name → their folder under dreammapping/assets/. "embedded" is v1 (pixel space)
# until v2 wins the comparison; every name then loads its folder by the same code as any diffusers folder.
EMBEDDED_FOLDERS: dict[str, str] = {EMBEDDED: "prior", "embedded-v1": "prior", "embedded-v2": "prior-v2"}


class PriorNotFoundError(RuntimeError):
    """The prior's weights cannot be loaded; the message is one line that says how to provide them."""


class NonFiniteOutputError(FloatingPointError):
    """A UNet or VAE output is not finite even in float32 (or the float32 fallback is off); one-line message."""


@dataclass
class PromptEmbeddings:
    """Text conditioning for one batch of views."""

    cond: Tensor  # [B,L,D] prompt (+ view suffix) per view
    uncond: Tensor  # [B,L,D] unconditional (empty) or negative prompt: the other side of CFG
    null: Tensor | None = None  # [B,L,D] the empty prompt ∅, when `uncond` is a negative prompt (else None)
    # Perp-Neg (`view_embeddings(..., "perp-neg")`): K negative view prompts per view and their weights; when set,
    # `DiffusionPrior.predict_noise` combines them into ε_cfg (one UNet call on (2+K)·B)
    negatives: Tensor | None = None  # [K,B,L,D]
    negative_weights: Tensor | None = None  # [K,B] (≤ 0; 0 switches a negative off)
    azimuth: Tensor | None = None  # [B] degrees (0 = front) of each view's camera, when known
    views: dict[str, Tensor] | None = None  # tag → [1,L,D] per-view prompts ("front", "side", "back", …)

    def __len__(self) -> int:
        return self.cond.shape[0]

    def expand(self, batch: int) -> "PromptEmbeddings":
        """The same conditioning for `batch` views (from a batch of 1)."""
        if len(self) == batch:
            return self
        if len(self) != 1:
            raise ValueError(f"{len(self)} prompt embeddings for {batch} images")

        def grow(x, dim=0):
            if x is None:
                return None
            shape = list(x.shape)
            shape[dim] = batch
            return x.expand(*shape)

        return PromptEmbeddings(cond=grow(self.cond), uncond=grow(self.uncond), null=grow(self.null),
                                negatives=grow(self.negatives, 1), negative_weights=grow(self.negative_weights, 1),
                                azimuth=grow(self.azimuth), views=self.views)

    @property
    def unconditional(self) -> Tensor:
        """ε_φ(·, ∅)'s conditioning: the terms of NFSD and ISM that the maths defines with ∅, not the negative."""
        return self.uncond if self.null is None else self.null


@dataclass
class TextEmbeddings:
    """A prompt's embeddings for every view tag, plus the unconditional / negative prompt's ([1,L,D] each)."""

    prompt: str
    plain: Tensor  # [1,L,D] the prompt as given
    uncond: Tensor  # [1,L,D] the negative prompt ("" = unconditional)
    views: dict[str, Tensor] = field(default_factory=dict)  # tag → [1,L,D]; empty when not view-dependent
    null: Tensor | None = None  # [1,L,D] the empty prompt, kept apart when `uncond` is a negative prompt

    def for_views(self, tags: list[str] | tuple[str, ...] | int, azimuth: Tensor | None = None) -> PromptEmbeddings:
        """Embeddings for a batch of views (`tags` like cameras.view_tags, or just a batch size).

        `azimuth` [B] (degrees, the cameras') is kept for the azimuth-based view prompts of `view_embeddings`."""
        if isinstance(tags, int):
            tags = [""] * tags
        cond = torch.cat([self.views.get(tag, self.plain) for tag in tags], dim=0)
        null = None if self.null is None else self.null.expand(len(tags), -1, -1)
        return PromptEmbeddings(cond=cond, uncond=self.uncond.expand(len(tags), -1, -1), null=null,
                                azimuth=None if azimuth is None else azimuth.detach().float().cpu(),
                                views=self.views or None)


VIEW_PROMPTS = ("tag", "interpolate", "perp-neg")


def view_embeddings(emb: PromptEmbeddings, mode: str = "tag", negative_weight: float = -2.0,
                    front_decay: float = 2.0, side_decay: float = 10.0) -> PromptEmbeddings:
    """The view-dependent conditioning of `emb` by `mode` (LucidDreamer's `train.py` / Perp-Neg's maths):

    - "tag": as given (DreamFusion: the view's own suffix — front, side, back, overhead);
    - "interpolate": the prompt embedding blended by azimuth a (wrapped to [−180, 180)),
        |a| < 90:  r = 1 − |a|/90,        cond = r·e_front + (1−r)·e_side
        else:      r = 1 − (|a| − 90)/90, cond = r·e_side  + (1−r)·e_back;
    - "perp-neg" (Armandpour et al. 2023, weights as in LucidDreamer): the interpolated prompt plus two negative
      view prompts (front, side) whose CFG directions count only by their component perpendicular to the positive
      one (`DiffusionPrior.predict_noise`), with weights w = `negative_weight` (< 0) scaled by
        |a| < 90:  w_front = w·exp(−r·front_decay) (0 if r > 0.8),  w_side = w·exp(−(1−r)·side_decay) (0 if r < 0.2)
        else:      w_front = w,                                     w_side = w/2·exp(−r·side_decay) (0 if r > 0.8).

    Elevation plays no part (as in LucidDreamer): "overhead" views get the blend of their azimuth.
    """
    if mode == "tag":
        return emb
    if mode not in VIEW_PROMPTS:
        raise ValueError(f"unknown view_prompt {mode!r}; choose one of {', '.join(VIEW_PROMPTS)}")
    views = emb.views or {}
    if emb.azimuth is None or not all(tag in views for tag in ("front", "side", "back")):
        raise ValueError(f"view_prompt {mode!r} needs view-dependent prompts and the cameras' azimuths "
                         "(text-to-3D); use view_prompt 'tag' here")
    a = (emb.azimuth.double() + 180.0) % 360.0 - 180.0
    front_half = a.abs() < 90.0
    r = torch.where(front_half, 1.0 - a.abs() / 90.0, 1.0 - (a.abs() - 90.0) / 90.0)  # [B] in [0, 1]
    front, side, back = (views[tag][0].double() for tag in ("front", "side", "back"))  # [L,D]
    rr = r.view(-1, 1, 1)
    cond = torch.where(front_half.view(-1, 1, 1), rr * front + (1 - rr) * side, rr * side + (1 - rr) * back)
    cond = cond.to(emb.cond.dtype).to(emb.cond.device)
    if mode == "interpolate":
        return PromptEmbeddings(cond=cond, uncond=emb.uncond, null=emb.null, azimuth=emb.azimuth, views=emb.views)
    w = float(negative_weight)
    w_front = torch.where(front_half, torch.where(r > 0.8, 0.0, w * torch.exp(-r * front_decay)),
                          torch.full_like(r, w))
    w_side = torch.where(front_half, torch.where(r < 0.2, 0.0, w * torch.exp(-(1 - r) * side_decay)),
                         torch.where(r > 0.8, 0.0, w / 2 * torch.exp(-r * side_decay)))
    batch = len(emb)
    negatives = torch.stack([views["front"].expand(batch, -1, -1), views["side"].expand(batch, -1, -1)])
    return PromptEmbeddings(cond=cond, uncond=emb.uncond, null=emb.null, azimuth=emb.azimuth, views=emb.views,
                            negatives=negatives.to(emb.cond.device, emb.cond.dtype),
                            negative_weights=torch.stack([w_front, w_side]).float().to(emb.cond.device))


def perpendicular(x: Tensor, y: Tensor, eps: float = 1e-6) -> Tensor:
    """x − (⟨x, y⟩ / ||y||²)·y per sample: the part of x [B,…] orthogonal to y [B,…]."""
    dims = tuple(range(1, x.ndim))
    coef = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp(min=eps)
    return x - coef * y


def embedded_prior_path(name: str = EMBEDDED) -> Path:
    """Folder of the shipped prior `name` ("embedded" = "embedded-v1": `dreammapping/assets/prior/`; "embedded-v2":
    `dreammapping/assets/prior-v2/`), whether or not it exists yet."""
    return Path(str(importlib.resources.files("dreammapping"))) / "assets" / EMBEDDED_FOLDERS[name]


def is_embedded(name: object) -> bool:
    """Whether `name` names one of the shipped toy-world priors (whose prompts the toy grammar must read)."""
    return isinstance(name, str) and name in EMBEDDED_FOLDERS


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with diffusers
        return False


def _not_found(name: str, why: str) -> PriorNotFoundError:
    return PriorNotFoundError(
        f"cannot load {name!r}: {why}. Download it on a connected machine (huggingface-cli download {name}) "
        "and copy the Hugging Face cache here, or pass a local diffusers folder "
        "(unet/, text_encoder/, tokenizer/, scheduler/, optional vae/)."
    )


class DiffusionPrior:
    """A frozen text-conditioned diffusion model seen as an ε-predictor in its model space (see module doc)."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, device=None, dtype=None,
                 text_device=None, name: str = ""):
        self.device = resolve_device(device or "auto")
        self.dtype = dtype or default_dtype(self.device)
        self.name = name
        self.text_device = torch.device(text_device or self.device)
        self.unet = _freeze(unet, self.device, self.dtype)
        self.text_encoder = _freeze(text_encoder, self.text_device, self.dtype)
        self.vae = None if vae is None else _freeze(vae, self.device, self.dtype)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.is_latent = vae is not None
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        size = unet.config.sample_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.resolution = int(size) * self.downsample
        self.latent_channels = int(unet.config.in_channels)
        self.scaling_factor = float(vae.config.scaling_factor) if vae is not None else 1.0
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0) if vae is not None else 0.0
        max_len = getattr(tokenizer, "model_max_length", None) or 77
        self.max_length = min(int(max_len), int(text_encoder.config.max_position_embeddings))
        self._text_cache: dict[str, Tensor] = {}
        # fp16 safety: a non-finite half-precision UNet / VAE output is recomputed by a float32 copy of that module
        # (made on the first overflow and kept: +3.4 GB for SD 2.1's UNet) instead of flowing into the gradient
        self.fp32_fallback = True
        self.fallbacks: dict[str, int] = {}  # module name → calls recomputed in float32
        self._fp32_modules: dict[str, torch.nn.Module] = {}

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, id_or_folder: str = EMBEDDED, device=None, dtype=None, attention_slicing: bool = False,
                        cpu_offload: bool = False, enable_sdpa: bool = True) -> "DiffusionPrior":
        """Load a diffusers-format prior: `"embedded"`, a local folder, or a hub id already in the HF cache.

        `cpu_offload` keeps the text encoder on the CPU (it runs once per prompt; embeddings are cached) so only
        the UNet and VAE occupy the accelerator. `attention_slicing` trades speed for memory in the UNet;
        `enable_sdpa` selects PyTorch's scaled-dot-product attention (otherwise the classic processor).
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoModel, AutoTokenizer

        name = str(id_or_folder)
        if is_embedded(name):
            folder = embedded_prior_path(name)
            if not (folder / "unet").is_dir():
                how = ("`dreammapping train-prior --kind latent --out runs/prior-v2` (or scripts/gpu_train_prior_v2.sh "
                       f"on a GPU) and copy the folder there or pass it as the prior"
                       if EMBEDDED_FOLDERS[name] == "prior-v2" else "`dreammapping train-prior`")
                raise PriorNotFoundError(
                    f"the embedded prior {name!r} is not shipped in this install ({folder} has no unet/): train it "
                    f"with {how}, or pass a Stable Diffusion folder / hub id instead."
                )
            source, kwargs = str(folder), {}
        elif Path(name).expanduser().exists():
            folder = Path(name).expanduser()
            missing = [sub for sub in ("unet", "text_encoder", "tokenizer", "scheduler") if not (folder / sub).is_dir()]
            if missing:
                raise PriorNotFoundError(
                    f"cannot load {name!r}: the folder has no {', '.join(s + '/' for s in missing)} — expected a "
                    "diffusers pipeline folder (unet/, text_encoder/, tokenizer/, scheduler/, optional vae/)."
                )
            source, kwargs = str(folder), {}
        else:
            if name.startswith(("/", ".", "~")) or name.count("/") != 1:
                raise PriorNotFoundError(
                    f"cannot load {name!r}: no such folder, and not a Hugging Face id like "
                    "'stabilityai/stable-diffusion-2-1-base'; pass a diffusers folder, a hub id or \"embedded\"."
                )
            source, kwargs = name, {"local_files_only": _offline()}
            if not kwargs["local_files_only"] and not _in_hf_cache(name):
                kwargs["local_files_only"] = not _hub_reachable()
        device = resolve_device(device or "auto")
        dtype = dtype or default_dtype(device)
        bars = _quiet_loading()
        try:
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kwargs)
            text_encoder = AutoModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
            scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
            vae = None
            if _has_subfolder(source, "vae", kwargs):
                vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kwargs)
        except PriorNotFoundError:
            raise
        except Exception as err:  # diffusers / transformers / hub raise many types; reduce them to one line
            if source == name and not Path(name).exists():
                why = ("not a local folder and not in the Hugging Face cache (no downloads here)"
                       if kwargs.get("local_files_only") else f"download failed ({type(err).__name__})")
                raise _not_found(name, why) from None
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PriorNotFoundError(f"cannot load {name!r}: {first}") from None
        finally:
            bars()
        if enable_sdpa:
            from diffusers.models.attention_processor import AttnProcessor2_0 as Processor
        else:
            from diffusers.models.attention_processor import AttnProcessor as Processor
        unet.set_attn_processor(Processor())
        if attention_slicing:
            unet.set_attention_slice("auto")
        prior = cls(unet, text_encoder, tokenizer, scheduler, vae, device=device, dtype=dtype,
                    text_device="cpu" if cpu_offload else None, name=name)
        return prior

    # ---------------------------------------------------------------------------------------------- images
    def encode_images(self, x01: Tensor) -> Tensor:
        """[B,3,H,W] in [0,1] → model space [B,C,h,w], differentiable; resized to the prior's resolution."""
        x = x01.to(self.device)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        if self.vae is None:
            return x.float()
        # the posterior's mean: deterministic, and SD's posterior std is negligible
        z = self.checked("VAE encoder", "vae", lambda vae, dt: vae.encode(x.to(dt)).latent_dist.mean.float(), x)
        return ((z - self.shift_factor) * self.scaling_factor)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Model space → [B,3,R,R] in [0,1]."""
        if self.vae is not None:
            z = z.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
            z = self.checked("VAE decoder", "vae", lambda vae, dt: vae.decode(z.to(dt)).sample.float(), z)
        return ((z.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------------------------------- fp16 safety
    def checked(self, what: str, attr: str | None, call, inputs: Tensor, module=None) -> Tensor:
        """`call(module, dtype)` → float32 output, guarded against half-precision overflow.

        The module is `getattr(self, attr)` (or `module`). In float32 nothing is checked. In float16 / bfloat16 a
        non-finite output is named: with `fp32_fallback` (and a prior-owned module, `attr`) the same call is
        recomputed by a float32 copy of the module, made on the first overflow and kept; otherwise — or if float32
        is not finite either — `NonFiniteOutputError` says which module, dtype and whether its input was finite.
        """
        module = getattr(self, attr) if attr is not None else module
        dtype = next(module.parameters()).dtype
        out = call(module, dtype)
        if dtype == torch.float32 or bool(torch.isfinite(out).all()):
            return out
        bad = int((~torch.isfinite(out)).sum())
        where = f"the {what}'s {str(dtype).removeprefix('torch.')} output has {bad} non-finite values"
        if not bool(torch.isfinite(inputs).all()):
            raise NonFiniteOutputError(f"{where}: its input is not finite already (the renders or latents diverged)")
        if not self.fp32_fallback or attr is None:
            raise NonFiniteOutputError(f"{where} (a half-precision overflow); run with dtype float32 (--dtype float32)"
                                       " or bfloat16")
        full = self._fp32_modules.get(attr)
        if full is None:
            import copy
            import warnings

            warnings.warn(f"{where} (a half-precision overflow); recomputing it, and later overflows, with a "
                          f"float32 copy of the {what}", RuntimeWarning, stacklevel=2)
            full = self._fp32_modules[attr] = copy.deepcopy(module).float().requires_grad_(False).eval()
        self.fallbacks[what] = self.fallbacks.get(what, 0) + 1
        out = call(full, torch.float32)
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteOutputError(f"{where}, and the float32 fallback is not finite either")
        return out

    # ------------------------------------------------------------------------------------------------ text
    @torch.no_grad()
    def text_embedding(self, text: str) -> Tensor:
        """[1,L,D] last hidden state of the text encoder for one string, cached."""
        if text not in self._text_cache:
            ids = self.tokenizer(text, padding="max_length", max_length=self.max_length, truncation=True,
                                 return_tensors="pt").input_ids.to(self.text_device)
            hidden = self.text_encoder(ids)[0]
            self._text_cache[text] = hidden.to(self.device, self.dtype)
        return self._text_cache[text]

    def prompt_overflow(self, prompt: str, view_dependent: bool = True) -> str:
        """'' when `prompt` (with its longest view suffix when `view_dependent`) fits the text encoder's window of
        `max_length` tokens; else one line saying what the encoder never sees: the words from the first one that
        does not fit, or (the suffix comes last) the view tag."""
        suffix = max(VIEW_SUFFIXES.values(), key=len) if view_dependent else ""

        def n_tokens(text: str) -> int:
            return len(self.tokenizer(text, truncation=False, verbose=False).input_ids)

        total = n_tokens(prompt + suffix)
        if total <= self.max_length:
            return ""
        head = f"the prompt is {total} tokens{' with its view tag' if suffix else ''} but the text encoder reads " \
               f"{self.max_length}"
        words = prompt.split()
        if n_tokens(prompt) <= self.max_length:
            return f"{head}: the view tag ({suffix.strip(', ')!r} and the like) is cut off"
        fits = 0  # the longest prefix of words that fits
        while fits < len(words) and n_tokens(" ".join(words[:fits + 1])) <= self.max_length:
            fits += 1
        return f"{head}: from word {fits + 1} ({words[fits]!r}) on is cut off"

    def encode_text(self, prompt: str, negative_prompt: str = "", view_dependent: bool = True) -> TextEmbeddings:
        """Embeddings of `prompt` (per view tag when `view_dependent`) and of the negative / empty prompt."""
        views = {tag: self.text_embedding(prompt + suffix) for tag, suffix in VIEW_SUFFIXES.items()} \
            if view_dependent else {}
        return TextEmbeddings(prompt=prompt, plain=self.text_embedding(prompt),
                              uncond=self.text_embedding(negative_prompt), views=views,
                              null=self.text_embedding("") if negative_prompt else None)

    # --------------------------------------------------------------------------------------------- noise
    def _timesteps(self, t, batch: int) -> Tensor:
        t = torch.as_tensor(t, device=self.device)
        return (t.expand(batch) if t.ndim == 0 else t).long()

    def eps(self, z_t: Tensor, t, hidden: Tensor, unet=None) -> Tensor:
        """ε-prediction of `unet` (default: the prior's) for z_t [B,C,h,w] at t (int or [B]), in float32.

        Gradients flow only if the caller enables them (VSD's LoRA); v-predictions are converted to ε.
        """
        t = self._timesteps(t, z_t.shape[0])
        out = self.checked("UNet", None if unet is not None else "unet",
                           lambda m, dt: m(z_t.to(dt), t, encoder_hidden_states=hidden.to(dt)).sample.float(),
                           z_t, module=unet)
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * z_t.float()
        elif self.prediction_type != "epsilon":
            raise NotImplementedError(f"prediction_type {self.prediction_type!r} is not supported")
        return out

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t, emb: PromptEmbeddings, guidance_scale: float = 7.5
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """(ε_cfg, ε_cond, ε_uncond) with ε_cfg = ε_uncond + s·(ε_cond − ε_uncond); one UNet call on 2B.

        With Perp-Neg negatives in `emb` (K of them, weights w_k ≤ 0), one call on (2+K)·B and
        ε_cfg = ε_uncond + s·(Δ + Σ_k w_k·(Δ_k − (⟨Δ_k, Δ⟩/||Δ||²)·Δ)),  Δ = ε_cond − ε_uncond, Δ_k = ε_k − ε_uncond.
        """
        batch = z_t.shape[0]
        t = self._timesteps(t, batch)
        negatives = [] if emb.negatives is None else list(emb.negatives)
        parts = 2 + len(negatives)
        eps = self.eps(torch.cat([z_t] * parts), torch.cat([t] * parts), torch.cat([emb.uncond, emb.cond, *negatives]))
        eps_uncond, eps_cond, *eps_neg = eps.chunk(parts)
        delta = eps_cond - eps_uncond
        for eps_k, w_k in zip(eps_neg, [] if emb.negative_weights is None else emb.negative_weights):
            delta = delta + w_k.view(-1, 1, 1, 1) * perpendicular(eps_k - eps_uncond, eps_cond - eps_uncond)
        return eps_uncond + guidance_scale * delta, eps_cond, eps_uncond

    def add_noise(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε (t: [B] long)."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * z + (1 - a).sqrt() * noise

    # -------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, prompts: list[str], num_steps: int = 30, guidance_scale: float = 7.5, generator=None,
               negative_prompt: str = "", scheduler=None, eta: float | None = None) -> Tensor:
        """Images [B,3,R,R] in [0,1] by DDIM (default) or any diffusers scheduler class/instance with CFG.

        `scheduler=DPMSolverMultistepScheduler` gives DPM-Solver++ (its default algorithm) from this prior's config.
        `eta` is DDIM's stochasticity; `None` = 1 for a pixel-space prior (deterministic DDIM left visible noise with
        the embedded prior) and 0 for a latent one (the usual choice for Stable Diffusion).
        """
        from diffusers import DDIMScheduler

        if scheduler is None:
            scheduler = DDIMScheduler.from_config(self.scheduler.config)
        elif isinstance(scheduler, type):
            scheduler = scheduler.from_config(self.scheduler.config)
        eta = (0.0 if self.is_latent else 1.0) if eta is None else eta
        cond = torch.cat([self.text_embedding(p) for p in prompts])
        uncond = self.text_embedding(negative_prompt).expand_as(cond)
        hidden = torch.cat([uncond, cond])

        def cond_uncond(z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            inp = torch.cat([z, z])
            raw = self.checked("UNet", "unet", lambda m, dt: m(inp.to(dt), t, encoder_hidden_states=hidden.to(dt))
                               .sample.float(), inp)
            raw_uncond, raw_cond = raw.chunk(2)  # CFG is linear, so it holds for ε and v outputs alike
            return raw_cond, raw_uncond

        side = self.resolution // self.downsample
        shape = (len(prompts), self.latent_channels, side, side)
        gen_device = generator.device if generator is not None else self.device
        z = torch.randn(shape, generator=generator, device=gen_device).to(self.device) * scheduler.init_noise_sigma
        z = sample_with_cfg(cond_uncond, z, scheduler, num_steps, guidance_scale, generator=generator, eta=eta)
        return self.decode(z)


@torch.no_grad()
def sample_with_cfg(cond_uncond: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], noise: Tensor, scheduler,
                    num_steps: int, guidance_scale: float, generator: torch.Generator | None = None,
                    eta: float = 0.0) -> Tensor:
    """The sampling loop of every prior here (`DiffusionPrior.sample`, `toyworld.train_prior.sample`): `num_steps`
    of `scheduler` from `noise` [B,C,h,w] (already scaled by the scheduler's `init_noise_sigma`), each step on the
    classifier-free-guided output u + s·(c − u). `cond_uncond(x, t)` gives the model's (conditional,
    unconditional) outputs [B,C,h,w] for the scaled input x at timestep t. `eta` is DDIM's stochasticity (its
    noise drawn from `generator`); other schedulers ignore it. Returns the final sample [B,C,h,w], model space."""
    from diffusers import DDIMScheduler

    scheduler.set_timesteps(num_steps, device=noise.device)
    step_kwargs = dict(eta=eta, generator=generator) if isinstance(scheduler, DDIMScheduler) and eta > 0 else {}
    x = noise
    for t in scheduler.timesteps:
        cond, uncond = cond_uncond(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(uncond + guidance_scale * (cond - uncond), t, x, **step_kwargs).prev_sample
    return x


def _freeze(module, device, dtype):
    """Move to device (casting only when needed: diffusers warns on redundant casts), eval mode, no gradients."""
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype=dtype)
    return module.to(device).eval().requires_grad_(False)


def _quiet_loading():
    """Silence the libraries' per-file progress bars while loading; returns the function that restores them."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_on, t_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()

    def restore():
        if d_on:
            dlog.enable_progress_bar()
        if t_on:
            tlog.enable_progress_bar()

    return restore


def _has_subfolder(source: str, sub: str, kwargs: dict) -> bool:
    if Path(source).exists():
        return (Path(source) / sub).is_dir()
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(source, "config.json", subfolder=sub, **kwargs)
        return True
    except Exception:
        return False


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)
    except Exception:
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check so that an unreachable hub gives the clear message at once instead of retries."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


__all__ = ["DiffusionPrior", "EMBEDDED_FOLDERS", "NonFiniteOutputError", "PriorNotFoundError", "PromptEmbeddings",
           "TextEmbeddings", "VIEW_PROMPTS", "VIEW_SUFFIXES", "embedded_prior_path", "is_embedded", "perpendicular",
           "sample_with_cfg", "view_embeddings"]
