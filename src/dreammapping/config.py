"""What one text-to-3D run depends on: `GenerateConfig`, the named presets, and YAML files of options.

    cfg = build_config("a red cube", preset="cpu", config_file="my.yaml", iterations=200, method="sds")

Layers, later ones winning: preset → YAML file → keyword options (→ command-line flags, in `train.parse_cli`). The
guidance method is chosen first (the last layer that names one wins) because a preset has values per method; its
options are a typed dataclass, `cfg.guidance`, an instance of `METHODS[cfg.method].Config` (`--guidance.FIELD` on the
command line, `guidance:` in YAML). Changing the method of a config keeps the options every method shares (those of
`GuidanceConfig`: CFG scale, t schedule, ω(t), view prompts) and resets the rest to the new method's defaults.

Run folders written before the typed guidance config hold `method_options: {method: {field: value}}` instead of
`guidance:`; such files (and YAML files written that way, one entry per method) still load: the entry of the chosen
method is used, the others ignored.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import tyro
import yaml

from dreammapping import cameras as C
from dreammapping.degrade import DegradeConfig, check_degrade
from dreammapping.devices import check_device
from dreammapping.errors import ConfigError, EmptyPromptError, UnknownMethodError, UnknownPresetError
from dreammapping.files import atomic_write_text
from dreammapping.gaussian_scene import GaussiansConfig
from dreammapping.gaussians import LearningRates
from dreammapping.guidance import METHODS, Guidance, GuidanceConfig
from dreammapping.guidance.csd import CSDConfig
from dreammapping.guidance.ism import ISMConfig
from dreammapping.guidance.nfsd import NFSDConfig
from dreammapping.guidance.vdm import VDMConfig
from dreammapping.guidance.vsd import VSDConfig
from dreammapping.init import InitOptions
from dreammapping.nerf import NerfConfig
from dreammapping.strategy import DensityStrategy
from dreammapping.priors import is_embedded
from dreammapping.toyworld.grammar import KNOWN_WORDS, V1_KNOWN_WORDS, content_words, unknown_words
from dreammapping.resources import check_generate, check_yaml_shape, read_capped
from dreammapping.validation import check_ranges, short

# The Config of every method in METHODS (SDS uses the base GuidanceConfig); tests check that none is missing.
GuidanceOptions = GuidanceConfig | VDMConfig | CSDConfig | NFSDConfig | ISMConfig | VSDConfig

# The representations (dreammapping.scene): name → its options. The name is the command line's subcommand
# (`dreammapping generate "a cube" nerf …`; the first is the default) and the scene's key in YAML (`scene: {gaussians:
# {…}}`). A new representation is one more entry here.
SCENES: dict[str, type] = {"gaussians": GaussiansConfig, "nerf": NerfConfig}
# What `GenerateConfig.scene` holds: one tyro subcommand per entry of SCENES (a plain nested config while there is one).
SceneOptions = typing.Union[tuple(Annotated[cls, tyro.conf.subcommand(name)] for name, cls in SCENES.items())]
# The options the Gaussians' config took over from GenerateConfig: run folders and YAML files written before `scene`
# hold them at the top level, where they still load from.
LEGACY_SCENE_FIELDS = ("init", "num_points", "init_options", "sh_degree", "lr", "density", "render_backend")


def scene_name(options) -> str:
    """The SCENES name of a scene's options (ConfigError for anything else)."""
    for name, cls in SCENES.items():
        if type(options) is cls:
            return name
    raise ConfigError(f"scene: expected the options of one of {', '.join(SCENES)}, got {type(options).__name__}")


def method_class(name: str) -> type[Guidance]:
    """METHODS[name]; UnknownMethodError (one line, the choices) for any other name."""
    if not isinstance(name, str) or name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def switch_guidance(options: GuidanceConfig, method: str) -> GuidanceConfig:
    """`method`'s Config with the options every method shares taken from `options` (its own at their defaults)."""
    shared = {f.name: getattr(options, f.name) for f in dataclasses.fields(GuidanceConfig) if f.init}
    return method_class(method).Config(**shared)


