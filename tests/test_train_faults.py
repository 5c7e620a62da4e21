"""generate as a careless user meets it (issue 11): nothing of a run is lost, every fault is one line with its exit
code, values are checked before anything is loaded or written. Each test is a case that once failed."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import disk_full_at
from dreammapping import train as T
from dreammapping.export import save_ply
from dreammapping.gaussians import sphere

from test_train import TINY, final_state, run_cli, without


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def one_line(err: str) -> str:
    """The error: one line, no traceback (progress and warning lines may come before it)."""
    errors = [line for line in err.splitlines() if line.startswith("dreammapping generate:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def finished_run(tiny_pixel_folder, tmp_path_factory) -> Path:
    """A finished 2-step run; tests copy it before touching it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    code = T.cli_generate(["a red cube", "--prior", str(tiny_pixel_folder), "--out", str(run), *without(TINY, "--iterations"),
                           "--iterations", "2"])
    assert code == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


# ---- data loss ---------------------------------------------------------------------------------------------------
def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(run_copy, tiny_pixel_folder, capsys,
                                                                        monkeypatch):
    before = snapshot(run_copy)
    # a prior that does not exist: found before anything is touched
    code, err = run_cli(capsys, "a blue cone", "--out", run_copy, "--overwrite", "--prior", "/nonexistent", *TINY)
    assert code == T.EXIT_PRIOR and snapshot(run_copy) == before
    # a run that diverges before its first checkpoint: the old run comes back whole
    from dreammapping import guidance

    class Poisoned(guidance.SDS):
        def __call__(self, images, emb, step=0, max_steps=1):
            out = super().__call__(images, emb, step, max_steps)
            out.loss = out.loss * float("nan")
            return out

    monkeypatch.setitem(guidance.METHODS, "sds", Poisoned)
    code, err = run_cli(capsys, "a blue cone", "--out", run_copy, "--overwrite", "--prior", tiny_pixel_folder, *without(TINY, "--method"),
                        "--method", "sds")
    assert code == T.EXIT_DIVERGED and snapshot(run_copy) == before
    assert not (run_copy / T.PREVIOUS_RUN).exists()
    monkeypatch.undo()
    # a run that succeeds replaces it, and leaves nothing of it behind
    code, err = run_cli(capsys, "a blue cone", "--out", run_copy, "--overwrite", "--prior", tiny_pixel_folder, *TINY)
    assert code == 0, err
    assert "a blue cone" in (run_copy / "config.yaml").read_text() and not (run_copy / T.PREVIOUS_RUN).exists()
    assert final_state(run_copy)["step"] == 6


def test_overwrite_killed_before_its_first_checkpoint_gives_the_old_run_back(run_copy, capsys):
    before = snapshot(run_copy)

    def killed_overwrite(run):
        # what a SIGKILL between "old run set aside" and "first checkpoint" leaves: a new config.yaml, the old aside
        T.set_previous_run_aside(run, [n for n in T.RUN_FILES if (run / n).exists()])
        (run / "config.yaml").write_text("prompt: the new run\n")

    killed_overwrite(run_copy)
    T.prepare_run_dir(run_copy, fresh=True, overwrite=True)  # the next start puts it back before anything else
    assert snapshot(run_copy) == before and not (run_copy / T.PREVIOUS_RUN).exists()
    killed_overwrite(run_copy)
    code, err = run_cli(capsys, "--resume", run_copy)  # and --resume reads the old run's config, not the new one's
    assert code == 0, err
    assert "a red cube" in (run_copy / "config.yaml").read_text() and final_state(run_copy)["step"] == 2


def test_a_finished_run_without_checkpoint_still_counts_as_a_run(run_copy, tiny_pixel_folder, capsys):
    (run_copy / "checkpoint.pt").unlink()
    before = snapshot(run_copy)
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", run_copy, *TINY)
    assert code == T.EXIT_RUN_EXISTS and "--overwrite" in one_line(err)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("flags", [["--method", "sds"], ["--seed", str(10**23)], ["--iterations", "1"]],
                         ids=["method", "huge-seed", "smaller-budget"])
def test_a_failed_resume_writes_nothing(run_copy, capsys, flags):
    before = snapshot(run_copy)
    code, err = run_cli(capsys, "--resume", run_copy, *flags)
    assert code == T.EXIT_USAGE, err
    one_line(err)
    assert snapshot(run_copy) == before  # config.yaml above all: a later plain --resume must still work
    code, err = run_cli(capsys, "--resume", run_copy)
    assert code == 0, err


