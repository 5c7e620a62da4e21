"""Is a restructure behaviour-preserving? Seeded samples, a short prior training and an evaluation, bit for bit.

    git worktree add /tmp/before <older commit>
    python benchmarks/restructure_identity.py --before-src /tmp/before/src

Runs the same fixed cases once with the older checkout's package first on PYTHONPATH and once with this one
(each a fresh process, one after the other), and prints one row per output: whether the two are bit-identical
and, if not, the largest absolute difference. The cases:

- `DiffusionPrior.sample` on a tiny pixel-space and a tiny latent pipeline (built from configs, nothing
  downloaded) — stochastic DDIM, deterministic DDIM, DPM-Solver++ — and on the shipped embedded prior;
- `toyworld.train_prior.sample` on the embedded prior's models, in one batch and in batches of one;
- `toyworld.train_prior.train`: a 3-step run of the tiny preset (weights, EMA weights, loss history, the sample
  grid), and the same run stopped after 2 steps and resumed from its checkpoint;
- `evaluate.evaluate_run` on splats of "a red cube" (ground truth, attribute accuracy, classifier FID against
  prior samples) and on a prompt outside the toy world.

Exit status 0 when every output is identical. CPU only; about a minute per side on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


CASES = ("sample", "train", "evaluate")


def collect(work: Path, cases: Sequence[str] = CASES) -> tuple[dict, dict]:
    """(tensors name → Tensor, numbers name → JSON value) of every case, computed by the package on sys.path."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from dreammapping import evaluate as ev
    from dreammapping.export import save_ply
    from dreammapping.gaussians import from_points
    from dreammapping.priors import DiffusionPrior, embedded_prior_path
    from dreammapping.toyworld import grammar
    from dreammapping.toyworld import train_prior as tp

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_pipeline  # the test suite's tiny SD-format pipelines

    torch.set_num_threads(1)
    tensors, numbers = {}, {}
    prompts = ["a red cube", "a blue sphere, side view"]

    def gen(seed=0):
        return torch.Generator().manual_seed(seed)

    # ---- DiffusionPrior.sample ---------------------------------------------------------------------------------
    for latent in (False, True) if "sample" in cases else ():
        kind = "latent" if latent else "pixel"
        folder = work / f"tiny_{kind}"
        if not folder.is_dir():
            build_tiny_pipeline(folder, latent=latent)
        prior = DiffusionPrior.from_pretrained(folder, device="cpu")
        tensors[f"prior.{kind}.ddim_default"] = prior.sample(prompts, num_steps=4, guidance_scale=3.0, generator=gen())
        tensors[f"prior.{kind}.ddim_eta0"] = prior.sample(prompts, num_steps=4, guidance_scale=3.0, generator=gen(),
                                                         eta=0.0)
        tensors[f"prior.{kind}.ddim_eta1_neg"] = prior.sample(prompts, num_steps=4, guidance_scale=5.0,
                                                             generator=gen(1), eta=1.0, negative_prompt="blurry")
        tensors[f"prior.{kind}.dpm"] = prior.sample(prompts, num_steps=4, guidance_scale=3.0, generator=gen(),
                                                   scheduler=DPMSolverMultistepScheduler)
    if "sample" in cases:
        embedded = DiffusionPrior.from_pretrained("embedded", device="cpu")
        tensors["prior.embedded.ddim"] = embedded.sample(prompts, num_steps=6, guidance_scale=2.0, generator=gen())

    # ---- train_prior.sample -----------------------------------------------------------------------------------
    if "sample" in cases:
        models = tp.load_model_folder(embedded_prior_path())
        tensors["train_prior.sample"] = tp.sample(models, prompts, steps=6, guidance_scale=2.0, generator=gen())
        tensors["train_prior.sample_batches_of_1"] = tp.sample(models, prompts, steps=6, guidance_scale=3.0,
                                                               generator=gen(2), batch_size=1)
        tensors["train_prior.sample_eta0"] = tp.sample(models, prompts, steps=6, guidance_scale=2.0,
                                                       generator=gen(), eta=0.0)

    # ---- train_prior.train: straight, and stopped + resumed ------------------------------------------------------
    from safetensors.torch import load_file

    base = dict(steps=3, batch_size=4, preset="tiny", resolution=16, max_length=16, warmup_steps=1, log_every=1,
                checkpoint_every=0, samples_per_prompt=1, sample_steps=2, device="cpu", lr=1e-3)
    for name, runs in (("straight", [dict()]), ("resumed", [dict(stop_after=2), dict(resume=True)])
                       ) if "train" in cases else ():
        out = work / f"prior_{name}"
        for extra in runs:
            summary = tp.train(tp.TrainPriorConfig(out=str(out), **base, **extra), command="identity-check")
        numbers[f"train_prior.{name}.summary"] = {k: v for k, v in summary.items() if k not in ("train_seconds",)}
        for k, v in load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors")).items():
            tensors[f"train_prior.{name}.unet.{k}"] = v
        for k, v in load_file(str(out / "text_encoder" / "model.safetensors")).items():
            tensors[f"train_prior.{name}.text.{k}"] = v
        for k, v in load_file(str(out / tp.CHECKPOINT_NAME)).items():
            tensors[f"train_prior.{name}.checkpoint.{k}"] = v
        from PIL import Image
        import numpy as np

        tensors[f"train_prior.{name}.samples_png"] = torch.from_numpy(np.array(Image.open(out / "samples.png")))

    # ---- evaluate ---------------------------------------------------------------------------------------------
    scene = grammar.parse("a red cube")
    points = torch.rand(6000, 3, generator=gen()) * 2.2 - 1.1
    try:  # the functions of toyworld.sdf; releases before them had Scene methods
        from dreammapping.toyworld.sdf import color_at, occupancy
    except ImportError:
        occupancy, color_at = type(scene).occupancy, type(scene).color_at
    points = points[occupancy(scene, points)][:800]
    splats = from_points(points, color_at(scene, points), opacity=0.95, scale=0.05)
    for prompt in ("a red cube", "a photo of a corgi") if "evaluate" in cases else ():
        run = work / f"run_{prompt.replace(' ', '_')}"
        run.mkdir(exist_ok=True)
        save_ply(run / "gaussians.ply", splats)
        (run / "config.yaml").write_text(f"prompt: {prompt}\nprior: embedded\n")
        options = ev.EvalOptions(resolution=32, num_views=4, fid_reference=4, fid_steps=5, fid_cache=False,
                                 clip=False)
        result = ev.evaluate_run(run, options)
        numbers[f"evaluate.{prompt}"] = {k: result[k] for k in ("prompt", "prior", "metrics", "skipped", "settings")}
        numbers[f"evaluate.{prompt}.options_after"] = {k: getattr(options, k) for k in vars(options)}
    return tensors, numbers


