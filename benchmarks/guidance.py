"""Time per iteration of every guidance method relative to SDS, measured side by side in one run.

One iteration = the method's call + (loss + aux_loss).backward() + an Adam step on a leaf image tensor
[B,3,R,R] + the method's own optimiser step (VDM's Mψ, VSD's LoRA). Methods are timed round-robin (one iteration
of each per round, after warm-up rounds) so that drifts of a shared machine hit all of them alike; the table gives
medians.

Setups:
  embedded  the shipped prior when present, else a pixel-space UNet2DConditionModel of similar size (train_prior's
            "small" preset: 6.2M params, 32², 3-layer CLIP text encoder) built from a config with random weights; CPU (and GPU when present)
  sd21      a UNet of Stable Diffusion 2.1-base's exact architecture and SD's VAE (its encoder is in the loop:
            512² images → 64² latents), random weights from their configs; CPU at batch 1, fp32; on CUDA at
            batch 4, fp16. The text encoder is a 1-layer stand-in of the right width (its cost is cached, untimed).

    python benchmarks/guidance.py            # both setups, on CUDA too when available
    python benchmarks/guidance.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from dreammapping.testing import letter_tokenizer

SD21_UNET = dict(
    act_fn="silu", attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=1024, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
    in_channels=4, out_channels=4, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32,
    sample_size=64, use_linear_projection=True,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
SD_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
    layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    prediction_type="epsilon", clip_sample=False)
# pixel-space stand-in for the embedded 32² toy-world prior: toyworld.train_prior's "small" preset (6.2M UNet)
EMBEDDED_LIKE_UNET = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=[32, 64, 128],
    norm_num_groups=16, cross_attention_dim=128, attention_head_dim=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])


def build_prior(setup: str, device: str, dtype):
    """A DiffusionPrior with random weights of the named setup's architecture (or the shipped embedded prior)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreammapping.priors import DiffusionPrior, embedded_prior_path

    if setup == "embedded" and (embedded_prior_path() / "unet").is_dir():
        return DiffusionPrior.from_pretrained("embedded", device=device, dtype=dtype), "shipped embedded prior"
    unet_cfg = SD21_UNET if setup == "sd21" else EMBEDDED_LIKE_UNET
    max_len = 77 if setup == "sd21" else 32
    tokenizer = letter_tokenizer(tempfile.mkdtemp(), max_len)
    with torch.device(device):  # initialise on the device: SD's random init on CPU takes half a minute
        unet = UNet2DConditionModel(**unet_cfg)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=unet_cfg["cross_attention_dim"], intermediate_size=256,
            num_hidden_layers=1 if setup == "sd21" else 3, num_attention_heads=8 if setup == "sd21" else 4, max_position_embeddings=max_len,
            bos_token_id=0, eos_token_id=1, pad_token_id=1))
        vae = AutoencoderKL(**SD_VAE) if setup == "sd21" else None
    # DiffusionPrior casts to dtype itself
    prior = DiffusionPrior(unet, text_encoder, tokenizer, DDPMScheduler(**SD_SCHEDULER), vae, device=device,
                           dtype=dtype, name=setup)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    what = (f"SD 2.1-base UNet ({params:.0f}M) + SD VAE, random" if setup == "sd21"
            else f"embedded-like pixel UNet ({params:.1f}M), random (embedded prior not shipped yet)")
    return prior, what


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_methods(prior, methods: list[str] | dict[str, tuple[str, dict]], batch: int, rounds: int, warmup: int,
                 device: str, prompt: str = "a red cube on top of a blue sphere", raw: dict | None = None
                 ) -> dict[str, float]:
    """Median seconds per text-to-2D iteration (guidance + backward + both optimisers) of each method, timed
    round-robin so that load changes hit every method alike. `methods`: names, or label → (name, Config options);
    `raw`, if given, receives every timed round per label."""
    from dreammapping.guidance import METHODS

    specs = methods if isinstance(methods, dict) else {name: (name, {}) for name in methods}
    tags = (["front", "side", "back", "overhead"] * batch)[:batch]
    emb = prior.encode_text(prompt).for_views(tags)
    runners = {}
    for label, (name, extra) in specs.items():
        method = METHODS[name](prior, METHODS[name].Config(guidance_scale=7.5, **extra))
        image = torch.rand(batch, 3, prior.resolution, prior.resolution, device=device).requires_grad_(True)
        runners[label] = (method, image, torch.optim.Adam([image], lr=0.01),
                          method.optimizer_config().build(method.parameters()))
    times: dict[str, list[float]] = {label: [] for label in specs}
    for r in range(warmup + rounds):
        for label, (method, image, image_opt, method_opt) in runners.items():
            _sync(device)
            start = time.perf_counter()
            out = method(image, emb, r, warmup + rounds)
            (out.loss + out.aux_loss).backward()
            image_opt.step()
            image_opt.zero_grad(set_to_none=True)
            if method_opt is not None:
                method_opt.step()
                method_opt.zero_grad(set_to_none=True)
            _sync(device)
            if r >= warmup:
                times[label].append(time.perf_counter() - start)
    if raw is not None:
        raw.update(times)
    return {label: statistics.median(ts) for label, ts in times.items()}


def table(title: str, results: dict[str, float]) -> str:
    base = results["sds"]
    lines = [f"**{title}**", "", "| method | ms / iteration | × SDS |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {1000 * t:.0f} | {t / base:.2f} |" for name, t in results.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (CPU: 3 timed, 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--setups", default="embedded,sd21")
    parser.add_argument("--methods", default="sds,vdm,csd,nfsd,ism,vsd")
    parser.add_argument("--devices", default=None, help="comma list; default cpu, plus cuda when available")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a busy shared machine 1 is far steadier: OpenMP spin-waits)")
    args = parser.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # fp32-built models cast to fp16 on purpose
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    methods = args.methods.split(",")
    if "sds" not in methods:
        methods.insert(0, "sds")
    for device in devices:
        for setup in args.setups.split(","):
            cuda = device.startswith("cuda")
            dtype = torch.float16 if cuda else torch.float32
            batch = 4 if (cuda or setup == "embedded") else 1
            rounds = args.rounds or ((10 if cuda else 3) if args.quick else (30 if cuda else 5))
            warmup = 3 if cuda else 1
            torch.manual_seed(0)
            prior, what = build_prior(setup, device, dtype)
            results = time_methods(prior, methods, batch, rounds, warmup, device)
            name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
            print(table(f"{what} — {name}, batch {batch}, {prior.resolution}² images, {str(dtype)[6:]}, "
                        f"median of {rounds} after {warmup} warm-up", results), flush=True)
            print()
            del prior
            if cuda:
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
