"""Many prompts × seeds × methods at once: one ordinary run folder per task, on a local process pool or a Ray cluster.

    dreammapping batch prompts.txt --out runs/batch --method sds vdm --seeds 0 1 --iterations 200
    dreammapping batch prompts.txt --out /shared/runs --ray auto          # each run a Ray task on the cluster

Every task is `train.train(cfg, OUT/<prompt-slug>-<method>-<seed>)`, so `render`, `evaluate` and `generate --resume`
work on its folder. The same task function (`run_task`) runs in both back-ends:

- local (default): a pool of worker processes sized to the machine: one per GPU, or on a CPU one per core group
  (`--threads` cores each; with the cpu preset's auto, one run per core, and the cores shared out when fewer
  runs than cores remain); each worker's torch / OpenMP threads are set to its share of the cores, so the pool
  never oversubscribes the machine.
- `--ray auto|ADDRESS|local`: each task is a Ray task asking for its resources (`num_gpus=1` on a cluster with GPUs,
  otherwise `num_cpus` = its core group). Ray is an optional extra (`pip install -e ".[ray]"`), imported only here.

Robustness: a rerun skips finished runs (metrics.json + gaussians.ply and the same config) and resumes interrupted
ones from checkpoint.pt; a failed task is retried once, then reported while the others go on; Ctrl-C asks every
running task to checkpoint and stop (train's own Ctrl-C path), so every run stays resumable; a bad line of the
prompts file is reported with its line number before anything starts. At the end OUT/summary.md and OUT/summary.csv
list every run's status, time and, for toy-world prompts, its ground-truth metrics from `evaluate`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import unicodedata
from collections import deque
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from dreammapping.checkpoint import CHECKPOINT
from dreammapping.config import GenerateConfig, config_to_dict, default_run_dir, load_yaml_config, slugify
from dreammapping.devices import resolve_device
from dreammapping.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_TERMINATED,
    EXIT_USAGE,
    ConfigError,
    GenerateError,
    Interrupted,
    OutputError,
    RunExistsError,
    Terminated,
)
from dreammapping.evaluate import EvalOptions, evaluate_run
from dreammapping.gaussian_scene import GaussiansConfig
from dreammapping.config import check_config
from dreammapping.files import atomic_write_text
from dreammapping.resources import read_capped
from dreammapping.signals import install_term_as_interrupt, note_sigterm, parent_death_signal, sigterm_received
from dreammapping.toyworld import grammar
from dreammapping.toyworld.grammar import unknown_words
from dreammapping.train import StepInfo, parse_args, train

MAX_PROMPT_CHARS = 300  # CLIP-style text encoders read 77 tokens (~300 characters) and silently drop the rest
SUMMARY_MD, SUMMARY_CSV, RUN_LOG = "summary.md", "summary.csv", "batch.log"
# train() options that say how a run is executed, not what it computes: a rerun on other hardware may change them
EXECUTION_FIELDS = ("out", "overwrite", "threads", "device")
GT_METRICS = ("iou", "psnr", "ssim", "color_error", "saturation_error", "attr_all")
FULL_METRICS = ("fid_classifier", "fid_inception", "clip_ViT-L-14", "clip_ViT-bigG-14")
OK_STATUSES = ("done", "resumed", "skipped")  # the run's outputs exist
EXIT_SOME_FAILED = 1


class PromptsFileError(ConfigError):
    """A bad prompts file: every problem on its own line as FILE:LINE: why (exit code 2)."""


# ================================================================================================ the prompts file
@dataclass(frozen=True)
class PromptLine:
    line: int  # 1-based line number in the prompts file
    prompt: str


def read_prompts(path: str | os.PathLike, prior: str = "embedded", max_chars: int = MAX_PROMPT_CHARS
                 ) -> list[PromptLine]:
    """The prompts of a text file, one per line; `#` starts a comment, blank lines are skipped. Raises
    PromptsFileError listing every bad line (not UTF-8, control characters, too long, words the embedded prior does
    not know, two prompts that would share a run folder) before anything is run."""
    path = Path(path)
    try:
        data = read_capped(path, what="prompts file")  # capped: `batch /dev/zero` must not read forever
    except OSError as e:
        raise PromptsFileError(f"cannot read the prompts file {path}: {e.strerror or e}") from None
    prompts, problems, folders = [], [], {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{path}:{number}: not UTF-8 text (byte {e.start + 1})")
            continue
        text = text.split("#", 1)[0].strip()
        if not text:
            continue
        why = _prompt_problem(text, prior, max_chars)
        if not why:
            slug = slugify(text)
            if slug in folders:
                first = folders[slug]
                why = (f"{text!r} would share the run folder {slug}-… with line {first.line} ({first.prompt!r}); "
                       "reword or remove one of them")
            else:
                folders[slug] = PromptLine(number, text)
        if why:
            problems.append(f"{path}:{number}: {why}")
        else:
            prompts.append(PromptLine(number, text))
    if problems:
        raise PromptsFileError("\n".join(problems))
    if not prompts:
        raise PromptsFileError(f"{path}: no prompts (one per line; # starts a comment)")
    return prompts


def _prompt_problem(text: str, prior: str, max_chars: int) -> str:
    bad = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) == "Cc" and c != "\t"})
    if bad:
        return f"control character(s) {', '.join(bad)} in the prompt"
    if len(text) > max_chars:
        return f"the prompt is {len(text)} characters long; at most {max_chars} (the text encoder would cut it)"
    if prior == "embedded":
        words = unknown_words(text)
        if words:
            return (f"the embedded prior does not know {', '.join(map(repr, words))} (it knows toy shapes, colours, "
                    "sizes and 'on top of' / 'next to')")
    return ""


# ================================================================================================ tasks
@dataclass
class Task:
    """One run of a batch: plain data, so that it travels to worker processes and Ray workers unchanged."""

    run_dir: str  # absolute: workers may run in another folder
    config: GenerateConfig  # the run's full config (threads are set per worker at dispatch)
    evaluate: EvalOptions | None = None  # what `evaluate` computes after training; None: no evaluation
    label: str = ""  # the name the summary gives this run (its method, or a benchmark's variant)
    line: int | None = None  # its line in the prompts file


def is_toy_world_prompt(prompt: str) -> bool:
    """True when the embedded world's grammar parses the prompt (so it has a ground-truth 3D scene)."""
    try:
        grammar.parse(prompt)
    except Exception:  # noqa: BLE001 — ParseError / UnknownWordsError: not a toy-world prompt
        return False
    return True


