"""Train the embedded prior v2: a latent text-to-image model in Stable Diffusion's format (`latent_prior`).

`dreammapping train-prior --kind latent` runs, in order, from one seed and one command:

1. **data** — seeded shards of 64² toy-world renders, rendered once into `--data` and reused by every later run
   (`toyworld.shards`); a validation split from another seed stream holds the held-out colour–shape pairs too;
2. **vae** — `AutoencoderKL` (f = 4) on the training shards: MSE reconstruction of a posterior sample + a KL term
   (weight `kl_weight` per pixel, SD's ratio), EMA weights kept; then `scaling_factor` = 1 / std of the training
   latents, the VAE saved (fp16) to `<out>/vae/` and its reconstruction PSNR measured on the validation renders;
3. **encode** — every shard encoded once by that saved VAE (posterior means, `<out>/latents/<vae sha>/`);
4. **unet** — `UNet2DConditionModel` + word-level `CLIPTextModel` on the scaled latents: ε-prediction, min-SNR-γ
   weights, offset noise, caption / view-suffix dropout and EMA exactly as the pixel prior (`train_prior`), then the
   whole folder (EMA weights), `samples.png` (sampled through `DiffusionPrior`, the project's SD path) and
   `MODEL_CARD.md`.

`--stage vae` / `--stage unet` run one stage (unet needs a finished vae). Each stage writes an atomic checkpoint
(`vae_checkpoint.safetensors`, `unet_checkpoint.safetensors`: weights, EMA, optimiser, random streams, counters)
every `checkpoint_every` steps, and rerunning the same command after any interruption (kill -9 included) continues
from it, to the same weights as an uninterrupted run (`--no-resume` starts over).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import tyro
from torch import Tensor
from tqdm.auto import tqdm

from dreammapping.devices import resolve_device
from dreammapping.files import atomic_write_text, remove_stale_temporaries
from dreammapping.toyworld import grammar, latent_prior as lp, shards
from dreammapping.toyworld.dataset import sample_batch
from dreammapping.toyworld.train_prior import (
    _TokenCache, _flatten_optimizer, _unflatten_optimizer, augment_captions, build_tokenizer, build_vocabulary,
    default_sample_prompts, denoising_loss, load_checkpoint, min_snr_weights, save_checkpoint, save_grid,
)

VAE_CHECKPOINT = "vae_checkpoint.safetensors"
UNET_CHECKPOINT = "unet_checkpoint.safetensors"
VAE_STATS = "vae_stats.json"
UNET_STATS = "unet_stats.json"
DATA_STATS = "data_stats.json"
SCALING_SAMPLE = 4096  # training images whose latents set scaling_factor


@dataclass
class LatentPriorConfig:
    """Train the embedded prior v2 (`--kind latent`): AutoencoderKL + latent UNet2DConditionModel + CLIPTextModel
    in Stable Diffusion's folder layout. Rerunning the same command resumes."""

    out: str = "runs/prior-v2"
    """Output folder: the diffusers folder (vae/, unet/, text_encoder/, tokenizer/, scheduler/, model_index.json),
    MODEL_CARD.md, samples.png, the stages' checkpoints and stats, and latents/ (the encoded shards)."""
    data: str = "data/prior-shards"
    """Shard cache: rendered once per (world, spec), shared by every run that names it."""
    stage: Literal["all", "vae", "unet"] = "all"
    """Which stage(s) to run: vae then unet ("all"), or one of them (unet needs a finished vae stage)."""
    preset: Literal["small", "base", "tiny"] = "small"
    """UNet + text encoder size (latent_prior.UNET_PRESETS)."""
    vae_preset: Literal["small", "base", "tiny"] = "small"
    """VAE size (latent_prior.VAE_PRESETS)."""
    resolution: int = 64
    supersample: int = 2
    """Supersampling of the training renders (per side)."""
    shard_size: int = 1024
    train_shards: int = 32
    """Training set = train_shards × shard_size renders."""
    val_shards: int = 1
    """Validation renders (held-out pairs included): the VAE's PSNR is measured on them."""
    two_object_fraction: float = 0.3
    render_chunk: int = shards.RENDER_CHUNK
    world: Literal[1, 2] = 2
    """Toy world version of the renders (`sample_batch(world=)`): 2 = p(scene | caption) jitter, patterns, white and
    black; 1 = v1's world."""
    """Renders per call while making a shard (part of the shards' identity; larger on a GPU)."""
    seed: int = 0
    # -- VAE stage
    vae_steps: int = 3000
    vae_batch_size: int = 64
    vae_lr: float = 5e-4
    kl_weight: float = 1e-6
    """KL(posterior ‖ N(0, I)) weight per pixel of reconstruction error (Stable Diffusion's VAE ratio)."""
    vae_max_minutes: float = 0.0
    """Wall-clock budget of the VAE loop (0 = none); the cosine schedule follows time when it runs out first."""
    # -- UNet stage
    steps: int = 20000
    """UNet optimiser steps."""
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 200
    """Warm-up steps of both stages' learning rates."""
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    caption_dropout: float = 0.15
    view_dropout: float = 0.3
    ema_decay: float = 0.999
    """EMA of the weights of both stages; the EMA weights are what gets saved."""
    offset_noise: float = 0.05
    min_snr_gamma: float = 5.0
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    max_length: int = 24
    max_minutes: float = 0.0
    """Wall-clock budget of the UNet loop (0 = none)."""
    # -- running
    device: str = "auto"
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """"auto" = bf16 autocast on CUDA, fp32 on CPU."""
    compile: bool = False
    """torch.compile the UNet (CUDA only)."""
    checkpoint_every: int = 200
    """Steps between checkpoints of a stage (0 = only at its end)."""
    log_every: int = 25
    stop_after: int = 0
    """Stop (checkpoint) after this many steps of a stage in this invocation (0 = no limit); rerun to continue."""
    resume: bool = True
    """Continue each stage from its checkpoint in `out` when there is one (--no-resume: start over)."""
    encode_batch: int = 256
    sample_steps: int = 30
    sample_guidance: float = 5.0
    samples_per_prompt: int = 4
    """Samples per prompt in samples.png (0 = none)."""
    threads: int = 0
    """torch CPU threads (0 = leave as is)."""


