#!/usr/bin/env bash
# One GPU session (run by the lead through the device tool, from the repo root, with .whl carried):
# train the embedded prior, pack it for the trip back, judge it with the shipped classifier, and check gsplat
# against the torch backend. This is the script that produced assets/prior (PRIOR_MINUTES=3.2).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
(MAX_JOBS=8 timeout 300 python3 -c "import gsplat, time; t=time.time(); from gsplat.cuda._backend import _C; print('gsplat compiled', _C is not None, round(time.time()-t), 's')" > $OUT/gsplat_build.txt 2>&1 &)
python3 -m dreammapping.toyworld.train_prior --out /tmp/prior --device cuda --preset small --steps 100000 \
  --batch-size 256 --lr 4e-4 --max-minutes ${PRIOR_MINUTES:-3.8} --checkpoint-every 1000 --log-every 100 2>&1 | tee $OUT/train_log.txt
tar -C /tmp/prior --exclude=checkpoint.safetensors --exclude='*.tmp' -cf $OUT/prior.tar . && ls -l $OUT
s=$(stat -c %s $OUT/prior.tar); [ "$s" -gt 15500000 ] && split -b 15000000 -d -a 1 $OUT/prior.tar $OUT/prior.tar.part && rm $OUT/prior.tar
cat /tmp/prior/MODEL_CARD.md | head -40
timeout 90 python3 - <<'PY' 2>&1 | tee $OUT/eval.txt
import json, os, time
from dreammapping.toyworld.classifier import AttributeClassifier
from dreammapping.toyworld.train_prior import accuracy_report, load_model_folder
t = time.time()
models = load_model_folder("/tmp/prior", "cuda")
clf = AttributeClassifier.from_pretrained(device="cuda")  # the shipped classifier
table, numbers = accuracy_report(models, clf, n_per_prompt=8, steps=30, device="cuda")
print(table); print(f"(eval {time.time() - t:.0f} s)")
json.dump(numbers, open(os.path.join(os.environ["OUT"], "eval.json"), "w"), indent=2)
PY
echo "== gsplat"; cat $OUT/gsplat_build.txt
timeout 60 python3 -m pytest -q -x tests/test_render.py -k "gsplat" -rA 2>&1 | tail -8
