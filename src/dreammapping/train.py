"""Text → 3D Gaussians: Algorithm 1 of DreamMapping as one loop, with its config, presets, outputs and CLI.

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

Python: `dreammapping.generate("a red cube", iterations=200)`; command line: `dreammapping generate "a red cube"`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import torch
import tyro
import yaml

from dreammapping import cameras as C
from dreammapping.files import (atomic_path, atomic_write_text, describe_write_error, is_disk_full,
                                remove_stale_temporaries)
from dreammapping.gaussians import Gaussians, LearningRates, make_optimizer, update_learning_rates
from dreammapping.init import InitError, InitOptions, initialise
from dreammapping.strategy import DensityStrategy


# ================================================================================================ configuration
@dataclass
class GenerateConfig:
    """Everything one text-to-3D run depends on; written to the run's config.yaml."""

    prompt: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PROMPT")] = ""  # what to generate
    negative_prompt: str = ""  # what to steer away from (the unconditional prompt of CFG when empty)
    prior: str = "embedded"  # the diffusion prior: "embedded", a Hugging Face id in the local cache, or a folder
    method: str = "vdm"  # guidance: a name in dreammapping.guidance.METHODS (vdm, sds, csd, nfsd, ism, vsd)
    # Per-method options, method name → {field: value} of METHODS[name].Config (e.g. guidance_scale, dca_cutoff);
    # on the command line they are `--guidance.FIELD` for the chosen method.
    method_options: tyro.conf.Suppress[dict[str, dict[str, Any]]] = field(default_factory=dict)
    iterations: int = 300  # optimisation steps
    batch: int = 4  # camera views rendered per step
    resolution: int | None = None  # rendered image side in pixels; None: the prior's own resolution
    background: Literal["white", "random"] = "white"  # colour behind the object while training
    orbit: C.OrbitConfig = field(default_factory=C.OrbitConfig)  # ranges of the random training cameras
    init: str = "shap-e"  # starting Gaussians: "shap-e" (falls back when absent), "sphere", "ball" or a .ply path
    num_points: int = 3000  # number of starting Gaussians (a .ply keeps its own)
    init_options: InitOptions = field(default_factory=InitOptions)  # radius, colour, Shap-E settings
    sh_degree: int = 0  # spherical-harmonic degree of the colours (0: view-independent)
    lr: LearningRates = field(default_factory=LearningRates)  # Adam lrs per Gaussian parameter (3DGS's recipe)
    density: DensityStrategy = field(default_factory=DensityStrategy)  # clone / split / prune schedule
    seed: int = 0  # seeds the global torch RNG (guidance's t and ε) and the camera generator
    out: str | None = None  # run folder; None: runs/<prompt-slug>-<method>-<seed>
    overwrite: bool = False  # allow a fresh run to write into a folder that already holds a run
    checkpoint_every: int = 100  # steps between checkpoints (0: only on Ctrl-C and at the end)
    log_every: int = 10  # steps between loss.csv rows and progress-bar updates
    max_loss: float = 1e6  # a loss above this is an explosion: stop, keep the last good checkpoint
    turntable_size: int = 128  # side of the final turntable / view-grid frames (the splat is 3D: any size)
    turntable_frames: int = 48  # frames of the final turntable
    device: str = "auto"  # "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", …
    threads: int = 0  # CPU threads for torch (0: auto, every core when OpenMP waits passively, else 1)
    # the prior's dtype; auto: fp16 on CUDA; on a CPU with native bf16 (AMX / AVX512-BF16) bf16 for the embedded
    # prior (1.6× faster UNet; quality check in docs/performance.md); else fp32
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    render_backend: str = "auto"  # rasterizer: "auto" (gsplat on CUDA if installed, else torch), "torch", "gsplat"


def _cpu_preset() -> GenerateConfig:
    """Laptop CPU, 2 cores, the embedded 32² prior: a recognisable toy object in ≤ 3 minutes."""
    return GenerateConfig(
        prior="embedded",
        method="vdm",
        iterations=200,  # 300 before; quality at 200 checked on one prompt only so far (docs/performance.md)
        batch=4,
        orbit=C.OrbitConfig(overhead_probability=0.15),  # as the prior's training views: some from above
        init="sphere",  # Shap-E on a CPU costs minutes and is not available offline; a sphere works for toys
        num_points=2000,
        init_options=InitOptions(radius=0.6),
        lr=LearningRates(position_init=2e-3, position_final=2e-4, log_scales=1e-2, quats=5e-3,
                         opacity_logits=5e-2, sh_dc=2e-2),
        # refinements at steps 99 and 132, the 300-step schedule's 150 and 200 scaled to 200 steps
        density=DensityStrategy(refine_start=90, refine_stop=140, refine_every=33, grad_threshold=2e-4,
                                reset_opacity_every=0, max_gaussians=4000),
        checkpoint_every=100,
        turntable_size=128,
        threads=0,  # every core: OpenMP waits passively (dreammapping/__init__.py), so a busy core costs no spinning
    )


