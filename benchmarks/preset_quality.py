"""Is the cpu preset as good as before? Ground-truth quality of two settings of the default command, paired.

    python benchmarks/preset_quality.py --root /tmp/pq                  # before vs after, 5 held-out prompts × 3 seeds
    python benchmarks/preset_quality.py --root /tmp/pq --jobs 2         # two runs at a time (one thread each)
    python benchmarks/preset_quality.py --root /tmp/pq --variants before after bf16-300
    python benchmarks/preset_quality.py --root /tmp/pq --report         # the table only, from the runs there

Each run is `dreammapping generate PROMPT --seed S --threads 1 FLAGS --out ROOT/VARIANT-SLUG-sS` followed by
`dreammapping evaluate RUN --no-clip --no-fid` (ground truth: silhouette IoU, PSNR, SSIM, colour and saturation
error, attribute accuracy of the toy world's classifier on random views). The prompts are the toy world's held-out
colour–shape pairs (`toyworld.grammar.HELD_OUT`: never seen by the prior in training). A rerun only computes
what is missing (a run counts when its eval.json exists), so the benchmark can be stopped and resumed.

Variants (flags on top of the current cpu preset; `--threads 1` is added to every run):
    before      the preset of the first release, configs/cpu-v0.1.yaml: 300 steps, densification at steps 150 and
                200, its learning rates, the prior in fp32
    after       the preset as it is now (on a CPU with native bf16: 160 steps, densification at 81 and 108,
                learning rates 1.875× the first release's, the prior in bf16)
    bf16-300    the first release's preset with the prior in bf16 (bf16 alone)
    s200-lr1    200 steps (densification at 99 and 132) with the first release's learning rates (and the
                preset's dtype: bf16 where native)
    s200-lr1.5  the same with learning rates 1.5× the first release's

The report gives, per metric, the mean of the paired differences (variant − before) over prompts × seeds with a
95% cluster-bootstrap interval (`dreammapping.stats`: the prompt is the unit, seeds resampled within prompts), and the training seconds as the runs report them (only comparable between runs that ran
side by side: here they share the machine with each other).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import threading
from pathlib import Path

from dreammapping.stats import cluster_bootstrap
from dreammapping.toyworld.grammar import HELD_OUT, with_article

FIRST_RELEASE = f"--config {shlex.quote(str(Path(__file__).resolve().parents[1] / 'configs' / 'cpu-v0.1.yaml'))}"

S200 = "--iterations 200 --density.refine-start 90 --density.refine-stop 140 --density.refine-every 33"
LR1 = ("--lr.position-init 2e-3 --lr.position-final 2e-4 --lr.log-scales 1e-2 --lr.quats 5e-3 "
       "--lr.opacity-logits 5e-2 --lr.sh-dc 2e-2")
LR15 = ("--lr.position-init 3e-3 --lr.position-final 3e-4 --lr.log-scales 1.5e-2 --lr.quats 7.5e-3 "
        "--lr.opacity-logits 7.5e-2 --lr.sh-dc 3e-2")
VARIANTS = {
    "before": FIRST_RELEASE,
    "after": "",
    "bf16-300": f"{FIRST_RELEASE} --dtype bfloat16",
    "s200-lr1": f"{S200} {LR1}",
    "s200-lr1.5": f"{S200} {LR15}",
}
KEYS = ("iou", "color_error", "psnr", "ssim", "saturation_error", "attr_all")


def prompts() -> list[str]:
    return [with_article(f"{color} {shape}") for color, shape in HELD_OUT]


def run_name(variant: str, prompt: str, seed: int) -> str:
    return f"{variant}-{prompt.replace(' ', '-')}-s{seed}"


def run_one(root: Path, variant: str, prompt: str, seed: int, exe: str) -> None:
    out = root / run_name(variant, prompt, seed)
    log = root / "logs" / out.name
    log.parent.mkdir(parents=True, exist_ok=True)
    generate = [exe, "generate", prompt, "--seed", str(seed), "--threads", "1", *shlex.split(VARIANTS[variant]),
                "--out", str(out), "--overwrite"]
    with open(f"{log}.gen", "w") as f:
        subprocess.run(generate, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True)
    with open(f"{log}.eval", "w") as f:
        subprocess.run([exe, "evaluate", str(out), "--no-clip", "--no-fid"], stdout=f, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, check=True)
    print(f"done {out.name}", flush=True)


def run_all(root: Path, variants: list[str], seeds: list[int], jobs: int, exe: str) -> None:
    # Interleaved (prompt, seed) by (prompt, seed), so that a stopped benchmark still has complete pairs.
    todo = [(v, p, s) for s in seeds for p in prompts() for v in variants
            if not (root / run_name(v, p, s) / "eval.json").is_file()]
    lock, failures = threading.Lock(), []

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                job = todo.pop(0)
            try:
                run_one(root, *job, exe=exe)
            except subprocess.CalledProcessError as e:
                failures.append(f"{run_name(*job)}: exit {e.returncode} (see {root / 'logs'})")

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for line in failures:
        print(f"failed {line}", file=sys.stderr)


def load(root: Path, variant: str, prompt: str, seed: int) -> dict | None:
    run = root / run_name(variant, prompt, seed)
    try:
        metrics = json.loads((run / "eval.json").read_text())["metrics"]
        train = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    return {**{k: metrics.get(k) for k in KEYS}, "train_seconds": train.get("train_seconds"),
            "iterations": train.get("iterations"), "gaussians": train.get("gaussians")}


def report(root: Path, variants: list[str], seeds: list[int]) -> str:
    rows = {(v, p, s): load(root, v, p, s) for v in variants for p in prompts() for s in seeds}
    lines = [f"{len(prompts())} held-out prompts × seeds {seeds}; paired differences variant − before, mean [95% CI, prompts resampled, seeds within]",
             "", "| variant | n | " + " | ".join(KEYS) + " | train s (median) | Gaussians (median) |",
             "|---|---|" + "---|" * (len(KEYS) + 2)]
    for v in variants:
        pairs = [(p, rows[("before", p, s)], rows[(v, p, s)]) for p in prompts() for s in seeds
                 if rows.get(("before", p, s)) and rows.get((v, p, s))]
        own = [r for (vv, _, _), r in rows.items() if vv == v and r]
        cells = []
        for k in KEYS:
            if v == "before":
                own_k = [r[k] for r in own if r[k] is not None]
                cells.append(f"{statistics.fmean(own_k):.3f}" if own_k else "—")
            else:
                keep = [(p, a[k] - b[k]) for p, b, a in pairs if a[k] is not None and b[k] is not None]
                e = cluster_bootstrap([d for _, d in keep], [p for p, _ in keep])
                cells.append(f"{e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]")
        n = len(own) if v == "before" else len(pairs)
        med = (lambda key: statistics.median(r[key] for r in own) if own else float("nan"))
        lines.append(f"| {v} | {n} | " + " | ".join(cells) + f" | {med('train_seconds'):.1f} | "
                     f"{med('gaussians'):.0f} |")
    lines += ["", "(the `before` row gives the means themselves; colour error: lower is better; saturation error: "
              "closer to 0 is better)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="folder of the runs (made if missing)")
    ap.add_argument("--variants", nargs="+", default=["before", "after"], choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each one thread)")
    ap.add_argument("--report", action="store_true", help="only print the table of the runs already there")
    ap.add_argument("--exe", default=str(Path(sys.executable).with_name("dreammapping")),
                    help="the dreammapping command to run")
    args = ap.parse_args()
    variants = ["before", *[v for v in args.variants if v != "before"]]
    if not args.report:
        args.root.mkdir(parents=True, exist_ok=True)
        run_all(args.root, variants, args.seeds, args.jobs, args.exe)
    print(report(args.root, variants, args.seeds))


if __name__ == "__main__":
    main()
