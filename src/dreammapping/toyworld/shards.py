"""Seeded dataset shards of toy-world renders, rendered once and cached on disk (and their VAE latents).

A latent prior trains for many epochs over a fixed set of renders, so the renders are made once: shard i of a
`ShardSpec` is `sample_fn(RENDER_CHUNK, …)` called until it holds `shard_size` images, all from one generator seeded
by (seed, i) — the same shard on any machine, in any order, however many shards a later run asks for. Files::

    <data>/<spec key>/spec.json                the spec (and the world's fingerprint) the key stands for
    <data>/<spec key>/train_00000.safetensors  images uint8 [N,3,R,R], labels.<name> long [N]; captions in metadata
    <data>/<spec key>/val_00000.safetensors    the same, from another seed stream, held-out pairs included

The key hashes the spec and a fingerprint of the world's source (grammar, renderer, dataset, cameras), so a changed
world renders afresh instead of mixing old and new images. Every file is written atomically; a run killed mid-shard
leaves only whole shards, and the next run renders what is missing.

Latents (`encode_shards`): `<folder>/<vae sha>/train_00000.safetensors` holding `mean` fp16 [N,4,h,w], the VAE
posterior's mean (unscaled), keyed by the VAE file's hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from dreammapping.files import atomic_path, atomic_write_text, remove_stale_temporaries

RENDER_CHUNK = 128  # default images per sample_fn call inside a shard (`ShardSpec.render_chunk`)
WORLD_SOURCES = ("toyworld/grammar.py", "toyworld/sdf.py", "toyworld/dataset.py", "cameras.py")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardSpec:
    """What a set of shards holds; equal specs (and an equal world) give byte-identical shards."""

    resolution: int = 64
    supersample: int = 2
    shard_size: int = 1024
    seed: int = 0
    two_object_fraction: float = 0.3
    world: str = ""  # fingerprint of the renderer's source (`world_fingerprint`)
    render_chunk: int = RENDER_CHUNK  # images per sample_fn call: part of what a shard *is* (it orders the draws);
    # larger on a GPU, where one call renders a chunk in parallel
    world_version: int = 2  # sample_batch's `world`: 2 = jittered scenes, patterns, white and black

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return f"r{self.resolution}-s{self.seed}-n{self.shard_size}-{hashlib.sha256(blob).hexdigest()[:10]}"


@dataclass
class ShardData:
    """Shards loaded into memory: images uint8 [N,3,R,R] (or latents [N,4,h,w]), captions, labels [N] each."""

    tensors: Tensor
    captions: list[str]
    labels: dict[str, Tensor]

    def __len__(self) -> int:
        return self.tensors.shape[0]


def world_fingerprint(sample_fn: Callable | None = None) -> str:
    """sha256 (16 hex) of the world's source files, or of `sample_fn`'s source for a stand-in world."""
    h = hashlib.sha256()
    if sample_fn is None:
        root = Path(__file__).resolve().parent.parent
        for rel in WORLD_SOURCES:
            h.update(rel.encode())
            h.update((root / rel).read_bytes())
    else:
        h.update(inspect.getsource(sample_fn).encode())
    return h.hexdigest()[:16]


def _shard_seed(spec: ShardSpec, split: str, index: int) -> int:
    return (spec.seed * 1_000_003 + index) * 2 + SPLITS.index(split)


def shard_path(folder: Path, split: str, index: int) -> Path:
    return folder / f"{split}_{index:05d}.safetensors"


def render_shard(spec: ShardSpec, split: str, index: int, sample_fn: Callable, device: torch.device | str = "cpu"
                 ) -> ShardData:
    """Shard `index` of `split`: `spec.shard_size` renders from the generator seeded by (seed, split, index).
    The validation split includes the held-out colour–shape pairs (renders the prior never trains on)."""
    gen = torch.Generator().manual_seed(_shard_seed(spec, split, index))
    images, captions, labels = [], [], {}
    left = spec.shard_size
    while left > 0:
        n = min(spec.render_chunk, left)
        img, caps, lab = sample_fn(n, resolution=spec.resolution, generator=gen, device=device,
                                   include_held_out=(split == "val"), two_object_fraction=spec.two_object_fraction,
                                   supersample=spec.supersample, world=spec.world_version)
        images.append((img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        captions += list(caps)
        for k, v in lab.items():
            labels.setdefault(k, []).append(torch.as_tensor(v).long().cpu())
        left -= n
    return ShardData(torch.cat(images), captions, {k: torch.cat(v) for k, v in labels.items()})


def save_shard(path: Path, data: ShardData, name: str = "images", extra: dict | None = None) -> None:
    tensors = {name: data.tensors.contiguous(), **{f"labels.{k}": v.contiguous() for k, v in data.labels.items()}}
    meta = {"captions": json.dumps(data.captions), **(extra or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_shard(path: Path, name: str = "images") -> ShardData:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = f.get_tensor(name)
            labels = {k.removeprefix("labels."): f.get_tensor(k) for k in f.keys() if k.startswith("labels.")}
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line naming it
        raise RuntimeError(f"cannot read shard {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    return ShardData(tensors, json.loads(meta["captions"]), labels)


@dataclass
class ShardReport:
    """What `ensure_shards` did: the folder, how many shards it rendered now, and their mean cost."""

    folder: Path
    rendered: int
    reused: int
    seconds_per_shard: float  # mean render time of the shards rendered now (nan if none)


def ensure_shards(data_root: str | Path, spec: ShardSpec, num_train: int, num_val: int, sample_fn: Callable,
                  device: torch.device | str = "cpu", log: Callable[[str], None] = print) -> ShardReport:
    """Render the shards of `spec` that are not on disk yet (train 0…num_train−1, val 0…num_val−1); reuse the rest."""
    folder = Path(data_root) / spec.key()
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    spec_file = folder / "spec.json"
    if not spec_file.exists():
        atomic_write_text(spec_file, json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    rendered, reused, seconds = 0, 0, 0.0
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            path = shard_path(folder, split, i)
            if path.exists():
                reused += 1
                continue
            t0 = time.perf_counter()
            save_shard(path, render_shard(spec, split, i, sample_fn, device))
            dt = time.perf_counter() - t0
            seconds += dt
            rendered += 1
            log(f"shards: rendered {path.name} ({spec.shard_size} images, {dt:.1f} s)")
    return ShardReport(folder, rendered, reused, seconds / rendered if rendered else float("nan"))


def load_split(folder: Path, split: str, count: int, name: str = "images") -> ShardData:
    """Shards 0…count−1 of `split` concatenated."""
    parts = [load_shard(shard_path(folder, split, i), name) for i in range(count)]
    return ShardData(torch.cat([p.tensors for p in parts]), [c for p in parts for c in p.captions],
                     {k: torch.cat([p.labels[k] for p in parts]) for k in parts[0].labels})


def file_sha(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_images(vae, images_u8: Tensor, batch_size: int = 256, device: torch.device | str = "cpu") -> Tensor:
    """Posterior means [N,4,h,w] (unscaled, float32 on CPU) of uint8 images [N,3,R,R]."""
    out = []
    for start in range(0, images_u8.shape[0], batch_size):
        x = images_u8[start:start + batch_size].to(device).float() / 127.5 - 1.0
        out.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(out)


def encode_shards(vae, vae_id: str, image_folder: Path, latent_root: Path, splits: dict[str, int],
                  device: torch.device | str = "cpu", batch_size: int = 256,
                  log: Callable[[str], None] = print) -> Path:
    """Encode every image shard of `splits` (split → count) with `vae` into `latent_root/<vae_id>/`, skipping
    shards already encoded; returns that folder."""
    folder = Path(latent_root) / vae_id
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    for split, count in splits.items():
        for i in range(count):
            path = shard_path(folder, split, i)
            if path.exists():
                continue
            t0 = time.perf_counter()
            shard = load_shard(shard_path(image_folder, split, i))
            mean = encode_images(vae, shard.tensors, batch_size, device)
            save_shard(path, ShardData(mean.half(), shard.captions, shard.labels), name="mean")
            log(f"shards: encoded {path.name} ({len(shard)} images, {time.perf_counter() - t0:.1f} s)")
    return folder


__all__ = ["RENDER_CHUNK", "ShardData", "ShardReport", "ShardSpec", "encode_images", "encode_shards",
           "ensure_shards", "file_sha", "load_shard", "load_split", "render_shard", "save_shard", "shard_path",
           "world_fingerprint"]
