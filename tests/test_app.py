"""The app's run queue (state machine, naming, downloads), the live view's arrays and throttle, and the CLI hooks —
all without a browser (tests/test_app_browser.py drives the page)."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("viser", reason="the app extra (viser) is not installed")

from dreammapping import cli, train  # noqa: E402
from dreammapping.app import (  # noqa: E402
    DOWNLOADS,
    App,
    TRANSITIONS,
    JobState,
    RunQueue,
    RunRequest,
    job_config,
    markdown_text,
    metrics_markdown,
    progress_line,
)
from dreammapping.gaussian_scene import GaussianScene  # noqa: E402
from dreammapping.gaussians import Gaussians  # noqa: E402
from dreammapping.viewer import LiveView, splat_arrays  # noqa: E402

# A real run on the tiny random prior of conftest.py: a few steps, small scene, tiny turntable.
TINY = dict(num_points=200, init="sphere", turntable_size=16, turntable_frames=3, log_every=1, checkpoint_every=0,
            threads=1)


def fake_result(run_dir: Path) -> train.GenerateResult:
    scene = GaussianScene(Gaussians.sphere(4))
    return train.GenerateResult(run_dir=run_dir, ply=run_dir / "gaussians.ply", turntable_mp4=None,
                                turntable_gif=run_dir / "turntable.gif", views=run_dir / "views.png",
                                config=run_dir / "config.yaml", metrics={}, scene=scene, gaussians=scene.gaussians)


class StepRunner:
    """A stand-in for train.train with its callback contract: `steps` steps, each waits for `gate` (when given);
    a callback returning True stops at the next step boundary with train.Interrupted, as train does."""

    def __init__(self, gate: threading.Event | None = None, fail: Exception | None = None):
        self.gate, self.fail = gate, fail
        self.active = 0
        self.max_active = 0
        self.order: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, cfg, run_dir, callback, log):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.order.append(cfg.prompt)
        try:
            if self.fail is not None:
                raise self.fail
            stop = False
            for step in range(cfg.iterations):
                if stop:
                    raise train.Interrupted(f"interrupted at step {step}/{cfg.iterations}; checkpoint saved.")
                if self.gate is not None:
                    assert self.gate.wait(30)
                stop = bool(callback(train.StepInfo(
                    step=step + 1, iterations=cfg.iterations, loss=1.0 / (step + 1), aux_loss=0.0, logs={},
                    scene_logs={"gaussians": 4}, seconds=0.1, train_seconds=0.1 * (step + 1),
                    scene=GaussianScene(Gaussians.sphere(4)))))
            return fake_result(run_dir)
        finally:
            with self._lock:
                self.active -= 1


def make_queue(tmp_path, runner, **kw) -> tuple[RunQueue, list]:
    seen: list[tuple[int, str]] = []

    def on_change(job):
        if not seen or seen[-1] != (job.id, job.state.value):
            seen.append((job.id, job.state.value))

    return RunQueue(tmp_path / "runs", runner=runner, evaluate=None, on_change=on_change, **kw), seen


def test_transition_table_is_the_documented_machine():
    assert TRANSITIONS[JobState.QUEUED] == {JobState.RUNNING, JobState.STOPPED}
    assert TRANSITIONS[JobState.RUNNING] == {JobState.DONE, JobState.FAILED, JobState.STOPPED}
    assert all(not TRANSITIONS[s] for s in (JobState.DONE, JobState.FAILED, JobState.STOPPED))


def test_one_run_at_a_time_in_order(tmp_path):
    gate = threading.Event()
    runner = StepRunner(gate)
    q, seen = make_queue(tmp_path, runner)
    try:
        a = q.submit(RunRequest("a red cube", iterations=3))
        b = q.submit(RunRequest("a blue cone", iterations=3))
        deadline = time.time() + 10
        while a.state is not JobState.RUNNING and time.time() < deadline:
            time.sleep(0.01)
        assert (a.state, b.state) == (JobState.RUNNING, JobState.QUEUED)
        assert q.running is a and q.queued == [b]
        gate.set()
        assert q.wait(b, 30)
        assert (a.state, b.state) == (JobState.DONE, JobState.DONE)
        assert runner.max_active == 1 and runner.order == ["a red cube", "a blue cone"]
        assert [s for s in seen if s[0] == a.id] == [(a.id, "queued"), (a.id, "running"), (a.id, "done")]
        assert [s for s in seen if s[0] == b.id] == [(b.id, "queued"), (b.id, "running"), (b.id, "done")]
        # progress came through the callback: last step, it/s from train_seconds, loss
        assert (a.step, a.iterations) == (3, 3) and a.it_per_s == pytest.approx(10.0) and a.loss == pytest.approx(1 / 3)
    finally:
        gate.set()
        q.close()


def test_stop_running_and_cancel_queued(tmp_path):
    gate = threading.Event()
    q, seen = make_queue(tmp_path, StepRunner(gate))
    try:
        a = q.submit(RunRequest("a red cube", iterations=1000))
        b = q.submit(RunRequest("a blue cone", iterations=5))
        q.stop(b)  # queued: cancelled, never runs
        assert b.state is JobState.STOPPED and "cancelled" in b.message
        gate.set()
        while a.step < 3:
            time.sleep(0.01)
        q.stop(a)
        assert q.wait(a, 30)
        assert a.state is JobState.STOPPED and a.step < 1000 and "interrupted" in a.message
        assert (b.id, "running") not in seen
        c = q.submit(RunRequest("a green torus", iterations=2))  # the queue goes on after a stop
        assert q.wait(c, 30) and c.state is JobState.DONE
    finally:
        gate.set()
        q.close()


def test_failures_are_one_line_cli_errors(tmp_path, capsys):
    q, _ = make_queue(tmp_path, StepRunner(fail=RuntimeError("boom\n  in a deep frame")))
    try:
        bad = q.submit(RunRequest("a red cube", method="nope"))  # invalid: failed at once, never queued
        assert bad.state is JobState.FAILED and bad.run_dir is None
        with pytest.raises(train.UnknownMethodError) as cli_error:
            train.method_class("nope")
        assert bad.message == str(cli_error.value)
        crash = q.submit(RunRequest("a red cube", iterations=2))
        assert q.wait(crash, 30) and crash.state is JobState.FAILED
        assert crash.message == "internal error (RuntimeError: boom in a deep frame)"
        assert "Traceback" in capsys.readouterr().err  # the traceback goes to the server console, not the page
        for job in (bad, crash):
            assert "\n" not in job.message and "Traceback" not in progress_line(job)
    finally:
        q.close()


def test_real_run_done_stopped_resumed_and_empty_prompt(tmp_path, tiny_pixel_folder):
    """The real train.train behind the queue: a bad prompt fails with the CLI's message; a run stopped from the
    callback leaves a checkpoint that `generate --resume` continues; a finished run has the normal folder."""
    steps: list[int] = []
    q = RunQueue(tmp_path / "runs", evaluate=None, on_step=lambda job, info: steps.append(info.step), **TINY)
    try:
        empty = q.submit(RunRequest("   ", iterations=3, prior=str(tiny_pixel_folder)))
        assert q.wait(empty, 60) and empty.state is JobState.FAILED
        with pytest.raises(train.EmptyPromptError) as cli_error:
            train.train(train.build_config("   "), tmp_path / "x")
        assert empty.message == str(cli_error.value) and not empty.run_dir.exists()

        stopped = q.submit(RunRequest("a red cube", iterations=50, prior=str(tiny_pixel_folder)))
        while stopped.step < 2 and stopped.state is not JobState.FAILED:
            time.sleep(0.01)
        q.stop(stopped)
        assert q.wait(stopped, 60) and stopped.state is JobState.STOPPED, stopped.message
        assert (stopped.run_dir / "checkpoint.pt").is_file() and stopped.step < 50
        ckpt = train.load_checkpoint(stopped.run_dir / "checkpoint.pt")
        assert ckpt["step"] == stopped.step  # stopped at the step boundary after the callback asked
        resumed = train.generate(resume=stopped.run_dir, progress=False)
        assert resumed.metrics["iterations"] == 50

        done = q.submit(RunRequest("a red cube", iterations=3, prior=str(tiny_pixel_folder)))
        assert q.wait(done, 60) and done.state is JobState.DONE, done.message
        assert done.run_dir.name == "a-red-cube-vdm-0-2"  # the stopped run keeps its folder
        for name in ("config.yaml", "gaussians.ply", "turntable.gif", "views.png", "metrics.json", "loss.csv"):
            assert (done.run_dir / name).is_file(), name
        assert steps[-3:] == [1, 2, 3] and done.result.metrics["iterations"] == 3
        import trimesh  # the mesh download: what `dreammapping export RUN --format glb` writes

        assert len(trimesh.load(done.run_dir / "mesh.glb", force="mesh").faces) > 0
        assert q.run_file(done, "mesh.glb") == (done.run_dir / "mesh.glb").resolve()
    finally:
        q.close()


def test_run_folders_never_come_from_the_prompt_as_a_path(tmp_path):
    gate = threading.Event()
    q, _ = make_queue(tmp_path, StepRunner(gate))  # the runner waits: nothing is written
    try:
        root = tmp_path / "runs"
        (root / "a-red-cube-vdm-0").mkdir(parents=True)  # an older run
        jobs = [q.submit(RunRequest(p, seed=s)) for p, s in [("../../etc/passwd", 0), ("/tmp/x", 0),
                                                              ("a red cube", 0), ("a red cube", 0), ("..", 3),
                                                              ("a red cube", 1)]]
        names = [j.run_dir.name for j in jobs]
        assert names == ["etc-passwd-vdm-0", "tmp-x-vdm-0", "a-red-cube-vdm-0-2", "a-red-cube-vdm-0-3",
                         "run-vdm-3", "a-red-cube-vdm-1"]
        assert all(j.run_dir.parent == root for j in jobs)
        assert all(j.config.out == str(j.run_dir) for j in jobs)
    finally:
        gate.set()
        q.close()


def test_downloads_only_known_files_of_own_runs(tmp_path):
    q, _ = make_queue(tmp_path, StepRunner())
    try:
        job = q.submit(RunRequest("a red cube", iterations=1))
        assert q.wait(job, 30)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        (job.run_dir / "gaussians.ply").write_bytes(b"ply")
        (tmp_path / "secret.txt").write_text("no")
        assert q.run_file(job, "gaussians.ply") == (job.run_dir / "gaussians.ply").resolve()
        for name in ("../secret.txt", "config.yaml", "/etc/passwd", "views.png"):  # views.png: allowed, missing
            with pytest.raises(ValueError):
                q.run_file(job, name)
        (job.run_dir / "views.png").symlink_to(tmp_path / "secret.txt")  # a link out of the run folder
        with pytest.raises(ValueError):
            q.run_file(job, "views.png")
        other = RunQueue(tmp_path / "runs", runner=StepRunner(), evaluate=None)
        try:
            with pytest.raises(ValueError):
                other.run_file(job, "gaussians.ply")  # not a job of that app
        finally:
            other.close()
        assert set(DOWNLOADS) >= {"gaussians.ply", "turntable.gif", "views.png"}
    finally:
        q.close()


def test_page_text_is_escaped_and_metrics_table():
    assert markdown_text("<img src=x onerror=alert(1)> **b**") == \
        r"\<img src=x onerror=alert\(1\)\> \*\*b\*\*"
    table = metrics_markdown({"metrics": {"iou": 0.5, "psnr": 17.25, "coverage": 0.2}, "skipped": {}})
    assert "| iou | 0.500 |" in table and "| psnr | 17.250 |" in table and "coverage" not in table
    assert "not a toy" in metrics_markdown({"metrics": {}, "skipped": {"iou": "not a toy prompt"}})


def test_unknown_words_warning_reaches_the_page(tmp_path):
    def runner(cfg, run_dir, callback, log):  # train's own warning text, through the log it is given
        words = train.unknown_prompt_words(cfg)
        log(f"warning: the embedded prior does not know {', '.join(map(repr, words))}; it will ignore it")
        return fake_result(run_dir)

    q, _ = make_queue(tmp_path, runner)
    try:
        job = q.submit(RunRequest("a red dragon", iterations=1))
        assert q.wait(job, 30) and job.state is JobState.DONE
        assert job.warnings == ["the embedded prior does not know 'dragon'; it will ignore it"]
        assert "warning: the embedded prior does not know 'dragon'" in progress_line(job)
    finally:
        q.close()


def test_splat_arrays_match_a_dense_reference():
    g = Gaussians.sphere(3)
    half = math.sqrt(0.5)
    g.quats = torch.tensor([[half, 0.0, 0.0, half], [1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]])  # 90° about z
    g.log_scales = torch.log(torch.tensor([[1.0, 2.0, 3.0], [0.1, 0.1, 0.2], [0.5, 0.5, 0.5]]))
    g.opacity_logits = torch.tensor([0.0, 10.0, -10.0])
    g.sh[:, 0] = torch.tensor([[0.0, 0.0, 0.0], [10.0, -10.0, 0.5], [1.0, 1.0, 1.0]])
    a = splat_arrays(g)
    # 90° about z swaps the x and y axes: variances (1, 4, 9) become (4, 1, 9)
    assert a.covariances[0] == pytest.approx(torch.diag(torch.tensor([4.0, 1.0, 9.0])).numpy(), abs=1e-6)
    assert a.covariances[1] == pytest.approx(torch.diag(torch.tensor([0.01, 0.01, 0.04])).numpy(), abs=1e-6)
    assert a.covariances[2] == pytest.approx(torch.eye(3).numpy() * 0.25, abs=1e-6)  # unnormalised quaternion
    assert a.rgbs[0] == pytest.approx([0.5] * 3) and a.rgbs[1] == pytest.approx([1.0, 0.0, 0.5 + 0.5 * 0.28209479])
    assert a.opacities[:, 0] == pytest.approx([0.5, 1 / (1 + math.exp(-10)), 1 / (1 + math.exp(10))])
    assert a.centers.shape == (3, 3) and a.centers.dtype.name == "float32"


def step_info(step: int, iterations: int, scene) -> train.StepInfo:
    return train.StepInfo(step=step, iterations=iterations, loss=1.0, aux_loss=0.0, logs={}, scene_logs={},
                          seconds=0.0, train_seconds=0.0, scene=scene)


class ImageScene:
    """A scene without splats (as a radiance field): its preview is a rendered image."""

    size_name = "cells"

    def __init__(self):
        self.previews = 0

    def preview(self):
        self.previews += 1
        return np.full((8, 8, 3), 200, dtype=np.uint8)


def test_live_view_throttle_and_count_changes():
    view = LiveView.serve(port=0, every=5, max_rate=0)
    try:
        scene = GaussianScene(Gaussians.sphere(10))
        for step in range(1, 31):
            view(step_info(step, 31, scene if step < 20 else GaussianScene(Gaussians.sphere(25))))
        assert view.updates == 6  # steps 5, 10, …, 30
        view(step_info(31, 31, scene))  # the last step is always shown
        assert view.updates == 7 and len(view._handle.buffer) == 10
        slow = LiveView(view.server, every=1, max_rate=0.001)  # at most once in 1000 s
        for step in range(1, 10):
            slow(step_info(step, 100, scene))
        assert slow.updates == 1
        # a scene without splats: its image is drawn, and only rendered on the steps that are shown
        images = ImageScene()
        for step in range(1, 11):
            view(step_info(step, 10, images))
        assert images.previews == 2 and view.updates == 9
    finally:
        view.close()


def test_the_form_passes_the_priors_own_guidance_scale(tiny_latent_folder, tiny_pixel_folder):
    from dreammapping.guidance import METHODS
    from dreammapping.priors import DiffusionPrior

    for folder, scale in ((tiny_latent_folder, 7.5), (tiny_pixel_folder, 2.0)):
        cfg = job_config(RunRequest("a red cube", prior=str(folder)))
        assert cfg.guidance.guidance_scale is None  # not the embedded prior's 2.0 for every prior
        prior = DiffusionPrior.from_pretrained(str(folder), device="cpu")
        assert METHODS[cfg.method](prior, cfg.guidance).guidance_scale == scale
    assert job_config(RunRequest("a red cube", guidance_scale=3.0)).guidance.guidance_scale == 3.0


def test_the_page_shows_the_priors_scale_and_passes_none_until_it_is_changed(tmp_path):
    app = App(port=0, runs_root=tmp_path / "runs")
    try:
        assert app.guidance_scale.value == 2.0 and app.request().guidance_scale is None
        app.prior.value = "stabilityai/stable-diffusion-2-1-base"  # set here, as if typed: the scale follows
        assert app.guidance_scale.value == 7.5 and app.request().guidance_scale is None
        app._scale_edited = True  # what a value typed into the scale field sets
        app.guidance_scale.value = 4.0
        app.prior.value = "embedded"
        assert app.guidance_scale.value == 4.0 and app.request().guidance_scale == 4.0
    finally:
        app.close()


def test_cli_app_without_the_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser → ModuleNotFoundError
    for name in ("dreammapping.app", "dreammapping.viewer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert cli.main(["app"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dreammapping app: needs the optional package 'viser'; install it with: pip install -e \".[app]\""
    with pytest.raises(train.ConfigError, match=r"--viewer needs the optional package 'viser'"):
        train.open_live_view(0)


def test_generate_viewer_flag(tmp_path, tiny_pixel_folder, monkeypatch):
    assert train.parse_cli(["a red cube"])[2] is None
    assert train.parse_cli(["a red cube", "--viewer"])[2] == 8080
    cfg, resume, port = train.parse_cli(["a red cube", "--viewer", "--port", "0", "--iterations", "7"])
    assert (port, cfg.iterations, resume) == (0, 7, None)
    assert "viewer" not in train.config_to_dict(cfg)  # not a property of the run: not in config.yaml
    calls: list[int] = []
    original = LiveView.__call__
    monkeypatch.setattr(LiveView, "__call__", lambda self, info: calls.append(info.step) or original(self, info))
    code = train.cli_generate(["a red cube", "--prior", str(tiny_pixel_folder), "--out", str(tmp_path / "run"),
                               "--iterations", "4", "--num-points", "100", "--init", "sphere", "--turntable-size",
                               "16", "--turntable-frames", "2", "--viewer", "--port", "0"])
    assert code == 0 and calls == [1, 2, 3, 4]
