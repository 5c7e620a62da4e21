"""Time to export a 50k-Gaussian splat to every format on the CPU, side by side in one run (goal: mesh ≤ 20 s).

Two splats of 50k Gaussians:
  truth   toy-world "a red cube on top of a blue sphere" filled with isotropic splats (σ = their spacing; heavy
          overlap, the worst case for the density splat)
  shell   a generated-like splat: 50k anisotropic Gaussians on the surface of the same two objects, flattened
          along the normal (σ ≈ 0.5–1 % of the scene), as a trained 3DGS scene looks
or `--ply PATH` (a run's gaussians.ply) instead. Each format is exported `--repeat` times round-robin; the table
gives medians of wall and CPU seconds (one thread: CPU time is what an idle core would take, wall time is
inflated by whoever else shares the machine), CPU-time ratios to the .ply write and to the 20 s goal, the file
size and the mesh's report, then the IoU of the mesh's silhouette with the splat's (rendered alpha > 0.5) in the
four canonical views.

    python benchmarks/export.py                 # both synthetic splats
    python benchmarks/export.py --ply RUN/gaussians.ply
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dreammapping.cameras import canonical_views, project

from dreammapping.export import load_ply, save_ply
from dreammapping.formats import save_splat
from dreammapping.gaussians import Gaussians
from dreammapping.mesh import MeshConfig, extract_mesh, mesh_report, save_mesh
from dreammapping.toyworld.grammar import parse
from dreammapping.render import rasterize
from dreammapping.toyworld.splats import scene_gaussians, surface_gaussians

GOAL_S = 20.0


def silhouette_iou(g: Gaussians, mesh, size: int = 128) -> list[float]:
    """IoU of the mesh's silhouette with the splat's (rendered alpha > 0.5) in the four canonical views."""
    from PIL import Image, ImageDraw

    cams = canonical_views(size, size)
    with torch.no_grad():
        alpha = rasterize(g, cams).alpha[..., 0].numpy() > 0.5
    uv = project(torch.tensor(mesh.vertices, dtype=torch.float32), cams)[0].numpy()  # [4,V,2]
    ious = []
    for k in range(len(cams)):
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        for face in mesh.faces:
            draw.polygon([tuple(uv[k, i]) for i in face], fill=255)
        m = np.asarray(img) > 0
        ious.append(float((m & alpha[k]).sum() / max((m | alpha[k]).sum(), 1)))
    return ious


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is what an idle core takes."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ply", default=None, help="a 3DGS .ply to export instead of the synthetic splats")
    parser.add_argument("--n", type=int, default=50_000, help="Gaussians in each synthetic splat")
    parser.add_argument("--resolution", type=int, default=128, help="mesh grid resolution")
    parser.add_argument("--repeat", type=int, default=2, help="timed repetitions (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    splats = {Path(args.ply).stem: load_ply(args.ply)} if args.ply else {
        "truth": scene_gaussians(parse("a red cube on top of a blue sphere"), n=args.n,
                                 generator=torch.Generator().manual_seed(0)),
        "shell": surface_gaussians(parse("a red cube on top of a blue sphere"), n=args.n,
                                   generator=torch.Generator().manual_seed(0)),
    }
    cfgs = {"glb": MeshConfig(resolution=args.resolution), "obj": MeshConfig(resolution=args.resolution),
            "glb d0.5": MeshConfig(resolution=args.resolution, decimate=0.5)}
    w = max(8, *(len(k) for k in splats))
    print(f"{'splat':<{w}} {'format':<9} {'N':>7} {'wall s':>7} {'CPU s':>7} {'÷ ply':>7} {'÷ goal':>7} {'size MB':>8}  mesh")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, g in splats.items():
            times: dict[str, list[tuple[float, float]]] = {k: [] for k in ("ply", "splat", *cfgs)}
            reports: dict[str, str] = {}
            meshes: dict = {}
            for _ in range(args.repeat):  # round-robin, so a busy machine slows every format alike
                times["ply"].append(timed(lambda: save_ply(tmp / "g.ply", g)))
                times["splat"].append(timed(lambda: save_splat(tmp / "g.splat", g)))
                for key, cfg in cfgs.items():
                    ext = key.split()[0]

                    def run(key=key, cfg=cfg, ext=ext):
                        mesh = extract_mesh(g, cfg)
                        save_mesh(tmp / f"{key.replace(' ', '_')}.{ext}", mesh)
                        reports[key] = mesh_report(mesh)
                        meshes[key] = mesh

                    times[key].append(timed(run))
            ply_s = statistics.median(c for _, c in times["ply"])
            for key, ts in times.items():
                wall, med = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
                ext = key.split()[0]
                size = (tmp / (f"g.{ext}" if key in ("ply", "splat") else f"{key.replace(' ', '_')}.{ext}")).stat().st_size
                print(f"{name:<{w}} {key:<9} {len(g):>7} {wall:>7.2f} {med:>7.2f} {med / ply_s:>7.1f} {med / GOAL_S:>7.2f} "
                      f"{size / 1e6:>8.2f}  {reports.get(key, '')}")
            iou = silhouette_iou(g, meshes["glb"])
            print(f"{name:<{w}} mesh vs splat silhouette IoU (front, side, back, overhead): "
                  f"{', '.join(f'{v:.3f}' for v in iou)}")


if __name__ == "__main__":
    main()
