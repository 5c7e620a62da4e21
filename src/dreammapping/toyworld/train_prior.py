"""Train the embedded toy-world prior: a small pixel-space text-to-image diffusion model in diffusers format.

The model folder loads through the same code as any Stable Diffusion checkpoint::

    UNet2DConditionModel.from_pretrained(folder, subfolder="unet")      # pixel space, 32², ε-prediction
    CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")     # small, trained jointly with the UNet
    AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")        # word level, padded to model_max_length
    DDPMScheduler.from_pretrained(folder, subfolder="scheduler")        # 1000 steps, linear betas
    model_index.json                                                    # no vae/ → pixel space

Training data comes from `toyworld.dataset.sample_batch` on the training device, one fresh batch per step (nothing
on disk). Captions are augmented on the fly: the view suffix (", front view") is dropped with probability
`view_dropout` so that plain prompts are in distribution too, and the whole caption is replaced by "" with
probability `caption_dropout` so that classifier-free guidance works.

Choices (see MODEL_CARD.md of a run for the numbers):
- linear betas 1e-4…0.02 (DDPM's pixel-space schedule): its terminal SNR is ~4e-5, whereas SD's scaled_linear keeps
  ~0.5% of the signal at t=999 (√ᾱ≈0.07), which a white-background pixel model turns into a tinted mean;
- `clip_sample=True` and `timestep_spacing="trailing"` in the scheduler config: samplers built with
  `DDIMScheduler.from_config` clip the x0 estimate to the data range (keeps high-CFG samples in range) and start at
  t=999 (pure noise);
- offset noise (0.05) and min-SNR-γ loss weighting (γ=5) as options, on by default;
- EMA of the weights (with the usual warm-up of the decay); the EMA weights are what gets saved.

Run `dreammapping train-prior --help` or `python -m dreammapping.toyworld.train_prior --help`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Sequence

import torch
import tyro
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from dreammapping.cameras import VIEW_TAGS
from dreammapping.devices import check_device, resolve_device
from dreammapping.errors import EXIT_OUTPUT, GenerateError
from dreammapping.files import (
    atomic_dir,
    atomic_path,
    atomic_write_text,
    check_writable_folder,
    describe_write_error,
    remove_stale_temporaries,
)
from dreammapping.priors import sample_with_cfg
from dreammapping.toyworld import grammar
from dreammapping.toyworld.classifier import match_pair
from dreammapping.toyworld.dataset import EVAL_PROMPTS, sample_batch
from dreammapping.toyworld.grammar import with_article
from dreammapping.validation import check_ranges

MODEL_CLASS_NAME = "DreamMappingToyPrior"
CHECKPOINT_NAME = "checkpoint.safetensors"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PUNCTUATION = (",", ".", "-", "'", ";", ":", "!", "?", "(", ")", "&", "/")
# Words every vocabulary holds besides what the grammar knows: view tags, caption glue, common filler.
BASE_WORDS = (
    "a", "an", "the", "and", "of", "on", "top", "next", "to", "in", *VIEW_TAGS, "view",
    "left", "right", "behind", "above", "below", "under", "beside", "with", "small", "large", "big", "tiny",
)
VIEW_SUFFIX = re.compile(rf"\s*,\s*({'|'.join(VIEW_TAGS)})\s+view\s*$", re.IGNORECASE)

# Architecture presets. "small" is the shipped model: 6.2M-parameter UNet (fp16 12.4 MB; blocks 32/64/128, two layers
# per block, cross-attention at 16² and 8²) + 0.6M-parameter 3-layer text encoder of width 128. On one CPU thread its
# forward ×8 costs ~1.25× that of a 4.2M (32/64/128, one layer per block) model first planned, whereas a 64/128/128
# one-layer variant (6.7M) cost 2.2×. "tiny" is for tests.
PRESETS: dict[str, dict] = {
    "small": dict(block_out_channels=(32, 64, 128), layers_per_block=2, attention_head_dim=4, norm_num_groups=16,
                  text_width=128, text_layers=3, text_heads=4),
    "tiny": dict(block_out_channels=(16, 32, 32), layers_per_block=1, attention_head_dim=2, norm_num_groups=8,
                 text_width=32, text_layers=1, text_heads=2),
}


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and vocabulary


def grammar_words(known: frozenset[str] | None = None) -> list[str]:
    """Every word the toy-world grammar knows (`grammar.KNOWN_WORDS`, or `known`), sorted."""
    return sorted({w.lower() for w in (grammar.KNOWN_WORDS if known is None else known)})


def _split_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+|[^a-z0-9\s]", text.lower()) if w]


def build_vocabulary(extra_words: Sequence[str] = (), captions: Sequence[str] = (),
                     known: frozenset[str] | None = None) -> list[str]:
    """Special tokens, punctuation, the base words, the grammar's words (`known`: default every word of the current
    world), `extra_words` and the words of `captions`."""
    words = set(BASE_WORDS) | set(grammar_words(known)) | {w.lower() for w in extra_words}
    for c in captions:
        words.update(_split_words(c))
    words -= set(PUNCTUATION) | set(SPECIAL_TOKENS)
    return list(SPECIAL_TOKENS) + list(PUNCTUATION) + sorted(words)


def build_tokenizer(vocabulary: Sequence[str], max_length: int = 24):
    """A word-level `PreTrainedTokenizerFast`: lowercase, split on whitespace and punctuation, `[BOS] … [EOS]`,
    unknown words → `[UNK]`; callers pad to `model_max_length` as with CLIP."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary)}
    if [vocab.get(s) for s in SPECIAL_TOKENS] != [0, 1, 2, 3]:
        raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", model_max_length=max_length)


