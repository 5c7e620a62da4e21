"""Calibrate `dreammapping.resources`' memory estimate against what the code really takes on the CPU.

For each size, a fresh process renders a 2000-Gaussian sphere (the cpu preset's init, opacity 0.1 as trained scenes
start) into a batch of training views and back-propagates (the dominant cost of a generate step), or renders a
turntable without gradients (`render` / the final turntable); it reports the peak RSS growth (ru_maxrss after −
before) next to the estimate. The estimate must stay above the measurement (it refuses what cannot fit; it may refuse
a little early).

    python benchmarks/memory_estimate.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from dreammapping.resources import frames_bytes, human, training_bytes

CHILD = r"""
import json, resource, sys, torch
from dreammapping import cameras as C
from dreammapping.export import turntable_frames
from dreammapping.gaussians import sphere
from dreammapping.render import rasterize
kind, size, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
g = sphere(n, radius=0.6, opacity=0.1, generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if kind == "train":
    g = g.requires_grad_(True)
    cams = C.sample_orbit(batch, size, size, C.OrbitConfig(), torch.Generator().manual_seed(0))
    out = rasterize(g, cams, backend="torch")
    out.rgb.mean().backward()
else:
    turntable_frames(g, batch, size)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"bytes": (after - before) * 1024}))
"""

CASES = [("train", 64, 4), ("train", 128, 4), ("train", 256, 4), ("train", 256, 8), ("render", 256, 16),
         ("render", 512, 8)]
POINTS = 2000


def main() -> int:
    print(f"| what | size | batch / frames | measured peak growth | estimate | estimate ÷ measured |")
    print("|---|---|---|---|---|---|")
    worst = float("inf")
    for kind, size, batch in CASES:
        out = subprocess.run([sys.executable, "-c", CHILD, kind, str(size), str(batch), str(POINTS)],
                             capture_output=True, text=True, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])["bytes"]
        estimate = (training_bytes(batch, size, POINTS, POINTS) if kind == "train"
                    else frames_bytes(batch, size, POINTS))
        ratio = estimate / max(measured, 1)
        worst = min(worst, ratio)
        print(f"| {kind} | {size} | {batch} | {human(measured)} | {human(estimate)} | {ratio:.1f} |")
    print(f"\nsmallest estimate ÷ measured: {worst:.2f} (must stay > 1)")
    return 0 if worst > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
