"""Random captioned renders of the toy world: the embedded prior's training data, generated on the fly.

`sample_batch` draws every random number from one `torch.Generator` on the CPU (same seed → identical batch on any
device), lays out the scenes with `grammar.make_scene` (world 1, the default: v1's stream, bit for bit) or draws them
from p(scene | caption) with `grammar.jittered_scene` (world 2: jitter, patterns, white and black), and renders them
in one batched ray-march on `device`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreammapping.cameras import VIEW_TAGS, OrbitConfig, sample_orbit
from dreammapping.toyworld.grammar import (
    COLOR_NAMES, HELD_OUT, HELD_OUT_PATTERNS, N_DRAWS, PATTERNS, RELATIONS, SHAPES, SIZES, V1_COLOR_NAMES, Scene,
    jittered_scene, make_scene,
)
from dreammapping.toyworld.sdf import render_scenes

OVERHEAD_PROBABILITY = 0.15  # extra overhead views on top of OrbitConfig()'s ranges
SIZE_NAMES = ("", *SIZES)  # index = the `size` label: 0 default, 1 small, 2 large
SINGLE_SIZE_PROBS = (0.5, 0.25, 0.25)  # how often a lone object is unsized / small / large
PAIR_SIZE_PROBS = (0.8, 0.1, 0.1)  # the same for each object of a pair
WORLDS = (1, 2)
PATTERN_FRACTION = 0.5  # world 2: how often each object is patterned


def _colors(world: int) -> tuple[str, ...]:
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; known: {WORLDS}")
    return V1_COLOR_NAMES if world == 1 else COLOR_NAMES


def all_pairs(world: int = 1) -> list[tuple[str, str]]:
    """Every (colour, shape) pair of the world's colours, held-out ones included, colour-major."""
    return [(c, s) for c in _colors(world) for s in SHAPES]


def training_pairs(world: int = 1) -> list[tuple[str, str]]:
    """The (colour, shape) pairs the prior is trained on: all pairs minus HELD_OUT."""
    held = set(HELD_OUT)
    return [p for p in all_pairs(world) if p not in held]


def training_patterns(shape: str, include_held_out: bool = False) -> list[str]:
    """The patterns drawn on `shape` in world-2 training: PATTERNS minus HELD_OUT_PATTERNS (unless asked)."""
    return [p for p in PATTERNS if include_held_out or (p, shape) not in HELD_OUT_PATTERNS]


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
# World 2 adds patterns (every held-out pattern–shape pair, each pattern on trained shapes), white and black, and
# patterned pairs of both relations.
EVAL_PROMPTS_V2: tuple[str, ...] = (
    *EVAL_PROMPTS,
    "a blue cylinder with white stripes", "a yellow sphere with black checks", "a red cube with white dots",
    "a red cube with white stripes", "a green cone with yellow stripes", "an orange torus with blue checks",
    "a purple cube with black checks", "a cyan sphere with red dots", "a pink cylinder with white dots",
    "a white cube", "a black sphere", "a black cone with white stripes",
    "a red cube with white dots on top of a blue sphere",
    "a yellow cube on top of a green cylinder with black stripes",
    "a white sphere with red checks next to a black cube",
    "a gray cone with orange dots next to a blue torus with white stripes",
)


def _choice(probs: tuple[float, ...], n: int, generator: torch.Generator | None) -> Tensor:
    return torch.multinomial(torch.tensor(probs), n, replacement=True, generator=generator)


def sample_scenes(
    batch_size: int,
    generator: torch.Generator | None = None,
    include_held_out: bool = False,
    two_object_fraction: float = 0.3,
    *,
    world: int = 1,
    pattern_fraction: float = PATTERN_FRACTION,
    jitter: float = 1.0,
) -> tuple[list[Scene], dict[str, Tensor]]:
    """Random scenes and their labels (color, shape, second_color, second_shape, relation, size; CPU tensors).

    World 2 (see `sample_batch`) also labels pattern, pattern_color, second_pattern, second_pattern_color."""
    if world == 2:
        return _sample_scenes_v2(batch_size, generator, include_held_out, two_object_fraction, pattern_fraction,
                                 jitter)
    pairs = all_pairs(world) if include_held_out else training_pairs(world)
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


