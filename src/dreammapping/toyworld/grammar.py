"""The toy world's language: prompts ↔ scenes of one or two coloured primitives.

Grammar (case, articles and punctuation are ignored; a trailing "<tag> view" is dropped)::

    prompt   := object | object relation object
    object   := [size] colour shape
    relation := "on top of" | "on" | "next to" | "beside"

Layout (all in world units, +z up, the front camera sits on +x looking towards −x so world +y is image-right):

- one object: centred at the origin;
- "A on top of B": B below, A resting on B's top face, stacked along z; the pair's vertical extent is centred on z = 0;
- "A next to B": side by side along world y with A on the **left as seen from the front** (−y) and B on the right
  (+y), both resting on a common floor; the pair is centred on the origin.

Every scene is scaled down, if needed, so it fits inside a sphere of radius `MAX_SCENE_RADIUS` around the origin,
which the orbit cameras (radius 3.5–4, fovy 40–50°) frame with room to spare.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

from dreammapping.cameras import VIEW_TAGS

# --------------------------------------------------------------------------------------------------------- words

SHAPES: tuple[str, ...] = ("cube", "sphere", "cone", "cylinder", "torus")

# Saturated colours that stay recognisable under Lambert shading on a white background (no white on purpose).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "yellow": (0.96, 0.86, 0.10),
    "green": (0.12, 0.66, 0.16),
    "cyan": (0.10, 0.80, 0.86),
    "blue": (0.10, 0.26, 0.90),
    "purple": (0.52, 0.16, 0.78),
    "pink": (1.00, 0.46, 0.72),
    "brown": (0.50, 0.30, 0.12),
    "gray": (0.50, 0.50, 0.50),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Size adjective → scale factor relative to the default size (no adjective).
SIZES: dict[str, float] = {"small": 0.7, "large": 1.3}

RELATIONS: tuple[str, ...] = ("on top of", "next to")  # index = the dataset's `relation` label

# (colour, shape) pairs never shown to the embedded prior during training (each shape once, each colour at most
# once), so evaluation can test compositional generalisation: does "a blue cone" work when only other blue
# things and other cones were seen?
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("blue", "cone"),
    ("red", "cylinder"),
    ("green", "torus"),
    ("yellow", "cube"),
    ("purple", "sphere"),
)

_ARTICLES = {"a", "an", "the"}
_SIZE_SYNONYMS = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large"}
_COLOR_SYNONYMS = {**{c: c for c in COLORS}, "grey": "gray", "violet": "purple"}
_SHAPE_SYNONYMS = {
    **{s: s for s in SHAPES}, "box": "cube", "block": "cube", "ball": "sphere",
    "donut": "torus", "doughnut": "torus", "ring": "torus",
}
# Relation phrases, longest first; value = index into RELATIONS.
_RELATION_PHRASES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("on", "top", "of"), 0), (("on",), 0), (("atop",), 0), (("next", "to"), 1), (("beside",), 1),
)
_RELATION_WORDS = {w for phrase, _ in _RELATION_PHRASES for w in phrase}
_VIEW_WORDS = {*VIEW_TAGS, "view"}
_CONTENT_WORDS = set(_SIZE_SYNONYMS) | set(_COLOR_SYNONYMS) | set(_SHAPE_SYNONYMS)
KNOWN_WORDS: frozenset[str] = frozenset(
    _ARTICLES | set(_SIZE_SYNONYMS) | set(_COLOR_SYNONYMS) | set(_SHAPE_SYNONYMS) | _RELATION_WORDS | _VIEW_WORDS
)

# ------------------------------------------------------------------------------------------------------ geometry

# Unit geometry of each shape at size 1 (the SDFs in `sdf.py` use exactly these numbers). Cone and cylinder stand on
# their base with the axis along z; the torus lies flat (axis z).
SHAPE_PARAMS: dict[str, dict[str, float]] = {
    "cube": {"half_side": 0.70},
    "sphere": {"radius": 0.85},
    "cone": {"radius": 0.80, "half_height": 0.85},
    "cylinder": {"radius": 0.70, "half_height": 0.75},
    "torus": {"major": 0.62, "minor": 0.33},
}
# Per shape at size 1: (half height along z, half width in the horizontal plane for any yaw, bounding radius).
SHAPE_EXTENTS: dict[str, tuple[float, float, float]] = {
    "cube": (0.70, 0.70 * math.sqrt(2), 0.70 * math.sqrt(3)),
    "sphere": (0.85, 0.85, 0.85),
    "cone": (0.85, 0.80, math.hypot(0.80, 0.85)),
    "cylinder": (0.75, 0.70, math.hypot(0.70, 0.75)),
    "torus": (0.33, 0.95, 0.95),
}
SINGLE_SIZE = 0.75  # default scale of a lone object
PAIR_SIZE = 0.6  # default scale of each object in a two-object scene
NEXT_TO_GAP = 0.12  # empty space between two objects side by side
MAX_SCENE_RADIUS = 1.05


# ---------------------------------------------------------------------------------------------------- dataclasses


class ParseError(ValueError):
    """Known words in a structure the grammar does not accept."""


class UnknownWordsError(ValueError):
    """The prompt uses words outside the toy world's vocabulary."""

    def __init__(self, words: list[str]):
        self.words = list(words)
        listed = ", ".join(repr(w) for w in self.words)
        super().__init__(
            f"unknown words: {listed} (known shapes: {', '.join(SHAPES)}; colours: {', '.join(COLORS)}; "
            f"sizes: {', '.join(SIZES)}; relations: {', '.join(RELATIONS)})"
        )