# Settings a resumed stage must share with its checkpoint (others, like steps or budgets, may change between runs).
VAE_KEYS = ("vae_preset", "resolution", "supersample", "shard_size", "train_shards", "seed", "two_object_fraction",
            "render_chunk", "world")
UNET_KEYS = ("preset", "resolution", "beta_schedule", "max_length", "seed")


@dataclass
class StageState:
    """One stage's training state; its checkpoint saves and restores it bit for bit (`train_prior`'s format)."""

    named: list[str]
    params: list[Tensor]
    ema: list[Tensor]
    optimizer: torch.optim.Optimizer
    data_gen: torch.Generator
    noise_gen: torch.Generator
    cap_gen: torch.Generator
    step: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    loss_history: list = field(default_factory=list)


@dataclass
class StageResult:
    """What one stage's loop did (the model card's numbers)."""

    steps: int
    samples_seen: int
    train_seconds: float
    loss_history: list
    stopped_by: str
    seconds_per_step: float  # this invocation's mean (nan if it ran no step)


def _lr_at(base: float, warmup: int, min_ratio: float, step: int, progress: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(max(progress, 0.0), 1.0)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def _new_state(named_params: list[tuple[str, Tensor]], lr: float, weight_decay: float, device: torch.device,
               seed: int) -> StageState:
    params = [p for _, p in named_params]
    kw = dict(lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-8)
    if device.type == "cuda":
        kw["fused"] = True
    return StageState(
        named=[n for n, _ in named_params], params=params, ema=[p.detach().clone().float() for p in params],
        optimizer=torch.optim.AdamW(params, **kw), data_gen=torch.Generator().manual_seed(seed),
        noise_gen=torch.Generator(device=device).manual_seed(seed + 1), cap_gen=torch.Generator().manual_seed(seed + 2))


def _save(path: Path, cfg: LatentPriorConfig, state: StageState, extra: dict) -> None:
    tensors = {n: p for n, p in zip(state.named, state.params)}
    tensors.update({"ema." + n: e for n, e in zip(state.named, state.ema)})
    opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
    tensors.update(opt_tensors)
    tensors.update({"rng.data": state.data_gen.get_state(), "rng.noise": state.noise_gen.get_state(),
                    "rng.captions": state.cap_gen.get_state(), "rng.torch": torch.get_rng_state()})
    save_checkpoint(path, tensors, {
        "step": state.step, "train_seconds": state.train_seconds, "samples_seen": state.samples_seen,
        "loss_history": state.loss_history, "config": dataclasses.asdict(cfg), "optimizer": opt_meta, **extra})


def _restore(state: StageState, tensors: dict[str, Tensor], meta: dict) -> None:
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


def _check_resumable(meta: dict, cfg: LatentPriorConfig, keys: Sequence[str], path: Path) -> None:
    saved = meta["config"]
    for k in keys:
        if saved.get(k) != getattr(cfg, k):
            raise ValueError(f"{path} was made with {k}={saved.get(k)!r}, this command says {getattr(cfg, k)!r}: "
                             "use the same settings to resume, --no-resume to start over, or another --out")


def _copy_ema_into(state: StageState, modules: Sequence[torch.nn.Module]) -> None:
    params = [p for m in modules for p in m.parameters()]
    with torch.no_grad():
        for p, e in zip(params, state.ema):
            p.copy_(e)


def _run_loop(name: str, cfg: LatentPriorConfig, state: StageState, total: int, budget_s: float, base_lr: float,
              step_fn: Callable[[], tuple[Tensor, Tensor, int]], ckpt: Path, ckpt_extra: dict,
              device: torch.device) -> StageResult:
    """The shared loop: lr schedule, one `step_fn()` → (loss to back-propagate, per-sample logged loss [B], batch),
    gradient clip, AdamW, EMA with warm-up, loss log, periodic atomic checkpoint; stops at `total` steps, the budget
    or `stop_after`."""
    bar = tqdm(total=total, initial=state.step, desc=f"train-prior {name}", dynamic_ncols=True, mininterval=1.0)
    acc = torch.zeros((), device=device)  # summed on the device: one sync per log interval, not per step
    n_acc, stopped_by, start_step, t_start = 0, "steps", state.step, time.perf_counter()
    while state.step < total:
        if cfg.stop_after > 0 and state.step - start_step >= cfg.stop_after:
            stopped_by = "stop_after"
            break
        if budget_s > 0 and state.train_seconds >= budget_s:
            stopped_by = "max_minutes"
            break
        t0 = time.perf_counter()
        progress = state.step / max(total, 1)
        if budget_s > 0:
            progress = max(progress, state.train_seconds / budget_s)
        lr = _lr_at(base_lr, cfg.warmup_steps, cfg.min_lr_ratio, state.step, progress)
        for g in state.optimizer.param_groups:
            g["lr"] = lr
        loss, per, b = step_fn()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(state.params, cfg.grad_clip)
        state.optimizer.step()
        with torch.no_grad():
            d = min(cfg.ema_decay, (1 + state.step) / (10 + state.step))
            torch._foreach_lerp_(state.ema, [p.detach().float() for p in state.params], 1 - d)
        acc += per.detach().float().mean()
        n_acc += 1
        state.step += 1
        state.samples_seen += b
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == total:
            mean = float(acc) / n_acc
            state.loss_history.append([state.step, round(mean, 6)])
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
            acc.zero_()
            n_acc = 0
        state.train_seconds += time.perf_counter() - t0
        if cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0 and state.step < total:
            _save(ckpt, cfg, state, ckpt_extra)
    bar.close()
    if n_acc:
        state.loss_history.append([state.step, round(float(acc) / n_acc, 6)])
    _save(ckpt, cfg, state, ckpt_extra)
    ran = state.step - start_step
    return StageResult(state.step, state.samples_seen, state.train_seconds, state.loss_history, stopped_by,
                       (time.perf_counter() - t_start) / ran if ran else float("nan"))


def _amp(cfg: LatentPriorConfig, device: torch.device) -> bool:
    return cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and device.type == "cuda")


