"""What pins a record to the run that made it: the commit, the resolved compute (dtype, device, threads), the
library versions, the CPU's native-bf16 flag, the prior's exact files and the output's hash.

`dtype: auto` resolves to bf16 on CPUs with native bf16 and to fp32 elsewhere, and a record rerun "as recorded"
on another machine moved IoU by the size of the effects; so a record keeps what its run actually used
(`Pin`), and `rerun` / the tests compare against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from dreammapping.devices import native_cpu_bf16, resolve_device, resolve_dtype, resolve_threads
from dreammapping.priors import embedded_prior_path

REPO = Path(__file__).resolve().parents[2]  # the checkout (src layout); a wheel install has no git: "unknown"


@dataclass(frozen=True)
class Pin:
    """The provenance fields of a record (JSON-ready: `dataclasses.asdict`)."""

    commit: str  # git HEAD of the checkout the code ran from, or "unknown"
    dirty: bool  # tracked files differed from that commit
    device: str  # the resolved torch device
    dtype: str  # the prior's resolved dtype ("float32", "bfloat16", …)
    threads: int  # torch's CPU threads the run used
    torch: str
    diffusers: str
    cpu_bf16: bool  # the CPU multiplies bf16 natively (what `dtype: auto` reads)
    prior: str  # the prior id or folder
    prior_sha256: str  # sha256 of the prior folder's files (relative path + content, sorted); "hub:<id>" otherwise


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_sha256(folder: str | Path) -> str:
    """sha256 over every file of `folder`: its path relative to the folder, then its bytes, in sorted order."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        h.update(bytes.fromhex(file_sha256(path)))
    return h.hexdigest()


def prior_sha256(prior: str) -> str:
    folder = embedded_prior_path() if prior == "embedded" else Path(prior)
    return folder_sha256(folder) if folder.is_dir() else f"hub:{prior}"


def git_commit(repo: Path = REPO) -> tuple[str, bool]:
    """(HEAD, whether tracked files differ from it) of `repo`, or ("unknown", False) without git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", False
    return head, bool(status)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def pin(prior: str = "embedded", device: str = "auto", dtype: str = "auto", threads: int = 0) -> Pin:
    """The Pin of a run with these settings (a GenerateConfig's `prior`, `device`, `dtype`, `threads`), resolved
    the way `train` resolves them."""
    dev = resolve_device(device)
    resolved = resolve_dtype(dtype, dev, prior)
    if resolved is None:  # the prior's own default: fp16 on CUDA, fp32 elsewhere
        resolved = torch.float16 if dev.type == "cuda" else torch.float32
    commit, dirty = git_commit()
    return Pin(commit=commit, dirty=dirty, device=str(dev), dtype=str(resolved).removeprefix("torch."),
               threads=resolve_threads(threads) if dev.type == "cpu" else torch.get_num_threads(),
               torch=torch.__version__, diffusers=_version("diffusers"), cpu_bf16=native_cpu_bf16(), prior=prior,
               prior_sha256=prior_sha256(prior))


def pin_config(cfg) -> Pin:
    """The Pin of a GenerateConfig."""
    return pin(cfg.prior, cfg.device, cfg.dtype, cfg.threads)


def as_dict(p: Pin) -> dict:
    return dataclasses.asdict(p)
