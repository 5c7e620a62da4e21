"""The declared range of every field of every config, and the one checker that applies them.

`RANGES[ConfigClass][field]` says what a field may hold; `check_ranges(obj)` walks a config (and the configs nested in
it) and raises a one-line `ConfigError` naming the first field out of range, then applies the cross-field rules
(`t_min < t_max`, an orbit range's low ≤ high, …). It runs before anything is loaded or written: `check_config` for
`generate` (CLI, YAML, Python API, the app, every run of `batch`), and `train-prior` for its own config.

Declarations live here rather than on the fields so that a config module can be reorganised without touching them;
tests/test_validation.py checks that every field of every config dataclass has one (a new field cannot slip in).
Messages never format a value whole (`short`): a YAML alias bomb or a 10⁶-character string stays one short line.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass

from dreammapping import cameras as C
from dreammapping.errors import ConfigError
from dreammapping.gaussians import LearningRates
from dreammapping.guidance import METHODS, GuidanceConfig
from dreammapping.guidance.base import WEIGHTINGS
from dreammapping.priors import VIEW_PROMPTS
from dreammapping.guidance.csd import CSDConfig
from dreammapping.guidance.ism import ISMConfig
from dreammapping.guidance.nfsd import NFSDConfig
from dreammapping.guidance.vdm import VDMConfig
from dreammapping.guidance.vsd import VSDConfig
from dreammapping.init import InitOptions
from dreammapping.mesh import MeshConfig
from dreammapping.degrade import DegradeConfig
from dreammapping.gaussian_scene import GaussiansConfig
from dreammapping.nerf import NerfConfig
from dreammapping.strategy import DensityStrategy

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 4, 2


def short(value) -> str:
    """repr(value), cut to a few dozen characters (never the whole of a huge or self-similar value)."""
    return _SHORT.repr(value)


# ================================================================================================ what a field may be
@dataclass(frozen=True)
class Num:
    """A number in [lo, hi] (an open end excludes it); `none` allows None; NaN never passes, ±inf only as an end."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    none: bool = False
    note: str = ""  # what the bound protects, said in the message

    def problem(self, value) -> str:
        if value is None:
            return "" if self.none else "must be a number, not None"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return ""  # a type error: check_values names it
        if isinstance(value, float) and math.isnan(value):
            return "is NaN; give a number"
        below = value <= self.lo if self.lo_open else value < self.lo
        above = value >= self.hi if self.hi_open else value > self.hi
        if below or above:
            return f"must be {self.describe()}, got {short(value)}"
        return ""

    def describe(self) -> str:
        parts = []
        if self.lo > -math.inf:
            parts.append(f"{'>' if self.lo_open else '≥'} {_fmt(self.lo)}")
        if self.hi < math.inf:
            parts.append(f"{'<' if self.hi_open else '≤'} {_fmt(self.hi)}")
        text = " and ".join(parts) or "a number"
        return text + (f" ({self.note})" if self.note else "") + (" or None" if self.none else "")


@dataclass(frozen=True)
class Each:
    """A tuple whose every element is `num`; `ordered`: a (low, high) range with low ≤ high."""

    num: Num
    ordered: bool = False

    def problem(self, value) -> str:
        if not isinstance(value, tuple):
            return ""
        for v in value:
            why = self.num.problem(v)
            if why:
                return f"must hold numbers {self.num.describe()}, got {short(value)}"
        if self.ordered and len(value) == 2 and value[0] > value[1]:
            return f"is a (low, high) range: low must be ≤ high, got {short(value)}"
        return ""


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def problem(self, value) -> str:
        if value in self.values:
            return ""
        return f"must be one of {', '.join(map(repr, self.values))}, got {short(value)}"


@dataclass(frozen=True)
class Text:
    """A string of at most `max_len` characters (None too when `none`)."""

    max_len: int = 4096
    none: bool = False

    def problem(self, value) -> str:
        if value is None:
            return "" if self.none else "must be text, not None"
        if isinstance(value, str) and len(value) > self.max_len:
            return f"is {len(value)} characters long; at most {self.max_len}"
        return ""


