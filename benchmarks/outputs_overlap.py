"""What a second core could save at the end of a run: each output step of `write_outputs` in CPU and wall seconds,
and the turntable's .gif and .mp4 encoded at once (the .mp4 from a thread; its ffmpeg is a process of its own)
against one after the other.

    python benchmarks/outputs_overlap.py RUN/gaussians.ply            # 3 repetitions, one torch thread
    python benchmarks/outputs_overlap.py RUN/gaussians.ply --reps 5 --threads 2

CPU seconds count this process and its children (ffmpeg). The bound on what overlapping the two encodings saves is the
smaller of the two; the overlapped row measures it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import dreammapping  # noqa: F401  (first: the OpenMP wait policy before torch runs anything)
from dreammapping.export import load_ply, save_turntable, save_view_grid, turntable_frames


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ply")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gaussians = load_ply(args.ply)
    times: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="outputs-overlap-") as tmp:
        out = Path(tmp)
        frames = turntable_frames(gaussians, 2, 32)
        save_turntable(out / "warm.gif", gaussians, frames=frames)  # first-time imports are not an output's cost
        save_turntable(out / "warm.mp4", gaussians, frames=frames)
        held: dict[str, object] = {}

        def both_at_once():
            mp4 = threading.Thread(target=save_turntable, args=(out / "b.mp4", gaussians),
                                   kwargs={"frames": held["frames"]})
            mp4.start()
            save_turntable(out / "b.gif", gaussians, frames=held["frames"])
            mp4.join()

        steps = {
            "render turntable frames": lambda: held.__setitem__("frames", turntable_frames(gaussians, args.frames,
                                                                                            args.size)),
            "encode .gif": lambda: save_turntable(out / "t.gif", gaussians, frames=held["frames"]),
            "encode .mp4": lambda: save_turntable(out / "t.mp4", gaussians, frames=held["frames"]),
            "encode .gif and .mp4 at once": both_at_once,
            "view grid": lambda: save_view_grid(out / "v.png", gaussians, size=args.size),
        }
        for rep in range(args.reps):
            for name, step in steps.items():
                c0, w0 = cpu(), time.perf_counter()
                step()
                times.setdefault(name, []).append((time.perf_counter() - w0, cpu() - c0))
            print(f"rep {rep}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in times.items()), flush=True)
    print(f"\n{len(gaussians)} Gaussians, {args.frames} frames at {args.size}², {args.threads} torch thread(s)")
    print(f"| step (median of {args.reps}) | wall s | CPU s |\n|---|---|---|")
    for name, values in times.items():
        wall, cpu_s = (statistics.median(v[i] for v in values) for i in (0, 1))
        print(f"| {name} | {wall:.2f} | {cpu_s:.2f} |")
    gif, mp4, both = (statistics.median(v[0] for v in times[k]) for k in
                      ("encode .gif", "encode .mp4", "encode .gif and .mp4 at once"))
    print(f"one after the other {gif + mp4:.2f} s, at once {both:.2f} s: saves {gif + mp4 - both:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
