"""Getting a scene out: the standard 3DGS .ply (what splat viewers open), turntable videos and view grids.

The .ply layout is the one the original 3DGS code writes, so SuperSplat, antimatter15/splat, gsplat's viewer and
friends open our files: one `vertex` element of float32 fields

    x y z  nx ny nz  f_dc_0..2  f_rest_0..f_rest_{3(K-1)-1}  opacity  scale_0..2  rot_0..3

holding raw parameters (opacity logits, log-scales, quaternions w x y z) and the higher SH bands channel-major
(every rest coefficient of red, then of green, then of blue). Normals are zeros, kept only for the layout.

Axes: the file is in the OpenCV frame the viewers and original 3DGS scenes use (+x right, **+y down**, +z forward),
not our +z-up world; `save_ply` and `load_ply` convert at this boundary (`dreammapping.axes`), so our files and
third-party 3DGS files both load upright. A compressed .ply (PlayCanvas/SuperSplat's chunked layout) is read with
the optional `gsply` package (`pip install "dreammapping[formats]"`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dreammapping.axes import from_file, to_file
from dreammapping.cameras import canonical_views, turntable
from dreammapping.errors import EXIT_OUTPUT, EXIT_USAGE, ConfigError
from dreammapping.files import atomic_path, check_writable_folder, describe_write_error
from dreammapping.gaussians import Gaussians, num_sh_bases
from dreammapping.nerf import NerfScene, load_field
from dreammapping.nerf_export import field_file
from dreammapping.render import rasterize
from dreammapping.scene import render_frames
from dreammapping.resources import frames_bytes, require
from dreammapping.rundir import check_not_a_run_file, is_run_folder

_LEAD = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
AXES_COMMENT = "dreammapping: OpenCV axes (x right, y down, z forward); the object's up is -y"
CONVERT_HINT = "npx @playcanvas/splat-transform IN.compressed.ply OUT.ply"


class PlyError(ValueError):
    """A .ply that cannot be read as 3DGS Gaussians; the message is one line that starts with the file name."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {' '.join(str(problem).split())}")


def ply_field_names(sh_degree: int) -> list[str]:
    """The vertex fields, in file order, for SH degree `sh_degree`."""
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return _LEAD + [f"f_rest_{i}" for i in range(n_rest)] + _TAIL