@dataclass
class Object:
    shape: str  # one of SHAPES
    color: str  # one of COLORS
    rgb: tuple[float, float, float]
    size: float  # scale of the unit shape in SHAPE_PARAMS
    center: tuple[float, float, float]  # world position of the shape's centre (middle of its z extent)
    size_name: str = ""  # "", "small" or "large": the adjective used in the caption

    def phrase(self) -> str:
        words = [w for w in (self.size_name, self.color, self.shape) if w]
        return " ".join(words)


@dataclass
class Scene:
    objects: list[Object]
    relation: str | None = None  # None for one object, else one of RELATIONS (objects[0] RELATION objects[1])
    extras: dict = field(default_factory=dict, repr=False)

    def caption(self) -> str:
        """Canonical text, e.g. "a red cube", "an orange cone on top of a small blue sphere"."""
        parts = [with_article(self.objects[0].phrase())]
        if self.relation is not None:
            parts += [self.relation, with_article(self.objects[1].phrase())]
        return " ".join(parts)


def with_article(phrase: str) -> str:
    """"a red cube" / "an orange cube": how captions and prompts write an object phrase."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


# ---------------------------------------------------------------------------------------------------------- layout


def make_object(color: str, shape: str, size_name: str = "", base: float = SINGLE_SIZE) -> Object:
    if shape not in SHAPE_PARAMS:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; known: {', '.join(COLORS)}")
    scale = base * (SIZES[size_name] if size_name else 1.0)
    return Object(shape, color, COLORS[color], scale, (0.0, 0.0, 0.0), size_name)


def make_scene(
    first: tuple[str, str, str] | tuple[str, str],
    second: tuple[str, str, str] | tuple[str, str] | None = None,
    relation: str | None = None,
) -> Scene:
    """Lay out a scene from (colour, shape[, size_name]) specs; `relation` is one of RELATIONS when `second` is given."""
    if (second is None) != (relation is None):
        raise ValueError("give both `second` and `relation`, or neither")
    if second is None:
        return _fit(Scene([make_object(*first)]))
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")
    a, b = make_object(*first, base=PAIR_SIZE), make_object(*second, base=PAIR_SIZE)
    ha, wa, _ = (e * a.size for e in SHAPE_EXTENTS[a.shape])
    hb, wb, _ = (e * b.size for e in SHAPE_EXTENTS[b.shape])
    if relation == "on top of":
        top = hb + 2 * ha  # B centred at 0, A's centre at hb + ha; pair spans [-hb, hb + 2 ha]
        shift = (top - hb) / 2
        b.center = (0.0, 0.0, -shift)
        a.center = (0.0, 0.0, hb + ha - shift)
    else:  # next to: A on the left from the front (−y), bottoms on a common floor
        ya, yb = -(wa + NEXT_TO_GAP / 2), wb + NEXT_TO_GAP / 2
        mid = (ya - wa + yb + wb) / 2
        floor = -max(ha, hb)
        a.center = (0.0, ya - mid, floor + ha)
        b.center = (0.0, yb - mid, floor + hb)
    return _fit(Scene([a, b], relation))


def _fit(scene: Scene) -> Scene:
    """Scale the whole scene about the origin so it fits in MAX_SCENE_RADIUS."""
    radius = max(
        math.sqrt(sum(c * c for c in o.center)) + SHAPE_EXTENTS[o.shape][2] * o.size for o in scene.objects
    )
    if radius > MAX_SCENE_RADIUS:
        k = MAX_SCENE_RADIUS / radius
        for o in scene.objects:
            o.size *= k
            o.center = tuple(c * k for c in o.center)
    return scene


# --------------------------------------------------------------------------------------------------------- parsing


def _tokens(prompt: str) -> list[str]:
    """Words: runs of anything but spaces and ASCII punctuation, so "café" and "🍎" are words (unknown ones) rather
    than "caf" and nothing; runs of non-ASCII punctuation alone ("—", "“") are dropped."""
    words = re.findall(r"[^\s!-/:-@\[-`{-~]+", prompt.lower())
    return [w for w in words if not all(unicodedata.category(c).startswith("P") for c in w)]


def unknown_words(prompt: str) -> list[str]:
    """Words of `prompt` outside the vocabulary, in order of appearance, without repeats."""
    seen: list[str] = []
    for t in _tokens(prompt):
        if t not in KNOWN_WORDS and t not in seen:
            seen.append(t)
    return seen


def content_words(prompt: str) -> list[str]:
    """The prompt's words that name something the toy world can draw: a shape, a colour or a size."""
    return [t for t in _tokens(prompt) if t in _CONTENT_WORDS]


