"""A run's folder is the run's (issue 24, classes 2 and 3): `--resume` refuses what it would ignore or relabel and a
damaged loss.csv before writing anything; `export` / `render` never replace a run's own files; `--overwrite` sets
aside everything the old run made, stale exports included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dreammapping import train as T
from dreammapping.export import cli_render
from dreammapping.formats import cli_export

from test_train import TINY, final_state, run_cli, without


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def one_line(err: str, prefix: str = "dreammapping generate:") -> str:
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tiny_pixel_folder, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert T.cli_generate(["a blue cone", "--prior", str(tiny_pixel_folder), "--out", str(run), "--iterations", "2",
                           *without(TINY, "--iterations")]) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


# ---- --resume: refuse, write nothing -----------------------------------------------------------------------------
@pytest.mark.parametrize("flags, named", [
    (["a blue cube"], "prompt"),  # the case: it relabelled config.yaml and metrics.json, exit 0
    (["--sh-degree", "3"], "sh_degree"),
    (["--seed", "5"], "seed"),
    (["--num-points", "999"], "num_points"),
    (["--init", "ball"], "init"),
    (["--out", "ELSEWHERE"], "another folder"),
], ids=["prompt", "sh-degree", "seed", "num-points", "init", "out-elsewhere"])
def test_resume_refuses_what_it_would_ignore_or_relabel(run_copy, tmp_path, capsys, flags, named):
    flags = [str(tmp_path / "elsewhere") if f == "ELSEWHERE" else f for f in flags]
    before = snapshot(run_copy)
    code, err = run_cli(capsys, "--resume", run_copy, *flags)  # top-level flags before a scene's
    assert code == T.EXIT_USAGE and named in one_line(err), err
    assert snapshot(run_copy) == before and not (tmp_path / "elsewhere").exists()
    with pytest.raises(T.ConfigError, match="another folder"):  # the Python API the same
        T.generate(resume=str(run_copy), out=str(tmp_path / "elsewhere"), progress=False)
    code, err = run_cli(capsys, "--resume", run_copy, "--out", run_copy, "--iterations", "4")  # its own folder: fine
    assert code == 0, err
    assert final_state(run_copy)["step"] == 4 and "a blue cone" in (run_copy / "config.yaml").read_text()


@pytest.mark.parametrize("damage, why", [
    ("wrong,header\n2,0.5\n", "header"),
    ("ROWS\nten,abc,1,2,3,4\n", "not a number"),
    ("ROWS\n2,0.5,0,200\n", "fields"),
], ids=["wrong-header", "ten-abc", "short-row"])
def test_a_damaged_loss_log_is_one_line_before_anything_is_written(run_copy, capsys, damage, why):
    header = (run_copy / "loss.csv").read_text().splitlines()[0]
    (run_copy / "loss.csv").write_text(damage.replace("ROWS", header))
    before = snapshot(run_copy)
    code, err = run_cli(capsys, "--resume", run_copy, "--iterations", "4")
    assert code == T.EXIT_RUN_EXISTS and "loss.csv" in one_line(err) and why in one_line(err), err
    assert snapshot(run_copy) == before  # config.yaml included: a later plain --resume still works


def test_a_row_torn_by_a_kill_is_dropped_not_an_error(run_copy, capsys):
    with (run_copy / "loss.csv").open("a") as f:
        f.write("4,0.12")  # the kill came mid-row: no newline
    code, err = run_cli(capsys, "--resume", run_copy, "--iterations", "4")
    assert code == 0, err
    steps = [int(r.split(",")[0]) for r in (run_copy / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4]


# ---- export / render never replace a run's files ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["checkpoint.pt", "views.png", "config.yaml", "loss.csv", "metrics.json"])
def test_export_never_writes_over_a_run_file(run_copy, capsys, name):
    before = snapshot(run_copy)
    assert cli_export([str(run_copy), "--format", "splat", "--out", str(run_copy / name)]) == 2
    assert "would replace a file of the run" in one_line(capsys.readouterr().err, "dreammapping export:")
    assert snapshot(run_copy) == before
    code, err = run_cli(capsys, "--resume", run_copy, "--iterations", "4")  # was "damaged" after such an export
    assert code == 0, err


def test_render_of_a_run_writes_beside_its_files(run_copy, capsys):
    before = snapshot(run_copy)
    assert cli_render([str(run_copy), "--out", str(run_copy), "--frames", "2", "--size", "16"]) == 2
    assert "would replace a file of the run" in one_line(capsys.readouterr().err, "dreammapping render:")
    assert snapshot(run_copy) == before
    assert cli_render([str(run_copy), "--frames", "2", "--size", "16", "--gif"]) == 0
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if not k.startswith("render/")} == before
    assert {"render/turntable.gif", "render/views.png"} <= set(after)


def test_overwrite_sets_aside_everything_the_old_run_made(run_copy, tiny_pixel_folder, capsys):
    assert cli_export([str(run_copy), "--format", "splat"]) == 0  # RUN/gaussians.splat, a stale export later
    assert cli_render([str(run_copy), "--frames", "2", "--size", "16", "--gif"]) == 0
    (run_copy / "mesh.glb").write_bytes(b"an old mesh")
    code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", run_copy, "--overwrite",
                        "--iterations", "2", *without(TINY, "--iterations"))
    assert code == 0, err
    names = {p.name for p in run_copy.iterdir()}
    assert not names & {"gaussians.splat", "mesh.glb", "render", T.PREVIOUS_RUN}, names
    assert "a red cube" in (run_copy / "config.yaml").read_text()
