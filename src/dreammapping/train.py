"""Text → 3D Gaussians: Algorithm 1 of DreamMapping as one loop, its outputs, its Python API and its command line.

    init θ (Shap-E / sphere / ball / .ply)
    for step in 0..iterations-1:
        cameras  ← sample_orbit(batch)                      # Alg. 1 line 2, a batch of random poses
        emb      ← text embeddings for the cameras' view tags ("…, front view")
        x        ← rasterize(θ, cameras)                     # line 3, at the prior's resolution
        out      ← method(x, emb, step)                      # lines 4-13: t, ε, x_t, ε_φ, (VDM: M_ψ, λ_t of DCA)
        (out.loss + out.aux_loss).backward()                 # ∇θ L_VDM reaches θ; ∇ψ L_op reaches M_ψ only
        step θ's Adam (3DGS per-parameter lrs) and ψ's own   # lines 14-15
        densify / prune on schedule

Everything a run makes lives in one folder (default `runs/<prompt-slug>-<method>-<seed>`): `config.yaml` (fully
resolved), `loss.csv`, `checkpoint.pt` (atomic, every `checkpoint_every` steps, on Ctrl-C and at the end),
`gaussians.ply`, `turntable.mp4` / `.gif`, `views.png` and `metrics.json`. `--resume RUN` continues from the
checkpoint; a seeded run that was interrupted and resumed ends bitwise identical to one that was not (on CPU).

The config and its presets live in `dreammapping.config`, the errors and exit codes in `dreammapping.errors`, the
checkpoint in `dreammapping.checkpoint`, the run folder in `dreammapping.rundir`; the names callers use from here
(`GenerateConfig`, `build_config`, `slugify`, the errors …) are imported below.

Python: `dreammapping.generate("a red cube", iterations=200)`; command line: `dreammapping generate "a red cube"`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable

import torch
import tyro
from tqdm.auto import tqdm

from dreammapping import cameras as C
from dreammapping.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_KEYS,
    SigintFlag,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dreammapping.config import (
    DEFAULT_PRESET,
    PRESETS,
    GenerateConfig,
    GuidanceOptions,
    build_config,
    check_config,
    check_prompt_type,
    check_values,
    config_to_dict,
    default_run_dir,
    load_yaml_config,
    merge_config,
    method_class,
    method_config,
    preset_config,
    run_dir_of,
    save_yaml_config,
    slugify,
    unknown_prompt_words,
)
from dreammapping.devices import check_device, resolve_device, resolve_dtype, resolve_threads
from dreammapping.errors import (
    EXIT_CODE_HELP,
    EXIT_DIVERGED,
    EXIT_EMPTY_PROMPT,
    EXIT_INIT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_PRIOR,
    EXIT_RUN_EXISTS,
    EXIT_UNKNOWN_METHOD,
    EXIT_UNKNOWN_PRESET,
    EXIT_USAGE,
    ConfigError,
    DivergedError,
    EmptyPromptError,
    GenerateError,
    InitFailedError,
    Interrupted,
    OutputError,
    PriorError,
    RunExistsError,
    UnknownMethodError,
    UnknownPresetError,
)
from dreammapping.export import save_ply, save_turntable, save_view_grid, turntable_frames
from dreammapping.files import atomic_write_text, is_disk_full
from dreammapping.gaussians import Gaussians, make_optimizer, update_learning_rates
from dreammapping.init import InitError, initialise
from dreammapping.priors import DiffusionPrior, NonFiniteOutputError, PriorNotFoundError
from dreammapping.render import rasterize
from dreammapping.rundir import (
    PREVIOUS_RUN,
    RUN_FILES,
    LossLog,
    discard_previous_run,
    io_failure,
    prepare_run_dir,
    recover_previous_run,
    resume_config_path,
    set_previous_run_aside,
)
from dreammapping.threads import auto_threads


@dataclass
class GenerateResult:
    run_dir: Path  # the run folder
    ply: Path  # gaussians.ply (standard 3DGS layout)
    turntable_mp4: Path | None  # None when no video encoder was available
    turntable_gif: Path
    views: Path  # views.png: front, side, back, overhead
    config: Path  # config.yaml, fully resolved
    metrics: dict  # what metrics.json holds
    gaussians: Gaussians  # the final scene (detached, CPU)


def background_colors(kind: str, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[B,3] background per view: white, or a random colour per view (discourages a white halo of Gaussians)."""
    if kind == "white":
        return torch.ones(batch, 3)
    return torch.rand(batch, 3, generator=generator)


