"""Forward+backward time and peak memory of the rasteriser backends, measured side by side.

    python benchmarks/render.py            # 64² and 128² × 1k / 5k / 20k Gaussians
    python benchmarks/render.py --quick    # 64² × 1k / 5k only

Scene: Gaussians spread uniformly in the unit ball, each scale ≈ 0.3–0.8× the mean spacing (like a kNN-initialised
scene), opacities sigmoid(N(0,1)), SH degree 3; `--batch` orbit cameras (default 1) at radius 3.5–4, fovy 40–50°.
Each (backend, size, N) runs in its own subprocess so its peak RSS is its own; time is the median of `--repeats`
after one warm-up, as wall clock and as process CPU time (the CPU time is steadier on a shared machine).
Dense configurations whose estimated time or memory is over budget are skipped, with the estimate printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

# Measured here for the dense reference (fwd+bwd, one thread): ~190 ns and ~65 bytes per (Gaussian, pixel) pair.
DENSE_SECONDS_PER_PAIR = 190e-9
DENSE_BYTES_PER_PAIR = 65


def make_scene(n: int, seed: int = 0, device: str = "cpu"):
    import torch

    from dreammapping.gaussians import Gaussians

    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * torch.rand(n, 1, generator=g) ** (1 / 3)
    spacing = (4 / 3 * math.pi / n) ** (1 / 3)
    return Gaussians(
        means=means,
        log_scales=torch.log(spacing * (0.3 + 0.5 * torch.rand(n, 3, generator=g))),
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.randn(n, generator=g),
        sh=0.3 * torch.randn(n, 16, 3, generator=g),
    ).to(device).requires_grad_()


def worker(backend: str, size: int, n: int, batch: int, repeats: int) -> dict:
    """Runs in a subprocess: time fwd+bwd of one configuration, report peak RSS (and CUDA memory)."""
    import torch

    from dreammapping.cameras import sample_orbit
    from dreammapping.render import rasterize

    device = "cuda" if backend == "gsplat" else "cpu"
    gaussians = make_scene(n, device=device)
    cams = sample_orbit(batch, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step():
        for p in gaussians.params().values():
            p.grad = None
        out = rasterize(gaussians, cams, backend=backend)
        (out.rgb.sum() + out.depth.sum()).backward()
        sync()
        return out

    out = step()  # warm-up
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_delta_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss,
        "cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "alpha": float(out.alpha.mean()),
    }


def run_config(backend: str, size: int, n: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, str(size), str(n), str(args.batch), str(args.repeats)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64² with 1k and 5k Gaussians only")
    parser.add_argument("--batch", type=int, default=1, help="cameras per render")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (OMP_NUM_THREADS)")
    parser.add_argument("--dense-max-seconds", type=float, default=60.0)
    parser.add_argument("--dense-max-gb", type=float, default=4.0)
    parser.add_argument("--worker", nargs=5, metavar=("BACKEND", "SIZE", "N", "BATCH", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, size, n, batch, repeats = args.worker
        print(json.dumps(worker(backend, int(size), int(n), int(batch), int(repeats))))
        return

    import torch

    sizes, counts = ([64], [1000, 5000]) if args.quick else ([64, 128], [1000, 5000, 20000])
    repeats = args.repeats if not args.quick else min(args.repeats, 2)
    args.repeats = repeats
    with_gsplat = torch.cuda.is_available()
    if with_gsplat:
        try:
            import gsplat  # noqa: F401
        except Exception:
            with_gsplat = False

    print(f"batch {args.batch} camera(s), SH degree 3, {args.threads} CPU thread(s), median of {repeats} after a "
          f"warm-up; times are forward+backward, wall / CPU seconds; RSS is the subprocess's peak above its baseline")
    print()
    header = "| size | N | torch wall / cpu (s) | dense wall / cpu (s) | dense/torch (cpu) | torch RSS (MB) | dense RSS (MB) |"
    rule = "|---|---|---|---|---|---|---|"
    if with_gsplat:
        header += " gsplat (ms) | gsplat CUDA (MB) |"
        rule += "---|---|"
    print(header)
    print(rule)
    for size in sizes:
        for n in counts:
            t = run_config("torch", size, n, args)
            pairs = args.batch * n * size * size
            est_s, est_gb = pairs * DENSE_SECONDS_PER_PAIR * (repeats + 1), pairs * DENSE_BYTES_PER_PAIR / 2**30
            if est_s > args.dense_max_seconds or est_gb > args.dense_max_gb:
                d = {"skipped": f"skipped (est. {est_s:.0f} s, {est_gb:.1f} GB)"}
            else:
                d = run_config("dense", size, n, args)
            row = [f"{size}²", f"{n}", _time(t)]
            row.append(d["skipped"] if "skipped" in d else _time(d))
            row.append(f"{d['cpu'] / t['cpu']:.1f}×" if "cpu" in d and "cpu" in t else "–")
            row.append(f"{t['rss_delta_mb']:.0f}" if "rss_delta_mb" in t else "–")
            row.append(f"{d['rss_delta_mb']:.0f}" if "rss_delta_mb" in d else "–")
            if with_gsplat:
                g = run_config("gsplat", size, n, args)
                row.append(f"{1000 * g['wall']:.2f}" if "wall" in g else g.get("error", "–"))
                row.append(f"{g['cuda_mb']:.0f}" if g.get("cuda_mb") is not None else "–")
            print("| " + " | ".join(row) + " |", flush=True)


def _time(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error'][:60]}"
    return f"{r['wall']:.3f} / {r['cpu']:.3f}"


if __name__ == "__main__":
    main()