def save(path: Path, work: Path, cases: Sequence[str]) -> None:
    import torch
    from safetensors.torch import save_file

    tensors, numbers = collect(work, cases)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={"numbers": json.dumps(numbers, sort_keys=True, default=str)})
    del torch


def compare(before: Path, after: Path) -> int:
    from safetensors import safe_open

    def read(path):
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["numbers"])

    (ta, na), (tb, nb) = read(before), read(after)
    rows, bad = [], 0
    groups: dict[str, list[str]] = {}
    for k in sorted(set(ta) | set(tb)):
        group = k.split(".unet.")[0].split(".text.")[0].split(".checkpoint.")[0]
        suffix = k[len(group):].split(".")[1] if k != group else ""
        groups.setdefault(group + (f".{suffix}" if suffix else ""), []).append(k)
    for group, keys in groups.items():
        same, worst, n = True, 0.0, 0
        for k in keys:
            if k not in ta or k not in tb:
                same, worst = False, float("inf")
                continue
            a, b = ta[k], tb[k]
            n += a.numel()
            if a.shape != b.shape or a.dtype != b.dtype:
                same, worst = False, float("inf")
            elif not bool((a == b).all()) and not (a.is_floating_point() and bool((a.isnan() == b.isnan()).all())
                                                    and bool((a[~a.isnan()] == b[~b.isnan()]).all())):
                same = False
                worst = max(worst, float((a.double() - b.double()).abs().max()))
        bad += not same
        rows.append((group, f"{len(keys)} tensor{'s' * (len(keys) > 1)}, {n} values", same, worst))
    for k in sorted(set(na) | set(nb)):
        same = na.get(k) == nb.get(k)
        bad += not same
        rows.append((k, "numbers", same, 0.0 if same else float("nan")))
        if not same:
            print(f"{k}:\n  before {json.dumps(na.get(k), sort_keys=True)}\n  after  {json.dumps(nb.get(k), sort_keys=True)}")
    print("| output | size | bit-identical | max abs diff |\n|---|---|---|---|")
    for name, size, same, worst in rows:
        print(f"| {name} | {size} | {'yes' if same else '**NO**'} | {worst:g} |")
    print(f"\n{len(rows) - bad} of {len(rows)} outputs identical")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-src", help="src/ folder of the older checkout")
    parser.add_argument("--after-src", default=str(REPO / "src"), help="src/ folder of the newer one (default: this)")
    parser.add_argument("--before-file", help="keep the older checkout's outputs in this file and reuse them when "
                                              "it exists (checking several steps against one older commit)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="which cases to run")
    parser.add_argument("--save", help=argparse.SUPPRESS)  # internal: one side, into this file
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.save:
        save(Path(args.save), Path(args.work), args.cases)
        return 0
    if not args.before_src:
        parser.error("--before-src is required")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DREAMMAPPING_CACHE": str(tmp / "cache")}
        before = Path(args.before_file) if args.before_file else tmp / "before.safetensors"
        for side, src, path in (("before", Path(args.before_src).resolve(), before),
                                ("after", Path(args.after_src).resolve(), tmp / "after.safetensors")):
            print(f"{side}: {src}{' (kept from an earlier run)' if path.is_file() else ''}", flush=True)
            if not path.is_file():
                (tmp / side).mkdir()
                subprocess.run([sys.executable, __file__, "--save", str(path), "--work", str(tmp / side),
                                "--cases", *args.cases],
                               env={**env, "PYTHONPATH": str(src)}, check=True, stdout=subprocess.DEVNULL)
        return compare(before, tmp / "after.safetensors")


if __name__ == "__main__":
    sys.exit(main())
