"""CPU threads of an automatic run by evidence: more than one thread only where a measurement on this machine and
model showed it faster than one (docs/performance.md, "Threads by evidence").

    auto_threads(prior, batch, free, log) → the torch threads for this run (threads 0, a prior on the CPU)

`devices.resolve_threads(0)` gives `free`, the cores other processes leave free right now. With one free core the
run takes one thread. Otherwise the calibration of this machine and model is read from the cache or, the first time,
measured: the prior's classifier-free-guidance UNet call on `batch` views (what every step of the loop makes, ~60% of
its time), at one thread and at 2, 4, … up to the free cores, interleaved, after a warm-up call each. A count above
one is chosen only when its median is at least `MARGIN` below one thread's; a tie is one thread. A calibration is
kept on disk only when other processes left the cores alone while it ran (it would otherwise say more about them than
about the machine); the run then uses the smaller of the calibrated count and the free cores.

The cache is one JSON file (`cache_path()`: $DREAMMAPPING_CACHE/threads.json, else
$XDG_CACHE_HOME/dreammapping/threads.json, else ~/.cache/dreammapping/threads.json), one entry per
`CalibrationKey`: CPU model, cores allowed, torch version, a hash of the prior's UNet config, dtype and the call's
shape. A file that cannot be read is ignored with one warning and rewritten. `DREAMMAPPING_RECALIBRATE=1` measures
again (and replaces the entry).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dreammapping.devices import allowed_cores, cpu_ticks
from dreammapping.files import atomic_write_text
from dreammapping.priors import PromptEmbeddings

MARGIN = 0.10  # n threads must be ≥ 10% faster than one (median to median): this machine's noise is ±15% per run
QUIET = 0.25  # cores other processes may keep busy during a calibration that is cached
BUDGET_S = 2.0  # the calibration's rough time budget (a big prior's call still gets MIN_ROUNDS rounds)
MIN_ROUNDS, MAX_ROUNDS = 3, 12  # interleaved rounds (one call per thread count each)
RECALIBRATE = "DREAMMAPPING_RECALIBRATE"
VERSION = 1


@dataclass(frozen=True)
class CalibrationKey:
    """What a calibration holds for: another CPU, core count, torch, prior, dtype or call shape measures again."""

    cpu: str  # the CPU's model name
    cores: int  # cores this process may run on (devices.allowed_cores)
    torch: str  # torch.__version__
    prior: str  # sha256 (16 hex digits) of the prior's name and UNet config
    dtype: str  # the UNet's dtype, e.g. "float32"
    images: int  # images per UNet call (CFG's two halves × views)
    size: int  # the UNet's input side (pixels, or latents for a latent prior)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Calibration:
    """A measurement: seconds per call at each thread count, the count chosen, and how busy other processes were."""

    key: CalibrationKey
    seconds: dict[int, list[float]]  # threads → each call's wall time, in the order measured
    threads: int  # the count chosen (choose_threads)
    others_busy: float  # cores other processes kept busy meanwhile (0 where unknown)
    when: str = ""  # UTC time of the measurement

    def medians(self) -> dict[int, float]:
        return {n: statistics.median(s) for n, s in self.seconds.items()}


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else the platform's)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def prior_hash(name: str, unet_config: dict) -> str:
    """16 hex digits of sha256 over the prior's name and its UNet's config: what decides the call's cost."""
    text = json.dumps({"name": name, "unet": {k: v for k, v in unet_config.items() if not k.startswith("_")}},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def calibration_key(prior, batch: int) -> CalibrationKey:
    """The key of `prior`'s CFG call on `batch` views on this machine."""
    size = prior.resolution // prior.downsample
    return CalibrationKey(cpu=cpu_model(), cores=allowed_cores(), torch=torch.__version__,
                          prior=prior_hash(prior.name, dict(prior.unet.config)),
                          dtype=str(prior.dtype).removeprefix("torch."), images=2 * batch, size=size)


def candidate_counts(free: int) -> list[int]:
    """1, 2, 4, … and `free` itself, never above `free` (nor the allowed cores)."""
    free = max(1, min(free, allowed_cores()))
    counts, n = [1], 2
    while n < free:
        counts.append(n)
        n *= 2
    if free > 1:
        counts.append(free)
    return counts


def choose_threads(seconds: dict[int, list[float]], margin: float = MARGIN) -> int:
    """The fastest count by median, if it beats one thread's median by at least `margin` (a fraction); else 1."""
    medians = {n: statistics.median(s) for n, s in seconds.items() if s}
    if 1 not in medians:
        raise ValueError("a calibration needs one thread's time")
    best = min(medians, key=lambda n: (medians[n], n))
    return best if best > 1 and medians[best] <= (1.0 - margin) * medians[1] else 1


def measure(call: Callable[[], object], counts: list[int], rounds: int | None = None,
            budget_s: float = BUDGET_S) -> dict[int, list[float]]:
    """Seconds per `call` at each thread count: a warm-up call each, then rounds that visit every count once, the
    order reversed every other round (a drift of the machine's speed then hits every count alike). Without
    `rounds`, rounds until the budget is spent (MIN_ROUNDS … MAX_ROUNDS). A count whose warm-up took over twice one
    thread's (plus 20 ms) cannot win: its warm-up is its only time and it is not run again — on a core another
    process holds, threads that wait for each other can be 10× slower than one. torch's thread count is restored."""
    before = torch.get_num_threads()
    seconds: dict[int, list[float]] = {n: [] for n in counts}
    start = time.perf_counter()
    try:
        warm: dict[int, float] = {}
        for n in counts:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            call()
            warm[n] = time.perf_counter() - t0
        live = [n for n in counts if n == 1 or warm[n] <= 2.0 * warm[1] + 0.02]
        for n in counts:
            if n not in live:
                seconds[n].append(warm[n])
        if live == [1]:
            seconds[1].append(warm[1])
            return seconds
        for r in range(rounds or MAX_ROUNDS):
            if rounds is None and r >= MIN_ROUNDS and time.perf_counter() - start > budget_s:
                break
            for n in (live if r % 2 == 0 else live[::-1]):
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                call()
                seconds[n].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return seconds


def calibrate(call: Callable[[], object], key: CalibrationKey, counts: list[int],
              rounds: int | None = None) -> Calibration:
    """Measure `call` at `counts` (see `measure`), choose, and note how busy other processes kept the cores."""
    ticks0, own0, t0 = cpu_ticks(), time.process_time(), time.perf_counter()
    seconds = measure(call, counts, rounds)
    ticks1, own1, wall = cpu_ticks(), time.process_time(), time.perf_counter() - t0
    others = 0.0
    if ticks0 is not None and ticks1 is not None and ticks1[1] > ticks0[1] and wall > 0:
        machine = key.cores * (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1])  # busy cores, ours included
        others = max(0.0, machine - (own1 - own0) / wall)
    return Calibration(key=key, seconds=seconds, threads=choose_threads(seconds), others_busy=round(others, 3),
                       when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# ------------------------------------------------------------------------------------------------ the cache
def cache_path() -> Path:
    root = os.environ.get("DREAMMAPPING_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dreammapping")
    return Path(root) / "threads.json"


def read_cache(path: Path, log: Callable[[str], None]) -> dict[str, dict]:
    """The cache's entries (digest → entry); {} when there is no file, and with one warning when it is unreadable."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
            raise ValueError("not a thread calibration cache of this version")
        return data["entries"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        log(f"warning: ignoring the thread calibration cache {path} ({type(e).__name__}: {str(e)[:80]}); "
            "it will be measured again")
        return {}


def cached_threads(entry: object, key: CalibrationKey) -> int | None:
    """The count an entry holds for `key`, or None if the entry is not a valid one for it."""
    if not isinstance(entry, dict) or entry.get("key") != dataclasses.asdict(key):
        return None
    threads = entry.get("threads")
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= key.cores \
        else None


def write_cache(path: Path, entries: dict[str, dict], calibration: Calibration) -> None:
    """Add `calibration` to `entries` and write the file atomically (a failure to write is not the run's)."""
    entries = {**entries, calibration.key.digest(): {
        "key": dataclasses.asdict(calibration.key), "threads": calibration.threads,
        "medians_ms": {str(n): round(1000 * s, 2) for n, s in calibration.medians().items()},
        "others_busy": calibration.others_busy, "when": calibration.when}}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"version": VERSION, "entries": entries}, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ a run's choice
def prior_call(prior, batch: int) -> Callable[[], object]:
    """One CFG call of `prior`'s UNet on `batch` views, as the loop makes it (random inputs: the cost is the same)."""
    size = prior.resolution // prior.downsample
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(batch, prior.latent_channels, size, size, generator=generator).to(prior.device)
    empty = prior.text_embedding("")  # [1,L,D], cached: the run needs it for CFG anyway
    emb = PromptEmbeddings(cond=empty.expand(batch, -1, -1), uncond=empty.expand(batch, -1, -1))
    t = prior.num_train_timesteps // 2
    return lambda: prior.predict_noise(z, t, emb, guidance_scale=2.0)


def auto_threads(prior, batch: int, free: int, log: Callable[[str], None]) -> int:
    """torch threads for a run with threads 0: 1 when at most one core is free; else the calibrated count for this
    machine and model (measured now if the cache has none, or with DREAMMAPPING_RECALIBRATE=1), at most `free`."""
    free = max(1, min(free, allowed_cores()))
    if free == 1 or prior.device.type != "cpu":
        return free
    key = calibration_key(prior, batch)
    path = cache_path()
    entries = read_cache(path, log)
    recalibrate = os.environ.get(RECALIBRATE, "").strip() not in ("", "0")
    cached = None if recalibrate else cached_threads(entries.get(key.digest()), key)
    if cached is not None:
        return min(cached, free)
    calibration = calibrate(prior_call(prior, batch), key, candidate_counts(free))
    medians = ", ".join(f"{n}: {1000 * s:.0f} ms" for n, s in calibration.medians().items())
    kept = calibration.others_busy <= QUIET
    log(f"threads: measured the prior's call at {medians} → {calibration.threads} "
        f"(other processes kept {calibration.others_busy:.1f} cores busy; "
        f"{f'kept in {path}' if kept else 'not cached: measured again next run'})")
    if kept:
        write_cache(path, entries, calibration)
    return min(calibration.threads, free)


__all__ = ["MARGIN", "Calibration", "CalibrationKey", "auto_threads", "cache_path", "calibrate", "calibration_key",
           "candidate_counts", "choose_threads", "cpu_model", "measure", "prior_hash", "read_cache", "write_cache"]
