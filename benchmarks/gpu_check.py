"""The paper preset on a GPU, measured: speed, memory, render parity and what torch.compile would buy.

    python benchmarks/gpu_check.py --out runs/gpu_check            # on a CUDA machine (scripts/gpu_check.sh)
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check  # the same code path at toy size on the CPU

1. Builds Stable Diffusion 2.1-base–*architecture* models with random weights (UNet 865M, VAE, OpenCLIP-H-sized
   text encoder; nothing is downloaded) and a Shap-E–architecture pipeline, and saves them as diffusers folders.
2. Runs `generate --preset paper` on them for `--iterations` steps (200) with the gsplat rasterizer: it/s, peak GPU
   memory, and the projected time of the preset's 5000 steps (set-up + outputs measured, steps extrapolated).
   The weights are random, so only the timing means anything; Shap-E's random object may have no surface, in
   which case the run starts from the preset's fallback sphere (the table says which).
3. gsplat vs the torch backend on one scene with opacities over their full range (the unit test clamps them to
   ≤ 0.33): image and alpha differences, gradient cosines.
4. Eager vs `torch.compile` for the UNet (forward, fp16, the CFG batch), the VAE encoder (forward + backward, the
   4 views at 512²) and Mψ (forward + backward; mode "reduce-overhead", i.e. CUDA graphs): time per call, speed-up,
   compile time and the largest output difference.

`--dry-run` swaps in tiny configs (64² renders, 8² latents), the torch rasterizer against the dense reference, and
torch.compile's "eager" backend (Dynamo tracing only: no C++/Triton build), so every step above runs on a CPU in
about a minute. The printed table is markdown; `--out` also gets gpu_check.json and the run folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dreammapping.testing import letter_tokenizer

GOAL_MINUTES = 5.0  # per prompt on an H100/H200-class GPU (issue 14); the paper reports ~15 min on an A100


@dataclass
class Sizes:
    """What differs between the GPU run and the dry run; the code path is the same."""

    resolution: int  # rendered side (the paper preset's 512)
    iterations: int
    num_points: int
    render_n: int  # Gaussians in the render-parity scene
    render_size: int
    render_backends: tuple[str, str]  # (under test, reference)
    compile_backend: str  # torch.compile backend
    repeats: int
    turntable: tuple[int, int]  # (size, frames) of the run's outputs
    full: bool  # SD 2.1-base / Shap-E architectures (else tiny ones)


def gpu_sizes(args) -> Sizes:
    return Sizes(resolution=512, iterations=args.iterations, num_points=50_000, render_n=20_000, render_size=512,
                 render_backends=("gsplat", "torch"), compile_backend="inductor", repeats=args.repeats,
                 turntable=(512, 120), full=True)


def dry_sizes(args) -> Sizes:
    return Sizes(resolution=64, iterations=min(args.iterations, 4), num_points=1000, render_n=300, render_size=48,
                 render_backends=("torch", "dense"), compile_backend="eager", repeats=2, turntable=(32, 3),
                 full=False)


# ================================================================================================ models
def build_sd(folder: Path, full: bool, device: str) -> Path:
    """SD 2.1-base's architecture (configs as published in its model card's diffusers folder) with random weights,
    saved in float16; or a tiny latent model of the same layout for the dry run."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    max_length = 77 if full else 24
    tokenizer = letter_tokenizer(folder / "_vocab", max_length)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes for 1.2B parameters
        if full:
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512))
            unet = UNet2DConditionModel(
                sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, sample_size=512, scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        else:
            text_encoder = CLIPTextModel(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1,
                pad_token_id=1))
            unet = UNet2DConditionModel(
                sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
            vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 4, 8, 8), norm_num_groups=4,
                layers_per_block=1, sample_size=64, scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    dtype = torch.float16 if full else torch.float32
    pipe = StableDiffusionPipeline(vae=vae.to(dtype), text_encoder=text_encoder.to(dtype), tokenizer=tokenizer,
                                   unet=unet.to(dtype), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_shap_e(folder: Path, full: bool, device: str) -> Path:
    """Shap-E's text-to-3D architecture (prior transformer, CLIP ViT-L text encoder, STF renderer) with random
    weights, or a tiny one."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    max_length = 77 if full else 24
    tokenizer = letter_tokenizer(folder / "_vocab", max_length)
    with torch.device(device):
        if full:
            text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, projection_dim=768))
            prior = PriorTransformer(num_attention_heads=16, attention_head_dim=64, num_layers=24,
                                     embedding_dim=1024, num_embeddings=1024, additional_embeddings=0,
                                     time_embed_act_fn="gelu", norm_in_type="layer", encoder_hid_proj_type=None,
                                     added_emb_type=None, time_embed_dim=4096, embedding_proj_dim=768,
                                     clip_embed_dim=2048)
            renderer = ShapERenderer()  # diffusers' defaults are Shap-E's: 4 MLP layers of 256 from a 1024² latent
        else:
            text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
                vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1,
                pad_token_id=1, projection_dim=16))
            prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=1, embedding_dim=16,
                                     num_embeddings=32, additional_embeddings=0, time_embed_act_fn="gelu",
                                     norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type=None,
                                     time_embed_dim=32, embedding_proj_dim=16, clip_embed_dim=32)
            renderer = ShapERenderer(param_shapes=((8, 93), (8, 8), (8, 8), (8, 8)), d_latent=16, d_hidden=8)
    scheduler = HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                      use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)
    ShapEPipeline(prior=prior, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                  shap_e_renderer=renderer).save_pretrained(folder)
    return folder


# ================================================================================================ 2. the preset
def run_preset(sd: Path, shap_e: Path, out: Path, sizes: Sizes, device: str) -> dict:
    from dreammapping import train as T

    overrides = dict(prior=str(sd), out=str(out), iterations=sizes.iterations, device=device, overwrite=True,
                     checkpoint_every=0, turntable_size=sizes.turntable[0], turntable_frames=sizes.turntable[1],
                     init_options={"shap_e_model": str(shap_e)}, render_backend="gsplat" if sizes.full else "torch")
    if not sizes.full:  # toy sizes (the preset's 512² and 50k would take minutes on a CPU)
        overrides.update(resolution=sizes.resolution, num_points=sizes.num_points, batch=2,
                         init_options={"shap_e_model": str(shap_e), "shap_e_steps": 2, "shap_e_grid": 16})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = T.generate("a DSLR photo of a corgi", preset="paper", progress=False, **overrides)
    m = result.metrics
    fixed = m["wall_seconds"] - m["train_seconds"]  # prior + Shap-E loading, init, outputs
    preset_steps = T.PRESETS["paper"]().iterations
    return {
        "iterations": m["iterations"], "it_per_s": m["it_per_s"], "train_seconds": m["train_seconds"],
        "setup_and_outputs_seconds": round(fixed, 1), "init_used": m["init_used"], "gaussians": m["gaussians"],
        "resolution": m["resolution"], "batch": m["batch"],
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "projected_minutes_5000": round((fixed + preset_steps / max(m["it_per_s"], 1e-9)) / 60, 2),
    }


# ================================================================================================ 3. render parity
def render_parity(sizes: Sizes, device: str) -> dict:
    from dreammapping.cameras import sample_orbit
    from dreammapping.gaussians import Gaussians
    from dreammapping.render import rasterize

    g = torch.Generator().manual_seed(0)
    n = sizes.render_n
    radius = 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)  # uniform in a ball of the preset's object radius
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * radius
    spacing = 0.5 * (4 / 3 * math.pi / n) ** (1 / 3)
    scene = Gaussians(
        means=means, log_scales=torch.log(spacing * (0.3 + 0.7 * torch.rand(n, 3, generator=g))),
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.empty(n).uniform_(-6.0, 6.0, generator=g),  # opacities 0.0025 … 0.9975: full range
        sh=0.5 * torch.randn(n, 1, 3, generator=g))
    opacity_range = [float(scene.opacities.min()), float(scene.opacities.max())]
    cams = sample_orbit(4, sizes.render_size, sizes.render_size, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(4, sizes.render_size, sizes.render_size, 3, generator=g)
    outs = {}
    for backend in sizes.render_backends:
        live = scene.map(lambda x: x.detach().clone()).to(device).requires_grad_(True)
        out = rasterize(live, cams.to(device), backend=backend)
        (out.rgb * weights.to(device)).sum().backward()
        outs[backend] = (out.rgb.detach().float().cpu(), out.alpha.detach().float().cpu(),
                         {k: p.grad.detach().float().cpu().flatten() for k, p in live.params().items()})
    (rgb_a, alpha_a, grads_a), (rgb_b, alpha_b, grads_b) = (outs[b] for b in sizes.render_backends)
    cos = {k: float(torch.nn.functional.cosine_similarity(grads_a[k], grads_b[k], dim=0)) for k in grads_a}
    return {"backends": "{} vs {}".format(*sizes.render_backends), "gaussians": n, "size": sizes.render_size,
            "opacity_range": opacity_range,
            "rgb_max_abs": float((rgb_a - rgb_b).abs().max()), "rgb_mean_abs": float((rgb_a - rgb_b).abs().mean()),
            "alpha_max_abs": float((alpha_a - alpha_b).abs().max()), "grad_cosine": cos}


# ================================================================================================ 4. compile
def _time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_compile(name: str, make_call, module, sizes: Sizes, device: str, mode: str | None = None) -> dict:
    """Eager vs torch.compile(module) on the same inputs: seconds per call, speed-up, compile time, max |Δ|."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    eager_out = make_call(module)().detach().clone()
    eager = _time(make_call(module), sizes.repeats, sync)
    if sizes.compile_backend != "inductor":
        mode = None  # modes belong to inductor
    try:
        compiled_module = torch.compile(module, backend=sizes.compile_backend, mode=mode)
        start = time.perf_counter()
        compiled_out = make_call(compiled_module)().detach().clone()  # CUDA graphs reuse their output memory
        sync()
        compile_seconds = time.perf_counter() - start
        compiled = _time(make_call(compiled_module), sizes.repeats, sync)
        diff = float((compiled_out.float() - eager_out.float()).abs().max())
        scale = float(eager_out.float().abs().max())
    except Exception as e:  # report, do not stop the other checks
        return {"name": name, "eager_ms": eager * 1e3, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    return {"name": name, "mode": mode or "default", "eager_ms": eager * 1e3, "compiled_ms": compiled * 1e3,
            "speedup": eager / compiled, "compile_seconds": compile_seconds, "max_abs_diff": diff,
            "max_abs_output": scale}


def compile_checks(sd: Path, sizes: Sizes, device: str) -> list[dict]:
    from dreammapping.guidance.ulite import ULite
    from dreammapping.priors import DiffusionPrior

    prior = DiffusionPrior.from_pretrained(str(sd), device=device)
    batch, side = 4, prior.resolution // prior.downsample
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2 * batch, prior.latent_channels, side, side, generator=g).to(device, prior.dtype)
    t = torch.randint(20, 980, (2 * batch,), generator=g).to(device)
    hidden = prior.text_embedding("a corgi").expand(2 * batch, -1, -1).contiguous()

    def unet_call(unet):
        def call():
            with torch.no_grad():
                return unet(z, t, encoder_hidden_states=hidden).sample
        return call

    x = torch.rand(batch, 3, prior.resolution, prior.resolution, generator=g).to(device, prior.dtype)

    class Encoder(torch.nn.Module):  # what encode_images runs: encoder → quant_conv → the posterior's mean
        def __init__(self, vae):
            super().__init__()
            self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

        def forward(self, images):
            moments = self.encoder(images)
            moments = self.quant_conv(moments) if self.quant_conv is not None else moments
            return moments.chunk(2, dim=1)[0]

    def vae_call(encoder):
        def call():
            images = x.detach().requires_grad_(True)
            mean = encoder(images * 2 - 1)
            mean.float().square().mean().backward()
            return images.grad
        return call

    operator = ULite.for_prior(prior).to(device)
    eps = torch.randn(batch, prior.latent_channels, side, side, generator=g).to(device)

    def operator_call(op):
        def call():
            if device == "cuda":  # one CUDA-graph step per call (forward and backward), as in a training loop
                torch.compiler.cudagraph_mark_step_begin()
            for p in op.parameters():
                p.grad = None
            out = op(eps)
            (out - eps).square().mean().backward()
            return out.detach()
        return call

    results = [
        compare_compile("UNet fwd (fp16, CFG batch 8)" if sizes.full else "UNet fwd (tiny)", unet_call, prior.unet,
                        sizes, device),
        compare_compile("VAE encoder fwd+bwd (4 views)" if sizes.full else "VAE encoder fwd+bwd (tiny)", vae_call,
                        Encoder(prior.vae), sizes, device),
        compare_compile("Mψ fwd+bwd (CUDA graphs)" if device == "cuda" else "Mψ fwd+bwd", operator_call, operator,
                        sizes, device, mode="reduce-overhead"),
    ]
    return results


# ================================================================================================ report
def report(info: dict) -> str:
    what = "dry run: tiny models, CPU" if info["dry_run"] else "SD 2.1-base architecture, random weights"
    lines = [f"# gpu_check — {info['device']} ({what})", ""]
    r = info.get("preset")
    if r:
        goal = "dry run: not a measurement" if info["dry_run"] else \
            ("meets" if r["projected_minutes_5000"] <= GOAL_MINUTES else "misses") + f" the {GOAL_MINUTES:.0f}-min goal"
        lines += ["## paper preset", "",
                  "| steps | it/s | peak GPU memory | set-up + outputs | projected 5000 steps | init | Gaussians "
                  "| render |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {r['iterations']} | {r['it_per_s']:.2f} | "
                  f"{'–' if r['peak_gpu_gb'] is None else str(r['peak_gpu_gb']) + ' GB'} | "
                  f"{r['setup_and_outputs_seconds']:.0f} s | **{r['projected_minutes_5000']:.1f} min** "
                  f"({goal}) | {r['init_used']} | {r['gaussians']} | "
                  f"{r['batch']} × {r['resolution']}² |", "",
                  "The projection extrapolates these steps' speed: the cloud has not densified yet (that starts at "
                  "step 100 and grows it until 3000), so the Gaussian side of later steps costs more.", ""]
    p = info.get("render")
    if p:
        cos = ", ".join(f"{k} {v:.4f}" for k, v in p["grad_cosine"].items())
        lines += ["## render parity, full-range opacities", "",
                  "| backends | Gaussians | size | opacities | rgb max / mean abs diff | alpha max abs diff "
                  "| gradient cosine |",
                  "|---|---|---|---|---|---|---|",
                  f"| {p['backends']} | {p['gaussians']} | {p['size']}² | {p['opacity_range'][0]:.4f}–"
                  f"{p['opacity_range'][1]:.4f} | {p['rgb_max_abs']:.2e} / {p['rgb_mean_abs']:.2e} | "
                  f"{p['alpha_max_abs']:.2e} | {cos} |", ""]
    c = info.get("compile")
    if c:
        lines += [f"## eager vs torch.compile (backend {info['compile_backend']})", "",
                  "| module | mode | eager (ms) | compiled (ms) | speed-up | compile time (s) "
                  "| max abs diff / max abs |",
                  "|---|---|---|---|---|---|---|"]
        for row in c:
            if "error" in row:
                lines.append(f"| {row['name']} | – | {row['eager_ms']:.2f} | failed: {row['error']} | | | |")
            else:
                lines.append(f"| {row['name']} | {row['mode']} | {row['eager_ms']:.2f} | {row['compiled_ms']:.2f} | "
                             f"{row['speedup']:.2f}× | {row['compile_seconds']:.1f} | "
                             f"{row['max_abs_diff']:.2e} / {row['max_abs_output']:.2e} |")
        lines.append("")
    lines.append(f"total {info['total_seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: the same code path")
    parser.add_argument("--out", default="runs/gpu_check", help="folder for the models, the run and gpu_check.json")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per compile comparison")
    parser.add_argument("--skip", nargs="*", default=[], choices=["preset", "render", "compile"])
    args = parser.parse_args(argv)

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run to exercise the code path on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    sizes = dry_sizes(args) if args.dry_run else gpu_sizes(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    name = "cpu" if args.dry_run else torch.cuda.get_device_name()
    info: dict = {"device": name, "dry_run": args.dry_run, "compile_backend": sizes.compile_backend,
                  "torch": torch.__version__}
    print(f"gpu_check on {name}, torch {torch.__version__}: building random-weight models …", flush=True)
    sd = build_sd(out / "sd21base-random", sizes.full, device)
    shap_e = build_shap_e(out / "shap-e-random", sizes.full, device)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
    if "preset" not in args.skip:
        print(f"paper preset, {sizes.iterations} steps …", flush=True)
        info["preset"] = run_preset(sd, shap_e, out / "run", sizes, device)
        print(f"  {info['preset']}", flush=True)
    if "render" not in args.skip:
        print("render parity …", flush=True)
        info["render"] = render_parity(sizes, device)
    if "compile" not in args.skip:
        print(f"eager vs torch.compile ({sizes.compile_backend}) …", flush=True)
        info["compile"] = compile_checks(sd, sizes, device)
    info["total_seconds"] = time.perf_counter() - start
    (out / "gpu_check.json").write_text(json.dumps(info, indent=2) + "\n")
    print()
    print(report(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
