"""How a run picks its CPU threads (devices.resolve_threads), and the OpenMP
wait policy the package sets before torch starts (dreammapping/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import dreammapping
from dreammapping import devices
from dreammapping import train as T
from dreammapping.devices import resolve_threads

SRC = str(Path(T.__file__).resolve().parents[1])


def _import_in_fresh_python(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, "PYTHONPATH": SRC, **env},
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_the_package_first_makes_openmp_wait_passively():
    code = "import os, dreammapping; print(os.environ.get('OMP_WAIT_POLICY'), dreammapping.OPENMP_PASSIVE)"
    assert _import_in_fresh_python(code) == "PASSIVE True"
    # a user's own choice is kept, and then a run does not assume passive waiting
    assert _import_in_fresh_python(code, OMP_WAIT_POLICY="active") == "active False"


def test_torch_imported_first_leaves_the_policy_alone():
    # libgomp has read its settings already: setting the variable now would claim a policy that is not in effect
    code = "import torch, os, dreammapping; print(os.environ.get('OMP_WAIT_POLICY'), dreammapping.OPENMP_PASSIVE)"
    assert _import_in_fresh_python(code) == "None False"


def test_threads_auto_uses_the_free_cores_only_when_waiting_is_passive(monkeypatch):
    assert resolve_threads(3) == 3  # an explicit count always wins
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)  # an 8-core laptop
    monkeypatch.setattr(devices, "allowed_cores", lambda: 8)
    monkeypatch.setattr(dreammapping, "OPENMP_PASSIVE", True)
    for busy, threads in ((0.0, 8), (0.4, 8), (1.2, 7), (5.5, 2), (7.6, 1), (8.0, 1)):
        monkeypatch.setattr(devices, "busy_cores", lambda busy=busy: busy)
        assert resolve_threads(0) == threads, busy
    assert resolve_threads(3) == 3  # even on a busy machine
    monkeypatch.setattr(devices, "busy_cores", lambda: 0.0)
    monkeypatch.setattr(devices, "allowed_cores", lambda: 2)  # `taskset -c 0,1`: never more threads than cores
    assert resolve_threads(0) == 2
    monkeypatch.setattr(devices, "busy_cores", lambda: 0.0)
    monkeypatch.setattr(dreammapping, "OPENMP_PASSIVE", False)
    assert resolve_threads(0) == 1  # spinning threads: one, however idle the machine


def test_busy_cores_sees_a_process_that_holds_a_core():
    # Known answer: a child process spinning on one core shows as ~1 busy core more than without it.
    if not os.path.exists("/proc/stat"):
        assert devices.busy_cores() == 0.0
        return
    cores = os.cpu_count() or 1
    quiet = devices.busy_cores(0.3)
    assert 0.0 <= quiet <= cores
    spin = "import time\nprint('spinning', flush=True)\nend = time.time() + 10\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout.readline().strip() == "spinning"  # measured only once it spins, however slow its start
        busy = devices.busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    quiet = min(quiet, devices.busy_cores(0.3))  # the quieter of before and after: other jobs come and go
    assert busy > quiet + 0.5 or busy > cores - 0.5, (quiet, busy)  # a whole core more (or every core busy)


def test_allowed_cores_follow_the_affinity_mask():
    # known answer: a child pinned to one core (as `taskset -c 0` pins it) sees one allowed core
    if not hasattr(os, "sched_setaffinity"):
        assert devices.allowed_cores() == (os.cpu_count() or 1)
        return
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from dreammapping import devices; print(devices.allowed_cores())")
    assert _import_in_fresh_python(code) == "1"
    assert devices.allowed_cores() == len(os.sched_getaffinity(0))


def test_run_sets_the_resolved_threads_and_restores_the_callers(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(T, "_train", lambda *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(dreammapping, "OPENMP_PASSIVE", False)
    before = torch.get_num_threads()
    T.train(T.build_config("a red cube", threads=0), tmp_path / "run")
    T.train(T.build_config("a red cube", threads=2), tmp_path / "run")
    assert seen == [1, 2] and torch.get_num_threads() == before


def test_auto_threads_are_narrowed_by_the_calibration_once_the_prior_is_loaded(tiny_pixel_folder, tmp_path,
                                                                                monkeypatch):
    # threads 0 on the CPU: the free cores (2 here, nothing busy), then what the calibration says for this prior and
    # batch; the run's log line names the count it used. An explicit count is not calibrated.
    calls, lines = [], []

    def calibrated(prior, batch, free, log):
        calls.append((prior.name, batch, free, torch.get_num_threads()))
        return 1

    monkeypatch.setattr(T, "auto_threads", calibrated)
    monkeypatch.setattr(dreammapping, "OPENMP_PASSIVE", True)
    monkeypatch.setattr(devices, "busy_cores", lambda: 0.0)
    monkeypatch.setattr(devices, "allowed_cores", lambda: 2)
    tiny = ["--iterations", "1", "--num-points", "50", "--init", "sphere", "--turntable-size", "8",
            "--turntable-frames", "1", "--batch", "2", "--prior", str(tiny_pixel_folder)]
    cfg, _ = T.parse_args(["a red cube", *tiny, "--threads", "0"])
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # the caller's count: every core of a 4-core machine, of which 2 are allowed
    try:
        T.train(cfg, tmp_path / "auto", progress=False, log=lines.append)
    finally:
        torch.set_num_threads(before)
    assert calls == [(str(tiny_pixel_folder), 2, 2, 2)]  # free = min(4, 2 allowed) − 0 busy, set before the call
    assert any("1 thread)" in line for line in lines), lines
    calls.clear()
    cfg, _ = T.parse_args(["a red cube", *tiny, "--threads", "2"])
    T.train(cfg, tmp_path / "two", progress=False, log=lines.append)
    assert calls == []
