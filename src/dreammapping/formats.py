"""`dreammapping export`: a run or a .ply as .ply, .splat, .glb or .obj (a NeRF run: `nerf_export`).

The .splat layout is antimatter15/splat's (what many web viewers stream), 32 bytes per splat, little-endian:

    position f32×3 | scale f32×3 (linear σ) | RGBA u8×4 (DC colour, sigmoid opacity) | quaternion u8×4 (w x y z,
    normalised, q·128 + 128)

sorted by exp(Σ log-scale)·opacity, largest first, as that converter does; it is in the same OpenCV frame as our
.ply (−y up, `dreammapping.axes`). Higher SH bands are dropped: the layout has no room for them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from dreammapping.axes import from_file, to_file
from dreammapping.export import PlyError, check_splat, load_ply, save_ply
from dreammapping.files import atomic_path
from dreammapping.gaussians import Gaussians, rgb_to_sh, sh_to_rgb
from dreammapping.errors import GenerateError
from dreammapping.mesh import MeshConfig, extract_mesh, mesh_report, save_mesh
from dreammapping.nerf import load_field
from dreammapping.nerf_export import NerfMeshConfig, field_file, nerf_gaussians, nerf_mesh
from dreammapping.resources import mesh_bytes, require
from dreammapping.rundir import check_not_a_run_file

FORMATS = ("ply", "splat", "glb", "obj")
SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
assert SPLAT_DTYPE.itemsize == 32


def save_splat(path: str | os.PathLike, gaussians: Gaussians) -> Path:
    """Write the antimatter15 .splat layout (see the module docstring); atomic."""
    g = to_file(gaussians.detach().to("cpu", torch.float32))
    order = torch.argsort(-(g.log_scales.sum(1).exp() * g.opacities), stable=True)
    g = g[order]
    rec = np.zeros(len(g), dtype=SPLAT_DTYPE)
    rec["position"] = g.means.numpy()
    rec["scale"] = g.scales.numpy()
    rgba = torch.cat([sh_to_rgb(g.sh[:, 0]), g.opacities[:, None]], dim=1)
    # Uint8ClampedArray, which the viewers use, rounds half to even and clamps; np.rint does the same
    rec["rgba"] = np.clip(np.rint(rgba.numpy() * 255), 0, 255).astype(np.uint8)
    rec["rot"] = np.clip(np.rint(g.rotations.numpy() * 128 + 128), 0, 255).astype(np.uint8)
    path = Path(path)
    with atomic_path(path) as tmp:
        rec.tofile(tmp)
    return path


def load_splat(path: str | os.PathLike, device: torch.device | str = "cpu") -> Gaussians:
    """Read a .splat (antimatter15 layout, OpenCV frame) into our +z-up world; SH degree 0."""
    path = Path(path)
    if not path.is_file():
        raise PlyError(path, "no such file")
    size = path.stat().st_size
    if size % SPLAT_DTYPE.itemsize:
        raise PlyError(path, f"{size} bytes is not a whole number of 32-byte splats")
    rec = np.fromfile(path, dtype=SPLAT_DTYPE)
    rgba = torch.from_numpy(rec["rgba"].astype(np.float32) / 255)
    alpha = rgba[:, 3].clamp(0.5 / 255, 1 - 0.5 / 255)  # 0 and 255 have no finite logit
    g = Gaussians(
        means=torch.from_numpy(rec["position"].copy()),
        log_scales=torch.from_numpy(rec["scale"].copy()).clamp_min(1e-12).log(),
        quats=torch.from_numpy((rec["rot"].astype(np.float32) - 128) / 128),
        opacity_logits=torch.logit(alpha),
        sh=rgb_to_sh(rgba[:, None, :3]),
    )
    return from_file(g).map(lambda t: t.contiguous().to(device))


def load_any(path: str | os.PathLike) -> Gaussians:
    """A run folder (its gaussians.ply), a .ply or a .splat."""
    path = Path(path)
    if path.is_dir():
        ply = path / "gaussians.ply"
        if not ply.is_file():
            raise PlyError(path, "no gaussians.ply in this folder")
        return load_ply(ply)
    return load_splat(path) if path.suffix.lower() == ".splat" else load_ply(path)


def export(source: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, resolution: int = 128,
           decimate: float = 0.0) -> tuple[Path, str]:
    """Write `source` (run folder, .ply or .splat) as `fmt`; returns (path written, a one-line summary)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = Path(source)
    if field_file(source) is not None:
        return _export_field(field_file(source), fmt, out, resolution, decimate)
    g = load_any(source)
    check_splat(g, source)  # render's validator: NaN in, nothing out
    stem = "gaussians" if source.is_dir() else source.stem
    folder = source if source.is_dir() else source.parent
    out = Path(out) if out else folder / f"{stem}.{fmt}"
    if out.resolve() == (source / "gaussians.ply" if source.is_dir() else source).resolve():
        raise ValueError(f"{out}: would overwrite the source; pass --out")
    check_not_a_run_file(out)  # e.g. --out RUN/checkpoint.pt: a later --resume would find it "damaged"
    if fmt == "ply":
        return save_ply(out, g), f"{len(g)} Gaussians, SH degree {g.sh_degree}"
    if fmt == "splat":
        return save_splat(out, g), f"{len(g)} splats (SH bands above the DC dropped)"
    mesh = extract_mesh(g, MeshConfig(resolution=resolution, decimate=decimate))
    return save_mesh(out, mesh), mesh_report(mesh)