# ------------------------------------------------------------------------------------------------------- stages
def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR (dB) of [B,3,H,W] images in [0,1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def reconstruction_psnr(vae, images_u8: Tensor, device: torch.device, batch_size: int = 256) -> Tensor:
    """[N] PSNR of decode(posterior mean) against uint8 images [N,3,R,R] — the path DiffusionPrior takes."""
    out = []
    for s in range(0, images_u8.shape[0], batch_size):
        x01 = images_u8[s:s + batch_size].to(device).float() / 255.0
        z = vae.encode(x01 * 2 - 1).latent_dist.mean
        rec = ((vae.decode(z).sample.float() + 1) / 2).clamp(0, 1)
        out.append(psnr(rec, x01).cpu())
    return torch.cat(out)


def train_vae(cfg: LatentPriorConfig, data_folder: Path, device: torch.device) -> dict:
    """The VAE stage (module doc, step 2). Returns its stats (also in `<out>/vae_stats.json`)."""
    out = Path(cfg.out)
    ckpt = out / VAE_CHECKPOINT
    stats_path = out / VAE_STATS
    resume = cfg.resume and ckpt.exists()
    tensors, meta = load_checkpoint(ckpt) if resume else ({}, {})
    if resume:
        _check_resumable(meta, cfg, VAE_KEYS, ckpt)
    if resume and meta["step"] >= cfg.vae_steps and stats_path.exists() and (out / "vae").is_dir():
        stats = json.loads(stats_path.read_text())
        if stats.get("steps") == meta["step"]:
            print(f"train-prior vae: done already ({meta['step']} steps, PSNR {stats['psnr_db']:.2f} dB)", flush=True)
            return stats
    train = shards.load_split(data_folder, "train", cfg.train_shards)
    images = train.tensors  # uint8 [N,3,R,R], CPU
    torch.manual_seed(cfg.seed + 100)
    vae = lp.build_vae(cfg.vae_preset, cfg.resolution).to(device).train()
    state = _new_state(list(vae.named_parameters()), cfg.vae_lr, cfg.weight_decay, device, cfg.seed + 100)
    if resume:
        _restore(state, tensors, meta)
        print(f"train-prior vae: resumed from {ckpt} at step {state.step}", flush=True)
    amp = _amp(cfg, device)
    n = images.shape[0]
    pixels = 3 * cfg.resolution * cfg.resolution

    def step() -> tuple[Tensor, Tensor, int]:
        idx = torch.randint(n, (cfg.vae_batch_size,), generator=state.data_gen)
        x = images[idx].to(device, non_blocking=True).float() / 127.5 - 1.0
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=state.noise_gen, device=device)
            rec = vae.decode(z).sample
        per = (rec.float() - x).pow(2).flatten(1).mean(1)
        kl = post.kl().float() / pixels  # [B], per pixel like the reconstruction term
        return (per + cfg.kl_weight * kl).mean(), per, x.shape[0]

    print(f"train-prior vae: {lp.count_parameters(vae) / 1e6:.2f}M parameters, {n} training renders, device {device}"
          f"{' bf16' if amp else ''}, batch {cfg.vae_batch_size}", flush=True)
    result = _run_loop("vae", cfg, state, cfg.vae_steps, cfg.vae_max_minutes * 60, cfg.vae_lr, step, ckpt, {}, device)
    if result.stopped_by == "stop_after":
        return {"steps": result.steps, "stopped_by": "stop_after"}
    # EMA weights → the shipped (fp16) VAE; everything downstream reads that saved file, never the fp32 copy
    _copy_ema_into(state, [vae])
    vae.eval()
    lat = shards.encode_images(vae, images[:SCALING_SAMPLE], cfg.encode_batch, device)
    scale = lp.latent_scaling_factor(lat)
    vae.register_to_config(scaling_factor=scale)
    lp.save_vae(vae, out / "vae")
    saved = load_vae(out / "vae", device)
    val = shards.load_split(data_folder, "val", cfg.val_shards)
    p = reconstruction_psnr(saved, val.tensors, device, cfg.encode_batch)
    stats = dict(steps=result.steps, samples_seen=result.samples_seen, train_seconds=round(result.train_seconds, 1),
                 seconds_per_step=result.seconds_per_step, stopped_by=result.stopped_by,
                 loss_history=result.loss_history, final_mse=result.loss_history[-1][1] if result.loss_history else None,
                 scaling_factor=scale, latent_std=1.0 / scale, params=lp.count_parameters(vae),
                 psnr_db=float(p.mean()), psnr_min_db=float(p.min()), psnr_images=int(p.numel()), device=str(device))
    atomic_write_text(stats_path, json.dumps(stats, indent=2) + "\n")
    print(f"train-prior vae: {result.steps} steps, MSE {stats['final_mse']}, scaling_factor {scale:.4f}, held-out "
          f"PSNR {stats['psnr_db']:.2f} dB (min {stats['psnr_min_db']:.2f}) over {p.numel()} renders", flush=True)
    return stats


