"""Which torch device and dtype a run uses: "auto" is resolved here and nowhere else."""

from __future__ import annotations

import torch

import dreammapping
from dreammapping.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when torch sees a GPU, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype | None:
    """"auto" → None (the prior picks: fp16 on CUDA, fp32 on CPU); else torch's dtype of that name."""
    return None if name == "auto" else getattr(torch, name)


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
    """torch's CPU threads for a run: `threads` when > 0; else torch's own count (every core, or OMP_NUM_THREADS)
    when OpenMP waits passively (dreammapping/__init__.py), one otherwise (spinning threads crawl when another
    process holds a core: docs/performance.md)."""
    if threads > 0:
        return threads
    return torch.get_num_threads() if dreammapping.OPENMP_PASSIVE else 1
