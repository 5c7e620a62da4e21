"""Text-to-2D by score distillation: optimise one image directly with any guidance method.

The optimised tensor is the model-space image itself — pixels (as 2x − 1) for a pixel-space prior, latents for a
latent prior (no VAE encoder in the loop; decoded once at the end) — updated by Adam with the method's gradient,
while the method's own parameters (VDM's Mψ, VSD's LoRA) are trained by their optimiser. The paper shows VDM+DCA
on text-to-2D as well.

    dreammapping text2img "a red cube" --method vdm --steps 500 --out cube.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import Tensor

from dreammapping.devices import check_device
from dreammapping.errors import EXIT_EMPTY_PROMPT, EXIT_OUTPUT, EXIT_USAGE, ConfigError
from dreammapping.files import atomic_path, check_writable_folder, describe_write_error
from dreammapping.guidance import METHODS
from dreammapping.priors import DiffusionPrior, PriorNotFoundError
from dreammapping.resources import require, text2img_bytes
from dreammapping.toyworld.grammar import content_words


def text2img(prompt: str, method: str = "vdm", prior="embedded", steps: int = 500, lr: float = 0.03, seed: int = 0,
             batch_size: int = 1, guidance_scale: float | None = None, config=None, device=None,
             callback=None, snapshot_every: int = 0, on_snapshot=None, init: Tensor | None = None,
             frozen: bool = False) -> Tensor:
    """Optimise `batch_size` images for `prompt`; returns them as [B,3,R,R] in [0,1].

    `prior` is a DiffusionPrior or anything `DiffusionPrior.from_pretrained` accepts; `config` a method Config
    (overrides `guidance_scale`); `callback(step, out)` is called after every step with the GuidanceOutput;
    `on_snapshot(steps_done, images [B,3,R,R] in [0,1])` after every `snapshot_every` steps (0: never), so that
    metric-vs-step curves come from the run itself. `init` [B,3,R,R] in [0,1]: the images to start from (default:
    mid-grey plus a little noise); `frozen`: the images never move and only the method's own parameters train
    (VDM's operator on a point-mass render distribution: docs/operator_ability.md).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty" if isinstance(prompt, str) else
                         f"the prompt must be a string, got {prompt!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    scale = config.guidance_scale if config is not None else guidance_scale
    if scale is not None and not (math.isfinite(scale) and scale > 0):  # NaN would give a black image, silently
        raise ValueError(f"guidance scale must be a finite number > 0, got {scale}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be ≥ 0 and batch_size ≥ 1, got {steps} and {batch_size}")
    if not isinstance(prior, DiffusionPrior):
        prior = DiffusionPrior.from_pretrained(prior, device=device)
    cls = METHODS[method]
    if config is None:
        config = cls.Config(guidance_scale=guidance_scale)
    torch.manual_seed(seed)
    guidance = cls(prior, config)
    emb = prior.encode_text(prompt, view_dependent=False).for_views(batch_size)
    with torch.no_grad():
        if init is None:  # start from a mid-grey image
            z0 = prior.encode_images(torch.full((batch_size, 3, prior.resolution, prior.resolution), 0.5))
            z0 = z0 + 0.1 * torch.randn_like(z0)
        else:
            if init.shape != (batch_size, 3, prior.resolution, prior.resolution):
                raise ValueError(f"init must be [{batch_size},3,{prior.resolution},{prior.resolution}], "
                                 f"got {list(init.shape)}")
            z0 = prior.encode_images(init.to(prior.device))
    z = z0.clone().requires_grad_(True)
    image_opt = torch.optim.Adam([z], lr=lr)
    method_opt = guidance.optimizer_config().build(guidance.parameters())
    for step in range(steps):
        out = guidance.distill(z, emb, step, steps)
        image_opt.zero_grad(set_to_none=True)
        if method_opt is not None:
            method_opt.zero_grad(set_to_none=True)
        (out.loss + out.aux_loss).backward()
        if not frozen:
            image_opt.step()
        if method_opt is not None:
            method_opt.step()
        if not prior.is_latent:
            with torch.no_grad():
                z.clamp_(-1.0, 1.0)
        if callback is not None:
            callback(step, out)
        if on_snapshot is not None and snapshot_every > 0 and (step + 1) % snapshot_every == 0:
            with torch.no_grad():
                on_snapshot(step + 1, prior.decode(z.detach()))
    return prior.decode(z.detach())


def cli_text2img(argv: list[str]) -> int:
    """`dreammapping text2img PROMPT [--method vdm] [--prior embedded] [--steps N] [--out img.png]`."""
    parser = argparse.ArgumentParser(prog="dreammapping text2img", description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt")
    parser.add_argument("--method", default="vdm", help="sds, vdm, csd, nfsd, ism or vsd (default vdm)")
    parser.add_argument("--prior", default="embedded", help='"embedded", a diffusers folder or a hub id')
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="text2img.png")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its one-line message; hand back its code instead of exiting
        return int(e.code or 0)

    def fail(message: str, code: int = EXIT_USAGE) -> int:
        print(f"dreammapping text2img: error: {message}", file=sys.stderr)
        return code

    # every value and the output path are checked before minutes of optimisation, not after
    if not args.prompt.strip():
        return fail("the prompt is empty")
    if args.method not in METHODS:
        return fail(f"unknown method {args.method!r}; choose one of: {', '.join(METHODS)}")
    if args.guidance_scale is not None and not (math.isfinite(args.guidance_scale) and args.guidance_scale > 0):
        return fail(f"--guidance-scale must be a finite number > 0, got {args.guidance_scale}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        return fail(f"--lr must be a finite number > 0, got {args.lr}")
    if args.steps < 0 or args.batch_size < 1:
        return fail("--steps must be ≥ 0 and --batch-size ≥ 1")
    if args.prior == "embedded" and not content_words(args.prompt):  # as generate: it would run with no prompt
        return fail(f"the embedded prior knows no word of {args.prompt[:80]!r}: it draws toy shapes (cube, sphere, "
                    "cone, cylinder, torus) in colours, e.g. \"a red cube\"", EXIT_EMPTY_PROMPT)
    try:
        if args.device is not None:
            check_device(args.device)
        # one memory estimate before the prior is loaded: the embedded prior works at 32², SD's latents at 64²
        require(text2img_bytes(args.batch_size, 32 if args.prior == "embedded" else 64),
                f"--batch-size {args.batch_size}", "lower --batch-size", args.device or "cpu")
    except ConfigError as err:
        return fail(str(err))
    try:
        image_format(args.out)
        check_writable_folder(Path(args.out).parent)
    except ValueError as err:
        return fail(str(err))
    except OSError as err:
        return fail(describe_write_error(err, args.out), EXIT_OUTPUT)
    try:
        prior = DiffusionPrior.from_pretrained(args.prior, device=args.device)
        cut = prior.prompt_overflow(args.prompt, view_dependent=False)
        if cut:
            print(f"dreammapping text2img: warning: {cut}", file=sys.stderr)
        images = text2img(args.prompt, args.method, prior, args.steps, args.lr, args.seed, args.batch_size,
                          args.guidance_scale, device=args.device)
    except PriorNotFoundError as err:
        return fail(str(err))
    try:
        save_image_grid(images, args.out)
    except OSError as err:
        return fail(describe_write_error(err, args.out), EXIT_OUTPUT)
    print(f"wrote {args.out}")
    return 0


def image_format(path: str | Path) -> str:
    """PIL's format name for the file's extension (the atomic writer's temporary has none); ValueError if unknown."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    if suffix not in formats:
        raise ValueError(f"{path}: unknown image extension {suffix!r}; use .png or .jpg")
    return formats[suffix]


def save_image_grid(images: Tensor, path: str | Path) -> None:
    """[B,3,H,W] in [0,1] → one image file (format from the extension), images side by side; atomic."""
    from PIL import Image

    row = torch.cat(list(images.detach().float().cpu().clamp(0, 1)), dim=2)  # [3,H,B·W]
    array = (row.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=image_format(path))
