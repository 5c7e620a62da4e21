"""NeRF vs Gaussians: the representation's cost per training iteration, measured side by side on this machine.

    python benchmarks/nerf_cost.py                 # 32² and 64², 4 views, 5 timed iterations each
    python benchmarks/nerf_cost.py --quick         # 32² only, 3 iterations
    python benchmarks/nerf_cost.py --out benchmarks/results/nerf_cost.json

One iteration = render a batch of orbit cameras, back-propagate a photometric loss, step the optimiser — what
differs between the representations; the prior's cost (the same for both at one resolution) is left out. The
scenes are what the `cpu` presets start from: 2000 Gaussians on a sphere of radius 0.6 (`--scene gaussians`) and a
fresh radiance field (the NeRF preset's `NerfConfig`: blob-initialised, 48³ grids, 64 samples per ray, occupancy
skipping). Time is the median of `--repeats` after one warm-up, as wall clock and as process CPU time (steadier on
a shared machine: the CPU time is what the iteration costs, the wall time also counts waiting for a core).

A second table answers "dense grid or hash grid?" for the field's encoding: forward + backward of `grid_sample` on
a dense 48³ × 9-channel grid against a pure-PyTorch multiresolution hash encoding (Instant-NGP's, 8 levels × 2
features, 2¹⁵ entries per level, resolutions 16 → 256) at the same number of points.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dreammapping import cameras as C
from dreammapping.gaussians import make_optimizer, sphere
from dreammapping.nerf import NerfConfig, RadianceField, make_nerf_optimizer, render_field
from dreammapping.render import rasterize


def timed(step, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds) of `step()` after one warm-up."""
    step()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def gaussian_step(size: int, batch: int):
    g = sphere(2000, radius=0.6).requires_grad_(True)
    opt = make_optimizer(g)
    cams = C.sample_orbit(batch, size, size, C.OrbitConfig(), torch.Generator().manual_seed(0))
    target = torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(1))

    def step():
        out = rasterize(g, cams, backend="torch")
        (out.rgb - target).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def nerf_step(size: int, batch: int, cfg: NerfConfig, shading: str):
    field = RadianceField(cfg)
    opt = make_nerf_optimizer(field, cfg)
    cams = C.sample_orbit(batch, size, size, C.OrbitConfig(), torch.Generator().manual_seed(0))
    target = torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(1))

    def step():
        out = render_field(field, cams, shading=shading)
        (out.rgb - target).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


class HashEncoding(torch.nn.Module):
    """Instant-NGP's multiresolution hash encoding in plain PyTorch (for the measurement only)."""

    PRIMES = (1, 2654435761, 805459861)

    def __init__(self, levels=8, features=2, log2_table=15, base=16, finest=256):
        super().__init__()
        self.res = [int(base * (finest / base) ** (i / max(levels - 1, 1))) for i in range(levels)]
        self.size = 2 ** log2_table
        self.tables = torch.nn.Parameter(torch.randn(levels, self.size, features) * 1e-4)

    def forward(self, x):  # x [N,3] in [0,1] → [N, levels·features]
        corners = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])
        out = []
        for level, res in enumerate(self.res):
            p = x * res
            p0 = p.floor().long()
            f = p - p0
            c = p0[:, None, :] + corners[None]  # [N,8,3]
            h = (c[..., 0] * self.PRIMES[0]) ^ (c[..., 1] * self.PRIMES[1]) ^ (c[..., 2] * self.PRIMES[2])
            vals = self.tables[level][h % self.size]  # [N,8,F]
            w = torch.where(corners[None].bool(), f[:, None, :], 1 - f[:, None, :]).prod(-1)  # [N,8]
            out.append((w[..., None] * vals).sum(1))
        return torch.cat(out, -1)


def encoding_costs(n: int, repeats: int) -> list[dict]:
    x = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))
    grid = torch.nn.Parameter(torch.zeros(1, 9, 48, 48, 48))
    hashing = HashEncoding()

    def dense():
        F.grid_sample(grid, (x * 2 - 1).reshape(1, 1, 1, -1, 3), align_corners=True).sum().backward()

    def hashed():
        hashing(x).sum().backward()

    rows = []
    for name, fn, params in (("dense grid 48³×9 (grid_sample)", dense, grid.numel()),
                             ("hash grid 8 levels×2, 2¹⁵ (pure torch)", hashed, hashing.tables.numel())):
        wall, cpu = timed(fn, repeats)
        rows.append({"encoding": name, "points": n, "parameters": params, "wall_ms": round(wall * 1e3, 1),
                     "cpu_ms": round(cpu * 1e3, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32² only, 3 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the measurements here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    sizes = [32] if args.quick else [32, 64]
    cfg = NerfConfig()
    rows = []
    for size in sizes:
        cases = {"gaussians (2000, torch rasterizer)": gaussian_step(size, args.batch),
                 "nerf, albedo (warm-up)": nerf_step(size, args.batch, cfg, "albedo"),
                 "nerf, lambert (FD normals)": nerf_step(size, args.batch, cfg, "lambert")}
        base = None
        for name, step in cases.items():
            wall, cpu = timed(step, repeats)
            base = cpu if base is None else base
            rows.append({"size": size, "scene": name, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                         "cpu_ratio": round(cpu / base, 2)})
            print(f"{size}² {name:38s} wall {wall:7.3f} s  cpu {cpu:7.3f} s  ×{cpu / base:5.2f}", flush=True)
    enc = encoding_costs(50_000, repeats)
    for r in enc:
        print(f"{r['encoding']:40s} {r['points']} points: wall {r['wall_ms']} ms, cpu {r['cpu_ms']} ms", flush=True)
    record = {"command": "python benchmarks/nerf_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "threads": args.threads, "batch": args.batch, "repeats": repeats,
              "machine": "shared CPU (other jobs running; CPU time is the steadier number)",
              "iteration": rows, "encoding": enc}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2) if args.out is None else f"wrote {args.out}")
    return 0 if all(math.isfinite(r["cpu_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
