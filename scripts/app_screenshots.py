"""Screenshots of `dreammapping app` for the README: one mid-run, one at the end (docs/app-running.png,
docs/app-done.png). Drives the page as a person would — Playwright + Debian's Chromium, software WebGL.

    python scripts/app_screenshots.py [--prompt "a blue cone"] [--iterations 150] [--out docs]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from dreammapping.app import App

CHROMIUM_ARGS = ["--use-angle=swiftshader", "--use-gl=angle", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]


def field(page, label: str):
    return page.locator(f"xpath=//label[normalize-space()='{label}']/ancestor::div[.//input][1]//input").first


def hide_notifications(page) -> None:
    """The 'software WebGL' notice (headless Chromium has no GPU) covers the view; hide it."""
    page.add_style_tag(content="[class*='Notification'] { display: none !important; }")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a blue cone")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--mid-step", type=int, default=100, help="take the mid-run shot at this step")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    out = Path(args.out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = App(port=port, runs_root=Path(tempfile.mkdtemp(prefix="app-shots-")) / "runs")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1050})
            page.goto(app.url)
            page.get_by_role("button", name="Generate").wait_for(timeout=60_000)
            field(page, "Prompt").fill(args.prompt)
            field(page, "Iterations").fill(str(args.iterations))
            while app.request().iterations != args.iterations or app.request().prompt != args.prompt:
                time.sleep(0.1)
            page.get_by_role("button", name="Generate").click()
            while not app.queue.jobs or app.queue.jobs[0].step < args.mid_step:
                time.sleep(0.2)
            hide_notifications(page)
            time.sleep(1.0)
            page.screenshot(path=str(out / "app-running.png"))
            job = app.queue.jobs[0]
            print(f"mid-run shot at step {job.step}", file=sys.stderr)
            app.queue.wait(job)
            page.get_by_text("Ground truth (toy world)").wait_for(timeout=60_000)
            hide_notifications(page)
            time.sleep(2.0)
            page.screenshot(path=str(out / "app-done.png"))
            print(f"done: {job.state.value}, {job.it_per_s:.2f} it/s; wrote {out}/app-running.png, app-done.png",
                  file=sys.stderr)
            browser.close()
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
