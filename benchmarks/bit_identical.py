"""Do two versions of the package give bit-identical seeded runs? (A restructure must not change behaviour.)

    python benchmarks/bit_identical.py --before ca719f3                 # that commit vs this working tree
    python benchmarks/bit_identical.py --before ca719f3 --after main    # two commits

Each side's `src/` is taken with `git archive REF src` into a temporary folder (the working tree is used as it is
for `--after worktree`, the default) and each side runs in a subprocess with PYTHONPATH pointing at that `src/`
(checked: the subprocess reports which package it imported). The runs are short seeded runs of the embedded cpu
preset, one per guidance method plus a resumed one, with densification moved early so that it is exercised, the cpu
preset at its own 160 steps and densification schedule (2 views a step), and a
few steps of `text2img`; one subprocess per side runs them all in turn through `dreammapping.cli.main`. Then, per run, every output is compared:

- `checkpoint.pt`: every tensor (Gaussians, Adam state, Mψ / LoRA parameters, strategy statistics, RNG states) and
  every plain value except the wall-clock `train_seconds`; loaded with `weights_only=True`;
- `gaussians.ply`, `views.png`, `turntable.gif`, text2img's `.png`: byte for byte;
- `loss.csv` without its `seconds` column, `metrics.json` without its timings;
- `config.yaml` is compared as the configuration it loads into (its layout may change), by loading both files with
  the *after* side's package.

Prints one row per run: identical?, the largest |difference| over all tensors and the files that differ. Exit code
0 when every run is identical, 1 otherwise. Subprocesses run at nice 15, one thread each: start the script itself
without `nice` (niceness adds up; at 19 the runs starve on a busy machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a red cube"
# Short runs: 16 steps of batch 2, densification from step 4 every 4 steps, a tiny turntable.
SHORT = ["--iterations", "16", "--batch", "2", "--checkpoint-every", "8", "--log-every", "2",
         "--density.refine-start", "4", "--density.refine-every", "4", "--density.refine-stop", "14",
         "--turntable-size", "32", "--turntable-frames", "3", "--threads", "1"]
GENERATE_RUNS: dict[str, list[str]] = {
    "sds": ["--method", "sds"],
    "vdm+dca": ["--method", "vdm", "--guidance.dca-cutoff", "300"],
    "csd": ["--method", "csd", "--guidance.negative-scale", "0.5", "--guidance.negative-scale-end", "0.0"],
    "ism": ["--method", "ism", "--guidance.xs-inv-steps", "2"],
    "vsd": ["--method", "vsd"],
}
# Mψ of the paper's size, another seed, random backgrounds: stopped after 8 steps, then resumed
RESUMED = ["--method", "vdm", "--guidance.operator-size", "ulite", "--seed", "3", "--background", "random"]
TEXT2IMG = ["text2img", PROMPT, "--method", "sds", "--steps", "5", "--seed", "2"]
# The cpu preset at its own length and densification schedule (only the outputs made smaller)
CPU_PRESET = ["--batch", "2", "--checkpoint-every", "80", "--turntable-size", "32", "--turntable-frames", "3",
              "--threads", "1"]


def export_tree(ref: str, dest: Path) -> Path:
    """REF's src/ under dest (this working tree's src/ for "worktree"; a folder that holds dreammapping/ as it is)."""
    if ref == "worktree":
        return REPO / "src"
    if (Path(ref) / "dreammapping").is_dir():
        return Path(ref)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def _env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONHASHSEED": "0"}


def _run(args: list[str], src: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(src), capture_output=True, text=True,
                          preexec_fn=lambda: os.nice(15))


WORKER = """
import json, sys
import dreammapping
from dreammapping.cli import main
print(json.dumps({"package": dreammapping.__file__}), flush=True)
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code != 0:
        sys.exit(f"{argv}: exit code {code}")
