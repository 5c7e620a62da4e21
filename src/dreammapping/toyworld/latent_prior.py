"""The embedded prior v2's components, in Stable Diffusion's own format: build, measure, save, load.

One folder that `StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)` loads, and that
`priors.DiffusionPrior.from_pretrained(folder)` loads through the same code as SD 2.1 (VAE encoder in the loop,
latents × `scaling_factor`)::

    vae/           AutoencoderKL: 64² RGB ↔ 16²×4 latents (three blocks: f = 4); scaling_factor = 1 / std of the
                   trained encoder's latents (SD's convention: scaled latents have unit variance)
    unet/          UNet2DConditionModel on 16²×4 latents, ε-prediction
    text_encoder/  word-level CLIPTextModel (vocabulary from the grammar, `train_prior.build_vocabulary`)
    tokenizer/     PreTrainedTokenizerFast, padded to model_max_length like CLIP's
    scheduler/     DDPMScheduler, 1000 steps, no x0 clipping (latents are not bounded)
    model_index.json  StableDiffusionPipeline, safety_checker / feature_extractor null

The training (`toyworld.train_latent`) fills these; this module owns only their shapes and files.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from dreammapping.files import atomic_dir, atomic_write_text
from dreammapping.toyworld.train_prior import build_tokenizer, make_scheduler

# UNet presets on 16²×4 latents. Parameters (measured by `count_parameters`, text width 128): "small" 64/128/256,
# two layers per block, cross-attention at 16² and 8² (the issue's ~16.5M class); "base" 96/192/384; "tiny" for
# tests. Their CPU cost per step is in docs/interfaces.md ("train-prior v2").
UNET_PRESETS: dict[str, dict] = {
    "small": dict(block_out_channels=(64, 128, 256), layers_per_block=2, attention_head_dim=8, norm_num_groups=32,
                  text_width=128, text_layers=3, text_heads=4),
    "base": dict(block_out_channels=(96, 192, 384), layers_per_block=2, attention_head_dim=8, norm_num_groups=32,
                 text_width=128, text_layers=3, text_heads=4),
    "tiny": dict(block_out_channels=(16, 32, 32), layers_per_block=1, attention_head_dim=2, norm_num_groups=8,
                 text_width=32, text_layers=1, text_heads=2),
}
# VAE presets: three encoder / decoder blocks (two down-samplings: 64² → 16²), 4 latent channels. Forward cost per
# 64² image (torch's FlopCounterMode): "small" 32/64/128 2.8 GFLOP (2.7M parameters), "base" 64/128/128 6.7 GFLOP
# (3.8M) — the full-resolution convolutions dominate, so the first width sets the price.
VAE_PRESETS: dict[str, dict] = {
    "small": dict(block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=32),
    "base": dict(block_out_channels=(64, 128, 128), layers_per_block=1, norm_num_groups=32),
    "tiny": dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4),
}
LATENT_CHANNELS = 4
PIPELINE_CLASS = "StableDiffusionPipeline"


class LatentPriorModels(NamedTuple):
    vae: torch.nn.Module  # AutoencoderKL
    unet: torch.nn.Module  # UNet2DConditionModel, in_channels = out_channels = 4
    text_encoder: torch.nn.Module  # CLIPTextModel
    tokenizer: object  # PreTrainedTokenizerFast
    scheduler: object  # DDPMScheduler


@dataclass(frozen=True)
class ModelSizes:
    """Parameter counts of the v2 components."""

    vae: int
    unet: int
    text_encoder: int

    def describe(self) -> str:
        return (f"VAE {self.vae / 1e6:.2f}M, UNet {self.unet / 1e6:.2f}M, text encoder {self.text_encoder / 1e6:.2f}M "
                "parameters")


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_vae(preset: str = "small", resolution: int = 64, scaling_factor: float = 1.0):
    """An `AutoencoderKL` with three blocks (f = 4): [B,3,R,R] in [−1,1] ↔ [B,4,R/4,R/4]."""
    from diffusers import AutoencoderKL

    if preset not in VAE_PRESETS:
        raise ValueError(f"vae preset must be one of {list(VAE_PRESETS)}, not {preset!r}")
    p = VAE_PRESETS[preset]
    n = len(p["block_out_channels"])
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=tuple(p["block_out_channels"]),
        layers_per_block=p["layers_per_block"], norm_num_groups=p["norm_num_groups"], sample_size=resolution,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        scaling_factor=scaling_factor)


def vae_downsample(vae) -> int:
    """The VAE's spatial factor: 2^(blocks − 1), as diffusers' pipelines compute it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def build_unet(preset: str = "small", latent_size: int = 16):
    """`UNet2DConditionModel` on [B,4,latent_size,latent_size] latents, cross-attention on the text encoder's width."""
    from diffusers import UNet2DConditionModel

    if preset not in UNET_PRESETS:
        raise ValueError(f"unet preset must be one of {list(UNET_PRESETS)}, not {preset!r}")
    p = UNET_PRESETS[preset]
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=tuple(p["block_out_channels"]), layers_per_block=p["layers_per_block"],
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=p["text_width"], attention_head_dim=p["attention_head_dim"],
        norm_num_groups=p["norm_num_groups"])


