"""Do the paper's claims hold on the embedded toy world? A sharded, resumable benchmark and its report.

    python benchmarks/claims.py plan                      # list the runs in order and which are done
    python benchmarks/claims.py run [--shard 0/2]         # train + score what is missing, one record per run
    python benchmarks/claims.py rescore                   # recompute records from the snapshots on disk
    python benchmarks/claims.py report                    # docs/claims.md + docs/claims/*.png from the records

**The guidance scale.** The paper writes CFG as ε_c + s·(ε_c − ε_u) (its Eq. 4); `priors.predict_noise` uses
diffusers' ε_u + s'·(ε_c − ε_u). They are equal for s' = s + 1, so the paper's s = 7.5 is `guidance_scale=8.5`
here (`PAPER_CFG`), for every method.

**What a run is.** An ordinary run folder made by `dreammapping.train.train(build_config(prompt, preset="cpu",
method=..., seed=..., iterations=...))`, under `--root` (default /work/claims-runs: outside git). The train
callback writes the scene every `--snapshot-every` steps to `snapshots/step00050.ply` …, so the metric-vs-
iteration curves come from the very runs that are compared. A run with `gaussians.ply` + `metrics.json` for the
planned iterations is finished; one with a checkpoint is resumed (checkpoint every 100 steps); a stopped runner
loses at most the steps since the last checkpoint.

**What is committed.** One JSON record per finished run in `--records` (default benchmarks/results/claims/):
prompt, seed, variant, method options, the resolved config, timings, and every metric at every snapshot (the
final snapshot also with the classifier-feature 3D-FID). `report` reads only these records, so every number in
docs/claims.md can be recomputed without rerunning anything. A record whose `metrics_version` is older than
`METRICS_VERSION` is recomputed from the snapshots by `run` / `rescore` (no training).

**Order.** Seed-major: every prompt × core variant for seed 0, then the baselines (CSD, NFSD, ISM, VSD; seed 0
only, on `BASELINE_PROMPTS`), then the core for seed 1, then seed 2. A run stopped anywhere leaves a balanced,
paired set: every finished (prompt, seed) has all core variants before the next one starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = Path(os.environ.get("DREAMMAPPING_CLAIMS_ROOT", "/work/claims-runs"))
DEFAULT_RECORDS = REPO / "benchmarks" / "results" / "claims"
PAPER_CFG = 7.5  # the paper's s in ε_c + s(ε_c − ε_u)
GUIDANCE_SCALE = PAPER_CFG + 1.0  # the same CFG in diffusers' form ε_u + s'(ε_c − ε_u), which priors.py uses
METRICS_VERSION = 1  # bump when the metrics a record holds change; stale records are recomputed from snapshots

# variant → (guidance method, that method's options); the guidance scale is added for all of them.
CORE: dict[str, tuple[str, dict]] = {
    "sds": ("sds", {}),
    "vdm": ("vdm", {"dca": False}),
    "vdm+dca100": ("vdm", {"dca": True, "dca_cutoff": 100}),
    "vdm+dca300": ("vdm", {"dca": True, "dca_cutoff": 300}),
    "vdm+dca500": ("vdm", {"dca": True, "dca_cutoff": 500}),
}
BASELINES: dict[str, tuple[str, dict]] = {"csd": ("csd", {}), "nfsd": ("nfsd", {}), "ism": ("ism", {}), "vsd": ("vsd", {})}
VARIANTS = {**CORE, **BASELINES}

# Ten single objects, held-out pairs (never seen by the prior) alternating with seen ones, so that a partial run
# covers both kinds. All five of toyworld.grammar.HELD_OUT are here (checked in tests).
PROMPTS: tuple[str, ...] = (
    "a red cube", "a blue cone", "a green sphere", "a red cylinder", "a yellow cylinder",
    "a green torus", "a purple torus", "a yellow cube", "a blue sphere", "a purple sphere",
)
BASELINE_PROMPTS: tuple[str, ...] = PROMPTS[:4]  # the baselines: fewer prompts, seed 0 only (said in the report)
SEEDS: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class Job:
    prompt: str
    variant: str
    seed: int

    @property
    def name(self) -> str:
        from dreammapping.train import slugify

        return f"{slugify(self.prompt, max_len=60)}__{self.variant}__seed{self.seed}"


@dataclass
class Plan:
    root: Path = DEFAULT_ROOT
    records: Path = DEFAULT_RECORDS
    iterations: int = 300
    snapshot_every: int = 50
    fid: bool = False  # classifier 3D-FID at the last snapshot (costs one prior sampling per prompt; cached)
    prompts: tuple[str, ...] = PROMPTS
    seeds: tuple[int, ...] = SEEDS
    core: tuple[str, ...] = tuple(CORE)
    baselines: tuple[str, ...] = tuple(BASELINES)
    baseline_prompts: tuple[str, ...] = BASELINE_PROMPTS
    eval_resolution: int = 64
    eval_views: int = 16
    fid_reference: int = 16

    def jobs(self) -> list[Job]:
        """Seed-major; the baselines (seed 0 only) right after seed 0 of the core."""
        out: list[Job] = []
        for seed in self.seeds:
            out += [Job(p, v, seed) for p in self.prompts for v in self.core]
            if seed == self.seeds[0]:
                out += [Job(p, v, seed) for p in self.baseline_prompts for v in self.baselines]
        return out

    def run_dir(self, job: Job) -> Path:
        return self.root / job.name

    def record_path(self, job: Job) -> Path:
        return self.records / f"{job.name}.json"


def train_options(plan: Plan, job: Job) -> dict:
    """GenerateConfig fields of one run on top of the cpu preset."""
    method, options = VARIANTS[job.variant]
    return dict(method=method, method_options={method: {**options, "guidance_scale": GUIDANCE_SCALE}},
                seed=job.seed, iterations=plan.iterations, device="cpu", threads=1, checkpoint_every=100)


# ================================================================================================ state of a run
def load_record(path: Path) -> dict | None:
    """The record at `path`, or None when missing or unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_is_current(record: dict | None, plan: Plan) -> bool:
    return bool(record) and record.get("metrics_version") == METRICS_VERSION \
        and record.get("iterations") == plan.iterations and bool(record.get("snapshots"))