# ================================================================================================ the config
@dataclass
class GenerateConfig:
    """Everything one text-to-3D run depends on; written to the run's config.yaml."""

    prompt: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PROMPT")] = ""  # what to generate
    negative_prompt: str = ""  # what to steer away from (the unconditional prompt of CFG when empty)
    prior: str = "embedded"  # the diffusion prior: "embedded", a Hugging Face id in the local cache, or a folder
    method: str = "vdm"  # guidance: a name in dreammapping.guidance.METHODS (vdm, sds, csd, nfsd, ism, vsd)
    # options of the guidance method chosen by --method (METHODS[method].Config, e.g. guidance_scale, dca_cutoff);
    # another method keeps the options all methods share and its own defaults
    guidance: Annotated[GuidanceOptions, tyro.conf.AvoidSubcommands] = field(default_factory=VDMConfig)
    iterations: int = 300  # optimisation steps
    batch: int = 4  # camera views rendered per step
    resolution: int | None = None  # rendered image side in pixels; None: the prior's own resolution
    background: Literal["white", "random"] = "white"  # colour behind the object while training
    orbit: C.OrbitConfig = field(default_factory=C.OrbitConfig)  # ranges of the random training cameras
    # the 3D representation and its own options (init, learning rates, densification …), one of SCENES; on the
    # command line a subcommand (gaussians, the default, is chosen by its own flags: --num-points, --density.* …)
    scene: Annotated[SceneOptions, tyro.conf.OmitSubcommandPrefixes, tyro.conf.arg(name="", prefix_name=False)] = \
        field(default_factory=GaussiansConfig)
    seed: int = 0  # seeds the global torch RNG (guidance's t and ε) and the camera generator
    out: str | None = None  # run folder; None: runs/<prompt-slug>-<method>-<seed>
    overwrite: bool = False  # allow a fresh run to write into a folder that already holds a run
    checkpoint_every: int = 100  # steps between checkpoints (0: only on Ctrl-C and at the end)
    log_every: int = 10  # steps between loss.csv rows and progress-bar updates
    max_loss: float = 1e6  # a loss above this is an explosion: stop, keep the last good checkpoint
    turntable_size: int = 128  # side of the final turntable / view-grid frames (the splat is 3D: any size)
    turntable_frames: int = 48  # frames of the final turntable
    device: str = "auto"  # "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", …
    threads: int = 0  # CPU threads for torch (0: auto: free cores, more than one only if measured faster, threads.py)
    # the prior's dtype; auto: fp16 on CUDA, bf16 for the embedded prior on a CPU with native bf16, else fp32
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # experiments only: blur / desaturate what the prior sees, decaying to nothing by a fixed step (off by default)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)

    def __post_init__(self):
        # `GenerateConfig(method="sds")` or `dataclasses.replace(cfg, method="ism")`: the options follow the method.
        # An unknown method or a guidance that is no GuidanceConfig stays as given, for `check_config` to name.
        if isinstance(self.method, str) and self.method in METHODS and isinstance(self.guidance, GuidanceConfig) \
                and type(self.guidance) is not METHODS[self.method].Config:
            self.guidance = switch_guidance(self.guidance, self.method)


# ================================================================================================ presets
def _cpu_preset(method: str = "vdm") -> GenerateConfig:
    """Laptop CPU, 2 cores, the embedded 32² prior: a recognisable toy object in under a minute."""
    return GenerateConfig(
        prior="embedded",
        method=method,
        guidance=method_class(method).Config(),
        # 160 steps (the first release had 300): as good on the held-out prompts (docs/performance.md)
        iterations=160,
        batch=4,
        orbit=C.OrbitConfig(overhead_probability=0.15),  # as the prior's training views: some from above
        scene=GaussiansConfig(
            init="sphere",  # Shap-E on a CPU costs minutes and is not available offline; a sphere works for toys
            num_points=2000,
            init_options=InitOptions(radius=0.6),
            # the first release's learning rates × 300/160, so that lr × steps stays; without it, 200 steps already
            # left cone tips unformed (attribute accuracy −0.18, docs/performance.md)
            lr=LearningRates(position_init=3.75e-3, position_final=3.75e-4, log_scales=1.875e-2, quats=9.375e-3,
                             opacity_logits=9.375e-2, sh_dc=3.75e-2),
            # densification at steps 81 and 108, ~50% and ~67% of the run as the first release's 150 and 200 of 300;
            # as fractions of the run (75, 112 and 27 of 160 steps): --iterations 1000 densifies at 507 and 676
            density=DensityStrategy(refine_start=75 / 160, refine_stop=112 / 160, refine_every=27 / 160,
                                    grad_threshold=2e-4, reset_opacity_every=0, max_gaussians=4000),
        ),
        checkpoint_every=100,
        turntable_size=128,
    )


