#!/usr/bin/env bash
# The paper preset on a GPU, measured (issue 14): builds SD 2.1-base- and Shap-E-architecture models with random
# weights (no download), runs `generate --preset paper` for 200 steps with gsplat, checks gsplat against the torch
# rasterizer with full-range opacities, and times eager vs torch.compile (UNet, VAE encoder, Mψ with CUDA graphs).
# Prints a markdown table (see benchmarks/gpu_check.py) and writes $OUT/gpu_check.{log,json}.
#
#   scripts/gpu_check.sh                  # on a CUDA machine, from the repo root (about 6–9 min on an H100/H200,
#                                         # most of it inductor compiling; add --skip compile to halve it)
#   scripts/gpu_check.sh --dry-run        # the same code path with tiny models on the CPU (~1–2 min)
#
# On the device tool's machine (no network), carry wheels in .whl/ (diffusers, transformers, gsplat, …) as
# scripts/gpu_session.sh does; they are installed into /tmp/site. Extra arguments go to benchmarks/gpu_check.py.
set -u
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
out=${OUT:-runs/gpu_check}
mkdir -p "$out"
python3 benchmarks/gpu_check.py --out "$out/work" "$@" 2>&1 | grep -v -e "^Writing model shards" -e "^Loading " | tee "$out/gpu_check.log"
status=${PIPESTATUS[0]}
cp "$out/work/gpu_check.json" "$out/" 2>/dev/null
rm -rf "$out/work/sd21base-random" "$out/work/shap-e-random"  # gigabytes of random weights: not worth keeping
exit "$status"