def _paper_preset() -> GenerateConfig:
    """The paper's setting (§5): SD 2.1-base, 512², 4 views, 5000 steps, Shap-E init of ~50k points, VDM + DCA.

    Where the paper is silent it follows LucidDreamer, the codebase it says it built on; configs/paper.yaml spells
    out every value with its source (tests/test_paper_preset.py checks that the two agree).
    """
    # one schedule for every method, so that `--method sds` etc. are compared under the same setting
    shared = {"guidance_scale": 7.5, "t_min": 0.02, "t_max": 0.98, "t_max_end": 0.5, "t_anneal_steps": 1500,
              "weighting": "ism", "view_prompt": "interpolate"}
    return GenerateConfig(
        prompt="",
        negative_prompt="unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, oversaturation.",
        prior="stabilityai/stable-diffusion-2-1-base",
        method="vdm",
        method_options={"vdm": {**shared, "dca": True, "dca_cutoff": 300, "operator_lr": 0.01},
                        "sds": dict(shared), "csd": dict(shared), "nfsd": dict(shared), "vsd": dict(shared),
                        "ism": {**shared, "delta_t": 80, "delta_s": 200, "xs_inv_steps": 5}},
        iterations=5000,
        batch=4,
        resolution=512,
        background="random",
        orbit=C.OrbitConfig(radius=(3.5, 5.5), elevation=(-15.0, 45.0), azimuth=(-180.0, 180.0),
                            fovy=(9.17, 34.38), overhead_probability=0.0),
        init="shap-e",
        num_points=50_000,
        init_options=InitOptions(radius=0.5, opacity=0.1),
        sh_degree=0,
        lr=LearningRates(position_init=1.6e-4, position_final=1.6e-6, scene_extent=3.5, log_scales=5e-3,
                         quats=1e-3, opacity_logits=5e-2, sh_dc=5e-3),
        density=DensityStrategy(refine_start=100, refine_stop=3000, refine_every=100, grad_threshold=7.5e-3,
                                split_scale_percent=0.003, scene_extent=3.5, prune_opacity=0.005,
                                prune_scale3d=0.1, prune_scale2d=0.0390625, reset_opacity_every=300,
                                max_gaussians=500_000),
        checkpoint_every=500,
        log_every=10,
        max_loss=1e8,
        turntable_size=512,
        turntable_frames=120,
    )


PRESETS: dict[str, Callable[[], GenerateConfig]] = {"cpu": _cpu_preset, "paper": _paper_preset}
DEFAULT_PRESET = "cpu"


# ---- config ⇄ plain dicts (YAML) -------------------------------------------------------------------------------
def config_to_dict(obj) -> Any:
    """A dataclass as plain YAML-able data (tuples become lists, tensors never appear)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    return obj


def merge_config(base, data: dict, where: str = "config"):
    """A copy of dataclass `base` with the (partial, nested) values of `data`; unknown keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(base) if f.init}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(names)}")
    hints = typing.get_type_hints(type(base))
    changes = {}
    for key, value in data.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge_config(current, value, f"{where}.{key}")
        elif key == "method_options" and isinstance(value, dict):
            merged = {k: dict(v) for k, v in current.items()}
            for name, options in value.items():
                merged.setdefault(name, {}).update(options or {})
            changes[key] = merged
        else:
            changes[key] = _coerce(value, hints.get(key), f"{where}.{key}")
    return dataclasses.replace(base, **changes)


