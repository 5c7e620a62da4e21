#!/usr/bin/env bash
# Train the embedded toy-world prior and the attribute classifier on one GPU, then judge the prior.
#
# Usage (from the repo root; diffusers/transformers/tokenizers/safetensors/tyro/tqdm importable, e.g. via PYTHONPATH):
#   OUT=/path/to/out PYTHONPATH=src bash scripts/gpu_train_prior.sh
# Environment (defaults aimed at ~5 min of prior training + ~1 min classifier on one H100):
#   OUT            output folder (required); receives at most 6 files, each < 16 MB:
#                  prior.tar (the diffusers folder with MODEL_CARD.md and samples.png; split into prior.tar.part0/1
#                  if it would exceed 15.5 MB — rejoin with `cat prior.tar.part* > prior.tar`), classifier.safetensors,
#                  train_log.txt, eval.json
#   PRIOR_MINUTES  wall-clock budget of the prior's training loop (default 5); PRIOR_STEPS caps steps (default 100000)
#   PRIOR_BATCH    batch size (256)          PRIOR_PRESET  small | tiny (small)      PRIOR_LR  (4e-4)
#   PRIOR_ARGS     extra train-prior flags, e.g. "--compile --offset-noise 0"
#   CLS_STEPS      classifier steps (800)   CLS_BATCH     (256)
#   EVAL_N         samples per prompt for the accuracy table (16); EVAL_STEPS DDIM steps (30)
#   DEVICE         cuda (default) | cpu      WORK          scratch folder (default: mktemp -d; keeps the checkpoint)
# Tiny CPU dry run:
#   OUT=/tmp/o DEVICE=cpu PRIOR_PRESET=tiny PRIOR_STEPS=4 PRIOR_BATCH=8 CLS_STEPS=3 CLS_BATCH=16 EVAL_N=1 EVAL_STEPS=2 \
#     PRIOR_ARGS="--sample-steps 2 --samples-per-prompt 1" PYTHONPATH=src bash scripts/gpu_train_prior.sh
# (PRIOR_TAR_MAX, default 15500000 bytes, is the size above which prior.tar is split.)
set -uo pipefail

: "${OUT:?set OUT to the output folder}"
PRIOR_MINUTES=${PRIOR_MINUTES:-5}
PRIOR_STEPS=${PRIOR_STEPS:-100000}
PRIOR_BATCH=${PRIOR_BATCH:-256}
PRIOR_PRESET=${PRIOR_PRESET:-small}
PRIOR_LR=${PRIOR_LR:-4e-4}
PRIOR_ARGS=${PRIOR_ARGS:-}
CLS_STEPS=${CLS_STEPS:-800}
CLS_BATCH=${CLS_BATCH:-256}
EVAL_N=${EVAL_N:-16}
EVAL_STEPS=${EVAL_STEPS:-30}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-$(mktemp -d)}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5

mkdir -p "$OUT" "$WORK"
LOG="$OUT/train_log.txt"
exec > >(tee -a "$LOG") 2>&1
echo "== gpu_train_prior.sh $(date -u +%FT%TZ) OUT=$OUT WORK=$WORK DEVICE=$DEVICE"
echo "   PRIOR_MINUTES=$PRIOR_MINUTES PRIOR_STEPS=$PRIOR_STEPS PRIOR_BATCH=$PRIOR_BATCH PRIOR_PRESET=$PRIOR_PRESET PRIOR_LR=$PRIOR_LR PRIOR_ARGS=$PRIOR_ARGS"
echo "   CLS_STEPS=$CLS_STEPS CLS_BATCH=$CLS_BATCH EVAL_N=$EVAL_N EVAL_STEPS=$EVAL_STEPS git=$(git rev-parse --short HEAD 2>/dev/null || echo ?)"
python - <<'PY'
import torch, diffusers, transformers, tokenizers
print(f"   torch {torch.__version__} cuda {torch.cuda.is_available()} "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''} diffusers {diffusers.__version__} "
      f"transformers {transformers.__version__} tokenizers {tokenizers.__version__}", flush=True)