# The paper preset's guidance: one schedule for every method (so that `--method sds` etc. are compared under the
# same setting), plus each method's own values.
# t_max is annealed over 1500 of the 5000 steps: 0.3 of the run (a float is a fraction of the run, an int a step).
PAPER_SCHEDULE = {"guidance_scale": 7.5, "t_min": 0.02, "t_max": 0.98, "t_max_end": 0.5, "t_anneal_steps": 0.3,
                  "weighting": "ism", "view_prompt": "interpolate"}
PAPER_METHOD_OPTIONS = {"vdm": {"dca": True, "dca_cutoff": 300, "operator_lr": 0.01},
                        "ism": {"delta_t": 80, "delta_s": 200, "xs_inv_steps": 5}}


def _paper_preset(method: str = "vdm") -> GenerateConfig:
    """The paper's setting (§5): SD 2.1-base, 512², 4 views, 5000 steps, Shap-E init of ~50k points, VDM + DCA.

    Where the paper is silent it follows LucidDreamer, the codebase it says it built on; configs/paper.yaml spells
    out every value with its source (tests/test_paper_preset.py checks that the two agree).
    """
    return GenerateConfig(
        prompt="",
        negative_prompt="unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, oversaturation.",
        prior="stabilityai/stable-diffusion-2-1-base",
        method=method,
        guidance=method_class(method).Config(**PAPER_SCHEDULE, **PAPER_METHOD_OPTIONS.get(method, {})),
        iterations=5000,
        batch=4,
        resolution=512,
        background="random",
        orbit=C.OrbitConfig(radius=(3.5, 5.5), elevation=(-15.0, 45.0), azimuth=(-180.0, 180.0),
                            fovy=(9.17, 34.38), overhead_probability=0.0),
        scene=GaussiansConfig(
            init="shap-e",
            num_points=50_000,
            init_options=InitOptions(radius=0.5, opacity=0.1),
            sh_degree=0,
            lr=LearningRates(position_init=1.6e-4, position_final=1.6e-6, scene_extent=3.5, log_scales=5e-3,
                             quats=1e-3, opacity_logits=5e-2, sh_dc=5e-3),
            # LucidDreamer's steps 100, 3000, every 100 and 300 of 5000, as fractions of the run
            density=DensityStrategy(refine_start=0.02, refine_stop=0.6, refine_every=0.02, grad_threshold=7.5e-3,
                                    split_scale_percent=0.003, scene_extent=3.5, prune_opacity=0.005,
                                    prune_scale3d=0.1, prune_scale2d=0.0390625, reset_opacity_every=0.06,
                                    max_gaussians=500_000),
        ),
        checkpoint_every=500,
        log_every=10,
        max_loss=1e8,
        turntable_size=512,
        turntable_frames=120,
    )


# name → (method → the preset's config for that method; its default method when called without one)
PRESETS: dict[str, Callable[..., GenerateConfig]] = {"cpu": _cpu_preset, "paper": _paper_preset}
DEFAULT_PRESET = "cpu"


