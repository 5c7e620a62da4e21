"""Compare the guidance methods at equal iterations on the embedded toy world, against known 3D ground truth.

    python benchmarks/compare_methods.py            # the default comparison (9 variants × 3 prompts × 2 seeds)
    python benchmarks/compare_methods.py --quick    # smoke run: sds and vdm+DCA300, 1 prompt, 1 seed, 30 steps
    python benchmarks/compare_methods.py --plan     # print the runs and stop

Every run is a `dreammapping.batch` task (the `cpu` preset with the variant's method and options, a seed and the
iterations) in `ROOT/<prompt-slug>/<variant>/seed<k>`, run on a local process pool (`--workers`, default one per
core) or on Ray (`--ray auto|ADDRESS|local`); a finished run folder with the same config is reused, a run with a
checkpoint is resumed, so the script can be stopped (Ctrl-C) and restarted. Each run is scored with
`dreammapping.evaluate.evaluate_run` (eval.json, reused when newer than the .ply and made with the same settings);
ROOT/summary.md and summary.csv list every run's status and time.

Outputs (under --docs, default docs/; --quick writes next to its runs instead so it never replaces the real ones):
  compare_methods.md   every metric, mean ± sample standard deviation over prompts × seeds, per variant; time per
                       iteration relative to SDS; the same table for the held-out and the two-object prompts;
                       which variant won each metric and how VDM + DCA fared against SDS
  compare_methods.png  a bar chart per metric with ±1 sd whiskers (drawn with PIL: one code path, the same picture
                       everywhere, no matplotlib needed)
  compare_grid.png     one front view per variant per prompt (seed of the first run), the true scene first
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# variant name → (guidance method, that method's options). Equal iterations and the cpu preset for all.
VARIANTS: dict[str, tuple[str, dict]] = {
    "sds": ("sds", {}),
    "vdm": ("vdm", {"dca": False}),
    "vdm+dca100": ("vdm", {"dca": True, "dca_cutoff": 100}),
    "vdm+dca300": ("vdm", {"dca": True, "dca_cutoff": 300}),
    "vdm+dca500": ("vdm", {"dca": True, "dca_cutoff": 500}),
    "csd": ("csd", {}),
    "nfsd": ("nfsd", {}),
    "ism": ("ism", {}),
    "vsd": ("vsd", {}),
}
QUICK_VARIANTS = ("sds", "vdm+dca300")
MAIN_VDM = "vdm+dca300"  # the paper's default cut-off: the variant the closing note compares with SDS

# (key in eval.json's metrics, label, direction: +1 higher is better, −1 lower is better, 0 closer to 0 is better)
METRICS: tuple[tuple[str, str, int], ...] = (
    ("iou", "silhouette IoU", +1),
    ("psnr", "PSNR (dB)", +1),
    ("ssim", "SSIM", +1),
    ("color_error", "colour error", -1),
    ("saturation_error", "saturation error (+ = over)", 0),
    ("mean_saturation", "mean saturation", None),  # informative only: no better direction
    ("attr_all", "attribute accuracy", +1),
    ("fid_classifier", "3D-FID (classifier, vs prior)", -1),
    ("fid_classifier_gt", "FID (classifier, vs truth)", -1),
    ("fid_inception", "3D-FID (Inception)", -1),
    ("clip_ViT-L-14", "CLIP ViT-L/14", +1),
    ("clip_ViT-bigG-14", "CLIP ViT-bigG-14", +1),
    ("sec_per_it_rel", "time per iteration (x SDS)", -1),
)


def default_prompts() -> list[str]:
    """A seen single object, a held-out single object, and two objects one of which is a held-out pair."""
    from dreammapping.toyworld.grammar import HELD_OUT

    (c1, s1), (c2, s2) = HELD_OUT[0], HELD_OUT[1]
    article = lambda word: "an" if word[0] in "aeiou" else "a"  # noqa: E731
    other = "green sphere" if c2 != "green" else "blue sphere"
    return ["a red cube", f"{article(c1)} {c1} {s1}", f"{article(c2)} {c2} {s2} next to a {other}"]


def held_out_prompt(prompt: str) -> bool:
    from dreammapping.toyworld.grammar import HELD_OUT

    return any(re.search(rf"\b{c} {s}\b", prompt) for c, s in HELD_OUT)


def two_object_prompt(prompt: str) -> bool:
    return " on top of " in prompt or " next to " in prompt


def slug(text: str) -> str:
    from dreammapping.train import slugify  # the run folders' own naming

    return slugify(text, max_len=60)


# ================================================================================================ running
@dataclass
class Plan:
    variants: list[str]
    prompts: list[str]
    seeds: list[int]
    iterations: int
    root: Path
    docs: Path
    device: str = "auto"
    eval_resolution: int = 64
    eval_views: int = 16
    fid_reference: int = 16
    train_options: dict = field(default_factory=dict)  # extra GenerateConfig fields for every run
    command: str = "python benchmarks/compare_methods.py"  # how this comparison was started (for the report)
    workers: int = 0  # local runs at once (0: dreammapping.batch's default, one per core on a CPU)
    ray: str | None = None  # run on Ray instead: "auto", an address or "local"

    def runs(self) -> list[tuple[str, str, int]]:
        """Seed-major, so that a comparison stopped half-way has every variant on the same prompts and seeds."""
        return [(p, v, s) for s in self.seeds for p in self.prompts for v in self.variants]

    def run_dir(self, prompt: str, variant: str, seed: int) -> Path:
        return self.root / slug(prompt) / variant / f"seed{seed}"


def tasks(plan: Plan) -> list:
    """One dreammapping.batch task per run: trained (or reused / resumed) in its folder, then scored."""
    from dreammapping.batch import Task
    from dreammapping.evaluate import EvalOptions
    from dreammapping.train import build_config

    evaluate = EvalOptions(resolution=plan.eval_resolution, num_views=plan.eval_views, fid_reference=plan.fid_reference,
                           device="cpu" if plan.device == "auto" else plan.device)
    out = []
    for prompt, variant, seed in plan.runs():
        method, options = VARIANTS[variant]
        run_dir = plan.run_dir(prompt, variant, seed).resolve()
        # overwrite: a folder left by another setting (e.g. other iterations) is retrained, not refused
        cfg = build_config(prompt, preset="cpu", method=method, method_options={method: dict(options)}, seed=seed,
                           iterations=plan.iterations, device=plan.device, out=str(run_dir), overwrite=True,
                           **plan.train_options)
        out.append(Task(str(run_dir), cfg, evaluate, label=variant))
    return out


def run_all(plan: Plan, log=print) -> list[dict]:
    """Train and evaluate every run of the plan with dreammapping.batch (a local pool, or Ray); one record per run.
    Finished runs with the same config (and eval.json with the same settings) are reused, interrupted ones resumed."""
    from dreammapping.batch import OK_STATUSES, run_batch

    records = []
    for r in run_batch(tasks(plan), workers=plan.workers, ray=plan.ray, summary_dir=plan.root, log=log):
        base = {"prompt": r["prompt"], "variant": r["label"], "seed": r["seed"]}
        if r["status"] not in OK_STATUSES:
            records.append({**base, "failed": (r["error"] or r["status"])[:300]})
            continue
        its = max(1, int(r["iterations"] or plan.iterations))
        seconds = r["train_seconds"]
        records.append({**base, "sec_per_it": float("nan") if seconds is None else float(seconds) / its,
                        "metrics": dict(r["metrics"]), "skipped": dict(r["skipped_metrics"]), "run_dir": r["run_dir"]})
    add_relative_time(records)
    return records


def add_relative_time(records: list[dict]) -> None:
    """sec_per_it ÷ the mean SDS sec_per_it of the same prompt (all prompts when that prompt has no SDS run)."""
    ok = [r for r in records if "metrics" in r]
    sds = [r["sec_per_it"] for r in ok if r["variant"] == "sds" and math.isfinite(r["sec_per_it"])]
    by_prompt = {}
    for r in ok:
        if r["variant"] == "sds" and math.isfinite(r["sec_per_it"]):
            by_prompt.setdefault(r["prompt"], []).append(r["sec_per_it"])
    for r in ok:
        base = by_prompt.get(r["prompt"]) or sds
        if base:
            r["metrics"]["sec_per_it_rel"] = r["sec_per_it"] / statistics.fmean(base)


# ================================================================================================ aggregating
def summarise(records: list[dict], variants: list[str]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """variant → metric → (mean, sample sd (0 for one run), n) over the finite values of its runs."""
    table: dict[str, dict[str, tuple[float, float, int]]] = {}
    for v in variants:
        rows = [r["metrics"] for r in records if r.get("variant") == v and "metrics" in r]
        table[v] = {}
        for key, _, _ in METRICS:
            values = [float(m[key]) for m in rows if m.get(key) is not None and math.isfinite(float(m[key]))]
            if values:
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                table[v][key] = (statistics.fmean(values), sd, len(values))
    return table


def winners(table: dict, metrics=METRICS) -> dict[str, list[str]]:
    """metric → the variants with the best mean (direction 0: smallest |mean|; several on a tie); metrics without
    a direction, or with fewer than two variants measured, are left out."""
    out = {}
    for key, _, direction in metrics:
        if direction is None:
            continue
        cands = [(v, stats[key][0]) for v, stats in table.items() if key in stats]
        if len(cands) < 2:
            continue
        score = {+1: lambda x: -x, -1: lambda x: x, 0: abs}[direction]
        top = min(score(m) for _, m in cands)
        out[key] = [v for v, m in cands if score(m) <= top + 1e-12 * max(1.0, abs(top))]
    return out


def _fmt(stats: tuple[float, float, int] | None, key: str) -> str:
    if stats is None:
        return "—"
    mean, sd, n = stats
    digits = 2 if key in ("psnr", "fid_classifier", "fid_classifier_gt", "fid_inception") or key.startswith("clip") else 3
    sign = "+" if key == "saturation_error" else ""
    return f"{mean:{sign}.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{mean:{sign}.{digits}f} (1 run)"


def markdown_table(table: dict, keys: list[str], best: dict[str, str]) -> list[str]:
    labels = {k: (lab, d) for k, lab, d in METRICS}
    arrows = {+1: " ↑", -1: " ↓", 0: " →0", None: ""}
    head = ["variant"] + [labels[k][0] + arrows[labels[k][1]] for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, stats in table.items():
        cells = [f"`{v}`"]
        for k in keys:
            text = _fmt(stats.get(k), k)
            cells.append(f"**{text}**" if v in best.get(k, ()) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def present_keys(table: dict) -> list[str]:
    return [k for k, _, _ in METRICS if any(k in stats for stats in table.values())]


def closing_note(table: dict, best: dict[str, str]) -> list[str]:
    """Which variant won which metric, and where the paper's VDM + DCA did and did not beat SDS."""
    labels = {k: lab for k, lab, _ in METRICS}
    directions = {k: d for k, _, d in METRICS}
    lines = ["**Winners.** " + "; ".join(f"{labels[k]}: " + " = ".join(f"`{v}`" for v in vs) + (" (tie)" if len(vs) > 1 else "")
                                         for k, vs in best.items()) + "."]
    if MAIN_VDM in table and "sds" in table:
        better, worse, tie = [], [], []
        for k in present_keys(table):
            d = directions[k]
            if d is None or k not in table[MAIN_VDM] or k not in table["sds"] or k == "sec_per_it_rel":
                continue
            (mv, sv, nv), (ms, ss, ns) = table[MAIN_VDM][k], table["sds"][k]
            gain = {+1: mv - ms, -1: ms - mv, 0: abs(ms) - abs(mv)}[d]
            # standard error of the difference of the means; with one run each there is no spread to judge by
            noise = math.sqrt(sv**2 / nv + ss**2 / ns) if min(nv, ns) > 1 else 0.0
            text = f"{labels[k]} ({_fmt(table[MAIN_VDM][k], k)} vs {_fmt(table['sds'][k], k)})"
            if abs(gain) <= noise:
                tie.append(text)
            elif gain > 0:
                better.append(text)
            else:
                worse.append(text)
        single = any(table[v][k][2] < 2 for v in (MAIN_VDM, "sds") for k in table[v])
        lines.append(f"**`{MAIN_VDM}` against `sds`**{' (single runs: no spread, so no difference is tested)' if single else ''}. "
                     f"Better{'' if single else ' beyond one standard error'}: "
                     f"{'; '.join(better) or 'nothing'}. Worse: {'; '.join(worse) or 'nothing'}. "
                     f"{'Equal' if single else 'Within the noise'}: {'; '.join(tie) or 'nothing'}.")
        if "sec_per_it_rel" in table[MAIN_VDM]:
            lines.append(f"It cost {table[MAIN_VDM]['sec_per_it_rel'][0]:.2f}× SDS's time per iteration.")
    return lines