"""


def plan_side(out: Path) -> dict[str, tuple[Path, list[list[str]]]]:
    """name → (its folder / image under `out`, the command lines that make it)."""
    plan = {}
    for name, extra in GENERATE_RUNS.items():
        folder = out / name.replace(" ", "-").replace("+", "-")
        plan[name] = folder, [["generate", PROMPT, *SHORT, *extra, "--out", str(folder)]]
    # resumed: 8 steps, then continued to 16 from the checkpoint (the checkpoint / RNG / loss-log path)
    folder = out / "resumed"
    plan["vdm ulite resumed 8→16"] = folder, [
        ["generate", PROMPT, *SHORT, *RESUMED, "--iterations", "8", "--out", str(folder)],
        ["generate", "--resume", str(folder), "--iterations", "16"]]
    # the cpu preset's own schedule (densification at steps 81 and 108 of its 160), 2 views a step
    folder = out / "cpu-preset"
    plan["cpu preset 160 steps"] = folder, [["generate", PROMPT, *CPU_PRESET, "--out", str(folder)]]
    image = out / "text2img.png"
    plan["text2img sds"] = image, [[*TEXT2IMG, "--out", str(image)]]
    return {name: v for name, v in plan.items() if ONLY is None or name in ONLY}


ONLY: set[str] | None = None  # --only: the runs to make (all when None)


def run_sides(sides: list[tuple[Path, Path]], parallel: bool) -> list[dict[str, Path]]:
    """Every run of each (src, out) side: one subprocess per side (the imports are paid once), or with `parallel`
    one per run, all at once (each niced process gets its own share of a busy machine). → name → folder, per side."""
    jobs = []  # (src, out, command lines) per subprocess
    for src, out in sides:
        out.mkdir(parents=True)
        plan = plan_side(out)
        groups = [cmds for _, cmds in plan.values()] if parallel else [[c for _, cmds in plan.values() for c in cmds]]
        jobs += [(src, out, group) for group in groups]

    def start(src: Path, out: Path, group: list[list[str]]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(group)], cwd=out, env=_env(src),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: os.nice(15))

    results = []  # (src, process, stdout, stderr)
    if parallel:
        procs = [(src, start(src, out, group)) for src, out, group in jobs]
        results = [(src, proc, *proc.communicate()) for src, proc in procs]
    else:  # one side after the other
        for src, out, group in jobs:
            proc = start(src, out, group)
            results.append((src, proc, *proc.communicate()))
    for src, proc, stdout, stderr in results:
        if proc.returncode != 0:
            raise RuntimeError(f"runs on {src} failed:\n{stderr[-3000:]}")
        package = Path(json.loads(stdout.splitlines()[0])["package"])
        if not package.resolve().is_relative_to(src.resolve()):
            raise RuntimeError(f"PYTHONPATH={src} imported {package}: the comparison would not test that tree")
    return [{name: folder for name, (folder, _) in plan_side(out).items()} for _, out in sides]


# ------------------------------------------------------------------------------------------------ comparison
def _tensor_diff(a, b, where: str, diffs: list[str]) -> float:
    """Largest |a − b| over the tensors of two nested structures; names of the places that differ go to diffs."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape \
                or a.dtype != b.dtype:
            diffs.append(f"{where} (shape/dtype)")
            return float("inf")
        if torch.equal(a, b):
            return 0.0
        diffs.append(where)
        if a.dtype.is_floating_point:
            return float((a.double() - b.double()).abs().max())
        return float((a.long() - b.long()).abs().max()) if a.numel() else float("inf")
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            diffs.append(f"{where} keys")
        return max([_tensor_diff(a[k], b[k], f"{where}.{k}", diffs) for k in set(a) & set(b)] or [0.0])
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{where} length")
            return float("inf")
        return max([_tensor_diff(x, y, f"{where}[{i}]", diffs) for i, (x, y) in enumerate(zip(a, b))] or [0.0])
    if a != b:
        diffs.append(where)
    return 0.0


def _loss_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


TIMING_KEYS = {"train_seconds", "it_per_s", "wall_seconds"}


