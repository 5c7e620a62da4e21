"""`dreammapping app`: a local web app — type a prompt, press Generate, watch the splat form, download it.

Built on **viser** rather than gradio: viser draws Gaussian splats natively in the browser (WebGL, sorted on the
client), so the live view sends the scene itself — 32 bytes a Gaussian, every few steps, replacing one scene node —
and the page orbits it at screen rate. gradio's 3D widget reloads a whole file for every update and has no splat
stream; viser also brings the form widgets (text, dropdown, numbers, buttons, progress bar, images, downloads), is
what nerfstudio and gsplat use for exactly this, and is one small pure-Python dependency.

Two layers, kept apart so the logic is testable without a browser:

- `RunQueue`: the state machine of the runs. `submit(RunRequest)` makes a `Job` (queued → running → done / failed /
  stopped; queued → stopped when cancelled before it starts) and one worker thread runs the jobs in order through
  `train(..., callback=...)` — one run at a time per app, the rest wait. The callback records progress, hands
  the detached scene to the live view and returns True once Stop was pressed, so the run stops at a step boundary
  with a checkpoint (`dreammapping generate --resume RUN` continues it). Runs go to ordinary run folders under
  `runs_root`, named `<prompt-slug>-<method>-<seed>[-k]` by `slugify`: a prompt never becomes a path itself.
  Bad input fails the job with the CLI's own one-line message (`str` of the `GenerateError`), never a traceback.
- `App`: the viser page (form, progress, live view, results, downloads). Downloads are sent over viser's websocket
  from a fixed list of file names inside the app's own run folders (`RunQueue.run_file`); the app serves no other
  files (viser's HTTP server serves only its own client bundle).

    dreammapping app [--host 127.0.0.1] [--port 7860] [--runs runs]

Needs the optional extra `pip install -e ".[app]"` (viser); the core package does not.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import enum
import itertools
import math
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import viser

from dreammapping.config import DEFAULT_PRESET, PRESETS, GenerateConfig, build_config, default_run_dir, method_config
from dreammapping.errors import ConfigError, GenerateError, Interrupted, OutputError
from dreammapping.evaluate import evaluate_run
from dreammapping.formats import export
from dreammapping.guidance import METHODS, default_guidance_scale
from dreammapping.train import GenerateResult, StepInfo, train
from dreammapping.validation import check_ranges
from dreammapping.viewer import LiveView, configure_scene
from dreammapping.webguard import allow_only_own_origin, check_listen_address


# ================================================================================================ the state machine
class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"


# The only moves a job makes; a job whose request is invalid is born FAILED (it never waits in the queue).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.STOPPED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED, JobState.STOPPED}),
    JobState.DONE: frozenset(), JobState.FAILED: frozenset(), JobState.STOPPED: frozenset(),
}
FINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.STOPPED})

# What a download button may send: these names, inside a run folder this app made. Mesh names are the ones an
# `export` step may leave in a run folder; their buttons appear only when such a file exists.
DOWNLOADS = ("gaussians.ply", "turntable.mp4", "turntable.gif", "views.png", "mesh.glb", "mesh.obj", "mesh.ply")
MESH_FILES = ("mesh.glb", "mesh.obj", "mesh.ply")
_RUN_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")  # what slugify + "-<method>-<seed>[-k]" can produce


@dataclass
class RunRequest:
    """What the form holds; turned into a `GenerateConfig` on top of the cpu preset."""

    prompt: str
    method: str = "vdm"  # a name in dreammapping.guidance.METHODS
    # CFG scale; None: the prior's own default (`default_guidance_scale`: 7.5 for Stable Diffusion, 2 embedded)
    guidance_scale: float | None = None
    dca_cutoff: int = 300  # VDM's DCA cut-off timestep (VDM only)
    iterations: int = PRESETS[DEFAULT_PRESET]().iterations  # the preset's schedule
    seed: int = 0
    prior: str = "embedded"  # "embedded", a Hugging Face id in the local cache or a diffusers folder


@dataclass
class Job:
    id: int
    request: RunRequest
    state: JobState
    config: GenerateConfig | None = None
    run_dir: Path | None = None
    step: int = 0
    iterations: int = 0
    loss: float = math.nan
    it_per_s: float = 0.0
    gaussians: int = 0
    message: str = ""  # one line: the error, how it stopped, or how to resume
    warnings: list[str] = field(default_factory=list)  # what train() logged as a warning (unknown words, …)
    result: GenerateResult | None = None
    evaluation: dict | None = None  # dreammapping.evaluate's ground-truth metrics (toy-world prompts)
    stop_requested: threading.Event = field(default_factory=threading.Event, repr=False)


def job_config(request: RunRequest, run_dir: Path | None = None, **overrides) -> GenerateConfig:
    """The run's config: the cpu preset, the form's values, then `overrides` (GenerateConfig fields; tests use them
    for small turntables). Raises the CLI's `GenerateError`s for an unknown method or bad option."""
    guidance = {"guidance_scale": None if request.guidance_scale is None else float(request.guidance_scale)}
    if request.method == "vdm":
        guidance["dca_cutoff"] = int(request.dca_cutoff)
    cfg = build_config(request.prompt, preset=DEFAULT_PRESET, method=request.method,
                       iterations=int(request.iterations), seed=int(request.seed), prior=request.prior.strip(),
                       guidance=guidance, out=None if run_dir is None else str(run_dir), **overrides)
    method_config(cfg)  # an unknown method or option fails here, before the job waits in the queue
    check_ranges(cfg)  # and every value outside its declared range (the prompt is train's to judge)
    return cfg


