"""Where the default command's time goes, this tree against the previous release, measured side by side in one run.

    python benchmarks/generate.py                      # `dreammapping generate "a blue cone"`, old vs new, 1 round
    python benchmarks/generate.py --rounds 3           # alternating old/new/new/old…, medians
    python benchmarks/generate.py --quick              # 30 iterations: a dry run of the benchmark itself
    python benchmarks/generate.py --old-rev HEAD~3 --args "--method sds"

Each run is a fresh process (`python benchmarks/generate.py --child …` with PYTHONPATH at that release's `src/`),
timed from the parent's `subprocess` call to its exit, so the wall time includes the interpreter's start, every
import, loading the prior, training and writing every output — what a user waits for. The previous release is
checked out with `git worktree add` into a temporary folder (default: `--old-rev ca719f3`, the release before the
speed work) and removed afterwards.

Phases come from timing hooks the child installs before it imports anything of ours (so they work on any release
that has the same function names; a hook whose target is missing is reported, not fatal):

    start-up: interpreter   the parent's wall time minus the child's own (Python's start, before the first line)
    start-up: imports       every first-time import (importlib's `_find_and_load`), wherever it happens
    start-up: prior load    DiffusionPrior.from_pretrained (reading weights; its imports count as imports)
    start-up: init          the initial Gaussians (`init.initialise`)
    text encoder            DiffusionPrior.text_embedding (cached per string: a call per prompt and view tag)
    prior UNet              diffusers' UNet2DConditionModel.forward (CFG's two halves are one call)
    Mψ                      VDM's operator: ULite.forward and its Adam step
    render                  rasterize (forward) and the blending's hand-written backward
    backward (rest)         Tensor.backward minus the blending: projection, SH, loss, Mψ's backward
    optimizer θ             the Gaussians' Adam step
    densification           DensityStrategy.step_post_backward
    checkpoints             save_checkpoint
    outputs: …              save_ply, the turntable(s) and view grid (their rendering and encoding)
    other (…)               the rest, before the first training render / in the loop / after it

Phases are exclusive (a nested hooked call is charged to the inner phase; inside an output phase everything is
charged to the output), so they add up to the wall time. The child's it/s is the run's own (metrics.json:
iterations / training seconds). The default command runs with the environment's thread settings removed
(OMP_NUM_THREADS, MKL_NUM_THREADS, OMP_WAIT_POLICY, GOMP_SPINCOUNT), as a user's shell would have them; the load
average before each run is printed, because on a shared machine it decides the numbers.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # the child's own clock starts here, before any import of ours or torch's

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_REV = "ca719f3"  # the release before the speed work (issue 16)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
PHASE_ORDER = (
    "start-up: interpreter", "start-up: imports", "start-up: prior load", "start-up: init", "other (start-up)",
    "text encoder", "prior UNet", "Mψ", "render", "backward (rest)", "optimizer θ", "densification", "checkpoints",
    "other (loop)", "outputs: ply", "outputs: render frames", "outputs: turntable encode", "outputs: views",
    "other (end)",
)


# ================================================================================================ the child
class PhaseClock:
    """Exclusive time per phase: a stack of phases; time between two events goes to the phase on top."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.stack: list[str] = ["other"]
        self.stage = "start-up"  # → "loop" at the first training render, → "end" at the first output
        self.last = _T0
        self.loop_start = self.loop_end = self.loop_threads = None

    def _charge(self, now: float) -> None:
        top = self.stack[-1]
        name = f"other ({self.stage})" if top == "other" else top
        self.totals[name] = self.totals.get(name, 0.0) + (now - self.last)
        self.last = now

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        self._charge(now)
        top = self.stack[-1]
        if top.startswith("outputs") and not phase.startswith("outputs"):
            phase = top  # rendering, imports … inside an output are the output's cost
        elif phase == "render" and self.stage == "start-up":
            self.stage, self.loop_start = "loop", now
            import torch

            self.loop_threads = torch.get_num_threads()  # what the run set (train restores the caller's at the end)
        if phase.startswith("outputs") and self.stage != "end":
            self.stage, self.loop_end = "end", now
        self.stack.append(phase)
        self.calls[phase] = self.calls.get(phase, 0) + 1

    def exit(self) -> None:
        self._charge(time.perf_counter())
        self.stack.pop()

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            self.enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()

        timed.__wrapped__ = fn
        timed.__name__ = getattr(fn, "__name__", "timed")
        timed.__qualname__ = getattr(fn, "__qualname__", timed.__name__)
        timed.__doc__ = getattr(fn, "__doc__", None)
        return timed


