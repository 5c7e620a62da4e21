"""Every value checked in one place before anything is written (issue 24, classes 4, 5 and 9): the declared range of
every config field, the cross-field rules, the memory estimate, and the caps on what is read. Each case is one the
issue found (a traceback, a value accepted silently, or "diverged" for a bad value)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from dreammapping import resources, validation
from dreammapping import train as T
from dreammapping.config import GenerateConfig, GuidanceOptions, build_config, check_config
from dreammapping.guidance import METHODS
from dreammapping.errors import EXIT_EMPTY_PROMPT, EXIT_OUTPUT, EXIT_USAGE, ConfigError
from dreammapping.mesh import MeshConfig
from dreammapping.toyworld.train_prior import TrainPriorConfig, cli_train_prior

GIB = 1 << 30


def config_classes() -> set[type]:
    """GenerateConfig and every dataclass reachable from its fields (every method's options), TrainPriorConfig and
    MeshConfig: the configs a user sets."""
    found: set[type] = set()

    def visit(cls: type) -> None:
        if cls in found:
            return
        found.add(cls)
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            for t in (hint, *typing.get_args(hint)):
                if isinstance(t, type) and dataclasses.is_dataclass(t):
                    visit(t)

    for cls in (GenerateConfig, TrainPriorConfig, MeshConfig, *typing.get_args(GuidanceOptions)):
        visit(cls)
    return found


def test_every_field_of_every_config_has_a_declared_range():
    classes = config_classes()
    assert len(classes) >= 12
    for cls in classes:
        table = validation.declarations(cls)
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        assert fields - set(table) == set(), f"{cls.__name__}: undeclared {sorted(fields - set(table))}"
        assert set(table) - fields == set(), f"{cls.__name__}: declared but no field {sorted(set(table) - fields)}"


def test_defaults_and_presets_pass_and_a_missing_declaration_is_refused():
    for preset in T.PRESETS:
        for method in METHODS:
            validation.check_ranges(T.preset_config(preset, method))
    validation.check_ranges(TrainPriorConfig())
    validation.check_ranges(MeshConfig())

    @dataclasses.dataclass
    class Undeclared:
        x: int = 0

    with pytest.raises(ConfigError, match="no declared ranges"):
        validation.check_ranges(Undeclared())


# ---- the values, through the CLI: one line, exit 2, nothing written, the prior never loaded -----------------
BAD_FLAGS = {
    ("--guidance.operator-lr", "-1"): "operator_lr",
    ("--density.refine-every", "0"): "refine_every",
    ("--guidance.t-min", "-2"): "t_min",
    ("--init-options.opacity", "1.0"): "opacity",
    ("--lr.position-final", "0"): "position_final",
    ("--render-backend", "bogus"): "render_backend",
    ("--lr.sh-dc", "-0.01"): "sh_dc",  # a negative learning rate: gradient ascent
    ("--lr.position-init", "-1e-3"): "position_init",
    ("--guidance.t-min", "0.9", "--guidance.t-max", "0.1"): "t_min",
    ("--orbit.radius", "0", "0"): "radius",
    ("--density.max-gaussians", "-5"): "max_gaussians",
    ("--orbit.overhead-probability", "5"): "overhead_probability",
    ("--guidance.t-anneal-steps", "-5"): "t_anneal_steps",
    ("--orbit.fovy", "0", "0"): "fovy",  # was "diverged" (exit 9)
    ("--init-options.radius", "-1"): "radius",  # was "diverged" (exit 9)
    ("--orbit.elevation", "40", "10"): "low must be ≤ high",
    ("--threads", "1000"): "cores",
}


@pytest.fixture
def no_prior(monkeypatch):
    from dreammapping import priors

    def never(*args, **kwargs):
        raise AssertionError("the prior must not be loaded for a bad value")

    monkeypatch.setattr(priors.DiffusionPrior, "from_pretrained", never)


def one_line(err: str, prefix: str = "dreammapping generate:") -> str:
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in err and "Warning" not in err, err
    return lines[0]


@pytest.mark.parametrize("flags", list(BAD_FLAGS), ids=lambda f: " ".join(f))
def test_bad_values_are_exit_2_before_anything_is_written(flags, tmp_path, capsys, no_prior):
    out = tmp_path / "run"
    code = T.cli_generate(["a red cube", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and BAD_FLAGS[flags] in one_line(err), err
    assert not out.exists()


def test_gsplat_without_cuda_is_a_bad_value(tmp_path, capsys, no_prior):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = T.cli_generate(["a red cube", "--out", str(tmp_path / "run"), "--render-backend", "gsplat"])
    assert code == EXIT_USAGE and "gsplat" in one_line(capsys.readouterr().err)


def test_the_same_checks_for_yaml_the_python_api_batch_and_the_app(tmp_path, capsys, no_prior):
    config = tmp_path / "bad.yaml"
    config.write_text("guidance:\n  t_min: 0.9\n  t_max: 0.1\n")
    assert T.cli_generate(["a red cube", "--config", str(config), "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert "t_min" in one_line(capsys.readouterr().err)
    with pytest.raises(ConfigError, match="radius"):
        T.generate("a red cube", orbit={"radius": (0.0, 0.0)}, out=str(tmp_path / "r"), progress=False)
    with pytest.raises(ConfigError, match="opacity"):
        check_config(build_config("a red cube", init_options={"opacity": 1.0}))
    assert not (tmp_path / "r").exists()

    from dreammapping.batch import cli_batch

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue cone\n")
    out = tmp_path / "batch"
    code = cli_batch([str(prompts), "--out", str(out), "--guidance.t-min", "-2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "t_min" in one_line(err, "dreammapping batch:")
    assert not out.exists()  # not one run started, retried and failed

    pytest.importorskip("viser")
    from dreammapping.app import RunRequest, job_config

    with pytest.raises(ConfigError, match="iterations"):
        job_config(RunRequest("a red cube", iterations=0))


def test_train_prior_checks_its_values_and_output_first(tmp_path, capsys):
    for flags, named in ((["--batch-size", "0"], "batch_size"), (["--steps", "0"], "steps"),
                         (["--lr", "-1"], "lr"), (["--ema-decay", "1.5"], "ema_decay")):
        code = cli_train_prior(["--out", str(tmp_path / "p"), *flags])
        assert code == EXIT_USAGE and named in one_line(capsys.readouterr().err, "dreammapping train-prior:")
    assert not (tmp_path / "p").exists()
    (tmp_path / "a-file").write_text("")
    code = cli_train_prior(["--out", str(tmp_path / "a-file" / "p")])
    assert code == EXIT_OUTPUT and "cannot write" in one_line(capsys.readouterr().err, "dreammapping train-prior:")


def test_text2img_without_a_known_word_exits_3_like_generate(capsys):
    from dreammapping.guidance.text2img import cli_text2img

    assert cli_text2img(["🍎🍎"]) == EXIT_EMPTY_PROMPT
    assert "knows no word" in one_line(capsys.readouterr().err, "dreammapping text2img:")


# ---- sizes with no ceiling (class 5): one estimate, one line naming the limit ----------------------------------
@pytest.fixture
def eight_gib(monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda device="cpu": 8 * GIB)


@pytest.mark.parametrize("flags", [("--resolution", "10000"), ("--num-points", "10000000"), ("--batch", "100000"),
                                   ("--turntable-size", "100000")], ids=lambda f: " ".join(f))
def test_sizes_beyond_memory_are_refused_before_anything_runs(flags, tmp_path, capsys, no_prior, eight_gib):
    code = T.cli_generate(["a red cube", "--out", str(tmp_path / "run"), *flags])
    line = one_line(capsys.readouterr().err)
    assert code == EXIT_USAGE and "more than the 8.6 GB of memory available" in line and flags[1] in line
    assert not (tmp_path / "run").exists()


def test_the_cpu_and_paper_presets_fit_their_machines():
    small = 4 * GIB  # a laptop: the cpu preset; a 24 GB GPU: the paper preset
    resources.check_generate(build_config("a red cube"), available=small)
    resources.check_generate(build_config("a red cube", preset="paper"), device="cuda", available=24 * GIB)


def test_text2img_render_and_export_sizes(tmp_path, capsys, eight_gib):
    from dreammapping.export import cli_render, save_ply
    from dreammapping.formats import cli_export
    from dreammapping.gaussians import sphere
    from dreammapping.guidance.text2img import cli_text2img

    assert cli_text2img(["a red cube", "--batch-size", "100000", "--out", str(tmp_path / "x.png")]) == EXIT_USAGE
    assert "--batch-size 100000" in one_line(capsys.readouterr().err, "dreammapping text2img:")
    save_ply(tmp_path / "g.ply", sphere(50))
    assert cli_render([str(tmp_path / "g.ply"), "--size", "5000", "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert "--size 5000" in one_line(capsys.readouterr().err, "dreammapping render:")
    assert cli_export([str(tmp_path / "g.ply"), "--format", "glb", "--resolution", "1024"]) == EXIT_USAGE
    assert "--resolution 1024" in one_line(capsys.readouterr().err, "dreammapping export:")
    assert not (tmp_path / "r").exists() and not (tmp_path / "g.glb").exists()


def test_config_files_are_read_with_a_cap_and_no_alias_bombs(tmp_path, capsys, no_prior):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    lines.append("iterations: *j")  # 8⁹ × 10 strings if expanded and formatted
    bomb.write_text("\n".join(lines) + "\n")
    assert len(bomb.read_bytes()) < 600
    for path, named in ((bomb, "aliases"), (Path("/dev/zero"), "larger than")):
        code = T.cli_generate(["a red cube", "--config", str(path), "--out", str(tmp_path / "r")])
        assert code == EXIT_USAGE and named in one_line(capsys.readouterr().err)
    from dreammapping.batch import cli_batch

    assert cli_batch(["/dev/zero", "--out", str(tmp_path / "b"), "--no-progress"]) == EXIT_USAGE
    assert "larger than" in one_line(capsys.readouterr().err, "dreammapping batch:")


def test_messages_never_format_a_huge_value():
    with pytest.raises(ConfigError) as e:
        build_config("a red cube", iterations=["x" * 10**6] * 1000)
    assert len(str(e.value)) < 300
    with pytest.raises(ConfigError) as e:
        check_config(build_config("x" * 10**6))
    assert len(str(e.value)) < 300


def test_third_party_warnings_add_no_lines_to_a_one_line_error(tmp_path):
    """huggingface_hub warned about a deprecated argument before generate's own error (two more lines)."""
    result = subprocess.run([sys.executable, "-m", "dreammapping.cli", "generate", "a red cube", "--prior",
                             "no-such/model", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == T.EXIT_PRIOR
    assert result.stderr.strip().splitlines() == [one_line(result.stderr)], result.stderr
