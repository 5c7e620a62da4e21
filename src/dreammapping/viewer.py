"""The live 3D view: a training run's Gaussians drawn in the browser by viser while they form.

viser (nerfstudio's and gsplat's web viewer) rasterises Gaussian splats natively in WebGL
(`scene.add_gaussian_splats`), so the browser gets the scene itself — 32 bytes a Gaussian — and orbits it at screen
rate, instead of the server rendering and streaming images. `LiveView` is a `train.train` callback (it gets a
`train.StepInfo`): every `every` steps (and at most `max_rate` times a second) it converts the scene's preview to
viser's arrays and replaces one scene node (a scene without splats previews as an image, shown as the
background); the conversion is a few small tensor ops (`benchmarks/live_view.py` measures what it adds per step).

    view = LiveView.serve(port=8080)                 # http://127.0.0.1:8080
    train.train(cfg, run_dir, callback=view)         # `dreammapping generate … --viewer` does this

The app (`dreammapping.app`) draws into its own server through the same `LiveView`. Needs the optional extra
`pip install -e ".[app]"` (viser); nothing in the core package imports this module.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import viser

from dreammapping.gaussians import Gaussians, quat_to_rotmat
from dreammapping.train import StepInfo
from dreammapping.webguard import allow_only_own_origin, check_listen_address

SPLAT_NODE = "/splat"  # the one scene node the live view draws into
# Where the browser's camera starts: in front of the object, a little above (world is +z up, azimuth 0 = +x, as in
# dreammapping.cameras), about as far as the training cameras.
INITIAL_CAMERA_POSITION = (2.0, 0.7, 0.8)


@dataclass
class SplatArrays:
    """A scene as `viser.SceneApi.add_gaussian_splats` takes it (float32 numpy)."""

    centers: np.ndarray  # [N, 3]
    covariances: np.ndarray  # [N, 3, 3] world covariances R S² Rᵀ
    rgbs: np.ndarray  # [N, 3] view-independent (DC) colour, clamped to [0, 1]
    opacities: np.ndarray  # [N, 1] in [0, 1]


@torch.no_grad()
def splat_arrays(gaussians: Gaussians) -> SplatArrays:
    """The (detached) scene as viser's arrays; higher SH bands are dropped (the browser shows the DC colour)."""
    g = gaussians.detach().to("cpu", torch.float32)
    rot = quat_to_rotmat(g.quats)  # [N,3,3]
    m = rot * g.scales[:, None, :]  # R S
    return SplatArrays(
        centers=g.means.numpy(),
        covariances=(m @ m.transpose(1, 2)).numpy(),
        rgbs=g.colors.clamp(0, 1).numpy(),
        opacities=g.opacities[:, None].numpy(),
    )


def configure_scene(server: viser.ViserServer, control_width: str = "medium") -> None:
    """+z up and a camera looking at the origin from the front, as the training cameras see the object; no share
    button (viser's sharing opens a tunnel through an outside server: everything here stays on this machine)."""
    server.gui.configure_theme(control_width=control_width, show_share_button=False)
    server.request_share_url = lambda *args, **kwargs: None  # refuse a share request sent by a client, too
    server.scene.set_up_direction("+z")
    server.initial_camera.position = INITIAL_CAMERA_POSITION
    server.initial_camera.look_at = (0.0, 0.0, 0.0)


class LiveView:
    """A `train.train` callback drawing the scene into `server` every `every` steps (never more often than
    `max_rate` per second, and always at the last step). It never asks the run to stop (returns None)."""

    def __init__(self, server: viser.ViserServer, every: int = 5, max_rate: float = 4.0):
        self.server, self.every, self.min_interval = server, max(1, every), 1.0 / max_rate if max_rate > 0 else 0.0
        self.updates = 0  # scene pushes so far (the benchmark and the tests read it)
        self._handle = None
        self._last = -float("inf")
        self._lock = threading.Lock()

    @classmethod
    def serve(cls, port: int = 8080, host: str = "127.0.0.1", **options) -> "LiveView":
        """Start a viser server on host:port (the next free port when taken) and print its address. ConfigError for
        a port outside 0..65535, OutputError for an address this machine cannot listen on (`webguard`)."""
        check_listen_address(host, port)
        server = viser.ViserServer(host=host, port=port, label="dreammapping", verbose=False)
        allow_only_own_origin(server, host)
        configure_scene(server)
        print(f"live view: http://{host}:{server.get_port()}", file=sys.stderr)
        return cls(server, **options)

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def show(self, preview: Gaussians | np.ndarray) -> None:
        """Draw a scene's preview now (replacing what is shown): splats, or for a scene without them (a radiance
        field) its rendered image [H,W,3] uint8, shown behind the 3D view."""
        if not isinstance(preview, Gaussians):
            with self._lock:
                self.server.scene.set_background_image(np.asarray(preview))
                self.updates += 1
                self._last = time.perf_counter()
            return
        arrays = splat_arrays(preview)
        with self._lock:
            if self._handle is not None and len(arrays.centers) > 0:
                # one buffer message; the count may change (densification)
                self._handle.set_gaussians(arrays.centers, arrays.covariances, arrays.rgbs, arrays.opacities)
            else:
                self._handle = self.server.scene.add_gaussian_splats(
                    SPLAT_NODE, centers=arrays.centers, covariances=arrays.covariances, rgbs=arrays.rgbs,
                    opacities=arrays.opacities)
            self.updates += 1
            self._last = time.perf_counter()

    def clear(self) -> None:
        """Remove the splat (an empty view until the next `show`)."""
        with self._lock:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None

    def __call__(self, info: StepInfo) -> None:
        last = info.step >= info.iterations
        if last or (info.step % self.every == 0 and time.perf_counter() - self._last >= self.min_interval):
            self.show(info.preview())  # only now: a scene without splats renders its preview

    def linger(self) -> None:
        """After a CLI run: keep the final splat on screen until Enter or Ctrl-C (only when stdin is a terminal)."""
        if sys.stdin is not None and sys.stdin.isatty():
            print(f"live view still open at {self.url}; press Enter (or Ctrl-C) to close it", file=sys.stderr)
            try:
                sys.stdin.readline()
            except KeyboardInterrupt:
                pass
        self.close()

    def close(self) -> None:
        self.server.stop()