def save_ply(path: str | os.PathLike, gaussians: Gaussians) -> Path:
    """Write `gaussians` as a binary 3DGS .ply in the OpenCV frame (−y up); atomic (temp file, then `os.replace`)."""
    from plyfile import PlyData, PlyElement

    path = Path(path)
    g = to_file(gaussians.detach().to("cpu", torch.float32))
    n = len(g)
    rest = g.sh[:, 1:].transpose(1, 2).reshape(n, 3 * (g.sh.shape[1] - 1))  # [N,3,K-1] → channel-major, as 3DGS
    columns = torch.cat([
        g.means, torch.zeros(n, 3), g.sh[:, 0], rest,
        g.opacity_logits[:, None], g.log_scales, g.quats,
    ], dim=1).numpy()
    names = ply_field_names(g.sh_degree)
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = columns[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], comments=[AXES_COMMENT]).write(str(tmp))
    return path


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> Gaussians:
    """Read a 3DGS .ply (ours or any 3DGS-layout file, OpenCV frame) into our +z-up world; SH degree from the
    number of f_rest fields. A compressed .ply (PlayCanvas layout) is decoded with `gsply` when it is installed.

    Raises `PlyError` (a ValueError) naming the file for a missing, non-ply, truncated or incomplete file.
    """
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise PlyError(path, "no such file" if not path.exists() else "not a file")
    try:
        # Read into memory rather than memory-mapping, so a truncated file fails here and not later on access.
        with open(path, "rb") as f:
            ply = PlyData.read(f)
        if "vertex" not in ply:
            raise PlyError(path, "no vertex element")
        if "chunk" in ply and "packed_position" in (ply["vertex"].data.dtype.names or ()):
            return _load_compressed(path, device)
        vertex = ply["vertex"].data
    except PlyError:
        raise
    except Exception as e:  # plyfile's parse errors, numpy's short reads, unicode errors of non-ply bytes …
        raise PlyError(path, f"not a readable .ply ({type(e).__name__}: {e})") from e

    present = set(vertex.dtype.names or ())
    rest_names = sorted((f for f in present if re.fullmatch(r"f_rest_\d+", f)), key=lambda f: int(f[7:]))
    missing = [f for f in _LEAD[:3] + _LEAD[6:] + _TAIL if f not in present]
    if missing:
        raise PlyError(path, f"missing fields {', '.join(missing)}")
    n_rest = len(rest_names)
    degree = {0: 0, 9: 1, 24: 2, 45: 3}.get(n_rest)
    if degree is None or rest_names != [f"f_rest_{i}" for i in range(n_rest)]:
        raise PlyError(path, f"{n_rest} f_rest fields (expected f_rest_0.. with 0, 9, 24 or 45 of them)")

    def cols(names: list[str]) -> Tensor:
        return torch.from_numpy(np.stack([np.asarray(vertex[f], dtype=np.float32) for f in names], axis=1))

    n = len(vertex)
    # explicit sizes: reshape(n, 3, -1) is ambiguous (an error) when the file has no vertices
    sh_rest = cols(rest_names).reshape(n, 3, n_rest // 3).transpose(1, 2) if n_rest else torch.zeros(n, 0, 3)
    g = Gaussians(
        means=cols(["x", "y", "z"]),
        log_scales=cols(["scale_0", "scale_1", "scale_2"]),
        quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=cols(["opacity"])[:, 0],
        sh=torch.cat([cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None], sh_rest], dim=1),
    )
    return from_file(g).map(lambda t: t.contiguous().to(device))


def _load_compressed(path: Path, device) -> Gaussians:
    """PlayCanvas/SuperSplat's compressed .ply (256-splat chunks of quantised values), decoded by `gsply`."""
    try:
        from gsply.reader import read_compressed
    except ImportError:
        raise PlyError(path, "a compressed .ply (PlayCanvas layout): pip install 'dreammapping[formats]' to read "
                             f"it, or convert it with `{CONVERT_HINT}`") from None
    try:
        data = read_compressed(str(path))
    except Exception as e:  # a damaged file: gsply's parse errors
        raise PlyError(path, f"not a readable compressed .ply ({type(e).__name__}: {e})") from e
    if data is None:
        raise PlyError(path, f"a compressed .ply gsply cannot decode; convert it with `{CONVERT_HINT}`")

    def t(a) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    n = len(data.means)
    rest = t(data.shN).reshape(n, -1, 3) if data.shN is not None and np.size(data.shN) else torch.zeros(n, 0, 3)
    g = Gaussians(means=t(data.means), log_scales=t(data.scales), quats=t(data.quats),
                  opacity_logits=t(data.opacities).reshape(n), sh=torch.cat([t(data.sh0)[:, None], rest], dim=1))
    return from_file(g).map(lambda x: x.contiguous().to(device))


def check_finite(gaussians: Gaussians, path) -> None:
    """Raise `PlyError` when some Gaussian has a NaN or infinite parameter (it would render as nothing, silently)."""
    bad = torch.zeros(len(gaussians), dtype=torch.bool)
    for t in gaussians.params().values():
        finite = torch.isfinite(t.detach().cpu())
        bad |= ~(finite.flatten(1).all(dim=1) if finite.ndim > 1 else finite)
    if bool(bad.any()):
        raise PlyError(path, f"{int(bad.sum())} of {len(gaussians)} Gaussians have NaN or infinite values")


# Beyond these a scene is not one anyone made: float32 overflow in the projection, a singular covariance, a mesh grid
# spread over 10¹² units. Random bytes read as a .splat land here.
MAX_ABS_POSITION = 1e6
LOG_SCALE_RANGE = (-40.0, math.log(1e6))