# ================================================================================================ the run
def train(cfg: GenerateConfig, run_dir: Path, resume: bool = False, progress: bool = True,
          callback: Callable[[int, dict], bool | None] | None = None, log: Callable[[str], None] | None = None
          ) -> GenerateResult:
    """Run (or continue) Algorithm 1 for `cfg` in `run_dir`; writes every output and returns them."""
    check_config(cfg)  # first: a bad config is a one-line error, before its threads are used (or the cores sampled)
    threads = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(cfg.threads))
    run_dir = Path(run_dir)
    try:
        return _train(cfg, run_dir, resume, progress, callback, log or (lambda msg: print(msg, file=sys.stderr)))
    except BaseException as e:
        with contextlib.suppress(OSError):  # --overwrite: the old run comes back if the new one has no checkpoint
            recover_previous_run(run_dir)
        if isinstance(e, OSError):  # a full disk, a folder made read-only mid-run: one line, and what is kept
            raise OutputError(io_failure(e, run_dir)) from None
        raise
    finally:
        torch.set_num_threads(threads)  # a library call leaves the caller's setting as it found it


def _train(cfg: GenerateConfig, run_dir: Path, resume: bool, progress: bool,
           callback: Callable[[int, dict], bool | None] | None, log: Callable[[str], None]) -> GenerateResult:
    wall_start = time.perf_counter()

    # 1. The run folder (`train` has checked the config). Nothing of an old run is touched until everything below
    #    (prior, init, checkpoint) is known to work.
    words = unknown_prompt_words(cfg)
    if words:
        log(f"warning: the embedded prior does not know {', '.join(map(repr, words))}; it will ignore "
            f"{'it' if len(words) == 1 else 'them'} (it knows toy shapes, colours and 'on top of' / 'next to')")
    checkpoint_path = run_dir / CHECKPOINT
    if resume:
        _check_checkpoint_exists(checkpoint_path)
    previous_run = prepare_run_dir(run_dir, fresh=not resume, overwrite=cfg.overwrite)
    ckpt = _checked_checkpoint(cfg, checkpoint_path) if resume else None

    # 2. Seeds, the prior, the prompt's embeddings, the guidance method and its own optimiser (Mψ, LoRA).
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # cameras, backgrounds and init draw from this one
    try:
        prior = DiffusionPrior.from_pretrained(cfg.prior, device=device,
                                               dtype=resolve_dtype(cfg.dtype, device, cfg.prior))
    except PriorNotFoundError as e:
        raise PriorError(str(e).splitlines()[0]) from None
    if cfg.threads == 0 and prior.device.type == "cpu":  # auto: more than one thread only where measured faster
        torch.set_num_threads(auto_threads(prior, cfg.batch, torch.get_num_threads(), log))
    resolution = cfg.resolution or prior.resolution
    compute = f"{prior.device}, {str(prior.dtype).removeprefix('torch.')}"
    if prior.device.type == "cpu":
        threads = torch.get_num_threads()
        compute += f", {threads} thread{'s' * (threads != 1)}"
    log(f"{'resuming' if resume else 'run'} {run_dir}: prior {cfg.prior} ({prior.resolution}², "
        f"{'latent' if prior.is_latent else 'pixel'} space, {compute}), method {cfg.method}, "
        f"{cfg.iterations} steps × {cfg.batch} views at {resolution}²")
    cut = prior.prompt_overflow(cfg.prompt)
    if cut:
        log(f"warning: {cut}")
    text = prior.encode_text(cfg.prompt, cfg.negative_prompt, view_dependent=True)
    method = method_class(cfg.method)(prior, method_config(cfg))
    method_params = list(method.parameters())
    method_optimizer = method.optimizer_config().build(method_params) if method_params else None

    # 3. θ₀ and its optimiser: initialised, or (resume) the checkpoint's, with every optimiser, statistic and RNG.
    start, train_seconds, window = 0, 0.0, {"loss": 0.0, "aux": 0.0, "n": 0}
    strategy = dataclasses.replace(cfg.density)  # a fresh copy: the strategy keeps running statistics
    if resume:  # no initialisation: the checkpoint holds θ and the generator's state (Shap-E would cost minutes)
        gaussians = Gaussians(**{k: v.to(device) for k, v in ckpt["gaussians"].items()}).requires_grad_(True)
        init_used, init_reason = ckpt["init_used"], ckpt["init_reason"]
    else:
        try:
            init = initialise(cfg.init, cfg.num_points, cfg.init_options, cfg.prompt, sh_degree=cfg.sh_degree,
                              generator=generator, device=device)
        except InitError as e:
            raise InitFailedError(str(e)) from None
        gaussians = init.gaussians.requires_grad_(True)
        init_used, init_reason = init.used, init.reason
        log(f"init: {init.reason}")
    optimizer = make_optimizer(gaussians, cfg.lr)
    if resume:
        start, train_seconds, window = _restore(ckpt, optimizer, method_params, method_optimizer, strategy,
                                                generator, device)
        log(f"continuing from the checkpoint at step {start}")

    # 4. Everything is loaded: only now does the run write (config.yaml first) and an old run make way for it.
    set_previous_run_aside(run_dir, previous_run)
    save_yaml_config(run_dir / "config.yaml", cfg)

    def checkpoint(step: int) -> None:
        save_checkpoint(checkpoint_path, {
            "step": step, "gaussians": {k: v.detach().cpu() for k, v in gaussians.params().items()},
            "optimizer": optimizer.state_dict(),
            "method": cfg.method,
            "method_params": [p.detach().cpu() for p in method_params],
            "method_optimizer": method_optimizer.state_dict() if method_optimizer is not None else {},
            "strategy": {k: (None if v is None else v.cpu()) for k, v in strategy.state_dict().items()},
            "rng": rng_state(generator), "train_seconds": train_seconds, "window": dict(window),
            "init_used": init_used, "init_reason": init_reason, "version": 1,
        })
        discard_previous_run(run_dir)  # --overwrite: the new run now has something to replace the old one with

    loss_log = LossLog(run_dir / "loss.csv", keep_before=start if resume else 0)
    bar = tqdm(total=cfg.iterations, initial=start, desc="generate", unit="it", dynamic_ncols=True,
               disable=not progress, leave=True, file=sys.stderr)
    last_loss, last_good = float("nan"), start if resume else None
    resume_command = f"dreammapping generate --resume {shlex.quote(str(run_dir))}"

    # 5. Algorithm 1.
    with SigintFlag() as interrupted:
        for step in range(start, cfg.iterations):
            if interrupted.set:
                checkpoint(step)
                bar.close()
                raise Interrupted(f"interrupted at step {step}/{cfg.iterations}; checkpoint saved. "
                                  f"Resume with: {resume_command}")
            t0 = time.perf_counter()
            update_learning_rates(optimizer, step, cfg.lr, cfg.iterations)  # position lr decays log-linearly

            # 5a. a batch of cameras and the prompt for each one's view
            cams = C.sample_orbit(cfg.batch, resolution, resolution, cfg.orbit, generator).to(device)
            emb = text.for_views(cams.view_tags, azimuth=cams.azimuth)  # azimuths: blended / Perp-Neg prompts
            background = background_colors(cfg.background, cfg.batch, generator).to(device)

            # 5b. render, score with the prior, back-propagate
            render = rasterize(gaussians, cams, background=background, backend=cfg.render_backend)
            images = render.rgb.permute(0, 3, 1, 2)  # [B,H,W,3] → [B,3,H,W]
            try:
                out = method(images, emb, step, cfg.iterations)
            except NonFiniteOutputError as e:  # not finite even in float32 (or fallback off): name it, keep θ
                bar.close()
                raise DivergedError(f"stopped at step {step}: {e}; resume with: {resume_command}") from None
            loss = out.loss + out.aux_loss
            loss.backward()

            # 5c. stop before a NaN or an explosion reaches the parameters
            loss_value = float(out.loss.detach())
            bad = _diverged(loss_value, float(out.aux_loss.detach()), gaussians, cfg.max_loss)
            if bad:
                bar.close()
                kept = (f"the last good checkpoint (step {last_good}) is kept in {checkpoint_path}"
                        if last_good is not None else "no checkpoint had been written yet")
                raise DivergedError(f"stopped at step {step}: {bad}; {kept}. Try lower learning rates or "
                                    f"guidance scale, or resume with: {resume_command}")

            # 5d. step θ and ψ, densify / prune
            optimizer.step()
            if method_optimizer is not None:
                method_optimizer.step()
            gaussians = strategy.step_post_backward(gaussians, optimizer, render, step)
            optimizer.zero_grad(set_to_none=True)
            if method_optimizer is not None:
                method_optimizer.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - t0

            # 5e. bookkeeping: loss log, progress bar, checkpoint
            window["loss"] += loss_value
            window["aux"] += float(out.aux_loss.detach())
            window["n"] += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.iterations:
                last_loss = window["loss"] / window["n"]
                loss_log.write({"step": done, "loss": last_loss, "aux_loss": window["aux"] / window["n"],
                                "gaussians": len(gaussians), "lr_means": optimizer.param_groups[0]["lr"],
                                "seconds": round(train_seconds, 3), **out.logs})
                bar.set_postfix(loss=f"{last_loss:.4g}", gaussians=len(gaussians), refresh=False)
                window = {"loss": 0.0, "aux": 0.0, "n": 0}
            bar.update(1)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iterations:
                checkpoint(done)
                last_good = done
            # 5f. a callback (live viewer, app, benchmark snapshots) sees the detached scene; returning True asks
            #     the run to stop as Ctrl-C does: a checkpoint at the next step boundary, then Interrupted
            if callback is not None and callback(done, {"loss": loss_value, "gaussians": len(gaussians),
                                                        "logs": out.logs, "iterations": cfg.iterations,
                                                        "scene": gaussians.detach(),
                                                        "train_seconds": train_seconds}):
                interrupted.set = True
    bar.close()
    loss_log.close()
    if math.isnan(last_loss) and start >= cfg.iterations:  # resumed a finished run: report its last logged loss
        last_loss = loss_log.last_loss

    # 6. The final checkpoint and the outputs.
    checkpoint(cfg.iterations)
    final = gaussians.detach().to("cpu")
    metrics = {
        "prompt": cfg.prompt, "method": cfg.method, "prior": cfg.prior, "seed": cfg.seed,
        "iterations": cfg.iterations, "resumed_from": start if resume else None,
        "train_seconds": round(train_seconds, 3),
        "it_per_s": round((cfg.iterations / train_seconds) if train_seconds > 0 else 0.0, 3),
        "final_loss": last_loss, "gaussians": len(final), "resolution": resolution, "batch": cfg.batch,
        "init_used": init_used, "init_reason": init_reason, "unknown_words": words, "device": str(device),
    }
    return write_outputs(run_dir, final, cfg, metrics, wall_start, log)