def tokenize(tokenizer, prompts: Sequence[str]) -> Tensor:
    """Stable Diffusion's way: pad to `model_max_length`, truncate, no attention mask (the text model is causal)."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


# ----------------------------------------------------------------------------------------------------------------
# Models


class PriorModels(NamedTuple):
    unet: "torch.nn.Module"
    text_encoder: "torch.nn.Module"
    tokenizer: object
    scheduler: object  # DDPMScheduler


def make_scheduler(beta_schedule: str = "linear"):
    from diffusers import DDPMScheduler

    if beta_schedule == "scaled_linear":  # Stable Diffusion's betas
        start, end = 0.00085, 0.012
    elif beta_schedule == "linear":  # DDPM's pixel-space betas
        start, end = 1e-4, 0.02
    else:
        raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', not {beta_schedule!r}")
    return DDPMScheduler(num_train_timesteps=1000, beta_start=start, beta_end=end, beta_schedule=beta_schedule,
                         prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0,
                         timestep_spacing="trailing", steps_offset=0, variance_type="fixed_small")


def build_models(preset: str, vocabulary: Sequence[str], resolution: int = 32, beta_schedule: str = "linear",
                 max_length: int = 24) -> PriorModels:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, not {preset!r}")
    p = PRESETS[preset]
    tokenizer = build_tokenizer(vocabulary, max_length)
    text_config = CLIPTextConfig(
        vocab_size=len(vocabulary), hidden_size=p["text_width"], intermediate_size=4 * p["text_width"],
        projection_dim=p["text_width"], num_hidden_layers=p["text_layers"], num_attention_heads=p["text_heads"],
        max_position_embeddings=max_length, hidden_act="quick_gelu", pad_token_id=0, bos_token_id=2, eos_token_id=3)
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3,
        block_out_channels=tuple(p["block_out_channels"]), layers_per_block=p["layers_per_block"],
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=p["text_width"], attention_head_dim=p["attention_head_dim"],
        norm_num_groups=p["norm_num_groups"])
    return PriorModels(unet, text_encoder, tokenizer, make_scheduler(beta_schedule))


def save_tokenizer(tokenizer, folder: Path) -> None:
    """`save_pretrained` into `folder`, with a tokenizer class that loads on transformers 4.x and 5.x alike."""
    tokenizer.save_pretrained(folder)
    cfg_path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def save_model_folder(models: PriorModels, folder: str | Path, unet_fp16: bool = True) -> Path:
    """Write the diffusers folder (UNet in fp16 when `unet_fp16`, text encoder fp32)."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from diffusers.utils import logging as dlogging

    unet = copy.deepcopy(models.unet).cpu()
    if unet_fp16:
        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()  # "modules that should be kept in float32: []" is noise here
        unet = unet.to(torch.float16)
        dlogging.set_verbosity(level)
    # each component folder is written beside its old one and swapped in whole, model_index.json last
    with atomic_dir(folder / "unet") as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)
    with atomic_dir(folder / "text_encoder") as tmp:
        copy.deepcopy(models.text_encoder).cpu().float().save_pretrained(tmp, safe_serialization=True)
    with atomic_dir(folder / "tokenizer") as tmp:
        save_tokenizer(models.tokenizer, tmp)
    with atomic_dir(folder / "scheduler") as tmp:
        models.scheduler.save_pretrained(tmp)
    index = {
        "_class_name": MODEL_CLASS_NAME,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": [None, None],
    }
    atomic_write_text(folder / "model_index.json", json.dumps(index, indent=2) + "\n")
    return folder


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> PriorModels:
    """Load through the same calls as any Stable Diffusion checkpoint."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    folder = str(folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype).to(device).eval()
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    return PriorModels(unet, text_encoder, tokenizer, scheduler)


# ----------------------------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def sample(models: PriorModels | str | Path, prompts: Sequence[str], steps: int = 30, guidance_scale: float = 2.0,
           generator: torch.Generator | None = None, device: str | torch.device | None = None,
           batch_size: int = 512, negative_prompt: str = "", eta: float = 1.0) -> Tensor:
    """DDIM (`DDIMScheduler.from_config` of the saved scheduler) with classifier-free guidance, by the loop every
    prior here samples with (`priors.sample_with_cfg`).

    `eta=1` (the default) is the stochastic, DDPM-like DDIM: with the shipped prior it gave clean white backgrounds
    where deterministic DDIM (`eta=0`) left visible noise (background error 0.041 vs 0.176, 16 samples, CFG 3).

    Returns `[len(prompts), 3, R, R]` in [0, 1] on CPU. Initial noise is drawn on CPU from `generator`, so a seed gives
    the same images on any device (up to kernel differences)."""
    from diffusers import DDIMScheduler

    if isinstance(models, (str, Path)):
        models = load_model_folder(models, device or "cpu")
    unet, text_encoder, tokenizer = models.unet, models.text_encoder, models.tokenizer
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    scheduler = DDIMScheduler.from_config(models.scheduler.config)
    res = unet.config.sample_size
    prompts = list(prompts)
    was_training = unet.training, text_encoder.training
    unet.eval()
    text_encoder.eval()
    out = []
    uncond = text_encoder(tokenize(tokenizer, [negative_prompt]).to(device))[0].to(dtype)
    x_all = torch.randn(len(prompts), 3, res, res, generator=generator, dtype=torch.float32)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        cond = text_encoder(tokenize(tokenizer, chunk).to(device))[0].to(dtype)
        emb = torch.cat([cond, uncond.expand(len(chunk), -1, -1)])

        def cond_uncond(x: Tensor, t: Tensor, emb: Tensor = emb) -> tuple[Tensor, Tensor]:
            return unet(torch.cat([x, x]).to(dtype), t, encoder_hidden_states=emb).sample.float().chunk(2)

        x = sample_with_cfg(cond_uncond, x_all[start:start + len(chunk)].to(device), scheduler, steps,
                            guidance_scale, generator=generator, eta=eta)
        out.append(((x.clamp(-1, 1) + 1) / 2).float().cpu())
    unet.train(was_training[0])
    text_encoder.train(was_training[1])
    return torch.cat(out)


def save_grid(images: Tensor, path: str | Path, nrow: int, scale: int = 2) -> None:
    """Save `[N,3,H,W]` in [0,1] as a PNG grid with `nrow` images per row (nearest upscaling by `scale`)."""
    n, _, h, w = images.shape
    rows = math.ceil(n / nrow)
    pad = 2
    grid = torch.ones(3, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[i]
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:  # the temporary ends in .tmp: name the format
        img.save(tmp, format="PNG")


def default_sample_prompts() -> list[str]:
    """One prompt per shape (cycling colours), the held-out pairs and two two-object scenes."""
    shapes, colors, held = list(grammar.SHAPES), list(grammar.COLORS), list(grammar.HELD_OUT)
    prompts = [with_article(f"{colors[i % len(colors)]} {s}") for i, s in enumerate(shapes)]
    prompts += [with_article(f"{c} {s}") for c, s in held[:4]]
    if len(shapes) >= 2 and len(colors) >= 2:
        prompts += [f"{with_article(f'{colors[0]} {shapes[0]}')} on top of {with_article(f'{colors[1]} {shapes[1]}')}",
                    f"{with_article(f'{colors[2 % len(colors)]} {shapes[2 % len(shapes)]}')} next to "
                    f"{with_article(f'{colors[3 % len(colors)]} {shapes[3 % len(shapes)]}')}"]
    return prompts


# ----------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainPriorConfig:
    """Train the embedded toy-world prior v1 (pixel-space UNet2DConditionModel + small CLIPTextModel); `--kind latent`
    (first) trains prior v2 in Stable Diffusion's format instead (see `--kind latent --help`)."""

    out: str = "runs/prior"
    """Output folder: the diffusers model folder (EMA weights), MODEL_CARD.md, samples.png and checkpoint.safetensors."""
    steps: int = 6000
    """Optimiser steps (the run may stop earlier at `max_minutes`)."""
    batch_size: int = 256
    lr: float = 4e-4
    """Peak learning rate (AdamW), reached after `warmup_steps`, then cosine decay to `lr * min_lr_ratio`."""
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Clip the global gradient norm (0 = off)."""
    caption_dropout: float = 0.15
    """Probability of training on the empty caption (the unconditional branch of classifier-free guidance)."""
    view_dropout: float = 0.3
    """Probability of removing the ", <tag> view" suffix, so plain prompts are in distribution too."""
    ema_decay: float = 0.999
    offset_noise: float = 0.05
    """Std of a per-image, per-channel constant added to the noise (0 = off)."""
    min_snr_gamma: float = 5.0
    """Min-SNR-γ loss weighting min(SNR, γ)/SNR for ε-prediction (0 = plain MSE)."""
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    preset: Literal["small", "tiny"] = "small"
    resolution: int = 32
    max_length: int = 24
    """Tokenizer / text encoder length."""
    seed: int = 0
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", "cuda:1", ..."""
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """"auto" = bf16 autocast on CUDA, fp32 on CPU."""
    compile: bool = False
    """torch.compile the UNet (CUDA only; compiles for ~1 min)."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0 = only at the end)."""
    sample_every: int = 0
    """Steps between sample grids samples_<step>.png (0 = only the final samples.png)."""
    log_every: int = 25
    max_minutes: float = 0.0
    """Wall-clock budget for the training loop (0 = none). With a budget the cosine schedule follows
    max(step/steps, time/budget), and the run stops cleanly and saves when the budget is spent."""
    stop_after: int = 0
    """Stop (checkpoint and save) after this many steps in this invocation, schedule unchanged (0 = no limit)."""
    resume: bool = False
    """Continue from <out>/checkpoint.safetensors if it exists."""
    init_from: str = ""
    """Start from the weights of a saved prior folder (e.g. the shipped one) instead of random weights: continued
    training with a fresh optimiser. Its vocabulary is kept; the architecture must match `preset`."""
    sample_steps: int = 30
    sample_guidance: float = 2.0
    samples_per_prompt: int = 8
    """Samples per prompt in samples.png (0 = no sample grid)."""
    threads: int = 0
    """torch CPU threads (0 = leave as is)."""


