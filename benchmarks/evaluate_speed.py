"""How long `dreammapping evaluate RUN` takes with a cold FID reference cache and with a warm one.

    python benchmarks/evaluate_speed.py RUN [--before-src /path/to/older/checkout/src] [--repeat 2]

Each case is a fresh process (imports included, as a user pays them), run one after the other in one go, so the
ratios are measured side by side under the same machine load. `--before-src` adds the same command run with an
older checkout's package first on PYTHONPATH (e.g. `git worktree add /tmp/before main`), for a before/after table.
A cold cache costs what `--no-fid-cache` costs: one sampling of the prior.
The cache lives in a temporary folder ($DREAMMAPPING_CACHE), so the user's cache is neither used nor filled.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder (gaussians.ply + config.yaml)")
    parser.add_argument("--before-src", default=None, help="src/ of an older checkout to time first")
    parser.add_argument("--repeat", type=int, default=2, help="warm-cache repetitions")
    args = parser.parse_args(argv)
    base = [sys.executable, "-m", "dreammapping.cli", "evaluate", args.run]
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "DREAMMAPPING_CACHE": cache, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if args.before_src:
            rows.append(("before (--before-src)", timed(base, {**env, "PYTHONPATH": args.before_src})))
        rows.append(("cold cache (first evaluation of a prompt)", timed(base, env)))
        for k in range(args.repeat):
            rows.append((f"warm cache #{k + 1}", timed(base, env)))
    ref = rows[0][1]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"| case | seconds | × first row |  (load average {load:.1f})\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / ref:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