def test_resume_with_a_budget_below_the_checkpoint_is_refused(run_copy, capsys):
    code, err = run_cli(capsys, "--resume", run_copy, "--iterations", "1")
    assert code == T.EXIT_USAGE and "checkpoint is at step 2" in err and "--iterations 2" in err
    assert final_state(run_copy)["step"] == 2


@pytest.mark.parametrize("damage", ["truncated", "random-bytes", "empty", "not-a-checkpoint"])
def test_a_damaged_checkpoint_is_one_line_and_changes_nothing(run_copy, capsys, damage):
    ckpt = run_copy / "checkpoint.pt"
    data = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "random-bytes":
        ckpt.write_bytes(os.urandom(4096))
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    before = snapshot(run_copy)
    code, err = run_cli(capsys, "--resume", run_copy, "--iterations", "9")
    line = one_line(err)
    assert code == T.EXIT_RUN_EXISTS and "checkpoint.pt" in line and "weights_only" not in line
    assert snapshot(run_copy) == before


# Every file a run writes, each written through the atomic writer at its own call site: when the final rename fails
# (a full disk), the old file is still there, whole, and no temporary is left.
@pytest.mark.parametrize("target", ["config.yaml", "loss.csv", "checkpoint.pt", "gaussians.ply", "turntable.gif",
                                    "turntable.mp4", "views.png", "metrics.json"])
def test_every_run_file_survives_a_failed_write(run_copy, capsys, monkeypatch, target):
    old = (run_copy / target).read_bytes()
    disk_full_at(monkeypatch, target)
    code, err = run_cli(capsys, "--resume", run_copy)  # a finished run: re-writes every file
    line = one_line(err)
    assert code == T.EXIT_OUTPUT and "disk is full" in line and target in line, err
    assert (run_copy / target).read_bytes() == old
    assert not [p.name for p in run_copy.iterdir() if p.name.endswith(".tmp")]