def min_snr_weights(alphas_cumprod: Tensor, gamma: float) -> Tensor:
    """[T] loss weight per timestep: min(SNR_t, γ) / SNR_t for ε-prediction (Hang et al. 2023); ones when γ ≤ 0."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return (snr.clamp(max=gamma) / snr) if gamma > 0 else torch.ones_like(snr)


def denoising_loss(unet, text_encoder, x0: Tensor, ids: Tensor, noise_gen: torch.Generator, sqrt_ac: Tensor,
                   sqrt_1mac: Tensor, loss_w: Tensor, offset_noise: float = 0.0, amp: bool = False
                   ) -> tuple[Tensor, Tensor]:
    """The prior's training loss on one batch: ε-prediction MSE, min-SNR weighted.

    x0 [B,C,R,R] in [-1,1], ids [B,L] token ids. Draws, in this order from `noise_gen`: ε ~ N(0, I) (plus a
    per-image, per-channel constant of std `offset_noise` when > 0), then t ~ U{0..T−1}. Returns (the weighted
    loss to back-propagate, the unweighted per-sample MSE [B] that the logs report)."""
    b, device = x0.shape[0], x0.device
    noise = torch.randn(x0.shape, generator=noise_gen, device=device)
    if offset_noise > 0:
        noise = noise + offset_noise * torch.randn(b, x0.shape[1], 1, 1, generator=noise_gen, device=device)
    t = torch.randint(0, len(sqrt_ac), (b,), generator=noise_gen, device=device)
    x_t = sqrt_ac[t].view(b, 1, 1, 1) * x0 + sqrt_1mac[t].view(b, 1, 1, 1) * noise
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        emb = text_encoder(ids)[0]
        pred = unet(x_t, t, encoder_hidden_states=emb).sample
    per = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
    return (per * loss_w[t]).mean(), per


def _lr_at(cfg: TrainPriorConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def augment_captions(captions: Sequence[str], generator: torch.Generator, caption_dropout: float,
                     view_dropout: float) -> list[str]:
    """Drop the view suffix with probability `view_dropout`, then the whole caption with `caption_dropout`."""
    u = torch.rand(len(captions), 2, generator=generator)
    out = []
    for c, (a, b) in zip(captions, u.tolist()):
        if a < view_dropout:
            c = VIEW_SUFFIX.sub("", c)
        out.append("" if b < caption_dropout else c)
    return out


class _TokenCache:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, Tensor] = {}

    def __call__(self, captions: Sequence[str]) -> Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            for c, ids in zip(missing, tokenize(self.tokenizer, missing)):
                self.cache[c] = ids
        return torch.stack([self.cache[c] for c in captions])


def _data_generator(device: torch.device, seed: int) -> torch.Generator:
    # sample_batch draws every random number on the CPU (same seed → same batch on any device), renders on `device`.
    return torch.Generator().manual_seed(seed)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous().reshape(-1) if v.dim() == 0 else \
                    v.detach().cpu().contiguous()
                if v.dim() == 0:
                    scalars[f"{idx}.{k}"] = True
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalar_keys": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, k = name.split(".", 2)
        if meta["scalar_keys"].get(f"{idx}.{k}") is True:
            v = v.reshape(())
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalar_keys"].items():
        if v is not True:
            idx, k = key.split(".", 1)
            state.setdefault(int(idx), {})[k] = v
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: Path, tensors: dict[str, Tensor], meta: dict) -> None:
    """One safetensors file (weights, EMA, optimiser, RNG states) with the json state in its metadata; written to a
    temporary file and renamed, so a checkpoint on disk is always whole."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"dreammapping": json.dumps(meta)})


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["dreammapping"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    return tensors, meta


@dataclass
class TrainState:
    """What a training run carries from step to step, and what its checkpoint saves and restores."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    named: list[str]  # "unet.<name>" / "text.<name>" of each parameter, the checkpoint's keys
    params: list[Tensor]  # the UNet's parameters, then the text encoder's
    ema: list[Tensor]  # float32 EMA of `params`
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator  # the training batches (CPU: the same batches on any device)
    noise_gen: torch.Generator  # ε and t of the loss (on the training device)
    cap_gen: torch.Generator  # caption and view-suffix dropout
    step: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    loss_history: list = dataclasses.field(default_factory=list)  # [[step, mean loss over the log interval], …]


def _progress(cfg: TrainPriorConfig, state: TrainState) -> float:
    """How far along the schedule is: by steps, or by time when `max_minutes` runs out first."""
    p = state.step / max(cfg.steps, 1)
    budget = cfg.max_minutes * 60.0
    return max(p, state.train_seconds / budget) if budget > 0 else p


def _save_state(path: Path, cfg: TrainPriorConfig, state: TrainState, vocabulary: list[str]) -> None:
    tensors = {n: p for n, p in zip(state.named, state.params)}
    tensors.update({"ema." + n: e for n, e in zip(state.named, state.ema)})
    opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
    tensors.update(opt_tensors)
    tensors.update({"rng.data": state.data_gen.get_state(), "rng.noise": state.noise_gen.get_state(),
                    "rng.captions": state.cap_gen.get_state(), "rng.torch": torch.get_rng_state()})
    save_checkpoint(path, tensors, {
        "step": state.step, "train_seconds": state.train_seconds, "samples_seen": state.samples_seen,
        "loss_history": state.loss_history, "config": dataclasses.asdict(cfg), "vocabulary": vocabulary,
        "optimizer": opt_meta})


def _restore_state(state: TrainState, tensors: dict[str, Tensor], meta: dict) -> None:
    """Weights, EMA, optimiser, the four random streams (torch's global one included) and the counters."""
    with torch.no_grad():
        for n, p, e in zip(state.named, state.params, state.ema):
            p.copy_(tensors[n])
            e.copy_(tensors["ema." + n])
    state.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    state.data_gen.set_state(tensors["rng.data"])
    state.noise_gen.set_state(tensors["rng.noise"])
    state.cap_gen.set_state(tensors["rng.captions"])
    torch.set_rng_state(tensors["rng.torch"])
    state.step, state.train_seconds = meta["step"], meta["train_seconds"]
    state.samples_seen, state.loss_history = meta["samples_seen"], meta["loss_history"]


def _ema_models(state: TrainState, models: PriorModels) -> PriorModels:
    """Copies of the UNet and text encoder holding the EMA weights (what gets saved and sampled)."""
    unet, text_encoder = copy.deepcopy(state.unet), copy.deepcopy(state.text_encoder)
    with torch.no_grad():
        for p, e in zip(list(unet.parameters()) + list(text_encoder.parameters()), state.ema):
            p.copy_(e)
    return PriorModels(unet.eval(), text_encoder.eval(), models.tokenizer, models.scheduler)


def _save_samples(cfg: TrainPriorConfig, state: TrainState, models: PriorModels, path: Path,
                  device: torch.device) -> None:
    """`samples_per_prompt` EMA samples of each `default_sample_prompts()` as a PNG grid (fixed seed)."""
    n = cfg.samples_per_prompt
    if n <= 0:
        return
    prompts = default_sample_prompts()
    imgs = sample(_ema_models(state, models), [p for p in prompts for _ in range(n)], steps=cfg.sample_steps,
                  guidance_scale=cfg.sample_guidance, generator=torch.Generator().manual_seed(1234), device=device)
    save_grid(imgs, path, nrow=n)


def train(config: TrainPriorConfig, sample_fn: Callable | None = None, command: str | None = None) -> dict:
    """Train (or resume) and write the EMA model folder, MODEL_CARD.md and samples.png into `config.out`.

    `sample_fn(batch_size, resolution=, generator=, device=)` defaults to `toyworld.dataset.sample_batch`.
    Returns a summary dict (steps, samples_seen, wall_s, final_loss, ...)."""
    cfg = config
    sample_fn = sample_batch if sample_fn is None else sample_fn

    # 1. Device, precision and the output folder
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # a SIGKILL during an atomic write leaves its temporary behind
    ckpt_path = out / CHECKPOINT_NAME
    command = command or " ".join(shlex.quote(a) for a in sys.argv)

    # 2. Vocabulary: the resumed checkpoint's, the continued prior's, or the grammar's words + probe captions' words
    resume = cfg.resume and ckpt_path.exists()
    ckpt_tensors, meta = (load_checkpoint(ckpt_path) if resume else ({}, {}))
    init = None
    if resume:
        saved = meta["config"]
        for key in ("preset", "resolution", "beta_schedule", "max_length"):
            if saved[key] != getattr(cfg, key):
                raise ValueError(f"--resume: checkpoint has {key}={saved[key]!r}, config says {getattr(cfg, key)!r}")
        vocabulary = meta["vocabulary"]
    elif cfg.init_from:
        init = load_model_folder(cfg.init_from)
        vocab = init.tokenizer.get_vocab()
        vocabulary = sorted(vocab, key=vocab.get)
    else:
        probe_gen = _data_generator(device, cfg.seed + 7919)
        probe = []
        for _ in range(2):
            _, caps, _ = sample_fn(min(64, cfg.batch_size), resolution=cfg.resolution, generator=probe_gen,
                                   device=device)
            probe += list(caps)
        # world v1's words: the pixel prior trains on world v1, and its vocabulary (so its weights) stays as it was
        vocabulary = build_vocabulary(captions=probe, known=grammar.V1_KNOWN_WORDS)

    # 3. Models (seeded; the continued prior's weights when `init_from`), their EMA copy and the optimiser
    torch.manual_seed(cfg.seed)
    models = build_models(cfg.preset, vocabulary, cfg.resolution, cfg.beta_schedule, cfg.max_length)
    unet, text_encoder = models.unet.to(device).train(), models.text_encoder.to(device).train()
    if init is not None:
        try:
            unet.load_state_dict(init.unet.state_dict())
            text_encoder.load_state_dict(init.text_encoder.state_dict())
        except RuntimeError as e:
            raise ValueError(f"--init-from {cfg.init_from}: weights do not fit preset {cfg.preset!r} "
                             f"({str(e).splitlines()[0]})") from None
        del init
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt_kwargs = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay, eps=1e-8)
    if device.type == "cuda":
        opt_kwargs["fused"] = True

    # 4. The random streams (data, noise, captions); resuming restores them with everything else
    state = TrainState(
        unet, text_encoder,
        named=[f"unet.{n}" for n, _ in unet.named_parameters()] + [f"text.{n}" for n, _ in text_encoder.named_parameters()],
        params=params, ema=[p.detach().clone().float() for p in params],
        optimizer=torch.optim.AdamW(params, **opt_kwargs),
        data_gen=_data_generator(device, cfg.seed), noise_gen=torch.Generator(device=device).manual_seed(cfg.seed + 1),
        cap_gen=torch.Generator().manual_seed(cfg.seed + 2))
    if resume:
        _restore_state(state, ckpt_tensors, meta)
        print(f"resumed from {ckpt_path} at step {state.step}", flush=True)

    # 5. What every step reads: the noise schedule, min-SNR-γ loss weights, token ids per caption
    ac = models.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    sqrt_ac, sqrt_1mac = ac.sqrt(), (1 - ac).sqrt()
    loss_w = min_snr_weights(ac, cfg.min_snr_gamma)
    tokens = _TokenCache(models.tokenizer)
    unet_fwd = torch.compile(unet) if (cfg.compile and device.type == "cuda") else unet
    budget = cfg.max_minutes * 60.0

    # 6. The loop: a fresh batch, the loss, an optimiser step and an EMA step; logs, checkpoints, sample grids
    print(f"train-prior: {cfg.preset} UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, text "
          f"encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M, vocabulary {len(vocabulary)}, "
          f"device {device}{' bf16' if amp else ''}, batch {cfg.batch_size}", flush=True)
    bar = tqdm(total=cfg.steps, initial=state.step, desc="train-prior", dynamic_ncols=True, mininterval=1.0)
    loss_acc = torch.zeros((), device=device)
    n_acc, last_log, last_log_step, last_loss = 0, time.perf_counter(), state.step, float("nan")
    stopped_by = "steps"
    start_step = state.step
    while state.step < cfg.steps:
        if cfg.stop_after > 0 and state.step - start_step >= cfg.stop_after:
            stopped_by = "stop_after"
            break
        if budget > 0 and state.train_seconds >= budget:
            stopped_by = "max_minutes"
            break
        t0 = time.perf_counter()
        lr = _lr_at(cfg, state.step, _progress(cfg, state))
        for g in state.optimizer.param_groups:
            g["lr"] = lr
        images, captions, _ = sample_fn(cfg.batch_size, resolution=cfg.resolution, generator=state.data_gen,
                                        device=device)
        b = images.shape[0]
        ids = tokens(augment_captions(captions, state.cap_gen, cfg.caption_dropout, cfg.view_dropout)).to(
            device, non_blocking=True)
        x0 = images.to(device, torch.float32) * 2 - 1
        loss, per = denoising_loss(unet_fwd, text_encoder, x0, ids, state.noise_gen, sqrt_ac, sqrt_1mac, loss_w,
                                   cfg.offset_noise, amp)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        state.optimizer.step()
        with torch.no_grad():
            d = min(cfg.ema_decay, (1 + state.step) / (10 + state.step))  # the usual warm-up of the decay
            torch._foreach_lerp_(state.ema, [p.detach().float() for p in params], 1 - d)
        loss_acc += per.detach().mean()
        n_acc += 1
        state.step += 1
        state.samples_seen += b
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            last_loss = float(loss_acc) / n_acc  # one sync per log interval
            now = time.perf_counter()
            state.loss_history.append([state.step, round(last_loss, 6)])
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}",
                            sps=f"{(state.step - last_log_step) * b / max(now - last_log, 1e-9):.0f}")
            loss_acc.zero_()
            n_acc, last_log, last_log_step = 0, now, state.step
        if device.type == "cuda" and state.step % cfg.log_every == 0:
            torch.cuda.synchronize(device)
        state.train_seconds += time.perf_counter() - t0
        if cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps:
            _save_state(ckpt_path, cfg, state, vocabulary)
        if cfg.sample_every > 0 and state.step % cfg.sample_every == 0:
            _save_samples(cfg, state, models, out / f"samples_{state.step:06d}.png", device)
    bar.close()
    if n_acc:
        last_loss = float(loss_acc) / n_acc
        state.loss_history.append([state.step, round(last_loss, 6)])

    # 7. The last checkpoint, the EMA model folder, its sample grid and MODEL_CARD.md
    _save_state(ckpt_path, cfg, state, vocabulary)
    save_model_folder(_ema_models(state, models), out)
    _save_samples(cfg, state, models, out / "samples.png", device)
    loss_hist = state.loss_history
    summary = dict(steps=state.step, samples_seen=state.samples_seen, train_seconds=round(state.train_seconds, 1),
                   final_loss=(loss_hist[-1][1] if loss_hist else float("nan")), device=str(device),
                   stopped_by=stopped_by,
                   unet_params=sum(p.numel() for p in unet.parameters()),
                   text_params=sum(p.numel() for p in text_encoder.parameters()))
    _write_model_card(out, cfg, summary, command, vocabulary, loss_hist)
    print(f"train-prior: done, {state.step} steps, {state.samples_seen} samples, {state.train_seconds:.0f} s, "
          f"final loss {summary['final_loss']:.4f} → {out}", flush=True)
    return summary