def load_vae(folder: Path, device: torch.device):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(folder), torch_dtype=torch.float32).to(device).eval()


def train_unet(cfg: LatentPriorConfig, data_folder: Path, device: torch.device, command: str) -> dict:
    """The encode and UNet stages (module doc, steps 3–4). Returns the stats (also in `<out>/unet_stats.json`)."""
    out = Path(cfg.out)
    vae_dir = out / "vae"
    if not (vae_dir / "config.json").exists() or not (out / VAE_STATS).exists():
        raise ValueError(f"--stage unet needs a finished VAE in {vae_dir} (run --stage vae or --stage all first)")
    vae = load_vae(vae_dir, device)
    vae_id = shards.file_sha(sorted(vae_dir.glob("*.safetensors")))
    lat_folder = shards.encode_shards(vae, vae_id, data_folder, out / "latents", {"train": cfg.train_shards},
                                      device, cfg.encode_batch)
    train = shards.load_split(lat_folder, "train", cfg.train_shards, name="mean")
    scale = float(vae.config.scaling_factor)
    latents = train.tensors.float() * scale  # [N,4,h,w], unit variance
    captions = train.captions
    ckpt = out / UNET_CHECKPOINT
    resume = cfg.resume and ckpt.exists()
    tensors, meta = load_checkpoint(ckpt) if resume else ({}, {})
    if resume:
        _check_resumable(meta, cfg, UNET_KEYS, ckpt)
        if meta.get("vae_id") != vae_id:
            raise ValueError(f"{ckpt} was trained on the latents of another VAE: use --no-resume or another --out")
        vocabulary = meta["vocabulary"]
    else:
        vocabulary = build_vocabulary(captions=captions)  # the grammar's words + every word the renders are named by
    torch.manual_seed(cfg.seed + 200)
    latent_size = latents.shape[-1]
    unet = lp.build_unet(cfg.preset, latent_size).to(device).train()
    text_encoder = lp.build_text_encoder(cfg.preset, len(vocabulary), cfg.max_length).to(device).train()
    tokenizer = build_tokenizer(vocabulary, cfg.max_length)
    scheduler = lp.latent_scheduler(cfg.beta_schedule)
    named = [(f"unet.{k}", p) for k, p in unet.named_parameters()] + \
        [(f"text.{k}", p) for k, p in text_encoder.named_parameters()]
    state = _new_state(named, cfg.lr, cfg.weight_decay, device, cfg.seed + 200)
    if resume:
        _restore(state, tensors, meta)
        print(f"train-prior unet: resumed from {ckpt} at step {state.step}", flush=True)
    amp = _amp(cfg, device)
    ac = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    sqrt_ac, sqrt_1mac = ac.sqrt(), (1 - ac).sqrt()
    loss_w = min_snr_weights(ac, cfg.min_snr_gamma)
    tokens = _TokenCache(tokenizer)
    unet_fwd = torch.compile(unet) if (cfg.compile and device.type == "cuda") else unet
    n = latents.shape[0]

    def step() -> tuple[Tensor, Tensor, int]:
        idx = torch.randint(n, (cfg.batch_size,), generator=state.data_gen)
        x0 = latents[idx].to(device, non_blocking=True)
        caps = augment_captions([captions[i] for i in idx.tolist()], state.cap_gen, cfg.caption_dropout,
                                cfg.view_dropout)
        ids = tokens(caps).to(device, non_blocking=True)
        loss, per = denoising_loss(unet_fwd, text_encoder, x0, ids, state.noise_gen, sqrt_ac, sqrt_1mac, loss_w,
                                   cfg.offset_noise, amp)
        return loss, per, x0.shape[0]

    print(f"train-prior unet: {cfg.preset} UNet {lp.count_parameters(unet) / 1e6:.2f}M parameters, text encoder "
          f"{lp.count_parameters(text_encoder) / 1e6:.2f}M, vocabulary {len(vocabulary)}, {n} latents "
          f"{tuple(latents.shape[1:])}, device {device}{' bf16' if amp else ''}, batch {cfg.batch_size}", flush=True)
    result = _run_loop("unet", cfg, state, cfg.steps, cfg.max_minutes * 60, cfg.lr, step, ckpt,
                       {"vocabulary": vocabulary, "vae_id": vae_id}, device)
    stats = dict(steps=result.steps, samples_seen=result.samples_seen, train_seconds=round(result.train_seconds, 1),
                 seconds_per_step=result.seconds_per_step, stopped_by=result.stopped_by,
                 loss_history=result.loss_history, final_loss=result.loss_history[-1][1] if result.loss_history else None,
                 unet_params=lp.count_parameters(unet), text_params=lp.count_parameters(text_encoder),
                 vocabulary=len(vocabulary), latents=n, device=str(device))
    if result.stopped_by == "stop_after":
        return stats
    _copy_ema_into(state, [unet, text_encoder])
    models = lp.LatentPriorModels(vae, unet.eval(), text_encoder.eval(), tokenizer, scheduler)
    lp.save_latent_folder(models, out, write_vae=False)
    atomic_write_text(out / UNET_STATS, json.dumps(stats, indent=2) + "\n")
    return stats