PY
status=0
T0=$SECONDS

# 1. the prior (most important: first)
echo "== [1/3] prior"
# shellcheck disable=SC2086
python -m dreammapping.toyworld.train_prior --out "$WORK/prior" --device "$DEVICE" --preset "$PRIOR_PRESET" \
  --steps "$PRIOR_STEPS" --batch-size "$PRIOR_BATCH" --lr "$PRIOR_LR" --max-minutes "$PRIOR_MINUTES" \
  --checkpoint-every 1000 --log-every 50 --resume $PRIOR_ARGS
rc=$?
if [ $rc -ne 0 ]; then echo "!! prior training failed (rc=$rc)"; status=1; fi
if [ -f "$WORK/prior/model_index.json" ]; then
  tar -C "$WORK/prior" --exclude=checkpoint.safetensors --exclude='*.tmp' -cf "$OUT/prior.tar" .
  size=$(stat -c %s "$OUT/prior.tar")
  if [ "$size" -gt "${PRIOR_TAR_MAX:-15500000}" ]; then
    split -b $(( ${PRIOR_TAR_MAX:-15500000} < 15000000 ? ${PRIOR_TAR_MAX:-15500000} : 15000000 )) -d -a 1 "$OUT/prior.tar" "$OUT/prior.tar.part" && rm "$OUT/prior.tar"
    echo "   prior.tar was $size bytes: split into $(ls "$OUT" | grep -c 'prior.tar.part') parts (cat prior.tar.part* > prior.tar)"
  fi
  ls -l "$OUT"
  cat "$WORK/prior/MODEL_CARD.md"
fi
echo "   elapsed $((SECONDS - T0)) s"

# 2. the classifier
echo "== [2/3] classifier"
python -m dreammapping.toyworld.classifier --out "$OUT/classifier.safetensors" --steps "$CLS_STEPS" \
  --batch-size "$CLS_BATCH" --device "$DEVICE"
rc=$?
if [ $rc -ne 0 ]; then echo "!! classifier training failed (rc=$rc)"; status=1; fi
echo "   elapsed $((SECONDS - T0)) s"

# 3. accuracy table: samples at CFG 2 / 5 / 7.5 judged by the fresh classifier
echo "== [3/3] accuracy check"
if [ -f "$WORK/prior/model_index.json" ] && [ -f "$OUT/classifier.safetensors" ]; then
  EVAL_N=$EVAL_N EVAL_STEPS=$EVAL_STEPS DEVICE=$DEVICE PRIOR_DIR="$WORK/prior" OUTDIR="$OUT" python - <<'PY'
import json, os, time
from dreammapping.toyworld.classifier import AttributeClassifier
from dreammapping.toyworld.train_prior import accuracy_report, load_model_folder
dev = os.environ["DEVICE"]
t = time.time()
models = load_model_folder(os.environ["PRIOR_DIR"], dev)
clf = AttributeClassifier.from_pretrained(os.path.join(os.environ["OUTDIR"], "classifier.safetensors"), device=dev)
table, numbers = accuracy_report(models, clf, n_per_prompt=int(os.environ["EVAL_N"]), steps=int(os.environ["EVAL_STEPS"]),
                                 device=dev)
print(table)
print(f"(eval {time.time() - t:.0f} s)")
json.dump(numbers, open(os.path.join(os.environ["OUTDIR"], "eval.json"), "w"), indent=2)
PY
  rc=$?
  if [ $rc -ne 0 ]; then echo "!! accuracy check failed (rc=$rc)"; status=1; fi
else
  echo "!! skipped (prior or classifier missing)"
fi
echo "== done in $((SECONDS - T0)) s, status $status; files in $OUT:"
ls -l "$OUT"
exit $status