def preset_config(name: str, method: str | None = None) -> GenerateConfig:
    """The preset `name` for `method` (None: the preset's own method); UnknownPresetError for an unknown name."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    if method is None:
        return PRESETS[name]()
    method_class(method)  # UnknownMethodError for a name not in METHODS
    return PRESETS[name](method)


# ================================================================================================ plain dicts / YAML
def config_to_dict(obj) -> Any:
    """A dataclass as plain YAML-able data (tuples become lists, tensors never appear); a GenerateConfig's scene
    under its name (`scene: {gaussians: {…}}`), which says which representation the options are of."""
    if isinstance(obj, GenerateConfig):
        data = {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        data["scene"] = {scene_name(obj.scene): data["scene"]}
        return data
    if dataclasses.is_dataclass(obj):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): config_to_dict(v) for k, v in obj.items()}
    return obj


def merge_config(base, data: dict, where: str = "config"):
    """A copy of dataclass `base` with the (partial, nested) values of `data`; unknown keys raise ConfigError.

    For a GenerateConfig, `method` is applied first (the guidance options follow it), then the rest; `guidance` is
    merged into the method's options and a `method_options` table (the format before `guidance`) contributes the
    entry of the chosen method."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    table = None
    if isinstance(base, GenerateConfig):
        table = data.pop("method_options", None)
        if table is not None and not (isinstance(table, dict) and all(isinstance(v, (dict, type(None)))
                                                                       for v in table.values())):
            raise ConfigError(f"{where}.method_options: expected a mapping of method → options, got {short(table)}")
        if "method" in data:
            base = dataclasses.replace(base, method=_coerce(data.pop("method"), str, f"{where}.method"))
        base, data = _merge_scene(base, data, where)
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
        else:
            changes[key] = _coerce(value, hints.get(key), f"{where}.{key}")
    merged = dataclasses.replace(base, **changes)
    if table and table.get(merged.method) and isinstance(merged.guidance, GuidanceConfig):
        merged.guidance = merge_config(merged.guidance, table[merged.method],
                                       f"{where}.method_options.{merged.method}")
    return merged


def _merge_scene(base: GenerateConfig, data: dict, where: str) -> tuple[GenerateConfig, dict]:
    """`base` with the scene of `data` merged in, and the rest of `data`. `scene: {NAME: {…}}` picks the
    representation NAME (at its defaults when `base` has another) and updates its options; `scene: {…}` without a
    name updates `base`'s own. Options of the Gaussians at the top level (the layout before `scene`) count as theirs.
    """
    scene = data.pop("scene", None)
    legacy = {k: data.pop(k) for k in LEGACY_SCENE_FIELDS if k in data}
    if scene is None and not legacy:
        return base, data
    options = base.scene
    if legacy:
        if not isinstance(options, GaussiansConfig):
            raise ConfigError(f"{where}: {', '.join(legacy)}: options of the Gaussians, not of the scene "
                              f"{scene_name(options)}")
        options = merge_config(options, legacy, where)
    if scene is not None:
        if not isinstance(scene, dict):
            raise ConfigError(f"{where}.scene: expected a mapping, got {scene!r}")
        name = scene_name(options)
        if len(scene) == 1 and next(iter(scene)) in SCENES:
            name, scene = next(iter(scene.items()))
            if type(options) is not SCENES[name]:
                options = SCENES[name]()
        options = merge_config(options, scene or {}, f"{where}.scene.{name}")
    return dataclasses.replace(base, scene=options), data


