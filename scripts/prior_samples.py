"""Sample grids of the embedded prior (what docs/prior_samples*.png and the model card's samples.png show).

    python scripts/prior_samples.py [--prior FOLDER] [--cfg 2] [--out docs]

prior_samples.png:       the model card's prompts (rows), 8 samples each — also copied to the prior's samples.png
prior_samples_pairs.png: every colour (rows) × shape (column pairs), 2 samples each; held-out pairs included
Stochastic DDIM (eta 1), 30 steps, seed 1234.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from dreammapping.priors import embedded_prior_path
from dreammapping.toyworld.grammar import COLOR_NAMES, SHAPES
from dreammapping.toyworld.train_prior import default_sample_prompts, load_model_folder, sample, save_grid, with_article


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=None, help="prior folder (default: the shipped one)")
    ap.add_argument("--cfg", type=float, default=2.0, help="guidance scale (default 2, the cpu preset's)")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--no-copy", action="store_true", help="do not copy the grid into the prior's samples.png")
    args = ap.parse_args(argv)
    folder = Path(args.prior or embedded_prior_path())
    models = load_model_folder(folder)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    prompts = default_sample_prompts()
    imgs = sample(models, [p for p in prompts for _ in range(8)], guidance_scale=args.cfg,
                  generator=torch.Generator().manual_seed(1234))
    save_grid(imgs, out / "prior_samples.png", nrow=8)
    if not args.no_copy:
        shutil.copyfile(out / "prior_samples.png", folder / "samples.png")

    pairs = [with_article(f"{c} {s}") for c in COLOR_NAMES for s in SHAPES]
    imgs = sample(models, [p for p in pairs for _ in range(2)], guidance_scale=args.cfg,
                  generator=torch.Generator().manual_seed(1234))
    save_grid(imgs, out / "prior_samples_pairs.png", nrow=2 * len(SHAPES))
    print(f"wrote {out / 'prior_samples.png'} and {out / 'prior_samples_pairs.png'} (CFG {args.cfg:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
