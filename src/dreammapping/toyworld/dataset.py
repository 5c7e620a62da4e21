"""Random captioned renders of the toy world: the embedded prior's training data, generated on the fly.

`sample_batch` draws every random number from one `torch.Generator` on the CPU (same seed → identical batch on any
device), lays out the scenes with `grammar.make_scene`, and renders them in one batched ray-march on `device`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreammapping.cameras import VIEW_TAGS, OrbitConfig, sample_orbit
from dreammapping.toyworld.grammar import COLOR_NAMES, HELD_OUT, RELATIONS, SHAPES, SIZES, Scene, make_scene
from dreammapping.toyworld.sdf import render_scenes

OVERHEAD_PROBABILITY = 0.15  # extra overhead views on top of OrbitConfig()'s ranges
SIZE_NAMES = ("", *SIZES)  # index = the `size` label: 0 default, 1 small, 2 large
SINGLE_SIZE_PROBS = (0.5, 0.25, 0.25)  # how often a lone object is unsized / small / large
PAIR_SIZE_PROBS = (0.8, 0.1, 0.1)  # the same for each object of a pair


def all_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair, held-out ones included, colour-major."""
    return [(c, s) for c in COLOR_NAMES for s in SHAPES]


def training_pairs() -> list[tuple[str, str]]:
    """The (colour, shape) pairs the prior is trained on: all pairs minus HELD_OUT."""
    held = set(HELD_OUT)
    return [p for p in all_pairs() if p not in held]


# Fixed evaluation prompts: every held-out pair, a spread of training pairs (each shape and colour at least once),
# sizes, and two-object compositions of both relations (some mixing in held-out pairs).
EVAL_PROMPTS: tuple[str, ...] = (
    *(f"a {c} {s}" for c, s in HELD_OUT),
    "a red cube", "an orange sphere", "a yellow cone", "a green cylinder", "a cyan torus",
    "a blue sphere", "a purple cube", "a pink cone", "a brown cylinder", "a gray torus",
    "a small green cube", "a large pink sphere",
    "a red cube on top of a blue sphere",
    "a yellow sphere on top of a green cylinder",
    "an orange cone on top of a purple cube",
    "a green cone next to a yellow cylinder",
    "a cyan torus next to a red sphere",
    "a blue cone next to a pink cube",
)


def _choice(probs: tuple[float, ...], n: int, generator: torch.Generator | None) -> Tensor:
    return torch.multinomial(torch.tensor(probs), n, replacement=True, generator=generator)


def sample_scenes(
    batch_size: int,
    generator: torch.Generator | None = None,
    include_held_out: bool = False,
    two_object_fraction: float = 0.3,
) -> tuple[list[Scene], dict[str, Tensor]]:
    """Random scenes and their labels (color, shape, second_color, second_shape, relation, size; CPU tensors)."""
    pairs = all_pairs() if include_held_out else training_pairs()
    B = batch_size
    # Draw every random tensor up front, whatever the outcome, so the stream is a fixed function of the seed.
    two = torch.rand(B, generator=generator) < two_object_fraction
    first = torch.randint(len(pairs), (B,), generator=generator)
    second = torch.randint(len(pairs), (B,), generator=generator)
    relation = torch.randint(len(RELATIONS), (B,), generator=generator)
    size_single = _choice(SINGLE_SIZE_PROBS, B, generator)
    size_a, size_b = _choice(PAIR_SIZE_PROBS, B, generator), _choice(PAIR_SIZE_PROBS, B, generator)

    scenes, labels = [], {k: torch.full((B,), -1, dtype=torch.long) for k in
                          ("color", "shape", "size", "second_color", "second_shape", "second_size", "relation")}
    for i in range(B):
        c1, s1 = pairs[int(first[i])]
        labels["color"][i], labels["shape"][i] = COLOR_NAMES.index(c1), SHAPES.index(s1)
        if two[i]:
            c2, s2 = pairs[int(second[i])]
            za, zb, rel = int(size_a[i]), int(size_b[i]), int(relation[i])
            scenes.append(make_scene((c1, s1, SIZE_NAMES[za]), (c2, s2, SIZE_NAMES[zb]), RELATIONS[rel]))
            labels["second_color"][i], labels["second_shape"][i] = COLOR_NAMES.index(c2), SHAPES.index(s2)
            labels["size"][i], labels["second_size"][i], labels["relation"][i] = za, zb, rel
        else:
            z = int(size_single[i])
            scenes.append(make_scene((c1, s1, SIZE_NAMES[z])))
            labels["size"][i] = z
    return scenes, labels


def sample_batch(
    batch_size: int,
    resolution: int = 32,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    include_held_out: bool = False,
    two_object_fraction: float = 0.3,
    supersample: int = 2,
) -> tuple[Tensor, list[str], dict[str, Tensor]]:
    """A batch of captioned toy-world renders.

    Returns images [B,3,R,R] in [0,1] on `device`; captions like "a red cube, front view" or
    "a small red cube on top of a blue sphere, side view"; labels (LongTensors [B] on `device`): color, shape,
    size (0 none / 1 small / 2 large) of the first-mentioned object; second_color, second_shape, second_size
    (-1 without a second object); relation (-1 none / 0 on top of / 1 next to); view (0 front / 1 side / 2 back /
    3 overhead). Cameras follow `sample_orbit` with `OrbitConfig()` plus OVERHEAD_PROBABILITY overhead views.
    HELD_OUT pairs never appear (for any object) unless `include_held_out`.
    """
    scenes, labels = sample_scenes(batch_size, generator, include_held_out, two_object_fraction)
    config = OrbitConfig(overhead_probability=OVERHEAD_PROBABILITY)
    cameras = sample_orbit(batch_size, resolution, resolution, config, generator)
    tags = cameras.view_tags
    labels["view"] = torch.tensor([VIEW_TAGS.index(t) for t in tags], dtype=torch.long)
    captions = [f"{scene.caption()}, {tag} view" for scene, tag in zip(scenes, tags)]
    rgb, _ = render_scenes(scenes, cameras.to(device), supersample=supersample)
    images = rgb.permute(0, 3, 1, 2).contiguous()
    return images, captions, {k: v.to(device) for k, v in labels.items()}