@dataclass(frozen=True)
class Flag:
    """A bool: no range beyond its type."""

    def problem(self, value) -> str:
        return ""


@dataclass(frozen=True)
class Nested:
    """Another config, checked field by field with its own declarations."""

    def problem(self, value) -> str:
        return ""


Spec = Num | Each | OneOf | Text | Flag | Nested

INT64 = Num(-2**63, 2**64, hi_open=True, note="what torch's generators accept")
STEPS = Num(0, 10**8)
COUNT = Num(1, 10**8)
LR = Num(0, 10, note="a learning rate: ≥ 0 (a negative one climbs the loss)")
POSITIVE = Num(0, 1e6, lo_open=True)
NONNEG = Num(0, 1e6)
TIMESTEP = Num(0, 1000, note="a diffusion timestep")
FRACTION = Num(0, 1)
PROMPT = Text(2000)

# ================================================================================================ the table
_GUIDANCE = {
    "guidance_scale": Num(0, 1000, lo_open=True, none=True, note="a finite CFG scale"),
    "t_min": Num(0, 1, hi_open=True, note="a fraction of the diffusion steps"),
    "t_max": Num(0, 1, lo_open=True, note="a fraction of the diffusion steps"),
    "t_max_end": Num(0, 1, lo_open=True, none=True, note="a fraction of the diffusion steps"),
    "t_anneal_steps": Num(0, 10**8, lo_open=True, none=True, note="steps, or a fraction of the run"),
    "weighting": OneOf(tuple(WEIGHTINGS)),
    "view_prompt": OneOf(tuple(VIEW_PROMPTS)),
    "perp_neg_weight": Num(-1000, 1000),
    "perp_neg_front_decay": Num(0, 1000),
    "perp_neg_side_decay": Num(0, 1000),
}