def eval_options_for(prompt: str, evaluate: str, device: str = "auto") -> EvalOptions | None:
    """`evaluate`: "gt" (ground-truth metrics of toy-world prompts only; fast), "full" (also CLIP and 3D-FID, every
    prompt; slow: FID samples the prior) or "none". Device "auto": the run's own device, decided in the worker."""
    if evaluate == "none" or (evaluate == "gt" and not is_toy_world_prompt(prompt)):
        return None
    full = evaluate == "full"
    return EvalOptions(clip=full, fid=full, device=device)


def _absolute_if_path(value: str, suffix: str = "") -> str:
    """A prior folder or .ply given relative to here, made absolute (Ray workers run elsewhere); names and hub ids
    stay as they are."""
    path = Path(value)
    return str(path.resolve()) if value != "embedded" and value.endswith(suffix) and path.exists() else value


def plan_tasks(prompts: Sequence[PromptLine], configs: dict[str, GenerateConfig], seeds: Sequence[int],
               out: str | os.PathLike, evaluate: str = "gt") -> list[Task]:
    """Prompt × seed × method → tasks in OUT/<prompt-slug>-<method>-<seed>, seed-major (a batch stopped half-way has
    every prompt and method on the first seeds). `configs`: method → that method's base config."""
    out = Path(out).resolve()
    tasks = []
    for seed in seeds:
        for p in prompts:
            for method, base in configs.items():
                scene = base.scene
                if isinstance(scene, GaussiansConfig):  # a .ply to start from, made absolute as the prior folder
                    scene = dataclasses.replace(scene, init=_absolute_if_path(scene.init, ".ply"))
                cfg = dataclasses.replace(base, prompt=p.prompt, method=method, seed=seed,
                                          prior=_absolute_if_path(base.prior), scene=scene)
                run_dir = out / default_run_dir(cfg).name
                cfg = dataclasses.replace(cfg, out=str(run_dir))
                tasks.append(Task(str(run_dir), cfg, eval_options_for(p.prompt, evaluate), method, p.line))
    return tasks