def _export_field(path: Path, fmt: str, out: str | os.PathLike | None, resolution: int,
                  decimate: float) -> tuple[Path, str]:
    """A radiance field (a NeRF run's nerf.safetensors): marching cubes on σ, or Gaussians sampled from it."""
    field, _ = load_field(path)
    out = Path(out) if out else path.with_suffix(f".{fmt}")
    if fmt in ("glb", "obj"):
        mesh = nerf_mesh(field, NerfMeshConfig(resolution=resolution, decimate=decimate))
        return save_mesh(out, mesh), mesh_report(mesh)
    g = nerf_gaussians(field)
    if fmt == "ply":
        return save_ply(out, g), f"{len(g)} Gaussians sampled from the radiance field"
    return save_splat(out, g), f"{len(g)} splats sampled from the radiance field"


def cli_export(argv: list[str] | None = None) -> int:
    """`dreammapping export RUN_OR_PLY --format ply|splat|glb|obj [--out PATH] [--resolution N] [--decimate F]`."""
    parser = argparse.ArgumentParser(
        prog="dreammapping export",
        description="Write a run folder, .ply or .splat as a 3DGS .ply, an antimatter15 .splat, or a coloured mesh "
                    "(.glb / .obj, +y up) from marching cubes of the Gaussians' density.")
    parser.add_argument("source", help="a run folder (RUN/gaussians.ply, or a NeRF run's nerf.safetensors), a 3DGS "
                                       ".ply or a .splat")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", default=None, help="output file (default: beside the source, SOURCE.FORMAT)")
    parser.add_argument("--resolution", type=int, default=128, help="mesh: voxels along the longest side")
    parser.add_argument("--decimate", type=float, default=0.0, help="mesh: fraction of faces to remove, in [0, 1)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed its message; hand back its code instead of exiting
        return int(e.code or 0)
    if not 8 <= args.resolution <= 1024 or not 0 <= args.decimate < 1:
        print("dreammapping export: --resolution must be in [8, 1024] and --decimate in [0, 1)", file=sys.stderr)
        return 2
    try:
        if args.format in ("glb", "obj"):  # the voxel grid grows with the cube of the resolution
            require(mesh_bytes(args.resolution), f"a mesh at --resolution {args.resolution}", "lower --resolution")
        path, summary = export(args.source, args.format, args.out, args.resolution, args.decimate)
    except (PlyError, ValueError, OSError, ImportError, GenerateError) as e:
        print(f"dreammapping export: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {path}: {summary}")
    return 0
