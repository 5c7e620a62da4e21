# Records world v1 truth renders, canonical layouts and a v1 training batch (run once with the code before world v2,
# commit 538ae31: `PYTHONPATH=<that checkout>/src python tests/data/make_toyworld_v1_reference.py tests/data/toyworld_v1_reference.safetensors`).
import json, sys
import torch
from safetensors.torch import save_file
from dreammapping.cameras import make_cameras
from dreammapping.toyworld.grammar import parse
from dreammapping.toyworld.sdf import render_scenes

PROMPTS = ["a red cube", "a small blue sphere", "a large yellow cone", "a green cylinder", "a gray torus",
           "a red cube on top of a blue sphere", "a cyan torus next to a small brown cone",
           "a large pink sphere on top of a large purple cylinder"]
az = torch.tensor([35.0, 130.0, 250.0]); el = torch.tensor([10.0, 40.0, 80.0])
cams = make_cameras(az, el, torch.full((3,), 3.8), torch.full((3,), 45.0), 16, 16)
tensors = {}
for i, p in enumerate(PROMPTS):
    rgb, alpha = render_scenes(parse(p), cams)
    tensors[f"rgb{i}"] = rgb.contiguous(); tensors[f"alpha{i}"] = alpha.contiguous()
layouts = {p: [[o.shape, o.color, list(o.rgb), o.size, list(o.center), o.size_name] for o in parse(p).objects] for p in PROMPTS}
save_file(tensors, sys.argv[1], metadata={"prompts": json.dumps(PROMPTS), "layouts": json.dumps(layouts),
          "cameras": json.dumps({"azimuth": az.tolist(), "elevation": el.tolist(), "distance": 3.8, "fovy": 45.0, "size": 16})})
# v1's training stream: sample_batch with its defaults
from dreammapping.toyworld.dataset import sample_batch
from safetensors.torch import load_file
imgs, caps, labels = sample_batch(6, resolution=12, generator=torch.Generator().manual_seed(0))
t = load_file(sys.argv[1]); t["batch_images"] = imgs.contiguous()
for k, v in labels.items(): t[f"batch_{k}"] = v.contiguous()
from safetensors import safe_open
with safe_open(sys.argv[1], "pt") as f: meta = f.metadata()
meta["batch_captions"] = json.dumps(caps)
save_file(t, sys.argv[1], metadata=meta)