@contextlib.contextmanager
def file_size_limit(limit: int):
    """What a full disk does to write(): EFBIG past `limit` bytes (Python ignores SIGXFSZ), in this process only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_disk_full_during_generate_is_one_line_that_says_so(run_copy, capsys):
    """A real file-size limit: config.yaml and loss.csv fit, the checkpoint does not."""
    before = snapshot(run_copy)
    limit = max(len(before["config.yaml"]), len(before["loss.csv"])) + 2000
    assert len(before["checkpoint.pt"]) > limit
    with file_size_limit(limit):
        code, err = run_cli(capsys, "--resume", run_copy, "--iterations", "4")
    assert code == T.EXIT_OUTPUT, err
    line = one_line(err)
    assert "disk is full" in line and "checkpoint.pt" in line
    assert "--resume" in line  # the last checkpoint is kept and the message says how to go on
    assert (run_copy / "checkpoint.pt").read_bytes() == before["checkpoint.pt"]
    assert (run_copy / "gaussians.ply").read_bytes() == before["gaussians.ply"]
    assert not [p.name for p in run_copy.iterdir() if p.name.endswith(".tmp")]


def test_temporaries_of_killed_writers_are_removed_on_the_next_start(run_copy, capsys):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = run_copy / f".checkpoint.pt.{int(child.stdout)}.0123abcd.tmp"  # its writer is gone (SIGKILL)
    alive = run_copy / f".views.png.{os.getpid()}.0123abcd.tmp"  # a writer that is still running
    dead.write_bytes(b"half a checkpoint")
    alive.write_bytes(b"being written")
    code, err = run_cli(capsys, "--resume", run_copy)
    assert code == 0, err
    assert not dead.exists() and alive.exists()


# ---- one line instead of a traceback -----------------------------------------------------------------------------
def test_bad_values_are_one_line_errors_before_anything_runs(tiny_pixel_folder, tmp_path, capsys, monkeypatch):
    from dreammapping import priors

    def never(*args, **kwargs):
        raise AssertionError("the prior must not be loaded for a bad value")

    monkeypatch.setattr(priors.DiffusionPrior, "from_pretrained", never)
    out = tmp_path / "out"
    base = ["a red cube", "--prior", str(tiny_pixel_folder), "--out", str(out)]
    cases = {
        ("--seed", str(10**23)): "seed",
        ("--seed", "1e23"): "--seed",
        ("--iterations", "1e9"): "--iterations",
        ("--device", "tpu"): "tpu",
        ("--max-loss", "nan"): "max_loss",
        ("--max-loss", "-1"): "max_loss",
        ("--guidance.guidance-scale", "nan"): "guidance_scale",
        ("--guidance.guidance-scale", "0"): "guidance_scale",
        ("--guidance.guidance-scale", "-2"): "guidance_scale",
        ("--lr.sh-dc", "nan"): "sh_dc",
    }
    if not torch.cuda.is_available():
        cases[("--device", "cuda")] = "no CUDA GPU"
    for flags, named in cases.items():
        code, err = run_cli(capsys, *base, *flags)
        assert code == T.EXIT_USAGE and named in one_line(err), (flags, err)
    assert not out.exists()  # nothing was written for any of them
    config = tmp_path / "bad.yaml"
    config.write_text("iterations: abc\n")
    code, err = run_cli(capsys, *base, "--config", config)
    assert code == T.EXIT_USAGE and "iterations" in one_line(err) and "'abc'" in err


def test_an_output_name_too_long_is_one_line(tiny_pixel_folder, tmp_path, capsys):
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", tmp_path / ("x" * 300), *TINY)
    assert code == T.EXIT_OUTPUT and "too long" in one_line(err)
    code, err = run_cli(capsys, "--resume", tmp_path / ("x" * 300))
    assert code in (T.EXIT_OUTPUT, T.EXIT_RUN_EXISTS) and one_line(err)


def test_init_ply_with_nan_positions_is_a_bad_init(tiny_pixel_folder, tmp_path, capsys):
    g = sphere(50)
    g.means[:10] = float("nan")
    save_ply(tmp_path / "nan.ply", g)
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", tmp_path / "run", *without(TINY, "--init"),
                        "--init", tmp_path / "nan.ply")  # after TINY's --init sphere
    assert code == T.EXIT_INIT and "10 of 50 Gaussians have NaN" in one_line(err)
    assert not (tmp_path / "run" / "config.yaml").exists()


# ---- prompts -----------------------------------------------------------------------------------------------------
def test_a_prompt_the_embedded_prior_cannot_read_is_an_error(tmp_path, capsys):
    for prompt in ("🍎🍎", "café au lait"):
        code, err = run_cli(capsys, prompt, "--out", tmp_path / "run")
        assert code == T.EXIT_EMPTY_PROMPT and "knows no word" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_a_long_prompt_warns_where_it_is_cut(tiny_pixel_folder, tmp_path, capsys):
    prompt = "a red cube on top of a blue sphere next to a green cone"  # the tiny tokenizer spells: ~50 tokens
    code, err = run_cli(capsys, prompt, "--prior", tiny_pixel_folder, "--out", tmp_path / "run", *without(TINY, "--iterations"),
                        "--iterations", "1")
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning:") and "cut off" in line]
    assert len(warning) == 1 and "text encoder reads 24" in warning[0] and "from word" in warning[0]


def test_python_api_raises_typed_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = [dict(prompt=123), dict(prompt="a red cube", iterations="ten"), dict(prompt="a red cube", iterations=2.5),
           dict(prompt="a red cube", iterations=True), dict(prompt="a red cube", out=5),
           dict(prompt="a red cube", lr={"sh_dc": "fast"}), dict(prompt="a red cube", seed=None)]
    for kwargs in bad:
        with pytest.raises(T.ConfigError):
            T.generate(progress=False, **kwargs)
    with pytest.raises(T.ConfigError, match="iterations"):
        T.train(T.GenerateConfig(prompt="a red cube", iterations="ten"), tmp_path / "r", progress=False)
    with pytest.raises(T.ConfigError, match="threads"):  # checked before the run's threads are set from it
        T.train(T.GenerateConfig(prompt="a red cube", threads="two"), tmp_path / "r", progress=False)
    with pytest.raises(T.ConfigError, match="expected a GenerateConfig"):
        T.train("a red cube", tmp_path / "r", progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r").exists()
    # the types a config really has still pass: an int for a float, None where allowed
    assert T.build_config("a red cube", max_loss=10, resolution=None).max_loss == 10.0