def _sample_scenes_v2(B: int, generator: torch.Generator | None, include_held_out: bool, two_object_fraction: float,
                      pattern_fraction: float, jitter: float) -> tuple[list[Scene], dict[str, Tensor]]:
    pairs = all_pairs(2) if include_held_out else training_pairs(2)
    nc = len(COLOR_NAMES)
    # Every random tensor up front, whatever the outcome, so the stream is a fixed function of the seed.
    two = torch.rand(B, generator=generator) < two_object_fraction
    obj = torch.randint(len(pairs), (2, B), generator=generator)
    relation = torch.randint(len(RELATIONS), (B,), generator=generator)
    size_single = _choice(SINGLE_SIZE_PROBS, B, generator)
    size_pair = _choice(PAIR_SIZE_PROBS, 2 * B, generator).view(2, B)
    patterned = torch.rand(2, B, generator=generator) < pattern_fraction
    u_pattern = torch.rand(2, B, generator=generator, dtype=torch.float64)  # which of the allowed patterns
    pattern_color = torch.randint(nc - 1, (2, B), generator=generator)  # among the colours but the object's
    u = torch.rand(B, N_DRAWS, generator=generator, dtype=torch.float64)

    keys = ("color", "shape", "size", "pattern", "pattern_color", "second_color", "second_shape", "second_size",
            "second_pattern", "second_pattern_color", "relation")
    scenes, labels = [], {k: torch.full((B,), -1, dtype=torch.long) for k in keys}
    for i in range(B):
        n = 2 if two[i] else 1
        specs = []
        for k in range(n):
            color, shape = pairs[int(obj[k, i])]
            size = int(size_pair[k, i]) if n == 2 else int(size_single[i])
            pattern, pcolor = "", ""
            if patterned[k, i]:
                allowed = training_patterns(shape, include_held_out)
                pattern = allowed[min(int(u_pattern[k, i] * len(allowed)), len(allowed) - 1)]
                j = int(pattern_color[k, i])
                pcolor = COLOR_NAMES[j + (j >= COLOR_NAMES.index(color))]
            specs.append((color, shape, SIZE_NAMES[size], pattern, pcolor))
            pre = "second_" if k else ""
            labels[pre + "color"][i], labels[pre + "shape"][i] = COLOR_NAMES.index(color), SHAPES.index(shape)
            labels[pre + "size"][i] = size
            labels[pre + "pattern"][i] = PATTERNS.index(pattern) + 1 if pattern else 0
            labels[pre + "pattern_color"][i] = COLOR_NAMES.index(pcolor) if pattern else -1
        rel = RELATIONS[int(relation[i])] if n == 2 else None
        if rel is not None:
            labels["relation"][i] = int(relation[i])
        scenes.append(jittered_scene(specs, rel, u[i].tolist(), jitter))
    return scenes, labels


def sample_batch(
    batch_size: int,
    resolution: int = 32,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    include_held_out: bool = False,
    two_object_fraction: float = 0.3,
    supersample: int = 2,
    *,
    world: int = 1,
    pattern_fraction: float = PATTERN_FRACTION,
    jitter: float = 1.0,
) -> tuple[Tensor, list[str], dict[str, Tensor]]:
    """A batch of captioned toy-world renders.

    Returns images [B,3,R,R] in [0,1] on `device`; captions like "a red cube, front view" or
    "a small red cube on top of a blue sphere, side view"; labels (LongTensors [B] on `device`): color, shape,
    size (0 none / 1 small / 2 large) of the first-mentioned object; second_color, second_shape, second_size
    (-1 without a second object); relation (-1 none / 0 on top of / 1 next to); view (0 front / 1 side / 2 back /
    3 overhead). Cameras follow `sample_orbit` with `OrbitConfig()` plus OVERHEAD_PROBABILITY overhead views.
    HELD_OUT pairs never appear (for any object) unless `include_held_out`.

    `world=1` (default) is v1's world and stream, unchanged. `world=2` draws each scene from p(scene | caption)
    (`grammar.jittered_scene`, ranges scaled by `jitter`; lights jittered too) over all COLOR_NAMES (white and black
    included), patterns each object with probability `pattern_fraction` (a pattern allowed on its shape, in a colour
    other than the object's), and never draws HELD_OUT_PATTERNS unless `include_held_out`. Its extra labels:
    pattern (0 none, 1 + index into PATTERNS), pattern_color (-1 none), second_pattern (-1 without a second
    object), second_pattern_color (-1 none). Train at resolution 64 for patterns to show (supersampled 2×).
    """
    scenes, labels = sample_scenes(batch_size, generator, include_held_out, two_object_fraction, world=world,
                                   pattern_fraction=pattern_fraction, jitter=jitter)
    config = OrbitConfig(overhead_probability=OVERHEAD_PROBABILITY)
    cameras = sample_orbit(batch_size, resolution, resolution, config, generator)
    tags = cameras.view_tags
    labels["view"] = torch.tensor([VIEW_TAGS.index(t) for t in tags], dtype=torch.long)
    captions = [f"{scene.caption()}, {tag} view" for scene, tag in zip(scenes, tags)]
    rgb, _ = render_scenes(scenes, cameras.to(device), supersample=supersample)
    images = rgb.permute(0, 3, 1, 2).contiguous()
    return images, captions, {k: v.to(device) for k, v in labels.items()}