def _write_model_card(out: Path, cfg: TrainPriorConfig, s: dict, command: str, vocabulary: list[str],
                      loss_hist: list) -> None:
    held = ", ".join(f"{c} {sh}" for c, sh in grammar.HELD_OUT)
    n = 12
    idx = sorted({round(i * (len(loss_hist) - 1) / (n - 1)) for i in range(n)}) if len(loss_hist) > n else \
        range(len(loss_hist))
    init_row = (f"\n| initialised from | `{cfg.init_from}` (continued training; steps, samples and time above count "
                f"this run only) |" if cfg.init_from else "")
    loss_curve = ", ".join(f"{loss_hist[i][0]}: {loss_hist[i][1]:.4f}" for i in idx)
    text = f"""# DreamMapping embedded toy-world prior

Pixel-space text-to-image diffusion model ({cfg.resolution}×{cfg.resolution}), trained by `dreammapping train-prior`
on renders of the procedural toy world (`dreammapping.toyworld.dataset.sample_batch`, a fresh random batch every
step; held-out colour–shape pairs never shown: {held or "none"}).

| | |
|---|---|
| UNet2DConditionModel | {s['unet_params'] / 1e6:.2f}M parameters, preset `{cfg.preset}`, stored fp16 |
| CLIPTextModel | {s['text_params'] / 1e6:.2f}M parameters, word-level vocabulary of {len(vocabulary)} tokens |
| scheduler | DDPM, 1000 steps, {cfg.beta_schedule} betas, ε-prediction, clip_sample, trailing spacing |
| steps | {s['steps']} × batch {cfg.batch_size} ({s['stopped_by']}) |
| samples seen | {s['samples_seen']} |
| training wall time | {s['train_seconds']:.0f} s on {s['device']} |
| final loss | {s['final_loss']:.4f} (plain ε-MSE over t ~ U(0, 999); training weights it by min-SNR-γ={cfg.min_snr_gamma}) |
| optimiser | AdamW lr {cfg.lr} (warm-up {cfg.warmup_steps}, cosine to ×{cfg.min_lr_ratio}), EMA {cfg.ema_decay} |
| conditioning | caption dropout {cfg.caption_dropout}, view-suffix dropout {cfg.view_dropout}, offset noise {cfg.offset_noise} |
| seed | {cfg.seed} |{init_row}

Command:

```
{command}
```

Loss (step: mean ε-MSE over the log interval): {loss_curve}

![samples](samples.png)

`samples.png`: rows = {', '.join(repr(p) for p in default_sample_prompts())}; DDIM {cfg.sample_steps} steps (eta 1),
CFG {cfg.sample_guidance}, {cfg.samples_per_prompt} samples per prompt, EMA weights.

Full config: `{json.dumps(dataclasses.asdict(cfg))}`
"""
    atomic_write_text(out / "MODEL_CARD.md", text)