# ================================================================================================ one task
def _comparable(cfg: GenerateConfig) -> dict:
    data = config_to_dict(cfg)
    for name in EXECUTION_FIELDS:
        data.pop(name, None)
    return data


def run_state(run_dir: str | os.PathLike, cfg: GenerateConfig) -> str:
    """What a folder holds for `cfg`: "finished", "resumable" (a checkpoint of this config), "fresh" (nothing of
    value) or "different" (outputs or a checkpoint of another config)."""
    run_dir = Path(run_dir)
    finished = (run_dir / "metrics.json").is_file() and (run_dir / "gaussians.ply").is_file()
    checkpoint = (run_dir / CHECKPOINT).is_file()
    if not (finished or checkpoint):
        return "fresh"
    try:
        same = _comparable(load_yaml_config(run_dir / "config.yaml", GenerateConfig())) == _comparable(cfg)
    except GenerateError:  # no or unreadable config.yaml, unknown method …: not this run
        same = False
    if not same:
        return "different"
    return "finished" if finished else "resumable"


def on_run_device(options: EvalOptions, run_device: str) -> EvalOptions:
    """The evaluation's options with device "auto" meaning the run's own device (resolved in the worker)."""
    if options.device != "auto":
        return options
    return dataclasses.replace(options, device=str(resolve_device(run_device)))


def cached_evaluation(run_dir: str | os.PathLike, options: EvalOptions) -> dict | None:
    """eval.json when it is newer than the .ply and was made with the same settings, else None."""
    run_dir = Path(run_dir)
    path, ply = run_dir / "eval.json", run_dir / "gaussians.ply"
    try:
        if path.stat().st_mtime >= ply.stat().st_mtime:
            old = json.loads(path.read_text())
            if old.get("settings") == dataclasses.asdict(options):
                return old
    except (OSError, ValueError):
        pass
    return None


_STOP: threading.Event | None = None  # set by the pool's initializer: the driver asks running tasks to stop


def _stop_requested(info: StepInfo) -> bool:
    return _STOP is not None and _STOP.is_set()


