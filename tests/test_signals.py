"""SIGTERM (issue 24, class 6): `generate` treats it as Ctrl-C (a checkpoint, the resume command, exit 143); SIGTERM
to `batch` stops its pool workers, and a killed batch driver takes its workers with it (no orphans)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreammapping.errors import EXIT_TERMINATED

from test_train import TINY, without

SLOW = ["--iterations", "2000", "--threads", "1"]  # far more steps than the test waits for


def cli(*argv) -> list[str]:
    return [sys.executable, "-m", "dreammapping.cli", *map(str, argv)]


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == parent:
                    found.append(int(entry.name))
                    frontier.append(int(entry.name))
    return found


def test_sigterm_to_generate_checkpoints_and_exits_143(tiny_pixel_folder, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli("generate", "a red cube", "--prior", tiny_pixel_folder, "--out", run, *SLOW, *without(TINY, "--iterations")),
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run / "loss.csv").exists() and (run / "loss.csv").read_text().count("\n") >= 2)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    lines = [line for line in err.splitlines() if line.startswith("dreammapping generate:")]
    assert code == EXIT_TERMINATED and len(lines) == 1 and "Traceback" not in err, err
    assert "terminated (SIGTERM)" in lines[0] and "--resume" in lines[0]
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 2000 and f"at step {step}/" in lines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_batch_takes_its_workers_with_it(tiny_pixel_folder, tmp_path, how):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue cone\n")
    out = tmp_path / "batch"
    proc = subprocess.Popen(cli("batch", prompts, "--out", out, "--workers", "2", "--no-progress", "--evaluate", "none",
                                "--prior", tiny_pixel_folder, *SLOW, *without(TINY, "--iterations")),
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    pgid = proc.pid  # its own session: the driver, its pool workers and their helpers share this group
    wait_for(lambda: sum((d / "checkpoint.pt").exists() for d in out.glob("*-vdm-0")) == 2, timeout=240)
    workers = children(proc.pid)
    assert workers
    proc.send_signal(getattr(signal, how))
    code = proc.wait(timeout=120)
    wait_for(lambda: not group_alive(pgid), timeout=60)  # every worker is gone: none trains on into OUT
    sizes = {d.name: (d / "loss.csv").stat().st_size for d in out.glob("*-vdm-0")}
    time.sleep(1.0)
    assert sizes == {d.name: (d / "loss.csv").stat().st_size for d in out.glob("*-vdm-0")}
    if how == "SIGTERM":
        err = proc.stderr.read()
        assert code == EXIT_TERMINATED and "Traceback" not in err, err
    for run in out.glob("*-vdm-0"):  # every run resumable from its checkpoint
        assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] > 0
