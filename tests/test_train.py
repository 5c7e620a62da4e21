"""The generate command end to end on a tiny random prior: outputs, resume, bad input and faults, config round trip."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from dreammapping import train as T
from dreammapping.export import load_ply
from dreammapping.guidance import GuidanceConfig
from dreammapping.guidance.vdm import VDMConfig

# A few steps on ~200 Gaussians at 16², with densification early enough to change the count mid-run.
TINY = ["--iterations", "6", "--num-points", "200", "--init", "sphere", "--turntable-size", "16",
        "--turntable-frames", "3", "--log-every", "2", "--checkpoint-every", "2", "--method", "vdm",
        "--density.refine-start", "1", "--density.refine-every", "2", "--density.grad-threshold", "1e-9",
        "--density.max-gaussians", "260"]


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = T.cli_generate([str(a) for a in argv])
    return code, capsys.readouterr().err


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def test_end_to_end_writes_every_output(tiny_pixel_folder, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", run, *TINY)
    assert code == 0, err
    for name in ("gaussians.ply", "turntable.mp4", "turntable.gif", "views.png", "config.yaml", "metrics.json",
                 "loss.csv", "checkpoint.pt"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("wall_seconds", "train_seconds", "it_per_s", "final_loss", "gaussians", "method", "prior",
                "init_used", "init_reason"):
        assert key in metrics, key
    assert metrics["method"] == "vdm" and metrics["init_used"] == "sphere" and metrics["iterations"] == 6
    g = load_ply(run / "gaussians.ply")
    assert len(g) == metrics["gaussians"] and len(g) > 200  # densification cloned some
    assert torch.isfinite(g.means).all()
    state = final_state(run)
    torch.testing.assert_close(g.means, state["gaussians"]["means"])
    rows = (run / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,aux_loss,gaussians") and [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]
    # config.yaml round-trips through --config: the same fully resolved config, and flags still override it
    cfg, resume = T.parse_args(["--config", str(run / "config.yaml")])
    assert resume is None and T.config_to_dict(cfg) == T.config_to_dict(
        T.load_yaml_config(run / "config.yaml", T.GenerateConfig()))
    assert cfg.prompt == "a red cube" and cfg.iterations == 6 and cfg.density.refine_every == 2
    cfg2, _ = T.parse_args(["--config", str(run / "config.yaml"), "--iterations", "9", "--guidance.dca-cutoff", "100"])
    assert cfg2.iterations == 9 and cfg2.guidance.dca_cutoff == 100 and cfg2.prompt == "a red cube"


def test_interrupted_and_resumed_runs_end_identical(tiny_pixel_folder, tmp_path, capsys, monkeypatch):
    common = ["a red cube", "--prior", tiny_pixel_folder, *TINY, "--seed", "3", "--background", "random"]
    straight = tmp_path / "straight"
    assert run_cli(capsys, *common, "--out", straight)[0] == 0

    # Ctrl-C during step 2 → checkpoint before step 3, the resume command printed, exit 130
    original = T.update_learning_rates

    def ctrl_c_at(step_to_interrupt):
        def patched(optimizer, step, lrs, max_steps):
            if step == step_to_interrupt:
                os.kill(os.getpid(), signal.SIGINT)
            return original(optimizer, step, lrs, max_steps)
        return patched

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(T, "update_learning_rates", ctrl_c_at(2))
    code, err = run_cli(capsys, *common, "--out", interrupted)
    assert code == T.EXIT_INTERRUPTED
    assert "interrupted at step 3/6" in err and f"dreammapping generate --resume {interrupted}" in err
    assert final_state(interrupted)["step"] == 3 and not (interrupted / "gaussians.ply").exists()
    monkeypatch.setattr(T, "update_learning_rates", original)

    def no_init(*args, **kwargs):
        raise AssertionError("resume must not re-run the initialisation")

    original_init = T.initialise
    monkeypatch.setattr(T, "initialise", no_init)
    code, err = run_cli(capsys, "--resume", interrupted)
    assert code == 0, err
    monkeypatch.setattr(T, "initialise", original_init)

    # a crash (not Ctrl-C) at step 5: resume from the periodic checkpoint written after step 4
    def crash(optimizer, step, lrs, max_steps):
        if step == 5:
            raise RuntimeError("power cut")
        return original(optimizer, step, lrs, max_steps)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(T, "update_learning_rates", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        T.cli_generate([str(a) for a in (*common, "--out", crashed)])
    monkeypatch.setattr(T, "update_learning_rates", original)
    assert final_state(crashed)["step"] == 4
    assert T.generate(resume=crashed, progress=False).metrics["resumed_from"] == 4

    want = final_state(straight)
    for run in (interrupted, crashed):
        got = final_state(run)
        assert got["step"] == want["step"] == 6
        for name, tensor in want["gaussians"].items():
            assert torch.equal(got["gaussians"][name], tensor), (run.name, name)
        for a, b in zip(got["method_params"], want["method_params"]):
            assert torch.equal(a, b)
        assert torch.equal(got["rng"]["torch"], want["rng"]["torch"])
        assert (run / "loss.csv").read_text().splitlines()[0] == (straight / "loss.csv").read_text().splitlines()[0]
        assert [r.split(",")[:2] for r in (run / "loss.csv").read_text().splitlines()] == \
            [r.split(",")[:2] for r in (straight / "loss.csv").read_text().splitlines()]


def test_bad_input_messages_and_exit_codes(tiny_pixel_folder, tmp_path, capsys, monkeypatch):
    prior = ["--prior", tiny_pixel_folder]
    code, err = run_cli(capsys, "   ", *prior, "--out", tmp_path / "a")
    assert code == T.EXIT_EMPTY_PROMPT and "prompt is empty" in err and len(err.strip().splitlines()) == 1
    code, err = run_cli(capsys, "a red cube", "--method", "magic", *prior)
    assert code == T.EXIT_UNKNOWN_METHOD and "unknown method 'magic'" in err and "vdm" in err
    code, err = run_cli(capsys, "a red cube", "--preset", "gpu-farm", *prior)
    assert code == T.EXIT_UNKNOWN_PRESET and "unknown preset 'gpu-farm'" in err and "cpu" in err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, "a red cube", *prior, "--out", blocker / "run")
    assert code == T.EXIT_OUTPUT and "cannot write to the output folder" in err
    code, err = run_cli(capsys, "a red cube", "--prior", tmp_path / "no-such-prior", "--out", tmp_path / "b")
    assert code == T.EXIT_PRIOR and "no-such-prior" in err and len(err.strip().splitlines()) == 1
    code, err = run_cli(capsys, "--resume", tmp_path / "never-ran")
    assert code == T.EXIT_RUN_EXISTS and "nothing to resume" in err
    code, err = run_cli(capsys, "a red cube", *prior, "--init", tmp_path / "missing.ply", "--out", tmp_path / "c")
    assert code == T.EXIT_INIT and "missing.ply" in err
    code, err = run_cli(capsys, "a red cube", "--iterations", "0", *prior)
    assert code == T.EXIT_USAGE and "iterations" in err
    code, _ = run_cli(capsys, "a red cube", "--no-such-flag")
    assert code == T.EXIT_USAGE


def test_unknown_words_warn_for_the_embedded_prior(tmp_path, capsys, monkeypatch):
    from dreammapping import priors

    assert T.unknown_prompt_words(T.GenerateConfig(prompt="a red cube on top of a blue sphere")) == []
    assert T.unknown_prompt_words(T.GenerateConfig(prompt="a red cube", prior="/some/sd")) == []
    # the shipped embedded prior is world v1's: world v2's words are news to it
    assert T.unknown_prompt_words(T.GenerateConfig(prompt="a red cube with white stripes")) == ["with", "white",
                                                                                                 "stripes"]

    def missing(*args, **kwargs):
        raise priors.PriorNotFoundError("the embedded prior is not shipped in this install")

    monkeypatch.setattr(priors.DiffusionPrior, "from_pretrained", missing)
    code, err = run_cli(capsys, "a shiny red dragon", "--prior", "embedded", "--out", tmp_path / "w")
    lines = err.strip().splitlines()
    assert "does not know 'shiny', 'dragon'" in lines[0] and lines[0].startswith("warning:")
    assert code == T.EXIT_PRIOR and "not shipped" in lines[-1]


def test_existing_run_is_not_overwritten(tiny_pixel_folder, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("prompt: earlier\n")
    (run / "checkpoint.pt").write_bytes(b"earlier")
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", run)
    assert code == T.EXIT_RUN_EXISTS and "--resume" in err and "--overwrite" in err
    assert (run / "config.yaml").read_text() == "prompt: earlier\n"
    assert (run / "checkpoint.pt").read_bytes() == b"earlier"
    # any run output counts as a run, not only the checkpoint (issue 11: a finished run without checkpoint.pt was
    # silently replaced)
    (run / "checkpoint.pt").unlink()
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", run, *TINY, "--iterations", "2")
    assert code == T.EXIT_RUN_EXISTS and "config.yaml" in err
    assert (run / "config.yaml").read_text() == "prompt: earlier\n"
    # a folder where a run failed before writing anything (e.g. the prior was missing) holds no run: reused
    empty = tmp_path / "empty"
    code, err = run_cli(capsys, "a red cube", "--prior", tmp_path / "no-prior", "--out", empty, *TINY)
    assert code == T.EXIT_PRIOR and not any(p.name in T.RUN_FILES for p in empty.iterdir())
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", empty, *TINY, "--iterations", "2")
    assert code == 0, err


def test_checkpoint_of_another_method_is_refused_on_resume(tiny_pixel_folder, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", run, *TINY, "--iterations", "2")
    assert code == 0, err
    code, err = run_cli(capsys, "--resume", run, "--method", "sds", "--iterations", "4")
    assert code != 0 and "checkpoint was made with method 'vdm'" in err, err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_pixel_folder, tmp_path, capsys, monkeypatch):
    from dreammapping import guidance

    class Poisoned(guidance.SDS):
        def __call__(self, images, emb, step=0, max_steps=1):
            out = super().__call__(images, emb, step, max_steps)
            if step >= 3:
                out.loss = out.loss * float("nan")
            return out

    monkeypatch.setitem(guidance.METHODS, "sds", Poisoned)
    run = tmp_path / "run"
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", run, *TINY, "--method", "sds")
    assert code == T.EXIT_DIVERGED
    assert "stopped at step 3: the loss is nan" in err and "last good checkpoint (step 2)" in err
    assert final_state(run)["step"] == 2 and not (run / "gaussians.ply").exists()

    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", tmp_path / "boom", *TINY,
                        "--method", "sds", "--max-loss", "1e-9")
    assert code == T.EXIT_DIVERGED and "exploded" in err and "no checkpoint had been written yet" in err


def test_python_api_and_presets(tmp_path):
    assert set(T.PRESETS) == {"cpu", "paper"}
    paper = T.build_config("a cat", preset="paper")
    assert (paper.prior, paper.resolution, paper.batch, paper.iterations, paper.num_points, paper.init) == \
        ("stabilityai/stable-diffusion-2-1-base", 512, 4, 5000, 50_000, "shap-e")
    vdm = T.method_config(paper)
    assert (vdm.guidance_scale, vdm.dca, vdm.dca_cutoff) == (7.5, True, 300)
    cpu = T.build_config("a red cube", iterations=7, lr={"sh_dc": 0.5}, guidance={"t_min": 0.1})
    assert cpu.prior == "embedded" and cpu.iterations == 7 and cpu.lr.sh_dc == 0.5
    assert type(cpu.guidance) is VDMConfig and cpu.guidance.t_min == 0.1
    # the table of options per method of earlier versions: the chosen method's entry counts, the others not
    sds = T.build_config("a red cube", method="sds", method_options={"sds": {"t_min": 0.2}, "vdm": {"dca": False}})
    assert type(sds.guidance) is GuidanceConfig and sds.guidance.t_min == 0.2
    assert T.default_run_dir(cpu) == Path("runs/a-red-cube-vdm-0")
    with pytest.raises(T.ConfigError, match="unknown option"):
        T.build_config("x", iterationz=3)
    with pytest.raises(T.UnknownPresetError):
        T.build_config("x", preset="nope")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    cfg, _ = T.parse_args(["a red cube", "--config", str(path)])
    assert cfg.prompt == "a red cube"
    T.method_config(cfg)  # the method's options are valid fields of its config


def test_help_lists_every_exit_code(capsys):
    codes = {cls.exit_code for cls in T.GenerateError.__subclasses__()}
    assert codes == set(T.EXIT_CODE_HELP)  # a new error class must be documented in --help
    assert T.cli_generate(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for code, why in T.EXIT_CODE_HELP.items():
        assert f"{code} {why}" in out


def test_callback_sees_the_scene_and_can_stop_the_run(tiny_pixel_folder, tmp_path):
    run, seen = tmp_path / "run", []

    def callback(step, info):
        seen.append((step, len(info["scene"]), info["iterations"], info["scene"].means.requires_grad))
        return step == 3  # ask to stop after the third step

    cfg, _ = T.parse_args(["a red cube", "--prior", str(tiny_pixel_folder), "--out", str(run), *TINY])
    with pytest.raises(T.Interrupted):
        T.train(cfg, run, progress=False, callback=callback)
    assert [s[0] for s in seen] == [1, 2, 3] and all(s[2] == 6 for s in seen)
    assert not any(s[3] for s in seen)  # the callback gets a detached scene
    assert final_state(run)["step"] == 3  # stopped at a step boundary with a checkpoint, resumable
