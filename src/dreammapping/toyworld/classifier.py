"""A small CNN that judges toy-world images: colour and shape of the objects, and their relation.

Heads (logits), following `toyworld.dataset.sample_batch`'s labels:
- `color` [C] and `shape` [S]: the first-mentioned object ("a red cube on top of a blue sphere" → red cube);
- `second_color` [C+1] and `second_shape` [S+1]: the second object, last class = "no second object";
- `relation` [3]: none / on top of / next to.
For "next to" the order of the two objects depends on the view (the first one is on the left from the front, on the
right from the back), so judge two-object images with `match_pair`, which accepts either order.

It is trained on renders that include the held-out pairs (it is a judge, not the prior) with mild augmentation
(pixel noise, shifts of a few pixels, blur) so that it judges generated images fairly. `features(images)` returns the
penultimate layer ([B, 256]) for a download-free FID.

`AttributeClassifier.from_pretrained(path=None)` loads the shipped weights `dreammapping/assets/classifier.safetensors`
(config and class names in the safetensors metadata). `train_classifier(...)` (or `python -m
dreammapping.toyworld.classifier --help`) reproduces them.

Classifier v2 (world v2, `pattern_names` set, 64² input, one more block) adds `pattern` [P+1] (0 = plain),
`pattern_color` [C+1] (last = none), `second_pattern` [P+2] (last = no second object) and `second_pattern_color`
[C+1]. It is trained on clean world-v2 renders (random views, jittered scenes) by `train_classifier_v2` (or
`python -m dreammapping.toyworld.classifier --world 2`), with a loss that accepts either order of a pair's objects,
so `match_pair`-style order-free judging is what it is made for. Its weights, when shipped, are
`dreammapping/assets/classifier_v2.safetensors` (`default_v2_weights_path()`); the v1 file and its loading are as
they were.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from dreammapping.devices import resolve_device
from dreammapping.files import atomic_path
from dreammapping.toyworld.dataset import sample_batch
from dreammapping.toyworld.grammar import COLOR_NAMES, PATTERNS, SHAPES, V1_COLOR_NAMES

FORMAT = "dreammapping-attribute-classifier-v1"
FORMAT_V2 = "dreammapping-attribute-classifier-v2"
RELATION_NAMES = ("none", "on top of", "next to")
# Heads whose last class means "none" (classify reports it as -1).
_NONE_LAST = ("second_color", "second_shape", "second_pattern", "second_pattern_color", "pattern_color")
# The heads of each object of a pair, in the same class space (the pair loss may swap them).
FIRST_HEADS = ("color", "shape", "pattern", "pattern_color")
SECOND_HEADS = ("second_color", "second_shape", "second_pattern", "second_pattern_color")


def default_weights_path() -> Path:
    from importlib.resources import files

    return Path(str(files("dreammapping") / "assets" / "classifier.safetensors"))


def default_v2_weights_path() -> Path:
    from importlib.resources import files

    return Path(str(files("dreammapping") / "assets" / "classifier_v2.safetensors"))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
    )


class AttributeClassifier(nn.Module):
    def __init__(self, color_names: Sequence[str], shape_names: Sequence[str], width: int = 32,
                 resolution: int = 32, feature_dim: int = 256, pattern_names: Sequence[str] | None = None):
        super().__init__()
        self.color_names, self.shape_names = list(color_names), list(shape_names)
        self.pattern_names = None if pattern_names is None else list(pattern_names)
        self.width, self.resolution, self.feature_dim = width, resolution, feature_dim
        w = width
        # 3 blocks up to 32² (v1's layout, 32² → 4²), one more per doubling above, down to 4² again.
        chans = [w, 2 * w, 4 * w] + [8 * w] * max(0, int(math.log2(max(resolution, 32))) - 5)
        layers: list[nn.Module] = []
        for cin, cout in zip([3, *chans[:-1]], chans):
            layers += [_block(cin, cout), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers)
        self.neck = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(chans[-1] * 16, feature_dim),
                                  nn.SiLU())
        nc, ns = len(self.color_names), len(self.shape_names)
        self.heads = nn.ModuleDict({
            "color": nn.Linear(feature_dim, nc), "shape": nn.Linear(feature_dim, ns),
            "second_color": nn.Linear(feature_dim, nc + 1), "second_shape": nn.Linear(feature_dim, ns + 1),
            "relation": nn.Linear(feature_dim, len(RELATION_NAMES)),
        })
        if self.pattern_names is not None:
            npat = len(self.pattern_names)
            self.heads.update({
                "pattern": nn.Linear(feature_dim, npat + 1), "pattern_color": nn.Linear(feature_dim, nc + 1),
                "second_pattern": nn.Linear(feature_dim, npat + 2),
                "second_pattern_color": nn.Linear(feature_dim, nc + 1),
            })

    @property
    def config(self) -> dict:
        config = dict(color_names=self.color_names, shape_names=self.shape_names, width=self.width,
                      resolution=self.resolution, feature_dim=self.feature_dim)
        if self.pattern_names is not None:
            config["pattern_names"] = self.pattern_names
        return config

    def _prep(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W] in [0,1], got {tuple(images.shape)}")
        x = images.to(next(self.parameters()).device, torch.float32)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="area")
        return x * 2 - 1

    def features(self, images: Tensor) -> Tensor:
        """Penultimate activations [B, feature_dim] (differentiable)."""
        return self.neck(self.body(self._prep(images)))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        f = self.features(images)
        return {k: h(f) for k, h in self.heads.items()}

    @torch.no_grad()
    def classify(self, images: Tensor) -> dict[str, Tensor]:
        """Predicted ids [B] per head (`second_*` and `relation` are -1 for "none"), plus `<head>_probs`."""
        was = self.training
        self.eval()
        logits = self(images)
        self.train(was)
        out: dict[str, Tensor] = {}
        for k, v in logits.items():
            p = v.softmax(-1)
            ids = p.argmax(-1)
            if k in _NONE_LAST:
                ids = torch.where(ids == v.shape[-1] - 1, -1, ids)
            elif k == "relation":
                ids = ids - 1
            out[k], out[k + "_probs"] = ids, p
        return out

    # ------------------------------------------------------------------------------------------------ storage

    def save(self, path: str | Path) -> Path:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:  # creates the parent folder too
            fmt = FORMAT if self.pattern_names is None else FORMAT_V2
            save_file(state, str(tmp), metadata={"format": fmt, "config": json.dumps(self.config)})
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu"
                        ) -> "AttributeClassifier":
        """Load weights (default: the shipped `dreammapping/assets/classifier.safetensors`). A missing or unreadable
        file raises FileNotFoundError / ValueError with a one-line message naming it."""
        path = Path(path) if path is not None else default_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"attribute classifier weights not found: {path} (train them with "
                                    f"`python -m dreammapping.toyworld.classifier --out {path}`)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") not in (FORMAT, FORMAT_V2):
                    raise ValueError(f"not a {FORMAT} or {FORMAT_V2} file (format={meta.get('format')!r})")
                config = json.loads(meta["config"])
                state = {k: f.get_tensor(k) for k in f.keys()}
            model = cls(**config)
            model.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - every failure becomes one line naming the file
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise ValueError(f"cannot load attribute classifier weights {path}: {reason}") from None
        return model.to(device).eval()


def match_pair(pred: dict[str, Tensor], colors: Tensor, shapes: Tensor, second_colors: Tensor,
               second_shapes: Tensor) -> dict[str, Tensor]:
    """Order-invariant judgement of two-object images: bool [B] tensors `colors_ok`, `shapes_ok` (both objects'
    colours / shapes right, in either order) and `both_ok`."""
    c1, s1, c2, s2 = pred["color"], pred["shape"], pred["second_color"], pred["second_shape"]
    col_fwd = (c1 == colors) & (c2 == second_colors)
    col_rev = (c1 == second_colors) & (c2 == colors)
    sh_fwd = (s1 == shapes) & (s2 == second_shapes)
    sh_rev = (s1 == second_shapes) & (s2 == shapes)
    return {"colors_ok": col_fwd | col_rev, "shapes_ok": sh_fwd | sh_rev,
            "both_ok": (col_fwd & sh_fwd) | (col_rev & sh_rev)}


# ---------------------------------------------------------------------------------------------------- training


def augment(images: Tensor, generator: torch.Generator | None = None, max_shift: int = 2, noise: float = 0.04,
            blur_prob: float = 0.3) -> Tensor:
    """Mild augmentation so the judge is fair to generated images: Gaussian pixel noise (σ ~ U(0, noise)), random
    shifts of up to `max_shift` pixels (white fill), and a 3×3 blur with probability `blur_prob`."""
    B, C, H, W = images.shape
    dev = images.device
    r = torch.rand(B, 4, generator=generator).to(dev)
    x = images
    if max_shift > 0:
        pad = F.pad(x, (max_shift,) * 4, value=1.0)
        dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator).to(dev)
        dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=generator).to(dev)
        iy = (torch.arange(H, device=dev)[None, :] + dy[:, None])  # [B,H]
        ix = (torch.arange(W, device=dev)[None, :] + dx[:, None])  # [B,W]
        bidx = torch.arange(B, device=dev)[:, None, None]
        x = pad.permute(0, 2, 3, 1)[bidx, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
    if blur_prob > 0:
        k = torch.tensor([1.0, 2.0, 1.0], device=dev)
        k = (k[:, None] * k[None, :]) / 16
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(C, 1, 3, 3).contiguous(), groups=C)
        x = torch.where((r[:, 0] < blur_prob).view(B, 1, 1, 1), blurred, x)
    if noise > 0:
        sigma = (r[:, 1] * noise).view(B, 1, 1, 1)
        x = x + sigma * torch.randn(x.shape, generator=generator).to(dev)
    return x.clamp(0, 1)


def _targets(labels: dict[str, Tensor], nc: int, ns: int) -> dict[str, Tensor]:
    return {
        "color": labels["color"], "shape": labels["shape"],
        "second_color": torch.where(labels["second_color"] < 0, nc, labels["second_color"]),
        "second_shape": torch.where(labels["second_shape"] < 0, ns, labels["second_shape"]),
        "relation": labels["relation"] + 1,
    }


def train_classifier(steps: int = 1500, batch: int = 256, device: str | torch.device = "cpu",
                     out_path: str | Path | None = None, seed: int = 0, lr: float = 2e-3, width: int = 32,
                     resolution: int = 32, sample_fn: Callable | None = None,
                     color_names: Sequence[str] | None = None, shape_names: Sequence[str] | None = None,
                     log_every: int = 100, val_size: int = 512, progress: bool = True
                     ) -> tuple[AttributeClassifier, dict]:
    """Train on fresh `sample_batch` renders (held-out pairs included), AdamW + cosine, augmentation on.

    Returns (model in eval mode, metrics: validation accuracy per head on clean renders, steps, seconds).
    Saves to `out_path` when given. `sample_fn(batch, resolution=, generator=, device=, include_held_out=)` and the
    class names default to the toy world's."""
    sample_fn = sample_batch if sample_fn is None else sample_fn
    if color_names is None or shape_names is None:
        color_names, shape_names = color_names or V1_COLOR_NAMES, shape_names or SHAPES
    device = torch.device(device)
    torch.manual_seed(seed)
    model = AttributeClassifier(color_names, shape_names, width=width, resolution=resolution).to(device).train()
    nc, ns = len(model.color_names), len(model.shape_names)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        images, _, labels = sample_fn(batch, resolution=resolution, generator=gen, device=device,
                                      include_held_out=True)
        x = augment(images.to(device), gen)
        logits = model(x)
        tg = _targets({k: v.to(device) for k, v in labels.items()}, nc, ns)
        loss = sum(F.cross_entropy(logits[k], tg[k]) for k in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step % log_every == 0 or step == steps):
            print(f"classifier step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    model.eval()
    vgen = torch.Generator().manual_seed(seed + 10_000)
    images, _, labels = sample_fn(val_size, resolution=resolution, generator=vgen, device=device,
                                  include_held_out=True)
    pred = model.classify(images)
    tg = _targets({k: v.to(device) for k, v in labels.items()}, nc, ns)
    metrics = {"steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
    for k in model.heads:
        p = pred[k]
        if k.startswith("second_"):
            p = torch.where(p < 0, nc if k == "second_color" else ns, p)
        elif k == "relation":
            p = p + 1
        metrics[f"val_{k}_acc"] = round(float((p == tg[k]).float().mean()), 4)
    if out_path is not None:
        model.save(out_path)
    return model, metrics


# ------------------------------------------------------------------------------------------ classifier v2


def _targets_v2(labels: dict[str, Tensor], nc: int, ns: int, npat: int) -> dict[str, Tensor]:
    """Class ids per head from world-2 labels (-1 → the head's "none" class)."""
    none = lambda key, last: torch.where(labels[key] < 0, last, labels[key])  # noqa: E731
    return {**_targets(labels, nc, ns), "pattern": labels["pattern"], "pattern_color": none("pattern_color", nc),
            "second_pattern": none("second_pattern", npat + 1),
            "second_pattern_color": none("second_pattern_color", nc)}


def pair_loss(logits: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy over every head, where a two-object image may name its objects in either order (the
    smaller of the two orders' losses counts): "next to" puts the first-named object on the left from the front but
    on the right from the back, and views alone do not always tell."""
    ce = lambda k, t: F.cross_entropy(logits[k], t, reduction="none")  # noqa: E731
    fwd = sum(ce(a, targets[a]) + ce(b, targets[b]) for a, b in zip(FIRST_HEADS, SECOND_HEADS) if a in logits)
    # (a lone object's "no second object" class does not exist in a first head: clamped, and never counted)
    rev = sum(ce(a, targets[b].clamp(max=logits[a].shape[-1] - 1)) + ce(b, targets[a])
              for a, b in zip(FIRST_HEADS, SECOND_HEADS) if a in logits)
    pair = targets["relation"] > 0
    per_image = torch.where(pair, torch.minimum(fwd, rev), fwd) + ce("relation", targets["relation"])
    return per_image.mean()


def v2_accuracy(pred: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, float]:
    """Accuracy per head (class ids as `_targets_v2` gives them) on world-2 images; a pair's objects are matched in
    the order that gets more of their attributes right. Also `pair_all`: every attribute of both objects right."""
    p = {k: v.clone() for k, v in pred.items()}
    fwd = sum((p[a] == targets[a]).int() + (p[b] == targets[b]).int() for a, b in zip(FIRST_HEADS, SECOND_HEADS))
    rev = sum((p[a] == targets[b]).int() + (p[b] == targets[a]).int() for a, b in zip(FIRST_HEADS, SECOND_HEADS))
    swap = (targets["relation"] > 0) & (rev > fwd)
    for a, b in zip(FIRST_HEADS, SECOND_HEADS):
        p[a], p[b] = torch.where(swap, pred[b], pred[a]), torch.where(swap, pred[a], pred[b])
    out = {k: round(float((p[k] == targets[k]).float().mean()), 4) for k in targets}
    pair = targets["relation"] > 0
    if pair.any():
        ok = torch.stack([p[k] == targets[k] for k in (*FIRST_HEADS, *SECOND_HEADS)]).all(0)
        out["pair_all"] = round(float(ok[pair].float().mean()), 4)
    return out


def _logit_ids(model: AttributeClassifier, images: Tensor, batch: int = 256) -> dict[str, Tensor]:
    """Argmax class ids per head (the raw class space of `_targets_v2`, not `classify`'s -1s)."""
    was = model.training
    model.eval()
    out: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            for k, v in model(images[i:i + batch]).items():
                out.setdefault(k, []).append(v.argmax(-1).cpu())
    model.train(was)
    return {k: torch.cat(v) for k, v in out.items()}


def validation_set_v2(size: int = 1024, resolution: int = 64, seed: int = 20_000) -> tuple[Tensor, dict[str, Tensor]]:
    """The fixed-seed world-2 validation set: clean renders from random views of jittered scenes, held-out
    combinations included (the judge must know them). Returns (images [N,3,R,R], labels)."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i in range(0, size, 128):
        x, _, lab = sample_batch(min(128, size - i), resolution=resolution, generator=gen, include_held_out=True,
                                 world=2)
        images.append(x)
        labels.append(lab)
    return torch.cat(images), {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]}


def _render_pool(folder: Path, size: int, resolution: int, seed: int, shard: int = 256,
                 progress: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """`size` world-2 training renders as uint8, rendered once in seeded shards under `folder` (a shard already
    there is reused, so an interrupted pool resumes)."""
    images, labels = [], []
    for j, i in enumerate(range(0, size, shard)):
        path = folder / f"pool-{resolution}-{seed}-{j:04d}.safetensors"
        if not path.is_file():
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(seed * 1_000_003 + j)
            x, _, lab = sample_batch(min(shard, size - i), resolution=resolution, generator=gen,
                                     include_held_out=True, world=2)
            with atomic_path(path) as tmp:
                save_file({"images": (x * 255).round().to(torch.uint8).contiguous(), **lab}, str(tmp))
            if progress:
                print(f"pool shard {j} ({min(shard, size - i)} renders, {time.perf_counter() - t0:.0f} s)", flush=True)
        with safe_open(str(path), framework="pt") as f:
            images.append(f.get_tensor("images"))
            labels.append({k: f.get_tensor(k) for k in f.keys() if k != "images"})
    return torch.cat(images), {k: torch.cat([lab[k] for lab in labels]) for k in labels[0]}


def train_classifier_v2(steps: int = 3000, batch: int = 128, device: str | torch.device = "cpu",
                        out_path: str | Path | None = None, work_dir: str | Path | None = None, seed: int = 0,
                        lr: float = 2e-3, width: int = 32, resolution: int = 64, pool: int = 0,
                        checkpoint_every: int = 100, val_size: int = 1024, log_every: int = 50,
                        progress: bool = True) -> tuple[AttributeClassifier, dict]:
    """Train classifier v2 on world-2 renders (held-out combinations included), AdamW + one-cycle, mild
    augmentation, `pair_loss`.

    Data: a fresh `sample_batch(world=2)` every step, or with `pool` > 0 a pool of that many renders made once
    (cached in `work_dir`) that minibatches are drawn from. With `work_dir`, `checkpoint.pt` (model, optimiser,
    schedule, step, random state) is written every `checkpoint_every` steps and a rerun resumes from it.
    Returns (model in eval mode, metrics: `val_<head>_acc` on `validation_set_v2(val_size)`, `val_pair_all`,
    steps, seconds). Saves the weights to `out_path` when given."""
    device = torch.device(device)
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AttributeClassifier(COLOR_NAMES, SHAPES, width=width, resolution=resolution,
                                pattern_names=PATTERNS).to(device).train()
    nc, ns, npat = len(COLOR_NAMES), len(SHAPES), len(PATTERNS)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    start, seconds = 0, 0.0
    ckpt = None if work is None else work / "checkpoint.pt"
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        start, seconds = int(state["step"]), float(state["seconds"])
        if progress:
            print(f"resumed from {ckpt} at step {start}", flush=True)
    data = None
    if pool > 0:
        if work is None:
            raise ValueError("a render pool needs a work_dir to cache it in")
        data = _render_pool(work, pool, resolution, seed, progress=progress)
    t0 = time.perf_counter() - seconds
    for step in range(start + 1, steps + 1):
        if data is None:
            images, _, labels = sample_batch(batch, resolution=resolution, generator=gen, device=device,
                                             include_held_out=True, world=2)
        else:
            idx = torch.randint(len(data[0]), (batch,), generator=gen)
            images, labels = data[0][idx].float() / 255, {k: v[idx] for k, v in data[1].items()}
        x = augment(images.to(device), gen, max_shift=3)
        loss = pair_loss(model(x), _targets_v2({k: v.to(device) for k, v in labels.items()}, nc, ns, npat))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step % log_every == 0 or step == steps):
            print(f"classifier v2 step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        if ckpt is not None and (step % checkpoint_every == 0 or step == steps):
            with atomic_path(ckpt) as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "gen": gen.get_state(), "step": step, "seconds": time.perf_counter() - t0}, tmp)
    model.eval()
    images, labels = validation_set_v2(val_size, resolution)
    acc = v2_accuracy(_logit_ids(model, images.to(device)), _targets_v2(labels, nc, ns, npat))
    metrics = {"steps": steps, "seconds": round(time.perf_counter() - t0, 1),
               **{f"val_{k}_acc" if k != "pair_all" else "val_pair_all": v for k, v in acc.items()}}
    if out_path is not None:
        model.save(out_path)
    return model, metrics


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dreammapping.toyworld.classifier",
                                 description="Train the toy-world attribute classifier (the evaluation judge).")
    ap.add_argument("--out", default=str(default_weights_path()), help="output .safetensors (default: shipped path)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--world", type=int, default=1, choices=(1, 2), help="2: classifier v2 on world-v2 renders")
    ap.add_argument("--work-dir", default=None, help="v2: checkpoint (resumed if present) and render-pool folder")
    ap.add_argument("--pool", type=int, default=0, help="v2: train on a pool of this many renders made once")
    a = ap.parse_args(argv)
    if a.world == 2:
        out = a.out if a.out != str(default_weights_path()) else str(default_v2_weights_path())
        _, metrics = train_classifier_v2(a.steps, a.batch_size, str(resolve_device(a.device)), out, a.work_dir,
                                         seed=a.seed, lr=a.lr, pool=a.pool)
        print(json.dumps(metrics))
        return 0
    _, metrics = train_classifier(a.steps, a.batch_size, str(resolve_device(a.device)), a.out, seed=a.seed, lr=a.lr)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