RANGES: dict[type, dict[str, Spec]] = {
    GuidanceConfig: _GUIDANCE,
    VDMConfig: {**_GUIDANCE, "dca": Flag(), "dca_cutoff": TIMESTEP,
                "operator_lr": Num(0, 1, lo_open=True, note="Mψ's Adam learning rate"),
                "condition_on_t": Flag(), "operator_size": OneOf(("auto", "small", "ulite")),
                "operator_init": OneOf(("identity", "random")), "operator_warmup": STEPS,
                "t_conditioning": OneOf(("bottleneck", "film")),
                "operator_design": OneOf(("nonlinear", "linear", "nonlinear-noise"))},
    CSDConfig: {**_GUIDANCE, "negative_prompt": PROMPT, "negative_scale": Num(0, 1000),
                "negative_scale_end": Num(0, 1000, none=True)},
    NFSDConfig: {**_GUIDANCE, "negative_prompt": PROMPT, "small_t": TIMESTEP},
    ISMConfig: {**_GUIDANCE, "delta_t": Num(1, 1000), "delta_s": Num(1, 1000), "xs_inv_steps": Num(1, 1000)},
    VSDConfig: {**_GUIDANCE, "lora_rank": Num(1, 1024), "lora_alpha": Num(0, 1e4, lo_open=True),
                "lora_lr": Num(0, 1, lo_open=True)},
    C.OrbitConfig: {
        "radius": Each(Num(0, 1e4, lo_open=True, note="a distance"), ordered=True),
        "elevation": Each(Num(-90, 90, note="degrees"), ordered=True),
        "azimuth": Each(Num(-720, 720, note="degrees"), ordered=True),
        "fovy": Each(Num(0, 180, lo_open=True, hi_open=True, note="degrees"), ordered=True),
        "overhead_probability": FRACTION,
    },
    InitOptions: {
        "radius": Num(0, 1e4, lo_open=True),
        "color": Each(FRACTION),
        "opacity": Num(0, 1, lo_open=True, hi_open=True, note="its logit must be finite"),
        "fallback": OneOf(("sphere", "ball")),
        "shap_e_model": Text(),
        "shap_e_guidance_scale": Num(0, 1000, lo_open=True),
        "shap_e_steps": Num(1, 10_000),
        "shap_e_grid": Num(8, 1024),
        "shap_e_surface_points": Num(1, 10**7),
    },
    LearningRates: {
        "position_init": LR, "position_final": LR,
        "position_delay_steps": STEPS, "position_delay_mult": FRACTION,
        "scene_extent": POSITIVE,
        "log_scales": LR, "quats": LR, "opacity_logits": LR, "sh_dc": LR,
        "sh_rest_ratio": Num(0, 1000),
    },
    DensityStrategy: {
        # steps (ints) or fractions of the run (floats)
        "refine_start": STEPS, "refine_stop": STEPS, "refine_every": Num(0, 10**8, lo_open=True),
        "grad_threshold": NONNEG, "split_scale_percent": NONNEG, "scene_extent": POSITIVE,
        "prune_opacity": Num(0, 1, hi_open=True), "prune_scale3d": NONNEG, "prune_scale2d": NONNEG,
        "reset_opacity_every": STEPS, "max_gaussians": Num(1, 10**8), "absgrad": Flag(),
    },
    GaussiansConfig: {
        "init": Text(), "num_points": Num(1, 10**9), "init_options": Nested(), "sh_degree": Num(0, 3),
        "lr": Nested(), "density": Nested(), "render_backend": OneOf(("auto", "torch", "gsplat")),
    },
    NerfConfig: {
        "radius": Num(0, 1e4, lo_open=True), "grid_resolution": Num(2, 1024), "feature_dim": Num(1, 1024),
        "hidden_dim": Num(1, 4096), "blob_scale": Num(0, 1e4), "blob_std": POSITIVE, "samples_per_ray": Num(1, 4096),
        "jitter": Flag(), "occupancy_threshold": NONNEG, "weight_eps": Num(0, 1), "normal_eps": POSITIVE,
        "albedo_warmup": FRACTION, "shading": OneOf(("lambert", "albedo")),
        "environment": OneOf(("white", "learned")), "lambda_orient": NONNEG, "lambda_sparsity": NONNEG,
        "lambda_opaque": NONNEG, "lr_grid": LR, "lr_mlp": LR, "betas": Each(Num(0, 1, hi_open=True)),
        "preview_size": Num(8, 4096),
    },
    DegradeConfig: {
        "strength": FRACTION, "blur_sigma": Num(0, 100), "desaturation": FRACTION, "until_step": COUNT,
    },
    MeshConfig: {
        "resolution": Num(8, 1024), "level": Num(0, 1e3, lo_open=True), "decimate": Num(0, 1, hi_open=True),
        "sigma_extent": Num(0, 100, lo_open=True), "max_radius_voxels": Num(1, 1024),
        "min_opacity": FRACTION, "keep_fraction": FRACTION, "fill_interior": Flag(), "dilate": Num(0, 100),
        "fill_level": Num(0, 1e3, lo_open=True), "close_voxels": Num(0, 64), "smooth": Num(0, 100),
    },
}


def _generate_ranges() -> dict[str, Spec]:
    return {
        "prompt": PROMPT, "negative_prompt": PROMPT,
        "prior": Text(), "method": OneOf(tuple(METHODS)), "guidance": Nested(),
        # sizes: a wide hard range here; what fits is resources.check_generate's memory estimate
        "iterations": Num(1, 10**8), "batch": Num(1, 10**6), "resolution": Num(8, 2**16, none=True),
        "background": OneOf(("white", "random")), "orbit": Nested(),
        "scene": Nested(), "degrade": Nested(),
        "seed": INT64, "out": Text(none=True), "overwrite": Flag(),
        "checkpoint_every": STEPS, "log_every": COUNT,
        "max_loss": Num(0, math.inf, lo_open=True, note="inf switches the explosion check off"),
        "turntable_size": Num(1, 2**20), "turntable_frames": Num(1, 10_000),
        "device": Text(200), "threads": Num(0, 4096, note="0: the free cores"),
        "dtype": OneOf(("auto", "float32", "float16", "bfloat16")),
    }