def _coerce(value, hint, where: str):
    """YAML gives lists for tuples and ints for floats; bring them back to the declared type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_coerce(v, args[0] if args else None, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (typing.Union, types.UnionType) and float in args \
            and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is Literal and value not in args:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if not _matches(value, hint):
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return value


def _matches(value, hint) -> bool:
    """Whether `value` has the declared type `hint` (a bool is not an int; an int is a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is None or hint is Any:
        return True
    if origin is Annotated:
        return _matches(value, args[0])
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return True


def _type_name(hint) -> str:
    if typing.get_origin(hint) is Annotated:
        return _type_name(typing.get_args(hint)[0])
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _check_values(obj, where: str) -> None:
    """Every field of dataclass `obj` (recursively) has its declared type and no float is NaN: what `merge_config`
    checks for YAML and keyword options, for configs built by hand (`train(GenerateConfig(iterations="ten"))`)."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value, name = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if not _matches(value, hints.get(f.name)):
            raise ConfigError(f"{name}: expected {_type_name(hints.get(f.name))}, got {value!r}")
        if dataclasses.is_dataclass(value):
            _check_values(value, name)
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, float) and math.isnan(v):
                raise ConfigError(f"{name} is NaN; give a number")


def load_yaml_config(path: str | os.PathLike, base: GenerateConfig) -> GenerateConfig:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return merge_config(base, data, where=str(path))


def save_yaml_config(path: Path, cfg: GenerateConfig) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))


# ================================================================================================ errors
# Exit codes of `dreammapping generate`; the Python API raises the matching GenerateError subclass.
EXIT_OK = 0
EXIT_USAGE = 2  # bad command-line syntax or a bad config value / file
EXIT_EMPTY_PROMPT = 3
EXIT_UNKNOWN_METHOD = 4
EXIT_UNKNOWN_PRESET = 5
EXIT_OUTPUT = 6  # the output folder cannot be written, or the disk filled up while writing
EXIT_RUN_EXISTS = 7  # a fresh run would overwrite an existing one, or --resume has nothing to resume
EXIT_PRIOR = 8  # the prior's weights are missing
EXIT_DIVERGED = 9  # NaN or exploding loss
EXIT_INIT = 10  # the requested initialisation cannot be used (e.g. a bad .ply)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_CODE_HELP = {EXIT_USAGE: "bad option or value", EXIT_EMPTY_PROMPT: "empty prompt",
                  EXIT_UNKNOWN_METHOD: "unknown method", EXIT_UNKNOWN_PRESET: "unknown preset", EXIT_OUTPUT: "output not writable or disk full",
                  EXIT_RUN_EXISTS: "run exists / nothing to resume", EXIT_PRIOR: "prior missing",
                  EXIT_DIVERGED: "diverged", EXIT_INIT: "bad init", EXIT_INTERRUPTED: "interrupted"}


class GenerateError(Exception):
    """A problem to report in one line (str(e)) with a distinct exit code."""

    exit_code = 1


class ConfigError(GenerateError):
    exit_code = EXIT_USAGE


class EmptyPromptError(GenerateError):
    exit_code = EXIT_EMPTY_PROMPT


class UnknownMethodError(GenerateError):
    exit_code = EXIT_UNKNOWN_METHOD


class UnknownPresetError(GenerateError):
    exit_code = EXIT_UNKNOWN_PRESET


class OutputError(GenerateError):
    exit_code = EXIT_OUTPUT


class RunExistsError(GenerateError):
    exit_code = EXIT_RUN_EXISTS


class PriorError(GenerateError):
    exit_code = EXIT_PRIOR


class DivergedError(GenerateError):
    exit_code = EXIT_DIVERGED


class InitFailedError(GenerateError):
    exit_code = EXIT_INIT


class Interrupted(GenerateError):
    exit_code = EXIT_INTERRUPTED


# ================================================================================================ small helpers
def slugify(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "run"


def default_run_dir(cfg: GenerateConfig) -> Path:
    return Path("runs") / f"{slugify(cfg.prompt)}-{cfg.method}-{cfg.seed}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device | None = None, prior: str = "") -> torch.dtype | None:
    """None lets the prior choose (fp16 on CUDA, fp32 on CPU), except bf16 for the embedded prior on a CPU that
    computes in bf16 natively: the only combination measured (docs/performance.md)."""
    if name != "auto":
        return getattr(torch, name)
    if device is not None and device.type == "cpu" and prior == "embedded" and _native_cpu_bf16():
        return torch.bfloat16
    return None


def _native_cpu_bf16() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # an older torch without these probes: stay in fp32
        return False


def resolve_threads(threads: int) -> int:
    """torch's CPU threads for a run: `threads` when > 0; else torch's own count (every core, or OMP_NUM_THREADS)
    when OpenMP waits passively, one otherwise (spinning threads crawl when another process holds a core)."""
    import dreammapping

    if threads > 0:
        return threads
    return torch.get_num_threads() if dreammapping.OPENMP_PASSIVE else 1


def method_class(name: str):
    from dreammapping.guidance import METHODS

    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def method_config(cfg: GenerateConfig):
    """The chosen method's own config dataclass: its defaults updated by `cfg.method_options[cfg.method]`."""
    cls = method_class(cfg.method)
    return merge_config(cls.Config(), cfg.method_options.get(cfg.method, {}), where=f"method_options.{cfg.method}")


def resolved(cfg: GenerateConfig) -> GenerateConfig:
    """The config with the chosen method's options fully spelled out (what config.yaml records)."""
    return dataclasses.replace(cfg, method_options={cfg.method: config_to_dict(method_config(cfg))})


def background_colors(kind: str, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[B,3] background per view: white, or a random colour per view (discourages a white halo of Gaussians)."""
    if kind == "white":
        return torch.ones(batch, 3)
    return torch.rand(batch, 3, generator=generator)


def _check_config(cfg: GenerateConfig) -> None:
    """Every value a run depends on, checked before anything is loaded or written (one-line ConfigError else)."""
    if not isinstance(cfg, GenerateConfig):
        raise ConfigError(f"expected a GenerateConfig, got {type(cfg).__name__}")
    _check_values(cfg, "")
    if not cfg.prompt or not cfg.prompt.strip():
        raise EmptyPromptError("the prompt is empty; say what to generate, e.g. dreammapping generate \"a red cube\"")
    for name in ("iterations", "batch", "num_points", "turntable_size", "turntable_frames", "log_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be ≥ 1, got {getattr(cfg, name)}")
    if cfg.checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be ≥ 0, got {cfg.checkpoint_every}")
    if cfg.resolution is not None and cfg.resolution < 8:
        raise ConfigError(f"resolution must be ≥ 8 (or None for the prior's), got {cfg.resolution}")
    if not 0 <= cfg.sh_degree <= 3:
        raise ConfigError(f"sh_degree must be 0..3, got {cfg.sh_degree}")
    if not -2**63 <= cfg.seed < 2**64:  # what torch's generators accept
        raise ConfigError(f"seed must be an integer in [-2**63, 2**64), got {cfg.seed}")
    if not cfg.max_loss > 0:  # NaN compares false with everything: it would switch the explosion check off
        raise ConfigError(f"max_loss must be > 0 (inf switches the explosion check off), got {cfg.max_loss}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be ≥ 0, got {cfg.threads}")
    check_device(cfg.device)
    guidance = method_config(cfg)
    _check_values(guidance, f"guidance.{cfg.method}")
    scale = getattr(guidance, "guidance_scale", None)
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"guidance_scale must be a finite number > 0, got {scale}")
    if cfg.prior == "embedded":
        from dreammapping.toyworld.grammar import content_words

        if not content_words(cfg.prompt):  # it would run with no prompt at all
            raise EmptyPromptError(f"the embedded prior knows no word of {cfg.prompt!r}: it draws toy shapes "
                                   "(cube, sphere, cone, cylinder, torus) in colours, e.g. \"a red cube\"")


def check_device(name: str) -> None:
    """Raise ConfigError unless `name` is "auto" or a torch device this machine has."""
    if name == "auto":
        return
    hint = "use auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a torch device; {hint}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: torch sees no CUDA GPU here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; {hint}")


def unknown_prompt_words(cfg: GenerateConfig) -> list[str]:
    """Words of the prompt the embedded toy-world prior was never trained on (only checked for that prior)."""
    if cfg.prior != "embedded":
        return []
    from dreammapping.toyworld.grammar import unknown_words

    return unknown_words(cfg.prompt)


# What a run writes: any of them in a folder means the folder holds a run (not only checkpoint.pt).
RUN_FILES = ("config.yaml", "loss.csv", "checkpoint.pt", "gaussians.ply", "turntable.mp4", "turntable.gif",
             "views.png", "metrics.json", "eval.json")
PREVIOUS_RUN = ".previous-run"  # where --overwrite keeps the old run until the new one has a checkpoint


def prepare_run_dir(run_dir: Path, fresh: bool, overwrite: bool) -> list[str]:
    """Create the run folder and make sure it can be written; refuse to clobber a previous run. Deletes nothing but
    the temporaries of killed writers; returns the names of the old run's files a fresh --overwrite run will
    replace (see `_set_previous_run_aside`)."""
    try:
        _recover_previous_run(run_dir)
        existing = [name for name in RUN_FILES if (run_dir / name).exists()] if fresh else []
        if existing and not overwrite:
            raise RunExistsError(f"{run_dir} already holds a run ({', '.join(existing)}); continue it with --resume "
                                 f"{shlex.quote(str(run_dir))}, choose another --out, or pass --overwrite")
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
        remove_stale_temporaries(run_dir)  # a SIGKILL during an atomic write leaves its temporary behind
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {run_dir}: {e.strerror or e}") from None
    return existing


def _set_previous_run_aside(run_dir: Path, names: list[str]) -> None:
    """--overwrite without losing anything: the old run's files wait in RUN/.previous-run until the new run writes its
    first checkpoint (`_discard_previous_run`); if the new run fails before that — divergence, a full disk, a crash,
    a second Ctrl-C — `_recover_previous_run` puts them back (at once, or on the next start after a kill)."""
    if names:
        (run_dir / PREVIOUS_RUN).mkdir()
        for name in names:
            (run_dir / name).rename(run_dir / PREVIOUS_RUN / name)


def _discard_previous_run(run_dir: Path) -> None:
    shutil.rmtree(run_dir / PREVIOUS_RUN, ignore_errors=True)


def _recover_previous_run(run_dir: Path) -> None:
    aside = run_dir / PREVIOUS_RUN
    if not aside.is_dir():
        return
    if (run_dir / CHECKPOINT).exists():  # the new run got as far as a checkpoint (then was killed): it replaced the old
        _discard_previous_run(run_dir)
        return
    for name in RUN_FILES:  # the new run's config.yaml and loss.csv go; the old run's files come back
        (run_dir / name).unlink(missing_ok=True)
    for entry in aside.iterdir():
        entry.rename(run_dir / entry.name)
    aside.rmdir()


# ================================================================================================ checkpoints
CHECKPOINT = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then an atomic rename: a crash never leaves a half-written checkpoint."""
    # Serialised in memory first: torch's own file writer turns a full disk into an unexplained RuntimeError
    # ("unexpected pos …"), Python's write raises the OSError (ENOSPC) that says what happened.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


CHECKPOINT_KEYS = ("step", "gaussians", "optimizer", "method_params", "strategy", "rng", "train_seconds", "window",
                   "init_used", "init_reason")


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's state (tensors only, never pickled code); RunExistsError when it is damaged."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, random bytes, a foreign pickle: torch's message suggests unsafe loading
        raise RunExistsError(f"cannot resume: {path} is damaged or not a checkpoint of this program "
                             f"({type(e).__name__}); nothing was changed — start again with --overwrite") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else ["all"]
    if missing:
        raise RunExistsError(f"cannot resume: {path} is not a checkpoint of this program (missing "
                             f"{', '.join(missing)}); nothing was changed — start again with --overwrite")
    return state


def _rng_state(generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "cameras": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["cameras"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ================================================================================================ the run
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


class _SigintFlag:
    """Turns the first Ctrl-C into a flag the loop checks between steps (so the checkpoint is consistent);
    a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def train(cfg: GenerateConfig, run_dir: Path, resume: bool = False, progress: bool = True,
          callback: Callable[[int, dict], bool | None] | None = None, log: Callable[[str], None] | None = None
          ) -> GenerateResult:
    """Run (or continue) Algorithm 1 for `cfg` in `run_dir`; writes every output and returns them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(resolve_threads(cfg.threads))
    run_dir = Path(run_dir)
    try:
        return _train(cfg, run_dir, resume, progress, callback, log)
    except BaseException as e:
        with contextlib.suppress(OSError):  # --overwrite: the old run comes back if the new one has no checkpoint
            _recover_previous_run(run_dir)
        if isinstance(e, OSError):  # a full disk, a folder made read-only mid-run: one line, and what is kept
            raise OutputError(_io_failure(e, run_dir)) from None
        raise
    finally:
        torch.set_num_threads(threads)  # a library call leaves the caller's setting as it found it


def _io_failure(error: OSError, run_dir: Path) -> str:
    kept = ""
    with contextlib.suppress(OSError):
        if (run_dir / CHECKPOINT).is_file():
            kept = (f"; the last checkpoint is kept, resume with: dreammapping generate --resume "
                    f"{shlex.quote(str(run_dir))}")
    return describe_write_error(error, error.filename or run_dir) + kept


def _train(cfg: GenerateConfig, run_dir: Path, resume: bool, progress: bool,
           callback: Callable[[int, dict], bool | None] | None, log: Callable[[str], None] | None) -> GenerateResult:
    from tqdm.auto import tqdm

    from dreammapping.priors import DiffusionPrior, NonFiniteOutputError, PriorNotFoundError
    from dreammapping.render import rasterize

    log = log or (lambda msg: print(msg, file=sys.stderr))
    wall_start = time.perf_counter()
    _check_config(cfg)
    method_cls = method_class(cfg.method)
    guidance_config = method_config(cfg)
    words = unknown_prompt_words(cfg)
    if words:
        log(f"warning: the embedded prior does not know {', '.join(map(repr, words))}; it will ignore "
            f"{'it' if len(words) == 1 else 'them'} (it knows toy shapes, colours and 'on top of' / 'next to')")
    checkpoint_path = run_dir / CHECKPOINT
    try:
        no_checkpoint = resume and not checkpoint_path.is_file()
    except OSError as e:  # e.g. a name too long for the file system
        raise OutputError(f"cannot use the run folder {run_dir}: {e.strerror or e}") from None
    if no_checkpoint:
        raise RunExistsError(f"nothing to resume: {checkpoint_path} does not exist")
    # Nothing of an old run is touched until everything below (prior, init, checkpoint) is known to work.
    previous_run = prepare_run_dir(run_dir, fresh=not resume, overwrite=cfg.overwrite)
    if resume:
        ckpt = load_checkpoint(checkpoint_path)
        if ckpt.get("method", cfg.method) != cfg.method:
            raise ConfigError(f"--resume: the checkpoint was made with method {ckpt['method']!r}, not {cfg.method!r}")
        if int(ckpt["step"]) > cfg.iterations:
            raise ConfigError(f"--resume: the checkpoint is at step {int(ckpt['step'])}, past --iterations "
                              f"{cfg.iterations}; pass --iterations {int(ckpt['step'])} or more (nothing was changed)")

    # ---- set-up: seeds, prior, text, guidance method ----
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # cameras, backgrounds and init draw from this one
    try:
        prior = DiffusionPrior.from_pretrained(cfg.prior, device=device,
                                               dtype=resolve_dtype(cfg.dtype, device, cfg.prior))
    except PriorNotFoundError as e:
        raise PriorError(str(e).splitlines()[0]) from None
    resolution = cfg.resolution or prior.resolution
    log(f"{'resuming' if resume else 'run'} {run_dir}: prior {cfg.prior} ({prior.resolution}², "
        f"{'latent' if prior.is_latent else 'pixel'} space, {prior.device}), method {cfg.method}, "
        f"{cfg.iterations} steps × {cfg.batch} views at {resolution}²")
    cut = prior.prompt_overflow(cfg.prompt)
    if cut:
        log(f"warning: {cut}")
    text = prior.encode_text(cfg.prompt, cfg.negative_prompt, view_dependent=True)
    method = method_cls(prior, guidance_config)
    method_params = list(method.parameters())
    method_optimizer = method.optimizer_config().build(method_params) if method_params else None

    # ---- θ₀ and its optimiser ----
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
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            with torch.no_grad():
                for p, saved in zip(method_params, ckpt["method_params"], strict=True):
                    p.copy_(saved)
            if method_optimizer is not None:
                method_optimizer.load_state_dict(ckpt["method_optimizer"])
            strategy.load_state_dict({k: (None if v is None else v.to(device)) for k, v in ckpt["strategy"].items()})
            start, train_seconds, window = int(ckpt["step"]), float(ckpt["train_seconds"]), dict(ckpt["window"])
            _set_rng_state(ckpt["rng"], generator)
        except (ValueError, RuntimeError, KeyError, TypeError) as e:  # options changed the shapes of the state
            raise ConfigError(f"--resume: the checkpoint does not fit this config ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]}); nothing was changed") from None
        log(f"continuing from the checkpoint at step {start}")

    # Everything is loaded: only now does the run write (config.yaml first) and an old run make way for it.
    _set_previous_run_aside(run_dir, previous_run)
    save_yaml_config(run_dir / "config.yaml", resolved(cfg))

    def checkpoint(step: int) -> None:
        save_checkpoint(checkpoint_path, {
            "step": step, "gaussians": {k: v.detach().cpu() for k, v in gaussians.params().items()},
            "optimizer": optimizer.state_dict(),
            "method": cfg.method,
            "method_params": [p.detach().cpu() for p in method_params],
            "method_optimizer": method_optimizer.state_dict() if method_optimizer is not None else {},
            "strategy": {k: (None if v is None else v.cpu()) for k, v in strategy.state_dict().items()},
            "rng": _rng_state(generator), "train_seconds": train_seconds, "window": dict(window),
            "init_used": init_used, "init_reason": init_reason, "version": 1,
        })
        _discard_previous_run(run_dir)  # --overwrite: the new run now has something to replace the old one with

    loss_log = _LossLog(run_dir / "loss.csv", keep_before=start if resume else 0)
    bar = tqdm(total=cfg.iterations, initial=start, desc="generate", unit="it", dynamic_ncols=True,
               disable=not progress, leave=True, file=sys.stderr)
    last_loss, last_good = float("nan"), start if resume else None
    resume_command = f"dreammapping generate --resume {shlex.quote(str(run_dir))}"

    # ---- Algorithm 1 ----
    with _SigintFlag() as interrupted:
        for step in range(start, cfg.iterations):
            if interrupted.set:
                checkpoint(step)
                bar.close()
                raise Interrupted(f"interrupted at step {step}/{cfg.iterations}; checkpoint saved. "
                                  f"Resume with: {resume_command}")
            t0 = time.perf_counter()
            update_learning_rates(optimizer, step, cfg.lr, cfg.iterations)  # position lr decays log-linearly

            # sample a batch of cameras and the prompt for each one's view
            cams = C.sample_orbit(cfg.batch, resolution, resolution, cfg.orbit, generator).to(device)
            emb = text.for_views(cams.view_tags, azimuth=cams.azimuth)  # azimuths: blended / Perp-Neg prompts
            background = background_colors(cfg.background, cfg.batch, generator).to(device)

            # render, score with the prior, back-propagate
            render = rasterize(gaussians, cams, background=background, backend=cfg.render_backend)
            images = render.rgb.permute(0, 3, 1, 2)  # [B,H,W,3] → [B,3,H,W]
            try:
                out = method(images, emb, step, cfg.iterations)
            except NonFiniteOutputError as e:  # not finite even in float32 (or fallback off): name it, keep θ
                bar.close()
                raise DivergedError(f"stopped at step {step}: {e}; resume with: {resume_command}") from None
            loss = out.loss + out.aux_loss
            loss.backward()

            # stop before a NaN or an explosion reaches the parameters
            loss_value = float(out.loss.detach())
            bad = _diverged(loss_value, float(out.aux_loss.detach()), gaussians, cfg.max_loss)
            if bad:
                bar.close()
                kept = (f"the last good checkpoint (step {last_good}) is kept in {checkpoint_path}"
                        if last_good is not None else "no checkpoint had been written yet")
                raise DivergedError(f"stopped at step {step}: {bad}; {kept}. Try lower learning rates or "
                                    f"guidance scale, or resume with: {resume_command}")

            optimizer.step()
            if method_optimizer is not None:
                method_optimizer.step()
            gaussians = strategy.step_post_backward(gaussians, optimizer, render, step)
            optimizer.zero_grad(set_to_none=True)
            if method_optimizer is not None:
                method_optimizer.zero_grad(set_to_none=True)
            train_seconds += time.perf_counter() - t0

            # bookkeeping: loss log, progress bar, checkpoint
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
            # a callback (live viewer, app, benchmark snapshots) sees the detached scene; returning True asks the
            # run to stop as Ctrl-C does: a checkpoint at the next step boundary, then Interrupted
            if callback is not None and callback(done, {"loss": loss_value, "gaussians": len(gaussians),
                                                        "logs": out.logs, "iterations": cfg.iterations,
                                                        "scene": gaussians.detach(),
                                                        "train_seconds": train_seconds}):
                interrupted.set = True
    bar.close()
    loss_log.close()
    if math.isnan(last_loss) and start >= cfg.iterations:  # resumed a finished run: report its last logged loss
        last_loss = loss_log.last_loss
    checkpoint(cfg.iterations)

    # ---- outputs ----
    final = gaussians.detach().to("cpu")
    metrics = {
        "prompt": cfg.prompt, "method": cfg.method, "prior": cfg.prior, "seed": cfg.seed,
        "iterations": cfg.iterations, "resumed_from": start if resume else None,
        "train_seconds": round(train_seconds, 3),
        "it_per_s": round((cfg.iterations / train_seconds) if train_seconds > 0 else 0.0, 3),
        "final_loss": last_loss, "gaussians": len(final), "resolution": resolution, "batch": cfg.batch,
        "init_used": init_used, "init_reason": init_reason, "unknown_words": words, "device": str(device),
    }
    result = write_outputs(run_dir, final, cfg, metrics, wall_start, log)
    return result


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


class _LossLog:
    """loss.csv: one row every `log_every` steps; on resume, rows after the checkpoint are dropped first."""

    COLUMNS = ["step", "loss", "aux_loss", "gaussians", "lr_means", "seconds"]

    def __init__(self, path: Path, keep_before: int):
        self.path, self.columns, self.last_loss = path, None, float("nan")
        rows = []
        if keep_before > 0 and path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = reader.fieldnames
                rows = [r for r in reader if int(r["step"]) <= keep_before]
        self.writer = None
        if self.columns:  # the kept rows replace the file whole (a crash here must not lose the log), then append
            with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            if rows:
                self.last_loss = float(rows[-1]["loss"])
            self.file = path.open("a", newline="")
            self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore")
        else:
            self.file = path.open("w", newline="")

    def write(self, row: dict) -> None:
        if self.writer is None:
            self.columns = self.COLUMNS + sorted(k for k in row if k not in self.COLUMNS)
            self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()
        self.last_loss = float(row["loss"])

    def close(self) -> None:
        self.file.close()


def write_outputs(run_dir: Path, gaussians: Gaussians, cfg: GenerateConfig, metrics: dict, wall_start: float,
                  log: Callable[[str], None]) -> GenerateResult:
    """gaussians.ply, turntable.mp4 / .gif, views.png, metrics.json."""
    from dreammapping.export import save_ply, save_turntable, save_view_grid, turntable_frames

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
def _resume_config_path(run_dir: str | os.PathLike) -> Path:
    """RUN/config.yaml of a run to resume; RunExistsError when there is none (or the name cannot be a folder)."""
    path = Path(run_dir) / "config.yaml"
    try:
        _recover_previous_run(Path(run_dir))  # an --overwrite killed before its first checkpoint: the old run's config
        found = path.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise RunExistsError(f"nothing to resume: {run_dir} ({e.strerror or e})") from None
    if not found:
        raise RunExistsError(f"nothing to resume: {run_dir} has no config.yaml")
    return path


def build_config(prompt: str | None = None, preset: str = DEFAULT_PRESET, config_file: str | os.PathLike | None = None,
                 **options) -> GenerateConfig:
    """Preset → YAML file → keyword options (nested ones as dicts, e.g. lr={"sh_dc": 0.01}) → prompt."""
    if preset not in PRESETS:
        raise UnknownPresetError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[preset]()
    if config_file is not None:
        cfg = load_yaml_config(config_file, cfg)
    options = {k: config_to_dict(v) if dataclasses.is_dataclass(v) else v for k, v in options.items()}
    cfg = merge_config(cfg, options, where="options")
    if prompt is not None:
        _check_prompt_type(prompt)
        cfg = dataclasses.replace(cfg, prompt=prompt)
    return cfg


def _check_prompt_type(prompt) -> None:
    if not isinstance(prompt, str):
        raise ConfigError(f"the prompt must be a string, got {type(prompt).__name__} {prompt!r}")


def generate(prompt: str | None = None, *, preset: str = DEFAULT_PRESET, config: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None, progress: bool = True,
             callback: Callable[[int, dict], bool | None] | None = None, **options) -> GenerateResult:
    """Text → 3D Gaussians. `options` are GenerateConfig fields (`iterations=200`, `method="sds"`, `seed=1`, …).

    `resume=RUN` continues the run in that folder from its checkpoint (its config.yaml, updated by `options`).
    Raises a `GenerateError` subclass (one-line message, `.exit_code`) on bad input and faults.
    """
    if resume is not None:
        run_dir = Path(resume)
        cfg = load_yaml_config(_resume_config_path(run_dir), GenerateConfig())
        cfg = merge_config(cfg, options, where="options")
        if prompt is not None:
            _check_prompt_type(prompt)
        if prompt is not None and prompt != cfg.prompt:
            raise ConfigError(f"--resume continues {cfg.prompt!r}; leave out the prompt (or start a new run)")
    else:
        cfg = build_config(prompt, preset=preset, config_file=config, **options)
        _check_values(cfg, "")  # before the run folder's name is made from it
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    return train(cfg, run_dir, resume=resume is not None, progress=progress, callback=callback)


# ================================================================================================ command line
def _preparse(argv: list[str]) -> argparse.Namespace:
    """--preset, --config, --resume and --method decide the defaults (and the --guidance.* options) shown by tyro."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--preset", default=DEFAULT_PRESET)
    p.add_argument("--config", default=None)
    p.add_argument("--resume", default=None)
    p.add_argument("--method", default=None)
    args, _ = p.parse_known_args(argv)
    return args


def _cli_defaults(pre: argparse.Namespace) -> GenerateConfig:
    if pre.resume is not None:
        return load_yaml_config(_resume_config_path(pre.resume), GenerateConfig())
    if pre.preset not in PRESETS:
        raise UnknownPresetError(f"unknown preset {pre.preset!r}; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[pre.preset]()
    if pre.config is not None:
        cfg = load_yaml_config(pre.config, cfg)
    return cfg


def parse_args(argv: list[str]) -> tuple[GenerateConfig, str | None]:
    """argv → (config, resume folder or None). Precedence: preset < --config file < flags (or run's config.yaml
    < flags with --resume)."""
    cfg, resume, _ = parse_cli(argv)
    return cfg, resume


def parse_cli(argv: list[str]) -> tuple[GenerateConfig, str | None, int | None]:
    """parse_args plus the live viewer's port (None without --viewer)."""
    import tyro

    pre = _preparse(argv)
    base = _cli_defaults(pre)
    method = pre.method or base.method
    guidance_cls = method_class(method).Config
    guidance_default = merge_config(guidance_cls(), base.method_options.get(method, {}),
                                    where=f"method_options.{method}")
    Args = dataclasses.make_dataclass("GenerateArgs", [
        ("config", typing.Annotated[GenerateConfig, tyro.conf.arg(name="", prefix_name=False)]),
        ("guidance", typing.Annotated[guidance_cls, tyro.conf.arg(
            help=f"options of the guidance method ({method}; pick another with --method)")]),
        ("preset", typing.Annotated[str, tyro.conf.arg(
            help=f"named starting values: {' or '.join(PRESETS)}")], field(default=DEFAULT_PRESET)),
        ("config_file", typing.Annotated[str | None, tyro.conf.arg(
            name="config", help="a YAML file of options (e.g. a run's config.yaml); flags override it")],
         field(default=None)),
        ("resume", typing.Annotated[str | None, tyro.conf.arg(
            help="continue the run in this folder from its last checkpoint (its config.yaml, updated by flags)")],
         field(default=None)),
        ("viewer", typing.Annotated[bool, tyro.conf.arg(
            help="show the splat live in the browser while it trains (needs pip install -e \".[app]\")")],
         field(default=False)),
        ("port", typing.Annotated[int, tyro.conf.arg(help="port of --viewer (on 127.0.0.1)")], field(default=8080)),
    ])
    default = Args(config=base, guidance=guidance_default, preset=pre.preset, config_file=pre.config,
                   resume=pre.resume)
    args = tyro.cli(Args, args=argv, default=default, prog="dreammapping generate",
                    description="Text → 3D Gaussian splat (DreamMapping, Algorithm 1). "
                                "Exit codes: " + ", ".join(f"{c} {why}" for c, why in EXIT_CODE_HELP.items()) + ".")
    cfg, port = args.config, (args.port if args.viewer else None)
    if cfg.method != method:  # --method came from a config the pre-parser did not see; use that method's options
        return dataclasses.replace(cfg, method_options=base.method_options), args.resume, port
    options = {**{k: dict(v) for k, v in base.method_options.items()}, method: config_to_dict(args.guidance)}
    return dataclasses.replace(cfg, method_options=options), args.resume, port


def open_live_view(port: int):
    """--viewer: a `dreammapping.viewer.LiveView` on 127.0.0.1:port, used as train's callback."""
    try:
        from dreammapping.viewer import LiveView
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
        if resume is not None:
            run_dir = Path(resume)
        else:
            run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
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


__all__ = ["GenerateConfig", "GenerateResult", "GenerateError", "PRESETS", "generate", "train", "cli_generate",
           "build_config", "parse_args"]
