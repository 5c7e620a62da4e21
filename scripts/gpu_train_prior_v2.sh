#!/usr/bin/env bash
# Train the embedded prior v2 (latent, Stable Diffusion format: VAE + UNet + word-level CLIP) on one GPU in ≤ 10 min,
# from one command: render the seeded shards, train the VAE, encode, train the UNet, write the folder + MODEL_CARD.md.
#
# Usage (from the repo root; diffusers/transformers/tokenizers/safetensors/tyro/tqdm importable, e.g. via PYTHONPATH,
# or wheels carried in .whl/ which are installed to /tmp/site first):
#   OUT=/path/to/out bash scripts/gpu_train_prior_v2.sh
# Budget on one H200 (sized from the v1 run's data rate, 1079 steps × 256 in 3.2 min on an H100, data-bound at 32²,
# i.e. ~1400 renders/s; 64² has 4× the pixels, so ~350/s): ~0.5 min start, ~1.5 min rendering 32 shards, VAE_MINUTES,
# ~0.2 min encoding, UNET_MINUTES, ~0.3 min samples + card. The loops stop at their budgets (the cosine schedules
# follow time), so a slower card trains fewer steps, not longer. Forward cost per image (FlopCounterMode): VAE small
# 2.8 GFLOP at 64², UNet small + text 1.5 GFLOP at 16²×4; at ~100 TFLOP/s of bf16 on these small convolutions a
# VAE step (×3 for backward, batch 128) is ~11 ms and a UNet step (batch 256) ~12 ms, so the budgets, not the step
# caps, end both loops. The renders are world v2's (train-prior's default --world 2).
# Environment:
#   OUT            output folder (required): at most 8 files, each < 16 MB: prior-v2.tar (the diffusers folder with
#                  MODEL_CARD.md, samples.png; split into prior-v2.tar.part0… if over 15.5 MB — rejoin with
#                  `cat prior-v2.tar.part* > prior-v2.tar`), MODEL_CARD.md, train_log.txt
#   VAE_MINUTES    VAE loop budget (1.75)          UNET_MINUTES  UNet loop budget (4.5)
#   VAE_STEPS      VAE step cap (8000)             UNET_STEPS    UNet step cap (30000)
#   VAE_BATCH      (128)   UNET_BATCH (256)        UNET_PRESET   small | base | tiny (small)   VAE_PRESET small | tiny
#   SHARDS         training shards of 1024 renders (32)          RENDER_CHUNK  renders per call (512)
#   EXTRA_ARGS     more train-prior flags          DEVICE        cuda (default) | cpu
#   WORK           scratch folder (default: mktemp -d; holds data/ and run/ with the checkpoints)
#   DRY_RUN=1      tiny CPU settings (presets tiny, 2 shards of 16, a few steps): checks the script end to end
set -uo pipefail

: "${OUT:?set OUT to the output folder}"
if [ "${DRY_RUN:-0}" = 1 ]; then
  DEVICE=${DEVICE:-cpu}; UNET_PRESET=${UNET_PRESET:-tiny}; VAE_PRESET=${VAE_PRESET:-tiny}
  VAE_STEPS=${VAE_STEPS:-4}; UNET_STEPS=${UNET_STEPS:-4}; VAE_BATCH=${VAE_BATCH:-4}; UNET_BATCH=${UNET_BATCH:-4}
  SHARDS=${SHARDS:-2}; SHARD_SIZE=${SHARD_SIZE:-16}; RENDER_CHUNK=${RENDER_CHUNK:-16}
  EXTRA_ARGS=${EXTRA_ARGS:-"--sample-steps 2 --samples-per-prompt 1 --checkpoint-every 2 --log-every 1 --warmup-steps 1"}
fi
VAE_MINUTES=${VAE_MINUTES:-1.75}
UNET_MINUTES=${UNET_MINUTES:-4.5}
VAE_STEPS=${VAE_STEPS:-8000}
UNET_STEPS=${UNET_STEPS:-30000}
VAE_BATCH=${VAE_BATCH:-128}
UNET_BATCH=${UNET_BATCH:-256}
UNET_PRESET=${UNET_PRESET:-small}
VAE_PRESET=${VAE_PRESET:-small}
SHARDS=${SHARDS:-32}
SHARD_SIZE=${SHARD_SIZE:-1024}
RENDER_CHUNK=${RENDER_CHUNK:-512}
EXTRA_ARGS=${EXTRA_ARGS:-}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-$(mktemp -d)}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10

mkdir -p "$OUT" "$WORK"
LOG="$OUT/train_log.txt"
exec > >(tee -a "$LOG") 2>&1
echo "== gpu_train_prior_v2.sh $(date -u +%FT%TZ) OUT=$OUT WORK=$WORK DEVICE=$DEVICE DRY_RUN=${DRY_RUN:-0}"
echo "   VAE: $VAE_PRESET ${VAE_MINUTES} min ≤ $VAE_STEPS steps × $VAE_BATCH; UNet: $UNET_PRESET ${UNET_MINUTES} min ≤ $UNET_STEPS steps × $UNET_BATCH"
echo "   data: $SHARDS shards × $SHARD_SIZE (chunk $RENDER_CHUNK); EXTRA_ARGS=$EXTRA_ARGS; git $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
python3 - <<'PY'
import torch, diffusers, transformers
print(f"   torch {torch.__version__} cuda {torch.cuda.is_available()} "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''} diffusers {diffusers.__version__} "
      f"transformers {transformers.__version__}", flush=True)
PY
T0=$SECONDS
# shellcheck disable=SC2086
python3 -m dreammapping.cli train-prior --kind latent --out "$WORK/run" --data "$WORK/data" --device "$DEVICE" \
  --preset "$UNET_PRESET" --vae-preset "$VAE_PRESET" --train-shards "$SHARDS" --shard-size "$SHARD_SIZE" \
  --render-chunk "$RENDER_CHUNK" --vae-steps "$VAE_STEPS" --vae-batch-size "$VAE_BATCH" \
  --vae-max-minutes "$VAE_MINUTES" --steps "$UNET_STEPS" --batch-size "$UNET_BATCH" --max-minutes "$UNET_MINUTES" \
  --checkpoint-every 1000 --log-every 100 $EXTRA_ARGS
status=$?
echo "   train-prior exit $status after $((SECONDS - T0)) s"
if [ -f "$WORK/run/model_index.json" ] && [ -f "$WORK/run/MODEL_CARD.md" ]; then
  tar -C "$WORK/run" --exclude='*checkpoint.safetensors' --exclude='latents' --exclude='*.tmp' -cf "$OUT/prior-v2.tar" .
  size=$(stat -c %s "$OUT/prior-v2.tar")
  if [ "$size" -gt 15500000 ]; then
    split -b 15000000 -d -a 1 "$OUT/prior-v2.tar" "$OUT/prior-v2.tar.part" && rm "$OUT/prior-v2.tar"
    echo "   prior-v2.tar was $size bytes: split (cat prior-v2.tar.part* > prior-v2.tar)"
  fi
  cp "$WORK/run/MODEL_CARD.md" "$OUT/MODEL_CARD.md"
  cat "$WORK/run/MODEL_CARD.md"
else
  echo "!! no finished folder in $WORK/run"; status=1
fi
echo "== done in $((SECONDS - T0)) s, status $status; files in $OUT:"
ls -l "$OUT"
exit $status