def accuracy_report(models: PriorModels | str | Path, classifier, n_per_prompt: int = 16,
                    scales: Sequence[float] = (2.0, 5.0, 7.5), steps: int = 30, device: str | torch.device = "cpu",
                    seed: int = 0, batch_size: int = 512, border: int = 2, eta: float = 1.0) -> tuple[str, dict]:
    """Sample every colour–shape pair (plain prompt "a red cube") and the dataset's two-object eval prompts at each
    CFG scale and judge them with the attribute classifier. Returns (markdown table, numbers).

    Columns: colour / shape accuracy on trained and held-out pairs; for two-object prompts the fraction with both
    colours / both shapes right (either order); bg err = mean |1 − pixel| over a `border`-pixel frame."""
    COLOR_NAMES, HELD_OUT, SHAPES, parse = grammar.COLOR_NAMES, grammar.HELD_OUT, grammar.SHAPES, grammar.parse
    if isinstance(models, (str, Path)):
        models = load_model_folder(models, device)
    held = set(HELD_OUT)
    singles = [(c, s) for c in COLOR_NAMES for s in SHAPES]
    pairs_prompts = [p for p in EVAL_PROMPTS if len(parse(p).objects) == 2]
    pair_objs = [[(o.color, o.shape) for o in parse(p).objects] for p in pairs_prompts]
    prompts = [with_article(f"{c} {s}") for c, s in singles] + pairs_prompts
    rows, numbers = [], {}
    for scale in scales:
        g = torch.Generator().manual_seed(seed)
        imgs = sample(models, [p for p in prompts for _ in range(n_per_prompt)], steps=steps, guidance_scale=scale,
                      generator=g, device=device, batch_size=batch_size, eta=eta)
        pred = {k: v.cpu() for k, v in classifier.classify(imgs).items()}
        n1 = len(singles) * n_per_prompt
        col = torch.tensor([COLOR_NAMES.index(c) for c, _ in singles]).repeat_interleave(n_per_prompt)
        shp = torch.tensor([SHAPES.index(s) for _, s in singles]).repeat_interleave(n_per_prompt)
        is_held = torch.tensor([(c, s) in held for c, s in singles]).repeat_interleave(n_per_prompt)
        col_ok, shp_ok = pred["color"][:n1] == col, pred["shape"][:n1] == shp
        two = {k: v[n1:] for k, v in pred.items()}
        ids = lambda i, j: torch.tensor([COLOR_NAMES.index(o[j][0]) if i == 0 else SHAPES.index(o[j][1])  # noqa: E731
                                         for o in pair_objs]).repeat_interleave(n_per_prompt)
        m = match_pair(two, ids(0, 0), ids(1, 0), ids(0, 1), ids(1, 1)) if pairs_prompts else None
        frame = torch.ones_like(imgs[0, 0], dtype=torch.bool)
        frame[border:-border, border:-border] = False
        bg = (1 - imgs[:, :, frame]).abs().mean()
        r = {
            "color_trained": float(col_ok[~is_held].float().mean()), "shape_trained": float(shp_ok[~is_held].float().mean()),
            "color_held_out": float(col_ok[is_held].float().mean()) if is_held.any() else float("nan"),
            "shape_held_out": float(shp_ok[is_held].float().mean()) if is_held.any() else float("nan"),
            "two_colors": float(m["colors_ok"].float().mean()) if m else float("nan"),
            "two_shapes": float(m["shapes_ok"].float().mean()) if m else float("nan"),
            "bg_error": float(bg), "bg_error_single": float((1 - imgs[:n1][:, :, frame]).abs().mean()),
        }
        numbers[str(scale)] = r
        rows.append(f"| {scale:g} | {r['color_trained']:.1%} | {r['shape_trained']:.1%} | {r['color_held_out']:.1%} "
                    f"| {r['shape_held_out']:.1%} | {r['two_colors']:.1%} | {r['two_shapes']:.1%} "
                    f"| {r['bg_error']:.4f} |")
    head = (f"DDIM {steps} steps (eta {eta:g}), {n_per_prompt} samples per prompt, {len(singles)} colour–shape pairs "
            f"({len(held)} held out), {len(pairs_prompts)} two-object prompts\n\n"
            "| CFG | colour (trained) | shape (trained) | colour (held-out) | shape (held-out) | two-obj colours "
            "| two-obj shapes | bg err |\n|---|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows), numbers


KINDS = ("pixel", "latent")


def split_kind(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(`--kind` of argv — "pixel" when absent —, the other arguments in order); a bad value exits 2 with one line."""
    import argparse

    parser = argparse.ArgumentParser(prog="dreammapping train-prior", add_help=False, allow_abbrev=False)
    parser.add_argument("--kind", choices=KINDS, default="pixel")
    known, rest = parser.parse_known_args(list(argv))
    return known.kind, rest


def cli_train_prior(argv: Sequence[str] | None = None) -> int:
    """`--kind pixel` (default): the v1 pixel prior (this module); `--kind latent`: prior v2 (`train_latent`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kind, argv = split_kind(argv)
    if kind == "latent":
        from dreammapping.toyworld.train_latent import cli_train_latent

        return cli_train_latent(argv)
    cfg = tyro.cli(TrainPriorConfig, args=argv, prog="dreammapping train-prior")
    try:  # every value in its declared range, and the output folder writable, before any work
        check_ranges(cfg)
        check_device(cfg.device)
        check_writable_folder(cfg.out)
    except GenerateError as e:
        print(f"dreammapping train-prior: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"dreammapping train-prior: {describe_write_error(e, e.filename or cfg.out)}", file=sys.stderr)
        return EXIT_OUTPUT
    command = "dreammapping train-prior " + " ".join(shlex.quote(a) for a in argv)
    train(cfg, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(cli_train_prior())
