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
"""

from __future__ import annotations

import argparse
import json
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
from dreammapping.toyworld.grammar import COLOR_NAMES, SHAPES

FORMAT = "dreammapping-attribute-classifier-v1"
RELATION_NAMES = ("none", "on top of", "next to")


def default_weights_path() -> Path:
    from importlib.resources import files

    return Path(str(files("dreammapping") / "assets" / "classifier.safetensors"))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
    )


class AttributeClassifier(nn.Module):
    def __init__(self, color_names: Sequence[str], shape_names: Sequence[str], width: int = 32,
                 resolution: int = 32, feature_dim: int = 256):
        super().__init__()
        self.color_names, self.shape_names = list(color_names), list(shape_names)
        self.width, self.resolution, self.feature_dim = width, resolution, feature_dim
        w = width
        self.body = nn.Sequential(
            _block(3, w), nn.MaxPool2d(2),            # 16²
            _block(w, 2 * w), nn.MaxPool2d(2),        # 8²
            _block(2 * w, 4 * w), nn.MaxPool2d(2),    # 4²
        )
        self.neck = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(4 * w * 16, feature_dim), nn.SiLU())
        nc, ns = len(self.color_names), len(self.shape_names)
        self.heads = nn.ModuleDict({
            "color": nn.Linear(feature_dim, nc), "shape": nn.Linear(feature_dim, ns),
            "second_color": nn.Linear(feature_dim, nc + 1), "second_shape": nn.Linear(feature_dim, ns + 1),
            "relation": nn.Linear(feature_dim, len(RELATION_NAMES)),
        })

    @property
    def config(self) -> dict:
        return dict(color_names=self.color_names, shape_names=self.shape_names, width=self.width,
                    resolution=self.resolution, feature_dim=self.feature_dim)

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
            if k.startswith("second_"):
                ids = torch.where(ids == v.shape[-1] - 1, -1, ids)
            elif k == "relation":
                ids = ids - 1
            out[k], out[k + "_probs"] = ids, p
        return out

    # ------------------------------------------------------------------------------------------------ storage

    def save(self, path: str | Path) -> Path:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:  # creates the parent folder too
            save_file(state, str(tmp), metadata={"format": FORMAT, "config": json.dumps(self.config)})
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
                if meta.get("format") != FORMAT:
                    raise ValueError(f"not a {FORMAT} file (format={meta.get('format')!r})")
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
        color_names, shape_names = color_names or COLOR_NAMES, shape_names or SHAPES
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dreammapping.toyworld.classifier",
                                 description="Train the toy-world attribute classifier (the evaluation judge).")
    ap.add_argument("--out", default=str(default_weights_path()), help="output .safetensors (default: shipped path)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args(argv)
    _, metrics = train_classifier(a.steps, a.batch_size, str(resolve_device(a.device)), a.out, seed=a.seed, lr=a.lr)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
