"""Which torch device and dtype a run uses: "auto" is resolved here and nowhere else."""

from __future__ import annotations

import os
import time

import torch

import dreammapping
from dreammapping.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when torch sees a GPU, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_dtype(device: torch.device) -> torch.dtype:
    """A prior's dtype when none is asked for: fp16 on CUDA, fp32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


def resolve_dtype(name: str, device: torch.device | None = None, prior: str | None = None) -> torch.dtype | None:
    """"auto" → bf16 for the embedded prior on a CPU that computes bf16 natively (AMX or AVX512-BF16: its UNet
    runs ~1.6× faster there, at equal ground-truth quality, docs/performance.md), else None (the prior picks: fp16 on
    CUDA, fp32 on CPU: `default_dtype`); any other name → torch's dtype of that name."""
    if name != "auto":
        return getattr(torch, name)
    if device is not None and device.type == "cpu" and prior in ("embedded", "embedded-v1") and native_cpu_bf16():
        return torch.bfloat16
    return None


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware; elsewhere bf16 is emulated and slower than fp32. (torch's
    own checks, private: a torch without them counts as no.)"""
    checks = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(bool(check()) for check in checks if check is not None)


def check_device(name: str) -> None:
    """Raise ConfigError unless `name` is "auto" or a torch device this machine has."""
    if name == "auto":
        return
    hint = "use auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r} is not a torch device; {hint}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r}: torch sees no CUDA GPU here; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {name!r}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; {hint}")


def resolve_threads(threads: int) -> int:
    """torch's CPU threads for a run: `threads` when > 0; else the cores other processes leave free — torch's own
    count (every core, or OMP_NUM_THREADS), never more than the cores this process may run on (`allowed_cores`),
    less the cores busy right now, at least one — when OpenMP waits passively (dreammapping/__init__.py), and one
    otherwise. Threads on a core that another process holds wait for each other at every barrier (0.7× one thread's
    speed even sleeping; spinning, 0.1×: docs/performance.md). This is an upper bound: whether more than one thread
    is faster at all is measured once per machine and model (`dreammapping.threads.auto_threads`)."""
    if threads > 0:
        return threads
    if not dreammapping.OPENMP_PASSIVE:
        return 1
    return max(1, min(torch.get_num_threads(), allowed_cores()) - round(busy_cores()))


def allowed_cores() -> int:
    """The cores this process may run on (its affinity mask: `taskset`, cgroups' cpusets), else every core."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of the cores this process may run on since boot, from Linux's /proc/stat (idle and
    iowait are not busy; guest time is already in user); None where there is no /proc/stat."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        cpus = None
    busy = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *values = line.split()
                if cpus is not None and name not in cpus:
                    continue
                ticks = [int(v) for v in values[:8]]  # user … steal
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                busy += sum(ticks) - idle
                total += sum(ticks)
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total > 0 else None


def busy_cores(interval: float = 0.1) -> float:
    """How many of this process's allowed cores other processes keep busy: their CPU time not idle over `interval`
    seconds (this process sleeps meanwhile), from Linux's /proc/stat; 0 where there is none. Not the load average,
    which still counts a run that ended a minute ago."""
    before = cpu_ticks()
    time.sleep(interval)
    after = cpu_ticks()
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    return allowed_cores() * (after[0] - before[0]) / (after[1] - before[1])
