"""The app in a real browser: Playwright drives Debian's Chromium (headless, WebGL through SwiftShader) against
`dreammapping app` on a free localhost port — type a prompt, generate, watch progress and the 3D canvas, download the
.ply, stop a second run. CI installs the browser (.ci/run); elsewhere the test is skipped with the reason."""

from __future__ import annotations

import io
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("viser", reason="the app extra (viser) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

from dreammapping.app import App, JobState  # noqa: E402
from dreammapping.export import load_ply  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Software WebGL: no GPU in CI. SwiftShader through ANGLE is what Chromium falls back to; ask for it explicitly.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--use-gl=angle", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
# Small outputs: the browser test is about the page, not the turntable.
FAST = dict(turntable_size=64, turntable_frames=8)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason="no Chromium at /usr/bin/chromium (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def field(page, label: str):
    """The input of the viser form row labelled `label`."""
    return page.locator(f"xpath=//label[normalize-space()='{label}']/ancestor::div[.//input][1]//input").first


def status_step(page) -> tuple[str, int]:
    """(state, step) from the status line, e.g. ('running', 12)."""
    text = page.locator("p", has_text=re.compile(r"^(queued|running|done|stopped|failed) · ")).first.inner_text()
    step = re.search(r"step (\d+) /", text)
    return text.split(" · ")[0], int(step.group(1)) if step else 0


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def view_pixels(page) -> np.ndarray:
    """RGB [H,W,3] float of the 3D view left of the control panel (the splat sits in the middle of the canvas)."""
    from PIL import Image

    panel = page.get_by_role("button", name="Generate").bounding_box()
    viewport = page.viewport_size
    right = min(panel["x"] - 20, viewport["width"])
    shot = page.screenshot(clip={"x": 80, "y": 120, "width": right - 80, "height": viewport["height"] - 220})
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=np.float32) / 255.0


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(after - before).max(axis=-1) > 0.1


@pytest.fixture
def app(tmp_path):
    app = App(host="127.0.0.1", port=free_port(), runs_root=tmp_path / "runs", **FAST)
    yield app
    app.close()


def test_generate_watch_download_and_stop_in_a_browser(app, tmp_path):
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as e:  # noqa: BLE001 — e.g. a Chromium that cannot start in this sandbox
            pytest.skip(f"Chromium does not start here: {' '.join(str(e).split())[:200]}")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            page.goto(app.url)
            page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
            time.sleep(2.0)  # let the empty scene draw
            empty = view_pixels(page)

            # ---- run 1: "a blue cone", 30 iterations --------------------------------------------------------
            field(page, "Prompt").fill("a blue cone")
            field(page, "Iterations").fill("30")
            wait_for(lambda: app.request().prompt == "a blue cone" and app.request().iterations == 30, 10,
                     "the form to reach the server")
            page.get_by_role("button", name="Generate").click()
            first = wait_for(lambda: status_step(page)[1] or None, 180, "the first step in the page")
            later = wait_for(lambda: (s := status_step(page)[1]) > first and s, 180, "the progress to advance")
            assert later > first
            assert page.get_by_text(re.compile(r"\d+\.\d\d it/s · loss ")).count() >= 1
            def drawn():
                px = view_pixels(page)
                return (px,) if changed(empty, px).mean() > 0.002 else None

            (mid,) = wait_for(drawn, 60, "the live view to draw the splat mid-run")
            assert status_step(page)[0] in ("running", "done")
            assert changed(empty, mid).mean() > 0.002

            wait_for(lambda: status_step(page)[0] == "done", 300, "run 1 to finish")
            job = app.queue.jobs[0]
            assert job.state is JobState.DONE and job.request.prompt == "a blue cone" and job.iterations == 30
            time.sleep(1.5)
            final = view_pixels(page)
            mask = changed(empty, final)
            assert mask.mean() > 0.005, "the 3D view did not change from its empty state"
            r, g, b = final[mask].mean(axis=0)
            print(f"splat pixels: {100 * mask.mean():.1f}% of the view, mean rgb ({r:.2f}, {g:.2f}, {b:.2f})")
            assert b > r + 0.1 and b > g + 0.1, f"splat pixels are not blue-dominated: rgb=({r:.2f},{g:.2f},{b:.2f})"
            page.get_by_text("Ground truth (toy world)").wait_for(timeout=30_000)
            assert page.get_by_alt_text("turntable").count() == 1

            with page.expect_download(timeout=60_000) as download:
                page.get_by_role("button", name="Download gaussians.ply").click()
            saved = tmp_path / "downloaded.ply"
            download.value.save_as(saved)
            assert download.value.suggested_filename == "a-blue-cone-vdm-0-gaussians.ply"
            got, ref = load_ply(saved), load_ply(job.run_dir / "gaussians.ply")
            assert len(got) == len(ref) > 0 and torch.equal(got.means, ref.means) and torch.equal(got.sh, ref.sh)

            # ---- run 2: stop it from the page -----------------------------------------------------------------
            field(page, "Iterations").fill("3000")
            wait_for(lambda: app.request().iterations == 3000, 10, "the form to reach the server")
            page.get_by_role("button", name="Generate").click()
            wait_for(lambda: len(app.queue.jobs) == 2 and app.queue.jobs[1].step >= 2, 180, "run 2 to start")
            assert status_step(page)[0] == "running"
            page.get_by_role("button", name="Stop").click()
            pressed = time.time()
            wait_for(lambda: status_step(page)[0] == "stopped", 30, "run 2 to stop")
            took = time.time() - pressed
            print(f"Stop → 'stopped' in the page: {took:.1f} s")
            run2 = app.queue.jobs[1]
            assert run2.state is JobState.STOPPED and run2.step < 3000 and took < 15, took
            assert (run2.run_dir / "checkpoint.pt").is_file() and run2.run_dir.name == "a-blue-cone-vdm-0-2"
        finally:
            browser.close()
