"""Text → 3D Gaussians: Algorithm 1 of DreamMapping as one loop, its outputs, its Python API and its command line.

    init θ (Shap-E / sphere / ball / .ply)
    for step in 0..iterations-1:
        cameras  ← sample_orbit(batch)                      # Alg. 1 line 2, a batch of random poses
        emb      ← text embeddings for the cameras' view tags ("…, front view")
        x        ← rasterize(θ, cameras)                     # line 3, at the prior's resolution
        out      ← method(x, emb, step)                      # lines 4-13: t, ε, x_t, ε_φ, (VDM: M_ψ, λ_t of DCA)
        (out.loss + out.aux_loss).backward()                 # ∇θ L_VDM reaches θ; ∇ψ L_op reaches M_ψ only
        step θ's Adam (3DGS per-parameter lrs) and ψ's own   # lines 14-15
        densify / prune on schedule                          # (every schedule relative to the run's length)

θ is a scene behind `dreammapping.scene`'s protocols (3D Gaussians: `dreammapping.gaussian_scene`); the loop is
`setup` → `train_step` (one step, returning a `StepInfo`) → a short loop of bookkeeping and callbacks.

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
from dreammapping.cameras import canonical_views, turntable
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
    EXIT_TERMINATED,
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
    Terminated,
    UnknownMethodError,
    UnknownPresetError,
)
from dreammapping.degrade import degrade_images
from dreammapping.export import save_frames_row, save_turntable
from dreammapping.files import atomic_write_text, is_disk_full
from dreammapping.gaussians import Gaussians
from dreammapping.init import InitError
from dreammapping.guidance import Guidance
from dreammapping.priors import DiffusionPrior, NonFiniteOutputError, PriorNotFoundError, PromptEmbeddings
from dreammapping.scene import Representation, Scene, render_frames
from dreammapping.resuming import check_resume
from dreammapping.runlock import run_lock
from dreammapping.signals import sigterm_received, term_as_interrupt
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


@dataclass
class GenerateResult:
    run_dir: Path  # the run folder
    ply: Path  # the scene's native file (gaussians.ply, standard 3DGS layout, for Gaussians)
    turntable_mp4: Path | None  # None when no video encoder was available
    turntable_gif: Path
    views: Path  # views.png: front, side, back, overhead
    config: Path  # config.yaml, fully resolved
    metrics: dict  # what metrics.json holds
    scene: Scene  # the final scene (detached, CPU)
    gaussians: Gaussians | None  # the final Gaussians (detached, CPU); None for a scene of another kind


@dataclass
class StepInfo:
    """What one step of Algorithm 1 did: what callbacks (live view, app, benchmarks, batch) and the loss log see."""

    step: int  # steps done (this one included): 1 after the first
    iterations: int  # the run's length
    loss: float  # the guidance loss of this step
    aux_loss: float  # the method's own loss (Mψ, LoRA; 0 for methods without one)
    logs: dict[str, float]  # the method's logs (t, λ_t, …; loss.csv's last columns)
    scene_logs: dict[str, float]  # the representation's (Gaussians: gaussians, lr_means)
    seconds: float  # this step's time
    train_seconds: float  # training time so far (a resumed run's earlier part included)
    scene: Scene  # the scene after this step: read it, do not change it (`preview()` gives a detached copy)

    @property
    def scene_size(self) -> int:
        """The scene's size in its own unit (`scene.size_name`, e.g. the number of Gaussians)."""
        return self.scene.size()

    def preview(self):
        """What the live view shows (detached, CPU): splats, or an image for scenes without them."""
        return self.scene.preview()


Callback = Callable[[StepInfo], "bool | None"]  # returning True asks the run to stop (as Ctrl-C does)


@dataclass
class LossWindow:
    """Sums of the losses since the last loss.csv row."""

    loss: float = 0.0
    aux: float = 0.0
    n: int = 0

    def as_dict(self) -> dict:  # the checkpoint's "window"
        return {"loss": self.loss, "aux": self.aux, "n": self.n}