# ------------------------------------------------------------------------------------------------ samples, card
def save_samples(cfg: LatentPriorConfig, device: torch.device) -> Path | None:
    """`samples_per_prompt` samples of each default prompt through `DiffusionPrior` (the project's SD path), as a
    PNG grid in `<out>/samples.png` (fixed seed)."""
    from dreammapping.priors import DiffusionPrior

    if cfg.samples_per_prompt <= 0:
        return None
    prior = DiffusionPrior.from_pretrained(str(Path(cfg.out)), device=device, dtype=torch.float32)
    prompts = [p for p in default_sample_prompts() for _ in range(cfg.samples_per_prompt)]
    imgs = prior.sample(prompts, num_steps=cfg.sample_steps, guidance_scale=cfg.sample_guidance,
                        generator=torch.Generator(device=device).manual_seed(1234))
    path = Path(cfg.out) / "samples.png"
    save_grid(imgs.float().cpu(), path, nrow=cfg.samples_per_prompt, scale=2 if cfg.resolution <= 64 else 1)
    return path


def _curve(hist: list, n: int = 12) -> str:
    if not hist:
        return "(none)"
    idx = sorted({round(i * (len(hist) - 1) / (n - 1)) for i in range(n)}) if len(hist) > n else range(len(hist))
    return ", ".join(f"{hist[i][0]}: {hist[i][1]:.4f}" for i in idx)


