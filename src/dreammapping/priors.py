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

import torch
import torch.nn.functional as F
from torch import Tensor

VIEW_SUFFIXES: dict[str, str] = {
    "front": ", front view",
    "side": ", side view",
    "back": ", back view",
    "overhead": ", overhead view",
}
EMBEDDED = "embedded"


class PriorNotFoundError(RuntimeError):
    """The prior's weights cannot be loaded; the message is one line that says how to provide them."""


@dataclass
class PromptEmbeddings:
    """Text conditioning for one batch of views."""

    cond: Tensor  # [B,L,D] prompt (+ view suffix) per view
    uncond: Tensor  # [B,L,D] unconditional (empty) or negative prompt: the other side of CFG
    null: Tensor | None = None  # [B,L,D] the empty prompt ∅, when `uncond` is a negative prompt (else None)

    def __len__(self) -> int:
        return self.cond.shape[0]

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

    def for_views(self, tags: list[str] | tuple[str, ...] | int) -> PromptEmbeddings:
        """Embeddings for a batch of views (`tags` like cameras.view_tags, or just a batch size)."""
        if isinstance(tags, int):
            tags = [""] * tags
        cond = torch.cat([self.views.get(tag, self.plain) for tag in tags], dim=0)
        null = None if self.null is None else self.null.expand(len(tags), -1, -1)
        return PromptEmbeddings(cond=cond, uncond=self.uncond.expand(len(tags), -1, -1), null=null)


def embedded_prior_path() -> Path:
    """Folder of the prior shipped in the package (`dreammapping/assets/prior/`), whether or not it exists yet."""
    return Path(str(importlib.resources.files("dreammapping"))) / "assets" / "prior"


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
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
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
        if name == EMBEDDED:
            folder = embedded_prior_path()
            if not (folder / "unet").is_dir():
                raise PriorNotFoundError(
                    f"the embedded prior is not shipped in this install ({folder} has no unet/): train it with "
                    "`dreammapping train-prior`, or pass a Stable Diffusion folder / hub id instead."
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
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
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
        z = self.vae.encode(x.to(self.dtype)).latent_dist.mean
        return ((z.float() - self.shift_factor) * self.scaling_factor)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Model space → [B,3,R,R] in [0,1]."""
        if self.vae is not None:
            z = z.to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
            z = self.vae.decode(z).sample
        return ((z.float() + 1.0) / 2.0).clamp(0.0, 1.0)

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
        out = (unet or self.unet)(z_t.to(self.dtype), t, encoder_hidden_states=hidden.to(self.dtype)).sample.float()
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            out = a.sqrt() * out + (1 - a).sqrt() * z_t.float()
        elif self.prediction_type != "epsilon":
            raise NotImplementedError(f"prediction_type {self.prediction_type!r} is not supported")
        return out

    @torch.no_grad()
    def predict_noise(self, z_t: Tensor, t, emb: PromptEmbeddings, guidance_scale: float = 7.5
                      ) -> tuple[Tensor, Tensor, Tensor]:
        """(ε_cfg, ε_cond, ε_uncond) with ε_cfg = ε_uncond + s·(ε_cond − ε_uncond); one UNet call on 2B."""
        batch = z_t.shape[0]
        t = self._timesteps(t, batch)
        eps = self.eps(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([emb.uncond, emb.cond]))
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond), eps_cond, eps_uncond

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
        scheduler.set_timesteps(num_steps, device=self.device)
        step_kwargs = {}
        if isinstance(scheduler, DDIMScheduler):
            eta = (0.0 if self.is_latent else 1.0) if eta is None else eta
            step_kwargs = dict(eta=eta, generator=generator) if eta > 0 else {}
        cond = torch.cat([self.text_embedding(p) for p in prompts])
        uncond = self.text_embedding(negative_prompt).expand_as(cond)
        hidden = torch.cat([uncond, cond])
        side = self.resolution // self.downsample
        shape = (len(prompts), self.latent_channels, side, side)
        gen_device = generator.device if generator is not None else self.device
        z = torch.randn(shape, generator=generator, device=gen_device).to(self.device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([z, z]), t)
            raw = self.unet(inp.to(self.dtype), t, encoder_hidden_states=hidden).sample.float()
            raw_uncond, raw_cond = raw.chunk(2)  # CFG is linear, so it holds for ε and v outputs alike
            z = scheduler.step(raw_uncond + guidance_scale * (raw_cond - raw_uncond), t, z, **step_kwargs).prev_sample
        return self.decode(z)


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


__all__ = ["DiffusionPrior", "PriorNotFoundError", "PromptEmbeddings", "TextEmbeddings", "VIEW_SUFFIXES",
           "embedded_prior_path"]