def load_configs(paths: list[Path], src: Path, cwd: Path) -> dict[Path, dict]:
    """Each config.yaml as `src`'s package loads it (so that a new layout of the file is no diff), in one process."""
    code = ("import json, sys; from dreammapping.train import load_yaml_config, GenerateConfig, config_to_dict; "
            "print(json.dumps([config_to_dict(load_yaml_config(p, GenerateConfig())) for p in sys.argv[1:]]))")
    proc = _run(["-c", code, *map(str, paths)], src, cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"loading config.yaml failed:\n{proc.stderr[-2000:]}")
    return dict(zip(paths, json.loads(proc.stdout)))


def compare(a: Path, b: Path, configs: dict[Path, dict]) -> tuple[bool, float, list[str]]:
    import torch

    if a.is_file():  # an image
        same = a.read_bytes() == b.read_bytes()
        return same, 0.0 if same else float("nan"), [] if same else [a.name]
    diffs: list[str] = []
    worst = 0.0
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    for name in names:
        pa, pb = a / name, b / name
        if not (pa.exists() and pb.exists()):
            diffs.append(f"{name} (only on one side)")
        elif name == "checkpoint.pt":
            sa = torch.load(pa, map_location="cpu", weights_only=True)
            sb = torch.load(pb, map_location="cpu", weights_only=True)
            sa.pop("train_seconds", None), sb.pop("train_seconds", None)
            worst = max(worst, _tensor_diff(sa, sb, "checkpoint", diffs))
        elif name == "loss.csv":
            if _loss_rows(pa) != _loss_rows(pb):
                diffs.append(name)
        elif name == "metrics.json":
            ma, mb = (json.loads(p.read_text()) for p in (pa, pb))
            if {k: v for k, v in ma.items() if k not in TIMING_KEYS} != \
                    {k: v for k, v in mb.items() if k not in TIMING_KEYS}:
                diffs.append(name)
        elif name == "config.yaml":
            ca, cb = dict(configs[pa]), dict(configs[pb])
            ca.pop("out", None), cb.pop("out", None)  # each side's own folder
            if ca != cb:
                diffs.append(name)
        elif pa.is_file() and pa.read_bytes() != pb.read_bytes():
            diffs.append(name)
    return not diffs, worst, diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="a git ref (commit, branch) or 'worktree'")
    p.add_argument("--after", default="worktree", help="a git ref, 'worktree' (default) or a copy of a src/ folder")
    p.add_argument("--keep", default=None, help="keep the runs in this folder instead of a temporary one")
    p.add_argument("--parallel", action="store_true",
                   help="one subprocess per run, all at once (faster on a machine busy with higher-priority work)")
    p.add_argument("--only", nargs="+", metavar="RUN", help="only these runs (names as in the table)")
    p.add_argument("--compare-only", action="store_true", help="only compare the runs already in --keep's folder")
    args = p.parse_args(argv)
    global ONLY
    ONLY = set(args.only) if args.only else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bit-identical-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        before_src = export_tree(args.before, Path(tmp) / "tree-before") if not args.compare_only else None
        after_src = export_tree(args.after, Path(tmp) / "tree-after")
        if args.compare_only:
            before, after = ({name: folder for name, (folder, _) in plan_side(root / f"runs-{side}").items()}
                             for side in ("before", "after"))
        else:
            before, after = run_sides([(before_src, root / "runs-before"), (after_src, root / "runs-after")],
                                      args.parallel)
        configs = load_configs([run / "config.yaml" for side in (before, after) for run in side.values()
                                if (run / "config.yaml").is_file()], after_src, root)
        rows = [(name, *compare(before[name], after[name], configs)) for name in before]
    width = max(len(r[0]) for r in rows)
    print(f"before {args.before} vs after {args.after} ({time.perf_counter() - started:.0f} s)")
    print(f"{'run':<{width}} | identical? | max |diff| | differs")
    print(f"{'-' * width}-|------------|------------|--------")
    for name, same, worst, diffs in rows:
        print(f"{name:<{width}} | {'yes' if same else 'NO':<10} | {worst:<10.3g} | {', '.join(diffs[:6]) or '-'}")
    return 0 if all(r[1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