def check_splat(gaussians: Gaussians, path) -> None:
    """The one validator of a loaded scene (.ply or .splat) before `render` or `export` uses it: PlyError (one line,
    exit 2) for no Gaussians, NaN / inf values, positions beyond ±1e6, scales outside [e⁻⁴⁰, 1e6] or a quaternion
    of zero length."""
    if len(gaussians) == 0:
        raise PlyError(path, "no Gaussians to use (the file has 0 vertices)")
    check_finite(gaussians, path)
    g = gaussians.detach().to("cpu")
    lo, hi = LOG_SCALE_RANGE
    problems = {
        f"positions beyond ±{MAX_ABS_POSITION:g}": (g.means.abs() > MAX_ABS_POSITION).any(dim=1),
        f"scales outside [e^{lo:g}, {math.exp(hi):g}]": ((g.log_scales < lo) | (g.log_scales > hi)).any(dim=1),
        "a quaternion of zero length": g.quats.norm(dim=1) < 1e-12,
    }
    for what, bad in problems.items():
        if bool(bad.any()):
            raise PlyError(path, f"{int(bad.sum())} of {len(g)} Gaussians have {what}")


# ---- pictures ----------------------------------------------------------------------------------------------------
def _render_frames(gaussians: Gaussians, cameras, chunk: int = 8, background=None) -> np.ndarray:
    """uint8 frames [B,H,W,3], rendering `chunk` cameras at a time to bound memory."""
    g = gaussians.detach()
    cameras = cameras.to(g.device)
    frames = []
    with torch.no_grad():
        for start in range(0, len(cameras), chunk):
            rgb = rasterize(g, cameras[start:start + chunk], background=background).rgb
            frames.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(frames).numpy()


def turntable_frames(gaussians: Gaussians, n_frames: int = 60, size: int = 256, elevation: float = 15.0,
                     background=None) -> np.ndarray:
    """uint8 frames [n_frames,size,size,3] of a turntable around the object, starting at the front."""
    return _render_frames(gaussians, turntable(n_frames, size, size, elevation=elevation), background=background)