def write_markdown(path: Path, plan: Plan, records: list[dict], chart: str, grid: str) -> None:
    table = summarise(records, plan.variants)
    best = winners(table)
    keys = present_keys(table)
    ok = [r for r in records if "metrics" in r]
    failed = [r for r in records if "failed" in r]
    lines = [
        "# Guidance methods compared on the embedded toy world",
        "",
        f"`{plan.command}` — "
        f"{len(plan.variants)} variants × {len(plan.prompts)} prompts × {len(plan.seeds)} seeds, "
        f"{plan.iterations} iterations each with the `cpu` preset and the prior "
        f"`{plan.train_options.get('prior', 'embedded')}` "
        f"({len(ok)} runs scored{f', {len(failed)} failed' if failed else ''}). "
        "Each cell: mean ± sample standard deviation over prompts × seeds; **bold** = best mean. "
        "Ground-truth metrics compare the result with the true scene rendered by the toy world's SDF renderer at "
        f"the same four canonical cameras ({plan.eval_resolution}² px, white background); attribute accuracy is the "
        f"shipped classifier on {plan.eval_views} random views; FIDs use classifier features (a relative measure "
        f"at N = {plan.eval_views} vs {plan.fid_reference}); time per iteration is divided by SDS's on the same "
        "prompt (wall clock on a shared machine: ±10 % is noise).",
        "",
        "Prompts: " + ", ".join(f"“{p}”" + (" (held-out pair)" if held_out_prompt(p) else "") for p in plan.prompts)
        + ".",
        "",
        "## All prompts",
        "",
        *markdown_table(table, keys, best),
        "",
    ]
    for title, keep in (("Held-out colour–shape pairs", held_out_prompt), ("Two-object prompts", two_object_prompt)):
        subset = [r for r in records if keep(r["prompt"])]
        if subset and len(subset) < len(records):
            sub = summarise(subset, plan.variants)
            lines += [f"## {title}", "", *markdown_table(sub, present_keys(sub), winners(sub)), ""]
    lines += ["## What won", "", *closing_note(table, best), ""]
    skipped = sorted({(k, v) for r in ok for k, v in r["skipped"].items()})
    if skipped:
        by_reason: dict[str, set[str]] = {}
        for k, reason in skipped:
            by_reason.setdefault(reason, set()).add(k)
        lines += ["## Not measured here", ""]
        lines += [f"- {', '.join(sorted(ks))}: {reason}" for reason, ks in sorted(by_reason.items())]
        lines.append("")
    if failed:
        lines += ["## Failed runs", ""] + [f"- `{r['variant']}` seed {r['seed']} “{r['prompt']}”: {r['failed']}"
                                           for r in failed] + [""]
    lines += [f"![metrics]({chart})", "", f"![one front view per variant and prompt]({grid})", ""]
    path.write_text("\n".join(lines))