def build_text_encoder(preset: str, vocab_size: int, max_length: int = 24):
    """The word-level `CLIPTextModel` sized by the UNet preset (its width is the UNet's cross-attention width)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    p = UNET_PRESETS[preset]
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=p["text_width"], intermediate_size=4 * p["text_width"],
        projection_dim=p["text_width"], num_hidden_layers=p["text_layers"], num_attention_heads=p["text_heads"],
        max_position_embeddings=max_length, hidden_act="quick_gelu", pad_token_id=0, bos_token_id=2, eos_token_id=3))


def latent_scheduler(beta_schedule: str = "linear"):
    """DDPM, 1000 steps, ε-prediction; unlike the pixel prior's, no clipping of the x0 estimate (latents are not
    confined to [−1, 1])."""
    sched = make_scheduler(beta_schedule)
    sched.register_to_config(clip_sample=False, steps_offset=1)  # 1: what SD pipelines expect (trailing spacing
    # ignores it)
    return sched


def build_latent_models(unet_preset: str, vae_preset: str, vocabulary: Sequence[str], resolution: int = 64,
                        beta_schedule: str = "linear", max_length: int = 24) -> LatentPriorModels:
    vae = build_vae(vae_preset, resolution)
    latent = resolution // vae_downsample(vae)
    return LatentPriorModels(vae, build_unet(unet_preset, latent),
                             build_text_encoder(unet_preset, len(vocabulary), max_length),
                             build_tokenizer(vocabulary, max_length), latent_scheduler(beta_schedule))


def sizes(models: LatentPriorModels) -> ModelSizes:
    return ModelSizes(count_parameters(models.vae), count_parameters(models.unet), count_parameters(models.text_encoder))


@torch.no_grad()
def latent_scaling_factor(latents: Tensor) -> float:
    """1 / std of unscaled latents [N,4,h,w] (all entries): SD's `scaling_factor`, so scaled latents have unit
    variance as the noise schedule assumes."""
    std = latents.float().std()
    if not torch.isfinite(std) or std <= 0:
        raise ValueError(f"cannot set a scaling factor from latents with std {float(std)}")
    return float(1.0 / std)


def _half(module: torch.nn.Module) -> torch.nn.Module:
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # "modules that should be kept in float32: []" is noise here
    try:
        return copy.deepcopy(module).cpu().to(torch.float16)
    finally:
        dlogging.set_verbosity(level)


def save_vae(vae, folder: str | Path, fp16: bool = True) -> Path:
    """Write `folder` (a diffusers `AutoencoderKL` folder) atomically: the old one stays whole until the new is."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        (_half(vae) if fp16 else copy.deepcopy(vae).cpu().float()).save_pretrained(tmp, safe_serialization=True)
    return folder


def save_latent_folder(models: LatentPriorModels, folder: str | Path, fp16: bool = True, write_vae: bool = True
                       ) -> Path:
    """The Stable Diffusion folder: UNet and VAE in fp16 (when `fp16`), text encoder fp32, model_index.json last.

    Each component folder is written beside its old one and swapped in whole; `write_vae=False` keeps the `vae/`
    already there (the training saves it once, before encoding the shards with it)."""
    import diffusers

    from dreammapping.toyworld.train_prior import save_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder / "unet") as tmp:
        (_half(models.unet) if fp16 else copy.deepcopy(models.unet).cpu().float()).save_pretrained(
            tmp, safe_serialization=True)
    if write_vae:
        save_vae(models.vae, folder / "vae", fp16)
    with atomic_dir(folder / "text_encoder") as tmp:
        copy.deepcopy(models.text_encoder).cpu().float().save_pretrained(tmp, safe_serialization=True)
    with atomic_dir(folder / "tokenizer") as tmp:
        save_tokenizer(models.tokenizer, tmp)
    with atomic_dir(folder / "scheduler") as tmp:
        models.scheduler.save_pretrained(tmp)
    index = {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    atomic_write_text(folder / "model_index.json", json.dumps(index, indent=2) + "\n")
    return folder


def load_latent_folder(folder: str | Path, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> LatentPriorModels:
    """Load a v2 folder component by component, through the same calls as any Stable Diffusion checkpoint."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    folder = str(folder)
    return LatentPriorModels(
        AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype).to(device).eval(),
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).to(device).eval(),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype).to(device).eval(),
        AutoTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        DDPMScheduler.from_pretrained(folder, subfolder="scheduler"))


__all__ = ["LATENT_CHANNELS", "LatentPriorModels", "ModelSizes", "UNET_PRESETS", "VAE_PRESETS", "build_latent_models",
           "build_text_encoder", "build_unet", "build_vae", "count_parameters", "latent_scaling_factor",
           "latent_scheduler", "load_latent_folder", "save_latent_folder", "save_vae", "sizes", "vae_downsample"]