def _train_prior_ranges() -> dict[str, Spec]:
    return {
        "out": Text(), "steps": COUNT, "batch_size": Num(1, 65_536), "lr": Num(0, 1, lo_open=True),
        "warmup_steps": STEPS, "min_lr_ratio": FRACTION, "weight_decay": Num(0, 1),
        "grad_clip": NONNEG, "caption_dropout": FRACTION, "view_dropout": FRACTION,
        "ema_decay": Num(0, 1, hi_open=True), "offset_noise": Num(0, 10), "min_snr_gamma": Num(0, 1e4),
        "beta_schedule": OneOf(("linear", "scaled_linear")), "preset": OneOf(("small", "tiny")),
        "resolution": Num(8, 1024), "max_length": Num(4, 1024), "seed": INT64, "device": Text(200),
        "mixed_precision": OneOf(("auto", "bf16", "no")), "compile": Flag(), "checkpoint_every": STEPS,
        "sample_every": STEPS, "log_every": COUNT, "max_minutes": Num(0, 1e6), "stop_after": STEPS,
        "resume": Flag(), "init_from": Text(), "sample_steps": Num(1, 1000), "sample_guidance": Num(0, 1000),
        "samples_per_prompt": Num(0, 1024), "threads": Num(0, 4096),
    }


def _register_lazy() -> None:
    """GenerateConfig and TrainPriorConfig import this module's users; they are added on first use."""
    if any(cls.__name__ == "GenerateConfig" for cls in RANGES):
        return
    from dreammapping.config import GenerateConfig
    from dreammapping.toyworld.train_prior import TrainPriorConfig

    RANGES[GenerateConfig] = _generate_ranges()
    RANGES[TrainPriorConfig] = _train_prior_ranges()


def declarations(cls: type) -> dict[str, Spec]:
    _register_lazy()
    return RANGES[cls]


# ================================================================================================ the checker
def check_ranges(obj, where: str = "") -> None:
    """Every field of config `obj` (and of the configs in it) within its declared range, then the cross-field rules;
    ConfigError (one line, naming the field) for the first that is not. Types are `config.check_values`' job."""
    _register_lazy()
    table = RANGES.get(type(obj))
    if table is None:
        raise ConfigError(f"{where or type(obj).__name__}: no declared ranges for {type(obj).__name__}")
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        name = f"{where}.{f.name}" if where else f.name
        spec = table.get(f.name)
        if spec is None:  # a field added without a declaration (the test suite catches this first)
            raise ConfigError(f"{name}: no declared range")
        value = getattr(obj, f.name)
        why = spec.problem(value)
        if why:
            raise ConfigError(f"{name} {why}")
        if isinstance(spec, Nested) and dataclasses.is_dataclass(value):
            check_ranges(value, name)
    for rule in CROSS_RULES.get(type(obj).__name__, ()) + _inherited_rules(obj):
        why = rule(obj)
        if why:
            raise ConfigError(f"{where + ': ' if where else ''}{why}")


def _guidance_rules(g: GuidanceConfig) -> str:
    if not g.t_min < g.t_max:
        return f"t_min ({g.t_min}) must be below t_max ({g.t_max})"
    if g.t_max_end is not None and not g.t_min < g.t_max_end <= g.t_max:
        return f"t_max_end ({g.t_max_end}) must lie in (t_min, t_max] = ({g.t_min}, {g.t_max}]"
    return ""


def _lr_rules(lr: LearningRates) -> str:
    if (lr.position_init == 0) != (lr.position_final == 0):
        return ("position_init and position_final must both be > 0 (a log-linear decay), or both 0 to freeze "
                f"the positions; got {lr.position_init} and {lr.position_final}")
    return ""


def _inherited_rules(obj) -> tuple:
    return (_guidance_rules,) if isinstance(obj, GuidanceConfig) else ()


CROSS_RULES: dict[str, tuple] = {
    "LearningRates": (_lr_rules,),
}


def _fmt(x: float) -> str:
    """A bound as people write it: 2**63 rather than 9.22337e+18."""
    if float(x).is_integer() and abs(x) >= 2**32 and int(abs(x)) & (int(abs(x)) - 1) == 0:
        return f"{'-' if x < 0 else ''}2**{int(abs(x)).bit_length() - 1}"
    return f"{x:g}"
