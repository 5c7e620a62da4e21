"""Start-up of the default command to its first step: the generate path's imports and the prior's loading, each a
fresh process, in wall and CPU seconds (CPU seconds move less than wall time when other processes share the cores).

    python benchmarks/startup.py               # 3 fresh processes
    python benchmarks/startup.py --runs 5 --json startup.json

Each child times `import dreammapping.train` (torch, tyro, our modules: what `dreammapping generate` imports before
it loads the prior), then `DiffusionPrior.from_pretrained("embedded")` (diffusers' and transformers' imports and the
weights), and lists which heavy modules were loaded by then. The load average before each run is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch._dynamo", "peft", "scipy.stats", "scipy.optimize", "sympy", "accelerate", "torchvision",
         "imageio_ffmpeg", "diffusers.models.transformers.transformer_flux", "diffusers.models.unets.unet_3d_condition")

CHILD = """
import json, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
w0, c0 = time.perf_counter(), cpu()
import dreammapping.train
w1, c1 = time.perf_counter(), cpu()
from dreammapping.priors import DiffusionPrior
DiffusionPrior.from_pretrained("embedded", device="cpu")
w2, c2 = time.perf_counter(), cpu()
print(json.dumps({"imports_wall": w1 - w0, "imports_cpu": c1 - c0, "prior_wall": w2 - w1, "prior_cpu": c2 - c1,
                  "heavy": [m for m in HEAVY if m in sys.modules], "modules": len(sys.modules)}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    runs = []
    for i in range(args.runs):
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{CHILD}"], env=env, capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        run = {**json.loads(out.stdout.strip().splitlines()[-1]), "load_before": load}
        runs.append(run)
        print(f"run {i}: import dreammapping.train {run['imports_wall']:.2f} s wall / {run['imports_cpu']:.2f} s CPU;"
              f" load the embedded prior {run['prior_wall']:.2f} s wall / {run['prior_cpu']:.2f} s CPU; "
              f"load average before {load:.2f}", flush=True)
    print(f"heavy modules loaded by then: {', '.join(runs[-1]['heavy']) or 'none'} ({runs[-1]['modules']} modules)")
    print("| step (median of %d) | wall s | CPU s |\n|---|---|---|" % len(runs))
    for name, key in (("import dreammapping.train", "imports"), ("load the embedded prior", "prior")):
        print(f"| {name} | {statistics.median(r[key + '_wall'] for r in runs):.2f} "
              f"| {statistics.median(r[key + '_cpu'] for r in runs):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