def _coerce(value, hint, where: str):
    """YAML gives lists for tuples and ints for floats; bring them back to the declared type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_coerce(v, args[0] if args else None, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (typing.Union, types.UnionType) and float in args and int not in args \
            and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is Literal and value not in args:
        raise ConfigError(f"{where}: {short(value)} is not one of {', '.join(map(repr, args))}")
    if not _matches(value, hint):
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {short(value)}")
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


def check_values(obj, where: str) -> None:
    """Every field of dataclass `obj` (recursively) has its declared type and no float is NaN: what `merge_config`
    checks for YAML and keyword options, for configs built by hand (`train(GenerateConfig(iterations="ten"))`)."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value, name = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        if not _matches(value, hints.get(f.name)):
            raise ConfigError(f"{name}: expected {_type_name(hints.get(f.name))}, got {short(value)}")
        if dataclasses.is_dataclass(value):
            check_values(value, name)
        for v in (value if isinstance(value, tuple) else (value,)):
            if isinstance(v, float) and math.isnan(v):
                raise ConfigError(f"{name} is NaN; give a number")


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML file of options as a dict; ConfigError (one line) when it cannot be read or parsed."""
    try:  # capped: --config /dev/zero must not read forever; no alias bombs (dreammapping.resources)
        text = read_capped(path, what="config file").decode("utf-8")
        check_yaml_shape(text, str(path))
        data = yaml.safe_load(text) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start + 1})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return data


def load_yaml_config(path: str | os.PathLike, base: GenerateConfig) -> GenerateConfig:
    return merge_config(base, read_yaml(path), where=str(path))


def save_yaml_config(path: Path, cfg: GenerateConfig) -> None:
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))


# ================================================================================================ building one
def build_config(prompt: str | None = None, preset: str = DEFAULT_PRESET, config_file: str | os.PathLike | None = None,
                 **options) -> GenerateConfig:
    """Preset → YAML file → keyword options (nested ones as dicts or dataclasses, e.g. lr={"sh_dc": 0.01},
    guidance={"dca_cutoff": 100}) → prompt. The method is chosen first: the last of these that names one."""
    data = read_yaml(config_file) if config_file is not None else {}
    options = {k: ({scene_name(v): config_to_dict(v)} if k == "scene" else config_to_dict(v))
               if dataclasses.is_dataclass(v) else v for k, v in options.items()}
    layers = [(layer, where) for layer, where in ((data, str(config_file)), (options, "options")) if layer]
    method = next((layer["method"] for layer, _ in reversed(layers)
                   if isinstance(layer, dict) and isinstance(layer.get("method"), str)), None)
    cfg = preset_config(preset, method)
    for layer, where in layers:
        if isinstance(layer, dict) and method is not None and layer.get("method", method) != method:
            # a file written for another method: its guidance options are not this method's
            layer = {k: v for k, v in layer.items() if k not in ("method", "guidance")}
        cfg = merge_config(cfg, layer, where=where)
    if prompt is not None:
        check_prompt_type(prompt)
        cfg = dataclasses.replace(cfg, prompt=prompt)
    return cfg


def check_prompt_type(prompt) -> None:
    if not isinstance(prompt, str):
        raise ConfigError(f"the prompt must be a string, got {type(prompt).__name__} {short(prompt)}")


def method_config(cfg: GenerateConfig) -> GuidanceConfig:
    """The chosen method's options, `cfg.guidance`, after checking that the method exists and they are its own."""
    cls = method_class(cfg.method)
    if type(cfg.guidance) is not cls.Config:
        raise ConfigError(f"guidance: expected the options of {cfg.method} ({cls.Config.__name__}), "
                          f"got {type(cfg.guidance).__name__}")
    return cfg.guidance


def check_config(cfg: GenerateConfig) -> None:
    """Every value a run depends on, checked before anything is loaded or written (one-line ConfigError else)."""
    if not isinstance(cfg, GenerateConfig):
        raise ConfigError(f"expected a GenerateConfig, got {type(cfg).__name__}")
    check_values(cfg, "")
    if not cfg.prompt or not cfg.prompt.strip():
        raise EmptyPromptError("the prompt is empty; say what to generate, e.g. dreammapping generate \"a red cube\"")
    method_class(cfg.method)  # an unknown method is exit 4, before its options are looked at
    check_ranges(cfg)  # every field's declared range and the cross-field rules (dreammapping.validation)
    try:
        check_degrade(cfg.degrade)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_device(cfg.device)
    try:
        cfg.scene.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    method_config(cfg)
    check_generate(cfg)  # one memory estimate (resolution × batch, points, turntable) and threads ≤ cores
    if is_embedded(cfg.prior) and not content_words(cfg.prompt):  # it would run with no prompt at all
        raise EmptyPromptError(f"the embedded prior knows no word of {cfg.prompt!r}: it draws toy shapes "
                               "(cube, sphere, cone, cylinder, torus) in colours, e.g. \"a red cube\"")


def unknown_prompt_words(cfg: GenerateConfig) -> list[str]:
    """Words of the prompt the embedded toy-world prior was never trained on (only checked for the embedded names;
    "embedded" / "embedded-v1" are world v1's, so patterns, white and black are reported; "embedded-v2" knows v2's)."""
    if not is_embedded(cfg.prior):
        return []
    return unknown_words(cfg.prompt, KNOWN_WORDS if cfg.prior == "embedded-v2" else V1_KNOWN_WORDS)


# ================================================================================================ run folder names
def slugify(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "run"


def default_run_dir(cfg: GenerateConfig) -> Path:
    """runs/<prompt-slug>-<method>-<seed>: where a run goes without --out."""
    return Path("runs") / f"{slugify(cfg.prompt)}-{cfg.method}-{cfg.seed}"


def run_dir_of(cfg: GenerateConfig) -> Path:
    """The run's folder: --out, else `default_run_dir`."""
    return Path(cfg.out) if cfg.out else default_run_dir(cfg)