Runner = Callable[[GenerateConfig, Path, Callable, Callable[[str], None]], GenerateResult]


def train_runner(cfg: GenerateConfig, run_dir: Path, callback, log) -> GenerateResult:
    """The real run: Algorithm 1 in `run_dir`, progress reported only through `callback`; then the mesh download."""
    result = train(cfg, run_dir, progress=False, callback=callback, log=log)
    write_mesh(run_dir, log)
    return result


def write_mesh(run_dir: Path, log: Callable[[str], None]) -> Path | None:
    """RUN/mesh.glb (what `dreammapping export RUN --format glb` writes) for the page's download list; None, with a
    line in the log, when the mesh libraries (the `formats` extra) are missing or the extraction fails."""
    try:
        path, summary = export(run_dir, "glb", out=run_dir / "mesh.glb")
    except ImportError as e:
        log(f"no mesh download: {' '.join(str(e).split())}")
        return None
    except (ValueError, RuntimeError) as e:  # e.g. an empty density field: the splat itself is still fine
        log(f"no mesh download: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        return None
    log(f"mesh.glb: {summary}")
    return path


def ground_truth_metrics(run_dir: Path) -> dict:
    """dreammapping.evaluate's ground-truth metrics only (no CLIP, no FID: a second or two on a CPU)."""
    return evaluate_run(run_dir, clip=False, fid=False)


class RunQueue:
    """Runs jobs one at a time, in order, on a worker thread; see the module docstring for the states.

    `on_change(job)` is called after every state change and every step (from the worker or the caller's thread);
    `on_step(job, info)` gets train's `StepInfo` (with the scene) every step.
    """

    def __init__(self, runs_root: str | Path = "runs", *, runner: Runner = train_runner,
                 evaluate: Callable[[Path], dict] | None = ground_truth_metrics,
                 on_change: Callable[[Job], None] | None = None,
                 on_step: Callable[[Job, StepInfo], None] | None = None, priors: tuple[str, ...] | None = None,
                 **overrides):
        self.runs_root = Path(runs_root)
        self.priors = priors  # the priors a request may name (None: any; the app passes its --prior choices)
        self.runner, self.evaluate, self.overrides = runner, evaluate, overrides
        self.on_change, self.on_step = on_change, on_step
        self.jobs: list[Job] = []
        self._pending: list[Job] = []
        self._reserved: set[str] = set()  # run-folder names given to jobs (a queued job's folder does not exist yet)
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="dreammapping-runs", daemon=True)
        self._worker.start()

    # ---- the caller's side ----
    def submit(self, request: RunRequest) -> Job:
        """Queue a run; an invalid request gives a job that is already FAILED with the one-line reason."""
        job = Job(id=next(self._ids), request=request, state=JobState.QUEUED)
        with self._cv:
            try:
                if self.priors is not None and request.prior not in self.priors:
                    raise ConfigError(f"prior {str(request.prior)[:60]!r} is not one this app offers "
                                      f"({', '.join(self.priors)})")
                job.config = job_config(request, **self.overrides)
                job.iterations = job.config.iterations
                job.run_dir = self._allocate_run_dir(job.config)
                job.config = dataclasses.replace(job.config, out=str(job.run_dir))
            except GenerateError as e:
                job.state, job.message = JobState.FAILED, str(e)
            except (TypeError, ValueError) as e:  # a non-numeric field from the page
                job.state, job.message = JobState.FAILED, f"bad value: {' '.join(str(e).split())}"
            self.jobs.append(job)
            if job.state is JobState.QUEUED:
                self._pending.append(job)
                self._cv.notify_all()
        self._changed(job)
        return job

    def stop(self, job: Job) -> None:
        """Stop a running job at its next step boundary (checkpointed), or cancel a queued one."""
        with self._cv:
            if job.state is JobState.QUEUED:
                self._pending.remove(job)
                self._move(job, JobState.STOPPED)
                job.message = "cancelled before it started"
            elif job.state is JobState.RUNNING:
                job.stop_requested.set()
                return
            else:
                return
        self._changed(job)

    @property
    def running(self) -> Job | None:
        return next((j for j in self.jobs if j.state is JobState.RUNNING), None)

    @property
    def queued(self) -> list[Job]:
        with self._cv:
            return list(self._pending)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until `job` is done, failed or stopped; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: job.state in FINAL, timeout)

    def run_file(self, job: Job, name: str) -> Path:
        """The path of file `name` of `job`'s run folder, for a download. Only names in DOWNLOADS, only jobs of this
        queue, only files that really lie inside `runs_root` (a symlink out of it is refused)."""
        if name not in DOWNLOADS:
            raise ValueError(f"{name!r} is not a file the app serves")
        if job not in self.jobs or job.run_dir is None:
            raise ValueError(f"job {job.id} has no run folder of this app")
        root = self.runs_root.resolve()
        path = (job.run_dir / name).resolve()
        if path.parent != (root / job.run_dir.name) or not path.is_file():
            raise ValueError(f"{job.run_dir.name}/{name} is not available")
        return path

    def close(self, timeout: float = 30.0) -> None:
        """Cancel queued jobs, stop the running one (checkpointed) and end the worker."""
        with self._cv:
            self._closing = True
            pending, self._pending = list(self._pending), []
            for job in pending:
                self._move(job, JobState.STOPPED)
                job.message = "cancelled: the app closed"
            running = self.running
            if running is not None:
                running.stop_requested.set()
            self._cv.notify_all()
        for job in pending:
            self._changed(job)
        self._worker.join(timeout)

    # ---- internals ----
    def _allocate_run_dir(self, cfg: GenerateConfig) -> Path:
        base = default_run_dir(cfg).name  # "<slug>-<method>-<seed>", as the CLI names it
        if not _RUN_NAME.fullmatch(base):  # slugify makes this impossible; checked because the prompt is untrusted
            raise OutputError(f"cannot name a run folder after {base!r}")
        for k in itertools.count(1):
            name = base if k == 1 else f"{base}-{k}"
            path = self.runs_root / name
            if name not in self._reserved and not path.exists():
                self._reserved.add(name)
                return path
        raise AssertionError("unreachable")

    def _move(self, job: Job, state: JobState) -> None:
        if state not in TRANSITIONS[job.state]:
            raise RuntimeError(f"job {job.id}: {job.state.value} → {state.value} is not a valid transition")
        job.state = state
        self._cv.notify_all()

    def _changed(self, job: Job) -> None:
        if self.on_change is not None:
            try:
                self.on_change(job)
            except Exception:  # noqa: BLE001 — a broken page must not stop the runs
                traceback.print_exc()

    def _work(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._closing)
                if self._closing:
                    return
                job = self._pending.pop(0)
                self._move(job, JobState.RUNNING)
            self._changed(job)
            self._run(job)
            self._changed(job)

    def _run(self, job: Job) -> None:
        def callback(info: StepInfo) -> bool:
            job.step, job.iterations, job.loss = info.step, info.iterations, info.loss
            job.gaussians = info.scene_size
            job.it_per_s = info.step / info.train_seconds if info.train_seconds > 0 else 0.0
            if self.on_step is not None:
                try:
                    self.on_step(job, info)
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
            self._changed(job)
            return job.stop_requested.is_set()

        def log(message: str) -> None:
            print(f"[run {job.id}] {message}", file=sys.stderr)
            if message.startswith("warning:"):
                job.warnings.append(message.removeprefix("warning:").strip())

        try:
            job.result = self.runner(job.config, job.run_dir, callback, log)
        except Interrupted as e:
            with self._cv:
                job.message = str(e)
                self._move(job, JobState.STOPPED)
            return
        except GenerateError as e:  # the CLI's one-line errors: empty prompt, prior missing, diverged, …
            with self._cv:
                job.message = str(e)
                self._move(job, JobState.FAILED)
            return
        except Exception as e:  # noqa: BLE001 — a bug: one line in the page, the traceback on the server's console
            traceback.print_exc()
            with self._cv:
                job.message = f"internal error ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
                self._move(job, JobState.FAILED)
            return
        if self.evaluate is not None:
            try:
                job.evaluation = self.evaluate(job.run_dir)
            except Exception as e:  # noqa: BLE001 — the run itself is fine; say why there are no metrics
                job.message = f"evaluation failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
        with self._cv:
            self._move(job, JobState.DONE)