def save_turntable(path: str | os.PathLike, gaussians: Gaussians, n_frames: int = 60, size: int = 256,
                   fps: int = 20, elevation: float = 15.0, background=None, frames: np.ndarray | None = None) -> Path:
    """A turntable of `n_frames` views around the object, starting at the front; .mp4 (H.264) or .gif (loops).

    `frames` [F,H,W,3] uint8 (from `turntable_frames`) are written as given instead of rendering: a .gif and an
    .mp4 of one scene then cost one rendering."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"{path}: turntable must be .mp4 or .gif")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if frames is None:
        frames = turntable_frames(gaussians, n_frames, size, elevation=elevation, background=background)
    size = frames.shape[1]
    # the temporary's name ends in .tmp, so the format is named explicitly for both writers
    with atomic_path(path) as tmp:
        if suffix == ".gif":  # encoded in memory: a failed write is then one OSError, not one more at exit
            tmp.write_bytes(iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps,
                                        loop=0))  # loop=0: forever
        else:
            import imageio_ffmpeg  # imageio's FFMPEG plugin, called directly: it would pick the format by extension

            # yuv420p (what every player accepts) needs even sides; macro_block_size=1 stops resizing to 16s
            if size % 2:
                frames = np.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
            writer = imageio_ffmpeg.write_frames(str(tmp), (frames.shape[2], frames.shape[1]), fps=fps,
                                                 codec="libx264", quality=8, macro_block_size=1,
                                                 pix_fmt_out="yuv420p", ffmpeg_log_level="error",
                                                 output_params=["-f", "mp4"])
            writer.send(None)  # start ffmpeg
            try:
                for frame in frames:
                    writer.send(np.ascontiguousarray(frame))
            finally:
                writer.close()
    return path


def save_view_grid(path: str | os.PathLike, gaussians: Gaussians, size: int = 256, background=None) -> Path:
    """One PNG row of the canonical views: front, side, back, overhead."""
    return save_frames_row(path, _render_frames(gaussians, canonical_views(size, size), background=background))


def save_frames_row(path: str | os.PathLike, frames: np.ndarray) -> Path:
    """uint8 frames [F,H,W,3] side by side in one PNG (written atomically)."""
    import imageio.v3 as iio

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(iio.imwrite("<bytes>", np.concatenate(list(frames), axis=1), extension=".png"))
    return path


# ---- command line ------------------------------------------------------------------------------------------------
def cli_render(argv: list[str] | None = None) -> int:
    """`dreammapping render RUN_OR_PLY [--out DIR] [--frames N] [--size S]`: turntable.mp4 and views.png."""
    parser = argparse.ArgumentParser(
        prog="dreammapping render", description="Turntable video and view grid of a run folder or a .ply.")
    parser.add_argument("source", help="a run folder (RUN/gaussians.ply, or a NeRF run's nerf.safetensors) or a 3DGS .ply")
    parser.add_argument("--out", default=None, help="output folder (default: the run folder / the .ply's folder)")
    parser.add_argument("--frames", type=int, default=60, help="turntable frames")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--fps", type=int, default=20, help="turntable frame rate")
    parser.add_argument("--gif", action="store_true", help="write turntable.gif instead of turntable.mp4")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its message; hand back its code instead of exiting
        return int(e.code or 0)

    def fail(message: str, code: int = EXIT_USAGE) -> int:
        print(f"dreammapping render: {message}", file=sys.stderr)
        return code

    if args.frames < 1 or args.size < 8:
        return fail("--frames must be ≥ 1 and --size ≥ 8")
    if args.fps < 1:  # 0 divides by zero in the gif's frame time; a negative rate makes an mp4 of nothing
        return fail(f"--fps must be ≥ 1, got {args.fps}")
    try:  # one memory estimate before the scene is even read
        require(frames_bytes(args.frames, args.size), f"rendering {args.frames} frames at --size {args.size}",
                "lower --size or --frames")
    except ConfigError as e:
        return fail(str(e))
    source = Path(args.source)
    if field_file(source) is not None:  # a NeRF run: render the field itself
        try:
            field, shading = load_field(field_file(source))
        except ValueError as e:
            return fail(str(e))
        scene, what, ply = NerfScene(field, shading), "a radiance field", field_file(source)
    else:
        ply = source / "gaussians.ply" if source.is_dir() else source
        if source.is_dir() and not ply.is_file():
            return fail(f"{source}: no gaussians.ply in this folder")
        try:
            gaussians = load_ply(ply)
            check_splat(gaussians, ply)
        except PlyError as e:
            return fail(str(e))
        scene, what = None, f"{len(gaussians)} Gaussians, SH degree {gaussians.sh_degree}"
    # a run's own turntable and views are generate's: a render of a run goes to RUN/render/ unless told otherwise
    out = Path(args.out) if args.out else ply.parent / "render" if is_run_folder(ply.parent) else ply.parent
    video_path = out / ("turntable.gif" if args.gif else "turntable.mp4")
    try:
        for path in (video_path, out / "views.png"):
            check_not_a_run_file(path)
    except ConfigError as e:
        return fail(str(e))
    try:
        check_writable_folder(out)  # before rendering, not after
    except OSError as e:
        return fail(f"cannot write to {out}: {e.strerror or e}", EXIT_OUTPUT)
    try:  # each file is replaced whole or not at all; a failure (disk full, read-only folder) keeps the old one
        if scene is None:
            video = save_turntable(video_path, gaussians, n_frames=args.frames, size=args.size, fps=args.fps)
            grid = save_view_grid(out / "views.png", gaussians, size=args.size)
        else:
            frames = render_frames(scene, turntable(args.frames, args.size, args.size))
            video = save_turntable(video_path, None, fps=args.fps, frames=frames)
            grid = save_frames_row(out / "views.png", render_frames(scene, canonical_views(args.size, args.size)))
    except OSError as e:
        return fail(describe_write_error(e, e.filename or out) + "; existing files are unchanged", EXIT_OUTPUT)
    print(f"wrote {video} and {grid} ({what})")
    return 0
