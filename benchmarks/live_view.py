"""What the live 3D view adds to an iteration at the cpu preset, measured side by side in one run.

Variants, each a real `train.train` run of the cpu preset (embedded prior, VDM + DCA, batch 4, 2000 Gaussians):

  none          a callback that only notes the time (the baseline)
  view/5        `viewer.LiveView` as `generate --viewer` uses it: the scene every 5 steps (≤ 4 a second)
  view/1        the same, every step, no rate limit (the worst case)
  app           `dreammapping app`'s own path: `RunQueue` + the page (progress, status, runs list every step;
                the scene every 5 steps)

Each viser server has one connected websocket client that reads everything it is sent, as a browser tab would
(drawing the splats is the browser's work, on the viewer's machine, and is not counted). Time per iteration is the
wall time between successive callbacks (so it includes the callback itself and whatever the server's sending thread
takes from the training thread); the first `--warmup` steps of each run are dropped. Because a busy machine makes
per-iteration times noisy, the time spent inside the view's callbacks on the training thread (converting the scene,
queueing messages; for `app` also the progress widgets) is reported separately: it is the part that does not hide
in the noise. Variants are interleaved round-robin, in a rotated order each round, so that the drifts of a shared
machine hit all of them alike; the table gives means over all rounds (a mean, because view/5's work lands on one
step in five) and the median of per-round ratios.

`--paired N` adds the finest interleaving: one run of N iterations in which the view (as view/5) is on for 10 steps,
off for 10, and so on; the mean step time of the "on" blocks over that of the "off" blocks.

    python benchmarks/live_view.py                   # 3 rounds × 40 iterations
    python benchmarks/live_view.py --rounds 5 --iterations 60
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import viser
from websockets.sync.client import connect

from dreammapping import train
from dreammapping.app import App, RunRequest
from dreammapping.viewer import LiveView

VARIANTS = ("none", "view/5", "view/1", "app")
SMALL_OUTPUTS = dict(turntable_size=16, turntable_frames=1)  # the outputs at the end are not what is measured


class Reader:
    """A websocket client of a viser server that reads (and counts) every message, like an open browser tab."""

    def __init__(self, port: int):
        self.bytes = 0
        self._ws = connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"],
                           max_size=None, open_timeout=30)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._ws:
                self.bytes += len(message)
        except Exception:  # noqa: BLE001 — closed
            pass

    def close(self) -> None:
        self._ws.close()


def timed(fn, spent: list[float]):
    """`fn`, adding the seconds each call takes to spent[0]."""
    def wrapper(*args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            spent[0] += time.perf_counter() - t0
    return wrapper


def run_variant(name: str, iterations: int, warmup: int, folder: Path) -> tuple[list[float], float, int]:
    """Per-iteration wall times (s) of one run after `warmup` steps, the seconds per iteration spent inside the view's
    callbacks on the training thread, and the bytes its client received."""
    stamps: list[float] = []
    spent = [0.0]

    def note(info) -> None:
        stamps.append(time.perf_counter())
        if info.step == warmup:
            spent[0] = 0.0

    if name == "app":
        app = App(port=0, runs_root=folder / "runs", **SMALL_OUTPUTS)
        reader = Reader(app.server.get_port())
        on_step, app.queue.on_change = timed(app.queue.on_step, spent), timed(app.queue.on_change, spent)
        app.queue.on_step = lambda job, info: (on_step(job, info), note(info))
        app.queue.evaluate = None
        job = app.queue.submit(RunRequest("a blue cone", iterations=iterations))
        app.queue.wait(job)
        assert job.state.value == "done", job.message
        app.close()
    else:
        cfg = train.build_config("a blue cone", iterations=iterations, **SMALL_OUTPUTS)
        reader, view = None, None
        if name != "none":
            view = LiveView.serve(port=0, every=5 if name == "view/5" else 1, max_rate=4.0 if name == "view/5" else 0)
            reader = Reader(view.server.get_port())
        show = timed(view, spent) if view is not None else None

        def callback(info):
            if show is not None:
                show(info)
            note(info)

        train.train(cfg, folder / name.replace("/", "-"), progress=False, callback=callback, log=lambda m: None)
        if view is not None:
            time.sleep(0.5)  # let the last messages reach the client before it counts
            view.close()
    received = reader.bytes if reader is not None else 0
    if reader is not None:
        reader.close()
    dts = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    return dts, spent[0] / max(1, iterations - warmup), received


def paired(iterations: int, block: int = 10) -> tuple[float, float, int]:
    """Mean seconds per step with the view on and with it off, alternating in blocks of `block` steps of one run."""
    view = LiveView.serve(port=0, every=5, max_rate=4.0)
    reader = Reader(view.server.get_port())
    durations: dict[bool, list[float]] = {True: [], False: []}
    last = [None]

    def callback(info):
        on = (info.step // block) % 2 == 1
        if on:
            view(info)
        now = time.perf_counter()
        if last[0] is not None and info.step > block:  # the first block warms up
            durations[on].append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as tmp:
        cfg = train.build_config("a blue cone", iterations=iterations, **SMALL_OUTPUTS)
        train.train(cfg, Path(tmp) / "paired", progress=False, callback=callback, log=lambda m: None)
    view.close()
    reader.close()
    return statistics.fmean(durations[True]), statistics.fmean(durations[False]), len(durations[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--paired", type=int, default=0, help="also one run of this many iterations, view on/off "
                        "in alternating blocks of 10 steps (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    per_round: dict[str, list[float]] = {v: [] for v in VARIANTS}
    received: dict[str, list[int]] = {v: [] for v in VARIANTS}
    inside: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
            for name in order:
                dts, in_callback, nbytes = run_variant(name, args.iterations, args.warmup, Path(tmp) / f"round{r}")
                times[name] += dts
                inside[name].append(in_callback)
                per_round[name].append(statistics.fmean(dts))
                received[name].append(nbytes)
                print(f"round {r + 1}/{args.rounds} {name:7s} mean {1000 * statistics.fmean(dts):7.1f} ms/it "
                      f"({len(dts)} its, {1000 * in_callback:.2f} ms/it in the view's callbacks, client got {nbytes / 1e6:.2f} MB)",
                      flush=True)
    base = statistics.fmean(times["none"])
    print(f"\n{args.rounds} rounds × {args.iterations} iterations (first {args.warmup} dropped), cpu preset, "
          f"1 thread, {torch.__version__}\n")
    print("| variant | mean ms / iteration | vs none (pooled) | vs none (median of per-round ratios) | "
          "in the view's callbacks, ms / iteration (share of none's iteration) | MB sent per run |")
    print("|---|---|---|---|---|---|")
    for name in VARIANTS:
        ratios = [a / b for a, b in zip(per_round[name], per_round["none"])]
        cb = statistics.median(inside[name])
        print(f"| {name} | {1000 * statistics.fmean(times[name]):.1f} | {statistics.fmean(times[name]) / base:.3f} | "
              f"{statistics.median(ratios):.3f} | {1000 * cb:.2f} ({100 * cb / base:.2f}%) | "
              f"{statistics.median(received[name]) / 1e6:.2f} |")
    if args.paired:
        on, off, n = paired(args.paired)
        print(f"\npaired, one run of {args.paired} iterations, view/5 on and off in alternating blocks of 10 steps: "
              f"{1000 * on:.1f} ms/step on, {1000 * off:.1f} ms/step off → {on / off:.3f} ({n} steps each way)")


if __name__ == "__main__":
    main()