# ================================================================================================ the page
GROUND_TRUTH_METRICS = ("iou", "psnr", "ssim", "color_error", "saturation_error", "attr_color", "attr_shape")


def markdown_text(text: str) -> str:
    """`text` shown literally in viser's markdown (no markup, no HTML)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>&~])", r"\\\1", text)


def progress_line(job: Job) -> str:
    """One markdown line for the status area."""
    prompt = markdown_text(job.request.prompt) or "(empty prompt)"
    head = f"**{job.state.value}** · {prompt}"
    if job.state is JobState.QUEUED:
        return head + " · waiting for the current run"
    if job.state is JobState.FAILED:
        return head + f" · error: {markdown_text(job.message)}"
    parts = [head, f"step {job.step} / {job.iterations}"]
    if job.step:
        parts += [f"{job.it_per_s:.2f} it/s", f"loss {job.loss:.4g}", f"{job.gaussians} Gaussians"]
    line = " · ".join(parts)
    for warning in job.warnings:  # e.g. words the embedded prior does not know
        line += f"  \nwarning: {markdown_text(warning)}"
    if job.state is JobState.STOPPED and job.message:
        line += f"  \n{markdown_text(job.message)}"
    if job.state is JobState.DONE and job.run_dir is not None:
        line += f"  \nrun folder: `{job.run_dir}`"
    return line


def metrics_markdown(evaluation: dict | None) -> str:
    if not evaluation:
        return ""
    metrics, skipped = evaluation.get("metrics", {}), evaluation.get("skipped", {})
    rows = [(name, f"{metrics[name]:.3f}") for name in GROUND_TRUTH_METRICS if name in metrics]
    if not rows:
        reason = skipped.get("iou", "no ground truth for this prompt")
        return f"Ground-truth metrics: none ({markdown_text(reason)})"
    return "Ground truth (toy world)\n\n| metric | value |\n|---|---|\n" + "\n".join(f"| {n} | {v} |" for n, v in rows)


# The form's numbers: (min, max, step). A browser may send any value over the websocket (the page's own limits are
# only hints), so each is clamped on arrival and again when read; kept as floats, which viser's wire format always
# carries (an int above 2**64, such as a seed of 1e30, would break every later message to every page).
NUMBER_LIMITS = {"guidance_scale": (0.01, 100.0, 0.1), "dca_cutoff": (0, 1000, 1), "iterations": (1, 100_000, 1),
                 "seed": (0, 2**31 - 1, 1)}


def clamp(value, name: str) -> float:
    """`value` within NUMBER_LIMITS[name] (NaN, ±inf and non-numbers: the lower bound), on the field's step grid."""
    lo, hi, step = NUMBER_LIMITS[name]
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return float(lo)
    if not math.isfinite(value):
        value = hi if value == math.inf else lo
    value = min(max(value, lo), hi)
    return float(round(value)) if step == 1 else value


