"""One writer per run folder (issue 24, class 1): a second `generate --out R` or `--resume R` while R is being written
is one line and exit 11, and changes nothing; the lock dies with its process (SIGKILL included)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dreammapping import train as T
from dreammapping.errors import EXIT_BUSY
from dreammapping.runlock import is_locked, run_lock

from test_train import TINY, run_cli, without

HOLD = "import sys, time; from dreammapping.runlock import run_lock\nwith run_lock(sys.argv[1]):\n" \
       "    print('locked', flush=True); time.sleep(60)\n"


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_pixel_folder, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert T.cli_generate(["a red cube", "--prior", str(tiny_pixel_folder), "--out", str(run), "--iterations", "2",
                           *without(TINY, "--iterations")]) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock (as a running generate does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_changes_nothing(run_copy, tiny_pixel_folder, tmp_path, capsys):
    before = snapshot(run_copy)
    proc = holder(run_copy)
    try:
        assert is_locked(run_copy)
        for argv in (["--resume", run_copy],
                     ["a red cube", "--prior", tiny_pixel_folder, "--out", run_copy, "--overwrite", *TINY]):
            code, err = run_cli(capsys, *argv)
            lines = [line for line in err.splitlines() if line.startswith("dreammapping generate:")]
            assert code == EXIT_BUSY and len(lines) == 1 and "in use by another" in lines[0], err
            assert snapshot(run_copy) == before
        fresh = tmp_path / "fresh"  # a fresh folder another process is creating
        proc2 = holder(fresh)
        try:
            code, err = run_cli(capsys, "a red cube", "--prior", tiny_pixel_folder, "--out", fresh, *TINY)
            assert code == EXIT_BUSY and not list(fresh.iterdir())
        finally:
            proc2.kill()
            proc2.wait()
    finally:
        proc.kill()  # SIGKILL mid-"run": the kernel drops its lock, nothing is left locked
        proc.wait()
    assert not is_locked(run_copy)
    code, err = run_cli(capsys, "--resume", run_copy)
    assert code == 0, err


def test_the_lock_is_held_for_the_whole_run_and_released_after(tiny_pixel_folder, tmp_path, capsys):
    run = tmp_path / "run"
    seen = []

    def callback(info):  # train.StepInfo
        seen.append(is_locked(run))

    T.generate("a red cube", prior=str(tiny_pixel_folder), out=str(run), iterations=3, num_points=100,
               init="sphere", turntable_size=16, turntable_frames=2, progress=False, callback=callback)
    assert seen == [True, True, True] and not is_locked(run)
    with run_lock(run):  # the same process, a second writer: flock conflicts across descriptors too
        with pytest.raises(T.GenerateError) as e:
            T.generate(resume=str(run), progress=False)
        assert e.value.exit_code == EXIT_BUSY


def test_two_generates_at_once_one_wins_whole(tiny_pixel_folder, tmp_path):
    """The issue's race: both used to exit 0 with a torn loss.csv. Now one runs, the other is refused at once."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "dreammapping.cli", "generate", "a red cube", "--prior", str(tiny_pixel_folder),
            "--out", str(run), "--iterations", "20", "--threads", "1", *without(TINY, "--iterations")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, EXIT_BUSY], [0, T.EXIT_RUN_EXISTS]), results  # refused by the lock, or after it
    rows = (run / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and [int(r.split(",")[0]) for r in rows[1:]] == list(range(2, 21, 2))