def split_view(prompt: str) -> tuple[str, str | None]:
    """("a red cube", "front") from "a red cube, front view"; the tag is None when there is no view suffix."""
    m = re.search(rf"[\s,;]*\b({'|'.join(VIEW_TAGS)})\s+view\W*$", prompt, flags=re.IGNORECASE)
    if m is None:
        return prompt, None
    return prompt[: m.start()], m.group(1).lower()


def parse(prompt: str) -> Scene:
    """Prompt → laid-out Scene. Raises UnknownWordsError (lists the words) or ParseError (bad structure)."""
    unknown = unknown_words(prompt)
    if unknown:
        raise UnknownWordsError(unknown)
    body, _ = split_view(prompt)
    tokens = [t for t in _tokens(body) if t not in _ARTICLES]
    if not tokens:
        raise ParseError(f"empty prompt {prompt!r}: expected e.g. 'a red cube' or 'a red cube on top of a blue sphere'")
    # Find the (single) relation phrase.
    rel_at, i = None, 0
    while i < len(tokens):
        match = next(((p, r) for p, r in _RELATION_PHRASES if tuple(tokens[i : i + len(p)]) == p), None)
        if match is None:
            i += 1
            continue
        if rel_at is not None:
            raise ParseError(f"only one relation per prompt is supported: {prompt!r}")
        rel_at = (i, len(match[0]), match[1])
        i += len(match[0])
    if rel_at is None:
        return make_scene(_parse_object(tokens, prompt))
    i, n, rel = rel_at
    first, second = _parse_object(tokens[:i], prompt), _parse_object(tokens[i + n :], prompt)
    return make_scene(first, second, RELATIONS[rel])


def _parse_object(tokens: list[str], prompt: str) -> tuple[str, str, str]:
    """[size] colour shape → (colour, shape, size_name); size and colour may come in either order."""
    expected = "expected '[small|large] <colour> <shape>'"
    if not tokens:
        raise ParseError(f"missing object in {prompt!r}: {expected}")
    shape = _SHAPE_SYNONYMS.get(tokens[-1])
    if shape is None:
        raise ParseError(f"{' '.join(tokens)!r} in {prompt!r} does not end with a shape ({', '.join(SHAPES)}): {expected}")
    colors = [_COLOR_SYNONYMS[t] for t in tokens[:-1] if t in _COLOR_SYNONYMS]
    sizes = [_SIZE_SYNONYMS[t] for t in tokens[:-1] if t in _SIZE_SYNONYMS]
    others = [t for t in tokens[:-1] if t not in _COLOR_SYNONYMS and t not in _SIZE_SYNONYMS]
    if others:
        raise ParseError(f"unexpected {', '.join(repr(t) for t in others)} in {prompt!r}: {expected}")
    if len(colors) != 1:
        what = "missing colour" if not colors else "more than one colour"
        raise ParseError(f"{what} for {' '.join(tokens)!r} in {prompt!r}: {expected} (colours: {', '.join(COLORS)})")
    if len(sizes) > 1:
        raise ParseError(f"more than one size for {' '.join(tokens)!r} in {prompt!r}: {expected}")
    return colors[0], shape, sizes[0] if sizes else ""
