"""The `paper` preset and configs/paper.yaml (which gives every value its source) say the same thing, and the
values the paper or LucidDreamer fix come out of the preset as stated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dreammapping import train as T
from dreammapping.guidance import METHODS
from dreammapping.schedule import at_step

PAPER_YAML = Path(__file__).parents[1] / "configs" / "paper.yaml"


@pytest.fixture(scope="module")
def both():
    return T.PRESETS["paper"](), T.load_yaml_config(PAPER_YAML, T.GenerateConfig())


def test_yaml_and_preset_agree(both):
    preset, from_yaml = both
    assert T.config_to_dict(from_yaml) == T.config_to_dict(preset)
    for name in METHODS:  # every method's fully resolved options, defaults included, chosen by name as the CLI does
        by_preset = T.build_config("x", preset="paper", method=name)
        by_yaml = T.build_config("x", preset="cpu", config_file=PAPER_YAML, method=name)
        assert T.config_to_dict(by_yaml) == T.config_to_dict(by_preset), name
        assert type(by_preset.guidance) is METHODS[name].Config
    # the file spells out every option (prompt and out are per run; its table of options per method stands for
    # `guidance`, so that `--config configs/paper.yaml --method ism` gets ISM's own values too)
    import yaml

    keys = set(yaml.safe_load(PAPER_YAML.read_text()))
    assert keys == {f.name for f in dataclasses.fields(T.GenerateConfig)} - {"prompt", "out", "guidance"} | \
        {"method_options"}


def test_sourced_values(both):
    cfg, _ = both
    # paper §5
    assert (cfg.prior, cfg.iterations, cfg.batch, cfg.scene.init, cfg.scene.num_points) == \
        ("stabilityai/stable-diffusion-2-1-base", 5000, 4, "shap-e", 50_000)
    vdm = T.method_config(cfg)
    assert (vdm.dca, vdm.dca_cutoff, vdm.operator_lr, vdm.guidance_scale) == (True, 300, 0.01, 7.5)
    # LucidDreamer's timestep schedule: t_max 0.98 → 0.5 linearly over 1500 steps, then held; t_min 0.02
    from dreammapping.guidance.base import Guidance

    class _Prior:
        num_train_timesteps, is_latent = 1000, True

    method = Guidance(_Prior(), vdm)
    assert [method.timestep_range(s, cfg.iterations) for s in (0, 750, 1500, 4999)] == \
        [(20, 980), (20, 740), (20, 500), (20, 500)]
    # the same schedule and view prompts for every baseline
    for name in METHODS:
        options = T.method_config(dataclasses.replace(cfg, method=name))
        assert (options.t_max_end, at_step(options.t_anneal_steps, cfg.iterations), options.weighting,
                options.view_prompt) == (0.5, 1500, "ism", "interpolate"), name
    # LucidDreamer's Gaussians: lrs with spatial_lr_scale 3.5, densification every 100 steps in [100, 3000)
    lr = cfg.scene.lr
    assert (lr.position_init * lr.scene_extent, lr.sh_dc, lr.opacity_logits) == \
        (pytest.approx(5.6e-4), 5e-3, 5e-2)
    d = cfg.scene.density
    plan = d.schedule(cfg.iterations)  # fractions of the run: the same steps at 5000 iterations, scaled otherwise
    assert (plan.refine_start, plan.refine_stop, plan.refine_every, plan.reset_opacity_every, d.split_scale_percent) \
        == (100, 3000, 100, 300, 0.003)
    assert d.schedule(2500) == dataclasses.replace(plan, refine_start=50, refine_stop=1500, refine_every=50,
                                                   reset_opacity_every=150)
    assert d.prune_scale2d * 512 == pytest.approx(20.0)  # 20 px at 512²