def install_hooks(clock: PhaseClock) -> dict[str, bool]:
    """Wrap the phase functions as their modules are imported; returns target → found (filled in as it goes)."""
    import _frozen_importlib as bootstrap

    import dreammapping  # first, as the CLI does: it sets the OpenMP wait policy before torch loads libgomp

    found: dict[str, bool] = {}
    # module-level functions: (module, name, phase); every reference to the function in our loaded modules is
    # replaced, so `from x import f` aliases are timed too
    functions = [
        ("dreammapping.priors", "DiffusionPrior.from_pretrained", "start-up: prior load"),
        ("dreammapping.priors", "DiffusionPrior.text_embedding", "text encoder"),
        ("dreammapping.init", "initialise", "start-up: init"),
        ("dreammapping.guidance.ulite", "ULite.forward", "Mψ"),
        ("dreammapping.render", "rasterize", "render"),
        ("dreammapping.strategy", "DensityStrategy.step_post_backward", "densification"),
        ("dreammapping.train", "save_checkpoint", "checkpoints"),
        ("dreammapping.export", "save_ply", "outputs: ply"),
        ("dreammapping.scene", "render_frames", "outputs: render frames"),
        ("dreammapping.export", "save_turntable", "outputs: turntable encode"),
        ("dreammapping.export", "save_frames_row", "outputs: views"),
        ("diffusers.models.unets.unet_2d_condition", "UNet2DConditionModel.forward", "prior UNet"),
    ]
    for module, name, _ in functions:
        found[f"{module}.{name}"] = False
    originals: dict[int, object] = {}  # id(original function) → its wrapper

    def patch_module(mod) -> None:
        for module, name, phase in functions:
            if mod.__name__ != module:
                continue
            owner, attr = (mod, name) if "." not in name else (getattr(mod, name.split(".")[0], None), name.split(".")[1])
            if owner is None or attr not in vars(owner):
                continue
            raw = vars(owner)[attr]
            fn = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
            if getattr(fn, "__wrapped__", None) is not None and id(fn.__wrapped__) in originals:
                continue
            timed = clock.wrap(phase, fn)
            originals[id(fn)] = timed
            setattr(owner, attr, type(raw)(timed) if isinstance(raw, (classmethod, staticmethod)) else timed)
            found[f"{module}.{name}"] = True
        if mod.__name__ == "dreammapping.render":  # the blending's hand-written backward (autograd.Function)
            import torch

            for value in list(vars(mod).values()):
                if isinstance(value, type) and issubclass(value, torch.autograd.Function) \
                        and "backward" in vars(value) and not getattr(value, "_timed", False):
                    value.backward = staticmethod(clock.wrap("render", vars(value)["backward"].__func__))
                    value._timed = True
                    found[f"{value.__name__}.backward"] = True

    def rebind_aliases() -> None:
        for name, mod in list(sys.modules.items()):
            if mod is None or not name.startswith("dreammapping"):
                continue
            for attr, value in list(vars(mod).items()):
                wrapper = originals.get(id(value))
                if wrapper is not None and callable(value):
                    setattr(mod, attr, wrapper)

    original_find_and_load = bootstrap._find_and_load

    def find_and_load(name, import_):
        clock.enter("start-up: imports")
        try:
            module = original_find_and_load(name, import_)
        finally:
            clock.exit()
        if name.startswith(("dreammapping", "diffusers.models.unets.unet_2d_condition")):
            patch_module(module)
            rebind_aliases()
        return module

    bootstrap._find_and_load = find_and_load

    import torch  # after the hook: torch's import time is charged to imports

    original_backward = torch.Tensor.backward
    torch.Tensor.backward = clock.wrap("backward (rest)", original_backward)

    def optimizer_pre(optimizer, args, kwargs):
        theta = any("name" in group for group in optimizer.param_groups)  # the Gaussians' groups are named
        clock.enter("optimizer θ" if theta else "Mψ")

    def optimizer_post(optimizer, args, kwargs):
        clock.exit()

    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    register_optimizer_step_pre_hook(optimizer_pre)
    register_optimizer_step_post_hook(optimizer_post)
    return found


def child(out_json: str, argv: list[str]) -> int:
    clock = PhaseClock()
    found = install_hooks(clock)
    from dreammapping.cli import main

    code = main(argv)
    end = time.perf_counter()
    clock._charge(end)
    run_dir = Path(argv[argv.index("--out") + 1])
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    Path(out_json).write_text(json.dumps({
        "exit_code": code, "child_seconds": end - _T0, "phases": clock.totals, "calls": clock.calls,
        "loop_seconds": (clock.loop_end or end) - (clock.loop_start or end), "hooks": found,
        "it_per_s": metrics.get("it_per_s"), "train_seconds": metrics.get("train_seconds"),
        "iterations": metrics.get("iterations"), "gaussians": metrics.get("gaussians"),
        "torch_threads": clock.loop_threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "file": str(Path(sys.modules["dreammapping"].__file__).resolve()),
    }))
    return code


# ================================================================================================ the parent
def checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(where), rev],
                   check=True, capture_output=True)
    return where / "src"