# ================================================================================================ pictures (PIL)
PALETTE = [(90, 90, 90), (31, 119, 180), (44, 160, 44), (23, 190, 207), (148, 103, 189), (255, 127, 14),
           (214, 39, 40), (140, 86, 75), (227, 119, 194), (188, 189, 34), (127, 127, 127)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_chart(path: Path, table: dict) -> None:
    """One panel per metric: a bar per variant (mean) with a ±1 sd whisker; the best bar outlined."""
    from PIL import Image, ImageDraw

    keys = present_keys(table)
    labels = {k: (lab, d) for k, lab, d in METRICS}
    variants = list(table)
    best = winners(table)
    cols = 3
    rows = max(1, math.ceil(len(keys) / cols))
    pw, ph, pad = 420, 260, 36
    legend_h = 30 + 20 * math.ceil(len(variants) / 5)
    img = Image.new("RGB", (cols * pw, rows * ph + legend_h), "white")
    d = ImageDraw.Draw(img)
    f_title, f_small = _font(15), _font(11)
    for i, key in enumerate(keys):
        x0, y0 = (i % cols) * pw, (i // cols) * ph
        label, direction = labels[key]
        arrow = {+1: " (higher is better)", -1: " (lower is better)", 0: " (closer to 0 is better)", None: ""}[direction]
        d.text((x0 + pad, y0 + 8), label + arrow, fill="black", font=f_title)
        stats = [table[v].get(key) for v in variants]
        lo = min([0.0] + [m - s for m, s, _ in filter(None, stats)])
        hi = max([0.0] + [m + s for m, s, _ in filter(None, stats)])
        if hi - lo < 1e-12:
            hi = lo + 1.0
        top, bottom = y0 + 36, y0 + ph - 30
        y_of = lambda v: bottom - (v - lo) / (hi - lo) * (bottom - top)  # noqa: E731
        left, right = x0 + pad + 20, x0 + pw - 12
        d.line([(left, y_of(0.0)), (right, y_of(0.0))], fill=(120, 120, 120))
        for tick in (lo, hi):
            d.text((x0 + 4, y_of(tick) - 6), f"{tick:.3g}", fill=(90, 90, 90), font=f_small)
        bw = (right - left) / max(1, len(variants))
        for j, (v, st) in enumerate(zip(variants, stats)):
            if st is None:
                continue
            mean, sd, _ = st
            bx0, bx1 = left + j * bw + 3, left + (j + 1) * bw - 3
            ya, yb = sorted((y_of(0.0), y_of(mean)))
            d.rectangle([bx0, ya, bx1, max(yb, ya + 1)], fill=PALETTE[j % len(PALETTE)],
                        outline="black" if v in best.get(key, ()) else None, width=2)
            cx = (bx0 + bx1) / 2
            d.text((bx0 + 2, min(ya, yb) - 13 if mean >= 0 else max(ya, yb) + 2), f"{mean:.3g}", fill="black",
                   font=f_small)
            d.line([(cx, y_of(mean - sd)), (cx, y_of(mean + sd))], fill="black", width=1)
            d.line([(cx - 4, y_of(mean + sd)), (cx + 4, y_of(mean + sd))], fill="black")
            d.line([(cx - 4, y_of(mean - sd)), (cx + 4, y_of(mean - sd))], fill="black")
    ly = rows * ph + 8
    for j, v in enumerate(variants):
        lx = 20 + (j % 5) * (cols * pw - 40) // 5
        yy = ly + (j // 5) * 20
        d.rectangle([lx, yy + 2, lx + 14, yy + 14], fill=PALETTE[j % len(PALETTE)])
        d.text((lx + 20, yy), v, fill="black", font=_font(13))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def draw_grid(path: Path, plan: Plan, records: list[dict], size: int = 96) -> None:
    """Rows = prompts, columns = truth then variants: the front canonical view of the first seed's run."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from dreammapping import cameras as C
    from dreammapping.export import load_ply
    from dreammapping.render import rasterize

    front = C.canonical_views(size, size)[0]
    label_w, head_h = 190, 22
    cols = ["truth"] + plan.variants
    img = Image.new("RGB", (label_w + size * len(cols), head_h + size * len(plan.prompts)), "white")
    d = ImageDraw.Draw(img)
    f = _font(12)
    for j, name in enumerate(cols):
        d.text((label_w + j * size + 4, 4), name, fill="black", font=f)

    def paste(rgb, i, j):
        arr = (rgb[0].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        img.paste(Image.fromarray(arr), (label_w + j * size, head_h + i * size))

    for i, prompt in enumerate(plan.prompts):
        words, line, lines = prompt.split(), "", []
        for w in words:  # wrap the prompt into the label column
            if len(line) + len(w) > 26:
                lines.append(line)
                line = ""
            line = f"{line} {w}".strip()
        lines.append(line)
        for k, text in enumerate(lines):
            d.text((6, head_h + i * size + 6 + 15 * k), text, fill="black", font=f)
        try:
            from dreammapping.toyworld.grammar import parse
            from dreammapping.toyworld.sdf import render_scenes

            paste(render_scenes([parse(prompt)], front)[0], i, 0)
        except Exception:  # noqa: BLE001 — no truth for this prompt: leave the cell white
            pass
        for j, variant in enumerate(plan.variants, 1):
            done = [r for r in records if r["prompt"] == prompt and r["variant"] == variant and "metrics" in r]
            if not done:
                continue
            ply = Path(done[0]["run_dir"]) / "gaussians.ply"
            with torch.no_grad():
                paste(rasterize(load_ply(ply), front).rgb, i, j)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ================================================================================================ command line
def build_plan(args) -> Plan:
    quick = args.quick
    variants = args.methods or (list(QUICK_VARIANTS) if quick else list(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    prompts = args.prompts or (default_prompts()[:1] if quick else default_prompts())
    seeds = args.seeds if args.seeds is not None else ([0] if quick else [0, 1])
    iterations = args.iterations or (30 if quick else 100)
    root = Path(args.root or (REPO / "runs" / ("compare_quick" if quick else "compare")))
    docs = Path(args.docs) if args.docs else (root if quick else REPO / "docs")
    # Small turntables: the comparison needs the .ply, not the videos; checkpoints make the runs resumable.
    train_options = {"prior": args.prior, "turntable_frames": 8, "turntable_size": 64, "checkpoint_every": 50}
    return Plan(variants, prompts, seeds, iterations, root, docs, device=args.device,
                eval_views=args.eval_views or (8 if quick else 16), fid_reference=args.fid_reference or (8 if quick else 16),
                train_options=train_options, command=" ".join(["python benchmarks/compare_methods.py", *args.argv]),
                workers=args.workers, ray=args.ray)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 variants, 1 prompt, 1 seed, 30 iterations")
    p.add_argument("--methods", nargs="+", help=f"variants (default all): {', '.join(VARIANTS)}")
    p.add_argument("--prompts", nargs="+", help="prompts (default: seen, held-out, two objects with a held-out pair)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default 0 1)")
    p.add_argument("--iterations", type=int, help="iterations per run (default 100; --quick 30)")
    p.add_argument("--eval-views", type=int, help="random views per run for attribute accuracy / FID (default 16)")
    p.add_argument("--fid-reference", type=int, help="prior samples per prompt for 3D-FID (default 16)")
    p.add_argument("--root", help="where the run folders go (default runs/compare, --quick runs/compare_quick)")
    p.add_argument("--docs", help="where the table and pictures go (default docs/, --quick: the run root)")
    p.add_argument("--device", default="auto", help="training device (default auto)")
    p.add_argument("--prior", default="embedded", help="diffusion prior of every run (default: the embedded one)")
    p.add_argument("--workers", type=int, default=0, help="runs at once on this machine (default: one per core)")
    p.add_argument("--ray", metavar="auto|ADDRESS|local", help="run every run as a Ray task (needs the [ray] extra)")
    p.add_argument("--plan", action="store_true", help="print the runs and stop")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.argv = argv
    plan = build_plan(args)
    runs = plan.runs()
    print(f"{len(runs)} runs: {len(plan.variants)} variants × {len(plan.prompts)} prompts × {len(plan.seeds)} seeds, "
          f"{plan.iterations} iterations each; runs in {plan.root}, tables in {plan.docs}")
    if args.plan:
        from dreammapping.batch import run_state

        for task in tasks(plan):
            print(f"  {run_state(task.run_dir, task.config):<9}  {task.run_dir}")
        return 0
    from dreammapping.batch import BatchInterrupted

    try:
        records = run_all(plan)
    except BatchInterrupted as e:
        print(f"compare_methods: {e}", file=sys.stderr)
        return 130
    plan.docs.mkdir(parents=True, exist_ok=True)
    (plan.root / "records.json").write_text(json.dumps(records, indent=1) + "\n")
    chart, grid = plan.docs / "compare_methods.png", plan.docs / "compare_grid.png"
    table = summarise(records, plan.variants)
    draw_chart(chart, table)
    draw_grid(grid, plan, records)
    write_markdown(plan.docs / "compare_methods.md", plan, records, chart.name, grid.name)
    print(f"wrote {plan.docs / 'compare_methods.md'}, {chart}, {grid}")
    return 0 if any("metrics" in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
