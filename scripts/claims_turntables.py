"""Turntables of the claims benchmark's core variants side by side, one gif per (prompt, seed), for the README.

    python scripts/claims_turntables.py [--root /work/claims-runs] [--out docs/claims] [--seed 0] PROMPT ...

Reads the finished run folders `benchmarks/claims.py run` made (`<root>/<slug>__<variant>__seed<k>/gaussians.ply`),
renders each with `export`'s turntable cameras and writes `<out>/turntable-<slug>-seed<k>.gif`, labelled like the
claims report: SDS, VDM, VDM+DCA100, VDM+DCA300, VDM+DCA500 at the paper's CFG (7.5 in its convention).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from dreammapping import cameras as C
from dreammapping.export import _render_frames, load_ply
from dreammapping.files import atomic_path
from dreammapping.train import slugify

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demos import label  # noqa: E402  (the demos' own labelling)

VARIANTS = ("sds", "vdm", "vdm+dca100", "vdm+dca300", "vdm+dca500")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("--root", type=Path, default=Path("/work/claims-runs"))
    parser.add_argument("--out", type=Path, default=Path("docs/claims"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=36)
    args = parser.parse_args(argv)
    cams = C.turntable(args.frames, args.size, args.size)
    for prompt in args.prompts:
        runs = [args.root / f"{slugify(prompt)}__{v}__seed{args.seed}" / "gaussians.ply" for v in VARIANTS]
        missing = [str(p) for p in runs if not p.is_file()]
        if missing:
            print(f"skip {prompt!r}: not finished: {', '.join(missing)}", file=sys.stderr)
            continue
        columns = [np.stack([label(f, v.upper()) for f in _render_frames(load_ply(p), cams)])
                   for v, p in zip(VARIANTS, runs)]
        frames = np.concatenate(columns, axis=2)  # [F, H+14, 5W, 3]
        out = args.out / f"turntable-{slugify(prompt)}-seed{args.seed}.gif"
        buffer = io.BytesIO()
        iio.imwrite(buffer, frames, extension=".gif", duration=80, loop=0)
        with atomic_path(out) as tmp:
            tmp.write_bytes(buffer.getvalue())
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