def run_one(label: str, src: Path, generate_args: list[str], workdir: Path, nice: int, keep_env: bool) -> dict:
    env = dict(os.environ)
    if not keep_env:
        for name in THREAD_ENV:
            env.pop(name, None)
    env["PYTHONPATH"] = str(src)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    out_json = workdir / f"{label}.json"
    out_json.unlink(missing_ok=True)
    run_dir = workdir / f"run-{label}"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(out_json), "--",
               "generate", *generate_args, "--out", str(run_dir), "--overwrite"]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(workdir / f"{label}.log", "w") as log:
        proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out_json.is_file():
        tail = (workdir / f"{label}.log").read_text()[-2000:]
        raise SystemExit(f"{label}: exit code {proc.returncode}\n{tail}")
    result = json.loads(out_json.read_text())
    result["wall"] = wall
    result["load_before"] = load
    result["phases"]["start-up: interpreter"] = max(wall - result["child_seconds"], 0.0)
    return result


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def table(results: dict[str, list[dict]], labels: tuple[str, str]) -> str:
    old, new = labels

    def row(name: str, a: float, b: float, unit: str = "s", higher_is_better: bool = False) -> str:
        ratio = (b / a if higher_is_better else a / b) if a and b and not math.isnan(a + b) else float("nan")
        fmt = (lambda v: f"{v:.2f}") if unit == "it/s" else (lambda v: f"{v:.1f}")
        return f"| {name} | {fmt(a)} | {fmt(b)} | {ratio:.2f}× |"

    def phase(label: str, name: str) -> float:
        return median([r["phases"].get(name, 0.0) for r in results[label]])

    lines = [f"| phase (median of {len(results[old])}) | {old} s | {new} s | speed-up |", "|---|---|---|---|"]
    lines.append(row("**wall time**", median([r["wall"] for r in results[old]]),
                     median([r["wall"] for r in results[new]])))
    lines.append(row("training loop (first render → first output)", median([r["loop_seconds"] for r in results[old]]),
                     median([r["loop_seconds"] for r in results[new]])))
    lines.append(row("it/s (the run's own)", median([r["it_per_s"] for r in results[old]]),
                     median([r["it_per_s"] for r in results[new]]), unit="it/s", higher_is_better=True))
    names = list(PHASE_ORDER) + sorted({k for rs in results.values() for r in rs for k in r["phases"]}
                                       - set(PHASE_ORDER))
    for name in names:
        a, b = phase(old, name), phase(new, name)
        if a < 0.05 and b < 0.05:
            continue
        lines.append(row(name, a, b))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1], argv[3:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default="a blue cone")
    p.add_argument("--args", default="", help="more `generate` options for both releases, e.g. \"--seed 1\"")
    p.add_argument("--rounds", type=int, default=1, help="old/new pairs, alternating which goes first")
    p.add_argument("--quick", action="store_true", help="30 iterations (a check of the benchmark, not a result)")
    p.add_argument("--iterations", type=int, default=None, help="pass --iterations to both (default: the preset's)")
    p.add_argument("--old-rev", default=OLD_REV, help="git revision of the previous release")
    p.add_argument("--old-src", default=None, help="use this src/ folder as the previous release (no checkout)")
    p.add_argument("--only", choices=("old", "new"), default=None, help="run one side only")
    p.add_argument("--nice", type=int, default=0, help="run the children under `nice -n N` (dry runs on a busy box)")
    p.add_argument("--keep-thread-env", action="store_true",
                   help=f"keep {', '.join(THREAD_ENV)} from this environment (default: removed)")
    p.add_argument("--json", default=None, help="also write every run's raw numbers here")
    args = p.parse_args(argv)

    generate_args = [args.prompt, *shlex.split(args.args)]
    iterations = 30 if args.quick and args.iterations is None else args.iterations
    if iterations is not None:
        generate_args += ["--iterations", str(iterations)]
    labels = ("old", "new")
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        tmp = Path(tmp)
        sources = {"new": REPO / "src"}
        worktree = None
        if args.only != "new":
            if args.old_src:
                sources["old"] = Path(args.old_src).resolve()
            else:
                worktree = tmp / "old-release"
                sources["old"] = checkout(args.old_rev, worktree)
        results: dict[str, list[dict]] = {"old": [], "new": []}
        try:
            for r in range(args.rounds):
                order = labels if r % 2 == 0 else labels[::-1]
                for label in order:
                    if args.only and label != args.only:
                        continue
                    res = run_one(f"{label}{r}", sources[label], generate_args, tmp, args.nice, args.keep_thread_env)
                    results[label].append(res)
                    missing = [k for k, ok in res["hooks"].items() if not ok]
                    print(f"round {r} {label}: wall {res['wall']:.1f} s, {res['it_per_s']} it/s, "
                          f"{res['torch_threads']} torch threads, load average before {res['load_before']:.2f}"
                          + (f"; hooks not found: {', '.join(missing)}" if missing else ""), flush=True)
        finally:
            if worktree is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                               capture_output=True, check=False)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        if args.only is None:
            print()
            print(f"`dreammapping generate {shlex.join(generate_args)}`: previous release ({args.old_src or args.old_rev})"
                  f" vs this tree; speed-up = old / new")
            print(table(results, labels))
        else:
            for res in results[args.only]:
                print(json.dumps({k: res[k] for k in ("wall", "it_per_s", "phases")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
