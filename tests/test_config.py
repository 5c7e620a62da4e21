"""dreammapping.config: the typed guidance options follow the method, presets give per-method values, YAML files in
both layouts load, and a run folder written with the old `method_options` table still resumes."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
import tyro
import yaml

from dreammapping import config as K
from dreammapping import train as T
from dreammapping.gaussian_scene import GaussiansConfig
from dreammapping.guidance import METHODS, GuidanceConfig, default_guidance_scale
from dreammapping.guidance.ism import ISMConfig
from dreammapping.guidance.vdm import VDMConfig
from dreammapping.priors import DiffusionPrior

TINY = ["--iterations", "4", "--num-points", "150", "--init", "sphere", "--turntable-size", "16",
        "--turntable-frames", "2", "--log-every", "1", "--checkpoint-every", "2", "--batch", "2"]


def test_the_union_is_every_methods_config():
    assert set(typing.get_args(K.GuidanceOptions)) == {cls.Config for cls in METHODS.values()}


def test_changing_the_method_keeps_the_shared_options_only():
    paper = K.preset_config("paper")
    sds = dataclasses.replace(paper, method="sds")
    assert type(sds.guidance) is GuidanceConfig
    shared = [f.name for f in dataclasses.fields(GuidanceConfig)]
    assert {n: getattr(sds.guidance, n) for n in shared} == {n: getattr(paper.guidance, n) for n in shared}
    assert not hasattr(sds.guidance, "dca_cutoff")
    # back to VDM: its own options at their defaults again, not the paper's
    assert dataclasses.replace(sds, method="vdm").guidance.operator_lr == VDMConfig().operator_lr
    assert K.GenerateConfig(method="ism").guidance == ISMConfig()
    # a preset knows each method's own values
    assert K.preset_config("paper", "ism").guidance.delta_t == 80 and ISMConfig().delta_t != 80
    with pytest.raises(T.UnknownMethodError):
        K.preset_config("cpu", "nope")


def test_build_config_picks_the_method_first(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("method: vdm\nguidance:\n  dca_cutoff: 100\nbackground: random\n")
    cfg = K.build_config("a red cube", config_file=file)
    assert cfg.guidance.dca_cutoff == 100 and cfg.background == "random"
    # the file's guidance options are VDM's: another method chosen later leaves them out, keeps the rest
    sds = K.build_config("a red cube", config_file=file, method="sds", guidance={"t_min": 0.3})
    assert type(sds.guidance) is GuidanceConfig and sds.guidance.t_min == 0.3 and sds.background == "random"
    with pytest.raises(T.ConfigError, match="dca_cutoffs"):
        K.build_config("a red cube", guidance={"dca_cutoffs": 1})
    with pytest.raises(T.ConfigError, match="method_options"):
        K.build_config("a red cube", method_options={"vdm": 3})


def test_command_line_flags_of_the_chosen_method(tmp_path):
    cfg, _ = T.parse_args(["a red cube", "--method", "vdm", "--guidance.dca-cutoff", "300",
                           "--guidance.operator-size", "ulite"])
    assert (cfg.guidance.dca_cutoff, cfg.guidance.operator_size) == (300, "ulite")
    cfg, _ = T.parse_args(["a red cube", "--preset", "paper", "--method=ism", "--guidance.delta-s", "100"])
    assert (type(cfg.guidance), cfg.guidance.delta_t, cfg.guidance.delta_s) == (ISMConfig, 80, 100)
    with pytest.raises(SystemExit):  # not an option of SDS
        T.parse_args(["a red cube", "--method", "sds", "--guidance.dca-cutoff", "3"])


def test_a_run_saved_with_method_options_still_resumes(tiny_pixel_folder, tmp_path):
    run = tmp_path / "run"
    assert T.cli_generate(["a red cube", "--prior", str(tiny_pixel_folder), "--out", str(run), *TINY,
                           "--guidance.dca-cutoff", "123"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["guidance"]["dca_cutoff"] == 123 and "method_options" not in saved
    # rewrite it as the versions before the typed guidance (and before `scene`: the Gaussians' options at the top
    # level) wrote it, with the step-2 checkpoint as the last one
    old = {("method_options" if k == "guidance" else k): ({"vdm": v} if k == "guidance" else v)
           for k, v in saved.items() if k != "scene"} | saved["scene"]["gaussians"]
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    end = torch.load(run / "checkpoint.pt", weights_only=True)
    cfg = T.resume_config(run)
    assert type(cfg.guidance) is VDMConfig and cfg.guidance.dca_cutoff == 123
    result = T.generate(resume=run, progress=False, iterations=6)
    assert result.metrics["iterations"] == 6 and result.metrics["resumed_from"] == 4
    assert int(end["step"]) == 4
    assert yaml.safe_load((run / "config.yaml").read_text())["guidance"]["dca_cutoff"] == 123


def test_default_guidance_scale(tiny_pixel_folder):
    assert default_guidance_scale("embedded") == 2.0
    assert default_guidance_scale("stabilityai/stable-diffusion-2-1-base") == 7.5
    prior = DiffusionPrior.from_pretrained(str(tiny_pixel_folder), device="cpu")
    assert not prior.is_latent and default_guidance_scale(prior) == 2.0
    assert METHODS["sds"](prior).guidance_scale == 2.0


def test_the_scene_holds_the_gaussians_options_and_old_layouts_still_load(tmp_path):
    cfg = K.build_config("a red cube", num_points=5, density={"refine_every": 3}, init="ball")  # the old keywords
    assert type(cfg.scene) is GaussiansConfig and (cfg.scene.num_points, cfg.scene.init) == (5, "ball")
    assert cfg.scene.density.refine_every == 3 and cfg.scene.density.refine_start == 75 / 160  # rest: the preset's
    saved = K.config_to_dict(cfg)
    assert list(saved["scene"]) == ["gaussians"] and saved["scene"]["gaussians"]["num_points"] == 5
    assert not set(saved) & set(K.LEGACY_SCENE_FIELDS)
    # the new layout round-trips; the old one (options at the top level) loads into the same config
    path = tmp_path / "config.yaml"
    K.save_yaml_config(path, cfg)
    assert K.config_to_dict(K.load_yaml_config(path, K.GenerateConfig())) == saved
    old = {k: v for k, v in saved.items() if k != "scene"} | saved["scene"]["gaussians"]
    path.write_text(yaml.safe_dump(old))
    assert K.config_to_dict(K.load_yaml_config(path, K.GenerateConfig())) == saved
    # a scene given by name, a name no representation has, a scene that is not a mapping
    assert K.build_config("x", scene={"gaussians": {"sh_degree": 1}}).scene.sh_degree == 1
    assert K.build_config("x", scene=GaussiansConfig(num_points=9)).scene.num_points == 9
    with pytest.raises(T.ConfigError, match="nerf"):
        K.build_config("x", scene={"nerf": {"grid": 3}})
    with pytest.raises(T.ConfigError, match="scene"):
        K.build_config("x", scene=3)
    with pytest.raises(T.ConfigError, match="num_points must be ≥ 1"):
        T.check_config(K.build_config("x", num_points=0))


def test_command_line_flags_of_the_scene_and_fractions():
    cfg, _ = T.parse_args(["a red cube", "--num-points", "7", "--density.refine-start", "0.5",
                           "--density.refine-stop", "90", "--lr.sh-dc", "0.1"])
    d = cfg.scene.density
    assert (cfg.scene.num_points, cfg.scene.lr.sh_dc) == (7, 0.1)
    assert (d.refine_start, type(d.refine_start), d.refine_stop, type(d.refine_stop)) == (0.5, float, 90, int)
    # YAML keeps an int a step and a float a fraction
    cfg = K.build_config("x", density={"refine_stop": 90, "refine_start": 0.25})
    assert (type(cfg.scene.density.refine_stop), type(cfg.scene.density.refine_start)) == (int, float)
    with pytest.raises(T.ConfigError, match="refine_every"):
        T.check_config(K.build_config("a red cube", density={"refine_every": 2.5}))


def test_a_second_scene_is_a_subcommand_its_flags_or_its_name_choose():
    """What config.SCENES makes of a second entry: the default's flags select it, the other is named."""

    @dataclasses.dataclass
    class FieldConfig:
        grid: int = 64

    scenes = {"gaussians": GaussiansConfig, "field": FieldConfig}
    union = typing.Union[tuple(typing.Annotated[c, tyro.conf.subcommand(n)] for n, c in scenes.items())]

    # (built with make_dataclass: this file's annotations are strings, which cannot name a local union)
    Args = dataclasses.make_dataclass("Args", [
        ("prompt", typing.Annotated[str, tyro.conf.Positional], dataclasses.field(default="")),
        ("scene", typing.Annotated[union, tyro.conf.OmitSubcommandPrefixes, tyro.conf.arg(name="", prefix_name=False)],
         dataclasses.field(default_factory=GaussiansConfig))])

    def parse(*argv):
        return tyro.cli(Args, args=list(argv), config=(tyro.conf.CascadeSubcommandArgs,)).scene

    assert parse("a cube") == GaussiansConfig()
    assert parse("a cube", "--num-points", "7").num_points == 7
    assert parse("a cube", "field", "--grid", "3") == FieldConfig(grid=3)
