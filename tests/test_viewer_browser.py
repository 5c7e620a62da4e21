"""Our .ply in real web splat viewers: headless Chromium (Debian's, WebGL on SwiftShader) driven by Playwright,
pages served from 127.0.0.1 with the viewers installed from npm into tests/viewer/node_modules (`.ci/run` does
`npm ci --prefix tests/viewer`).

A generated red cone (tests/data/generated_red_cone.ply: `dreammapping generate "a red cone" --seed 0`, cpu preset,
written by `save_ply`) and, marked slow, the toy-world truth cone are shown from our front view; the screenshot
must be upright (narrow at the top, wide at the bottom), nearest to red among the toy world's colours, and about
the size of our own render of the same view.
Set DREAMMAPPING_SCREENSHOTS=DIR to keep the screenshots (docs/viewer_*.png are made that way).
"""

from __future__ import annotations

import functools
import http.server
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dreammapping.cameras import canonical_views
from dreammapping.export import load_ply, save_ply
from dreammapping.render import rasterize
from dreammapping.toyworld.grammar import COLORS, parse
from dreammapping.toyworld.splats import scene_gaussians

VIEWER_DIR = Path(__file__).parent / "viewer"
VIEWERS = {"gs3d": "@mkkellogg/gaussian-splats-3d", "spark": "@sparkjsdev/spark", "playcanvas": "playcanvas"}
SIZE = 256


def chromium_path() -> str | None:
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class Handler(http.server.SimpleHTTPRequestHandler):
    """tests/viewer/ as the site root, /data/ from the test's folder; cross-origin isolated, quiet."""

    data_dir: Path

    def translate_path(self, path):
        if path.startswith("/data/"):
            return str(self.data_dir / Path(path.split("?")[0]).name)
        return super().translate_path(path)

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):
        pass


Handler.extensions_map = {**Handler.extensions_map, ".js": "text/javascript", ".wasm": "application/wasm"}


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=[
            "--use-angle=swiftshader", "--use-gl=angle", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
            "--no-sandbox"])
        yield b
        b.close()


GENERATED = Path(__file__).parent / "data" / "generated_red_cone.ply"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served folder with both cones' .ply files; name → our own front-view render [H,W,3] uint8."""
    folder = tmp_path_factory.mktemp("site")
    truth = scene_gaussians(parse("a red cone"), n=8000, opacity=0.6, generator=torch.Generator().manual_seed(0))
    save_ply(folder / "truth.ply", truth)
    shutil.copy(GENERATED, folder / "generated.ply")
    front = canonical_views(SIZE, SIZE)[:1]
    ours = {}
    with torch.no_grad():
        for name in ("truth", "generated"):
            g = load_ply(folder / f"{name}.ply")
            ours[name] = (rasterize(g, front).rgb[0].clamp(0, 1) * 255).round().byte().numpy()
    return folder, ours


@pytest.fixture(scope="module")
def server(site):
    folder, _ = site
    handler = functools.partial(type("H", (Handler,), {"data_dir": folder}), directory=str(VIEWER_DIR))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def silhouette(img: np.ndarray) -> np.ndarray:
    """bool [H,W]: pixels visibly different from the white background."""
    return (255 - img[..., :3].astype(np.int32)).max(-1) > 40


def widths(mask: np.ndarray) -> tuple[float, float, float]:
    """(mean width of the top quarter of the object's rows, of the bottom quarter, its height in rows)."""
    rows = np.nonzero(mask.any(1))[0]
    top, bottom = rows.min(), rows.max()
    q = max(1, (bottom - top + 1) // 4)
    w = mask.sum(1)
    return float(w[top:top + q].mean()), float(w[bottom - q + 1:bottom + 1].mean()), float(bottom - top + 1)


def nearest_colour(rgb: np.ndarray) -> str:
    return min(COLORS, key=lambda name: float(np.abs(np.array(COLORS[name]) - rgb).sum()))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", ["generated", pytest.param("truth", marks=pytest.mark.slow)])
@pytest.mark.parametrize("viewer", list(VIEWERS))
def test_cone_upright_in_web_viewer(browser, server, site, viewer, source):
    if not (VIEWER_DIR / "node_modules" / VIEWERS[viewer] / "package.json").is_file():
        pytest.skip(f"{VIEWERS[viewer]} is not installed (npm ci --prefix tests/viewer)")
    ours = site[1][source]
    el = math.radians(15.0)  # our front view: azimuth 0, elevation 15°, radius 3.75, fovy 45
    eye_world = np.array([3.75 * math.cos(el), 0.0, 3.75 * math.sin(el)])
    eye_file = np.array([eye_world[1], -eye_world[2], -eye_world[0]])  # axes.FILE_FROM_WORLD
    page = browser.new_page(viewport={"width": SIZE, "height": SIZE})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server}/{viewer}.html?ply=/data/{source}.ply&size={SIZE}&fov=45&eye={','.join(map(str, eye_file))}")
    page.wait_for_function("window.__done !== undefined", timeout=90_000)
    status = page.evaluate("window.__done")
    shot = page.screenshot(clip={"x": 0, "y": 0, "width": SIZE, "height": SIZE})
    page.close()
    import imageio.v3 as iio

    img = iio.imread(shot)[..., :3]
    keep = os.environ.get("DREAMMAPPING_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        iio.imwrite(Path(keep) / f"viewer_{viewer}_{source}.png", np.concatenate([ours, img], axis=1))
    assert status == "ok", f"{viewer}: {status} {errors}"

    mask, ref = silhouette(img), silhouette(ours)
    assert mask.sum() > 0.02 * mask.size, f"{viewer} shows (almost) nothing"
    top, bottom, height = widths(mask)
    assert top < 0.5 * bottom, f"{viewer}: not upright (top width {top:.0f} px, bottom {bottom:.0f} px)"
    ref_top, ref_bottom, ref_height = widths(ref)
    assert 0.75 < mask.sum() / ref.sum() < 1.33, f"{viewer}: area {mask.sum()} px vs ours {ref.sum()} px"
    assert 0.85 < height / ref_height < 1.18, f"{viewer}: height {height} rows vs ours {ref_height}"
    core = mask & ((255 - img.astype(np.int32)).max(-1) > 120)  # leave out the soft, white-blended rim
    mean, ours_mean = img[core].mean(0) / 255, ours[silhouette(ours) & ((255 - ours.astype(np.int32)).max(-1) > 120)].mean(0) / 255
    assert nearest_colour(mean) == "red", f"{viewer}: mean colour {mean.round(2)} looks {nearest_colour(mean)}"
    assert np.abs(mean - ours_mean).max() < 0.1, f"{viewer}: mean colour {mean.round(2)} vs ours {ours_mean.round(2)}"


def test_upright_check_catches_a_cone_on_its_side(site):
    # what a viewer that took the file for +z up would show: the checks above must fail on it (no browser needed)
    from dreammapping.axes import to_file

    folder, ours = site
    lying = to_file(load_ply(folder / "truth.ply"))  # file coordinates read as world coordinates
    with torch.no_grad():
        img = (rasterize(lying, canonical_views(SIZE, SIZE)[:1]).rgb[0].clamp(0, 1) * 255).round().byte().numpy()
    top, bottom, _ = widths(silhouette(img))
    assert not top < 0.5 * bottom
    top, bottom, _ = widths(silhouette(ours["truth"]))
    assert top < 0.5 * bottom