def run_finished(run_dir: Path, iterations: int) -> bool:
    """gaussians.ply + metrics.json of a run trained for `iterations` steps."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return (run_dir / "gaussians.ply").is_file() and int(metrics.get("iterations", -1)) == iterations


def status(plan: Plan, job: Job) -> str:
    """"done" (current record), "score" (trained, record missing or stale), "resume" (checkpoint), "train"."""
    if record_is_current(load_record(plan.record_path(job)), plan):
        return "done"
    run_dir = plan.run_dir(job)
    if run_finished(run_dir, plan.iterations):
        return "score"
    if (run_dir / "checkpoint.pt").is_file() and (run_dir / "config.yaml").is_file():
        return "resume"
    return "train"


# ================================================================================================ training
def train_job(plan: Plan, job: Job, resume: bool, log=print) -> None:
    """Train (or continue) one run, writing a snapshot .ply every `plan.snapshot_every` steps."""
    from dreammapping.export import save_ply
    from dreammapping.train import build_config, train

    run_dir = plan.run_dir(job)
    snapshots = run_dir / "snapshots"
    cfg = build_config(job.prompt, preset="cpu", out=str(run_dir), overwrite=not resume, **train_options(plan, job))

    def snapshot(step: int, info: dict) -> None:
        if step % plan.snapshot_every == 0 or step == plan.iterations:
            save_ply(snapshots / f"step{step:05d}.ply", info["scene"])  # save_ply writes atomically

    snapshots.mkdir(parents=True, exist_ok=True)
    train(cfg, run_dir, resume=resume, progress=False, callback=snapshot, log=lambda msg: log(f"    {msg}"))


# ================================================================================================ scoring
def eval_options(plan: Plan, last: bool):
    """Every snapshot: the canonical-view ground-truth metrics; the last one also the random-view metrics
    (attribute accuracy, and the classifier 3D-FID when `plan.fid`)."""
    from dreammapping.evaluate import EvalOptions

    return EvalOptions(resolution=plan.eval_resolution, num_views=plan.eval_views if last else 0,
                       fid_reference=plan.fid_reference, clip=False, fid=plan.fid and last, device="cpu")


def score_job(plan: Plan, job: Job) -> dict:
    """The record of a finished run: metrics at every snapshot (FID only at the last), timings, config."""
    import yaml

    from dreammapping.evaluate import _jsonable, evaluate_gaussians
    from dreammapping.export import load_ply
    from dreammapping.files import atomic_write_text

    run_dir = plan.run_dir(job)
    t0 = time.perf_counter()
    steps = sorted(int(p.stem[4:]) for p in (run_dir / "snapshots").glob("step*.ply"))
    if not steps or steps[-1] != plan.iterations:
        raise RuntimeError(f"{run_dir}: snapshots end at {steps[-1] if steps else 'none'}, not {plan.iterations}")
    snapshots, skipped = {}, {}
    for step in steps:
        last = step == steps[-1]
        gaussians = load_ply(run_dir / "snapshots" / f"step{step:05d}.ply")
        metrics, skipped_here = evaluate_gaussians(gaussians, job.prompt, "embedded", eval_options(plan, last))
        metrics["gaussians"] = float(len(gaussians))
        snapshots[str(step)] = metrics
        if last:
            skipped = skipped_here
    train_metrics = json.loads((run_dir / "metrics.json").read_text())
    method, options = VARIANTS[job.variant]
    record = {
        "prompt": job.prompt, "seed": job.seed, "variant": job.variant, "method": method,
        "method_options": {**options, "guidance_scale": GUIDANCE_SCALE}, "paper_cfg": PAPER_CFG,
        "iterations": plan.iterations, "snapshot_every": plan.snapshot_every,
        "metrics_version": METRICS_VERSION,
        "eval_settings": dataclasses.asdict(eval_options(plan, True)),
        "timings": {"train_seconds": train_metrics.get("train_seconds"), "it_per_s": train_metrics.get("it_per_s"),
                    "sec_per_it": (train_metrics.get("train_seconds") or float("nan")) / plan.iterations,
                    "score_seconds": round(time.perf_counter() - t0, 2),
                    "load_average_at_scoring": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "final": snapshots[str(steps[-1])],
        "snapshots": snapshots,
        "skipped": skipped,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "run_dir": str(run_dir),
    }
    atomic_write_text(plan.record_path(job), json.dumps(_jsonable(record), indent=1, sort_keys=True) + "\n")
    return record


# ================================================================================================ the runner
def select_shard(jobs: list[Job], shard: str | None) -> list[Job]:
    """`shard` "i/n" keeps jobs i, i+n, i+2n, … (in order); None keeps all."""
    if not shard:
        return jobs
    i, n = (int(x) for x in shard.split("/"))
    if not 0 <= i < n:
        raise ValueError(f"--shard {shard}: need 0 ≤ i < n")
    return jobs[i::n]


def pending(plan: Plan, jobs: list[Job]) -> list[tuple[Job, str]]:
    """(job, what to do) for every job that is not done, in plan order."""
    return [(job, s) for job in jobs for s in [status(plan, job)] if s != "done"]


def run(plan: Plan, shard: str | None = None, max_runs: int | None = None, log=print) -> int:
    """Do what is missing, in order; returns the number of runs that failed."""
    todo = pending(plan, select_shard(plan.jobs(), shard))
    log(f"{len(todo)} runs to do (train / resume / score) of {len(select_shard(plan.jobs(), shard))}")
    failures = 0
    for k, (job, what) in enumerate(todo[:max_runs] if max_runs else todo, 1):
        t0 = time.perf_counter()
        log(f"[{k}/{len(todo)}] {time.strftime('%H:%M:%S')} {what:<6} {job.name}")
        try:
            if what in ("train", "resume"):
                train_job(plan, job, resume=what == "resume", log=log)
            record = score_job(plan, job)
        except Exception as error:  # noqa: BLE001 — one broken run is logged; the others go on
            failures += 1
            log(f"    FAILED {type(error).__name__}: {' '.join(str(error).split())[:300]}")
            continue
        f = record["final"]
        log(f"    done in {time.perf_counter() - t0:.0f} s ({record['timings']['train_seconds']} s training): "
            + ", ".join(f"{key} {f[key]:.3f}" for key in ("iou", "psnr", "color_error", "saturation_error",
                                                          "edge_f_score", "hf_noise") if f.get(key) is not None))
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/claims.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("plan", "run", "rescore", "report"))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="run folders (outside git)")
    parser.add_argument("--records", type=Path, default=DEFAULT_RECORDS, help="committed per-run JSON records")
    parser.add_argument("--iterations", type=int, default=Plan.iterations)
    parser.add_argument("--snapshot-every", type=int, default=Plan.snapshot_every)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--shard", default=None, help="i/n: this process does jobs i, i+n, …")
    parser.add_argument("--max-runs", type=int, default=None)
    parser.add_argument("--fid", action="store_true", help="also the classifier 3D-FID of each final scene")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="report: where claims.md goes")
    args = parser.parse_args(argv)
    plan = Plan(root=args.root, records=args.records, iterations=args.iterations,
                snapshot_every=args.snapshot_every, seeds=tuple(args.seeds), fid=args.fid)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.command == "plan":
        for k, job in enumerate(plan.jobs()):
            print(f"{k:4d} {status(plan, job):<6} {job.name}")
        return 0
    if args.command == "run":
        return 1 if run(plan, args.shard, args.max_runs, log) else 0
    if args.command == "rescore":
        for job in plan.jobs():
            if run_finished(plan.run_dir(job), plan.iterations) and status(plan, job) == "score":
                log(f"rescore {job.name}")
                score_job(plan, job)
        return 0
    from claims_report import write_report  # benchmarks/claims_report.py: tables, CIs, figures

    write_report(plan, args.docs, command="python benchmarks/claims.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
