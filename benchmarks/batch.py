"""Speed-up of `dreammapping batch`'s local pool over running the same prompts one after another.

    python benchmarks/batch.py                          # 4 prompts × 60 iterations, 2 rounds, the cpu preset
    python benchmarks/batch.py --iterations 30 --rounds 1
    python benchmarks/batch.py --all-cores              # also: one run at a time with every core (idle machines only)

Ways to make the same runs, each a fresh process timed from start to exit (imports, prior loading and the
outputs included, as a user would wait for them), interleaved round by round so that the load other jobs put on a
shared machine falls on all of them alike:

  sequential, 1 thread    one process calling `dreammapping.generate` for each prompt in turn, the cpu preset's
                          `threads=1` (what a shell loop of `dreammapping generate` does, minus its start-ups)
  sequential, all cores   (--all-cores) the same with `--threads` = all cores for each run; on a busy machine this
                          one crawls (OpenMP threads wait on each other: 17 s/it measured under a load average of 12
                          on 2 cores, against ~4 s/it with 1 thread), so it is left out unless asked for
  batch pool              `dreammapping batch PROMPTS --workers <cores>`: one run per core, 1 thread each

Speed-ups are medians over the rounds. The load average (other people's jobs) is printed next to each time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow cylinder", "an orange torus", "a pink cube"]

SEQUENTIAL = """
import sys
from dreammapping.train import generate
out, iterations, threads, prompts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
for i, prompt in enumerate(prompts):
    generate(prompt, iterations=iterations, threads=threads, out=f"{out}/{i}", progress=False)
"""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def timed(command: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4, help=f"how many of {len(PROMPTS)} toy prompts (default 4)")
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--keep", help="keep the run folders here instead of a temporary folder")
    p.add_argument("--all-cores", action="store_true", help="also time one run at a time with every core")
    args = p.parse_args(argv)
    n = cores()
    prompts = PROMPTS[: args.prompts]
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-batch-"))
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n")
    # each process sets its own threads; OpenMP must not start more behind its back
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    modes = {
        "sequential, 1 thread": lambda out: [sys.executable, "-c", SEQUENTIAL, out, str(args.iterations), "1",
                                             *prompts],
        f"sequential, {n} threads": lambda out: [sys.executable, "-c", SEQUENTIAL, out, str(args.iterations), str(n),
                                                 *prompts],
        f"batch pool, {n} workers": lambda out: [sys.executable, "-m", "dreammapping.cli", "batch",
                                                 str(root / "prompts.txt"), "--out", out, "--workers", str(n),
                                                 "--iterations", str(args.iterations), "--evaluate", "none",
                                                 "--no-progress"],
    }
    if n == 1 or not args.all_cores:
        modes.pop(f"sequential, {n} threads")
    names = list(modes)
    times: dict[str, list[float]] = {m: [] for m in names}
    loads: dict[str, list[float]] = {m: [] for m in names}
    print(f"{len(prompts)} prompts × {args.iterations} iterations, cpu preset, {n} cores, {args.rounds} rounds; "
          f"runs in {root}", flush=True)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no mode always first or last
        for name in order:
            out = root / f"round{r}-{names.index(name)}"
            shutil.rmtree(out, ignore_errors=True)
            load = os.getloadavg()[0]
            seconds = timed(modes[name](str(out)), env)
            times[name].append(seconds)
            loads[name].append((load + os.getloadavg()[0]) / 2)
            print(f"  round {r + 1}: {name:<24} {seconds:7.1f} s   (load average {load:.1f} → "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
    base = statistics.median(times[names[0]])
    print()
    print(f"| way | wall s (median of {args.rounds}) | each round | mean load avg | speed-up vs sequential 1 thread |")
    print("|---|---|---|---|---|")
    for name in names:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.1f} | {', '.join(f'{t:.1f}' for t in times[name])} | "
              f"{statistics.fmean(loads[name]):.1f} | {base / med:.2f}× |")
    if len(names) == 3:  # --all-cores
        print(f"\nbatch pool vs sequential with all {n} threads per run: "
              f"{statistics.median(times[names[1]]) / statistics.median(times[names[2]]):.2f}×")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