def write_model_card(cfg: LatentPriorConfig, data: dict, vae: dict, unet: dict, command: str) -> Path:
    """MODEL_CARD.md v2: sizes, samples seen, wall time and device of each stage, the command, loss curves and the
    VAE's held-out reconstruction PSNR (goal ≥ 30 dB)."""
    held = ", ".join(f"{c} {s}" for c, s in grammar.HELD_OUT) or "none"
    psnr_ok = "meets" if vae["psnr_db"] >= 30 else "MISSES"
    total_s = vae["train_seconds"] + unet["train_seconds"] + data.get("render_seconds", 0.0)
    text = f"""# DreamMapping embedded toy-world prior v2 (latent, Stable Diffusion format)

Latent text-to-image diffusion model in Stable Diffusion's folder layout (`StableDiffusionPipeline`: vae/, unet/,
text_encoder/, tokenizer/, scheduler/), trained by `dreammapping train-prior --kind latent` on
{data['train_images']} seeded renders of the toy world at {cfg.resolution}² ({data['train_shards']} shards of
{cfg.shard_size}, supersample {cfg.supersample}, world v{cfg.world}, source fingerprint `{data['world']}`); held-out colour–shape pairs never
shown: {held}.

| | |
|---|---|
| AutoencoderKL | {vae['params'] / 1e6:.2f}M parameters, preset `{cfg.vae_preset}`, {cfg.resolution}² RGB ↔ {data['latent_shape']} latents (f = 4), stored fp16 |
| scaling_factor | {vae['scaling_factor']:.5f} (1 / std of {min(SCALING_SAMPLE, data['train_images'])} training latents) |
| VAE reconstruction | **{vae['psnr_db']:.2f} dB** mean PSNR (min {vae['psnr_min_db']:.2f}) on {vae['psnr_images']} held-out renders (held-out pairs included): {psnr_ok} the 30 dB goal |
| UNet2DConditionModel | {unet['unet_params'] / 1e6:.2f}M parameters, preset `{cfg.preset}`, ε-prediction, stored fp16 |
| CLIPTextModel | {unet['text_params'] / 1e6:.2f}M parameters, word-level vocabulary of {unet['vocabulary']} tokens |
| scheduler | DDPM, 1000 steps, {cfg.beta_schedule} betas, ε-prediction, no clipping, trailing spacing |
| VAE stage | {vae['steps']} steps × batch {cfg.vae_batch_size} = {vae['samples_seen']} samples seen, {vae['train_seconds']:.0f} s on {vae['device']} ({vae['stopped_by']}) |
| UNet stage | {unet['steps']} steps × batch {cfg.batch_size} = {unet['samples_seen']} samples seen, {unet['train_seconds']:.0f} s on {unet['device']} ({unet['stopped_by']}) |
| data | {data['rendered']} shards rendered by this command ({data['seconds_per_shard']} s each), {data['reused']} reused from the cache |
| wall time | {total_s:.0f} s of rendering and training (this command's rendering, both stages' loops over all runs); this command ran {data.get('command_seconds', float('nan')):.0f} s end to end |
| final losses | VAE MSE {vae['final_mse']:.5f}; UNet ε-MSE {unet['final_loss']:.4f} (training weights it by min-SNR-γ={cfg.min_snr_gamma}) |
| optimiser | AdamW, VAE lr {cfg.vae_lr}, UNet lr {cfg.lr} (warm-up {cfg.warmup_steps}, cosine to ×{cfg.min_lr_ratio}), EMA {cfg.ema_decay} |
| conditioning | caption dropout {cfg.caption_dropout}, view-suffix dropout {cfg.view_dropout}, offset noise {cfg.offset_noise} |
| seed | {cfg.seed} |

Command:

```
{command}
```

VAE loss (step: mean reconstruction MSE over the log interval): {_curve(vae['loss_history'])}

UNet loss (step: mean ε-MSE over the log interval): {_curve(unet['loss_history'])}

![samples](samples.png)

`samples.png`: rows = {', '.join(repr(p) for p in default_sample_prompts())}; `DiffusionPrior.sample` (DDIM
{cfg.sample_steps} steps, eta 0), CFG {cfg.sample_guidance}, {cfg.samples_per_prompt} samples per prompt, EMA weights.

Full config: `{json.dumps(dataclasses.asdict(cfg))}`
"""
    path = Path(cfg.out) / "MODEL_CARD.md"
    atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------------------------------------------------- run