class App:
    """The viser page driving a `RunQueue`; one per process (one run at a time, the rest queued).

    `priors`: what the Prior field offers (a choice, never a free path: the page is not trusted with the file
    system); the embedded prior first."""

    def __init__(self, host: str = "127.0.0.1", port: int = 7860, runs_root: str | Path = "runs",
                 view_every: int = 5, priors: tuple[str, ...] = ("embedded",), **overrides):
        self.priors = tuple(dict.fromkeys(priors)) or ("embedded",)
        check_listen_address(host, port)  # viser retries a bad address forever: exit 6 at once instead
        self.server = viser.ViserServer(host=host, port=port, label="dreammapping", verbose=False)
        allow_only_own_origin(self.server, host)  # no other site's page may drive the app
        configure_scene(self.server, control_width="large")
        self.view = LiveView(self.server, every=view_every)
        self._ui_lock = threading.RLock()
        self._shown: Job | None = None  # the job the status / result area is about
        self._result_handles: list = []
        self._build_form()
        self.queue = RunQueue(runs_root, on_change=self._on_change, on_step=self._on_step, priors=self.priors,
                              **overrides)

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def _build_form(self) -> None:
        gui = self.server.gui
        gui.add_markdown("**dreammapping** — text → 3D Gaussian splat")
        self.prompt = gui.add_text("Prompt", initial_value="a red cube", hint="what to generate")
        self.method = gui.add_dropdown("Method", options=tuple(METHODS), initial_value="vdm")
        def number(label: str, name: str, initial: float, hint: str | None = None):
            lo, hi, step = NUMBER_LIMITS[name]
            handle = gui.add_number(label, initial_value=float(initial), min=float(lo), max=float(hi),
                                    step=float(step), hint=hint)

            @handle.on_update
            def _(_event) -> None:  # a forged value is put back in range for this page and every other
                clamped = clamp(handle.value, name)
                if clamped != handle.value:
                    handle.value = clamped
            return handle

        self.guidance_scale = number("Guidance scale", "guidance_scale", default_guidance_scale(self.priors[0]),
                                     "classifier-free guidance; follows the prior (2 embedded, 7.5 Stable "
                                     "Diffusion) until changed")
        self._scale_edited = False  # once the user sets a scale, a new prior no longer replaces it
        self.dca_cutoff = number("DCA cut-off", "dca_cutoff", 300,
                                 "VDM's distribution-coefficient annealing cut-off timestep")
        self.iterations = number("Iterations", "iterations", RunRequest.iterations)
        self.seed = number("Seed", "seed", 0)
        self.prior = gui.add_dropdown("Prior", options=self.priors, initial_value=self.priors[0],
                                      hint="the priors this app was started with (dreammapping app --prior …)")
        self.generate = gui.add_button("Generate", color="blue")
        self.stop = gui.add_button("Stop", color="red", disabled=True)
        self.progress = gui.add_progress_bar(0.0)
        self.status = gui.add_markdown("idle — type a prompt and press Generate")
        self.notice = gui.add_markdown("")  # the last error, even while another run goes on
        self.runs = gui.add_markdown("")
        self.result_folder = gui.add_folder("Result")

        @self.method.on_update
        def _(_event) -> None:
            self.dca_cutoff.disabled = self.method.value != "vdm"

        @self.prior.on_update
        def _(_event) -> None:
            if not self._scale_edited:  # the prior's own default (7.5 for an SD prior), as the CLI would use
                self.guidance_scale.value = default_guidance_scale(str(self.prior.value).strip() or "embedded")

        @self.guidance_scale.on_update
        def _(event) -> None:
            if event.client is not None:  # a change typed on the page, not the prior's default set above
                self._scale_edited = True

        @self.generate.on_click
        def _(_event) -> None:
            self.queue.submit(self.request())

        @self.stop.on_click
        def _(_event) -> None:
            running = self.queue.running
            if running is not None:
                self.queue.stop(running)

    def request(self) -> RunRequest:
        """The form's current values, clamped; a prior or method the page does not offer fails the job (a forged
        value: the page itself cannot send one)."""
        return RunRequest(prompt=str(self.prompt.value)[:2000], method=str(self.method.value)[:40],
                          guidance_scale=clamp(self.guidance_scale.value, "guidance_scale") if self._scale_edited
                          else None,
                          dca_cutoff=int(clamp(self.dca_cutoff.value, "dca_cutoff")),
                          iterations=int(clamp(self.iterations.value, "iterations")),
                          seed=int(clamp(self.seed.value, "seed")), prior=str(self.prior.value)[:4096])

    # ---- updates from the queue ----
    def _on_step(self, job: Job, info: StepInfo) -> None:
        self.view(info)

    def _on_change(self, job: Job) -> None:
        with self._ui_lock:
            running = self.queue.running if hasattr(self, "queue") else None
            shown = running or job
            if job.state is JobState.RUNNING and self._shown is not job:  # a new run: empty the view and results
                self.view.clear()
                self._clear_result()
            self._shown = shown
            if job.state is JobState.FAILED:
                self.notice.content = f"**error** ({markdown_text(job.request.prompt) or 'empty prompt'}): " \
                                      f"{markdown_text(job.message)}"
            elif job.state is JobState.QUEUED:
                self.notice.content = ""
            self.status.content = progress_line(shown)
            self.progress.value = 100.0 * shown.step / max(1, shown.iterations) if shown.state is not JobState.FAILED \
                else 0.0
            self.stop.disabled = running is None
            self.runs.content = self._runs_markdown()
            if job.state is JobState.DONE and job is shown:
                self._show_result(job)

    def _runs_markdown(self) -> str:
        lines = [f"- #{j.id} {markdown_text(j.request.prompt) or '(empty)'} — {j.state.value}"
                 + (f" (`{j.run_dir.name}`)" if j.run_dir is not None and j.state is not JobState.QUEUED else "")
                 for j in reversed(self.queue.jobs[-8:])]
        return "**Runs**\n\n" + "\n".join(lines) if lines else ""

    def _clear_result(self) -> None:
        for handle in self._result_handles:
            handle.remove()
        self._result_handles = []

    def _show_result(self, job: Job) -> None:
        """Final splat, turntable, view grid, ground-truth metrics and downloads of a finished run."""
        import imageio.v3 as iio

        self._clear_result()
        result = job.result
        self.view.show(result.scene.preview())
        gui, handles = self.server.gui, self._result_handles
        with self.result_folder:
            for name in ("gaussians.ply", *MESH_FILES):
                if name == "gaussians.ply" or (job.run_dir / name).is_file():
                    button = gui.add_button(f"Download {name}", icon=viser.Icon.DOWNLOAD)
                    button.on_click(self._download_handler(job, name))
                    handles.append(button)
            handles.append(gui.add_markdown(metrics_markdown(job.evaluation) or markdown_text(job.message)))
            gif = base64.b64encode(result.turntable_gif.read_bytes()).decode()
            handles.append(gui.add_html(f'<div style="text-align:center"><img src="data:image/gif;base64,{gif}" '
                                        f'alt="turntable" style="width:55%"></div>'))
            handles.append(gui.add_image(np.asarray(iio.imread(result.views))[..., :3],
                                         label="front · side · back · overhead"))

    def _download_handler(self, job: Job, name: str):
        def send(event) -> None:
            if event.client is None:
                return
            try:
                path = self.queue.run_file(job, name)
            except ValueError as e:
                event.client.add_notification("download unavailable", str(e), auto_close_seconds=5.0)
                return
            event.client.send_file_download(f"{job.run_dir.name}-{name}", path.read_bytes(), save_immediately=True)
        return send

    def close(self) -> None:
        self.queue.close()
        self.server.stop()


