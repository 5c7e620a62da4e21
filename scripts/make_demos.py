"""Make the README's demo: SDS and VDM + DCA side by side for a few prompts, with the embedded prior (CPU preset).

    python scripts/make_demos.py [--iterations N] [--seed S] [--runs runs/demos] [--out docs/demos]

Each (prompt, method) pair is one `dreammapping.generate` run (resumed / reused when its folder is complete); the
two turntables of a prompt are then put side by side, labelled, into docs/demos/<slug>.gif.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

PROMPTS = [
    "a red cube",
    "a blue cone",  # a held-out colour-shape pair: never seen by the prior
    "a yellow cylinder",
    "a red cube on top of a blue sphere",
]
METHODS = {"sds": "SDS", "vdm": "VDM + DCA"}


def slug(text: str) -> str:
    from dreammapping.train import slugify  # the run folders' own naming

    return slugify(text)


def label(frame: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(frame)
    band = Image.new("RGB", (img.width, 14), "white")
    ImageDraw.Draw(band).text((3, 1), text, fill=(0, 0, 0))
    out = Image.new("RGB", (img.width, img.height + 14), "white")
    out.paste(band, (0, 0))
    out.paste(img, (0, 14))
    return np.asarray(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=None, help="override the cpu preset's iterations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/demos")
    ap.add_argument("--out", default="docs/demos")
    ap.add_argument("--prompts", nargs="*", default=PROMPTS)
    args = ap.parse_args(argv)

    from dreammapping.train import generate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for prompt in args.prompts:
        columns = []
        for method, title in METHODS.items():
            run = Path(args.runs) / f"{slug(prompt)}-{method}-{args.seed}"
            if not (run / "metrics.json").exists():
                options = dict(method=method, seed=args.seed, out=str(run), threads=1)
                if args.iterations:
                    options["iterations"] = args.iterations
                if (run / "checkpoint.pt").exists():
                    options["resume"] = str(run)
                else:
                    options["overwrite"] = True
                t = time.time()
                generate(prompt, **options)
                print(f"{prompt!r} {method}: {time.time() - t:.0f} s", flush=True)
            metrics = json.loads((run / "metrics.json").read_text())
            summary.append({"prompt": prompt, "method": method, **metrics})
            frames = iio.imread(run / "turntable.gif", index=None)[..., :3]
            columns.append([label(f, title) for f in frames])
        frames = [np.concatenate(pair, axis=1) for pair in zip(*columns)]
        iio.imwrite(out / f"{slug(prompt)}.gif", frames, duration=80, loop=0)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