def _check_checkpoint_exists(checkpoint_path: Path) -> None:
    """RunExistsError when --resume has no checkpoint to continue from (checked before the folder is touched)."""
    try:
        missing = not checkpoint_path.is_file()
    except OSError as e:  # e.g. a name too long for the file system
        raise OutputError(f"cannot use the run folder {checkpoint_path.parent}: {e.strerror or e}") from None
    if missing:
        raise RunExistsError(f"nothing to resume: {checkpoint_path} does not exist")


def _checked_checkpoint(cfg: GenerateConfig, checkpoint_path: Path) -> dict:
    """The checkpoint to resume, after checking that it belongs to this config (method, steps)."""
    ckpt = load_checkpoint(checkpoint_path)
    if ckpt.get("method", cfg.method) != cfg.method:
        raise ConfigError(f"--resume: the checkpoint was made with method {ckpt['method']!r}, not {cfg.method!r}")
    if int(ckpt["step"]) > cfg.iterations:
        raise ConfigError(f"--resume: the checkpoint is at step {int(ckpt['step'])}, past --iterations "
                          f"{cfg.iterations}; pass --iterations {int(ckpt['step'])} or more (nothing was changed)")
    return ckpt


def _restore(ckpt: dict, optimizer, method_params, method_optimizer, strategy, generator: torch.Generator,
             device: torch.device) -> tuple[int, float, dict]:
    """Load the checkpoint's optimisers, Mψ / LoRA, strategy statistics and RNGs; → (step, train_seconds, window)."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        with torch.no_grad():
            for p, saved in zip(method_params, ckpt["method_params"], strict=True):
                p.copy_(saved)
        if method_optimizer is not None:
            method_optimizer.load_state_dict(ckpt["method_optimizer"])
        strategy.load_state_dict({k: (None if v is None else v.to(device)) for k, v in ckpt["strategy"].items()})
        set_rng_state(ckpt["rng"], generator)
        return int(ckpt["step"]), float(ckpt["train_seconds"]), dict(ckpt["window"])
    except (ValueError, RuntimeError, KeyError, TypeError) as e:  # options changed the shapes of the state
        raise ConfigError(f"--resume: the checkpoint does not fit this config ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}); nothing was changed") from None


def _diverged(loss: float, aux_loss: float, gaussians: Gaussians, max_loss: float) -> str:
    """Why this step must not be applied ('' if it may): a non-finite loss or gradient, or an exploding loss."""
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    if not math.isfinite(aux_loss):
        return f"the method's own loss is {aux_loss}"
    if loss > max_loss:
        return f"the loss exploded ({loss:.3g} > max_loss {max_loss:.3g})"
    grads = [p.grad.sum() for p in gaussians.params().values() if p.grad is not None]
    if grads and not bool(torch.isfinite(torch.stack(grads)).all()):
        return "a gradient is not finite"
    return ""


def write_outputs(run_dir: Path, gaussians: Gaussians, cfg: GenerateConfig, metrics: dict, wall_start: float,
                  log: Callable[[str], None]) -> GenerateResult:
    """gaussians.ply, turntable.mp4 / .gif, views.png, metrics.json."""
    ply = save_ply(run_dir / "gaussians.ply", gaussians)
    size = cfg.turntable_size
    frames = turntable_frames(gaussians, cfg.turntable_frames, size)  # rendered once for both files
    gif = save_turntable(run_dir / "turntable.gif", gaussians, frames=frames)
    try:
        mp4 = save_turntable(run_dir / "turntable.mp4", gaussians, frames=frames)
    except Exception as e:  # no ffmpeg: the gif is enough, say so (but a full disk is a fault of the run)
        if is_disk_full(e):
            raise
        log(f"warning: could not write turntable.mp4 ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        mp4 = None
    views = save_view_grid(run_dir / "views.png", gaussians, size=size)
    metrics = {**metrics, "wall_seconds": round(time.perf_counter() - wall_start, 3)}
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return GenerateResult(run_dir=run_dir, ply=Path(ply), turntable_mp4=mp4 and Path(mp4), turntable_gif=Path(gif),
                          views=Path(views), config=run_dir / "config.yaml", metrics=metrics, gaussians=gaussians)


# ================================================================================================ Python API
def resume_config(run_dir: str | os.PathLike, **options) -> GenerateConfig:
    """The config of the run in `run_dir` (its config.yaml), updated by `options`."""
    cfg = load_yaml_config(resume_config_path(run_dir), GenerateConfig())
    return merge_config(cfg, options, where="options")


def generate(prompt: str | None = None, *, preset: str = DEFAULT_PRESET, config: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None, progress: bool = True,
             callback: Callable[[int, dict], bool | None] | None = None, **options) -> GenerateResult:
    """Text → 3D Gaussians. `options` are GenerateConfig fields (`iterations=200`, `method="sds"`, `seed=1`, …).

    `resume=RUN` continues the run in that folder from its checkpoint (its config.yaml, updated by `options`).
    Raises a `GenerateError` subclass (one-line message, `.exit_code`) on bad input and faults.
    """
    if resume is not None:
        run_dir = Path(resume)
        cfg = resume_config(run_dir, **options)
        if prompt is not None:
            check_prompt_type(prompt)
        if prompt is not None and prompt != cfg.prompt:
            raise ConfigError(f"--resume continues {cfg.prompt!r}; leave out the prompt (or start a new run)")
    else:
        cfg = build_config(prompt, preset=preset, config_file=config, **options)
        check_values(cfg, "")  # before the run folder's name is made from it
        run_dir = run_dir_of(cfg)
    return train(cfg, run_dir, resume=resume is not None, progress=progress, callback=callback)


# ================================================================================================ command line
@dataclass
class GenerateArgs:
    """`dreammapping generate`'s flags: the config's fields (top level) plus what is not part of a run."""

    config: Annotated[GenerateConfig, tyro.conf.arg(name="", prefix_name=False)]
    preset: Annotated[str, tyro.conf.arg(help=f"named starting values: {' or '.join(PRESETS)}")] = DEFAULT_PRESET
    config_file: Annotated[str | None, tyro.conf.arg(
        name="config", help="a YAML file of options (e.g. a run's config.yaml); flags override it")] = None
    resume: Annotated[str | None, tyro.conf.arg(
        help="continue the run in this folder from its last checkpoint (its config.yaml, updated by flags)")] = None
    viewer: Annotated[bool, tyro.conf.arg(
        help="show the splat live in the browser while it trains (needs pip install -e \".[app]\")")] = False
    port: Annotated[int, tyro.conf.arg(help="port of --viewer (on 127.0.0.1)")] = 8080


def _defaults(argv: list[str]) -> GenerateArgs:
    """The defaults tyro shows and parses against: --preset, --config, --resume and --method decide them (and
    which method's options the --guidance.* flags are), so they are read before tyro parses the rest."""
    known = {"--preset": DEFAULT_PRESET, "--config": None, "--resume": None, "--method": None}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in known:
            known[name] = value if eq else (argv[i + 1] if i + 1 < len(argv) else known[name])
    preset, config_file, resume, method = known.values()
    options = {"method": method} if method is not None else {}
    if resume is not None:
        base = resume_config(resume, **options)
    else:
        base = build_config(None, preset=preset, config_file=config_file, **options)
    return GenerateArgs(config=base, preset=preset, config_file=config_file, resume=resume)


def parse_args(argv: list[str]) -> tuple[GenerateConfig, str | None]:
    """argv → (config, resume folder or None). Precedence: preset < --config file < flags (or run's config.yaml
    < flags with --resume)."""
    cfg, resume, _ = parse_cli(argv)
    return cfg, resume


def parse_cli(argv: list[str]) -> tuple[GenerateConfig, str | None, int | None]:
    """parse_args plus the live viewer's port (None without --viewer)."""
    args = tyro.cli(GenerateArgs, args=argv, default=_defaults(argv), prog="dreammapping generate",
                    description="Text → 3D Gaussian splat (DreamMapping, Algorithm 1). "
                                "Exit codes: " + ", ".join(f"{c} {why}" for c, why in EXIT_CODE_HELP.items()) + ".")
    return args.config, args.resume, (args.port if args.viewer else None)


def open_live_view(port: int):
    """--viewer: a `dreammapping.viewer.LiveView` on 127.0.0.1:port, used as train's callback."""
    try:
        from dreammapping.viewer import LiveView  # noqa: PLC0415  (viser: the optional extra [app])
    except ModuleNotFoundError as e:
        raise ConfigError(f"--viewer needs the optional package {e.name!r}: pip install -e \".[app]\"") from None
    return LiveView.serve(port=port)


def _one_line_usage_error(box: str) -> str:
    """The message of tyro's boxed usage error (its lines up to the first rule, joined), plus where help is."""
    lines = [line.strip().strip("│").strip() for line in box.strip().splitlines()[1:]]
    message = []
    for line in lines:
        if not line or set(line) <= set("─╰╯ "):
            break
        message.append(line)
    return f"{' '.join(message)} (see dreammapping generate --help)" if message else ""


def cli_generate(argv: list[str] | None = None) -> int:
    """`dreammapping generate "a red cube on top of a blue sphere" [--preset cpu|paper] [--method vdm] …`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    run_dir = view = None
    try:
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                cfg, resume, viewer_port = parse_cli(argv)
        except SystemExit as e:  # tyro printed help (to stdout) or a usage error (a box, captured here)
            code = int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
            if captured.getvalue():
                message = _one_line_usage_error(captured.getvalue())
                print(f"dreammapping generate: error: {message}" if message else captured.getvalue(),
                      file=sys.stderr, end="" if not message else "\n")
            return code
        sys.stderr.write(captured.getvalue())  # warnings, if any
        run_dir = Path(resume) if resume is not None else run_dir_of(cfg)
        view = open_live_view(viewer_port) if viewer_port is not None else None
        result = train(cfg, run_dir, resume=resume is not None, callback=view)
    except GenerateError as e:
        print(f"dreammapping generate: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        ckpt = run_dir / CHECKPOINT if run_dir is not None else None
        hint = (f"resume with: dreammapping generate --resume {shlex.quote(str(run_dir))}"
                if ckpt is not None and ckpt.is_file() else "no checkpoint was written; nothing to resume")
        print(f"dreammapping generate: interrupted; {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    m = result.metrics
    print(f"wrote {result.run_dir}: {m['gaussians']} Gaussians, {m['iterations']} steps in {m['train_seconds']:.1f} s "
          f"({m['it_per_s']:.2f} it/s), final loss {m['final_loss']:.4g}; see {result.turntable_gif} and {result.views}")
    if view is not None:
        view.linger()  # keep the final splat on screen until Enter (on a terminal)
    return EXIT_OK


__all__ = [
    "GenerateResult", "train", "write_outputs", "generate", "resume_config", "GenerateArgs", "parse_args",
    "parse_cli", "cli_generate", "open_live_view", "background_colors",
    # from their homes, for callers that import them from here
    "GenerateConfig", "GuidanceOptions", "PRESETS", "DEFAULT_PRESET", "build_config", "preset_config",
    "config_to_dict", "merge_config", "load_yaml_config", "save_yaml_config", "method_class", "method_config",
    "check_config", "slugify", "default_run_dir", "run_dir_of", "unknown_prompt_words", "resolve_device",
    "resolve_dtype", "check_device", "CHECKPOINT", "CHECKPOINT_KEYS", "load_checkpoint", "save_checkpoint",
    "RUN_FILES", "PREVIOUS_RUN", "prepare_run_dir", "set_previous_run_aside", "resume_config_path",
    "GenerateError", "ConfigError", "EmptyPromptError", "UnknownMethodError", "UnknownPresetError", "OutputError",
    "RunExistsError", "PriorError", "DivergedError", "InitFailedError", "Interrupted", "EXIT_OK", "EXIT_USAGE",
    "EXIT_EMPTY_PROMPT", "EXIT_UNKNOWN_METHOD", "EXIT_UNKNOWN_PRESET", "EXIT_OUTPUT", "EXIT_RUN_EXISTS",
    "EXIT_PRIOR", "EXIT_DIVERGED", "EXIT_INIT", "EXIT_INTERRUPTED", "EXIT_CODE_HELP",
]