# ================================================================================================ command line
def cli_app(argv: list[str] | None = None) -> int:
    """`dreammapping app [--host 127.0.0.1] [--port 7860] [--runs runs]`: serve the app until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="dreammapping app",
                                     description="A local web app: prompt → live 3D splat → downloads.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (the next free one when taken)")
    parser.add_argument("--runs", default="runs", help="folder for the run folders (default: runs)")
    parser.add_argument("--prior", action="append", default=[], metavar="PRIOR",
                        help="a prior the page may choose besides the embedded one: a Hugging Face id in the local "
                             "cache or a diffusers folder (repeat for more); the page offers only these")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        app = App(host=args.host, port=args.port, runs_root=args.runs, priors=("embedded", *args.prior))
    except GenerateError as e:  # a bad --port (2), an address this machine cannot listen on (6)
        print(f"dreammapping app: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"dreammapping app: cannot listen on {args.host}:{args.port} ({e.strerror or e})", file=sys.stderr)
        return 6
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"dreammapping app: warning: listening on {args.host}; anyone who can reach it can start runs and "
              "download results", file=sys.stderr)
    print(f"dreammapping app: open {app.url} (runs go to {args.runs}/; Ctrl-C to quit)", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("dreammapping app: closing (a running run is checkpointed)", file=sys.stderr)
    finally:
        app.close()
    return 0


__all__ = ["App", "RunQueue", "RunRequest", "Job", "JobState", "TRANSITIONS", "DOWNLOADS", "job_config", "cli_app"]