@dataclass
class Run:
    """Everything `setup` prepares for the steps: the config, the prior and method, the scene in training, RNGs."""

    cfg: GenerateConfig
    run_dir: Path
    device: torch.device
    resolution: int  # rendered image side
    text: PromptEmbeddings  # the prompt's embeddings (all view tags)
    method: Guidance  # the guidance method (METHODS[cfg.method])
    method_params: list[torch.Tensor]  # Mψ / LoRA: what the method trains itself
    method_optimizer: torch.optim.Optimizer | None
    representation: Representation  # the scene and its optimisers, schedules, densification
    generator: torch.Generator  # cameras, backgrounds and init draw from this one
    init_used: str
    init_reason: str
    start: int = 0  # the first step to take (a resumed run's checkpoint step)
    train_seconds: float = 0.0
    window: LossWindow = dataclasses.field(default_factory=LossWindow)
    last_good: int | None = None  # the step of the last checkpoint written (None: none yet)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def resume_command(self) -> str:
        return f"dreammapping generate --resume {shlex.quote(str(self.run_dir))}"


def background_colors(kind: str, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[B,3] background per view: white, or a random colour per view (discourages a white halo of Gaussians)."""
    if kind == "white":
        return torch.ones(batch, 3)
    return torch.rand(batch, 3, generator=generator)


# ================================================================================================ the run
def train(cfg: GenerateConfig, run_dir: Path, resume: bool = False, progress: bool = True,
          callback: Callback | None = None, log: Callable[[str], None] | None = None) -> GenerateResult:
    """Run (or continue) Algorithm 1 for `cfg` in `run_dir`; writes every output and returns them.

    `callback(StepInfo)` is called after every step; returning True asks the run to stop as Ctrl-C does (a
    checkpoint at the next step boundary, then `Interrupted`)."""
    check_config(cfg)  # first: a bad config is a one-line error, before its threads are used (or the cores sampled)
    threads = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(cfg.threads))
    run_dir = Path(run_dir)
    try:
        with run_lock(run_dir, create=not resume):  # one writer per run folder, until its last file is written
            try:
                if resume:
                    check_resume(cfg, run_dir)  # what --resume would ignore or relabel, a damaged loss.csv
                return _train(cfg, run_dir, resume, progress, callback,
                              log or (lambda msg: print(msg, file=sys.stderr)))
            except BaseException as e:
                with contextlib.suppress(OSError):  # --overwrite: the old run comes back if the new one has none
                    recover_previous_run(run_dir)
                if isinstance(e, OSError):  # a full disk, a folder made read-only mid-run: one line, what is kept
                    raise OutputError(io_failure(e, run_dir)) from None
                if isinstance(e, Interrupted) and sigterm_received():  # SIGTERM, handled as Ctrl-C
                    raise Terminated(str(e).replace("interrupted", "terminated (SIGTERM)", 1)) from None
                raise
    finally:
        torch.set_num_threads(threads)  # a library call leaves the caller's setting as it found it


def _train(cfg: GenerateConfig, run_dir: Path, resume: bool, progress: bool, callback: Callback | None,
           log: Callable[[str], None]) -> GenerateResult:
    wall_start = time.perf_counter()
    words = unknown_prompt_words(cfg)
    run = setup(cfg, run_dir, resume, log)
    loss_log = LossLog(run_dir / "loss.csv", keep_before=run.start if resume else 0)
    bar = tqdm(total=cfg.iterations, initial=run.start, desc="generate", unit="it", dynamic_ncols=True,
               disable=not progress, leave=True, file=sys.stderr)
    last_loss = float("nan")

    # Algorithm 1, one `train_step` a step; between steps: the loss log, the progress bar, checkpoints, callbacks
    with SigintFlag() as interrupted, contextlib.closing(bar):
        for step in range(run.start, cfg.iterations):
            if interrupted.set:
                save_run_checkpoint(run, step)
                raise Interrupted(f"interrupted at step {step}/{cfg.iterations}; checkpoint saved. "
                                  f"Resume with: {run.resume_command}")
            info = train_step(run, step)
            if info.step % cfg.log_every == 0 or info.step == cfg.iterations:
                last_loss = run.window.loss / run.window.n
                loss_log.write({"step": info.step, "loss": last_loss, "aux_loss": run.window.aux / run.window.n,
                                **info.scene_logs, "seconds": round(run.train_seconds, 3), **info.logs})
                bar.set_postfix(loss=f"{last_loss:.4g}", **{info.scene.size_name: info.scene_size}, refresh=False)
                run.window = LossWindow()
            bar.update(1)
            if cfg.checkpoint_every and info.step % cfg.checkpoint_every == 0 and info.step < cfg.iterations:
                save_run_checkpoint(run, info.step)
                run.last_good = info.step
            if callback is not None and callback(info):
                interrupted.set = True
    loss_log.close()
    if math.isnan(last_loss) and run.start >= cfg.iterations:  # resumed a finished run: its last logged loss
        last_loss = loss_log.last_loss

    # The final checkpoint and the outputs.
    save_run_checkpoint(run, cfg.iterations)
    final = run.representation.scene.detach_cpu()
    metrics = {
        "prompt": cfg.prompt, "method": cfg.method, "prior": cfg.prior, "seed": cfg.seed,
        "iterations": cfg.iterations, "resumed_from": run.start if resume else None,
        "train_seconds": round(run.train_seconds, 3),
        "it_per_s": round((cfg.iterations / run.train_seconds) if run.train_seconds > 0 else 0.0, 3),
        "final_loss": last_loss, final.size_name: final.size(), "resolution": run.resolution, "batch": cfg.batch,
        "init_used": run.init_used, "init_reason": run.init_reason, "unknown_words": words,
        "device": str(run.device),
    }
    return write_outputs(run_dir, run.representation, final, cfg, metrics, wall_start, log)


def setup(cfg: GenerateConfig, run_dir: Path, resume: bool, log: Callable[[str], None]) -> Run:
    """Everything before the first step: the run folder, seeds, prior, prompt, method, scene (initialised or from the
    checkpoint, with every optimiser, statistic and RNG), then config.yaml. `train` has checked the config; nothing
    of an old run is touched until the prior, the initialisation and the checkpoint are known to work."""
    words = unknown_prompt_words(cfg)
    if words:
        log(f"warning: the embedded prior does not know {', '.join(map(repr, words))}; it will ignore "
            f"{'it' if len(words) == 1 else 'them'} (it knows toy shapes, colours and 'on top of' / 'next to')")
    checkpoint_path = run_dir / CHECKPOINT
    if resume:
        _check_checkpoint_exists(checkpoint_path)
    previous_run = prepare_run_dir(run_dir, fresh=not resume, overwrite=cfg.overwrite)
    ckpt = _checked_checkpoint(cfg, checkpoint_path) if resume else None

    # Seeds, the prior, the prompt's embeddings, the guidance method and its own optimiser (Mψ, LoRA).
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # cameras, backgrounds and init draw from this one
    try:
        prior = DiffusionPrior.from_pretrained(cfg.prior, device=device,
                                               dtype=resolve_dtype(cfg.dtype, device, cfg.prior))
    except PriorNotFoundError as e:
        raise PriorError(str(e).splitlines()[0]) from None
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

    # θ₀: initialised, or (resume) the checkpoint's scene, optimisers, statistics and RNGs.
    if resume:  # no initialisation: the checkpoint holds θ and the generator's state (Shap-E would cost minutes)
        representation = cfg.scene.restore(ckpt, device)
        init_used, init_reason = ckpt["init_used"], ckpt["init_reason"]
    else:
        try:
            init = cfg.scene.create(cfg.prompt, generator, device)
        except InitError as e:
            raise InitFailedError(str(e)) from None
        representation, init_used, init_reason = init.representation, init.used, init.reason
        log(f"init: {init.reason}")
    run = Run(cfg, run_dir, device, resolution, text, method, method_params, method_optimizer, representation,
              generator, init_used, init_reason)
    if resume:
        run.start, run.train_seconds, run.window = _restore(ckpt, run)
        run.last_good = run.start
        log(f"continuing from the checkpoint at step {run.start}")

    # Everything is loaded: only now does the run write (config.yaml first) and an old run make way for it.
    set_previous_run_aside(run_dir, previous_run)
    save_yaml_config(run_dir / "config.yaml", cfg)
    return run


def train_step(run: Run, step: int) -> StepInfo:
    """Step `step` (from 0) of Algorithm 1: cameras, render, the method's loss, backward, the optimisers, then the
    representation's own updates (densification). DivergedError, with θ untouched, when the step must not be applied.
    """
    cfg, representation = run.cfg, run.representation
    t0 = time.perf_counter()
    representation.update_learning_rates(step, cfg.iterations)

    # a batch of cameras and the prompt for each one's view
    cams = C.sample_orbit(cfg.batch, run.resolution, run.resolution, cfg.orbit, run.generator).to(run.device)
    emb = run.text.for_views(cams.view_tags, azimuth=cams.azimuth)  # azimuths: blended / Perp-Neg prompts
    background = background_colors(cfg.background, cfg.batch, run.generator).to(run.device)

    # render, score with the prior, back-propagate
    render = representation.scene.render(cams, background)
    images = render.rgb.permute(0, 3, 1, 2)  # [B,H,W,3] → [B,3,H,W]
    images = degrade_images(images, cfg.degrade, step)  # the prior's view only (identity unless set)
    try:
        out = run.method(images, emb, step, cfg.iterations)
    except NonFiniteOutputError as e:  # not finite even in float32 (or fallback off): name it, keep θ
        raise DivergedError(f"stopped at step {step}: {e}; resume with: {run.resume_command}") from None
    loss = out.loss + out.aux_loss
    own = representation.regularization(render, step, cfg.iterations)  # e.g. a field's sparsity; None for 3DGS
    if own is not None:
        loss = loss + own
    loss.backward()

    # stop before a NaN or an explosion reaches the parameters
    loss_value, aux_value = float(out.loss.detach()), float(out.aux_loss.detach())
    bad = _diverged(loss_value, aux_value, representation.parameters(), cfg.max_loss)
    if bad:
        kept = (f"the last good checkpoint (step {run.last_good}) is kept in {run.checkpoint_path}"
                if run.last_good is not None else "no checkpoint had been written yet")
        raise DivergedError(f"stopped at step {step}: {bad}; {kept}. Try lower learning rates or "
                            f"guidance scale, or resume with: {run.resume_command}")

    # step θ and ψ, then the representation's own updates (densify / prune)
    representation.optimizer_step()
    if run.method_optimizer is not None:
        run.method_optimizer.step()
    representation.step_post_backward(render, step, cfg.iterations)
    representation.zero_grad()
    if run.method_optimizer is not None:
        run.method_optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    run.train_seconds += seconds
    run.window.loss += loss_value
    run.window.aux += aux_value
    run.window.n += 1
    return StepInfo(step=step + 1, iterations=cfg.iterations, loss=loss_value, aux_loss=aux_value, logs=out.logs,
                    scene_logs=representation.logs(), seconds=seconds, train_seconds=run.train_seconds,
                    scene=representation.scene)


def save_run_checkpoint(run: Run, step: int) -> None:
    """checkpoint.pt at `step`: the scene's state (for Gaussians: "gaussians", "optimizer", "strategy"), Mψ / LoRA
    and their optimiser, every RNG, the loss window; then an old run set aside by --overwrite is discarded."""
    state = run.representation.state_dict()
    save_checkpoint(run.checkpoint_path, {
        "step": step, **state,
        "method": run.cfg.method,
        "method_params": [p.detach().cpu() for p in run.method_params],
        "method_optimizer": run.method_optimizer.state_dict() if run.method_optimizer is not None else {},
        "rng": rng_state(run.generator), "train_seconds": run.train_seconds, "window": run.window.as_dict(),
        "init_used": run.init_used, "init_reason": run.init_reason, "version": 1,
    })
    discard_previous_run(run.run_dir)  # --overwrite: the new run now has something to replace the old one with


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
    ckpt = load_checkpoint(checkpoint_path, required=cfg.scene.state_keys)
    if ckpt.get("method", cfg.method) != cfg.method:
        raise ConfigError(f"--resume: the checkpoint was made with method {ckpt['method']!r}, not {cfg.method!r}")
    if int(ckpt["step"]) > cfg.iterations:
        raise ConfigError(f"--resume: the checkpoint is at step {int(ckpt['step'])}, past --iterations "
                          f"{cfg.iterations}; pass --iterations {int(ckpt['step'])} or more (nothing was changed)")
    return ckpt


def _restore(ckpt: dict, run: Run) -> tuple[int, float, LossWindow]:
    """Load the checkpoint's scene state (optimisers, statistics), Mψ / LoRA, their optimiser and the RNGs;
    → (step, train_seconds, loss window)."""
    try:
        run.representation.load_state_dict(ckpt)
        with torch.no_grad():
            for p, saved in zip(run.method_params, ckpt["method_params"], strict=True):
                p.copy_(saved)
        if run.method_optimizer is not None:
            run.method_optimizer.load_state_dict(ckpt["method_optimizer"])
        set_rng_state(ckpt["rng"], run.generator)
        return int(ckpt["step"]), float(ckpt["train_seconds"]), LossWindow(**ckpt["window"])
    except (ValueError, RuntimeError, KeyError, TypeError) as e:  # options changed the shapes of the state
        raise ConfigError(f"--resume: the checkpoint does not fit this config ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}); nothing was changed") from None


def _diverged(loss: float, aux_loss: float, parameters: list[torch.Tensor], max_loss: float) -> str:
    """Why this step must not be applied ('' if it may): a non-finite loss or gradient, or an exploding loss."""
    if not math.isfinite(loss):
        return f"the loss is {loss}"
    if not math.isfinite(aux_loss):
        return f"the method's own loss is {aux_loss}"
    if loss > max_loss:
        return f"the loss exploded ({loss:.3g} > max_loss {max_loss:.3g})"
    grads = [p.grad.sum() for p in parameters if p.grad is not None]
    if grads and not bool(torch.isfinite(torch.stack(grads)).all()):
        return "a gradient is not finite"
    return ""


def write_outputs(run_dir: Path, representation: Representation, final: Scene, cfg: GenerateConfig, metrics: dict,
                  wall_start: float, log: Callable[[str], None]) -> GenerateResult:
    """The scene's native file (gaussians.ply), turntable.mp4 / .gif and views.png of `final` (the detached scene
    on the CPU), metrics.json."""
    native = representation.save(run_dir / representation.native_file)
    size = cfg.turntable_size
    frames = render_frames(final, turntable(cfg.turntable_frames, size, size, elevation=15.0))  # once for both files
    gif = save_turntable(run_dir / "turntable.gif", None, frames=frames)
    try:
        mp4 = save_turntable(run_dir / "turntable.mp4", None, frames=frames)
    except Exception as e:  # no ffmpeg: the gif is enough, say so (but a full disk is a fault of the run)
        if is_disk_full(e):
            raise
        log(f"warning: could not write turntable.mp4 ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        mp4 = None
    views = save_frames_row(run_dir / "views.png", render_frames(final, canonical_views(size, size)))
    metrics = {**metrics, "wall_seconds": round(time.perf_counter() - wall_start, 3)}
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    preview = final.preview()
    return GenerateResult(run_dir=run_dir, ply=Path(native), turntable_mp4=mp4 and Path(mp4), turntable_gif=Path(gif),
                          views=Path(views), config=run_dir / "config.yaml", metrics=metrics, scene=final,
                          gaussians=preview if isinstance(preview, Gaussians) else None)


# ================================================================================================ Python API
def resume_config(run_dir: str | os.PathLike, **options) -> GenerateConfig:
    """The config of the run in `run_dir` (its config.yaml), updated by `options`."""
    cfg = load_yaml_config(resume_config_path(run_dir), GenerateConfig())
    return merge_config(cfg, options, where="options")


def generate(prompt: str | None = None, *, preset: str = DEFAULT_PRESET, config: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None, progress: bool = True,
             callback: Callback | None = None, **options) -> GenerateResult:
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
    # CascadeSubcommandArgs: the default scene's own flags (--num-points, --density.* …) select it without naming it
    args = tyro.cli(GenerateArgs, args=argv, default=_defaults(argv), prog="dreammapping generate",
                    description="Text → 3D Gaussian splat (DreamMapping, Algorithm 1). "
                                "Exit codes: " + ", ".join(f"{c} {why}" for c, why in EXIT_CODE_HELP.items()) + ".",
                    config=(tyro.conf.CascadeSubcommandArgs,))
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
    """`dreammapping generate "a red cube on top of a blue sphere" [--preset cpu|paper] [--method vdm] …`; SIGTERM
    is handled as Ctrl-C (a checkpoint, the resume command) and exits 143."""
    with term_as_interrupt():
        code = _cli_generate(argv)
    return EXIT_TERMINATED if code == EXIT_INTERRUPTED and sigterm_received() else code


def _cli_generate(argv: list[str] | None = None) -> int:
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
    size = result.scene.size_name
    print(f"wrote {result.run_dir}: {m[size]} {size.replace('_', ' ')}, {m['iterations']} steps in "
          f"{m['train_seconds']:.1f} s "
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
