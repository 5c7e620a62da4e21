"""End to end on CPU: `generate --preset paper` on a tiny random *latent* Stable Diffusion folder and a tiny random
Shap-E folder — the path real users take with SD 2.1-base, at toy size.

Both folders are built from configs with a fixed seed and written with `save_pretrained` (nothing is downloaded):
an SD-format `StableDiffusionPipeline` (UNet, AutoencoderKL with SD's ×8 down-sampling, CLIP text encoder,
tokenizer, and SD 2.1-base's PNDM scheduler config) whose model space is 4×8×8 latents of 64² images, and a
`ShapEPipeline` (prior transformer, CLIP text encoder with projection, Heun scheduler, NeRF/STF renderer).

Checked for VDM and every baseline: the VAE encoder runs inside the loop and the update reaches θ through it,
Shap-E initialises θ, densification grows the cloud, a run interrupted at a checkpoint and resumed ends bitwise
identical to an uninterrupted one, and every output is written. `text2img` runs on the same folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_pipeline, build_tiny_shap_e

from dreammapping import train as T
from dreammapping.guidance import METHODS
from dreammapping.guidance.text2img import cli_text2img

RESOLUTION = 64  # rendered side; the tiny VAE maps 64² images to 4×8×8 latents like SD maps 512² to 4×64×64
NUM_POINTS = 1000  # Shap-E's surface points upsampled to this many starting Gaussians


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"), latent=True, stable_diffusion=True)


@pytest.fixture(scope="session")
def tiny_shap_e(tmp_path_factory) -> Path:
    return build_tiny_shap_e(tmp_path_factory.mktemp("tiny_shap_e"))


def small_overrides(prior: Path, shap_e: Path, out: Path, iterations: int = 4) -> dict:
    """The paper preset, shrunk: 64², 2 views, 1000 Shap-E points, densify every 2 steps with a zero threshold."""
    return dict(
        prior=str(prior), out=str(out), iterations=iterations, batch=2, resolution=RESOLUTION, num_points=NUM_POINTS,
        device="cpu", threads=1, checkpoint_every=2, log_every=1, turntable_size=32, turntable_frames=3,
        init_options={"shap_e_model": str(shap_e), "shap_e_steps": 2, "shap_e_grid": 16},
        # grad_threshold 0: every visible Gaussian is cloned or split at the refinement, so growth is certain
        # no opacity reset: the preset's is a fraction of the run (0.06), which a 4-step run rounds up to every step
        density={"refine_start": 0, "refine_every": 2, "refine_stop": 3, "grad_threshold": 0.0,
                 "reset_opacity_every": 0},
    )


OUTPUTS = ("config.yaml", "loss.csv", "checkpoint.pt", "gaussians.ply", "turntable.gif", "views.png",
           "metrics.json")


def _params(scene) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in scene.params().items()}


@pytest.fixture(scope="module")
def straight_runs(tiny_sd, tiny_shap_e, tmp_path_factory):
    """method → (GenerateResult, θ after every step, VAE encoder input shapes) of an uninterrupted 4-step run;
    made on first use and shared by the tests below."""
    from diffusers import AutoencoderKL

    runs = {}

    def run(method):
        if method not in runs:
            encodes, scenes = [], {}
            original = AutoencoderKL.encode

            def counting_encode(self, x, *args, **kwargs):
                encodes.append(tuple(x.shape))
                return original(self, x, *args, **kwargs)

            AutoencoderKL.encode = counting_encode
            try:  # the callback's scene shares the live tensors: copy them
                result = T.generate("a red cube", preset="paper", method=method, progress=False,
                                    callback=lambda info: scenes.__setitem__(info.step, _params(info.preview())),
                                    **small_overrides(tiny_sd, tiny_shap_e, tmp_path_factory.mktemp(method)))
            finally:
                AutoencoderKL.encode = original
            runs[method] = (result, scenes, encodes)
        return runs[method]

    return run


@pytest.mark.parametrize("method", sorted(METHODS))
def test_paper_preset_latent_end_to_end(method, straight_runs, tiny_sd):
    result, scenes, encodes = straight_runs(method)
    m = result.metrics
    assert m["init_used"] == "shap-e", m["init_reason"]
    assert m["resolution"] == RESOLUTION and m["iterations"] == 4 and m["prior"] == str(tiny_sd)
    # the VAE encoder ran inside the loop on every step's batch of 64² renders (and nowhere else)
    assert encodes == [(2, 3, RESOLUTION, RESOLUTION)] * 4
    # the method's update reached θ through the VAE: the second step moved every kind of parameter
    for name in ("means", "sh", "opacity_logits", "log_scales"):
        assert not torch.equal(scenes[1][name], scenes[2][name]), name
    # densification at step 2 (threshold 0) grew the cloud beyond Shap-E's points
    assert len(scenes[1]["means"]) == NUM_POINTS and len(scenes[3]["means"]) > NUM_POINTS
    assert m["gaussians"] == len(scenes[4]["means"])
    for name in OUTPUTS:
        assert (result.run_dir / name).is_file(), name
    rows = (result.run_dir / "loss.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and all(math.isfinite(float(r.split(",")[1])) for r in rows[1:])
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["gaussians"] == m["gaussians"] and saved["init_used"] == "shap-e"


@pytest.mark.parametrize("method", [m if m in ("vdm", "vsd") else pytest.param(m, marks=pytest.mark.slow)
                                    for m in sorted(METHODS)])
def test_paper_preset_latent_resume(method, straight_runs, tiny_sd, tiny_shap_e, tmp_path):
    """Interrupted at the step-2 checkpoint and resumed: bitwise the scene of the uninterrupted run (VDM's Mψ and
    VSD's LoRA with their optimisers come back from the checkpoint too; the other methods are `slow`)."""
    straight, _, _ = straight_runs(method)
    with pytest.raises(T.Interrupted):
        T.generate("a red cube", preset="paper", method=method, progress=False, callback=lambda info: info.step == 2,
                   **small_overrides(tiny_sd, tiny_shap_e, tmp_path / "resumed"))
    resumed = T.generate(resume=tmp_path / "resumed", progress=False)
    assert resumed.metrics["resumed_from"] == 2
    for name, value in _params(straight.gaussians).items():
        assert torch.equal(value, _params(resumed.gaussians)[name]), name
    for name in OUTPUTS:
        assert (resumed.run_dir / name).is_file(), name


def test_paper_preset_cli_on_latent_folder(tiny_sd, tiny_shap_e, tmp_path, capsys):
    """The command line a user types, with the paper preset, small overrides and Perp-Neg view prompts."""
    out = tmp_path / "cli"
    code = T.cli_generate([
        "a red cube", "--preset", "paper", "--prior", str(tiny_sd), "--out", str(out), "--iterations", "2",
        "--batch", "1", "--resolution", str(RESOLUTION), "--num-points", "800", "--device", "cpu",
        "--threads", "1", "--turntable-size", "32", "--turntable-frames", "2",
        "--init-options.shap-e-model", str(tiny_shap_e), "--init-options.shap-e-steps", "2",
        "--init-options.shap-e-grid", "16", "--guidance.dca-cutoff", "500", "--guidance.view-prompt", "perp-neg"])
    assert code == T.EXIT_OK, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["init_used"] == "shap-e" and metrics["gaussians"] >= 800
    config = (out / "config.yaml").read_text()
    assert "dca_cutoff: 500" in config and "view_prompt: perp-neg" in config and f"prior: {tiny_sd}" in config


@pytest.mark.parametrize("method", ["vdm", "sds"])
def test_text2img_on_latent_folder(method, tiny_sd, tmp_path):
    from PIL import Image

    out = tmp_path / f"{method}.png"
    assert cli_text2img(["a red cube", "--prior", str(tiny_sd), "--method", method, "--steps", "3",
                         "--device", "cpu", "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (RESOLUTION, RESOLUTION)  # decoded by the VAE at the prior's resolution
