"""The radiance field behind the representation seam: `generate … nerf` end to end on a tiny random prior, resume
bit for bit, and what a run folder is used for afterwards (render, export, evaluate)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from dreammapping import nerf as N
from dreammapping import train as T
from dreammapping.evaluate import evaluate_run
from dreammapping.export import cli_render, load_ply
from dreammapping.formats import export
from dreammapping.scene import Representation, Scene

COMMON = ["--iterations", "6", "--resolution", "16", "--turntable-size", "16", "--turntable-frames", "3",
          "--log-every", "2", "--checkpoint-every", "2", "--method", "vdm", "--seed", "3"]
FIELD = ["nerf", "--grid-resolution", "12", "--samples-per-ray", "16", "--lambda-sparsity", "0.5",
         "--lambda-orient", "0.1", "--albedo-warmup", "0.3", "--preview-size", "16"]


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = T.cli_generate([str(a) for a in argv])
    return code, capsys.readouterr().err


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def test_protocols_are_met():
    rep = N.NerfConfig(grid_resolution=8).create("a red cube", torch.Generator(), torch.device("cpu")).representation
    assert isinstance(rep, Representation) and isinstance(rep.scene, Scene)
    image = rep.scene.preview()
    assert image.dtype.name == "uint8" and image.shape == (96, 96, 3)


def test_generate_nerf_end_to_end(tiny_pixel_folder, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", run, *COMMON, *FIELD)
    assert code == 0, err
    for name in ("nerf.safetensors", "turntable.gif", "views.png", "config.yaml", "metrics.json", "loss.csv",
                 "checkpoint.pt"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["init_used"] == "blob" and metrics["occupied_cells"] > 0
    assert "occupied_cells" in (run / "loss.csv").read_text().splitlines()[0].split(",")
    # the native file holds the checkpoint's field, bit for bit
    field, shading = N.load_field(run / "nerf.safetensors")
    assert shading == "lambert" and field.cfg.grid_resolution == 12
    for name, tensor in final_state(run)["field"].items():
        assert torch.equal(field.state_dict()[name], tensor), name
    # config.yaml comes back as a NeRF config
    cfg, _ = T.parse_args(["--config", str(run / "config.yaml")])
    assert isinstance(cfg.scene, N.NerfConfig) and cfg.scene.lambda_sparsity == 0.5

    # what a run folder is for: render, export (mesh and Gaussians), evaluate
    assert cli_render([str(run), "--frames", "2", "--size", "16", "--gif"]) == 0
    pytest.importorskip("skimage")
    for fmt in ("obj", "ply"):
        path, summary = export(run, fmt, resolution=24)
        assert path == run / f"nerf.{fmt}" and path.stat().st_size > 0, summary
    assert len(load_ply(run / "nerf.ply")) > 0
    result = evaluate_run(run, num_views=0, clip=False, fid=False)
    assert 0 <= result["metrics"]["iou"] <= 1 and not any(k in result["skipped"] for k in ("iou", "psnr"))


def test_interrupted_and_resumed_nerf_runs_end_identical(tiny_pixel_folder, tmp_path, capsys, monkeypatch):
    common = ["a red cube", "--prior", tiny_pixel_folder, *COMMON, "--background", "random"]
    straight = tmp_path / "straight"
    assert run_cli(capsys, *common, "--out", straight, *FIELD)[0] == 0

    original = N.shading_at  # called at the start of every step (the albedo warm-up)

    def ctrl_c_at_3(step, max_steps, cfg):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(step, max_steps, cfg)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(N, "shading_at", ctrl_c_at_3)
    code, err = run_cli(capsys, *common, "--out", interrupted, *FIELD)
    assert code == T.EXIT_INTERRUPTED, err
    assert final_state(interrupted)["step"] == 4
    monkeypatch.setattr(N, "shading_at", original)
    code, err = run_cli(capsys, "--resume", interrupted)
    assert code == 0, err

    want, got = final_state(straight), final_state(interrupted)
    assert got["step"] == want["step"] == 6
    for name, tensor in want["field"].items():
        assert torch.equal(got["field"][name], tensor), name
    assert torch.equal(got["rng"]["torch"], want["rng"]["torch"])
    (a, shading_a), (b, shading_b) = (N.load_field(run / "nerf.safetensors") for run in (straight, interrupted))
    assert a.cfg == b.cfg and shading_a == shading_b
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_bad_field_options_are_one_line_errors(capsys):
    code, err = run_cli(capsys, "a red cube", "nerf", "--grid-resolution", "1")
    assert code == 2 and "grid_resolution" in err and len(err.strip().splitlines()) == 1


CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", ["cpu-nerf.yaml", "paper-nerf.yaml"])
def test_nerf_presets_load_and_give_every_field_a_source(name):
    import yaml

    path = CONFIGS / name
    cfg = T.build_config("a blue cone", config_file=path)
    assert isinstance(cfg.scene, N.NerfConfig)
    cfg.scene.check()
    # every option of the field is spelled out, each with a comment saying where it comes from
    lines = path.read_text().split("scene:\n  nerf:\n")[1].splitlines()
    fields = [line for line in lines if line.startswith("    ") and not line.strip().startswith("#")]
    names = {line.split(":")[0].strip() for line in fields}
    assert names == {f.name for f in dataclasses.fields(N.NerfConfig)}, names
    assert all("#" in line for line in fields), [line for line in fields if "#" not in line]
    assert yaml.safe_load(path.read_text())["scene"]["nerf"]["radius"] == cfg.scene.radius


def test_paper_nerf_values():
    cfg = T.build_config("a corgi", config_file=CONFIGS / "paper-nerf.yaml")
    g = cfg.guidance
    assert (cfg.method, g.guidance_scale, g.t_min, g.t_max, g.t_max_end) == ("vdm", 7.5, 0.02, 0.98, 0.5)
    assert cfg.resolution == 64 and cfg.iterations == 25000 and cfg.batch == 1
    assert (cfg.scene.blob_scale, cfg.scene.blob_std, cfg.scene.lambda_opaque) == (10.0, 0.5, 10.0)
    assert cfg.scene.environment == "learned" and cfg.prior == "stabilityai/stable-diffusion-2-1-base"