def train(config: LatentPriorConfig, sample_fn: Callable | None = None, command: str | None = None) -> dict:
    """Run the configured stage(s) (module doc); returns {"data": …, "vae": …, "unet": …} stats (stages not run
    are absent). `sample_fn` (default `toyworld.dataset.sample_batch`) must take sample_batch's keywords."""
    cfg = config
    if cfg.resolution % 4:
        raise ValueError(f"resolution must be a multiple of 4 (the VAE's f = 4), got {cfg.resolution}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    t_command = time.perf_counter()
    fn = sample_batch if sample_fn is None else sample_fn

    # 1. data: the seeded shards, rendered once
    spec = shards.ShardSpec(resolution=cfg.resolution, supersample=cfg.supersample, shard_size=cfg.shard_size,
                            seed=cfg.seed, two_object_fraction=cfg.two_object_fraction,
                            world=shards.world_fingerprint(sample_fn), render_chunk=cfg.render_chunk,
                            world_version=cfg.world)
    report = shards.ensure_shards(cfg.data, spec, cfg.train_shards, cfg.val_shards, fn, device)
    data = dict(folder=str(report.folder), world=spec.world, train_shards=cfg.train_shards,
                train_images=cfg.train_shards * cfg.shard_size, rendered=report.rendered, reused=report.reused,
                seconds_per_shard=(round(report.seconds_per_shard, 1) if report.rendered else "n/a"),
                render_seconds=round(report.seconds_per_shard * report.rendered, 1) if report.rendered else 0.0,
                latent_shape=f"{lp.LATENT_CHANNELS}×{cfg.resolution // 4}²")
    print(f"train-prior data: {report.folder} ({report.rendered} shards rendered now, {report.reused} reused)",
          flush=True)
    result: dict = {"data": data}
    # 2. the VAE
    if cfg.stage in ("all", "vae"):
        result["vae"] = train_vae(cfg, report.folder, device)
        if result["vae"].get("stopped_by") == "stop_after":
            return result
    # 3–4. encode, the UNet, the folder
    if cfg.stage in ("all", "unet"):
        result["unet"] = train_unet(cfg, report.folder, device, command)
        if result["unet"].get("stopped_by") == "stop_after":
            return result
        save_samples(cfg, device)
        vae_stats = json.loads((out / VAE_STATS).read_text())
        data["command_seconds"] = round(time.perf_counter() - t_command, 1)
        write_model_card(cfg, data, vae_stats, result["unet"], command)
        print(f"train-prior: done → {out} (MODEL_CARD.md)", flush=True)
    return result


def cli_train_latent(argv: Sequence[str], command: str | None = None) -> int:
    cfg = tyro.cli(LatentPriorConfig, args=list(argv), prog="dreammapping train-prior --kind latent")
    train(cfg, command=command or "dreammapping train-prior --kind latent " + " ".join(shlex.quote(a) for a in argv))
    return 0


__all__ = ["LatentPriorConfig", "cli_train_latent", "psnr", "reconstruction_psnr", "save_samples", "train",
           "train_unet", "train_vae", "write_model_card"]