def _run_log(run_dir: Path) -> Callable[[str], None]:
    """train's messages go to RUN/batch.log, not to the terminal that shows the batch's progress."""
    def log(message: str) -> None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with (run_dir / RUN_LOG).open("a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        except OSError:
            pass
    return log


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def new_record(task: Task, status: str, attempts: int = 0, error: str = "") -> dict:
    cfg = task.config
    return {"run_dir": task.run_dir, "prompt": cfg.prompt, "method": cfg.method, "label": task.label or cfg.method,
            "seed": cfg.seed, "line": task.line, "status": status, "attempts": attempts, "error": error,
            "iterations": cfg.iterations, "train_seconds": None, "task_seconds": 0.0, "resumed_from": None,
            "final_loss": None, "metrics": {}, "skipped_metrics": {}}


def run_task(task: Task, attempt: int = 1) -> dict:
    """Train (or skip / resume) one run, then evaluate it. Never raises for a failed run: returns its record
    {"status": done | resumed | skipped | failed | interrupted | not started, "error", "metrics", …}. The same
    function runs in a pool worker and as a Ray task."""
    t0 = time.perf_counter()
    record = new_record(task, "failed", attempt)
    cfg, run_dir = task.config, Path(task.run_dir)
    log = _run_log(run_dir)
    if _STOP is not None and _STOP.is_set():
        record["status"] = "not started"
        return record
    try:
        state = run_state(run_dir, cfg)
        if state == "different" and not cfg.overwrite:
            raise RunExistsError(f"{run_dir} holds a run with another config; pass --overwrite to replace it, or "
                                   "choose another --out")
        if state == "finished":
            status, metrics = "skipped", json.loads((run_dir / "metrics.json").read_text())
        else:
            resume = state == "resumable"
            cfg = dataclasses.replace(cfg, overwrite=cfg.overwrite and state == "different")
            metrics = train(cfg, run_dir, resume=resume, progress=False, callback=_stop_requested, log=log).metrics
            status = "resumed" if resume else "done"
        record.update(status=status, train_seconds=metrics.get("train_seconds"), final_loss=metrics.get("final_loss"),
                      resumed_from=metrics.get("resumed_from"), iterations=metrics.get("iterations", cfg.iterations))
        if task.evaluate is not None:
            options = on_run_device(task.evaluate, cfg.device)
            evaluation = cached_evaluation(run_dir, options) or evaluate_run(run_dir, options)
            record.update(metrics=dict(evaluation["metrics"]), skipped_metrics=dict(evaluation["skipped"]))
    except (Interrupted, Terminated, KeyboardInterrupt) as e:  # checkpointed by train: a rerun resumes it
        record.update(status="interrupted", error=_one_line(e))
    except Exception as e:  # noqa: BLE001 — one run's failure is reported, the batch goes on
        record.update(status="failed", error=_one_line(e))
        log(f"attempt {attempt} failed:\n{traceback.format_exc()}")
    record["task_seconds"] = round(time.perf_counter() - t0, 3)
    return record


def finished_record(task: Task) -> dict | None:
    """The record of a task with nothing left to do (finished, same config, evaluation cached or not wanted)."""
    if run_state(task.run_dir, task.config) != "finished":
        return None
    run_dir = Path(task.run_dir)
    record = new_record(task, "skipped")
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if task.evaluate is not None:
        options = on_run_device(task.evaluate, task.config.device)
        evaluation = cached_evaluation(run_dir, options)
        if evaluation is None:
            return None
        record.update(metrics=dict(evaluation["metrics"]), skipped_metrics=dict(evaluation["skipped"]))
    record.update(train_seconds=metrics.get("train_seconds"), final_loss=metrics.get("final_loss"),
                  resumed_from=metrics.get("resumed_from"), iterations=metrics.get("iterations"))
    return record


# ================================================================================================ back-ends
def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_DRIVER: int | None = None  # a pool worker's parent, the batch driver (set by the initializer)


def _pool_task(task: Task, attempt: int) -> dict:
    """run_task in a pool worker; a worker whose driver has died (its run checkpointed on the SIGTERM the kernel sent)
    exits instead of waiting forever for work no one will send."""
    record = run_task(task, attempt)
    if _DRIVER is not None and os.getppid() != _DRIVER:
        os._exit(EXIT_TERMINATED)
    return record


def _worker_init(threads: int, stop, gpus) -> None:
    """Runs first in every pool worker: its share of the cores, its GPU, and Ctrl-C left to train's handler."""
    global _STOP, _DRIVER
    _STOP, _DRIVER = stop, os.getppid()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    # An idle worker ignores Ctrl-C (the terminal sends it to the whole process group); train() installs its own
    # handler while it runs (checkpoint at the next step, then Interrupted), and the driver's stop event does the same.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM acts as Ctrl-C (a running train() checkpoints and stops, an idle worker exits), and the kernel sends
    # it when the driver dies however it dies (SIGKILL included): no worker outlives its batch
    install_term_as_interrupt()
    parent_death_signal()


class LocalPool:
    """A pool of `workers` spawned processes (fork is unsafe once torch has started threads)."""

    def __init__(self, workers: int, threads: int, gpus: int = 0):
        self.workers, self.threads, self.gpus = workers, threads, gpus
        self.slots = workers
        self.describe = (f"local pool: {workers} worker{'s' * (workers > 1)}, "
                         + (f"one GPU each, {threads} threads" if gpus
                            else f"{threads} thread{'s' * (threads > 1)} each"))
        self._context = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.stop_event = self._context.Event()
        gpu_ids = None
        if self.gpus:
            gpu_ids = self._context.Queue()
            for i in range(self.workers):
                gpu_ids.put(i % self.gpus)
        self.executor = futures.ProcessPoolExecutor(self.workers, mp_context=self._context, initializer=_worker_init,
                                                    initargs=(self.threads, self.stop_event, gpu_ids))
        self.broken = False

    def submit(self, task: Task, attempt: int):
        return self.executor.submit(_pool_task, task, attempt)

    def wait(self, handles: list, timeout: float) -> list[tuple[object, dict | BaseException]]:
        done, _ = futures.wait(handles, timeout=timeout, return_when=futures.FIRST_COMPLETED)
        out = []
        for f in done:
            error = f.exception()
            if isinstance(error, BrokenProcessPool):
                self.broken = True
            out.append((f, f.result() if error is None else error))
        return out

    def restart(self) -> None:
        """After a worker died (killed for memory, a crash in native code): a fresh pool for the retries."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._start()

    def stop(self, handles: list) -> None:
        self.stop_event.set()  # each running train() checkpoints at its next step and returns "interrupted"

    def kill(self, handles: list) -> None:
        # concurrent.futures has no public way to end running work; its worker table is the only handle on them
        for process in list((getattr(self.executor, "_processes", None) or {}).values()):
            process.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class RayCluster:
    """Each task a Ray task with its resources: `num_gpus=1` where the cluster has GPUs, else `threads` CPUs."""

    def __init__(self, address: str, threads: int, workers: int = 0):
        try:
            import ray
        except ImportError:
            raise ConfigError('--ray needs Ray: pip install -e ".[ray]" (or pip install "ray[default]")') from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            if address == "local":  # a private local instance (tests, one big machine)
                ray.init(num_cpus=(workers * threads) or None, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            else:
                try:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    raise ConfigError(f"--ray {address}: cannot connect to a Ray cluster ({_one_line(e, 200)}); "
                                        "start one with `ray start --head`, or use --ray local") from None
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        self.threads = threads
        if gpus:
            self.options = {"num_gpus": 1, "num_cpus": max(1, min(threads, cpus // gpus))}
            self.slots = gpus
        else:
            self.options = {"num_cpus": threads}
            self.slots = max(1, cpus // threads)
        self.describe = (f"Ray at {address}: {self.slots} task{'s' * (self.slots > 1)} at a time, each with "
                         + ", ".join(f"{k}={v}" for k, v in self.options.items()))
        self.remote = ray.remote(max_retries=0, **self.options)(run_task)  # retries are the batch's own
        self.broken = False

    def submit(self, task: Task, attempt: int):
        return self.remote.remote(task, attempt)

    def wait(self, handles: list, timeout: float) -> list[tuple[object, dict | BaseException]]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as e:  # noqa: BLE001 — worker died, task cancelled, …: reported as this task's error
                out.append((ref, e))
        return out

    def restart(self) -> None:
        self.broken = False

    def stop(self, handles: list) -> None:
        # A running task gets KeyboardInterrupt through its SIGINT handler, which train() turns into
        # checkpoint-and-stop; a task not yet started is dropped.
        for ref in handles:
            self.ray.cancel(ref, force=False)

    def kill(self, handles: list) -> None:
        for ref in handles:  # ends the worker processes, on a remote cluster too
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


# ================================================================================================ the driver
class _CtrlC:
    """The driver's Ctrl-C as flags checked by its loop: first = stop (tasks checkpoint), second = kill."""

    def __init__(self):
        self.count, self._previous = 0, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._previous_term = signal.signal(signal.SIGTERM, self._handle)  # SIGTERM: the same, exit 143
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGTERM:
            note_sigterm()
        self.count += 1

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            signal.signal(signal.SIGTERM, self._previous_term)
        return False


def default_workers(cfg_threads: int = 1) -> tuple[int, int, int]:
    """(workers, threads per worker, GPUs) for this machine: one worker per GPU; on a CPU one per core group of
    `cfg_threads` cores (the cpu preset's 1: every core its own run)."""
    cores, gpus = machine_cores(), torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        return gpus, max(1, cores // gpus), gpus
    group = max(1, cfg_threads)
    return max(1, cores // group), min(group, cores), 0


def run_batch(tasks: Sequence[Task], *, workers: int = 0, threads: int = 0, ray: str | None = None,
              retries: int = 1, progress: bool = True, summary_dir: str | os.PathLike | None = None,
              log: Callable[[str], None] | None = None) -> list[dict]:
    """Run every task (locally, or on Ray when `ray` is "auto", "local" or an address); returns one record per task
    in the order given, and writes summary.md / summary.csv into `summary_dir` when given. `workers` 0: one per GPU or
    core group; `threads` 0: the cores divided among the workers (or the tasks' own `threads` for Ray)."""
    log = log or (lambda message: tqdm.write(message, file=sys.stderr))
    records: dict[str, dict] = {}
    todo = []
    for task in tasks:
        record = finished_record(task)
        if record is not None:
            records[task.run_dir] = record
        else:
            todo.append(task)
    interrupted = False
    if todo:
        backend = _make_backend(todo, workers, threads, ray)
        log(f"batch: {len(tasks)} runs, {len(tasks) - len(todo)} already finished; {backend.describe}")
        try:
            interrupted = _drive(backend, todo, records, retries, progress, len(tasks), log)
        finally:
            backend.close()
    ordered = [records.get(t.run_dir) or new_record(t, "not started") for t in tasks]
    if summary_dir is not None:
        write_summary(summary_dir, ordered)
    if interrupted:
        raise BatchInterrupted(ordered)
    return ordered


class BatchInterrupted(Interrupted):
    """Ctrl-C stopped the batch; `records` says where each run stands (every started run has a checkpoint)."""

    def __init__(self, records: list[dict]):
        started = sum(r["status"] == "interrupted" for r in records)
        super().__init__(f"interrupted: {started} run(s) checkpointed; rerun the same command to resume")
        self.records = records


def _make_backend(todo: Sequence[Task], workers: int, threads: int, ray: str | None):
    auto_workers, _, gpus = default_workers(todo[0].config.threads)
    if ray is not None:
        return RayCluster(ray, threads or max(1, todo[0].config.threads), workers)
    workers = min(workers or auto_workers, len(todo))
    share = max(1, machine_cores() // workers)  # never more threads in all than cores
    if not threads:
        wanted = todo[0].config.threads  # a run's own --threads caps its share; 0 (auto, the cpu preset's): the share
        threads = share if gpus or wanted <= 0 else min(wanted, share)
    return LocalPool(workers, threads, gpus)


def _drive(backend, todo: Sequence[Task], records: dict, retries: int, progress: bool, total: int, log) -> bool:
    """Keep the back-end's slots busy, retry failures, honour Ctrl-C; True when interrupted."""
    pending: deque[tuple[Task, int]] = deque((t, 1) for t in todo)
    running: dict[object, tuple[Task, int]] = {}
    counts = {"ok": 0, "failed": 0}
    bar = tqdm(total=total, initial=total - len(todo), desc="batch", unit="run", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)

    shown = [""]

    def postfix() -> None:
        text = (f"done {counts['ok'] + total - len(todo)}, running {len(running)}, failed {counts['failed']}, "
                f"queued {len(pending)}")
        if text != shown[0]:  # redraw on change only: a log file gets one line per event, not one per poll
            shown[0] = text
            bar.set_postfix_str(text)

    threads = getattr(backend, "threads", 1)
    with _CtrlC() as ctrl_c:
        stopping = False
        while pending or running:
            if ctrl_c.count and not stopping:
                stopping = True
                log(f"batch: Ctrl-C — asking {len(running)} running run(s) to checkpoint and stop "
                    "(Ctrl-C again to kill them; they stay resumable from their last checkpoint)")
                backend.stop(list(running))
                for task, attempt in pending:
                    records[task.run_dir] = new_record(task, "not started", attempt - 1)
                pending.clear()
            if ctrl_c.count > 1:
                backend.kill(list(running))
                for task, attempt in running.values():
                    records[task.run_dir] = new_record(task, "interrupted", attempt, "killed by a second Ctrl-C")
                running.clear()
                break
            while pending and len(running) < backend.slots and not stopping:
                task, attempt = pending.popleft()
                running[backend.submit(dataclasses.replace(task, config=dataclasses.replace(
                    task.config, threads=threads)), attempt)] = (task, attempt)
            postfix()
            for handle, result in backend.wait(list(running), timeout=0.5):
                task, attempt = running.pop(handle)
                record = result if isinstance(result, dict) else new_record(
                    task, "interrupted" if stopping else "failed", attempt, _one_line(result))
                if record["status"] == "failed" and attempt <= retries and not stopping:
                    log(f"batch: {Path(task.run_dir).name} failed ({record['error']}); retrying "
                        f"({attempt}/{retries})")
                    pending.append((task, attempt + 1))
                    continue
                records[task.run_dir] = record
                if record["status"] == "failed":
                    counts["failed"] += 1
                    log(f"batch: {Path(task.run_dir).name} FAILED after {attempt} attempt(s): {record['error']}")
                elif record["status"] in OK_STATUSES:
                    counts["ok"] += 1
                bar.update(1)
            if backend.broken and not stopping:
                backend.restart()
    postfix()
    bar.close()
    return ctrl_c.count > 0


# ================================================================================================ the summary
def metric_columns(records: Sequence[dict]) -> list[str]:
    present = {k for r in records for k in r.get("metrics", {})}
    return [k for k in (*GT_METRICS, *FULL_METRICS) if k in present]


CSV_COLUMNS = ("run", "prompt", "method", "seed", "status", "attempts", "iterations", "train_seconds",
               "task_seconds", "resumed_from", "final_loss")


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def summary_markdown(records: Sequence[dict], root: str | os.PathLike | None = None) -> str:
    metrics = metric_columns(records)
    statuses = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    lines = [f"# Batch summary ({len(records)} runs: " + ", ".join(f"{n} {s}" for s, n in statuses.items()) + ")", "",
             "Times in seconds: `train` is the run's own training time (metrics.json), `task` what this batch spent "
             "on it (0 when it was already finished). Metrics: `dreammapping evaluate` against the toy world's "
             "ground truth (— where a prompt has none or the metric was not asked for).", ""]
    head = ["run", "prompt", "method", "seed", "status", "tries", "train s", "task s", *metrics, "error"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        name = os.path.relpath(r["run_dir"], root) if root is not None else r["run_dir"]
        cells = [f"`{name}`", r["prompt"], r["label"], str(r["seed"]), r["status"], str(r["attempts"]),
                 _cell(r["train_seconds"], 1), _cell(r["task_seconds"], 1)]
        cells += [_cell(r["metrics"].get(k), 2 if k == "psnr" or k.startswith(("fid", "clip")) else 3) for k in metrics]
        cells.append(r["error"].replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(records: Sequence[dict]) -> str:
    metrics = metric_columns(records)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*CSV_COLUMNS, *metrics, "error"])
    for r in records:
        row = [r["run_dir"], r["prompt"], r["label"], r["seed"], r["status"], r["attempts"], r["iterations"],
               r["train_seconds"], r["task_seconds"], r["resumed_from"], r["final_loss"]]
        writer.writerow([("" if v is None else v) for v in row] + [r["metrics"].get(k, "") for k in metrics]
                        + [r["error"]])
    return buffer.getvalue()


def write_summary(folder: str | os.PathLike, records: Sequence[dict]) -> tuple[Path, Path]:
    """FOLDER/summary.md and FOLDER/summary.csv, each written atomically."""
    folder = Path(folder)
    return (atomic_write_text(folder / SUMMARY_MD, summary_markdown(records, folder)),
            atomic_write_text(folder / SUMMARY_CSV, summary_csv(records)))


# ================================================================================================ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dreammapping batch", allow_abbrev=False,
        description="Many prompts × seeds × methods as ordinary run folders OUT/<prompt>-<method>-<seed>, on a local "
                    "process pool or a Ray cluster; rerunning skips finished runs and resumes interrupted ones.",
        epilog="Every other option is a `dreammapping generate` option (--iterations, --preset, --config, --prior, "
               "--guidance.*, …; see dreammapping generate --help) and applies to every run; --threads sets the "
               "cores of one run on a CPU (the pool runs cores ÷ threads at once). Exit codes: 0 every run finished, "
               f"1 some failed, {EXIT_USAGE} bad options or prompts file, {EXIT_OUTPUT} OUT not writable, "
               f"{EXIT_INTERRUPTED} interrupted (rerun the same command to resume).")
    p.add_argument("prompts", help="text file, one prompt per line; # starts a comment, blank lines are skipped")
    p.add_argument("--out", required=True, help="folder of the run folders and of summary.md / summary.csv")
    p.add_argument("--method", "--methods", nargs="+", dest="methods", metavar="METHOD",
                   help="guidance methods, each run for every prompt and seed (default: the preset's, vdm)")
    p.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0], dest="seeds", metavar="SEED",
                   help="seeds, each run for every prompt and method (default 0)")
    p.add_argument("--workers", type=int, default=0,
                   help="local runs at once (default: one per GPU, or one per --threads cores on a CPU)")
    p.add_argument("--ray", metavar="auto|ADDRESS|local", default=None,
                   help="run each task as a Ray task: auto (the cluster this machine belongs to), ADDRESS "
                        "(host:port or ray://…), or local (start a private local Ray instance); needs the [ray] "
                        "extra")
    p.add_argument("--evaluate", choices=("gt", "full", "none"), default="gt",
                   help="after training: gt = ground-truth metrics of toy-world prompts (fast, default); full = also "
                        "CLIP and 3D-FID for every prompt (slow: FID samples the prior); none")
    p.add_argument("--retries", type=int, default=1, help="times a failed run is tried again (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_batch_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, GenerateConfig]]:
    """argv → (batch options, method → base GenerateConfig of every run of that method)."""
    args, rest = _parser().parse_known_args(list(argv))
    for flag in ("--resume", "--out", "--method", "--seed"):
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise ConfigError(f"{flag} is not a batch option here (a rerun of the batch resumes its runs)")
    if args.retries < 0 or args.workers < 0:
        raise ConfigError("--retries and --workers must be ≥ 0")
    # every method's config through generate's own parser: a flag that is not an option of one of them fails there
    configs = {}
    for method in dict.fromkeys(args.methods or [None]):
        cfg, _ = parse_args([*rest, "--method", method] if method is not None else rest)
        if cfg.prompt:  # a positional argument generate would take as its prompt
            raise ConfigError(f"unexpected argument {cfg.prompt!r}: the prompts come from the prompts file")
        configs[cfg.method] = cfg
    return args, configs


def cli_batch(argv: Sequence[str] | None = None) -> int:
    """`dreammapping batch PROMPTS.txt --out DIR [--method …] [--seeds 0 1 2] [--ray auto] [generate options]`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args, configs = parse_batch_args(argv)
        except SystemExit as e:  # argparse / tyro printed help or a usage error
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
        prior = next(iter(configs.values())).prior
        prompts = read_prompts(args.prompts, prior=prior)
        out = Path(args.out)
        tasks = plan_tasks(prompts, configs, args.seeds, out, evaluate=args.evaluate)
        for task in tasks:  # every value of every run, before anything is written (else: fail, retry, fail)
            check_config(task.config)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output folder {out}: {e.strerror or e}") from None
        records = run_batch(tasks, workers=args.workers, ray=args.ray, retries=args.retries,
                            progress=not args.no_progress, summary_dir=out)
    except BatchInterrupted as e:
        print(f"dreammapping batch: {e}; summary in {Path(args.out) / SUMMARY_MD}", file=sys.stderr)
        return EXIT_TERMINATED if sigterm_received() else EXIT_INTERRUPTED
    except GenerateError as e:
        for line in str(e).splitlines():
            print(f"dreammapping batch: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # before any run started
        print("dreammapping batch: interrupted before any run started", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [r for r in records if r["status"] not in OK_STATUSES]
    counts = {s: sum(r["status"] == s for r in records) for s in dict.fromkeys(r["status"] for r in records)}
    print(f"dreammapping batch: {len(records)} runs (" + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f"); summary: {out / SUMMARY_MD}, {out / SUMMARY_CSV}")
    for r in failed:
        print(f"  {r['status']}: {r['run_dir']}: {r['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


__all__ = ["Task", "PromptLine", "read_prompts", "plan_tasks", "run_task", "run_batch", "run_state", "write_summary",
           "cli_batch", "PromptsFileError", "BatchInterrupted", "LocalPool", "RayCluster"]
